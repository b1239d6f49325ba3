"""One long-lived thread for all model work in a process with a UI or a server.

MLX keeps per-thread state. When a short-lived worker thread that used MLX exits while
the interpreter is shutting down, the clean-up of that state can abort the whole process
("terminate called without an active exception", seen with mlx 0.32 on Linux). A single
daemon thread that lives as long as the process never runs that clean-up, and as a bonus
runs model jobs one at a time, in order, which is what one model in memory needs anyway.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ModelThread:
    """A daemon thread that runs submitted jobs one after another."""

    def __init__(self, name: str = "qwen-mlx-model") -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn, args, kwargs))
        return future

    def _serve(self) -> None:
        while True:
            future, fn, args, kwargs = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as e:  # handed to whoever waits on the future
                future.set_exception(e)


_shared: ModelThread | None = None
_lock = threading.Lock()


def model_thread() -> ModelThread:
    """The process-wide model thread (started on first use)."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = ModelThread()
        return _shared


async def on_model_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """`fn(*args, **kwargs)` run on the model thread, awaited from an event loop (the chat
    app's, the server's): the loop goes on meanwhile, and jobs keep their order."""
    return await asyncio.wrap_future(model_thread().submit(fn, *args, **kwargs))
