"""points.recorded handler cost without the broker: CPU per event of decode + handler.batch, in-process.

Seeds a fresh database like bench.points (10,000 merchants, 1,000,000 customers, COPY), encodes
earns of random customers in the Confluent wire format, then feeds them in batches to what the
service runs per batch (AvroReader.decode of each message, PointsRecordedHandler.batch over one
transaction) and prints, per pass: wall events/s, this process's CPU per event (the service's
share of the points path without librdkafka) and PostgreSQL's CPU per event (every backend of
the cluster, when scripts/services started it: CAMPAIGN_TEST_SERVICES_DIR). The first pass warms
caches; the figures are the later passes'. `--profile FILE` writes a cProfile of the passes.

    .venv/bin/python -m bench.points_handler [--merchants 10000] [--customers 1000000]
        [--batch-size 1000] [--batches 20] [--passes 3] [--profile FILE]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import random
import statistics
import struct
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import uvloop

from bench.harness import fresh_database, save_result, services
from bench.points import cluster_cpu_seconds, seed
from campaign_service import topics
from campaign_service.adapters.kafka.wire import AvroReader, AvroWireCodec, _parse_for_reading, schema_text
from campaign_service.adapters.postgres.pool import create_pool
from campaign_service.adapters.postgres.progression import PgProgression
from campaign_service.events.points_recorded import PointsRecordedHandler
from campaign_service.events.ports import InboundEvent

SCHEMA_ID = 1


class _LocalSchemas(AvroWireCodec):
    """The writer schema of id 1 without a registry: the file's, as the Points service writes it."""

    def __init__(self) -> None:
        pass

    async def writer_schema(self, schema_id: int) -> Any:
        return _parse_for_reading(schema_text(topics.POINTS_RECORDED))


def encoded(pairs: list[tuple[Any, Any]], n: int, rng: random.Random) -> list[tuple[bytes, bytes]]:
    schema = fastavro.parse_schema(json.loads(schema_text(topics.POINTS_RECORDED)))
    header = struct.pack(">bI", 0, SCHEMA_ID)
    now = datetime.now(UTC)
    out = []
    for _ in range(n):
        m, c = pairs[rng.randrange(len(pairs))]
        q = rng.randint(1, 400)
        buf = io.BytesIO()
        buf.write(header)
        payload = {
            "event_id": str(uuid.uuid4()),
            "merchant_id": str(m),
            "customer_id": str(c),
            "entry_id": str(uuid.uuid4()),
            "type": "earn",
            "points": q,
            "qualifying_points": q,
            "reverses_entry_id": None,
            "occurred_at": now - timedelta(milliseconds=rng.randint(0, 86_400_000)),
            "correlation_id": None,
        }
        fastavro.schemaless_writer(buf, schema, payload)
        out.append((f"{m}:{c}".encode(), buf.getvalue()))
    return out


async def one_pass(
    handler: PointsRecordedHandler, reader: AvroReader, messages: list[tuple[bytes, bytes]], batch_size: int
) -> tuple[float, float, float | None]:
    """(wall s, own CPU s, PostgreSQL CPU s) of handling `messages` batch by batch."""
    db0, cpu0, t0 = cluster_cpu_seconds(), time.process_time(), time.perf_counter()
    for start in range(0, len(messages), batch_size):
        events = []
        for key, value in messages[start : start + batch_size]:
            payload = await reader.decode(value)
            events.append(InboundEvent(topics.POINTS_RECORDED, key.decode(), payload, {}))
        outcomes = await handler.batch(events)
        if any(o is not None for o in outcomes):
            raise SystemExit(f"unexpected outcome: {next(o for o in outcomes if o is not None)!r}")
    wall, cpu, db1 = time.perf_counter() - t0, time.process_time() - cpu0, cluster_cpu_seconds()
    return wall, cpu, (db1 - db0 if db0 is not None and db1 is not None else None)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(13)
    with services("postgres") as env:
        db = await fresh_database(env["CAMPAIGN_TEST_PG_DSN"])
        merchants = [uuid.uuid4() for _ in range(args.merchants)]
        pairs = await seed(db.superuser_dsn, db.name, merchants, args.customers)
        pool = await create_pool(db.app_dsn, min_size=1, max_size=2)
        handler = PointsRecordedHandler(PgProgression(pool))
        reader = AvroReader(_LocalSchemas(), topics.POINTS_RECORDED)
        n = args.batch_size * args.batches
        passes = [encoded(pairs, n, rng) for _ in range(args.passes)]
        profile = cProfile.Profile() if args.profile else None
        rows = []
        for i, messages in enumerate(passes):
            if profile is not None and i > 0:
                profile.enable()
            wall, cpu, pg = await one_pass(handler, reader, messages, args.batch_size)
            if profile is not None:
                profile.disable()
            rows.append({"events": n, "events_per_s": n / wall, "cpu_ms_per_event": cpu * 1000 / n,
                         "pg_ms_per_event": pg * 1000 / n if pg is not None else None})  # fmt: skip
            print(
                f"pass {i}: {n} events, {n / wall:.0f} events/s, handler CPU {cpu * 1000 / n:.3f} ms/event,"
                f" PostgreSQL {pg * 1000 / n if pg is not None else float('nan'):.3f} ms/event"
            )
        await pool.close()
        if profile is not None:
            profile.dump_stats(args.profile)
    later = rows[1:] or rows
    return {
        "merchants": args.merchants,
        "customers": args.customers,
        "batch_size": args.batch_size,
        "passes": rows,
        "median_cpu_ms_per_event": statistics.median(r["cpu_ms_per_event"] for r in later),
        "median_pg_ms_per_event": statistics.median(r["pg_ms_per_event"] or 0 for r in later),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--merchants", type=int, default=10_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--profile")
    args = parser.parse_args()
    result = uvloop.run(run(args))
    print(
        f"median of the passes after the first: handler CPU {result['median_cpu_ms_per_event']:.3f} ms/event,"
        f" PostgreSQL {result['median_pg_ms_per_event']:.3f} ms/event"
    )
    save_result("points_handler", result)


if __name__ == "__main__":
    main()
