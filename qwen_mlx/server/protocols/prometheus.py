"""`GET /metrics`: the server's counters (`..metrics`) in Prometheus' text format, behind
the API key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from ..protocol import Protocol, ServerContext


def install(router: APIRouter, ctx: ServerContext) -> None:
    metrics = ctx.metrics

    @router.get("/metrics", include_in_schema=False)
    async def scrape() -> Response:
        return metrics.scrape()


PROTOCOL = Protocol(name="prometheus", prefixes=("/metrics",), install=install)
