"""The server's counters, which `GET /metrics` serves in Prometheus' text format
(prometheus_client; the route: protocols/prometheus.py).

Requests by route, method and status (counted by a middleware outside every other one,
so refusals by the body limit, the host check and the catch-all count too); prompt,
cached and generated tokens, generations by finish reason and prompt-cache hits, from
the engine's finished jobs (prompt tokens split into those reused from the prompt cache
and those prefilled); time-to-first-token and tokens/s histograms; and, read at
each scrape, the queue depth, the prompt cache's entries and bytes (in memory and in
--cache-dir, and the requests that read theirs from disk), and MLX's memory in
use. Each app has its own registry, so two servers in one process count apart. The route
label is the route's template (`/v1/responses/{response_id}`), never the raw path, and the
method label is one of HTTP's own methods or "other", so clients cannot grow the label set;
a path no route matches counts as "unmatched".
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.routing import Match

from .engine import Engine
from .jobs import Finished

_TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TPS_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 75, 100, 150, 200, 300, 500)
# RFC 9110's methods and PATCH; any other name a client sends is counted as "other".
_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


class Metrics:
    """The server's Prometheus metrics, fed by `engine`'s finished jobs and by
    `RequestCounter`."""

    def __init__(self, engine: Engine) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "qwen_mlx_http_requests",
            "HTTP requests by route template, method and status code.",
            ["route", "method", "status"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "qwen_mlx_prompt_tokens", "Prompt tokens of finished generations.", registry=registry
        )
        self.cached_tokens = Counter(
            "qwen_mlx_prompt_cached_tokens",
            "Prompt tokens taken from the prompt cache instead of prefilled.",
            registry=registry,
        )
        self.prefilled_tokens = Counter(
            "qwen_mlx_prompt_prefilled_tokens",
            "Prompt tokens the model read (those not taken from the prompt cache).",
            registry=registry,
        )
        self.generated_tokens = Counter(
            "qwen_mlx_generated_tokens", "Tokens generated.", registry=registry
        )
        self.generations = Counter(
            "qwen_mlx_generations",
            "Finished generations by finish reason.",
            ["finish_reason"],
            registry=registry,
        )
        # As llama.cpp's server names them (llamacpp:n_drafted_total, ..._accepted_total).
        self.drafted_tokens = Counter(
            "qwen_mlx_draft_tokens",
            "Speculative draft tokens proposed (--draft).",
            registry=registry,
        )
        self.accepted_tokens = Counter(
            "qwen_mlx_draft_accepted_tokens",
            "Speculative draft tokens the model accepted.",
            registry=registry,
        )
        self.cache_hits = Counter(
            "qwen_mlx_prompt_cache_hits",
            "Generations that started from a pooled KV cache.",
            registry=registry,
        )
        self.cache_misses = Counter(
            "qwen_mlx_prompt_cache_misses",
            "Generations that prefilled their whole prompt.",
            registry=registry,
        )
        self.ttft = Histogram(
            "qwen_mlx_time_to_first_token_seconds",
            "Seconds from a generation's start on the model to its first token.",
            buckets=_TTFT_BUCKETS,
            registry=registry,
        )
        self.tps = Histogram(
            "qwen_mlx_generation_tokens_per_second",
            "Decoding speed of each generation (tokens after the first, per second).",
            buckets=_TPS_BUCKETS,
            registry=registry,
        )
        gauges = {
            "qwen_mlx_queue_depth": ("Jobs waiting or running.", lambda: engine.queued),
            "qwen_mlx_prompt_cache_entries": ("KV caches in the pool.", lambda: len(engine.cache)),
            "qwen_mlx_prompt_cache_bytes": (
                "Bytes the pooled KV caches hold.",
                lambda: engine.cache.bytes,
            ),
            "qwen_mlx_prompt_cache_tokens": (
                "Tokens the pooled KV caches hold.",
                lambda: engine.cache.tokens,
            ),
            "qwen_mlx_prompt_cache_disk_bytes": (
                "Bytes of the prompt caches in --cache-dir.",
                lambda: engine.cache.disk.bytes if engine.cache.disk else 0,
            ),
            "qwen_mlx_prompt_cache_disk_reads": (
                "Requests that read their prefix from --cache-dir since the server started.",
                lambda: engine.cache.disk_reads,
            ),
            "qwen_mlx_memory_active_bytes": ("MLX memory in use.", _mlx("get_active_memory")),
            "qwen_mlx_memory_cache_bytes": ("MLX's buffer cache.", _mlx("get_cache_memory")),
            "qwen_mlx_memory_peak_bytes": (
                "MLX's peak memory since the last generation began.",
                _mlx("get_peak_memory"),
            ),
        }
        for name, (doc, read) in gauges.items():
            Gauge(name, doc, registry=registry).set_function(read)
        engine.observers.append(self.observe)

    def observe(self, done: Finished) -> None:
        """Count a finished job (called on the model thread)."""
        self.generations.labels(done.finish_reason).inc()
        self.prompt_tokens.inc(done.prompt_tokens)
        self.cached_tokens.inc(done.cached_tokens)
        self.prefilled_tokens.inc(done.prompt_tokens - done.cached_tokens)
        self.generated_tokens.inc(done.completion_tokens)
        self.drafted_tokens.inc(done.drafted)
        self.accepted_tokens.inc(done.accepted)
        (self.cache_hits if done.cached_tokens else self.cache_misses).inc()
        if done.completion_tokens:
            self.ttft.observe(done.time_to_first_token)
        if done.completion_tokens > 1:
            self.tps.observe(done.generation_tps)

    def scrape(self) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


def _mlx(name: str) -> Any:
    def read() -> float:
        import mlx.core as mx

        return float(getattr(mx, name)())

    return read


class RequestCounter:
    """ASGI middleware counting every HTTP request by route template, method and status."""

    def __init__(self, app: Any, metrics: Metrics, routes: FastAPI) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception with no response at all

        async def tracked(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        finally:
            route = self._route(scope)
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"
            self.metrics.requests.labels(route, method, str(status)).inc()

    def _route(self, scope: Any) -> str:
        # FastAPI names the route it ran; a request refused before routing (the body
        # limit, the host check) is matched here.
        route = scope.get("route") or _find(self.routes.router.routes, scope)
        return getattr(route, "path", None) or "unmatched"


def _find(routes: Any, scope: Any) -> Any:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included routers
        if inner is not None:
            if (found := _find(inner.routes, scope)) is not None:
                return found
            continue
        match, child = route.matches(dict(scope))
        if match == Match.FULL:
            return child.get("route", route)
    return None
