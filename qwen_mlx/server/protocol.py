"""How a protocol joins the server: each is one `Protocol` value, and `create_app` registers
them all the same way, over the same shared parts (`ServerContext`).

A protocol names the paths it answers (`prefixes`: its errors take its shape there, even
those refused before any route ran), adds its routes to a router the guard holds
(`install`: the API key is checked where `key` says its clients send it), and writes
errors in its own shape (`error_body`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import Shape, openai_error
from .guard import BEARER, Guard, KeySource

if TYPE_CHECKING:
    from fastapi import APIRouter
    from starlette.datastructures import State

    from .engine import Engine
    from .metrics import Metrics


@dataclass
class ServerContext:
    """What every protocol's routes are built over: the engine, the guard (the key and
    the body), the metrics, the app's `state` (where a protocol leaves what others read:
    the Responses store as `responses`, the web chat's chats as `web`) and the settings."""

    engine: Engine
    guard: Guard
    metrics: Metrics
    state: State
    web_home: str | Path | None = None  # the web chat's chats (None: the store's)


@dataclass(frozen=True)
class Protocol:
    """One API the server speaks (see the module docstring)."""

    name: str
    prefixes: tuple[str, ...]
    install: Callable[[APIRouter, ServerContext], None]
    error_body: Shape = openai_error
    # Where its clients send the API key; None: it needs none (/health) or checks it
    # itself (the web chat's session).
    key: KeySource | None = BEARER


def error_shapes(protocols: tuple[Protocol, ...]) -> dict[str, Shape]:
    """Each path prefix with the error shape of the protocol that answers it."""
    return {prefix: p.error_body for p in protocols for prefix in p.prefixes}
