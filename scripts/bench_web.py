#!/usr/bin/env python3
"""The web chat's streaming against its peers, in one run, on the tiny test model.

(a) One reply of N tokens (greedy, end of turn masked by a high max_tokens on a random
    model), measured at the client: time to first text and tokens/s through the web
    chat's SSE (`/web/api/.../send`), through the OpenAI route's SSE on the same server
    (`/v1/chat/completions`, stream=True), and straight from `ChatSession` in-process.
    Target: the web chat within 10% of the OpenAI route's tokens/s.
(b) Server-side Markdown for a streamed reply of 1k-16k tokens' worth of text (a table,
    code and prose, repeated), updated every 40 characters as the server does: ours
    (web.markdown.MarkdownStream: finished blocks rendered once) against re-rendering the
    whole reply on every update. Target: linear, so ours per update stays flat.

    python scripts/bench_web.py [--tokens 256] [--rounds 3] [--markdown-tokens 1024,4096,16384]
                                [--json FILE] [--smoke]

(`--repeat` is the former name of `--rounds`.)
"""

from __future__ import annotations

import json
import re
import statistics
import tempfile
import threading
import time
from pathlib import Path

from _bench import BenchParser, Column, Report, alternate, ratio, tiny_model, workspace

SAMPLE = (
    "Here is a **table** and some code:\n\n"
    "| river | length (km) |\n|---|---|\n| Nile | 6650 |\n| Amazon | 6400 |\n\n"
    "```python\ndef longest(rivers):\n    return max(rivers, key=rivers.get)\n```\n\n"
    "Some prose with *emphasis*, `inline code` and a [link](https://example.org). " * 3 + "\n\n"
)


def serve(model, home: Path):
    import uvicorn

    from qwen_mlx.server import Engine, create_app, server_config

    engine = Engine(model, cache_bytes=0)  # no prefix reuse: every request prefills alike
    app = create_app(engine, allowed_hosts=["127.0.0.1"], web_home=home)
    server = uvicorn.Server(server_config(app, host="127.0.0.1", port=0, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    return server, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


def web_reply(client, tokens: int) -> tuple[float, float, int]:
    chat = client.post("/web/api/chats", json={"settings": {"params": _params(tokens)}}).json()
    start = time.perf_counter()
    first = None
    with client.stream("POST", f"/web/api/chats/{chat['id']}/send", json={"text": "Go"}) as r:
        body = ""
        for piece in r.iter_text():
            if first is None and "event: reply" in piece:
                first = time.perf_counter() - start
            body += piece
    total = time.perf_counter() - start
    done = json.loads(re.findall(r"event: done\ndata: (.*)", body)[-1])
    return first, total, done["stats"]["generated"]


def openai_reply(client, tokens: int) -> tuple[float, float, int]:
    body = {
        "messages": [{"role": "user", "content": "Go"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        **_params(tokens),
    }
    start = time.perf_counter()
    first, generated = None, 0
    with client.stream("POST", "/v1/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if not line.startswith("data: {"):
                continue
            data = json.loads(line[6:])
            if first is None and data["choices"] and data["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
            if data.get("usage"):
                generated = data["usage"]["completion_tokens"]
    return first, time.perf_counter() - start, generated


def session_reply(model, tokens: int) -> tuple[float, float, int]:
    from qwen_mlx.chat.session import ChatSession

    session = ChatSession(model, params=model.default_params.replace(**_params(tokens)))
    start = time.perf_counter()
    first, last = None, None
    for chunk in session.send("Go"):
        if first is None and chunk.text:
            first = time.perf_counter() - start
        last = chunk
    return first, time.perf_counter() - start, last.generation_tokens


def _params(tokens: int) -> dict:
    return {"temperature": 0.0, "max_tokens": tokens}


def streaming(model, tokens: int, repeat: int) -> list[tuple[str, float, float]]:
    import httpx

    from qwen_mlx.runtime.thread import model_thread

    rows = []
    with tempfile.TemporaryDirectory() as home:
        server, url = serve(model, Path(home))
        page = httpx.get(url + "/").text
        token = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page)[1]
        headers = {"X-CSRF-Token": token, "Origin": url}
        with httpx.Client(base_url=url, headers=headers, timeout=300) as client:
            runs = {
                "web chat SSE": lambda: web_reply(client, tokens),
                "OpenAI route SSE": lambda: openai_reply(client, tokens),
                "ChatSession in-process": lambda: (
                    model_thread().submit(session_reply, model, tokens).result()
                ),
            }
            results = alternate(runs, repeat)  # taking turns: other load hits all alike
            for name, got in results.items():
                ttft = statistics.median(r[0] for r in got)
                tps = statistics.median(r[2] / (r[1] - r[0]) for r in got)
                rows.append((name, ttft * 1000, tps))
        server.should_exit = True
    return rows


def rendering(sizes: list[int]) -> list[tuple[int, float, float]]:
    from qwen_mlx.server.web.markdown import MarkdownStream, render_markdown

    rows = []
    for tokens in sizes:
        text = (SAMPLE * (tokens * 4 // len(SAMPLE) + 1))[: tokens * 4]  # ~4 chars a token
        pieces = [text[i : i + 40] for i in range(0, len(text), 40)]
        start = time.perf_counter()
        stream = MarkdownStream()
        for piece in pieces:
            stream.feed(piece)
        ours = (time.perf_counter() - start) / len(pieces)
        sample = range(0, len(pieces), max(1, len(pieces) // 50))  # the full run is slow
        start = time.perf_counter()
        for k in sample:
            render_markdown(text[: (k + 1) * 40])
        whole = (time.perf_counter() - start) / len(sample)
        rows.append((tokens, ours * 1000, whole * 1000))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument("--tokens", type=int, default=256, help="reply length for (a)")
    p.rounds(3, "replies of each path, taking turns (the median counts)", "--repeat")
    p.add_argument(
        "--markdown-tokens",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1024, 4096, 16384],
        metavar="N,N,...",
        help="reply sizes for (b)",
    )
    p.smoke(tokens=16, rounds=1, markdown_tokens=[256, 1024])
    args = p.parse_args(argv)
    report = Report(args.json)
    with workspace() as folder:
        model = tiny_model(folder, "Qwen3-1M-Tiny-2507", quantize=True)
        rows = streaming(model, args.tokens, args.rounds)
    report.table(
        [
            Column("path", "{}", left=True),
            Column("first text ms"),
            Column("tokens/s", vs="vs OpenAI route"),
        ],
        rows,
        peer="OpenAI route SSE",
        title=f"(a) one {args.tokens}-token reply, tiny model, median of {args.rounds}",
    )
    report.table(
        [
            Column("reply tokens", "{:,}"),
            Column("ours ms", "{:.2f}"),
            Column("re-render whole ms", "{:.2f}"),
            Column("whole / ours", "{:.1f}x"),
        ],
        [
            (tokens, ours, whole, ratio(whole, ours))
            for tokens, ours, whole in rendering(args.markdown_tokens)
        ],
        title="(b) server-side Markdown per 40-character update of a streamed reply",
    )
    report.save()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
