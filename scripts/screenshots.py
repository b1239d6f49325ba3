#!/usr/bin/env python3
"""Regenerate the README's screenshots of the chat app (SVG, Textual's save_screenshot).

The app runs headless with the demo model; the reply comes from a scripted token stream
(the demo model's random weights write gibberish, and the real model needs a Mac), so the
screenshot shows how a real Markdown answer streams in: headings, code, a table.

    python scripts/screenshots.py [--out docs/screenshots]
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from _bench import ROOT, command, workspace

QUESTION = "How do I stream a reply from qwen-mlx in a notebook?"
ANSWER = """\
Use `stream_generate` with a list of messages; each chunk carries the new text and the
running stats:

```python
from qwen_mlx import load, stream_generate

model = load("qwen3-4b-instruct")
messages = [{"role": "user", "content": "Write a haiku about MLX."}]
for chunk in stream_generate(model, messages, temperature=0.7):
    print(chunk.text, end="", flush=True)
```

| field | meaning |
|---|---|
| `text` | the new text |
| `generation_tps` | tokens per second |
| `peak_memory` | GB, so far |

For a conversation, `ChatSession` keeps the KV cache between turns.
"""


def main(argv: list[str] | None = None) -> int:
    p = command(__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = p.parse_args(argv)
    with workspace(prefix="qwen-mlx-shots-") as work:
        take(args.out, work / "home")
    for shot in sorted(args.out.glob("*.svg")):
        print(shot)
    return 0


def take(out: Path, home: Path) -> None:
    """The three screenshots, into `out`; the demo model is built into the store `home`
    (where QWEN_MLX_HOME points)."""
    import qwen_mlx.chat.session as session_module
    from qwen_mlx.convert.demo import ensure_demo_model
    from qwen_mlx.runtime import GenerationChunk
    from tui.app import ChatApp
    from tui.screens import NoModelScreen
    from tui.widgets import PromptInput

    out.mkdir(parents=True, exist_ok=True)

    async def no_model() -> None:
        app = ChatApp(home=home)
        async with app.run_test(size=(110, 34)) as pilot:
            while not isinstance(app.screen, NoModelScreen):
                await pilot.pause(0.05)
            await pilot.pause(0.3)
            app.save_screenshot("no-model.svg", str(out))

    asyncio.run(no_model())
    name = ensure_demo_model()

    def scripted(model, tokens, params, **kwargs):
        words = ANSWER.split(" ")
        for i, word in enumerate(words):
            text = word if i == len(words) - 1 else word + " "
            yield GenerationChunk(text, i, len(tokens), 812.0, i + 1, 38.6, 2.31, 0.42, None)
        yield GenerationChunk("", None, len(tokens), 812.0, len(words), 38.6, 2.31, 0.42, "stop")

    session_module.stream_tokens = scripted

    async def chat() -> None:
        app = ChatApp(model=name, home=home)
        async with app.run_test(size=(120, 42)) as pilot:
            while app.session is None:
                await pilot.pause(0.05)
            app.query_one(PromptInput).load_text(QUESTION)
            await pilot.press("enter")
            while app.streaming or not app.session.messages:
                await pilot.pause(0.05)
            await pilot.pause(0.5)
            app.save_screenshot("chat.svg", str(out))
            await pilot.press("f1")
            await pilot.pause(0.5)
            app.save_screenshot("help.svg", str(out))

    asyncio.run(chat())


if __name__ == "__main__":
    sys.exit(main())
