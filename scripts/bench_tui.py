#!/usr/bin/env python3
"""How well the chat app keeps up with a fast token stream.

The real app runs headless (Textual's run_test) with the demo model loaded; the model's
token loop is replaced by a scripted stream of numbered words in paragraphs at a fixed
rate (200 tokens/s by default), so everything between the token loop and the screen is
the real code: the session, batching on the model thread, messages to the UI, the MarkdownStream.
We record when each token was produced and when the Markdown widget had appended it, and
the CPU time of the UI thread over the whole reply.

Targets: screen lag under 100 ms, UI CPU time under 10% of the stream's time. The peer,
measured in the same run: a bare Textual app with one Markdown widget fed the same
batches, i.e. what the framework itself costs for this stream on this machine.

    python scripts/bench_tui.py [--tokens 5000] [--rate 200] [--flush 0.08] [--json FILE] [--smoke]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from _bench import BenchParser, Column, Report, cell, ratio, workspace


def word(i: int) -> str:
    """Token i of the scripted reply: numbered words in paragraphs of 60, as prose has."""
    return f"w{i}\n\n" if i % 60 == 59 else f"w{i} "


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument("--tokens", type=int, default=5000)
    p.add_argument("--rate", type=float, default=200.0, help="tokens per second")
    p.add_argument("--flush", type=float, default=0.08, help="the app's batching interval (s)")
    p.smoke(tokens=300)
    args = p.parse_args(argv)

    with workspace() as work:
        ours = measure_app(args, work / "home")
    peer = measure_peer(args)
    if ours is None or peer is None:
        return 1
    rows = [
        ("screen updates", ours.updates, peer.updates, "{:.0f}"),
        ("lag mean (ms)", ours.lag_mean, peer.lag_mean, "{:.1f}"),
        ("lag p95 (ms)   target < 100", ours.lag_p95, peer.lag_p95, "{:.1f}"),
        ("lag max (ms)", ours.lag_max, peer.lag_max, "{:.1f}"),
        ("UI CPU (%)     target < 10", ours.cpu_share * 100, peer.cpu_share * 100, "{:.1f}"),
        ("UI CPU per token (ms)", ours.cpu_per_token, peer.cpu_per_token, "{:.2f}"),
    ]
    report = Report(args.json)
    report.table(
        [
            Column("", "{}", left=True),
            Column("qwen-mlx chat", "{}"),
            Column("bare Textual", "{}"),
            Column("ratio", "{:.2f}"),
        ],
        [(label, cell(a, fmt), cell(b, fmt), ratio(a, b)) for label, a, b, fmt in rows],
        title=f"{args.tokens} tokens at {args.rate:.0f} tokens/s, "
        f"flushed every {args.flush * 1000:.0f} ms",
    )
    report.line(
        "bare Textual: one Markdown widget in a VerticalScroll fed the same batches through "
        "Markdown.get_stream, nothing else on screen (the framework's floor)."
    )
    report.save()
    return 0


@dataclass
class Result:
    updates: int
    lag_mean: float
    lag_p95: float
    lag_max: float
    cpu_share: float
    cpu_per_token: float


def summarize(
    args, produced: list[float], appended: list[tuple[float, int]], ui_cpu: float, who: str
) -> Result | None:
    """Lag of every token behind the stream (from the characters each append showed) and
    the UI thread's CPU share over the stream."""
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
            f"{who}: only {j} of {args.tokens} tokens reached the screen "
            f"({appended[-1][1] if appended else 0} of {total} characters)",
            file=sys.stderr,
        )
        return None
    stream_time = produced[-1] - produced[0]
    lags_ms = sorted(x * 1000 for x in lags)
    return Result(
        updates=len(appended),
        lag_mean=statistics.mean(lags_ms),
        lag_p95=lags_ms[int(0.95 * (len(lags_ms) - 1))],
        lag_max=lags_ms[-1],
        cpu_share=ui_cpu / stream_time,
        cpu_per_token=ui_cpu / args.tokens * 1000,
    )


def record_appends(appended: list[tuple[float, int]]) -> None:
    """Note the time and length of every Markdown append to a reply, once it is shown."""
    from textual.widgets import Markdown

    real_append = Markdown.append

    def timed_append(self, markdown: str):
        waiter = real_append(self, markdown)

        async def done() -> None:
            await waiter
            if self.has_class("assistant"):
                appended.append((time.perf_counter(), len(self.source)))

        return asyncio.ensure_future(done())

    Markdown.append = timed_append


def scripted_words(args, produced: list[float]):
    """The words of the reply at the stream's rate, noting when each left the loop."""
    interval = 1.0 / args.rate
    start = time.perf_counter()
    for i in range(args.tokens):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        produced.append(time.perf_counter())
        yield i, word(i)


def measure_app(args, home: Path) -> Result | None:
    """The real chat app, headless, with the demo model (built into the store `home`,
    where QWEN_MLX_HOME points) and a scripted token loop."""

    import qwen_mlx.chat.session as session_module
    from qwen_mlx.convert.demo import ensure_demo_model
    from qwen_mlx.runtime import GenerationChunk
    from tui.app import ChatApp
    from tui.widgets import PromptInput

    model_name = ensure_demo_model()
    produced: list[float] = []
    appended: list[tuple[float, int]] = []

    def scripted_stream(model, tokens, params, **kwargs):
        for i, text in scripted_words(args, produced):
            last = i == args.tokens - 1
            yield GenerationChunk(
                text, i, len(tokens), 0.0, i + 1, args.rate, 0.0, 0.0, "length" if last else None
            )

    session_module.stream_tokens = scripted_stream
    record_appends(appended)

    async def run() -> float:
        app = ChatApp(model=model_name, home=home, flush_interval=args.flush)
        async with app.run_test(size=(120, 40)) as pilot:
            while app.session is None:
                await pilot.pause(0.05)
            app.query_one(PromptInput).load_text("Stream, please.")
            idle0 = time.thread_time()
            await asyncio.sleep(2.0)
            idle = (time.thread_time() - idle0) / 2.0  # the app's own upkeep, per second
            cpu0 = time.thread_time()
            await pilot.press("enter")
            while app.streaming or not produced:
                await asyncio.sleep(0.05)  # not pilot.pause: it would drive extra refreshes
            cpu = time.thread_time() - cpu0
            print(f"idle chat app: {idle:.1%} of a core", file=sys.stderr)
            await pilot.pause(0.5)  # the last append finishes after the reply is done
        return cpu

    ui_cpu = asyncio.run(run())
    return summarize(args, produced, appended, ui_cpu, "qwen-mlx chat")


def measure_peer(args) -> Result | None:
    """The same stream, batched the same way on a thread, into a bare Textual app."""
    import threading

    from textual.app import App
    from textual.containers import VerticalScroll
    from textual.message import Message
    from textual.widgets import Markdown

    produced: list[float] = []
    appended: list[tuple[float, int]] = []

    class Text(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Done(Message):
        pass

    class Peer(App):
        CSS = "VerticalScroll { height: 1fr; }"

        def compose(self):
            with VerticalScroll():
                yield Markdown(classes="assistant")

        def on_mount(self) -> None:
            self.query_one(VerticalScroll).anchor()
            self.stream = Markdown.get_stream(self.query_one(Markdown))
            self.finished = threading.Event()

        def produce(self) -> None:
            pending, flushed = [], time.monotonic()
            for _, text in scripted_words(args, produced):
                pending.append(text)
                if time.monotonic() - flushed >= args.flush:
                    self.post_message(Text("".join(pending)))
                    pending.clear()
                    flushed = time.monotonic()
            if pending:
                self.post_message(Text("".join(pending)))
            self.post_message(Done())

        async def on_text(self, message: Text) -> None:
            await self.stream.write(message.text)

        async def on_done(self, message: Done) -> None:
            await self.stream.stop()
            self.finished.set()

    record_appends(appended)

    async def run() -> float:
        app = Peer()
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.pause(0.5)
            cpu0 = time.thread_time()
            threading.Thread(target=app.produce, daemon=True).start()
            while not app.finished.is_set():
                await asyncio.sleep(0.05)
            cpu = time.thread_time() - cpu0
            await pilot.pause(0.5)
        return cpu

    ui_cpu = asyncio.run(run())
    return summarize(args, produced, appended, ui_cpu, "bare Textual")


if __name__ == "__main__":
    sys.exit(main())
