"""The chat app's status line, progress bar and settings that outlive a start, driven
with Textual's Pilot on the tiny model: long reads show tokens read of total with the
time left and stop on Esc, the context policy's notices are heard as it decides, the
status line belongs to the chat on screen and fits its width, /draft survives a restart."""

from __future__ import annotations

import re
import time

import pytest

from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.convert import convert
from qwen_mlx.errors import GenerationCancelled
from qwen_mlx.runtime.memory import MIN_CHUNK, Budget, MemoryPlanner, attention_workspace
from tui.app import ChatApp
from tui.widgets import MessageView, PromptInput, StatusBar, WorkProgress

from .test_tui import exchange, replies, running, wait_for
from .webchat import slow_prefill


@pytest.fixture
def stored(tiny_hf, home) -> str:
    """The tiny model converted into this test's store (the app's default model)."""
    convert(str(tiny_hf))
    return "qwen3-1m-tiny"


def detail(app: ChatApp) -> str:
    """What the progress bar says."""
    return str(app.query_one("#progress", WorkProgress).query_one(".detail").render())


def small_planner(model, tokens: int) -> MemoryPlanner:
    """A planner whose budget holds exactly `tokens` tokens (bf16 KV, smallest chunk)."""
    real = MemoryPlanner.for_model(model)
    planner = MemoryPlanner(real.shape, real.weights, Budget(1, 1, "test"))
    budget = real.weights + planner.kv_per_token(None) * tokens
    budget += attention_workspace(real.shape, MIN_CHUNK, tokens)
    return MemoryPlanner(real.shape, real.weights, Budget(budget, budget, "test"))


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
async def test_a_short_reply_shows_no_progress_bar(stored, home):
    async with running(home) as (app, pilot):
        bar = app.query_one("#progress", WorkProgress)
        seen = []
        app.set_interval(0.01, lambda: seen.append(bar.display))
        app.run_command("/max_tokens 3")
        await exchange(pilot, "hi")
        assert not any(seen)


@pytest.mark.asyncio
async def test_the_context_policy_says_what_it_did_as_it_does_it(stored, home):
    async with running(home) as (app, pilot):
        app.session.planner = small_planner(app.model, 300)
        app.run_command("/max_tokens 8")
        app.run_command("/temp 0")
        for _ in range(12):
            await exchange(pilot, "a few words in a message " * 2)
            if app.session.dropped_messages:
                break
        assert app.session.dropped_messages
        heard = [n for n in app._notifications if n.title == "Context policy"]
        assert len(heard) == 1 and heard[0].message.startswith("Left the ")
        assert "It now takes" in heard[0].message
        status = app.query_one(StatusBar).render().plain
        assert f"⚠ {app.session.dropped_messages} oldest messages not in the prompt" in status


@pytest.mark.asyncio
async def test_an_attachment_shows_tokens_read_of_total_with_the_time_left(
    stored, home, tmp_path, monkeypatch
):
    import qwen_mlx.chat.session as session_module

    real = session_module.prefill
    go = {"on": True}

    def creeping(model, tokens, cache, *, should_stop, progress=None, **kwargs):
        give_up = time.monotonic() + 60  # a regression fails the test, not hangs it
        done = 0
        while go["on"] and time.monotonic() < give_up:
            done = min(done + 1, len(tokens) - 1)
            if progress is not None:
                progress(done, len(tokens))
            if should_stop():
                raise GenerationCancelled("stopped")
            time.sleep(0.02)
        return real(model, tokens, cache, should_stop=should_stop, progress=progress, **kwargs)

    monkeypatch.setattr(session_module, "prefill", creeping)
    doc = tmp_path / "notes.md"
    doc.write_text("The launch is on Tuesday. " * 40)
    async with running(home) as (app, pilot):
        bar = app.query_one("#progress", WorkProgress)
        app.run_command(f"/attach {doc}")
        await wait_for(pilot, lambda: bar.display and " left" in detail(app))
        shown = detail(app)
        total = re.search(r"Reading notes\.md: [\d,]+ of ([\d,]+) tokens · \d+:\d\d left", shown)
        assert total, shown  # counted, never an unknown "--%"
        assert int(total[1].replace(",", "")) > 100
        go["on"] = False
        await wait_for(pilot, lambda: not app.busy)
        assert not bar.display


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
        app._open_chat(first)  # switching, as the sidebar does
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
