"""Audit: every successful write emits exactly one `vip_tier.updated` outbox row per tier it
changed, naming the actor (the token's subject) and the changed fields; a refused or no-op
write emits none."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf import field_mask_pb2

from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.domain.access import SCOPE_READ, SCOPE_WRITE
from campaign_service.domain.tiers import MUTABLE_FIELDS
from tests.e2e.test_tier_api import gold

PAYLOAD_KEYS = {"event_id", "merchant_id", "tier_id", "updated_fields", "updated_at", "actor", "correlation_id"}


class Audit:
    def __init__(self, superuser_conn: Any, merchant: uuid.UUID) -> None:
        self.conn, self.merchant, self.seen = superuser_conn, merchant, 0

    async def new_events(self) -> list[Any]:
        rows = await self.conn.fetch(
            "SELECT event_id, topic, key, payload, headers FROM outbox_events WHERE merchant_id = $1"
            " ORDER BY seq",  # commit order; created_at ties within a transaction
            self.merchant,
        )
        fresh, self.seen = rows[self.seen :], len(rows)
        return list(fresh)


def mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


async def test_each_write_emits_one_event_with_actor_and_fields(
    stub_for: Any, new_merchant: Any, superuser_conn: Any
) -> None:
    merchant = await new_merchant()
    m = str(merchant)
    audit = Audit(superuser_conn, merchant)
    alice = stub_for(merchant, [SCOPE_WRITE], subject="alice")

    async def one_event(call: Any, correlation: str) -> dict[str, Any]:
        await call
        (event,) = await audit.new_events()
        payload = event["payload"]
        assert event["topic"] == "vip_tier.updated"
        assert set(payload) == PAYLOAD_KEYS  # ids and field names only: no personal data
        assert (payload["actor"], payload["merchant_id"], payload["event_id"]) == ("alice", m, str(event["event_id"]))
        assert event["key"] == f"{m}:{payload['tier_id']}"
        assert payload["correlation_id"] == correlation
        assert event["headers"]["correlation_id"] == correlation
        return dict(payload)

    def cid(name: str) -> tuple[tuple[str, str]]:
        return (("x-correlation-id", name),)

    created = await one_event(
        alice.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=m, tier=gold()), metadata=cid("c1")), "c1"
    )
    assert created["updated_fields"] == list(MUTABLE_FIELDS)
    updated = await one_event(
        alice.UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=m,
                tier_id="gold",
                tier=pb.VIPTier(name="Golden", min_points=1500, discount_percentage=10),
                update_mask=mask("name", "min_points", "discount_percentage"),
            ),
            metadata=cid("c2"),
        ),
        "c2",
    )
    assert updated["updated_fields"] == ["name", "min_points"]  # the discount did not change

    unchanged = await alice.UpdateVIPTier(
        pb.UpdateVIPTierRequest(merchant_id=m, tier_id="gold", tier=pb.VIPTier(name="Golden"), update_mask=mask("name"))
    )
    assert not unchanged.success
    assert await audit.new_events() == []  # nothing changed, nothing to audit

    deleted = await one_event(
        alice.DeleteVIPTier(pb.DeleteVIPTierRequest(merchant_id=m, tier_id="gold"), metadata=cid("c3")), "c3"
    )
    assert (deleted["tier_id"], deleted["updated_fields"]) == ("gold", ["deleted"])


async def test_moving_the_default_audits_both_tiers(stub_for: Any, new_merchant: Any, superuser_conn: Any) -> None:
    merchant = await new_merchant()
    audit = Audit(superuser_conn, merchant)
    ops = stub_for(None, ["campaign:admin"], subject="ops")
    await ops.CreateVIPTier(
        pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=gold(tier_id="basic", name="Basic", is_default=True))
    )
    await audit.new_events()
    await ops.CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=gold(is_default=True)))
    events = [
        (e["payload"]["tier_id"], e["payload"]["updated_fields"], e["payload"]["actor"])
        for e in await audit.new_events()
    ]
    assert events == [("gold", list(MUTABLE_FIELDS), "ops"), ("basic", ["is_default"], "ops")]


@pytest.mark.parametrize(
    "refused",
    [
        lambda m, s: s(m, [SCOPE_WRITE]).CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(m), tier=gold(name=""))),
        lambda m, s: s(m, [SCOPE_READ]).CreateVIPTier(
            pb.CreateVIPTierRequest(merchant_id=str(m), tier=gold(tier_id="x"))
        ),
        lambda m, s: s(uuid.uuid4(), [SCOPE_WRITE]).DeleteVIPTier(
            pb.DeleteVIPTierRequest(merchant_id=str(m), tier_id="gold")
        ),
        lambda m, s: s(m, [SCOPE_WRITE]).UpdateVIPTier(
            pb.UpdateVIPTierRequest(
                merchant_id=str(m),
                tier_id="gold",
                tier=pb.VIPTier(name="X"),
                update_mask=mask("name"),
                expected_version=99,
            )
        ),
        lambda m, s: s(m, [SCOPE_WRITE]).CreateVIPTier(pb.CreateVIPTierRequest(merchant_id=str(m), tier=gold())),
        lambda m, s: s(m, [SCOPE_WRITE], token="garbage").DeleteVIPTier(
            pb.DeleteVIPTierRequest(merchant_id=str(m), tier_id="gold")
        ),
    ],
    ids=["invalid", "read scope", "other merchant", "stale version", "already exists", "bad token"],
)
async def test_refused_writes_emit_nothing(stub_for: Any, new_merchant: Any, superuser_conn: Any, refused: Any) -> None:
    merchant = await new_merchant()
    audit = Audit(superuser_conn, merchant)
    await stub_for(merchant, [SCOPE_WRITE]).CreateVIPTier(
        pb.CreateVIPTierRequest(merchant_id=str(merchant), tier=gold())
    )
    await audit.new_events()
    with pytest.raises(grpc.aio.AioRpcError):
        await refused(merchant, stub_for)
    assert await audit.new_events() == []
