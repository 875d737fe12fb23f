"""Shared plumbing of the benchmarks: dependencies on loopback, a fresh database, processes
pinned to cores, readiness and peak memory."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from tests.databases import ProvisionedDatabase, create_migrated
from tests.tokens import ISSUER, SESSION_ISSUER

from campaign_service import logs

ROOT = Path(__file__).resolve().parent.parent
# The benches seed through the service's own code in-process: a log line per seeded tier would
# bury the tables they print.
logs.configure("warning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def services(names: str = "postgres redis") -> Iterator[dict[str, str]]:
    """The addresses of running dependencies: the caller's (from the environment, when
    scripts/test or scripts/services set them) or ones started here and stopped afterwards."""
    if os.environ.get("CAMPAIGN_TEST_PG_DSN"):
        yield dict(os.environ)
        return
    state = tempfile.mkdtemp(prefix="campaign-bench.")
    os.chmod(state, 0o755)
    try:
        subprocess.run([str(ROOT / "scripts/services"), "up", state], check=True, env={**os.environ, "SERVICES": names})
        env: dict[str, str] = {}
        for line in Path(state, "env").read_text().splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        yield {**os.environ, **env}
    finally:
        subprocess.run([str(ROOT / "scripts/services"), "down", state], check=False)
        shutil.rmtree(state, ignore_errors=True)


Database = ProvisionedDatabase


async def fresh_database(superuser_dsn: str) -> Database:
    return await create_migrated(superuser_dsn, f"campaign_bench_{uuid.uuid4().hex[:8]}")


async def drop_database(db: Database) -> None:
    """Drops a bench database: left behind, autovacuum of old ones counts as PostgreSQL's CPU of
    later runs."""
    conn = await asyncpg.connect(db.superuser_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{db.name}" WITH (FORCE)')
    finally:
        await conn.close()


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def peak_rss_mib(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kib = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:"))
        return kib / 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start(args: list[str], *, port: int, core: int | None, env: dict[str, str], log: Path) -> Process:
    """Starts `args` (pinned to `core` with taskset when given) and waits until `port` accepts."""
    cmd = ["taskset", "-c", str(core), *args] if core is not None and shutil.which("taskset") else args
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{args[:4]} exited early:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return Process(proc, port, log)
        time.sleep(0.1)
    proc.kill()
    sys.exit(f"{args[:4]} did not listen on {port} in 60 s")


def auth_env(tmp: Path) -> dict[str, str]:
    """Authentication is always on: the service trusts a JWKS file of a key made for this run."""
    jwks = SESSION_ISSUER.write_jwks(tmp / "jwks.json")
    return {"CAMPAIGN_JWT_JWKS_FILE": str(jwks), "CAMPAIGN_JWT_ISSUER": ISSUER}


def save_result(name: str, result: object) -> Path:
    """Writes a bench's figures to bench/results/<name>.json (what the closing notes quote)."""
    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return out


def machine_ticks() -> list[int]:
    """The machine's CPU time so far by state (/proc/stat: user nice system idle iowait irq softirq steal)."""
    return [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]


def machine_shares(before: list[int], after: list[int]) -> dict[str, float]:
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = max(sum(d), 1)
    return {"busy": (d[0] + d[1] + d[2] + d[5] + d[6]) / total, "iowait": d[4] / total, "steal": d[7] / total}
