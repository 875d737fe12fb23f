"""Refreshes `vip_tiers_total` from PostgreSQL on an interval (bounded top-N, see metrics.TierCounts).

The pool is the relay's (campaign_relay): `campaign_tier_counts()` names every merchant, so the
request path's role may not run it (migration 0009)."""

from __future__ import annotations

import asyncio

import asyncpg
import structlog

from campaign_service import metrics

log = structlog.get_logger(__name__)


async def fetch_tier_counts(pool: asyncpg.Pool[asyncpg.Record], top_n: int) -> tuple[dict[str, int], int]:
    """The `top_n` merchants with the most tiers, and the number of tiers of all the others."""
    rows = await pool.fetch("SELECT merchant_id, tiers FROM campaign_tier_counts($1)", top_n)
    top = {str(r["merchant_id"]): int(r["tiers"]) for r in rows if r["merchant_id"] is not None}
    other = sum(int(r["tiers"]) for r in rows if r["merchant_id"] is None)
    return top, other


async def refresh_tier_counts(pool: asyncpg.Pool[asyncpg.Record], top_n: int, interval_s: float) -> None:
    """Runs until cancelled; a failed refresh keeps the last values, is counted and logged."""
    while True:
        try:
            top, other = await asyncio.wait_for(fetch_tier_counts(pool, top_n), timeout=max(interval_s, 5.0))
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            metrics.TIER_COUNT_REFRESH_FAILURES.inc()
            log.warning("tier counts refresh failed", error=type(exc).__name__)
        else:
            metrics.TIERS_BY_MERCHANT.update(top, other)
        await asyncio.sleep(interval_s)
