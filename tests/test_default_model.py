"""The model a command runs when none is named: the one the user used last (the last
chat's, then the most recently converted), never one that only served as a draft."""

from __future__ import annotations

import sqlite3

import pytest

from qwen_mlx.chat.chat_store import ChatStore
from qwen_mlx.cli.generate import main as generate_main
from qwen_mlx.convert import convert
from qwen_mlx.store import Store
from qwen_mlx.store.registry import MIGRATIONS, Registry
from tui.app import ChatApp

SIZE = (110, 36)
TARGET = "qwen3-1m-myft-2507-mlx-q4-g64"
# The draft sorts first and is converted last: neither may make it the default.
DRAFT = "qwen3-1m-draft-2507-mlx-q4-g64"


@pytest.fixture
def target_and_draft(tiny_hf, home) -> None:
    """A fine-tune and a draft for it (the same tokenizer), the draft converted last."""
    convert(str(tiny_hf), name="qwen3-1m-myft-2507")
    convert(str(tiny_hf), name="qwen3-1m-draft-2507")


async def opened_model(home, **kwargs) -> str:
    app = ChatApp(home=home, **kwargs)
    async with app.run_test(size=SIZE) as pilot:
        for _ in range(600):
            if app.session is not None:
                break
            await pilot.pause(0.05)
        assert app.session is not None, "the app did not load a model"
        return app.model.name


def generate(capsys, *args: str) -> tuple[int, str]:
    code = generate_main(["--prompt", "hi", "--max-tokens", "2", *args])
    return code, capsys.readouterr().err


@pytest.mark.asyncio
async def test_a_model_used_as_draft_is_never_the_default(target_and_draft, home, capsys):
    # Before any use the most recently converted is the draft: nothing says what it is.
    assert Store(home).recent_model() == DRAFT
    code, _ = generate(capsys, "--model", TARGET, "--draft", DRAFT)
    assert code == 0
    assert Registry.open(home / "registry.sqlite").drafts() == {DRAFT}
    code, err = generate(capsys)  # no qwen3-4b-instruct here: the last converted non-draft
    assert code == 0 and f"model: {TARGET} (the most recently converted" in err
    assert await opened_model(home) == TARGET  # the chat app: no chats yet


@pytest.mark.asyncio
async def test_this_runs_draft_is_not_the_default_either(target_and_draft, home, capsys):
    assert await opened_model(home, draft=DRAFT) == TARGET
    code, err = generate(capsys, "--draft", DRAFT)
    assert code == 0 and f"model: {TARGET}" in err


@pytest.mark.asyncio
async def test_the_app_without_a_model_opens_the_last_chats_model(tiny_hf, home):
    convert(str(tiny_hf), name="qwen3-1m-older-2507")
    convert(str(tiny_hf), name="qwen3-1m-newer-2507")
    chats = ChatStore(home)
    chats.create(model="qwen3-1m-older-2507-mlx-q4-g64")
    chats.close()
    assert await opened_model(home) == "qwen3-1m-older-2507-mlx-q4-g64"  # a new chat
    assert await opened_model(home, resume=True) == "qwen3-1m-older-2507-mlx-q4-g64"
    Store(home).remove("qwen3-1m-older-2507-mlx-q4-g64", force=True)
    assert await opened_model(home) == "qwen3-1m-newer-2507-mlx-q4-g64"  # then the newest


def test_the_family_named_in_the_docs_stays_the_cli_default(tiny_hf, home, capsys):
    convert(str(tiny_hf), name="qwen3-4b-instruct-2507")
    convert(str(tiny_hf), name="qwen3-1m-newer-2507")
    code, err = generate(capsys)
    assert code == 0 and "model:" not in err  # qwen3-4b-instruct, silently, as documented


def test_an_older_registry_gains_the_drafts_table_and_keeps_its_models(tiny_hf, home):
    convert(str(tiny_hf))
    db = home / "registry.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("DROP TABLE drafts")
    conn.execute("PRAGMA user_version = 1")  # as the previous qwen-mlx left it
    conn.close()
    store = Store(home)
    assert [m.name for m in store.list()] == ["qwen3-1m-tiny-2507-mlx-q4-g64"]
    store.note_draft("qwen3-1m-tiny")
    assert store.registry.drafts() == {"qwen3-1m-tiny-2507-mlx-q4-g64"}
    store.close()
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 2
