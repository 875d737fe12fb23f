"""Generates the gRPC/protobuf Python modules from proto/ into src/campaign_service/api/gen.

Runs as a hatch build hook (so a wheel always carries fresh generated code) and as a plain
script (`python scripts/hatch_build_proto.py`) from scripts/lib/python.sh. The generated
`*_pb2_grpc.py` files import their messages by proto path (`from campaign.v1 import ...`),
which is not importable inside our package; the import is rewritten to a package-relative one
(grpc/grpc#9575).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
OUT_DIR = ROOT / "src" / "campaign_service" / "api" / "gen"


def _stale() -> bool:
    stamp = OUT_DIR / ".stamp"
    if not stamp.exists():
        return True
    newest = max(p.stat().st_mtime for p in PROTO_DIR.rglob("*.proto"))
    return newest > stamp.stat().st_mtime or Path(__file__).stat().st_mtime > stamp.stat().st_mtime


def generate(force: bool = False) -> None:
    if not force and not _stale():
        return
    import grpc_tools
    from grpc_tools import protoc

    if OUT_DIR.exists():
        shutil.rmtree(OUT_DIR)
    OUT_DIR.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in PROTO_DIR.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={OUT_DIR}",
        f"--mypy_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        f"--mypy_grpc_out={OUT_DIR}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    packages = {p.parent for p in OUT_DIR.rglob("*.py")} | {OUT_DIR}
    for pkg in packages:
        while pkg != OUT_DIR.parent:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent
    for path in list(OUT_DIR.rglob("*.py")) + list(OUT_DIR.rglob("*.pyi")):
        text = path.read_text()
        depth = len(path.relative_to(OUT_DIR).parts) - 1
        dots = "." * (depth + 1)

        def relative(m: re.Match[str], dots: str = dots) -> str:
            return f"from {dots}{m.group(1)} import {m.group(2)}"

        fixed = re.sub(r"^from ((?:campaign|auth)(?:\.\w+)*) import (\w+_pb2)", relative, text, flags=re.M)
        # mypy stubs reference sibling modules as `campaign.v1.x_pb2`; make them package-local.
        fixed = re.sub(
            r"^import ((?:campaign|auth)\.\w+\.\w+_pb2)$",
            lambda m: f"import campaign_service.api.gen.{m.group(1)}",
            fixed,
            flags=re.M,
        )
        if fixed != text:
            path.write_text(fixed)
    (OUT_DIR / ".stamp").touch()


try:
    from hatchling.builders.hooks.plugin.interface import BuildHookInterface

    class CustomBuildHook(BuildHookInterface):  # type: ignore[misc]
        def initialize(self, version: str, build_data: dict[str, Any]) -> None:
            generate(force=self.target_name == "wheel" and version == "standard")
except ImportError:  # run as a script outside a build
    pass

if __name__ == "__main__":
    generate(force="--force" in sys.argv)
