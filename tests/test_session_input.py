"""ChatSession refuses text it could neither tokenize nor save, before it changes anything."""

from __future__ import annotations

import pytest

from qwen_mlx import ChatSession

LONE = "a\ud800b"  # a lone surrogate: what JSON's "\ud800" escape decodes to


def test_a_message_with_a_lone_surrogate_is_refused_and_later_saves_work(tiny_model, tmp_path):
    session = ChatSession(tiny_model)
    with pytest.raises(ValueError, match=r"not valid Unicode.*character 1"):
        session.send(LONE)
    assert session.messages == []
    "".join(c.text for c in session.send("hello", max_tokens=3, temperature=0))
    with pytest.raises(ValueError, match="not valid Unicode"):
        session.edit(0, LONE)
    with pytest.raises(ValueError, match="tool message is not valid Unicode"):
        session.add_message({"role": "tool", "name": "f", "content": "ok", "extra": [LONE]})
    assert [m["role"] for m in session.messages] == ["user", "assistant"]
    assert session.messages[0]["content"] == "hello"
    session.save(tmp_path / "chat")  # used to fail for good once such a message was in
    resumed = ChatSession.load(tmp_path / "chat", tiny_model)
    assert resumed.messages == session.messages


def test_text_that_is_not_a_string_is_a_type_error(tiny_model):
    session = ChatSession(tiny_model)
    with pytest.raises(TypeError, match="not bytes"):
        session.send(b"hello")
    assert session.messages == []
