"""The chat app's parts alone: the open chat (`ChatView`) mounted by itself in a small host
app on a session of the shared tiny model, a file attached to it, a reply's job on the
model thread with nothing on screen, the sidebar and the MCP servers each in a host app
of their own, and the slash commands against a stand-in for the app."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from textual.app import App, ComposeResult
from textual.widgets import Input, ListView

from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.errors import GenerationCancelled
from qwen_mlx.runtime.memory import MIN_CHUNK, Budget, MemoryPlanner, attention_workspace
from tui.attachments import attach_file
from tui.chat_view import ChatView
from tui.commands import run_command
from tui.reply_job import CacheSaved, PolicyNotice, ReplyDone, ReplyText, run_reply
from tui.screens import ConfirmScreen
from tui.sidebar import Sidebar
from tui.tool_servers import ToolServers
from tui.widgets import MessageView, StatusBar, WorkProgress

from .tui_pilot import (
    driving,
    exchange,
    held_saves,
    hosted,
    key_names,
    notices,
    send,
    views,
    wait_for,
)


def detail(view: ChatView) -> str:
    """What the progress bar says."""
    return str(view.progress.query_one(".detail").render())


def small_planner(model, tokens: int) -> MemoryPlanner:
    """A planner whose budget holds exactly `tokens` tokens (bf16 KV, smallest chunk)."""
    real = MemoryPlanner.for_model(model)
    planner = MemoryPlanner(real.shape, real.weights, Budget(1, 1, "test"))
    budget = real.weights + planner.kv_per_token(None) * tokens
    budget += attention_workspace(real.shape, MIN_CHUNK, tokens)
    return MemoryPlanner(real.shape, real.weights, Budget(budget, budget, "test"))


async def attach(view: ChatView, pilot, path: Path) -> None:
    """Attach `path` as the app does: in a worker of the app."""
    view.app.run_worker(attach_file(view, path), group="attach")
    await pilot.pause()


# -- replies ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sending_a_message_streams_the_reply_into_the_view(tiny_model, home):
    batches = []

    class CountingView(ChatView):
        def on_reply_text(self, message):
            batches.append(message.text)  # Textual then runs ChatView's own handler too

    async with hosted(home, tiny_model, view=CountingView, flush_interval=0) as (view, pilot):
        view.set_params({"temperature": 0, "max_tokens": 200})
        await exchange(pilot, "Hello there")
        shown = views(pilot.app)
        assert shown[0] == ("user", "Hello there")
        assert shown[1][0] == "assistant"
        assert shown[1][1] == view.session.messages[-1]["content"]
        assert len(batches) > 1 and "".join(batches) == shown[1][1]
        status = view.query_one(StatusBar).render()
        assert "tok/s" in status
        assert "context" in status and "/ 32,768" in status


@pytest.mark.asyncio
async def test_a_model_failure_shows_an_error_and_keeps_the_text(tiny_model, home, monkeypatch):
    import qwen_mlx.chat.session as session_module

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")
        yield  # a generator, like the real one

    monkeypatch.setattr(session_module, "stream_tokens", broken)

    async with hosted(home, tiny_model) as (view, pilot):
        await exchange(pilot, "keep me")
        assert view.prompt.text == "keep me"
        assert views(pilot.app) == []
        assert view.session.messages == []
        assert any("the GPU caught fire" in n for n in notices(pilot.app))


@pytest.mark.asyncio
async def test_a_send_refused_for_size_keeps_the_conversation(tiny_model, home, monkeypatch):
    real_for_model = MemoryPlanner.for_model.__func__

    def small_memory(cls, model, budget=None, **options):  # room for ~400 tokens of context
        planner = real_for_model(cls, model, budget, **options)
        planner.budget = Budget(planner.plan(400).total, planner.budget.total, "test")
        return planner

    monkeypatch.setattr(MemoryPlanner, "for_model", classmethod(small_memory))

    async with hosted(home, tiny_model) as (view, pilot):
        app = pilot.app
        view.set_params({"max_tokens": 4})
        await exchange(pilot, "hello")
        kept = list(view.session.messages)
        huge = "lorem ipsum " * 300  # more than the whole context alone
        await send(pilot, huge)
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.click("#yes")  # send anyway: truncating cannot make it fit
        await wait_for(pilot, lambda: any("alone needs" in n for n in notices(app)))
        await wait_for(pilot, lambda: not view.streaming)
        assert view.session.messages == kept  # the earlier exchange is untouched
        assert view.prompt.text == huge
        assert [m.content for m in ChatStore(home).messages(view.chat.id)] == [
            m["content"] for m in kept
        ]


@pytest.mark.asyncio
async def test_a_short_reply_shows_no_progress_bar(tiny_model, home):
    async with hosted(home, tiny_model) as (view, pilot):
        bar = view.progress
        seen = []
        pilot.app.set_interval(0.01, lambda: seen.append(bar.display))
        view.set_params({"max_tokens": 3})
        await exchange(pilot, "hi")
        assert not any(seen)


@pytest.mark.asyncio
async def test_the_context_policy_says_what_it_did_as_it_does_it(tiny_model, home):
    async with hosted(home, tiny_model) as (view, pilot):
        view.session.planner = small_planner(tiny_model, 300)
        view.set_params({"max_tokens": 8, "temperature": 0})
        for _ in range(12):
            # Once it will not fit, the app asks first (what the policy will do): yes.
            await exchange(pilot, "a few words in a message " * 2, send_anyway=True)
            if view.session.dropped_messages:
                break
        assert view.session.dropped_messages
        heard = [n for n in pilot.app._notifications if n.title == "Context policy"]
        assert len(heard) == 1 and heard[0].message.startswith("Left the ")
        assert "It now takes" in heard[0].message
        status = view.status.render().plain
        assert f"⚠ {view.session.dropped_messages} oldest messages not in the prompt" in status


@pytest.mark.asyncio
async def test_a_top_k_beyond_the_vocabulary_breaks_no_reply(tiny_model, home):
    async with hosted(home, tiny_model) as (view, pilot):
        view.set_params({"top_k": 100_000})  # the tiny model has 576 tokens
        assert view.session.params.top_k == 100_000
        await exchange(pilot, "hello")
        await exchange(pilot, "again")  # sampled, unseeded: this failed for good after it
        view.set_params({"top_k": 5})
        await exchange(pilot, "and once more")
        failures = [n.message for n in pilot.app._notifications if n.severity == "error"]
        assert failures == []
        assert sum(m["role"] == "assistant" for m in view.session.messages) == 3


# -- attachments --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_attaching_a_file_adds_its_tokens(tiny_model, home, tmp_path):
    doc = tmp_path / "notes.md"
    doc.write_text("# Notes\n\nThe launch is on Tuesday. Bring the slides.\n" * 5)

    async with hosted(home, tiny_model) as (view, pilot):
        before = view.session.context_tokens
        await attach(view, pilot, doc)
        await wait_for(pilot, lambda: len(view.session.messages) == 1)
        await wait_for(pilot, lambda: view.status.context[0] > before and not view.busy)
        message = view.session.messages[0]["content"]
        assert message.startswith("Attached file `notes.md`:") and "Tuesday" in message
        added = view.session.context_tokens - before
        assert added >= len(tiny_model.encode(doc.read_text()))
        assert len(view.session.cache_tokens) == view.session.context_tokens  # read already
        view.set_params({"max_tokens": 4})  # what is read is checked, not what is said
        await exchange(pilot, "When?")
        assert view.session.last_stats.reused_tokens >= added


@pytest.mark.asyncio
async def test_an_attachment_shows_tokens_read_of_total_with_the_time_left(
    tiny_model, home, tmp_path, monkeypatch
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
    async with hosted(home, tiny_model) as (view, pilot):
        bar = view.query_one("#progress", WorkProgress)
        await attach(view, pilot, doc)
        await wait_for(pilot, lambda: bar.display and " left" in detail(view))
        shown = detail(view)
        total = re.search(r"Reading notes\.md: [\d,]+ of ([\d,]+) tokens · \d+:\d\d left", shown)
        assert total, shown  # counted, never an unknown "--%"
        assert int(total[1].replace(",", "")) > 100
        go["on"] = False
        await wait_for(pilot, lambda: not view.busy)
        assert not bar.display


# -- a reply's job on the model thread, nothing on screen ------------------------------------------


def test_a_reply_job_posts_its_text_in_batches_then_done_then_the_saved_cache(tiny_model, home):
    from qwen_mlx.chat.session import ChatSession

    store = ChatStore(home)
    chat = store.create(model=tiny_model.ref)
    session = ChatSession(tiny_model, params=tiny_model.default_params.replace(max_tokens=40))
    posted = []
    run_reply(
        session, "send", "Hello", chat=chat, store=store, post=posted.append, flush_interval=0
    )
    kinds = [type(m) for m in posted]
    assert kinds[-2:] == [ReplyDone, CacheSaved] and set(kinds[:-2]) <= {ReplyText, PolicyNotice}
    text = "".join(m.text for m in posted if isinstance(m, ReplyText))
    assert text and text == session.messages[-1]["content"]
    done = posted[-2]
    assert done.error is None and done.saving
    assert done.context == (session.context_tokens, session.context_limit)
    assert [m.role for m in store.messages(chat.id)] == ["user", "assistant"]
    assert store.session_path(chat.id).is_file()  # the KV cache, saved last


def test_a_failed_reply_job_takes_its_question_back_and_saves_no_cache(
    tiny_model, home, monkeypatch
):
    import qwen_mlx.chat.session as session_module
    from qwen_mlx.chat.session import ChatSession

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")
        yield  # a generator, like the real one

    monkeypatch.setattr(session_module, "stream_tokens", broken)
    store = ChatStore(home)
    chat = store.create(model=tiny_model.ref)
    session = ChatSession(tiny_model)
    posted = []
    run_reply(session, "send", "Hello", chat=chat, store=store, post=posted.append)
    (done,) = posted
    assert isinstance(done, ReplyDone) and "caught fire" in str(done.error)
    assert not done.saving and session.messages == []
    assert store.messages(chat.id) == [] and not store.session_path(chat.id).exists()


@pytest.mark.asyncio
async def test_the_view_holds_the_chat_while_its_cache_is_saved(tiny_model, home, monkeypatch):
    saving = held_saves(monkeypatch)
    async with hosted(home, tiny_model) as (view, pilot):
        view.set_params({"max_tokens": 4})
        await send(pilot, "hello")
        await wait_for(pilot, lambda: view.busy == "saving the chat")
        assert not view.streaming and not view.prompt.read_only  # typing goes on meanwhile
        assert [v.role for v in view.query(MessageView)] == ["user", "assistant"]
        assert not view.idle()
        await wait_for(pilot, lambda: any("Still saving the chat" in n for n in notices(pilot.app)))
        saving.set()
        await wait_for(pilot, lambda: view.busy == "")
        assert view.idle()


# -- the sidebar -----------------------------------------------------------------------------------


class SidebarHost(App[None]):
    """The sidebar alone, recording the chats it says were picked."""

    def __init__(self, store: ChatStore) -> None:
        super().__init__()
        self.sidebar = Sidebar(store, id="sidebar")
        self.picked: list[str] = []

    def compose(self) -> ComposeResult:
        yield self.sidebar

    def on_sidebar_selected(self, event: Sidebar.Selected) -> None:
        self.picked.append(event.chat_id)


@pytest.mark.asyncio
async def test_the_sidebar_lists_searches_and_picks_chats(home):
    store = ChatStore(home)
    for title in ("Travel plans", "Groceries", "Trivia night"):
        store.rename(store.create().id, title)
    newest = store.list()[0]
    host = SidebarHost(store)
    async with driving(host) as pilot:
        sidebar = host.sidebar
        sidebar.list_chats(current=newest.id)
        await pilot.pause()
        items = sidebar.query_one("#chat-items", ListView)
        titles = [str(row.title.render()) for row in items.children]
        assert titles == [c.title for c in store.list()]  # most recent first
        assert items.highlighted_child.chat_id == newest.id  # the open chat's row
        assert items.highlighted_child.has_class("current")

        sidebar.focus_search()
        await pilot.press(*key_names("tr"))
        await wait_for(pilot, lambda: len(items.children) == 2)
        assert [str(row.title.render()) for row in items.children] == [
            "Trivia night",
            "Travel plans",
        ]
        await pilot.press("enter")  # the first match
        await wait_for(pilot, lambda: host.picked)
        assert host.picked == [store.list("tr")[0].id]

        await pilot.press("down", "down", "enter")  # to the list, the second row, open it
        await wait_for(pilot, lambda: len(host.picked) == 2)
        assert host.picked[1] == store.list("tr")[1].id
        assert sidebar.query_one("#chat-search", Input).value == "tr"
    store.close()


# -- the MCP servers -----------------------------------------------------------------------------


class ToolServersHost(App[None]):
    def __init__(self, home: Path) -> None:
        super().__init__()
        self.servers = ToolServers(home)

    def compose(self) -> ComposeResult:
        yield self.servers


@pytest.mark.asyncio
async def test_mcp_without_a_config_says_how_to_add_servers_and_lists_a_config(home):
    host = ToolServersHost(home)
    async with driving(host) as pilot:
        servers = host.servers
        servers.command("", may_change=lambda: True)
        await wait_for(pilot, lambda: any("Add an `mcp` section to" in n for n in notices(host)))
        servers.command("frob", may_change=lambda: True)
        await wait_for(pilot, lambda: any(n.startswith("/mcp lists") for n in notices(host)))

        config = {"mcp": {"notes": {"command": "python", "args": ["notes.py"], "enabled": False}}}
        (home / "chat.json").write_text(json.dumps(config))
        servers.command("list", may_change=lambda: True)
        await wait_for(
            pilot, lambda: any("notes (stdio: python notes.py): off" in n for n in notices(host))
        )
        servers.command("enable nope", may_change=lambda: True)
        await wait_for(pilot, lambda: any("No MCP server 'nope'" in n for n in notices(host)))
        refused = []
        servers.command("enable notes", may_change=lambda: refused.append(1) or False)
        assert refused == [1]  # asked first, and refused: nothing changes
        assert json.loads((home / "chat.json").read_text())["mcp"]["notes"]["enabled"] is False
        assert servers.servers == {}


# -- the slash commands, against a stand-in for the app --------------------------------------------


class FakeView:
    """What the commands use of the open chat, recording what they asked."""

    def __init__(self, idle: bool = True) -> None:
        self.calls: list[tuple] = []
        self._idle = idle

    def can_change(self) -> bool:
        return self._idle

    def set_params(self, changes):
        if changes.get("top_p", 0.5) > 1:
            raise ValueError("top_p must be in (0, 1]")
        self.calls.append(("set_params", changes))
        self.session = type("S", (), {"params": type("P", (), changes)()})()

    def set_system(self, text):
        self.calls.append(("set_system", text))

    def set_policy(self, policy):
        self.calls.append(("set_policy", policy.value))


class FakeApp:
    """A stand-in for the app: the part of it the commands declare (`CommandHost`)."""

    def __init__(self, view: FakeView) -> None:
        self.chat_view, self.tool_servers, self.model = view, None, None
        self.said: list[str] = []
        self.actions: list[tuple] = []

    def notify(self, message, **kwargs):
        self.said.append(message)

    def action_attach(self, path=None):
        self.actions.append(("attach", path))

    def action_export(self, path=None):
        self.actions.append(("export", path))


def test_slash_commands_parse_their_arguments_and_say_what_they_did():
    app = FakeApp(FakeView())
    run_command(app, "/temp 0.5")
    run_command(app, "/top_k 2.5")
    run_command(app, "/top_p 3")
    run_command(app, "/system  Be brief. ")
    run_command(app, "/policy kv-quantize")
    run_command(app, "/policy sideways")
    run_command(app, "/attach")
    run_command(app, "/attach notes.md")
    run_command(app, "/export")
    run_command(app, "/nope")
    assert app.chat_view.calls == [
        ("set_params", {"temperature": 0.5}),
        ("set_system", "Be brief."),
        ("set_policy", "kv-quantize"),
    ]
    assert app.actions == [("attach", "notes.md"), ("export", None)]
    assert app.said == [
        "temperature = 0.5",
        "/top_k takes a whole number, and “2.5” is not one (/top_k alone goes back to the "
        "model's default).",
        "/top_p 3: top_p must be in (0, 1]",
        "System prompt set.",
        "Context policy: kv-quantize",
        "Policies: truncate, kv-quantize, error.",
        "/attach needs a file path (or press ctrl+o).",
        "Unknown command /nope; /help lists them.",
    ]


def test_slash_commands_change_nothing_while_the_chat_is_busy():
    app = FakeApp(FakeView(idle=False))
    for line in ("/temp 0", "/system hi", "/policy error"):
        run_command(app, line)
    assert app.chat_view.calls == [] and app.said == []  # the view says why (can_change)
