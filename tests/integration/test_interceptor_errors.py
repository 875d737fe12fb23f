"""Whatever any layer of a CampaignService RPC raises - each interceptor, the servicer - the caller
gets a mapped status, never grpc's UNKNOWN carrying the exception's text: INTERNAL "internal
error" with one error line (correlation id, traceback), or, inside authentication, UNAUTHENTICATED
"invalid token" with no error line. Through a real grpc.aio server on loopback."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import grpc
import pytest
from google.protobuf import message_factory

from campaign_service import metrics
from campaign_service.api import interceptors
from campaign_service.api.auth import AuthInterceptor
from campaign_service.api.interceptors import RateLimitInterceptor
from campaign_service.api.pb import campaign_grpc
from campaign_service.api.pb import campaign_pb2 as pb
from campaign_service.api.server import SERVICE, build_grpc_server
from campaign_service.api.servicer import CampaignServicer
from campaign_service.domain import errors as domain_errors
from campaign_service.domain.access import Principal
from campaign_service.domain.errors import NotFound
from campaign_service.service.ports import RateDecision

SECRET = "secret-internals-7f3a"  # the text of every injected exception: must never reach a caller
MERCHANT = uuid.uuid4()


class Boom(Exception):
    pass


class Faults:
    """Where the next RPC fails; every stand-in below asks it."""

    def __init__(self) -> None:
        self.at: str | None = None

    def check(self, where: str) -> None:
        if self.at == where:
            raise Boom(SECRET)


class Verifier:
    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    async def verify(self, token: str) -> Principal:
        self._faults.check("auth")
        return Principal("alice", MERCHANT, frozenset({"tiers:read"}), time.time() + 3600)


class Limiter:
    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    async def acquire(self, merchant_id: uuid.UUID) -> RateDecision:
        self._faults.check("rate_limit")
        return RateDecision(True)


class Servicer:
    """Every CampaignService method: answers an empty response, or raises when told to."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults

    def __getattr__(self, name: str) -> Callable[..., Any]:
        response = message_factory.GetMessageClass(SERVICE.methods_by_name[name].output_type)

        async def method(request: Any, ctx: Any) -> Any:
            self._faults.check("servicer")
            if self._faults.at == "domain":
                raise NotFound("no such tier")
            return response()

        return method


@pytest.fixture
async def server(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, Faults]]:
    faults = Faults()
    # The interceptors' own steps, failing when told to: metrics' duration histogram,
    # correlation's request log fields, decoding's refusal of a body that does not parse.
    histogram = metrics.GRPC_HANDLING_SECONDS

    class Histogram:
        def labels(self, *values: str) -> Any:
            child = histogram.labels(*values)

            class Child:
                def observe(self, value: float) -> None:
                    faults.check("metrics")
                    child.observe(value)

            return Child()

    request_fields = interceptors._request_fields

    def fields(method: str, request: Any) -> dict[str, str | None]:
        faults.check("correlation")
        return request_fields(method, request)

    invalid = domain_errors.invalid  # what interceptors calls: it imports it from domain.errors

    def refuse(field: str, description: str) -> Any:
        faults.check("decoding")
        return invalid(field, description)

    monkeypatch.setattr(metrics, "GRPC_HANDLING_SECONDS", Histogram())
    monkeypatch.setattr(interceptors, "_request_fields", fields)
    monkeypatch.setattr(interceptors, "invalid", refuse)
    srv, _ = build_grpc_server(
        cast(CampaignServicer, Servicer(faults)),
        extra_interceptors=[AuthInterceptor(Verifier(faults)), RateLimitInterceptor(Limiter(faults))],
    )
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    try:
        yield f"127.0.0.1:{port}", faults
    finally:
        await srv.stop(None)


# Where the RPC fails -> what the caller reads.
EXPECTED = {
    "metrics": (grpc.StatusCode.INTERNAL, "internal error"),
    "correlation": (grpc.StatusCode.INTERNAL, "internal error"),
    "decoding": (grpc.StatusCode.INTERNAL, "internal error"),
    "auth": (grpc.StatusCode.UNAUTHENTICATED, "invalid token"),
    "rate_limit": (grpc.StatusCode.INTERNAL, "internal error"),
    "servicer": (grpc.StatusCode.INTERNAL, "internal error"),
    "domain": (grpc.StatusCode.NOT_FOUND, "no such tier"),
}


@pytest.mark.parametrize("where", list(EXPECTED))
async def test_an_exception_anywhere_in_the_chain_is_a_mapped_status(
    server: tuple[str, Faults], caplog: pytest.LogCaptureFixture, where: str
) -> None:
    target, faults = server
    faults.at = where
    cid = f"test-{uuid.uuid4().hex[:12]}"
    # A body that does not parse reaches the decoding step's refusal; any other step sees a good one.
    body = b"\xff\xff" if where == "decoding" else pb.GetVIPTierRequest(merchant_id=str(MERCHANT), tier_id="gold")
    metadata = (("authorization", "Bearer abc"), ("x-correlation-id", cid))
    handled_before = _handled("GetVIPTier", EXPECTED[where][0])
    caplog.set_level(logging.WARNING)
    async with grpc.aio.insecure_channel(target) as channel:
        call: grpc.aio.UnaryUnaryMultiCallable[bytes | pb.GetVIPTierRequest, pb.VIPTier] = channel.unary_unary(
            "/campaign.v1.CampaignService/GetVIPTier",
            request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString(),
            response_deserializer=pb.VIPTier.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(body, metadata=metadata)
    assert (err.value.code(), err.value.details()) == EXPECTED[where]
    assert SECRET not in str(err.value.debug_error_string())
    assert dict(err.value.trailing_metadata() or ()).get("x-correlation-id") == cid
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    if EXPECTED[where][0] is grpc.StatusCode.INTERNAL:
        assert len(tracebacks) == 1, caplog.records  # exactly one line, with the correlation id
        assert getattr(tracebacks[0], "correlation_id", None) == cid
    else:
        assert tracebacks == []
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    if where != "metrics":  # the metric counts the status the caller got
        assert _handled("GetVIPTier", EXPECTED[where][0]) == handled_before + 1


def _handled(method: str, code: grpc.StatusCode) -> float:
    return float(metrics.GRPC_HANDLED.labels(method, code.name)._value.get())


async def test_the_stub_answers_when_nothing_fails(server: tuple[str, Faults]) -> None:
    """The stand-ins above let a call through: the failures are the injected ones."""
    target, _ = server
    async with grpc.aio.insecure_channel(target) as channel:
        stub = campaign_grpc.CampaignServiceStub(channel)
        await stub.GetVIPTier(
            pb.GetVIPTierRequest(merchant_id=str(MERCHANT), tier_id="gold"), metadata=(("authorization", "Bearer abc"),)
        )
