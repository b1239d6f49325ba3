"""The chat app's settings that outlive a start, driven with Textual's Pilot on the tiny
model: /draft survives a restart."""

from __future__ import annotations

import pytest

from qwen_mlx.chat.chats import ChatStore
from qwen_mlx.convert import convert
from tui.widgets import MessageView

from .test_tui import exchange, replies, running, wait_for


@pytest.fixture
def stored(tiny_hf, home) -> str:
    """The tiny model converted into this test's store (the app's default model)."""
    convert(str(tiny_hf))
    return "qwen3-1m-tiny"


@pytest.mark.asyncio
async def test_draft_lookup_survives_a_restart_until_turned_off(stored, home):
    async with running(home) as (app, pilot):
        app.run_command("/draft lookup")
        await wait_for(pilot, lambda: app.draft_ref == "lookup")
        assert any("kept for the next start" in n.message for n in app._notifications)
    assert ChatStore(home).setting("draft") == "lookup"
    async with running(home) as (app, pilot):
        await wait_for(pilot, lambda: app.draft == "lookup")
        assert app.session.drafter is not None
        app.run_command("/max_tokens 8")
        await exchange(pilot, "the same words, the same words, the same words")
        assert replies(app) == 1
        app.run_command("/draft off")
        await wait_for(pilot, lambda: app.draft_ref is None)
    async with running(home) as (app, pilot):
        assert app.draft_ref is None and app.session.drafter is None
    async with running(home, draft="lookup") as (app, pilot):  # --draft: this start only
        await wait_for(pilot, lambda: app.draft == "lookup")
    assert ChatStore(home).setting("draft") is None


@pytest.mark.asyncio
async def test_a_saved_draft_that_no_longer_loads_is_said_once_and_forgotten(stored, home):
    store = ChatStore(home)
    store.set_setting("draft", "no-such-model")
    store.close()
    async with running(home) as (app, pilot):
        await wait_for(
            pilot,
            lambda: any("No speculative decoding" in n.message for n in app._notifications),
        )
        assert any("saved /draft setting is cleared" in n.message for n in app._notifications)
        assert app.draft_ref is None
    assert ChatStore(home).setting("draft") is None
    async with running(home) as (app, pilot):
        assert not [v for v in app.query(MessageView)]
        assert not any("No speculative decoding" in n.message for n in app._notifications)
