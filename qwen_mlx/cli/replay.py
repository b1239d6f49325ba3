"""`qwen-mlx replay FILE --url URL`: send a recorded session's requests (`serve --record`)
to a server, in order, and report per turn the prompt tokens, the tokens it prefilled,
and the time to the first token.

What a server prefilled is read from the usage each protocol reports: OpenAI chat's
`prompt_tokens_details.cached_tokens`, the Responses API's `input_tokens_details`,
Anthropic's `input_tokens` beside `cache_read_input_tokens`, Ollama's
`prompt_eval_count` (which counts only the tokens it read). A server that reports no
cached tokens (mlx-lm's, say) shows its prompt only. A streamed chat request is sent
asking for its usage (`stream_options.include_usage`), the one change made to a body.

"new" is what a turn adds to the last request of its conversation (requests of one
conversation share their system prompt and first message; an agent's sub-agents are
other conversations): the tokens a server that keeps every conversation's cache must
read, the replies it did not write itself included.

It is a command, not only a function (`replay`, which the benchmark and the tests call),
so that anyone can measure their own agent session against this server, mlx-lm's or
Ollama, with the same numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import command_parser, guarded, print_table

EXAMPLES = """\
examples:
  qwen-mlx serve --record session.jsonl        # then run your agent against it
  qwen-mlx replay session.jsonl --url http://127.0.0.1:8080
  qwen-mlx replay session.jsonl --url http://127.0.0.1:8080 --max-tokens 64 --json
"""

TIMEOUT = 600.0  # seconds a turn may take (a long prompt on a slow machine)


@dataclass(frozen=True)
class ReplayedTurn:
    """One request sent again, and what its server said about it."""

    index: int
    method: str
    path: str
    status: int
    conversation: str  # a short key: requests with the same one are one conversation
    prompt_tokens: int | None = None
    prefilled: int | None = None  # prompt tokens the server read (not from its cache)
    new: int | None = None  # tokens this turn adds to its conversation's last request
    ttft: float | None = None  # seconds to the first generated output (streams only)
    seconds: float = 0.0  # to the end of the reply
    error: str | None = None

    @property
    def cached(self) -> int | None:
        if self.prompt_tokens is None or self.prefilled is None:
            return None
        return self.prompt_tokens - self.prefilled


def read_session(path: str | Path) -> list[dict[str, Any]]:
    """The requests a `serve --record` file holds, in order (blank lines skipped)."""
    lines = []
    for number, line in enumerate(Path(path).expanduser().read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e}).") from e
        if not isinstance(item, dict) or "path" not in item:
            raise ValueError(f"{path}, line {number}: not a recorded request.")
        lines.append(item)
    return lines


def replay(
    requests: Iterable[dict[str, Any]],
    url: str,
    *,
    api_key: str | None = None,
    model: str | None = None,
    max_tokens: int | None = None,
    on_turn: Callable[[ReplayedTurn], None] | None = None,
) -> list[ReplayedTurn]:
    """Send each recorded request to the server at `url` (its root, no `/v1`), one after
    another, and return what each turn cost. `model` is put in each body as the model to use;
    `max_tokens` caps each reply (in the field each protocol reads)."""
    turns: list[ReplayedTurn] = []
    last_prompt: dict[str, int] = {}
    for index, request in enumerate(requests, 1):
        turn = _send(index, request, url.rstrip("/"), api_key, model, max_tokens)
        if turn.prompt_tokens is not None:
            previous = last_prompt.get(turn.conversation)
            new = turn.prompt_tokens - previous if previous is not None else turn.prompt_tokens
            turn = _with(turn, new=max(new, 0))
            last_prompt[turn.conversation] = turn.prompt_tokens
        turns.append(turn)
        if on_turn is not None:
            on_turn(turn)
    return turns


def conversation_key(body: Any) -> str:
    """Which conversation a request belongs to: its system prompt and first message."""
    if not isinstance(body, dict):
        return "-"
    items = body.get("messages") or body.get("input") or body.get("prompt") or []
    first = items
    if isinstance(items, list):  # up to the first user message (system ones before it)
        users = [i for i, m in enumerate(items) if not isinstance(m, dict) or _user(m)]
        first = items[: users[0] + 1] if users else items[:1]
    head = [body.get("system"), body.get("instructions"), first]
    return hashlib.sha256(json.dumps(head, sort_keys=True).encode()).hexdigest()[:8]


def _user(message: dict[str, Any]) -> bool:
    return message.get("role") == "user"


def _send(
    index: int,
    request: dict[str, Any],
    url: str,
    api_key: str | None,
    model: str | None,
    max_tokens: int | None,
) -> ReplayedTurn:
    method, path = request.get("method", "POST"), request["path"]
    body = request.get("body")
    body = _adjusted(path, body, model, max_tokens) if isinstance(body, dict) else body
    headers = dict(request.get("headers") or {})
    if api_key:
        headers["authorization"] = f"Bearer {api_key}"
        headers["x-api-key"] = api_key
    if "body" in request:
        data: bytes | None = json.dumps(body).encode()
        headers.setdefault("content-type", "application/json")
    else:
        data = request["text"].encode() if "text" in request else None
    target = url + path + (f"?{request['query']}" if request.get("query") else "")
    sent = urllib.request.Request(target, data=data, headers=headers, method=method)
    key = conversation_key(body)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(sent, timeout=TIMEOUT) as response:
            usage, first = _read(path, response, started)
            status = response.status
    except urllib.error.HTTPError as e:
        text = e.read().decode(errors="replace")[:300]
        seconds = time.perf_counter() - started
        return ReplayedTurn(index, method, path, e.code, key, seconds=seconds, error=text)
    prompt, prefilled = usage
    return ReplayedTurn(
        index,
        method,
        path,
        status,
        key,
        prompt_tokens=prompt,
        prefilled=prefilled,
        ttft=first,
        seconds=time.perf_counter() - started,
    )


def _adjusted(path: str, body: dict[str, Any], model: str | None, cap: int | None) -> dict:
    body = dict(body)
    if model is not None:
        body["model"] = model
    if cap is not None:
        if path.startswith("/api/"):
            body["options"] = {**(body.get("options") or {}), "num_predict": cap}
        elif path.startswith("/v1/responses"):
            body["max_output_tokens"] = cap
        elif path.startswith("/v1/messages"):
            body["max_tokens"] = cap
        else:
            body.pop("max_completion_tokens", None)
            body["max_tokens"] = cap
    if path.startswith("/v1/chat/completions") and body.get("stream"):
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    return body


def _read(path: str, response: Any, started: float) -> tuple[tuple[int | None, ...], float | None]:
    """The reply's usage (prompt tokens, tokens prefilled) and, for a stream, the seconds
    to its first generated output."""
    kind = response.headers.get("content-type", "")
    if "text/event-stream" not in kind and "ndjson" not in kind:
        return _usage(path, json.loads(response.read() or b"{}")), None
    usage: tuple[int | None, ...] = (None, None)
    first = None
    for event in _events(response, ndjson="ndjson" in kind):
        if first is None and _generated(event):
            first = time.perf_counter() - started
        found = _usage(path, event)
        if found != (None, None):
            usage = _merged(usage, found)
    return usage, first


def _events(response: Any, *, ndjson: bool) -> Iterator[dict[str, Any]]:
    for raw in response:
        line = raw.decode(errors="replace").strip()
        if ndjson and line:
            yield json.loads(line)
        elif line.startswith("data:"):
            data = line[5:].strip()
            if data and data != "[DONE]":
                yield json.loads(data)


def _generated(event: dict[str, Any]) -> bool:
    """Whether a stream event carries generated output (text or a tool call)."""
    kind = event.get("type", "")
    if kind in ("content_block_delta", "response.output_text.delta"):
        return True
    if kind in ("response.function_call_arguments.delta", "response.output_item.added"):
        return event.get("item", {}).get("type") == "function_call" or kind.endswith("delta")
    if kind == "content_block_start":
        return event.get("content_block", {}).get("type") == "tool_use"
    for choice in event.get("choices") or []:
        delta = choice.get("delta") or {}
        if delta.get("content") or delta.get("tool_calls") or choice.get("text"):
            return True
    message = event.get("message")
    if isinstance(message, dict) and (message.get("content") or message.get("tool_calls")):
        return "model" in event  # Ollama's chat lines (Anthropic's message_start has no text)
    return bool(event.get("response")) and isinstance(event.get("response"), str)


def _usage(path: str, data: dict[str, Any]) -> tuple[int | None, int | None]:
    """(prompt tokens, tokens prefilled) from a reply or a stream event, as each
    protocol reports them; (None, None) where it says nothing."""
    if path.startswith("/api/"):
        if "prompt_eval_count" in data:
            return None, data["prompt_eval_count"]
        return None, None
    usage = data.get("usage")
    if usage is None and isinstance(data.get("response"), dict):
        usage = data["response"].get("usage")  # Responses' response.completed
    if usage is None and isinstance(data.get("message"), dict):
        usage = data["message"].get("usage")  # Anthropic's message_start
    if not isinstance(usage, dict):
        return None, None
    if "cache_read_input_tokens" in usage or path.startswith("/v1/messages"):
        fresh = (usage.get("input_tokens") or 0) + (usage.get("cache_creation_input_tokens") or 0)
        return fresh + (usage.get("cache_read_input_tokens") or 0), fresh
    if "input_tokens" in usage:
        details = usage.get("input_tokens_details") or {}
        return usage["input_tokens"], _minus(usage["input_tokens"], details.get("cached_tokens"))
    if "prompt_tokens" in usage:
        details = usage.get("prompt_tokens_details") or {}
        return usage["prompt_tokens"], _minus(usage["prompt_tokens"], details.get("cached_tokens"))
    return None, None


def _minus(total: int, cached: int | None) -> int | None:
    return None if cached is None else total - cached


def _merged(old: tuple[int | None, ...], new: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """Later usage wins where it says something (Anthropic's message_delta after start)."""
    return tuple(n if n is not None else o for o, n in zip(old, new, strict=True))


def _with(turn: ReplayedTurn, **changes: Any) -> ReplayedTurn:
    from dataclasses import replace

    return replace(turn, **changes)


def table(turns: list[ReplayedTurn]) -> list[list[str]]:
    """Rows for `print_table`: a header, then one per turn."""

    def n(value: int | None) -> str:
        return "-" if value is None else f"{value:,}"

    rows = [["turn", "route", "conv", "prompt", "new", "prefilled", "TTFT s", "total s"]]
    for t in turns:
        route = f"{t.path}" if t.status < 400 else f"{t.path} ({t.status})"
        ttft = "-" if t.ttft is None else f"{t.ttft:.2f}"
        rows.append(
            [
                str(t.index),
                route,
                t.conversation,
                n(t.prompt_tokens),
                n(t.new),
                n(t.prefilled),
                ttft,
                f"{t.seconds:.2f}",
            ]
        )
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "replay",
        "Send the requests a `serve --record` file holds to a server, in order, and show per "
        "turn the prompt tokens, the tokens the server prefilled (from the usage it reports), "
        "and the time to the first token.",
        EXAMPLES,
    )
    p.add_argument("file", help="the recorded session (one JSON request a line)")
    p.add_argument("--url", required=True, help="the server's root, e.g. http://127.0.0.1:8080")
    p.add_argument("--api-key", help="sent as `Authorization: Bearer` and `x-api-key`")
    p.add_argument("--model", help="the model name to put in each request (another server's)")
    p.add_argument("--max-tokens", type=int, metavar="N", help="cap each reply at N tokens")
    p.add_argument("--json", action="store_true", help="one JSON object a turn, not a table")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tokens is not None and args.max_tokens <= 0:
        raise ValueError("--max-tokens must be positive.")
    requests = read_session(args.file)
    if not requests:
        raise ValueError(f"{args.file} holds no requests.")

    def show(turn: ReplayedTurn) -> None:
        if args.json:
            print(json.dumps({**turn.__dict__, "cached": turn.cached}), flush=True)

    try:
        turns = replay(
            requests,
            args.url,
            api_key=args.api_key,
            model=args.model,
            max_tokens=args.max_tokens,
            on_turn=show,
        )
    except urllib.error.URLError as e:
        raise ValueError(f"cannot reach {args.url}: {e.reason}") from e
    if not args.json:
        print_table(table(turns), right_align=(0, 3, 4, 5, 6, 7))
    return 1 if any(t.error for t in turns) else 0


if __name__ == "__main__":
    raise SystemExit(main())
