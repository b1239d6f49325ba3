"""A chat of the ChatStore as both front ends use it (the terminal app, the web chat): its
settings and the ChatSession it becomes.

A chat's settings are the sampling parameters it sets over the model's (`Chat.params`,
its "overrides"), its system prompt and its context policy. One rule makes its sampling
(`chat_sampling`: the model's defaults with the overrides on top), one check (`settle`)
turns new settings into what a chat keeps, refusing the whole change before anything is
applied, and `resume` opens a saved chat with its KV cache, so either front end goes on
where the other left it without re-reading the history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .policy import ContextPolicy

if TYPE_CHECKING:
    from ..runtime import Message, Model, SamplingParams
    from ..runtime.memory import MemoryPlanner
    from .chat_store import Chat, ChatStore
    from .session import ChatSession

# The sampling parameters a chat can set, in the order the front ends show them.
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "repetition_penalty")


def chat_sampling(model: Model, overrides: Mapping[str, Any]) -> SamplingParams:
    """A chat's sampling parameters: the model's defaults (its generation_config.json) with
    the chat's `overrides` on top. ValueError when the sampler refuses them."""
    return model.default_params.replace(**overrides)


def overrides_after(overrides: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """`overrides` after `changes`: a value sets its parameter, None takes it back to the
    model's default."""
    after = dict(overrides)
    for key, value in changes.items():
        if value is None:
            after.pop(key, None)
        else:
            after[key] = value
    return after


@dataclass(frozen=True)
class ChatSettings:
    """What a chat keeps of its settings, checked: the overrides saved with it, the
    sampling they make, the system prompt (None: none) and the context policy."""

    overrides: dict[str, Any]
    params: SamplingParams
    system: str | None
    policy: ContextPolicy


def settle(
    model: Model,
    changes: Mapping[str, Any],
    *,
    system: str | None,
    policy: ContextPolicy | str,
    overrides: Mapping[str, Any] | None = None,
) -> ChatSettings:
    """The settings a chat gets from sampling `changes` (see `overrides_after`) to its
    `overrides`, a system prompt (blank: none) and a policy name. ValueError, before
    anything changes, when the sampler refuses the parameters or the policy is unknown."""
    after = overrides_after(overrides or {}, changes)
    params = chat_sampling(model, after)
    try:
        chosen = ContextPolicy(policy)
    except ValueError:
        raise ValueError(
            f"Unknown context policy {policy!r}: one of {', '.join(ContextPolicy.names())}."
        ) from None
    return ChatSettings(after, params, (system or "").strip() or None, chosen)


def resume(
    store: ChatStore,
    chat: Chat,
    model: Model,
    *,
    messages: Sequence[Message] | None = None,
    planner: MemoryPlanner | None = None,
    kv_bits: int | None = None,
) -> ChatSession:
    """A ChatSession for a saved chat, with its saved KV cache when that still belongs to
    `model` and is intact (`notices` says why not otherwise), else one that reads the
    history with its next reply. The messages are the store's (`messages`: as read from it
    already), the sampling and the policy the chat's. Loads MLX arrays: call it on the
    model thread."""
    from .session import ChatSession

    if messages is None:
        messages = store.messages(chat.id)
    params = chat_sampling(model, chat.params)
    path = store.session_path(chat.id)
    if path.is_file():
        with suppress(ValueError):  # an unreadable session file: the messages are in SQLite
            session = ChatSession.load(
                path, model, policy=chat.policy, planner=planner, messages=messages
            )
            session.params = params
            return session
    session = ChatSession(
        model, params=params, policy=chat.policy, planner=planner, kv_bits=kv_bits
    )
    for message in messages:
        session.add_message(message)
    return session
