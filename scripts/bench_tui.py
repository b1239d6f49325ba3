#!/usr/bin/env python3
"""How well the chat app keeps up with a fast token stream.

The real app runs headless (Textual's run_test) with the demo model loaded; the model's
token loop is replaced by a scripted stream of numbered words in paragraphs at a fixed
rate (200 tokens/s by default), so everything between the token loop and the screen is
the real code: the session, batching on the model thread, messages to the UI, the MarkdownStream.
We record when each token was produced and when the Markdown widget had appended it, and
the CPU time of the UI thread over the whole reply.

Targets: screen lag under 100 ms, UI CPU time under 10% of the stream's time.

    python scripts/bench_tui.py [--tokens 5000] [--rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path


def word(i: int) -> str:
    """Token i of the scripted reply: numbered words in paragraphs of 60, as prose has."""
    return f"w{i}\n\n" if i % 60 == 59 else f"w{i} "


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=5000)
    p.add_argument("--rate", type=float, default=200.0, help="tokens per second")
    p.add_argument("--flush", type=float, default=0.08, help="the app's batching interval (s)")
    args = p.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="qwen-mlx-bench-tui-"))
    os.environ["QWEN_MLX_HOME"] = str(home)

    from textual.widgets import Markdown

    import qwen_mlx.session as session_module
    from qwen_mlx.commands.demo import ensure_demo_model
    from qwen_mlx.runtime import GenerationChunk
    from tui.app import ChatApp
    from tui.widgets import PromptInput

    model_name = ensure_demo_model()
    produced: list[float] = []  # time token i left the token loop
    appended: list[tuple[float, int]] = []  # (time, characters) after each Markdown append

    def scripted_stream(model, tokens, params, **kwargs):
        interval = 1.0 / args.rate
        start = time.perf_counter()
        for i in range(args.tokens):
            delay = start + i * interval - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            produced.append(time.perf_counter())
            last = i == args.tokens - 1
            yield GenerationChunk(
                word(i),
                i,
                len(tokens),
                0.0,
                i + 1,
                args.rate,
                0.0,
                0.0,
                "length" if last else None,
            )

    session_module.stream_tokens = scripted_stream
    real_append = Markdown.append

    def timed_append(self, markdown: str):
        waiter = real_append(self, markdown)

        async def done() -> None:
            await waiter
            if self.has_class("assistant"):
                appended.append((time.perf_counter(), len(self.source)))

        return asyncio.ensure_future(done())

    Markdown.append = timed_append

    async def run() -> tuple[float, float]:
        app = ChatApp(model=model_name, home=home, flush_interval=args.flush)
        async with app.run_test(size=(120, 40)) as pilot:
            while app.session is None:
                await pilot.pause(0.05)
            app.query_one(PromptInput).load_text("Stream, please.")
            idle0 = time.thread_time()
            await asyncio.sleep(2.0)
            idle = (time.thread_time() - idle0) / 2.0  # the app's own upkeep, per second
            cpu0, wall0 = time.thread_time(), time.perf_counter()
            await pilot.press("enter")
            while app.streaming or not produced:
                await asyncio.sleep(0.05)  # not pilot.pause: it would drive extra refreshes
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            print(f"idle app: {idle:.1%} of a core", file=sys.stderr)
            await pilot.pause(0.5)  # the last append finishes after the reply is done
        return cpu, wall

    ui_cpu, wall = asyncio.run(run())

    # The characters of the words up to token i tell which tokens each append showed.
    ends, total = [], 0
    for i in range(args.tokens):
        total += len(word(i))
        ends.append(total)
    lags = []
    j = 0
    for when, chars in appended:
        while j < len(ends) and ends[j] <= chars:
            lags.append(when - produced[j])
            j += 1
    if j < args.tokens:
        print(
            f"only {j} of {args.tokens} tokens reached the screen "
            f"({appended[-1][1] if appended else 0} of {total} characters)",
            file=sys.stderr,
        )
        return 1
    stream_time = produced[-1] - produced[0]
    lags_ms = sorted(x * 1000 for x in lags)
    p95 = lags_ms[int(0.95 * (len(lags_ms) - 1))]
    print(f"\n{args.tokens} tokens at {args.rate:.0f} tokens/s into the real app (headless)")
    print(f"screen updates: {len(appended)} ({args.tokens / len(appended):.1f} tokens each)")
    print(
        f"lag behind the stream: mean {statistics.mean(lags_ms):.1f} ms, p95 {p95:.1f} ms, "
        f"max {lags_ms[-1]:.1f} ms   target < 100 ms"
    )
    print(
        f"UI thread CPU: {ui_cpu:.2f} s over {stream_time:.1f} s of stream = "
        f"{ui_cpu / stream_time:.1%}   target < 10%"
    )
    print(
        f"UI CPU per token: {ui_cpu / args.tokens * 1000:.2f} ms "
        f"(wall time of the reply {wall:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
