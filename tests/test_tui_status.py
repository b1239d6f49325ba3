"""The chat app's status line, progress bar and settings that outlive a start, driven
with Textual's Pilot on the tiny model: a long read before a reply shows tokens read of
total with the time left and stops on Esc, the status line belongs to the chat on screen
and fits its width, /draft survives a restart. (The same in the open chat alone, with
attachments and the context policy's notices: test_tui_parts.py.)"""

from __future__ import annotations

import re

import pytest

from qwen_mlx.chat.chat_store import ChatStore
from tui.app import ChatApp
from tui.widgets import MessageView, PromptInput, StatusBar, WorkProgress

from .tui_pilot import exchange, replies, running, slow_prefill, wait_for


def detail(app: ChatApp) -> str:
    """What the progress bar says."""
    return str(app.query_one("#progress", WorkProgress).query_one(".detail").render())


@pytest.mark.asyncio
async def test_a_long_read_before_a_reply_shows_its_progress_and_esc_stops_it(
    stored, home, monkeypatch
):
    import qwen_mlx.chat.session as session_module

    monkeypatch.setattr(session_module, "stream_tokens", slow_prefill)
    async with running(home) as (app, pilot):
        bar = app.query_one("#progress", WorkProgress)
        app.query_one(PromptInput).load_text("A question about a long chat")
        await pilot.press("enter")
        await wait_for(pilot, lambda: bar.display)  # shown once the read takes a while
        await wait_for(pilot, lambda: " left" in detail(app))
        shown = detail(app)
        assert re.search(r"Reading the prompt: [\d,]+ of [\d,]+ tokens · \d+:\d\d left", shown)
        assert "Esc stops" in shown
        await pilot.press("escape")
        await wait_for(pilot, lambda: not app.streaming and not app.busy)
        assert not bar.display
        assert app.session.messages[-1]["stopped"] is True


@pytest.mark.asyncio
async def test_the_status_line_belongs_to_the_chat_on_screen(stored, home):
    async with running(home) as (app, pilot):
        status = app.query_one(StatusBar)
        app.run_command("/max_tokens 3")
        await exchange(pilot, "First chat")
        first = app.chat.id
        assert "tok/s" in status.render().plain
        await pilot.press("ctrl+n")  # a new chat
        await wait_for(pilot, lambda: app.chat is None)
        assert "tok/s" not in status.render().plain
        app.run_command("/max_tokens 3")
        await exchange(pilot, "Second chat")
        assert "tok/s" in status.render().plain
        app.open_chat(first)  # switching, as the sidebar does
        await wait_for(pilot, lambda: app.chat is not None and app.chat.id == first)
        assert "tok/s" not in status.render().plain
        await exchange(pilot, "Back to the first")
        await pilot.press("f8", "y")  # deleting it
        await wait_for(pilot, lambda: app.chat is None)
        assert "tok/s" not in status.render().plain
        assert status.render().plain.count("\n") == 0  # one line: model and context


@pytest.mark.asyncio
async def test_the_status_line_fits_beside_the_sidebar_with_a_long_context(stored, home):
    async with running(home) as (app, pilot):
        assert app.query_one("#sidebar").display
        app.run_command("/max_tokens 3")
        await exchange(pilot, "word " * 600)  # a context of four digits
        status = app.query_one(StatusBar)
        used, _ = status.context
        assert used >= 1000
        await pilot.pause()
        lines = status.render().plain.splitlines()
        assert f"{used:,} / " in lines[0]  # the figures are kept; the name gives way
        assert all(len(line) <= status.content_size.width for line in lines)
        assert status.size.height == len(lines)  # nothing wrapped
        assert len(lines) == 2  # the model and context, the last reply's figures


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
