"""`GET /health`: whether the server is up, its model, and the engine's work (queue,
batch, restarts, a split model's ranks); asked by load balancers and `chat --web`, so it
needs no API key."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ..protocol import Protocol, ServerContext


def install(router: APIRouter, ctx: ServerContext) -> None:
    engine = ctx.engine

    @router.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": engine.model.name, **engine.status()}


PROTOCOL = Protocol(name="health", prefixes=("/health",), install=install, key=None)
