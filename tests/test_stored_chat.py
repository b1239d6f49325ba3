"""A saved chat as both front ends use it (qwen_mlx/chat/stored_chat.py): its sampling, new
settings checked whole, and the session it becomes, with its KV cache when usable."""

from __future__ import annotations

import pytest

from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.chat.policy import ContextPolicy
from qwen_mlx.chat.session import ChatSession
from qwen_mlx.chat.stored_chat import chat_sampling, overrides_after, resume, settle


def test_a_chats_sampling_is_the_models_defaults_with_its_overrides(tiny_model):
    params = chat_sampling(tiny_model, {"temperature": 0.25, "top_k": 7})
    assert (params.temperature, params.top_k) == (0.25, 7)
    assert params.top_p == tiny_model.default_params.top_p
    with pytest.raises(ValueError, match="top_p"):
        chat_sampling(tiny_model, {"top_p": 5.0})


def test_overrides_take_changes_and_none_goes_back_to_the_default():
    before = {"temperature": 0.2, "top_k": 7}
    after = overrides_after(before, {"temperature": None, "max_tokens": 9})
    assert after == {"top_k": 7, "max_tokens": 9}
    assert before == {"temperature": 0.2, "top_k": 7}  # not changed in place


def test_settle_checks_everything_before_anything_changes(tiny_model):
    settings = settle(
        tiny_model, {"top_k": 3}, system="  Be brief. ", policy="error", overrides={"top_p": 0.5}
    )
    assert settings.overrides == {"top_p": 0.5, "top_k": 3}
    assert (settings.params.top_p, settings.params.top_k) == (0.5, 3)
    assert settings.system == "Be brief." and settings.policy is ContextPolicy.ERROR
    assert settle(tiny_model, {}, system="   ", policy="truncate").system is None
    with pytest.raises(ValueError, match="top_p"):
        settle(tiny_model, {"top_p": 5.0}, system=None, policy="truncate")
    with pytest.raises(ValueError, match="Unknown context policy 'sideways'"):
        settle(tiny_model, {}, system=None, policy="sideways")


def test_resume_opens_a_saved_chat_with_its_kv_cache(tiny_model, home):
    store = ChatStore(home)
    chat = store.create(model=tiny_model.ref, params={"max_tokens": 4, "temperature": 0})
    first = ChatSession(tiny_model, params=chat_sampling(tiny_model, chat.params))
    list(first.send("Remember the number 42"))
    store.save_messages(chat.id, first.history)
    first.save(store.session_path(chat.id))

    session = resume(store, chat, tiny_model)
    assert session.cache_tokens == first.cache_tokens and not session.notices
    assert session.history == first.history
    assert (session.params.max_tokens, session.params.temperature) == (4, 0)

    store.session_path(chat.id).write_text("not a session")  # unreadable: the messages stay
    again = resume(store, chat, tiny_model)
    assert again.history == first.history and again.cache_tokens == []
    assert again.params.max_tokens == 4 and again.policy.value == chat.policy
    store.close()
