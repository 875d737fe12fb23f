"""OpenTelemetry: the SDK provider exporting over OTLP when tracing is configured, else nothing."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from opentelemetry.trace import Tracer

from campaign_service.config import Settings
from campaign_service.telemetry import start_tracing
from campaign_service.wiring import lifetime


@contextlib.asynccontextmanager
async def tracer(settings: Settings) -> AsyncIterator[Tracer | None]:
    """The tracer (None: tracing off) while the block runs; leaving flushes the spans still held."""
    tracing = start_tracing(settings)
    if tracing is None:
        yield None
        return
    try:
        yield tracing.tracer
    finally:
        await lifetime.bounded("tracing", tracing.close)
