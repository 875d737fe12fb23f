"""The whole benchmark suite in one command: `.venv/bin/python -m bench [--quick]`.

Runs, one after another on the same machine: the gRPC suite (no-op handler, cached and
uncached GetVIPTier, ListVIPTiers, UpdateVIPTier: max throughput, p50/p99 at fixed rates, RSS,
ratios to the no-op), the lookup cache comparison, the event path (customer.created ->
vip_tier.assigned latency and consumer throughput) and the pgbench partition/RLS check. Each
prints its table and writes bench/results/<name>.json.
"""

from __future__ import annotations

import subprocess
import sys

QUICK = "--quick" in sys.argv
RUNS: list[list[str]] = [
    ["bench.grpc_suite", "--seconds", "4" if QUICK else "10"],
    ["bench.lookup", "--seconds", "4" if QUICK else "10"],
    ["bench.events", *(["--events", "500", "--backlog", "1000"] if QUICK else [])],
    ["bench.pgbench_partitions", "--seconds", "3" if QUICK else "5", *(["--sizes", "1,1000"] if QUICK else [])],
]

failed = []
for module, *args in RUNS:
    print(f"\n===== {module} {' '.join(args)}", flush=True)
    if subprocess.run([sys.executable, "-m", module, *args], check=False).returncode != 0:
        failed.append(module)
if failed:
    sys.exit(f"failed: {', '.join(failed)}")
