"""Compliance: the schema holds no PII (customer ids only) and cannot grow a column unnoticed;
outbox payloads carry ids, never personal data."""

from __future__ import annotations

from typing import Any

# Every column of every table. A new column fails this test until it is added here, by someone
# who has checked that it holds no personal data: customers are known by their id, nothing else.
ALLOWED_COLUMNS: dict[str, set[str]] = {
    "merchants": {"id", "created_at"},
    "vip_tiers": {
        "id",
        "merchant_id",
        "tier_id",
        "name",
        "locale",
        "min_points",
        "discount_percentage",
        "free_shipping",
        "exclusive_access",
        "benefits",
        "is_default",
        "version",
        "created_at",
        "updated_at",
    },
    "vip_tier_translations": {"merchant_id", "tier_id", "locale", "name"},
    # Issue 16 (0040): the locales a merchant stores tier text in.
    "merchant_locales": {"merchant_id", "locales", "version", "updated_at"},
    # Issue 14 (0030, 0031): re-assessment jobs, scheduled changes, the configuration version.
    "tier_change_jobs": {
        "merchant_id", "job_id", "change_id", "mode", "state", "config_version", "not_before",
        "customers_total", "customers_done", "moved", "cursor", "created_at", "started_at",
        "finished_at", "error",
    },
    "tier_scheduled_changes": {
        "merchant_id", "change_id", "target", "kind", "payload", "mode", "effective_at", "state",
        "config_version", "created_at", "created_by", "finished_at", "finished_by", "error",
    },
    "tier_config_heads": {"merchant_id", "version", "txid", "updated_at"},
    # Issue 14 (0032): past configurations (tier rows and the programme row as JSON; no customer data).
    "tier_config_versions": {"merchant_id", "version", "valid_from", "tiers", "programme", "seeded"},
    # Progression (0020): points, dates, tier ids, reason codes; changed_by/actor is the token
    # subject of a manual change (an operator or service, never the customer), '' otherwise.
    "customer_tiers": {
        "merchant_id",
        "customer_id",
        "tier_id",
        "assigned_at",
        "source",
        "cause_event_id",
        "qualifying_points",
        "period_end",
        "deadline",
        "floor_tier_id",
        "floor_until",
        "held_tiers",
        "program_version",
        "change_direction",
        "change_reason",
        "changed_by",
    },
    "customer_tier_history": {
        "merchant_id",
        "customer_id",
        "id",
        "tier_id",
        "assigned_at",
        "source",
        "cause_event_id",
        "from_tier_id",
        "direction",
        "config_version",  # 0031: the configuration version that caused the move
        "reason",
        "program_version",
        "qualifying_points",
        "actor",
    },
    "tier_programs": {
        "merchant_id",
        "window_kind",
        "time_zone",
        "window_months",
        "downgrade_policy",
        "grace_days",
        "reversal_downgrades_now",
        "entry_bonus",
        "downgrade_warning_days",
        "version",
        "updated_at",
    },
    "qualifying_points_daily": {"merchant_id", "customer_id", "day", "points"},
    "tier_downgrade_warnings": {"merchant_id", "customer_id", "deadline", "warned_at"},
    # reason: a code (CHECK: [a-z0-9_.-]{1,64}, no free text); actor: the token's subject, as in history
    "tier_manual_assignments": {
        "merchant_id",
        "customer_id",
        "id",
        "tier_id",
        "moved",
        "floor_tier_id",
        "floor_until",
        "reason",
        "actor",
        "at",
    },
    "processed_events": {"event_id", "merchant_id", "event_type", "created_at"},
    "outbox_events": {
        "shard",  # 0050: hashtext(key) & 15, for per-shard relay claims
        "event_id",
        "merchant_id",
        "topic",
        "key",
        "payload",
        "headers",
        "created_at",
        "published_at",
        "attempts",
        "last_error",
        "seq",
        "traceparent",  # W3C trace and span ids only (a CHECK in 0010 holds it to that form)
    },
    "schema_migrations": {"version", "name", "checksum", "applied_at"},
    "cache_epoch": {"singleton", "epoch"},  # one counter, no data (0008)
}
# Columns about a customer must be ids: uuid typed.
CUSTOMER_COLUMNS = {"customer_id", "cause_event_id"}


async def test_no_table_or_column_outside_the_allow_list(owner_conn: Any) -> None:
    rows = await owner_conn.fetch(
        "SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"
        " AND c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition"
    )
    found: dict[str, set[str]] = {}
    for r in rows:
        found.setdefault(r["table"], set()).add(r["column"])
    assert found == ALLOWED_COLUMNS
    assert {(r["table"], r["column"]): r["type"] for r in rows if r["column"] in CUSTOMER_COLUMNS} == {
        ("customer_tiers", "customer_id"): "uuid",
        ("customer_tiers", "cause_event_id"): "uuid",
        ("customer_tier_history", "customer_id"): "uuid",
        ("customer_tier_history", "cause_event_id"): "uuid",
        ("qualifying_points_daily", "customer_id"): "uuid",
        ("tier_manual_assignments", "customer_id"): "uuid",
        ("tier_downgrade_warnings", "customer_id"): "uuid",
    }


async def test_partitions_have_their_parent_columns_only(owner_conn: Any) -> None:
    rows = await owner_conn.fetch(
        "SELECT p.relname AS parent, c.relname AS part,"
        " (SELECT array_agg(attname ORDER BY attname) FROM pg_attribute WHERE attrelid = c.oid AND attnum > 0 AND NOT attisdropped) AS cols,"
        " (SELECT array_agg(attname ORDER BY attname) FROM pg_attribute WHERE attrelid = p.oid AND attnum > 0 AND NOT attisdropped) AS parent_cols"
        " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent"
    )
    assert rows
    assert all(r["cols"] == r["parent_cols"] for r in rows)
