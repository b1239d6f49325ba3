"""The web chat of `qwen-mlx serve`, through real HTTP (httpx against uvicorn on a free
port): the page and its assets, streamed replies, the chat store shared with the terminal
app, the API key, CSRF and Host checks, busy chats, attachments, export, `chat --web`.
The same page in a real browser: test_web_browser.py."""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

import qwen_mlx.chat.session as session_module
import qwen_mlx.runtime.generation as generation
import qwen_mlx.server
import qwen_mlx.server.web.chats as web_chats_module
import qwen_mlx.server.web.replies as replies_module
from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.chat.policy import PIECE
from qwen_mlx.cli import main as cli_main
from qwen_mlx.runtime import Message
from qwen_mlx.runtime.thread import model_thread
from qwen_mlx.server.web import auth
from qwen_mlx.server.web.chats import KEEP_SESSIONS
from qwen_mlx.server.web.markdown import MarkdownStream, render_markdown

from .helpers import child_env, write_pdf
from .served import wait_until
from .webchat import (
    MARKDOWN_REPLY,
    SCRIPT_REPLY,
    attach,
    endless,
    events,
    in_terminal,
    new_chat,
    page_client,
    raw_request,
    serve_web,
    slow_read,
    streamed_html,
    write_pdf_over_limit,
    write_pdf_pages,
)

KEY = "web-test-key"


@pytest.fixture(scope="module")
def web(scripted_model, tmp_path_factory):
    with serve_web(scripted_model.model, tmp_path_factory.mktemp("web_home")) as served:
        yield served


@pytest.fixture
def client(web):
    with page_client(web) as c:
        yield c


# -- the page --------------------------------------------------------------------------------


def test_the_page_and_every_asset_come_from_the_server_itself(web):
    page = httpx.get(web.url)
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("/web/static/") for r in refs), refs
    for ref in refs:
        asset = httpx.get(web.url.rstrip("/") + ref)
        assert asset.status_code == 200, ref
        kinds = ("text/css", "text/javascript", "image/svg+xml")
        assert asset.headers["content-type"].split(";")[0] in kinds
        outside = re.search(r"https?://(?!www\.w3\.org/2000/svg\b)", asset.text)  # not a fetch
        assert not outside, f"{ref} reaches outside the server"
    assert httpx.get(web.url + "web/static/../app.py").status_code == 404
    assert 'rel="icon" href="/web/static/favicon.svg"' in page.text  # a tab has its icon


def test_a_reply_streams_as_rendered_markdown_and_is_saved(web, client, script):
    script.reply(MARKDOWN_REPLY)
    script.delay = 0.01  # about 1 s in all: more than one 50 ms batch
    chat_id = new_chat(client)
    reply = client.post(f"/web/api/chats/{chat_id}/send", json={"text": "Rivers?"})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith(
        "text/event-stream"
    )
    got = events(reply)
    names = [name for name, _ in got]
    assert names[-1] == "done" and names.count("reply") >= 2  # it came in pieces
    partial = streamed_html(got)
    assert len(partial[0]) < len(partial[-1])
    final = got[-1][1]["messages"][-1]
    assert partial[-1] == final["html"]  # streamed in parts, the same as rendered whole
    appended = sum(len(data["append"]) for name, data in got if name == "reply")
    assert appended < len(final["html"])  # each piece once
    assert final["role"] == "assistant"
    assert "<table>" in final["html"] and "<td>Nile</td>" in final["html"]
    assert '<code class="language-python"><span class="k">def</span>' in final["html"]
    stored = ChatStore(web.home).messages(chat_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[1].content == MARKDOWN_REPLY
    chats = client.get("/web/api/chats").json()["chats"]
    assert any(c["id"] == chat_id and c["title"] == "Rivers?" for c in chats)


def test_model_text_is_never_markup(web, client, script):
    script.reply(SCRIPT_REPLY)
    chat_id = new_chat(client)
    got = events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "<b>hi</b>"}))
    stored = client.get(f"/web/api/chats/{chat_id}").json()["messages"]
    for html in [*streamed_html(got), *(m["html"] for m in stored)]:
        assert "<script" not in html and "<img" not in html and "<b>" not in html
    reply = client.get(f"/web/api/chats/{chat_id}").json()["messages"]
    assert reply[0]["html"] == "&lt;b&gt;hi&lt;/b&gt;"
    assert "&lt;script&gt;window.pwned = 1&lt;/script&gt;" in reply[1]["html"]


def test_sampling_settings_reach_the_sampler_and_the_store(web, client, monkeypatch):
    seen = []
    real = generation.make_sampling

    def spy(params, *args, **kwargs):
        seen.append(params)
        return real(params, *args, **kwargs)

    monkeypatch.setattr(generation, "make_sampling", spy)
    chat_id = new_chat(client)
    settings = {
        "params": {"temperature": 0.35, "top_p": 0.9, "top_k": 7, "max_tokens": 6},
        "system": "Answer briefly.",
        "policy": "kv-quantize",
    }
    view = client.post(f"/web/api/chats/{chat_id}/settings", json=settings).json()
    assert view["settings"]["params"]["temperature"] == 0.35
    assert view["settings"]["system"] == "Answer briefly."
    got = events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "hi"}))
    assert got[-1][0] == "done"
    params = seen[-1]
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.35, 0.9, 7, 6)
    assert got[-1][1]["stats"]["generated"] <= 6
    chat = ChatStore(web.home).get(chat_id)  # what the terminal app reads
    assert chat.params == {"temperature": 0.35, "top_p": 0.9, "top_k": 7, "max_tokens": 6}
    assert chat.policy == "kv-quantize" and chat.system == "Answer briefly."
    assert ChatStore(web.home).messages(chat_id)[0].content == "Answer briefly."


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"params": {"temperature": -1}}, "temperature"),
        ({"params": {"top_k": "many"}}, "top_k"),
        ({"params": {"seed": 1}}, "seed"),
        ({"policy": "forget"}, "policy"),
        ({"policy": ["truncate"]}, "policy"),
        # The API's own bounds (ChatRequest's fields) and the server's max_tokens cap.
        ({"params": {"temperature": 1e308}}, "temperature"),
        ({"params": {"top_p": 0}}, "top_p"),
        ({"params": {"max_tokens": 10**12}}, "max_tokens"),
        ({"params": {"max_tokens": 1e12}}, "max_tokens"),
        ({"params": {"max_tokens": 257}}, "max_tokens"),  # the test server's cap is 256
        ({"params": {"top_k": 2.5}}, "top_k"),
        ({"params": [1]}, "params"),
        ({"system": 7}, "system"),
    ],
)
def test_bad_settings_are_400_naming_the_field(web, client, settings, named):
    chat_id = new_chat(client)
    response = client.post(f"/web/api/chats/{chat_id}/settings", json=settings)
    assert response.status_code == 400
    assert named in response.json()["error"]["message"]
    assert ChatStore(web.home).get(chat_id).params == {}  # nothing was saved


@pytest.mark.parametrize(
    "body",
    [
        b'{"settings": {"params": {"temperature": 1e400}}}',  # infinity, as Python reads it
        b'{"settings": {"params": {"max_tokens": 1e400}}}',
        b'{"settings": {"params": {"temperature": NaN}}}',
        b'{"settings": [1]}',
        b'{"settings": "hot"}',
        b'{"title": ["a"]}',
    ],
)
def test_a_new_chat_with_bad_settings_is_a_400_not_a_500(web, client, body):
    before = len(ChatStore(web.home).list())
    response = client.post("/web/api/chats", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"]
    assert len(ChatStore(web.home).list()) == before


def test_settings_at_the_bounds_are_kept(web, client):
    chat_id = new_chat(client, params={"temperature": 2, "top_p": 1, "max_tokens": 256})
    params = client.get(f"/web/api/chats/{chat_id}").json()["settings"]["params"]
    assert (params["temperature"], params["top_p"], params["max_tokens"]) == (2, 1, 256)


def test_regenerate_and_edit_and_resend(web, client, script):
    chat_id = new_chat(client)
    script.reply("first answer")
    events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "one"}))
    script.reply("second answer")
    got = events(client.post(f"/web/api/chats/{chat_id}/regenerate"))
    assert [m["html"] for m in got[-1][1]["messages"]] == ["one", "<p>second answer</p>\n"]
    events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "two"}))
    script.reply("edited answer")
    got = events(client.post(f"/web/api/chats/{chat_id}/edit", json={"index": 0, "text": "uno"}))
    shown = [(m["role"], m["html"]) for m in got[-1][1]["messages"]]
    assert shown == [("user", "uno"), ("assistant", "<p>edited answer</p>\n")]
    assert [m.content for m in ChatStore(web.home).messages(chat_id)] == ["uno", "edited answer"]
    missing = client.post(f"/web/api/chats/{chat_id}/edit", json={"index": 9, "text": "x"})
    assert missing.status_code == 400 and "No message 9" in missing.json()["error"]["message"]


def test_edit_changes_only_the_users_own_messages(web, client, script):
    chat_id = new_chat(client)
    script.reply("the answer")
    events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "question"}))
    for index, says in ((-1, "0 or more"), (1, "assistant's")):
        edit = client.post(f"/web/api/chats/{chat_id}/edit", json={"index": index, "text": "x"})
        assert edit.status_code == 400 and says in edit.json()["error"]["message"]
    assert [m.content for m in ChatStore(web.home).messages(chat_id)] == ["question", "the answer"]
    assert not web.chats.busy(chat_id)


def test_deleting_a_chat_removes_it_and_its_saved_cache(web, client):
    chat_id = new_chat(client)
    events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "hi"}))
    model_thread().submit(lambda: None).result()  # the cache is saved after the reply ends
    store = ChatStore(web.home)
    assert store.session_path(chat_id).is_file()
    assert client.post(f"/web/api/chats/{chat_id}/delete").json() == {"deleted": chat_id}
    assert store.get(chat_id) is None and not list(store.sessions.glob(f"{chat_id}.json*"))
    gone = client.get(f"/web/api/chats/{chat_id}")
    assert gone.status_code == 404 and "no chat" in gone.json()["error"]["message"]


def test_a_second_tab_is_told_the_chat_is_busy_and_stop_ends_the_reply(web, script):
    endless(script)
    with page_client(web) as first, page_client(web) as second:
        chat_id = new_chat(first)
        got: list = []

        def stream() -> None:
            with first.stream("POST", f"/web/api/chats/{chat_id}/send", json={"text": "go"}) as r:
                got.extend(events(httpx.Response(200, content=r.read())))

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 30
        while not web.chats.busy(chat_id):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        busy = second.post(f"/web/api/chats/{chat_id}/send", json={"text": "me too"})
        assert busy.status_code == 409
        message = busy.json()["error"]["message"]
        assert "another tab" in message and "replying to “go” (for " in message  # what, how long
        shown = second.get(f"/web/api/chats/{chat_id}").json()["busy"]
        assert (
            shown["what"] == "replying to “go”" and time.time() - 60 < shown["since"] <= time.time()
        )
        assert second.post(f"/web/api/chats/{chat_id}/stop").json() == {"stopped": True}
        reader.join(timeout=30)
    assert got[-1][0] == "done"
    last = got[-1][1]["messages"][-1]
    assert last["stopped"] and last["html"].count("tick") < 5000
    stored = ChatStore(web.home).messages(chat_id)
    assert [m.content for m in stored if m.role == "user"] == ["go"]  # the second never got in
    assert stored[-1].stopped


def test_attach_a_file_then_export_the_chat_as_markdown(web, client, tmp_path):
    chat_id = new_chat(client)
    context = client.get(f"/web/api/chats/{chat_id}").json()["context"]
    assert context["limit"] == 2048  # the server's --max-context (see webchat.serve_web)
    before = context["used"]
    notes = "# Notes\n\nThe meeting is on Tuesday at 10.\n"
    view = attach(client, chat_id, "notes.md", notes.encode())
    assert view["read_tokens"] > 0 and view["context"]["used"] > before
    assert "Attached file `notes.md`" in view["messages"][-1]["html"]
    pdf = tmp_path / "minutes.pdf"
    write_pdf(pdf, "Release on 14 March.")
    view = attach(client, chat_id, pdf.name, pdf.read_bytes())
    assert "Release on 14 March." in view["messages"][-1]["html"]
    broken = client.post(
        f"/web/api/chats/{chat_id}/attach", params={"name": "x.pdf"}, content=b"not a pdf"
    )
    assert broken.status_code == 400 and "x.pdf is not a readable PDF" in broken.text
    binary = client.post(
        f"/web/api/chats/{chat_id}/attach", params={"name": "x.md"}, content=b"\x00\x01" * 10
    )
    assert binary.status_code == 400 and "binary" in binary.json()["error"]["message"]
    limited = tmp_path / "huge.pdf"
    write_pdf_over_limit(limited)  # pypdf's LimitReachedError
    refused = client.post(
        f"/web/api/chats/{chat_id}/attach",
        params={"name": "huge.pdf"},
        content=limited.read_bytes(),
    )
    assert refused.status_code == 400 and "huge.pdf is not a readable PDF" in refused.text
    image = client.post(f"/web/api/chats/{chat_id}/attach", params={"name": "a.png"}, content=b"x")
    assert image.status_code == 400 and "PDF" in image.json()["error"]["message"]
    exported = client.get(f"/web/api/chats/{chat_id}/export")
    assert exported.headers["content-type"].startswith("text/markdown")
    assert "attachment; filename*=UTF-8''about-notes-md-" in exported.headers["content-disposition"]
    text = exported.text
    assert text.startswith("# About notes.md\n") and "## User" in text
    assert "The meeting is on Tuesday at 10." in text


def test_every_tab_and_chat_runs_on_the_one_served_model(web, script, monkeypatch):
    def no_second_copy(*args, **kwargs):
        raise AssertionError("the web chat loaded a model")

    monkeypatch.setattr("qwen_mlx.runtime.load", no_second_copy)
    script.reply("ok")
    with page_client(web) as one, page_client(web) as two:
        for client in (one, two, one, two):
            chat_id = new_chat(client)
            got = events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "hi"}))
            assert got[-1][0] == "done"
    sessions = list(web.chats._sessions.values())
    assert sessions and all(s.model is web.engine.model for s in sessions)
    assert len(sessions) <= KEEP_SESSIONS  # KV caches of other chats wait on disk


# -- long work: progress, stop, a tab that goes away, what busy means ----------------------------


def long_history(turns: int) -> list[Message]:
    """A conversation as the terminal app saves one (no KV cache beside it)."""
    out = []
    for i in range(turns):
        out.append(Message("user", f"Point {i}: " + "The launch is on Tuesday. " * 10))
        out.append(Message("assistant", "Noted, " * 12))
    return out


def test_a_chat_that_outgrows_the_context_says_so_and_shows_the_reread(
    web, client, monkeypatch, caplog
):
    monkeypatch.setattr(session_module, "timely_chunk", lambda *a, **k: 64)
    monkeypatch.setattr(replies_module, "PROGRESS_INTERVAL", 0.0)  # every chunk
    chat_id = new_chat(client, params={"max_tokens": 8, "temperature": 0})
    ChatStore(web.home).save_messages(chat_id, long_history(14))  # ~2,300 of 2,048 tokens
    with caplog.at_level(logging.INFO, logger="qwen_mlx.server.web"):
        got = events(
            client.post(f"/web/api/chats/{chat_id}/send", json={"text": "When is the launch?"})
        )
    names = [name for name, _ in got]
    assert names[0] == "notice" and names[-1] == "done"  # said before anything was read
    notice = got[0][1]["text"]
    done = got[-1][1]
    assert notice.startswith("Left the ") and done["notices"] == [notice]  # said once
    stats = done["stats"]
    assert stats["dropped_messages"] > 0
    assert stats["prompt_tokens"] + 8 <= 2048 - 2048 // 4  # room left for the next turns
    first_text = names.index("reply") if "reply" in names else len(names)
    progress = [data for name, data in got[:first_text] if name == "progress"]
    assert len(progress) >= 3  # the re-read, chunk by chunk, before the reply
    assert all(a["done"] < b["done"] for a, b in itertools.pairwise(progress))
    assert progress[-1]["done"] == progress[-1]["total"] == stats["prompt_tokens"]
    assert progress[0]["done"] == progress[0]["start"] < progress[0]["total"]
    assert any(p["eta"] is not None for p in progress[1:])  # the time left, once measured
    # The next message reads only itself: the drop left room.
    got = events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "And the time?"}))
    assert got[-1][1]["notices"] == [] and got[-1][1]["stats"]["prefilled_tokens"] < 60
    lines = [r.getMessage() for r in caplog.records]
    assert f"web chat {chat_id}: replying to “When is the launch?”: started" in lines
    assert any(
        line.startswith(f"web chat {chat_id}: replying to “When is the launch?”: ended (")
        and "prompt tokens" in line
        for line in lines
    )


def test_a_tab_closed_while_its_turn_waits_for_the_model_stops_it(web, client, script, caplog):
    endless(script)
    chat_id = new_chat(client)
    gate = threading.Event()
    other_work = model_thread().submit(gate.wait, 60)  # an API reply, say, runs first
    with caplog.at_level(logging.INFO, logger="qwen_mlx.server.web"):
        tab = raw_request(web, client, f"/web/api/chats/{chat_id}/send", {"text": "go"})
        wait_until(lambda: web.chats.busy(chat_id))
        tab.close()  # closed before anything came back
        wait_until(lambda: "the tab went away" in caplog.text)  # seen while it waited
        gate.set()
        other_work.result()
        wait_until(lambda: not web.chats.busy(chat_id))
    assert "the tab went away; stopping replying to “go”" in caplog.text
    stored = ChatStore(web.home).messages(chat_id)
    assert [m.role for m in stored] == ["user", "assistant"]
    assert stored[-1].stopped and stored[-1].content.count("tick") <= 2
    script.clear()
    script.reply("hello again")  # a new tab can use the chat at once
    got = events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "again"}))
    assert got[-1][0] == "done"


def test_a_tab_closed_during_a_long_read_stops_it(web, client, script, monkeypatch, caplog):
    slow_read(script, monkeypatch)
    chat_id = new_chat(client)
    with caplog.at_level(logging.INFO, logger="qwen_mlx.server.web"):
        with client.stream(
            "POST", f"/web/api/chats/{chat_id}/send", json={"text": "read slowly"}
        ) as response:
            for line in response.iter_lines():
                if line == "event: progress":
                    break  # the read has begun; then the tab is closed
        wait_until(lambda: not web.chats.busy(chat_id))
    assert "the tab went away; stopping replying to “read slowly”" in caplog.text
    stored = ChatStore(web.home).messages(chat_id)
    assert stored[-1].stopped and stored[-1].content == ""


def test_stop_during_a_long_read_ends_it_and_keeps_the_question(web, client, script, monkeypatch):
    slow_read(script, monkeypatch)
    chat_id = new_chat(client)
    got: list = []
    reading = threading.Event()

    def tab() -> None:
        url = f"/web/api/chats/{chat_id}/send"
        with client.stream("POST", url, json={"text": "long one"}) as response:
            text = ""
            for line in response.iter_lines():
                text += line + "\n"
                if line == "event: progress":
                    reading.set()
            got.extend(events(httpx.Response(200, content=text.encode())))

    reader = threading.Thread(target=tab)
    reader.start()
    assert reading.wait(30)
    with page_client(web) as other:  # another tab's Stop
        assert other.post(f"/web/api/chats/{chat_id}/stop").json() == {"stopped": True}
    reader.join(timeout=30)
    assert [name for name, _ in got][-1] == "done"
    assert got[-1][1]["stats"]["finish_reason"] == "cancelled"
    assert [m["role"] for m in got[-1][1]["messages"]] == ["user", "assistant"]
    assert not web.chats.busy(chat_id)


def encodes_by_thread(monkeypatch, model) -> list[tuple[str, int]]:
    """(thread name, characters) of each text `model` tokenizes from now on."""
    seen: list[tuple[str, int]] = []
    real = model.encode

    def spy(text, *args, **kwargs):
        seen.append((threading.current_thread().name, len(text)))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    return seen


def test_tokenizing_and_reading_files_stay_off_the_model_thread(
    web, client, script, monkeypatch, tmp_path
):
    script.reply("fine")
    chat_id = new_chat(client)
    ChatStore(web.home).save_messages(chat_id, long_history(4))
    read_on: list[str] = []
    real_read = web_chats_module.read_document

    def reading(*args, **kwargs):
        read_on.append(threading.current_thread().name)
        return real_read(*args, **kwargs)

    monkeypatch.setattr(web_chats_module, "read_document", reading)
    seen = encodes_by_thread(monkeypatch, web.engine.model)
    assert client.get(f"/web/api/chats/{chat_id}").json()["context"]["used"] > 500
    long = "What else happened at the meeting? " * 30
    assert (
        events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": long}))[-1][0] == "done"
    )
    pdf = tmp_path / "minutes.pdf"
    write_pdf(pdf, "Release on 14 March.")
    assert attach(client, chat_id, pdf.name, pdf.read_bytes())["read_tokens"] > 0
    for path, body in (("regenerate", {}), ("edit", {"index": 0, "text": "Point zero"})):
        assert events(client.post(f"/web/api/chats/{chat_id}/{path}", json=body))[-1][0] == "done"
    assert read_on and "qwen-mlx-model" not in read_on
    assert seen and [name for name, _ in seen if name == "qwen-mlx-model"] == []


def test_a_system_prompt_too_long_for_the_context_is_refused_without_tokenizing_it(
    web, client, monkeypatch
):
    chat_id = new_chat(client)
    store = ChatStore(web.home)
    long = "word " * 10_000  # ~20,000 tokens: a chat saved so by another program, say
    chat = store.get(chat_id)
    chat.system = long
    store.update(chat)
    store.save_messages(chat_id, [Message("system", long)])
    seen = encodes_by_thread(monkeypatch, web.engine.model)
    view = client.get(f"/web/api/chats/{chat_id}").json()
    assert view["context"]["used"] is None and "system prompt" in view["notices"][-1]
    sent = client.post(f"/web/api/chats/{chat_id}/send", json={"text": "hi"})
    assert sent.status_code == 400 and sent.json()["error"]["code"] == "context_length_exceeded"
    assert "system prompt" in sent.json()["error"]["message"]
    assert max(n for _, n in seen) <= PIECE  # counted piece by piece, only until over
    assert not web.chats.busy(chat_id)
    for system in (long, "word " * 60_000):  # over by its tokens, or its characters alone
        response = client.post(f"/web/api/chats/{chat_id}/settings", json={"system": system})
        assert response.status_code == 400 and "system" in response.json()["error"]["message"]
        created = client.post("/web/api/chats", json={"settings": {"system": system}})
        assert created.status_code == 400
    huge = client.post(f"/web/api/chats/{chat_id}/send", json={"text": "word " * 60_000})
    assert huge.status_code == 400 and "characters" in huge.json()["error"]["message"]


def test_a_pdf_of_too_many_pages_is_refused(web, client, monkeypatch, tmp_path):
    monkeypatch.setattr(web_chats_module, "MAX_PDF_PAGES", 3)
    chat_id = new_chat(client)
    pdf = tmp_path / "book.pdf"
    write_pdf_pages(pdf, 4)
    response = client.post(
        f"/web/api/chats/{chat_id}/attach", params={"name": "book.pdf"}, content=pdf.read_bytes()
    )
    assert response.status_code == 400
    assert "book.pdf has 4 pages; at most 3" in response.json()["error"]["message"]
    assert ChatStore(web.home).messages(chat_id) == [] and not web.chats.busy(chat_id)


def test_an_attachment_streams_its_reading_and_can_be_stopped(web, client, monkeypatch):
    monkeypatch.setattr(session_module, "timely_chunk", lambda *a, **k: 32)
    monkeypatch.setattr(replies_module, "PROGRESS_INTERVAL", 0.0)
    chat_id = new_chat(client)
    notes = ("The launch is on Tuesday at ten. " * 30).encode()
    response = client.post(
        f"/web/api/chats/{chat_id}/attach", params={"name": "notes.txt"}, content=notes
    )
    got = events(response)
    progress = [data for name, data in got if name == "progress"]
    assert len(progress) >= 3 and progress[-1]["done"] == progress[-1]["total"]
    assert got[-1][0] == "done" and got[-1][1]["read_tokens"] == progress[-1]["total"]
    assert got[-1][1]["complete"] is True


# -- safety -----------------------------------------------------------------------------------


def test_the_api_needs_the_pages_csrf_token_and_its_own_origin(web, client):
    chat_id = new_chat(client)
    token = client.headers["X-CSRF-Token"]
    bare = httpx.get(web.url + "web/api/chats")
    assert bare.status_code == 403 and bare.json()["error"]["code"] == "csrf"
    forged = httpx.post(
        web.url + f"web/api/chats/{chat_id}/send",
        json={"text": "hi"},
        headers={"X-CSRF-Token": token, "Origin": "http://evil.example"},
    )
    assert forged.status_code == 403 and forged.json()["error"]["code"] == "cross_site"
    no_origin = httpx.post(
        web.url + f"web/api/chats/{chat_id}/stop", headers={"X-CSRF-Token": token}
    )
    assert no_origin.status_code == 403
    assert ChatStore(web.home).messages(chat_id) == []


def test_a_page_addressed_to_another_host_is_refused(web):
    response = httpx.get(web.url, headers={"Host": "evil.example"})
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_host"


@pytest.fixture
def clock(monkeypatch):
    """The web sign-in's clock, moved by hand: `clock[0] += seconds`."""
    now = [1000.0]
    monkeypatch.setattr(auth, "_clock", lambda: now[0])
    return now


def test_a_key_protected_server_asks_for_the_key_once_and_keeps_a_session(
    tiny_model, tmp_path, clock
):
    with serve_web(tiny_model, tmp_path, api_key=KEY) as web:
        origin = {"Origin": web.url.rstrip("/")}
        page = httpx.get(web.url)
        assert 'name="key"' in page.text and "csrf-token" not in page.text
        assert httpx.get(web.url + "web/api/info").status_code == 401
        wrong = httpx.post(web.url + "web/login", data={"key": "nope"}, headers=origin)
        assert wrong.status_code == 401 and "not the API key of this server" in wrong.text
        clock[0] += auth.FAILURE_DELAY
        elsewhere = httpx.post(
            web.url + "web/login", data={"key": KEY}, headers={"Origin": "http://evil.example"}
        )
        assert elsewhere.status_code == 403
        signed = httpx.post(web.url + "web/login", data={"key": KEY}, headers=origin)
        assert signed.status_code == 303
        cookie = signed.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
        with page_client(web, cookies=signed.cookies) as client:  # the page, signed in
            assert client.get("/web/api/info").json()["model"] == tiny_model.name
            new_chat(client)
            # The cookie is the page's session, not an API key.
            assert client.get("/v1/models").status_code == 401
        bearer = httpx.get(web.url + "v1/models", headers={"Authorization": f"Bearer {KEY}"})
        assert bearer.status_code == 200


def test_wrong_keys_make_sign_in_wait_longer_each_time(tiny_model, tmp_path, clock):
    with serve_web(tiny_model, tmp_path, api_key=KEY) as web:
        origin = {"Origin": web.url.rstrip("/")}

        def sign_in(key: str) -> httpx.Response:
            return httpx.post(web.url + "web/login", data={"key": key}, headers=origin)

        assert sign_in("guess 1").status_code == 401
        burst = [sign_in(f"guess {n}") for n in range(2, 40)]  # a guesser's burst
        assert {r.status_code for r in burst} == {429}  # none of them was even tried
        assert burst[0].headers["retry-after"] == "1" and "try again in 1 second." in burst[0].text
        early = sign_in(KEY)  # the right key waits too: a 429 says nothing about the key
        assert early.status_code == 429
        clock[0] += 1
        assert sign_in("guess 2").status_code == 401
        clock[0] += 1.5
        waiting = sign_in(KEY)
        assert waiting.status_code == 429 and waiting.headers["retry-after"] == "1"
        clock[0] += 0.5  # the second failure's wait was twice the first's
        assert sign_in(KEY).status_code == 303
        assert sign_in("guess 3").status_code == 401  # a success starts the count again
        assert sign_in(KEY).headers["retry-after"] == "1"


def test_each_sign_in_gets_its_own_session_which_expires(tiny_model, tmp_path, clock):
    with serve_web(tiny_model, tmp_path, api_key=KEY) as web:
        origin = {"Origin": web.url.rstrip("/")}
        tokens = []
        for _ in range(2):
            signed = httpx.post(web.url + "web/login", data={"key": KEY}, headers=origin)
            assert signed.status_code == 303
            assert f"Max-Age={auth.SESSION_LIFETIME}" in signed.headers["set-cookie"]
            tokens.append(signed.cookies[auth.SESSION_COOKIE])
        assert tokens[0] != tokens[1] and all(KEY not in t and len(t) >= 32 for t in tokens)
        assert httpx.get(web.url, cookies={auth.SESSION_COOKIE: "made-up"}).text.count('name="key"')
        for token in tokens:
            with page_client(web, cookies={auth.SESSION_COOKIE: token}) as client:
                assert client.get("/web/api/chats").status_code == 200
        clock[0] += auth.SESSION_LIFETIME
        for token in tokens:
            page = httpx.get(web.url, cookies={auth.SESSION_COOKIE: token})
            assert 'name="key"' in page.text  # asked for the key again
        expired = httpx.get(web.url + "web/api/chats", cookies={auth.SESSION_COOKIE: tokens[0]})
        assert expired.status_code == 401 and "expired" in expired.json()["error"]["message"]


# -- the same chats as the terminal app ---------------------------------------------------------


def test_a_terminal_chat_continues_in_the_browser_and_back_without_rereading(
    tiny_model, tiny_mlx, tmp_path, monkeypatch
):
    # The terminal app runs the tiny model itself, so the web chat serves it too (not the
    # scripted model): the KV cache each saves must be the other's.
    prefilled: list[int] = []
    real = session_module.stream_tokens

    def counting(model, tokens, params, **kwargs):
        prefilled.append(len(tokens))
        yield from real(model, tokens, params, **kwargs)

    monkeypatch.setattr(session_module, "stream_tokens", counting)

    with serve_web(tiny_model, tmp_path / "home") as web, page_client(web) as client:
        # A long first message, short replies: re-reading the history would show.
        long = "Here is what happened at the meeting today. " * 20
        chat_id, _ = asyncio.run(in_terminal(tiny_mlx, web.home, None, long, "/max_tokens 8"))
        view = client.get(f"/web/api/chats/{chat_id}").json()
        assert [m["role"] for m in view["messages"]] == ["user", "assistant"]
        assert view["notices"] == []  # the terminal app's KV cache was usable
        got = events(client.post(f"/web/api/chats/{chat_id}/send", json={"text": "And the web?"}))
        stats = got[-1][1]["stats"]
        assert stats["prefilled_tokens"] < stats["prompt_tokens"] // 2  # only the new message
        assert prefilled[-1] == stats["prefilled_tokens"]
        _, back = asyncio.run(in_terminal(tiny_mlx, web.home, chat_id, "Back in the terminal"))
        assert back.prefilled_tokens < back.prompt_tokens // 2  # it read only its new message
        roles = [m.role for m in ChatStore(web.home).messages(chat_id)]
    assert roles == ["user", "assistant"] * 3


# -- qwen-mlx chat --web ----------------------------------------------------------------------


def test_chat_web_opens_the_page_of_a_running_server(web, monkeypatch, capsys):
    opened: list[str] = []
    monkeypatch.setattr("webbrowser.open", lambda url, *a, **k: opened.append(url) or True)
    assert cli_main(["chat", "--web", "--port", str(web.port)]) == 0
    assert cli_main(["chat", "--web", "--port", str(web.port), "--session", "abc123"]) == 0
    assert opened == [web.url, web.url + "?chat=abc123"]
    assert "running there already" in capsys.readouterr().err


def test_chat_port_without_web_is_an_error(capsys):
    assert cli_main(["chat", "--port", "9000"]) == 1
    assert "--port only applies with --web" in capsys.readouterr().err


@pytest.mark.interop  # a second process loading the model: slower than the default tier's
def test_chat_web_starts_the_server_and_opens_the_browser_once_it_answers(tiny_mlx, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.py"  # what $BROWSER names: webbrowser runs it with the URL
    browser.write_text(f"import sys; open({str(opened)!r}, 'w').write(sys.argv[1])\n")
    env = child_env(BROWSER=f"{sys.executable} {browser} %s")
    command = ["chat", "--web", "--model", str(tiny_mlx), "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_mlx", *command],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not opened.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the browser was never opened"
            time.sleep(0.1)
        time.sleep(0.2)
        url = opened.read_text()
        assert url == f"http://127.0.0.1:{port}/"
        assert 'name="csrf-token"' in httpx.get(url).text
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "opening http://127.0.0.1" in err


# -- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("step", [1, 5, 23])
def test_a_reply_rendered_as_it_streams_equals_the_reply_rendered_whole(step):
    text = (
        MARKDOWN_REPLY
        + "\n\n```\nunclosed until here\n\nstill code\n```\n\n    indented\n\n    code\n\n"
        + "> a quote\n\nthe end"
    ) * 3
    stream, stable, tail = MarkdownStream(), "", ""
    for i in range(0, len(text), step):
        done, tail = stream.feed(text[i : i + step])
        stable += done
    assert stable + tail == render_markdown(text)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed (to parse app.js)")
def test_the_page_script_parses():
    script = Path(qwen_mlx.server.__file__).with_name("web") / "static" / "app.js"
    check = subprocess.run(["node", "--check", str(script)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
