"""The chat app's sampling commands, driven with Textual's Pilot on the tiny model."""

from __future__ import annotations

import asyncio

import pytest

from qwen_mlx.convert import convert
from tui.app import ChatApp
from tui.widgets import PromptInput

SIZE = (110, 36)


@pytest.fixture
def stored(tiny_hf, home) -> str:
    """The tiny model converted into this test's store."""
    convert(str(tiny_hf))
    return "qwen3-1m-tiny"


async def wait_for(pilot, condition, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        await pilot.pause(0.05)
    raise AssertionError("timed out waiting for the app")


def replies(app: ChatApp) -> int:
    return sum(m["role"] == "assistant" for m in app.session.messages)


async def type_line(pilot, text: str) -> None:
    """Type `text` into the prompt and press enter, as a user would."""
    names = {" ": "space", "/": "slash", "_": "underscore"}
    await pilot.press(*[names.get(c, c) for c in text], "enter")


async def send(pilot, text: str) -> None:
    """Send a message and wait for its reply (or its failure)."""
    app = pilot.app
    before = replies(app)
    await type_line(pilot, text)
    await wait_for(
        pilot,
        lambda: (
            not app.streaming
            and not app.busy
            and (replies(app) > before or app.query_one(PromptInput).text)
        ),
    )


def test_a_top_k_beyond_the_vocabulary_breaks_no_reply(stored, home):
    async def run():
        app = ChatApp(home=home)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.session is not None)
            await type_line(pilot, "/top_k 100000")  # the tiny model has 576 tokens
            assert app.session.params.top_k == 100_000
            await send(pilot, "hello")
            await send(pilot, "again")  # sampled, unseeded: this failed for good after it
            await type_line(pilot, "/top_k 5")
            await send(pilot, "and once more")
            failures = [n.message for n in app._notifications if n.severity == "error"]
            assert failures == []
            assert replies(app) == 3

    asyncio.run(run())
