"""The server under test, one way for every test module: `serving(model, ...)` runs
`create_app` under uvicorn (as `qwen-mlx serve` configures it) on a free port and tears it
all down after; `Served` is what a test talks to. conftest.py's `serve` fixtures use it.

The names the server tests share (the key, the tiny model's name, the limits, a weather
tool, a chat turn, many clients at once) live here too, so no test module imports another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx

from .helpers import start_server

KEY = "test-key"
MODEL = "qwen3-1m-tiny-2507-mlx-q4-g64"  # the tiny model's name (a request may name no other)
CONTEXT = 2048
MAX_TOKENS_CAP = 256
MAX_BODY = 64 * 1024

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 12},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
CALL_TEXT = (
    'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
    '{"city": "Paris", "unit": "celsius"}}\n</tool_call>'
)


@dataclass
class Served:
    """A running server: its engine and app, where it listens, and the clients that talk
    to it with its key. `jobs` records every job the engine was given (its prompt ids,
    sampling and logits processors), in order; the jobs still run as they would."""

    engine: Any  # qwen_mlx.server.Engine
    app: Any
    base: str  # http://127.0.0.1:PORT
    thread: threading.Thread  # where the server's event loop runs
    key: str | None = KEY
    jobs: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The OpenAI routes' base URL (ends in /v1)."""
        return self.base + "/v1"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}

    def client(self, api_key: str | None = None) -> Any:
        import openai

        key = api_key or self.key or "-"
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=60)

    def anthropic(self) -> Any:
        import anthropic

        key = self.key or "-"
        return anthropic.Anthropic(base_url=self.base, api_key=key, max_retries=0, timeout=60)

    def ollama(self) -> Any:
        import ollama

        return ollama.Client(host=self.base, headers=self.auth, timeout=60)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST to an OpenAI route (`path` after /v1) with the key."""
        headers = {**self.auth, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return httpx.post(self.url + path, headers=headers, **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        """GET a path of the server (from its root) with the key."""
        headers = {**self.auth, **kwargs.pop("headers", {})}
        kwargs.setdefault("timeout", 60)
        return httpx.get(self.base + path, headers=headers, **kwargs)

    def wait_for_finish(self, before: int, timeout: float = 30.0) -> Any:
        """The Finished record of the next job to end after `before` had ended."""
        wait_until(lambda: len(self.engine.finished) > before, timeout, "no generation ended")
        return self.engine.finished[-1]


@contextmanager
def serving(
    model: Any,
    *,
    key: str | None = KEY,
    app: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    **engine: Any,
) -> Iterator[Served]:
    """An `Engine(model, **engine)` served by `create_app(engine, api_key=key, **app)`
    with uvicorn's `limits`, stopped (server, web chat, engine) when the block ends."""
    from qwen_mlx.server import Engine, create_app

    engine_ = Engine(model, **engine)
    try:
        app_ = create_app(engine_, api_key=key, **(app or {}))
        server, thread, port = start_server(app_, **(limits or {}))
    except BaseException:
        engine_.close()
        raise
    served = Served(engine_, app_, f"http://127.0.0.1:{port}", thread, key)
    _record_jobs(served)
    try:
        yield served
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        web = getattr(app_.state, "web", None)
        if web is not None:
            web.close()
        engine_.close()


def _record_jobs(served: Served) -> None:
    """Keep each job the engine is given in `served.jobs` (then run it as ever)."""
    engine = served.engine
    events = engine.events

    def recorded(job: Any, *args: Any, **kwargs: Any) -> Any:
        served.jobs.append(job)
        return events(job, *args, **kwargs)

    engine.events = recorded


def wait_until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> None:
    """Poll `condition` until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or "timed out waiting"
        time.sleep(0.02)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def all_at_once(ask: Callable[[int], Any], n: int) -> list[Any]:
    """`ask(i)` for i < n, each on its own thread at the same time."""
    answers: list[Any] = [None] * n
    threads = [
        threading.Thread(target=lambda i=i: answers.__setitem__(i, ask(i))) for i in range(n)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return answers
