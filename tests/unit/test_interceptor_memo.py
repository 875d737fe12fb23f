"""Interceptors wrap each method's handler once, not on every RPC (a per-RPC CPU cost)."""

from __future__ import annotations

from typing import Any

import grpc

from campaign_service.api.interceptors import MetricsInterceptor


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str) -> None:
        self.method = method
        self.invocation_metadata = ()


async def test_handler_is_wrapped_once_per_method() -> None:
    async def behavior(request: Any, ctx: Any) -> Any:
        return request

    handlers = {m: grpc.unary_unary_rpc_method_handler(behavior) for m in ("GetVIPTier", "ListVIPTiers")}
    wraps: list[str] = []
    interceptor = MetricsInterceptor()
    original = interceptor.wrap

    def counting_wrap(method: str, b: Any) -> Any:
        wraps.append(method)
        return original(method, b)

    interceptor.wrap = counting_wrap  # type: ignore[method-assign]

    async def continuation(details: grpc.HandlerCallDetails) -> Any:
        return handlers[details.method.rsplit("/", 1)[1]]

    seen = {}
    for _ in range(3):
        for method in handlers:
            wrapped = await interceptor.intercept_service(
                continuation, Details(f"/campaign.v1.CampaignService/{method}")
            )
            assert seen.setdefault(method, wrapped) is wrapped
    assert sorted(wraps) == ["GetVIPTier", "ListVIPTiers"]
    # A different handler for the same method (another server) is wrapped afresh.
    handlers["GetVIPTier"] = grpc.unary_unary_rpc_method_handler(behavior)
    fresh = await interceptor.intercept_service(continuation, Details("/campaign.v1.CampaignService/GetVIPTier"))
    assert fresh is not seen["GetVIPTier"]
