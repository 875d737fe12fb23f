"""scripts/lib/proc.sh: the stop helpers kafka.sh and registry.sh share (`*_down` TERM, `*_kill`
KILL) stop the process of their state directory, and only that one."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
set -euo pipefail
source "$ROOT/scripts/lib/kafka.sh"
source "$ROOT/scripts/lib/registry.sh"
k="$TMP/kafka"; r="$TMP/registry"; mkdir -p "$k" "$r"
python3 -c "import time; time.sleep(60)" "$k/server.properties" & kp=$!; echo $kp > "$k/kafka.pid"
python3 -c "import time; time.sleep(60)" "-Dcampaign.registry.state=$r" & rp=$!; echo $rp > "$r/registry.pid"
sleep 0.5
kafka_is_running "$k" && echo "kafka running"
registry_is_running "$r" && echo "registry running"
kafka_down "$k"
registry_kill "$r"
wait $kp 2>/dev/null || echo "kafka exit $?"
wait $rp 2>/dev/null || echo "registry exit $?"
kafka_is_running "$k" || echo "kafka stopped"
registry_is_running "$r" || echo "registry stopped"
[[ -e "$k/kafka.pid" || -e "$r/registry.pid" ]] || echo "pid files removed"
sleep 60 & other=$!; echo $other > "$k/kafka.pid"
kafka_kill "$k"
proc_alive $other && echo "foreign pid left alone"
kill $other
kafka_down "$TMP/none" && registry_down "$TMP/none" && echo "no state dir: nothing to do"
"""


def test_down_terms_kill_kills_and_a_reused_pid_is_left_alone(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "-c", SCRIPT],
        env={"ROOT": str(ROOT), "TMP": str(tmp_path), "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "kafka running",
        "registry running",
        "kafka exit 143",  # SIGTERM
        "registry exit 137",  # SIGKILL
        "kafka stopped",
        "registry stopped",
        "pid files removed",
        "foreign pid left alone",
        "no state dir: nothing to do",
    ]
