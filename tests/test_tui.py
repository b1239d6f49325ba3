"""The whole chat app, driven with Textual's Pilot on the tiny model: the keys, the
dialogs, the commands, the app's life (start, quit, resume) and the flows that take more
than one of its parts. Each part alone: test_tui_parts.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from textual.widgets import DirectoryTree, Input, ListView, OptionList, TextArea

from qwen_mlx.chat.chat_store import MIGRATIONS as CHAT_MIGRATIONS
from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.chat.saved import cache_files
from qwen_mlx.convert import convert
from qwen_mlx.runtime import Message
from tui.app import ChatApp
from tui.screens import (
    ConfirmScreen,
    FilePicker,
    HelpScreen,
    ModelPicker,
    NoModelScreen,
    SettingsScreen,
    TextPrompt,
)
from tui.widgets import MessageView, PromptInput, StatusBar

from .helpers import SCRIPTS, child_env
from .tui_pilot import (
    driving,
    exchange,
    held_saves,
    key_names,
    notices,
    ready,
    replies,
    reply,
    running,
    type_and_send,
    type_keys,
    views,
    wait_for,
)


def slow_reading(monkeypatch, tmp_path):
    """A document, and a prefill that crawls (reporting progress) until `slow["on"]`
    is cleared or it is told to stop: a long read on a slow machine."""
    import qwen_mlx.chat.session as session_module
    from qwen_mlx.errors import GenerationCancelled

    doc = tmp_path / "notes.md"
    doc.write_text("The launch is on Tuesday. " * 40)
    real_prefill = session_module.prefill
    slow = {"on": True}

    def slow_prefill(model, tokens, cache, *, should_stop, progress=None, **kwargs):
        give_up = time.monotonic() + 60  # a regression fails the test, not hangs it
        while slow["on"] and time.monotonic() < give_up:
            if progress is not None:
                progress(0, len(tokens))  # the progress bar moves while we wait
            if should_stop():
                raise GenerationCancelled("stopped")
            time.sleep(0.02)
        return real_prefill(model, tokens, cache, should_stop=should_stop, **kwargs)

    monkeypatch.setattr(session_module, "prefill", slow_prefill)
    return doc, slow


async def start_a_long_reply(pilot) -> None:
    """Send a message whose reply goes on (greedy: the tiny model never ends on its own)
    and wait until some of it is on screen."""
    app = await ready(pilot)
    app.run_command("/temp 0")
    app.run_command("/max_tokens 5000")
    await type_and_send(pilot, "Tell me everything")
    await wait_for(
        pilot,
        lambda: (
            app.streaming
            and [v for v in app.query(MessageView) if v.role == "assistant" and v.content]
        ),
    )


@pytest.mark.asyncio
async def test_escape_stops_the_reply_and_keeps_the_partial_text(stored, home):
    app = ChatApp(home=home)
    async with driving(app) as pilot:
        await start_a_long_reply(pilot)
        await pilot.press("escape")
        await reply(pilot)
        view = list(app.query(MessageView))[-1]
        last = app.session.messages[-1]
        assert last["stopped"] is True
        assert len(last["content"]) > 0
        assert view.content == last["content"] and view.has_class("stopped")
        assert app.session.last_stats.generation_tokens < 5000
        assert not app.query_one(PromptInput).read_only  # the input is unlocked again


@pytest.mark.asyncio
async def test_a_parameter_change_reaches_the_sampler(stored, home, monkeypatch):
    import qwen_mlx.runtime.generation as runtime

    seen = []
    real = runtime.make_sampling

    def spy(params, extra=()):
        seen.append(params)
        return real(params, extra)

    monkeypatch.setattr(runtime, "make_sampling", spy)

    async with running(home) as (app, pilot):
        for command in ("/temp 0.25", "/top_k 7", "/max_tokens 5"):
            app.run_command(command)
        await exchange(pilot, "hi")
    assert (seen[-1].temperature, seen[-1].top_k, seen[-1].max_tokens) == (0.25, 7, 5)
    store = ChatStore(home)
    assert store.list()[0].params == {"temperature": 0.25, "top_k": 7, "max_tokens": 5}


@pytest.mark.asyncio
async def test_a_chat_survives_a_restart_with_its_cache(stored, home):
    async def first():
        async with running(home) as (app, pilot):
            app.run_command("/max_tokens 8")
            # Greedy: sampled random weights may pick padding ids the tokenizer lacks,
            # whose text cannot be matched to the reply (the cache is then re-read).
            app.run_command("/temp 0")
            await exchange(pilot, "Remember the number 42")
            return app.chat.id, app.session.cache_tokens

    async def second(chat_id, held):
        app = ChatApp(home=home, chat_id=chat_id)
        async with driving(app) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.id == chat_id)
            assert [r for r, _ in views(app)] == ["user", "assistant"]
            await exchange(pilot, "Which number?")
            stats = app.session.last_stats
            assert stats.reused_tokens == len(held)  # nothing already read is read again
            assert stats.prefilled_tokens <= len(app.model.encode("Which number?")) + 16

    chat_id, held = await first()
    assert len(cache_files(home / "sessions" / f"{chat_id}.json")) == 1
    await second(chat_id, held)


@pytest.mark.asyncio
async def test_export_writes_the_expected_markdown(stored, home, tmp_path):
    target = tmp_path / "chat.md"
    question = "Explain this:\n```python\nprint('hi')\n```"

    async def run():
        async with running(home) as (app, pilot):
            app.run_command("/max_tokens 6")
            app.run_command("/temp 0.5")
            await exchange(pilot, question)
            app.run_command(f"/export {target}")
            return app.session.messages[-1]["content"]

    answer = await run()
    text = target.read_text()
    assert text.startswith("# Explain this:")
    assert "- Model: `qwen3-1m-tiny-2507-mlx-q4-g64`" in text
    assert "temperature 0.5" in text and "max_tokens 6" in text
    assert "- Context policy: truncate" in text
    assert f"## User\n\n{question}\n\n## Assistant\n\n{answer}" in text


@pytest.mark.asyncio
async def test_reading_an_attachment_holds_the_chat_until_done_and_esc_stops_it(
    stored, home, tmp_path, monkeypatch
):
    doc, slow = slow_reading(monkeypatch, tmp_path)

    async with running(home) as (app, pilot):
        session = app.session
        app.run_command(f"/attach {doc}")
        await wait_for(pilot, lambda: app.busy == "reading notes.md")
        await wait_for(pilot, lambda: len(session.messages) == 1)
        chat = app.chat
        await pilot.press("ctrl+n")  # a new chat would lose where the text goes
        app.run_command("/system Be brief.")
        assert app.session is session and app.chat is chat and session.system is None
        assert app.query_one(PromptInput).read_only
        assert any("Still reading notes.md (Esc stops it)" in n.message for n in app._notifications)

        await pilot.press("escape")
        await wait_for(pilot, lambda: app.busy == "")
        assert any("Stopped reading notes.md" in n.message for n in app._notifications)
        assert session.messages[0]["content"].startswith("Attached file `notes.md`")
        assert len(session.cache_tokens) < session.context_tokens  # not all read yet
        assert not app.query_one(PromptInput).read_only

        slow["on"] = False
        app.run_command("/max_tokens 4")
        await exchange(pilot, "When?")
        assert app.session.last_stats.prompt_tokens > len(app.model.encode(doc.read_text()))
    stored_chat = ChatStore(home).messages(chat.id)
    assert [m.role for m in stored_chat] == ["user", "user", "assistant"]


@pytest.mark.asyncio
async def test_quitting_mid_reply_stops_it_and_saves_what_was_said(stored, home):
    async def run():
        app = ChatApp(home=home)
        async with driving(app) as pilot:
            await start_a_long_reply(pilot)
            return app.chat.id  # leaving the block quits the app mid-reply

    chat_id = await run()
    saved = ChatStore(home).messages(chat_id)
    assert [m.role for m in saved] == ["user", "assistant"]
    assert saved[1].stopped and saved[1].content
    assert len(cache_files(home / "sessions" / f"{chat_id}.json")) == 1


@pytest.mark.asyncio
async def test_the_chat_stays_put_until_its_cache_is_saved(stored, home, monkeypatch):
    saving = held_saves(monkeypatch)

    async with running(home) as (app, pilot):
        app.run_command("/max_tokens 4")
        await type_and_send(pilot, "hello")
        await wait_for(pilot, lambda: app.busy == "saving the chat")
        assert replies(app) == 1 and not app.streaming  # the reply is done and shown
        assert not app.query_one(PromptInput).read_only  # typing goes on meanwhile
        chat_id = app.chat.id
        await pilot.press("f8")  # deleting now would race the save
        await wait_for(
            pilot,
            lambda: any("Still saving the chat" in n.message for n in app._notifications),
        )
        assert ChatStore(home).get(chat_id) is not None
        saving.set()
        await wait_for(pilot, lambda: app.busy == "")
        await pilot.press("f8")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.chat is None)
        assert ChatStore(home).get(chat_id) is None
        assert not list((home / "sessions").glob(f"{chat_id}*"))


@pytest.mark.asyncio
async def test_esc_while_a_file_is_read_attaches_nothing(stored, home, tmp_path, monkeypatch):
    import qwen_mlx.chat.documents as documents

    doc = tmp_path / "big.pdf"
    doc.write_text("not really a pdf")
    reading, pressed = threading.Event(), threading.Event()

    def slow_read(path):
        reading.set()
        pressed.wait(30)  # a large PDF, still being read when Esc comes
        return "The launch is on Tuesday."

    monkeypatch.setattr(documents, "read_document", slow_read)

    async with running(home) as (app, pilot):
        app.run_command(f"/attach {doc}")
        await wait_for(pilot, reading.is_set)
        await pilot.press("escape")
        pressed.set()
        await wait_for(pilot, lambda: app.busy == "")
        assert app.session.messages == [] and app.chat is None
        assert any("big.pdf was not attached" in n.message for n in app._notifications)


@pytest.mark.asyncio
async def test_quitting_while_a_file_is_read_saves_it_in_the_chat(
    stored, home, tmp_path, monkeypatch
):
    doc, _ = slow_reading(monkeypatch, tmp_path)

    async def run():
        async with running(home) as (app, pilot):
            app.run_command(f"/attach {doc}")
            await wait_for(pilot, lambda: app.busy == "reading notes.md" and app.chat)
            await pilot.pause(0.2)
            return app.chat.id  # leaving the block quits the app mid-read

    chat_id = await run()
    saved = ChatStore(home).messages(chat_id)
    assert [m.role for m in saved] == ["user"]
    assert saved[0].content.startswith("Attached file `notes.md`")
    assert (home / "sessions" / f"{chat_id}.json").is_file()


@pytest.mark.asyncio
async def test_settings_refused_by_the_sampler_change_nothing(stored, home):
    async with running(home) as (app, pilot):
        before = (app.session.params, app.session.system, app.session.policy)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#top_p", Input).value = "5"
        app.screen.query_one("#system", TextArea).text = "Be brief."
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)  # still open, saying why
        assert "top_p must be in (0, 1]" in str(app.screen.query_one("#settings-error").content)
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert (app.session.params, app.session.system, app.session.policy) == before
        app.apply_settings({"system": "Be brief.", "params": {"top_p": 5.0}, "policy": "error"})
        assert (app.session.params, app.session.system, app.session.policy) == before
        await wait_for(
            pilot,
            lambda: any("Settings not saved: top_p" in n.message for n in app._notifications),
        )


@pytest.mark.asyncio
async def test_commands_before_the_model_is_loaded_are_explained(stored, home, monkeypatch):
    import qwen_mlx.runtime as runtime

    loading = threading.Event()
    real_load = runtime.load

    def held_load(*args, **kwargs):  # a slow disk: the load ends when the test says
        loading.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(runtime, "load", held_load)

    app = ChatApp(home=home)
    async with driving(app) as pilot:
        assert app.session is None
        for command in ("/policy error", "/system hi", "/temp 0"):
            app.run_command(command)
        loading.set()
        await wait_for(
            pilot,
            lambda: (
                [n.message for n in app._notifications].count("The model is still loading.") == 3
            ),
        )
        app = await ready(pilot)
        assert app.session.policy.value == "truncate" and app.session.system is None


@pytest.mark.asyncio
async def test_opening_an_unknown_chat_says_so_and_starts_a_new_one(stored, home):
    app = ChatApp(home=home, chat_id="no-such-chat")
    async with driving(app) as pilot:
        await ready(pilot)
        await wait_for(
            pilot,
            lambda: any("No saved chat no-such-chat" in n.message for n in app._notifications),
        )
        assert app.chat is None and app.session.messages == []


@pytest.mark.asyncio
async def test_no_model_screen_explains_convert_and_builds_the_demo(home):
    app = ChatApp(home=home)
    async with driving(app) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, NoModelScreen))
        text = "".join(str(w.source) for w in app.screen.query("Markdown"))
        assert "python -m qwen_mlx.convert --hf-path Qwen/Qwen3-4B-Instruct-2507" in text
        bar = app.screen.query_one("#demo-progress")
        assert not bar.display  # nothing moves before anything was pressed
        await pilot.press("d")
        # Shown once the build starts (a quick build may be over, its screen gone, at once).
        await wait_for(pilot, lambda: bar.display or not isinstance(app.screen, NoModelScreen))
        assert bar.label == "Building the demo model"
        await wait_for(pilot, lambda: app.session is not None, timeout=120)
        assert app.model.name == "qwen3-3m-demo-0000-mlx-q4-g64"


@pytest.mark.asyncio
async def test_help_lists_keys_and_commands(stored, home):
    async with running(home) as (app, pilot):
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        text = app.screen.text
        for key in ("escape", "ctrl+r", "ctrl+o", "f3"):
            assert f"`{key}`" in text
        for command in ("/system", "/temp", "/clear", "/export", "/attach", "/model"):
            assert command in text
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))


@pytest.mark.asyncio
async def test_sidebar_lists_renames_searches_and_deletes_chats(stored, home):
    async with running(home) as (app, pilot):
        app.run_command("/max_tokens 3")
        await exchange(pilot, "First chat")
        app.run_command("/new")
        await exchange(pilot, "Second chat")
        app.run_command("/rename Travel plans")
        store = ChatStore(home)
        assert [c.title for c in store.list()] == ["Travel plans", "First chat"]
        await pilot.press("ctrl+f", *"trav")
        titles = [str(i.query_one("Label").render()) for i in app.query("#chat-items ListItem")]
        assert titles == ["Travel plans"]
        chat_id = app.chat.id
        await pilot.press("f8")
        await pilot.press("y")
        await wait_for(pilot, lambda: app.chat is None)
        assert store.get(chat_id) is None


@pytest.mark.asyncio
async def test_edit_last_message_and_input_history(stored, home):
    async with running(home) as (app, pilot):
        app.run_command("/max_tokens 3")
        await exchange(pilot, "one")
        await pilot.press("ctrl+t")
        prompt = app.query_one(PromptInput)
        assert prompt.text == "one" and app.session.messages == []
        assert prompt.cursor_location == prompt.document.end  # typing goes on after it
        await pilot.press("space", "m", "o", "r", "e")
        assert prompt.text == "one more"
        prompt.load_text("")
        await pilot.press("up")
        assert prompt.text == "one"  # what was sent


@pytest.mark.asyncio
async def test_up_walks_messages_and_slash_commands_apart(stored, home):
    async with running(home) as (app, pilot):
        await type_and_send(pilot, "/max_tokens 3")
        await exchange(pilot, "first message")
        await type_and_send(pilot, "/temp 0")
        await exchange(pilot, "second message")
        prompt = app.query_one(PromptInput)
        await pilot.press("up")
        assert prompt.text == "second message"
        await pilot.press("up")
        assert prompt.text == "first message"  # the command in between is not a message
        await pilot.press("up")
        assert prompt.text == "first message"  # the oldest
        await pilot.press("down", "down")
        assert prompt.text == ""  # back to what was being written
        await pilot.press("slash", "up")
        assert prompt.text == "/temp 0"  # an input that starts with / walks the commands
        await pilot.press("up")
        assert prompt.text == "/max_tokens 3"
        await pilot.press("down", "down")
        assert prompt.text == "/"
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        assert "that starts with /, the slash commands you ran instead" in app.screen.text


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_tui_smoke_in_a_real_terminal(stored, home, tmp_path):
    """The script passes with a tmux server already running (as on many developers'
    machines), whose panes would get that server's environment: its own HOME, no
    QWEN_MLX_HOME. The app must still open this test's store and nothing else."""
    other_home = tmp_path / "developer-home"
    other_home.mkdir()
    sockets = tmp_path / "tmux"  # the "default" tmux server of this test, not the user's
    sockets.mkdir()
    server_env = child_env(TMUX_TMPDIR=str(sockets), HOME=str(other_home))
    del server_env["QWEN_MLX_HOME"]
    subprocess.run(
        ["tmux", "-f", os.devnull, "new-session", "-d", "-s", "dev"], env=server_env, check=True
    )
    try:
        proc = subprocess.run(
            ["bash", str(SCRIPTS / "tui_smoke.sh"), stored],
            capture_output=True,
            text=True,
            timeout=240,
            env=child_env(PYTHON=sys.executable, TMUX_TMPDIR=str(sockets)),
        )
    finally:
        subprocess.run(["tmux", "kill-server"], env=server_env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (home / "chats.sqlite").is_file()  # the app opened this test's store
    assert list(other_home.iterdir()) == []  # and not the running server's home's


def test_chat_command_help_does_not_start_the_app(capsys):
    from qwen_mlx.cli.chat import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--session" in capsys.readouterr().out


def test_store_survives_a_reopen(home):
    store = ChatStore(home)
    chat = store.create(params={"temperature": 0.2})
    store.save_messages(
        chat.id,
        [Message("user", "hi"), Message("assistant", "yo", stopped=True, token_ids=(1, 2))],
    )
    store.close()
    again = ChatStore(home)
    assert again.get(chat.id).params == {"temperature": 0.2}
    reply = again.messages(chat.id)[1]
    assert (reply.role, reply.content, reply.stopped, reply.token_ids) == (
        "assistant",
        "yo",
        True,
        (1, 2),
    )
    conn = sqlite3.connect(home / "chats.sqlite")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(CHAT_MIGRATIONS)
    assert json.loads(conn.execute("SELECT params FROM chats").fetchone()[0]) == {
        "temperature": 0.2
    }


@pytest.mark.parametrize("damage", ["newer", "garbage"])
def test_an_unreadable_chats_file_is_one_clear_error(home, capsys, monkeypatch, damage):
    from qwen_mlx.cli.chat import main

    monkeypatch.setattr("tui.app.not_a_terminal", lambda: None)  # as if run in a terminal
    ChatStore(home).close()
    if damage == "newer":
        conn = sqlite3.connect(home / "chats.sqlite")
        conn.execute("PRAGMA user_version = 99")
        conn.close()
    else:
        for side in home.glob("chats.sqlite-*"):
            side.unlink()
        (home / "chats.sqlite").write_bytes(b"not a database" * 100)
    assert main([]) == 1
    err = capsys.readouterr().err
    assert str(home / "chats.sqlite") in err and "Traceback" not in err
    assert ("newer qwen-mlx" if damage == "newer" else "Move it aside") in err


# -- focus: every dialog and the sidebar answer the keys at once (keys only) -------------------


@pytest.mark.asyncio
async def test_help_and_settings_take_focus_so_their_keys_work_at_once(stored, home):
    async with running(home) as (app, pilot):
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        scroll = app.screen.query_one("#help")
        await pilot.press("pagedown")
        await wait_for(pilot, lambda: scroll.scroll_y > 0)  # the help scrolled
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(app.screen, SettingsScreen))
        await type_keys(pilot, "Be brief.")  # into the system prompt, focused
        await pilot.press("tab", "home", "ctrl+k", *key_names("0.3"), "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.session.system == "Be brief."
        assert app.session.params.temperature == 0.3
        assert app.focused is app.query_one(PromptInput)  # back where it was


@pytest.mark.asyncio
async def test_rename_and_delete_dialogs_take_focus_and_delete_defaults_to_keep(stored, home):
    async with running(home) as (app, pilot):
        app.run_command("/max_tokens 3")
        await exchange(pilot, "hello")
        chat_id = app.chat.id
        await pilot.press("f2")
        await wait_for(pilot, lambda: isinstance(app.screen, TextPrompt))
        await pilot.press("ctrl+a", "ctrl+k", *key_names("Greetings"), "enter")
        await wait_for(pilot, lambda: not isinstance(app.screen, TextPrompt))
        assert ChatStore(home).get(chat_id).title == "Greetings"

        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")  # the focused button: Keep
        await wait_for(pilot, lambda: not isinstance(app.screen, ConfirmScreen))
        assert app.chat.id == chat_id and ChatStore(home).get(chat_id) is not None

        await pilot.press("f8")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("left", "enter")  # over to Delete, and press it
        await wait_for(pilot, lambda: app.chat is None)
        assert ChatStore(home).get(chat_id) is None
        await type_keys(pilot, "next")
        assert app.query_one(PromptInput).text == "next"


@pytest.mark.asyncio
async def test_model_picker_takes_focus_and_enter_picks_the_highlighted_model(
    stored, tiny_hf, home
):
    convert(str(tiny_hf), q_bits=8)  # a second model in the store, not the family's latest

    # Named: without --model the app would open the most recently converted, the 8-bit one.
    async with running(home, model=stored) as (app, pilot):
        first = app.model.name
        await pilot.press("f4")
        await wait_for(pilot, lambda: isinstance(app.screen, ModelPicker))
        options = app.screen.query_one(OptionList)
        assert options.get_option_at_index(0).prompt == first  # the current one first
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: app.model is not None and app.model.name != first)
        assert app.model.name == str(options.get_option_at_index(1).prompt)
        assert "q8" in app.model.name


@pytest.mark.asyncio
async def test_file_picker_takes_focus_and_enter_attaches_the_file(
    stored, home, tmp_path, monkeypatch
):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.md").write_text("The launch is on Tuesday.\n")
    monkeypatch.chdir(folder)

    async with running(home) as (app, pilot):
        await pilot.press("ctrl+o")
        await wait_for(pilot, lambda: isinstance(app.screen, FilePicker))
        tree = app.screen.query_one(DirectoryTree)
        await wait_for(pilot, lambda: len(tree.root.children) == 1)  # the folder is read
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: len(app.session.messages) == 1 and not app.busy)
        assert app.session.messages[0]["content"].startswith("Attached file `notes.md`")


@pytest.mark.asyncio
async def test_the_sidebar_opens_a_chat_with_enter_and_typing_goes_on_in_the_input(stored, home):
    async with running(home) as (app, pilot):
        app.run_command("/max_tokens 3")
        await exchange(pilot, "First chat")
        first = app.chat.id
        await pilot.press("ctrl+n")
        await exchange(pilot, "Second chat")
        second = app.chat.id
        items = app.query_one("#chat-items", ListView)
        assert items.highlighted_child.chat_id == second  # the open chat's row

        await pilot.press("ctrl+f", "down")  # to the list
        assert app.focused is items
        await pilot.press("down", "enter", *key_names("and then"))  # no pause to wait
        await wait_for(pilot, lambda: app.chat.id == first and not app.busy)
        assert app.query_one(PromptInput).text == "and then"  # no key was lost
        assert app.focused is app.query_one(PromptInput)
        assert views(app)[0] == ("user", "First chat")
        assert items.highlighted_child.chat_id == first

        await pilot.press("ctrl+f", *key_names("second"), "enter")  # the first match
        await wait_for(pilot, lambda: app.chat.id == second and not app.busy)
        assert app.focused is app.query_one(PromptInput)


@pytest.mark.asyncio
async def test_text_typed_while_a_reply_streams_is_kept(stored, home):
    async with running(home) as (app, pilot):
        await start_a_long_reply(pilot)
        # Short: after each key Pilot waits for an idle CPU (up to 2 s while the model
        # works), which a user typing does not.
        await type_keys(pilot, "go")
        await pilot.press("enter")  # refused while streaming, and kept
        await wait_for(pilot, lambda: any("still streaming" in n for n in notices(app)))
        await pilot.press("escape")
        await reply(pilot)
        assert app.query_one(PromptInput).text == "go"
        assert sum(m["role"] == "user" for m in app.session.messages) == 1


# -- resume: the most recent chat, its id, the command that reopens it -------------------------


def scripted_run(monkeypatch, script) -> list[ChatApp]:
    """Make ChatApp.run drive the app with `script(app, pilot)` in a test terminal (the
    rest of `main` runs as it is); return the apps it ran."""
    ran = []

    def run(self, **kwargs):
        async def drive():
            async with driving(self) as pilot:
                await ready(pilot)
                await script(self, pilot)

        ran.append(self)
        asyncio.run(drive())

    monkeypatch.setattr(ChatApp, "run", run)
    monkeypatch.setattr("tui.app.not_a_terminal", lambda: None)
    return ran


def test_chat_reopens_the_most_recent_chat_and_prints_how_to_resume_it(
    stored, home, monkeypatch, capsys
):
    from qwen_mlx.cli.chat import main

    seen = []

    async def chat_once(app, pilot):
        seen.append((app.chat.id if app.chat else None, [c for _, c in views(app)]))
        app.run_command("/max_tokens 3")
        await exchange(pilot, f"Message {len(seen)}")

    ran = scripted_run(monkeypatch, chat_once)
    assert main([]) == 0
    chat_id = ran[0].chat.id
    out = capsys.readouterr().out
    assert f"Chat {chat_id} saved. Resume it with: qwen-mlx chat --session {chat_id}" in out

    assert main([]) == 0  # no --session: the most recent chat again
    assert seen[1][0] == chat_id and seen[1][1][0] == "Message 1"
    assert ran[1].chat.id == chat_id

    assert main(["--new"]) == 0
    assert seen[2] == (None, [])
    assert ran[2].chat.id != chat_id
    assert ChatStore(home).list()[0].id == ran[2].chat.id  # now the most recent


@pytest.mark.asyncio
async def test_the_chat_id_and_the_model_are_shown_and_info_says_how_to_resume(stored, home):
    async with running(home) as (app, pilot):
        await wait_for(pilot, lambda: "new chat" in app.sub_title)
        app.run_command("/max_tokens 3")
        await exchange(pilot, "hello")
        await wait_for(pilot, lambda: app.chat.id in app.sub_title)
        status = app.query_one(StatusBar).render()
        assert "qwen3-1m-tiny-2507-mlx-q4-g64" in status and "tok/s" in status
        assert "context" in status and "/ 32,768" in status
        await type_keys(pilot, "/info")
        await pilot.press("enter")
        await wait_for(pilot, lambda: any(app.chat.id in n for n in notices(app)))
        info = next(n for n in notices(app) if app.chat.id in n)
        assert f"qwen-mlx chat --session {app.chat.id}" in info
        assert app.model.name in info and "max_tokens 3" in info


# -- no terminal -------------------------------------------------------------------------------


def test_chat_without_a_terminal_exits_with_a_message(monkeypatch, capsys, home):
    from qwen_mlx.cli.chat import main

    def started(self, **kwargs):
        raise AssertionError("the app started without a terminal")

    monkeypatch.setattr(ChatApp, "run", started)  # it would draw into the pipe and wait
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello\n"))
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "qwen-mlx chat needs a terminal" in err and "stdin" in err
    assert not (home / "chats.sqlite").exists()  # refused before touching anything


def test_chat_in_a_pipe_exits_at_once(home):
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_mlx", "chat"],
        input="hello\n",
        capture_output=True,
        text=True,
        timeout=120,  # a hang fails here; it used to draw into the pipe for minutes
        env=child_env(QWEN_MLX_HOME=str(home)),
    )
    assert proc.returncode == 2
    assert "qwen-mlx chat needs a terminal" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""  # nothing drawn into the pipe


# -- help and commands -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_help_renders_every_row_and_lists_every_key(stored, home):
    async with running(home) as (app, pilot):
        await pilot.press("f1")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await wait_for(pilot, lambda: app.screen.query("MarkdownTableCellContents"))
        cells = [str(c.content) for c in app.screen.query("MarkdownTableCellContents")]
        at = cells.index("/policy truncate|kv-quantize|error")  # one cell, pipes shown
        assert cells[at + 1] == "what happens when the chat outgrows the context"
        listed = {k.strip() for cell in cells for k in cell.split(",")}
        bindings = [b.key for b in app.BINDINGS]
        for key in (*bindings, "enter", "shift+enter", "ctrl+j", "tab", "ctrl+q", "ctrl+p"):
            assert key in listed, key


@pytest.mark.asyncio
async def test_a_sampling_command_with_a_word_gets_a_sentence(stored, home):
    async with running(home) as (app, pilot):
        before = app.session.params
        for command in ("/temp abc", "/top_k 2.5"):
            await type_keys(pilot, command)
            await pilot.press("enter")
        await wait_for(pilot, lambda: len([n for n in notices(app) if "is not one" in n]) == 2)
        said = [n for n in notices(app) if "is not one" in n]
        assert said[0].startswith("/temp takes a number, and “abc” is not one")
        assert said[1].startswith("/top_k takes a whole number, and “2.5” is not one")
        assert not any("could not convert" in n or "invalid literal" in n for n in notices(app))
        assert app.session.params == before


# -- export: each reply with its own sampling ---------------------------------------------------


@pytest.mark.asyncio
async def test_export_records_the_sampling_of_each_reply_across_a_restart(stored, home, tmp_path):
    target = tmp_path / "chat.md"

    async def first():
        async with running(home) as (app, pilot):
            app.run_command("/max_tokens 4")
            app.run_command("/temp 0.5")
            await exchange(pilot, "one")
            app.run_command("/temp 0.25")
            app.run_command("/top_k 7")
            await exchange(pilot, "two")
            return app.chat.id, [m["content"] for m in app.session.messages]

    async def second(chat_id):
        app = ChatApp(home=home, chat_id=chat_id)
        async with driving(app) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.id == chat_id)
            app.run_command(f"/export {target}")

    chat_id, contents = await first()
    await second(chat_id)
    text = target.read_text()
    replies = text.split("## Assistant\n\n")[1:]
    assert len(replies) == 2
    assert replies[0].startswith(contents[1])
    assert "_Sampling: temperature 0.5, top_p" in replies[0] and "top_k 7" not in replies[0]
    assert "max_tokens 4" in replies[0]
    assert "_Sampling: temperature 0.25, " in replies[1] and "top_k 7" in replies[1]
    assert "- Parameters: temperature 0.25" in text  # the chat's settings now


# -- exact resume with a model trained on real text ---------------------------------------------


@pytest.fixture(scope="session")
def trained(trained_mlx) -> Path:
    """The trained tiny Qwen3 (real text, real template) as bf16 MLX, outside any store."""
    return trained_mlx


def assert_read_only_the_new_message(app: ChatApp, held: list[int], text: str) -> None:
    """The turn just taken (its user message `text`) reused the whole cache it started
    with (`held`) and read only what came after it: a fresh render of the prompt starts
    with exactly the cached tokens."""
    session = app.session
    stats = session.last_stats
    prompt = app.model.render_tokens(session.history[:-1])  # without the reply
    assert stats.prompt_tokens == len(prompt)
    assert prompt[: len(held)] == held, "the cache is not a prefix of the new prompt"
    assert stats.prefilled_tokens == len(prompt) - len(held)
    assert stats.prefilled_tokens <= len(app.model.encode(text)) + 16


# The first question's greedy reply starts with a token that begins with a space (" not"),
# which the streamed text leaves out.
FIRST_QUESTION = "Continue: if size is None or"
SECOND = {
    "stop": ("Quote line 2 of the text above.", 600, "stop"),
    "length": ("What does the os module do?", 24, "length"),
    "esc": ("Repeat the text above.", 2000, "cancelled"),
    "attach": ("Quote line 2 of the text above.", 24, None),
}


@pytest.mark.parametrize("ending", list(SECOND))
@pytest.mark.asyncio
async def test_a_reopened_chat_reads_only_the_new_message(trained, home, tmp_path, ending):
    question, max_tokens, finish = SECOND[ending]

    async def first():
        async with running(home, model=str(trained)) as (app, pilot):
            app.run_command("/temp 0")
            if ending == "attach":
                doc = tmp_path / "os.md"
                doc.write_text(
                    "The os module provides a portable way of using operating system "
                    "dependent functionality. If you just want to read or write a file see "
                    "open(), if you want to manipulate paths, see the os.path module.\n"
                )
                app.run_command(f"/attach {doc}")
                await wait_for(pilot, lambda: len(app.session.messages) == 1 and not app.busy)
            app.run_command("/max_tokens 24")
            held = app.session.cache_tokens
            await exchange(pilot, FIRST_QUESTION)
            if held:
                assert_read_only_the_new_message(app, held, FIRST_QUESTION)
            held = app.session.cache_tokens
            app.run_command(f"/max_tokens {max_tokens}")
            if ending == "esc":
                await type_and_send(pilot, question)
                await wait_for(
                    pilot,
                    lambda: app.streaming and len(list(app.query(MessageView))[-1].content) > 20,
                )
                await pilot.press("escape")
                await reply(pilot)
            else:
                await exchange(pilot, question)
            assert_read_only_the_new_message(app, held, question)  # within one run
            if finish is not None:
                assert app.session.last_stats.finish_reason == finish
            return app.chat.id, app.session.cache_tokens

    async def second(chat_id, held):
        app = ChatApp(home=home, model=str(trained), chat_id=chat_id)
        async with driving(app) as pilot:
            await wait_for(pilot, lambda: app.chat is not None and app.chat.id == chat_id)
            await wait_for(pilot, lambda: not app.busy)
            assert app.session.cache_tokens == held  # the saved cache came back whole
            app.run_command("/max_tokens 8")  # what the turn reads is checked, not its reply
            await exchange(pilot, "Tell me more")
            assert_read_only_the_new_message(app, held, "Tell me more")  # after a restart

    chat_id, held = await first()
    await second(chat_id, held)
