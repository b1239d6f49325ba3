"""Which model the chat app runs, and its draft for speculative decoding: the model the
user used last when none is named, the models of the store for the picker, and the
loading of a draft (checked against the model, remembered as a draft).

Plain functions: the app calls them, the loading ones on the model thread.
"""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qwen_mlx.chat.chat_store import ChatStore
    from qwen_mlx.runtime import Model

MODEL_LOOKBACK = 20  # recent chats searched for a model that is still stored


def default_model(
    home: Path, chats: ChatStore, *, opened: str | None = None, draft: str | None = None
) -> str | None:
    """The model the user used last: the opened chat's (`opened`, a chat id) if it is
    still here, else the most recent chat's, else the most recently converted one; never
    a model used only as a draft (nor `draft`, this run's). None when there is none."""
    from qwen_mlx.store import Store

    first = chats.get(opened) if opened else None
    recent = chats.list()[:MODEL_LOOKBACK]
    seen = set()
    store = Store(home)
    try:
        for chat in [first, *recent]:
            if chat is None or not chat.model or chat.model in seen:
                continue
            seen.add(chat.model)
            if Path(chat.model).expanduser().is_dir():
                return chat.model
            with suppress(Exception):  # removed, or a name this version does not know
                if store.models_dir.is_dir() and store.find(chat.model) is not None:
                    return chat.model
        model_draft = draft if draft not in (None, "lookup") else None
        return store.recent_model(exclude=(model_draft,) if model_draft else ())
    except Exception:
        return None
    finally:
        store.close()


def stored_models(home: Path) -> list[str]:
    """The names of the models in the store (none when it has no models folder)."""
    from qwen_mlx.store import Store

    store = Store(home)
    try:
        return [m.name for m in store.list()] if store.models_dir.is_dir() else []
    finally:
        store.close()


def load_draft(model: Model, ref: str, home: Path) -> Model:
    """The draft model `ref` for `model` (TokenizerMismatchError if it does not share the
    tokenizer), remembered as a draft so it is never the model a chat opens with when none
    is named. Loads weights: call it on the model thread."""
    from qwen_mlx.runtime import check_tokenizers, load
    from qwen_mlx.store import Store

    draft = load(ref)
    check_tokenizers(model, draft)
    # A read-only or busy store does not stop speculative decoding.
    with suppress(Exception):
        store = Store(home)
        try:
            store.note_draft(ref)
        finally:
            store.close()
    return draft


def load_model(ref: str, options: dict[str, Any]) -> Model:
    """The model `ref`, loaded with `options` (a group of ranks to split across)."""
    from qwen_mlx.runtime import load

    return load(ref, **options)
