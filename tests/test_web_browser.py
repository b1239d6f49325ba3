"""The web chat in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright against `qwen-mlx serve`'s app on a free port. Saves the README's
screenshots into docs/. Interop tier: `pytest -m interop`."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

import qwen_mlx.chat.session as session_module
import qwen_mlx.runtime.generation as generation
from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.runtime import Message
from qwen_mlx.server.web import auth

from .webchat import MARKDOWN_REPLY, SCRIPT_REPLY, endless, in_terminal, serve_web, slow_read

CHROMIUM = os.environ.get("QWEN_MLX_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[1] / "docs"
KEY = "browser-test-key"
SIZE = {"width": 1280, "height": 800}
# How many lines an element's text takes on screen (its text's line boxes).
LINES = """(selector) => {
  const range = document.createRange();
  range.selectNode(document.querySelector(selector).firstChild);
  return range.getClientRects().length;
}"""

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        sync_playwright is None, reason="playwright is not installed (pip install playwright)"
    ),
    pytest.mark.skipif(
        not Path(CHROMIUM).is_file(),
        reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set QWEN_MLX_CHROMIUM)",
    ),
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def web(scripted_model, tmp_path_factory):
    with serve_web(scripted_model.model, tmp_path_factory.mktemp("browser_home")) as served:
        yield served


@contextmanager
def opened(browser, web) -> Iterator:
    """A tab on `web`'s page, on a new chat; no script error may happen in it."""
    context = browser.new_context(viewport=SIZE, accept_downloads=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.goto(web.url)
    tab.wait_for_selector("body[data-ready='1']")
    tab.click("#new-chat")  # the page opens on the most recent chat: start afresh
    yield tab
    context.close()
    assert errors == [], errors


@pytest.fixture
def page(browser, web):
    with opened(browser, web) as tab:
        yield tab


def send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def wait_for_reply(page, timeout: float = 60_000) -> None:
    page.wait_for_selector(".message.assistant:not(.live)", state="attached", timeout=timeout)
    expect(page.locator("#stop")).to_be_hidden(timeout=timeout)


def chat_id_of(page) -> str:
    return page.evaluate("new URLSearchParams(location.search).get('chat')")


def test_a_reply_streams_in_as_markdown_with_a_table_and_highlighted_code(page, script):
    script.reply(MARKDOWN_REPLY)
    script.delay = 0.03  # about 3 s: time to look while it streams
    send(page, "Which rivers are longest?")
    live = page.locator(".message.assistant.live .body")
    expect(live).to_contain_text("table", timeout=30_000)
    partial = live.inner_text()
    assert "Amazon" not in partial  # seen while it was still streaming
    expect(page.locator("#stop")).to_be_visible()
    wait_for_reply(page)
    reply = page.locator(".message.assistant .body").last
    expect(reply.locator("table td").first).to_have_text("Nile")
    expect(reply.locator("pre code span.k").first).to_have_text("def")
    expect(page.locator("#chats .chat.current")).to_have_text("Which rivers are longest?")
    expect(page.locator("#stats")).to_contain_text("tok/s")
    expect(page.locator("#context-text")).to_contain_text("tokens")
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "web-chat.png"))


def test_a_reply_containing_a_script_is_shown_as_text(page, script):
    script.reply(SCRIPT_REPLY)
    send(page, "Say something dangerous")
    wait_for_reply(page)
    reply = page.locator(".message.assistant .body").last
    expect(reply).to_contain_text("<script>window.pwned = 1</script>")
    assert page.locator("#messages script, #messages img").count() == 0
    assert page.evaluate("window.pwned") is None


def test_stop_ends_a_reply_and_keeps_it_marked(page, web, script):
    endless(script)
    send(page, "Count for ever")
    expect(page.locator(".message.assistant.live .body")).to_contain_text("tick", timeout=30_000)
    page.click("#stop")
    wait_for_reply(page)
    expect(page.locator(".message.assistant.stopped .mark")).to_have_text("(stopped)")
    last = ChatStore(web.home).messages(chat_id_of(page))[-1]
    assert last.stopped and 0 < last.content.count("tick") < 5000


def test_a_temperature_set_in_the_page_reaches_the_sampler_and_the_chat_survives_a_reload(
    page, web, monkeypatch
):
    seen = []
    real = generation.make_sampling

    def spy(params, *args, **kwargs):
        seen.append(params)
        return real(params, *args, **kwargs)

    monkeypatch.setattr(generation, "make_sampling", spy)
    page.click("#settings-toggle")
    page.fill("#settings-form [name=temperature]", "0.35")
    page.fill("#settings-form [name=max_tokens]", "12")
    page.click("#settings-save")
    send(page, "Tell me about temperature")
    wait_for_reply(page)
    assert (seen[-1].temperature, seen[-1].max_tokens) == (0.35, 12)
    page.click("#settings-save")  # saved on the chat now: the next reply keeps them
    send(page, "Again")
    wait_for_reply(page)
    assert seen[-1].temperature == 0.35
    page.screenshot(path=str(DOCS / "web-chat-settings.png"))
    chat_id = chat_id_of(page)
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    expect(page.locator(".message.user .body").first).to_have_text("Tell me about temperature")
    expect(page.locator("#settings-form [name=temperature]")).to_have_value("0.35")
    page.goto(web.url)  # a fresh page: the chat is in the list
    page.wait_for_selector("body[data-ready='1']")
    page.click(f"#chats .chat[data-id='{chat_id}']")
    expect(page.locator(".message.user")).to_have_count(2)


def test_edit_and_resend_and_regenerate(page, web, script):
    script.reply("first")
    send(page, "Question one")
    wait_for_reply(page)
    script.reply("regenerated")
    page.click("#regenerate")
    wait_for_reply(page)
    expect(page.locator(".message.assistant .body")).to_have_text(["regenerated"])
    script.reply("answer to the edit")
    page.click(".message.user .edit")
    page.fill(".message.user .edit-area", "Question one, edited")
    page.click(".message.user .edit-send")
    wait_for_reply(page)
    expect(page.locator(".message.user .body")).to_have_text(["Question one, edited"])
    expect(page.locator(".message.assistant .body")).to_have_text(["answer to the edit"])
    stored = ChatStore(web.home).messages(chat_id_of(page))
    assert [m.content for m in stored] == ["Question one, edited", "answer to the edit"]


def test_a_terminal_chat_opens_continues_and_exports(browser, tiny_model, tiny_mlx, tmp_path):
    # The terminal app runs the tiny model itself, so the web chat serves it too (not the
    # scripted model): the KV cache each saves must be the other's.
    with serve_web(tiny_model, tmp_path / "home") as web, opened(browser, web) as page:
        terminal_chat_continues_and_exports(page, web, tiny_mlx)


def terminal_chat_continues_and_exports(page, web, tiny_mlx) -> None:
    long = "Notes from the terminal app about the river trip. " * 12
    # Playwright's sync API runs an event loop on this thread: the terminal app gets its own.
    with ThreadPoolExecutor(1) as pool:
        terminal = in_terminal(tiny_mlx, web.home, None, long, "/max_tokens 8")
        chat_id, _ = pool.submit(asyncio.run, terminal).result()
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.click(f"#chats .chat[data-id='{chat_id}']")
    expect(page.locator(".message.user .body").first).to_contain_text("river trip")
    send(page, "Continue in the browser")
    wait_for_reply(page)
    read, _, total = page.locator("#stats").inner_text().rpartition("read ")[2].partition(" of ")
    assert int(read.replace(",", "")) < int(total.replace(",", "")) // 2  # not re-read
    with page.expect_download() as download:
        page.click("#export")
    exported = Path(download.value.path()).read_text()
    assert download.value.suggested_filename.endswith(".md")
    assert "## User" in exported and "Continue in the browser" in exported
    assert "river trip" in exported
    page.once("dialog", lambda dialog: dialog.accept())
    page.click("#delete")
    expect(page.locator(f"#chats .chat[data-id='{chat_id}']")).to_have_count(0)
    assert ChatStore(web.home).get(chat_id) is None


def test_a_second_tab_on_a_replying_chat_is_told_what_runs_and_can_stop_it(
    page, browser, web, script
):
    endless(script)
    send(page, "Keep going")
    expect(page.locator(".message.assistant.live .body")).to_contain_text("tick", timeout=30_000)
    other = page.context.new_page()
    other.goto(page.url)
    other.wait_for_selector("body[data-ready='1']")
    busy = other.locator("#notice")
    expect(busy).to_contain_text("busy in another tab or window: replying to “Keep going”, since")
    expect(busy).to_contain_text("ago")
    expect(other.locator("#send")).to_be_disabled()
    other.click("#stop-elsewhere")  # the first tab's reply ends
    wait_for_reply(page)
    expect(page.locator(".message.assistant.stopped")).to_have_count(1)
    expect(other.locator("#send")).to_be_enabled(timeout=15_000)  # it opens once done
    expect(other.locator(".message.assistant.stopped")).to_have_count(1)


def test_a_long_read_shows_its_progress_and_stop_ends_it(page, web, script, monkeypatch):
    slow_read(script, monkeypatch)
    send(page, "A question about a long chat")
    progress = page.locator("#progress")
    expect(progress).to_be_visible(timeout=30_000)
    expect(progress).to_contain_text(re.compile(r"Reading the prompt: \d+ of \d+ tokens"))
    expect(page.locator("#stop")).to_be_visible()
    page.click("#stop")
    wait_for_reply(page)
    expect(progress).to_be_hidden()
    expect(page.locator(".message.assistant.stopped")).to_have_count(1)
    expect(page.locator(".message.user .body")).to_have_text(["A question about a long chat"])


def test_a_chat_that_outgrows_the_context_says_so_once_on_its_own_line(
    page, web, monkeypatch, tiny_model
):
    monkeypatch.setattr(session_module, "timely_chunk", lambda *a, **k: 64)
    store = ChatStore(web.home)
    chat = store.create(model=tiny_model.ref, params={"max_tokens": 8, "temperature": 0})
    history = []
    for i in range(14):  # a chat from the terminal app, past the server's 2,048 tokens
        history.append(Message("user", f"Point {i}: " + "The launch is on Tuesday. " * 10))
        history.append(Message("assistant", "Noted, " * 12))
    store.save_messages(chat.id, history)
    page.goto(f"{web.url}?chat={chat.id}")
    page.wait_for_selector("body[data-ready='1']")
    send(page, "When is the launch?")
    wait_for_reply(page)
    lines = page.locator("#notice p")
    expect(lines).to_have_count(1)  # said once, on its own line
    expect(lines.first).to_contain_text("Left the")
    expect(lines.first).to_contain_text("It now takes")
    expect(page.locator("#stats")).to_contain_text("oldest messages not in the prompt")
    used, _, limit = page.locator("#context-text").inner_text().partition(" / ")
    assert int(used.replace(",", "")) <= int(limit.split()[0].replace(",", "")) * 3 // 4


def test_an_attachment_shows_its_reading_and_stop_ends_it(page, web, script, monkeypatch, tmp_path):
    slow_read(script, monkeypatch)
    notes = tmp_path / "notes.md"
    notes.write_text("The launch is on Tuesday. " * 40)
    page.set_input_files("#attach", str(notes))
    progress = page.locator("#progress")
    expect(progress).to_contain_text(re.compile(r"Reading notes\.md: \d+ of \d+ tokens"))
    page.click("#stop")
    expect(progress).to_be_hidden()
    expect(page.locator("#notice")).to_contain_text("Stopped reading notes.md")
    expect(page.locator(".message.user .body").first).to_contain_text("Attached file `notes.md`")
    assert not web.chats.busy(chat_id_of(page))


def test_the_page_opens_on_the_most_recent_chat_with_its_icon(browser, web, script):
    script.reply("ok")
    context = browser.new_context(viewport=SIZE)
    tab = context.new_page()
    tab.goto(web.url)
    tab.wait_for_selector("body[data-ready='1']")
    tab.click("#new-chat")
    send(tab, "The newest chat")
    wait_for_reply(tab)
    newest = chat_id_of(tab)
    tab.goto(web.url)  # no chat named: the most recent one, not "New chat"
    tab.wait_for_selector("body[data-ready='1']")
    assert chat_id_of(tab) == newest
    expect(tab.locator("#title")).to_have_text("The newest chat")
    icon = tab.evaluate("document.querySelector('link[rel=icon]').href")
    answer = context.request.get(icon)
    assert answer.ok and answer.headers["content-type"] == "image/svg+xml"
    context.close()


def test_the_settings_panel_leaves_the_title_and_model_on_one_line(page, script):
    script.reply("ok")
    send(page, "A title long enough to be shortened rather than wrapped in the header bar")
    wait_for_reply(page)
    page.click("#settings-toggle")
    expect(page.locator("#settings")).to_be_visible()
    for selector in ("#title", "#model"):
        lines = page.evaluate(LINES, selector)
        assert lines == 1, f"{selector} wraps onto {lines} lines"
    title = page.locator("#title").bounding_box()
    assert title["width"] > 250  # shortened with an ellipsis, not squeezed to a sliver


def test_a_key_protected_server_asks_for_the_key_once(browser, tiny_model, tmp_path, monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(auth, "_clock", lambda: now[0])
    with serve_web(tiny_model, tmp_path, api_key=KEY) as web:
        context = browser.new_context(viewport=SIZE)
        tab = context.new_page()
        tab.goto(web.url)
        tab.fill("#key", "wrong")
        tab.click("#login button")
        expect(tab.locator("#login .error")).to_contain_text("not the API key")
        tab.fill("#key", KEY)
        tab.click("#login button")
        expect(tab.locator("#login .error")).to_contain_text("try again in 1 second")
        now[0] += auth.FAILURE_DELAY
        tab.fill("#key", KEY)
        tab.click("#login button")
        tab.wait_for_selector("body[data-ready='1']")
        tab.reload()  # kept in the session: not asked again
        tab.wait_for_selector("body[data-ready='1']")
        expect(tab.locator("#model")).to_have_text(tiny_model.name)
        cookies = context.cookies()
        assert [c["httpOnly"] for c in cookies] == [True]
        assert cookies[0]["sameSite"] == "Strict" and cookies[0]["value"] != KEY
        assert cookies[0]["expires"] > 0  # not a cookie for ever: it ends with its sign-in
        context.close()
