"""W3C traceparent: a valid caller trace is joined with a new span; anything else starts a trace."""

from __future__ import annotations

import contextvars
import re

import pytest

from campaign_service import context

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _in_fresh_context(fn, *args):
    return contextvars.copy_context().run(fn, *args)


def test_valid_traceparent_keeps_trace_and_flags_with_a_new_span() -> None:
    t = _in_fresh_context(context.continue_trace, f"00-{TRACE}-{PARENT}-01")
    assert (t.trace_id, t.flags) == (TRACE, "01")
    assert t.span_id != PARENT
    assert re.fullmatch(r"[0-9a-f]{16}", t.span_id)
    assert t.traceparent == f"00-{TRACE}-{t.span_id}-01"


def test_future_version_may_append_fields() -> None:
    t = _in_fresh_context(context.continue_trace, f"01-{TRACE}-{PARENT}-00-extra")
    assert (t.trace_id, t.flags) == (TRACE, "00")


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"ff-{TRACE}-{PARENT}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{PARENT}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE.upper()}-{PARENT}-01",  # lowercase hex only
    ],
)
def test_invalid_or_missing_traceparent_starts_a_new_trace(header: str | None) -> None:
    t = _in_fresh_context(context.continue_trace, header)
    assert t.trace_id != TRACE
    assert re.fullmatch(r"[0-9a-f]{32}", t.trace_id)
    assert t.flags == "01"


def test_outgoing_headers_carry_correlation_id_and_our_span_as_parent() -> None:
    def run() -> tuple[dict[str, str], context.Trace]:
        context.correlation_id.set("corr-1")
        t = context.continue_trace(f"00-{TRACE}-{PARENT}-01")
        return context.outgoing_headers(), t

    headers, t = _in_fresh_context(run)
    assert headers == {"correlation_id": "corr-1", "traceparent": f"00-{TRACE}-{t.span_id}-01"}


def test_outgoing_headers_outside_a_request_start_a_trace() -> None:
    headers = _in_fresh_context(context.outgoing_headers)
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-01", headers["traceparent"])
    assert headers["correlation_id"]
