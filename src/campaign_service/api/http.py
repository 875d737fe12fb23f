"""HTTP probes and metrics on one aiohttp app: /health, /ready, /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


@dataclass(frozen=True)
class Check:
    """A readiness check: `critical` failures make /ready answer 503; others only degrade."""

    name: str
    probe: Callable[[], Awaitable[str | None]]  # None when fine, else a short reason
    critical: bool = True


def build_http_app(
    checks: list[Check], timeout_s: float = 2.0, draining: Callable[[], bool] = lambda: False
) -> web.Application:
    """`draining()` true (SIGTERM received) makes /ready answer 503 so no new traffic arrives;
    /health stays 200 while in-flight work finishes."""

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(_: web.Request) -> web.Response:
        if draining():
            return web.json_response({"status": "shutting down", "checks": {}}, status=503)
        report: dict[str, str] = {}
        ok = True
        for check in checks:
            try:
                problem = await asyncio.wait_for(check.probe(), timeout_s)
            except TimeoutError:
                problem = "timed out"
            except OSError as exc:
                problem = type(exc).__name__
            report[check.name] = "ok" if problem is None else problem
            if problem is not None and check.critical:
                ok = False
        status = "ready" if ok else "not ready"
        if ok and any(v != "ok" for v in report.values()):
            status = "degraded"
        return web.json_response({"status": status, "checks": report}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics)
    return app
