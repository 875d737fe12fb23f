"""Spans of the event path (OpenTelemetry API, W3C Trace Context), composed only when tracing is on.

One trace runs gRPC -> outbox -> transport -> consumer -> outbox -> transport:
  * the RPC's span (api/tracing.py) is current when a use case writes its outbox rows, and each
    row stores its `traceparent` (context.current_traceparent);
  * `TracedPublisher` makes a PRODUCER span per published message, a child of the row's stored
    context, and sends the span's own context as the message's `traceparent` header;
  * `traced_batches` makes, per consumed batch, an INTERNAL span (current while the batch is
    handled, so its log line carries it) and per event a CONSUMER span, a child of the event's
    `traceparent` header (of the batch span when the event has none) linked to the batch span;
    the handler writes that span's context into the outbox rows it makes for the event
    (InboundEvent.traceparent), so the next publish continues the same trace.
A batch span with per-event children of their producers, rather than one span with links: each
event's own trace goes on through its consumer into what it causes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from campaign_service.context import traceparent_of
from campaign_service.domain.events import OutboxMessage
from campaign_service.events.ports import BatchHandler, EventPublisher, InboundEvent, Outcome, Rejected
from campaign_service.telemetry import PROPAGATOR


def _parent(traceparent: str | None) -> Context | None:
    """The context a stored or received `traceparent` names; None when absent or not valid W3C
    (then the span's parent is the current span, if any)."""
    if not traceparent:
        return None
    context = PROPAGATOR.extract({"traceparent": traceparent})
    return context if trace.get_current_span(context).get_span_context().is_valid else None


def with_trace_header(message: OutboxMessage, span: trace.Span) -> OutboxMessage:
    """The message with a `traceparent` header naming `span` as its consumer's parent."""
    span_context = span.get_span_context()
    if not span_context.is_valid:
        return message
    return dataclasses.replace(message, headers={**message.headers, "traceparent": traceparent_of(span_context)})


class TracedPublisher:
    """An EventPublisher that wraps another: a span per message published, ended when the
    transport has it (or failed it)."""

    def __init__(self, publisher: EventPublisher, tracer: trace.Tracer, *, system: str) -> None:
        self._publisher = publisher
        self._tracer = tracer
        self._system = system

    async def publish(self, batch: Sequence[OutboxMessage]) -> list[str | None]:
        spans = [
            self._tracer.start_span(
                f"publish {m.topic}",
                _parent(m.traceparent),
                SpanKind.PRODUCER,
                {
                    "messaging.system": self._system,
                    "messaging.operation.type": "publish",
                    "messaging.destination.name": m.topic,
                    "messaging.message.id": str(m.event_id),
                },
            )
            for m in batch
        ]
        try:
            results = await self._publisher.publish(
                [with_trace_header(*pair) for pair in zip(batch, spans, strict=True)]
            )
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.end()
            raise
        for span, error in zip(spans, results, strict=True):
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error[:200]))
            span.end()
        return results

    async def close(self) -> None:
        await self._publisher.close()


def traced_batches(handler: BatchHandler, tracer: trace.Tracer, *, system: str) -> BatchHandler:
    """`handler` with a span per batch and per event (see the module docstring)."""

    async def traced(batch: Sequence[InboundEvent]) -> list[Outcome]:
        source = batch[0].source if batch else ""
        with tracer.start_as_current_span(
            f"process {source} batch",
            kind=SpanKind.INTERNAL,
            attributes={"messaging.system": system, "messaging.batch.message_count": len(batch)},
        ) as batch_span:
            link = [Link(batch_span.get_span_context())]
            spans = [
                tracer.start_span(
                    f"process {event.source}",
                    _parent(event.headers.get("traceparent")),
                    SpanKind.CONSUMER,
                    {
                        "messaging.system": system,
                        "messaging.operation.type": "process",
                        "messaging.destination.name": event.source,
                        "messaging.message.id": str(event.payload.get("event_id", "")),
                    },
                    links=link,
                )
                for event in batch
            ]
            events = [
                dataclasses.replace(event, traceparent=traceparent_of(span.get_span_context()))
                for event, span in zip(batch, spans, strict=True)
            ]
            try:
                outcomes = await handler(events)
            except BaseException as exc:
                for span in spans:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    span.end()
                raise
            for span, outcome in zip(spans, outcomes, strict=True):
                if isinstance(outcome, Rejected):
                    span.set_attribute("campaign.dead_letter_reason", outcome.reason)
                    span.set_status(Status(StatusCode.ERROR, f"rejected: {outcome.reason}"))
                elif outcome is not None:
                    span.set_status(Status(StatusCode.ERROR, type(outcome).__name__))
                span.end()
            return outcomes

    return traced
