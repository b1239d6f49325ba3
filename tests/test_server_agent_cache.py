"""An agent loop never re-reads what the server holds: on each protocol, a synthetic agent
session (a long system prompt, tools, a tool loop of several steps, the client echoing
each reply as it parsed it) prefills only what each turn adds, while other clients decode
in the same batch; usage says so in each protocol's own field; the prompt cache outlives
memory and restarts on disk (`serve --cache-dir`); and a session recorded with
`serve --record` replays with the same numbers (`qwen-mlx replay`).

The sessions here are made up in the shape of Claude Code's and Codex's traffic, never
captured prompts. The tiny random model calls a tool only when `tool_choice` forces it,
so the agents force one on every step but the last; Ollama's API has no tool_choice, so
its agent goes turn by turn in text.
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from qwen_mlx.server import Engine, create_app
from qwen_mlx.server.jobs import Finished

from .helpers import SHARED_MODEL, child_env, needs_shared, run_script, start_server

KEY = "agent-key"
STEPS = 6  # requests per session: five tool steps, then a reply in text
MAX_TOKENS = 48  # enough for a forced call to close
SLACK = 8  # tokens a turn may prefill beyond what it adds (a forced call's closing tag)
SYSTEM = "You are a coding agent working in a repository. " + " ".join(
    f"Rule {i}: read file {i} before you change it, and say why." for i in range(40)
)
READ = {
    "name": "read_file",
    "description": "Read a file of the repository.",
    "parameters": {
        "type": "object",
        "properties": {"path": {"type": "string", "maxLength": 10}},
        "required": ["path"],
        "additionalProperties": False,
    },
}


@dataclass
class Served:
    engine: Engine | None  # None: a server in another process
    url: str
    finished: list[Finished]  # the agent's jobs (prompts longer than the others')

    def post(self, path: str, body: dict, **kwargs) -> httpx.Response:
        headers = {"Authorization": f"Bearer {KEY}", "x-api-key": KEY}
        headers["anthropic-version"] = "2023-06-01"
        if self.engine is not None:
            body = {"model": self.engine.model.name, **body}
        response = httpx.post(self.url + path, json=body, headers=headers, timeout=120, **kwargs)
        assert response.status_code == 200, response.text
        return response

    def last(self) -> Finished:
        return self.finished[-1]


def serve(engine: Engine, **options) -> tuple[Served, object, threading.Thread]:
    server, thread, port = start_server(create_app(engine, api_key=KEY, **options))
    finished: list[Finished] = []
    engine.observers.append(lambda done: finished.append(done) if done.prompt_tokens > 200 else 0)
    return Served(engine, f"http://127.0.0.1:{port}", finished), server, thread


def stop(server, thread, engine: Engine) -> None:
    server.should_exit = True
    thread.join(timeout=10)
    engine.close()


@pytest.fixture(scope="module")
def served(tiny_model) -> Iterator[Served]:
    engine = Engine(
        tiny_model, max_context=4096, max_batch=4, prefill_step_size=32, cache_bytes=64 << 20
    )
    assert engine.batched
    s, server, thread = serve(engine)
    yield s
    stop(server, thread, engine)


@pytest.fixture
def others(served) -> Iterator[None]:
    """Two other clients decoding long replies the whole time the test runs."""
    done = threading.Event()
    started = threading.Barrier(3, timeout=60)

    def decode(i: int) -> None:
        first = True
        while not done.is_set():
            body = {"prompt": f"story {i}:", "max_tokens": 300, "stream": True}
            headers = {"Authorization": f"Bearer {KEY}"}
            with httpx.stream(
                "POST", served.url + "/v1/completions", json=body, headers=headers, timeout=120
            ) as response:
                for _ in response.iter_lines():
                    if first:
                        first = False
                        started.wait()
                    if done.is_set():
                        break

    threads = [threading.Thread(target=decode, args=(i,), daemon=True) for i in range(2)]
    for t in threads:
        t.start()
    started.wait()
    yield
    done.set()
    for t in threads:
        t.join(timeout=30)


# -- the agents: each sends its whole conversation every turn, echoing replies as parsed --


def chat_agent(served: Served, *, compact: bool = False) -> list[dict]:
    """OpenAI chat, as opencode or Codex's chat mode: `compact` re-serializes the tool
    arguments without spaces, as opencode, qwen-code and Continue do (returns only the
    usage of turns after such an echo)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix it."}]
    usages = []
    for step in range(STEPS):
        body = {
            "messages": messages,
            "tools": [{"type": "function", "function": READ}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        if step < STEPS - 1:
            body["tool_choice"] = {"type": "function", "function": {"name": "read_file"}}
        reply = served.post("/v1/chat/completions", body).json()
        usages.append(reply["usage"])
        message = reply["choices"][0]["message"]
        calls = message.get("tool_calls") or []
        if compact:
            for call in calls:
                written = call["function"]["arguments"]
                tight = json.dumps(json.loads(written), separators=(",", ":"))
                assert tight != written
                call["function"]["arguments"] = tight
        messages.append({k: v for k, v in message.items() if v is not None})
        for call in calls:
            result = f"line {step}: def f(): return {step}"
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": result})
        if not calls:
            messages.append({"role": "user", "content": "Go on."})
    return usages


def anthropic_agent(served: Served) -> list[dict]:
    """Anthropic Messages, as Claude Code: system blocks, tool_use echoed as objects."""
    tool = {"name": READ["name"], "description": READ["description"]}
    tool["input_schema"] = READ["parameters"]
    messages: list[dict] = [{"role": "user", "content": [{"type": "text", "text": "Fix it."}]}]
    usages = []
    for step in range(STEPS):
        body = {
            "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
            "messages": messages,
            "tools": [tool],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
        }
        if step < STEPS - 1:
            body["tool_choice"] = {"type": "tool", "name": "read_file"}
        reply = served.post("/v1/messages", body).json()
        usages.append(reply["usage"])
        messages.append({"role": "assistant", "content": reply["content"]})
        uses = [b for b in reply["content"] if b["type"] == "tool_use"]
        results = [
            {"type": "tool_result", "tool_use_id": b["id"], "content": f"line {step}: ok"}
            for b in uses
        ]
        messages.append({"role": "user", "content": results or "Go on."})
    return usages


def responses_agent(served: Served) -> list[dict]:
    """The Responses API as Codex uses it: store false, the whole input sent every turn."""
    items: list[dict] = [
        {"type": "message", "role": "developer", "content": SYSTEM},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Fix."}]},
    ]
    usages = []
    for step in range(STEPS):
        body = {
            "input": items,
            "tools": [{"type": "function", **READ}],
            "max_output_tokens": MAX_TOKENS,
            "temperature": 0,
            "store": False,
        }
        if step < STEPS - 1:
            body["tool_choice"] = {"type": "function", "name": "read_file"}
        reply = served.post("/v1/responses", body).json()
        usages.append(reply["usage"])
        items += reply["output"]
        calls = [o for o in reply["output"] if o["type"] == "function_call"]
        for call in calls:
            output = f"Process exited with code 0\nOutput:\nline {step}\n"
            items.append(
                {"type": "function_call_output", "call_id": call["call_id"], "output": output}
            )
        if not calls:
            items.append({"type": "message", "role": "user", "content": "Go on."})
    return usages


def ollama_agent(served: Served) -> list[dict]:
    """Ollama's /api/chat, streamed (as LangChain's ChatOllama always does)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix it."}]
    usages = []
    for step in range(STEPS):
        body = {"messages": messages, "options": {"num_predict": MAX_TOKENS, "temperature": 0}}
        lines = served.post("/api/chat", body).text.splitlines()
        chunks = [json.loads(line) for line in lines if line]
        text = "".join(c["message"]["content"] for c in chunks if "message" in c)
        usages.append(chunks[-1])
        messages += [
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"Step {step} done. Go on."},
        ]
    return usages


AGENTS = {
    "chat": chat_agent,
    "anthropic": anthropic_agent,
    "responses": responses_agent,
    "ollama": ollama_agent,
}


def cached_of(protocol: str, usage: dict) -> int:
    """The prompt tokens the protocol's usage says came from the cache."""
    if protocol == "chat":
        return usage["prompt_tokens_details"]["cached_tokens"]
    if protocol == "responses":
        return usage["input_tokens_details"]["cached_tokens"]
    if protocol == "anthropic":
        return usage["cache_read_input_tokens"]
    raise AssertionError(protocol)


def prompt_of(protocol: str, usage: dict) -> int:
    if protocol == "chat":
        return usage["prompt_tokens"]
    if protocol == "responses":
        return usage["input_tokens"]
    return usage["input_tokens"] + usage["cache_read_input_tokens"]  # anthropic


@pytest.mark.parametrize("protocol", list(AGENTS))
def test_each_turn_prefills_only_what_it_adds_while_others_decode(served, others, protocol):
    served.engine.cache.clear()
    start = len(served.finished)
    usages = AGENTS[protocol](served)
    turns = served.finished[start:]
    assert len(turns) == STEPS
    assert turns[0].cached_tokens == 0
    for before, turn in itertools.pairwise(turns):
        adds = turn.prompt_tokens - before.prompt_tokens - before.completion_tokens
        prefilled = turn.prompt_tokens - turn.cached_tokens
        assert 0 < prefilled <= adds + SLACK, (protocol, prefilled, adds)
    assert max(t.batch_size for t in turns) > 1  # the others decoded beside it
    for usage, turn in zip(usages, turns, strict=True):  # in the protocol's own field
        if protocol == "ollama":  # prompt_eval_count: only the tokens read
            assert usage["prompt_eval_count"] == turn.prompt_tokens - turn.cached_tokens
        else:
            assert cached_of(protocol, usage) == turn.cached_tokens
            assert prompt_of(protocol, usage) == turn.prompt_tokens
        if protocol == "anthropic":
            assert usage["input_tokens"] == turn.prompt_tokens - turn.cached_tokens


def test_tool_arguments_echoed_compact_still_match_what_the_model_wrote(served):
    served.engine.cache.clear()
    start = len(served.finished)
    chat_agent(served, compact=True)
    turns = served.finished[start:]
    for before, turn in itertools.pairwise(turns):
        adds = turn.prompt_tokens - before.prompt_tokens - before.completion_tokens
        assert turn.prompt_tokens - turn.cached_tokens <= adds + SLACK


def test_interleaved_sub_agents_each_resume_from_their_own_entry(served):
    """Claude Code's sub-agents: requests of two conversations alternate; each resumes
    from its own entry, and the sub-agent's first request shares the main one's tools."""
    served.engine.cache.clear()
    main = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix it."}]
    sub = [{"role": "system", "content": "You are a sub-agent. " + SYSTEM[:300]}]
    sub.append({"role": "user", "content": "Search the code."})
    start = len(served.finished)
    for step in range(3):
        for conversation in (main, sub):
            body = {"messages": conversation, "max_tokens": 8, "temperature": 0}
            reply = served.post("/v1/chat/completions", body).json()
            conversation.append(reply["choices"][0]["message"])
            conversation.append({"role": "user", "content": f"Result {step}."})
    turns = served.finished[start:]
    for i in range(2, len(turns)):  # each against its own conversation's last turn
        before, turn = turns[i - 2], turns[i]
        adds = turn.prompt_tokens - before.prompt_tokens - before.completion_tokens
        assert turn.prompt_tokens - turn.cached_tokens <= adds + SLACK


def test_a_rewritten_earlier_turn_reuses_everything_before_it(served):
    served.engine.cache.clear()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix it."}]
    served.post("/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    first = served.last()
    changed = [{"role": "system", "content": SYSTEM + " Today is Tuesday."}, messages[1]]
    served.post("/v1/chat/completions", {"messages": changed, "max_tokens": 4})
    system_tokens = len(
        served.engine.model.render_tokens(messages[:1], add_generation_prompt=False)
    )
    assert served.last().cached_tokens >= system_tokens - 8
    assert served.last().cached_tokens < first.prompt_tokens


def test_anthropic_message_start_splits_the_prompt_as_the_cache_holds_it(served):
    served.engine.cache.clear()
    body = {"system": SYSTEM, "messages": [{"role": "user", "content": "Fix it."}]}
    body |= {"max_tokens": 4, "temperature": 0}
    served.post("/v1/messages", body)
    body["stream"] = True
    events = [
        json.loads(line[5:])
        for line in served.post("/v1/messages", body).text.splitlines()
        if line.startswith("data:")
    ]
    start = events[0]["message"]["usage"]
    end = next(e for e in events if e["type"] == "message_delta")["usage"]
    assert start["cache_read_input_tokens"] > 0
    assert start["input_tokens"] + start["cache_read_input_tokens"] == served.last().prompt_tokens
    assert (start["input_tokens"], start["cache_read_input_tokens"]) == (
        end["input_tokens"],
        end["cache_read_input_tokens"],
    )


def test_metrics_count_reused_and_prefilled_prompt_tokens(served):
    def scrape() -> dict[str, float]:
        text = httpx.get(
            served.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        ).text
        values = {}
        for line in text.splitlines():
            if line.startswith("qwen_mlx_prompt_") and "_total " in line:
                name, value = line.split()
                values[name] = float(value)
        return values

    before = scrape()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix it."}]
    for _ in range(2):
        served.post("/v1/chat/completions", {"messages": messages, "max_tokens": 4})
    after = scrape()
    turns = served.finished[-2:]

    def delta(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    assert delta("qwen_mlx_prompt_cached_tokens_total") == sum(t.cached_tokens for t in turns)
    prefilled = sum(t.prompt_tokens - t.cached_tokens for t in turns)
    assert delta("qwen_mlx_prompt_prefilled_tokens_total") == prefilled > 0


# -- the disk tier ---------------------------------------------------------------------


def disk_engine(model, folder, **options) -> Engine:
    return Engine(model, max_context=4096, prefill_step_size=32, cache_dir=folder, **options)


def one_turn(served: Served, messages: list[dict]) -> Finished:
    """A turn of `messages`, whose reply is appended to them as a client echoes it."""
    body = {"messages": messages, "max_tokens": 6, "temperature": 0}
    reply = served.post("/v1/chat/completions", body).json()
    messages.append(reply["choices"][0]["message"])
    return served.last()


def conversation() -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Fix it."}]


def test_a_restarted_server_reads_the_conversation_from_disk(tiny_model, tmp_path):
    folder = tmp_path / "kv"
    engine = disk_engine(tiny_model, folder)
    first, server, thread = serve(engine)
    messages = conversation()
    turn = one_turn(first, messages)
    stop(server, thread, engine)  # a server stopping writes its pool
    assert list(folder.glob("*.safetensors"))

    engine = disk_engine(tiny_model, folder)
    second, server, thread = serve(engine)
    try:
        resumed = one_turn(second, [*messages, {"role": "user", "content": "More."}])
        assert resumed.cached_tokens >= turn.prompt_tokens
        assert engine.cache.disk_reads == 1
        headers = {"Authorization": f"Bearer {KEY}"}
        metrics = httpx.get(second.url + "/metrics", headers=headers, timeout=30).text
        assert "qwen_mlx_prompt_cache_disk_reads 1.0" in metrics
        assert "qwen_mlx_prompt_cache_disk_bytes 0.0" not in metrics
    finally:
        stop(server, thread, engine)


def test_qwen_mlx_serve_stopped_by_sigterm_leaves_its_caches_for_the_next(
    tiny_mlx, tiny_model, tmp_path
):
    """A real `qwen-mlx serve --cache-dir` process, stopped as a service manager stops it
    (SIGTERM), writes its caches; a new server on the folder resumes from them."""
    folder = tmp_path / "kv"
    command = [sys.executable, "-m", "qwen_mlx.cli.serve", "--model", str(tiny_mlx)]
    command += ["--port", "0", "--api-key", KEY, "--cache-dir", str(folder)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=child_env())
    try:
        said = ""
        while "serving" not in said:
            line = proc.stderr.readline()
            assert line, f"qwen-mlx serve exited: {said}"
            said += line
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/v1", said).group(1)
        first = Served(None, url, [])
        messages = conversation()
        body = {"model": tiny_model.name, "messages": messages, "max_tokens": 6}
        reply = first.post("/v1/chat/completions", body).json()
        messages.append(reply["choices"][0]["message"])
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(list(folder.glob("*.safetensors"))) == 1

    engine = disk_engine(tiny_model, folder)
    second, server, thread = serve(engine)
    try:
        resumed = one_turn(second, [*messages, {"role": "user", "content": "More."}])
        assert resumed.cached_tokens >= reply["usage"]["prompt_tokens"]
        assert engine.cache.disk_reads == 1
    finally:
        stop(server, thread, engine)


def test_a_conversation_pushed_out_of_memory_comes_back_from_disk(tiny_model, tmp_path):
    engine = disk_engine(tiny_model, tmp_path / "kv", cache_bytes=1)  # memory keeps nothing
    served, server, thread = serve(engine)
    try:
        messages = conversation()
        turn = one_turn(served, messages)
        assert len(engine.cache) == 0 and engine.cache.disk.entries
        again = one_turn(served, [*messages, {"role": "user", "content": "More."}])
        assert again.cached_tokens >= turn.prompt_tokens and engine.cache.disk_reads == 1
    finally:
        stop(server, thread, engine)


def filled_folder(tiny_model, folder) -> list[dict]:
    engine = disk_engine(tiny_model, folder)
    served, server, thread = serve(engine)
    messages = conversation()
    one_turn(served, messages)
    stop(server, thread, engine)
    return messages


def test_a_damaged_entry_is_dropped_with_a_log_line_and_never_served(tiny_model, tmp_path, caplog):
    folder = tmp_path / "kv"
    messages = filled_folder(tiny_model, folder)
    (entry,) = folder.glob("*.safetensors")
    data = bytearray(entry.read_bytes())
    data[-100] ^= 0xFF  # in the arrays, past the header: only the sha256 can tell
    entry.write_bytes(bytes(data))

    engine = disk_engine(tiny_model, folder)
    served, server, thread = serve(engine)
    try:
        with caplog.at_level(logging.WARNING, logger="qwen_mlx.server.cache_disk"):
            turn = one_turn(served, [*messages, {"role": "user", "content": "More."}])
        assert turn.cached_tokens == 0 and engine.cache.disk_reads == 0
        assert "sha256 does not match" in caplog.text and entry.name[:12] in caplog.text
        assert not entry.exists()
    finally:
        stop(server, thread, engine)


def test_a_damaged_header_or_a_foreign_entry_is_dropped_at_start(tiny_model, tmp_path, caplog):
    from qwen_mlx.server.cache_disk import DiskCache, fingerprint

    folder = tmp_path / "kv"
    filled_folder(tiny_model, folder)
    assert len(list(folder.glob("*.safetensors"))) == 1
    copy = folder / ("0" * 64 + ".safetensors")
    copy.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with caplog.at_level(logging.WARNING, logger="qwen_mlx.server.cache_disk"):
        other = DiskCache(folder, 1 << 30, fingerprint(tiny_model, kv_bits=8))
    assert other.entries == [] and list(folder.iterdir()) == []
    assert "header cannot be read" in caplog.text
    assert "another model or other settings" in caplog.text


def test_the_folder_stays_within_its_bytes_least_recently_used_out_first(tiny_model, tmp_path):
    from qwen_mlx.runtime import make_cache, prefill
    from qwen_mlx.runtime.thread import model_thread
    from qwen_mlx.server.cache_disk import DiskCache, fingerprint

    disk = DiskCache(tmp_path / "kv", 1 << 30, fingerprint(tiny_model, None))

    def save(i: int) -> int:
        tokens = tiny_model.encode(f"conversation {i}: " + "words " * 40)
        cache = make_cache(tiny_model)
        prefill(tiny_model, tokens, cache)
        disk.save(cache, tokens, len(tokens), ())
        return disk.bytes

    size = model_thread().submit(save, 0).result()
    disk.max_bytes = int(size * 2.5)  # room for two
    for i in (1, 2, 3):
        model_thread().submit(save, i).result()
        assert disk.bytes <= disk.max_bytes
    held = {tiny_model.tokenizer.decode(e.tokens[:4]) for e in disk.entries}
    assert len(disk.entries) == 2 and all("conversation 0" not in h for h in held)


def test_nothing_half_written_is_left_or_served(tiny_model, tmp_path, monkeypatch):
    from qwen_mlx.runtime import make_cache, prefill
    from qwen_mlx.runtime.thread import model_thread
    from qwen_mlx.server import cache_disk
    from qwen_mlx.server.cache_disk import DiskCache, fingerprint

    folder = tmp_path / "kv"
    folder.mkdir()
    (folder / ".writing-crashed.safetensors").write_bytes(b"half")  # a crash's leftover
    disk = DiskCache(folder, 1 << 30, fingerprint(tiny_model, None))
    assert list(folder.iterdir()) == []

    def failing(path, cache, metadata):
        path.write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_disk, "save_cache", failing)
    tokens = tiny_model.encode("words " * 20)

    def save() -> None:
        cache = make_cache(tiny_model)
        prefill(tiny_model, tokens, cache)
        disk.save(cache, tokens, len(tokens), ())

    with pytest.raises(OSError):
        model_thread().submit(save).result()
    assert list(folder.iterdir()) == [] and disk.entries == []


# -- recording and replaying a session -------------------------------------------------


def test_record_appends_each_api_request_without_the_key(tiny_model, tmp_path):
    record = tmp_path / "session.jsonl"
    engine = Engine(tiny_model, max_context=4096, prefill_step_size=32)
    served, server, thread = serve(engine, record=record)
    try:
        chat_agent(served)
        served.post(
            "/v1/messages", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        )
    finally:
        stop(server, thread, engine)
    text = record.read_text()
    assert KEY not in text
    lines = [json.loads(line) for line in text.splitlines()]
    assert [line["path"] for line in lines] == ["/v1/chat/completions"] * STEPS + ["/v1/messages"]
    assert lines[-1]["headers"]["anthropic-version"] == "2023-06-01"
    assert lines[0]["headers"]["content-type"] == "application/json"
    assert lines[0]["body"]["messages"][0]["content"] == SYSTEM


def test_a_recorded_session_replays_with_its_prefill_per_turn(tiny_model, tmp_path, capsys):
    from qwen_mlx.cli.main import main
    from qwen_mlx.cli.replay import read_session, replay

    record = tmp_path / "session.jsonl"
    engine = Engine(tiny_model, max_context=4096, prefill_step_size=32)
    served, server, thread = serve(engine, record=record)
    try:
        chat_agent(served)
        anthropic_agent(served)
    finally:
        stop(server, thread, engine)

    engine = Engine(tiny_model, max_context=4096, prefill_step_size=32)
    fresh, server, thread = serve(engine)
    try:
        turns = replay(read_session(record), fresh.url, api_key=KEY)
        assert [t.status for t in turns] == [200] * (2 * STEPS)
        for turn in turns:
            if turn.index in (1, STEPS + 1):  # each session's first request
                assert turn.new == turn.prompt_tokens
            else:
                assert turn.prefilled <= turn.new + SLACK
        assert turns[STEPS].conversation != turns[0].conversation
        code = main(["replay", str(record), "--url", fresh.url, "--api-key", KEY])
        out = capsys.readouterr().out
        assert code == 0 and "prefilled" in out and "/v1/messages" in out
    finally:
        stop(server, thread, engine)


def test_replay_says_when_it_cannot_read_the_file(tmp_path, capsys):
    from qwen_mlx.cli.main import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert main(["replay", str(bad), "--url", "http://127.0.0.1:9"]) == 1
    assert "line 1: not JSON" in capsys.readouterr().err


@pytest.mark.interop  # a benchmark's smoke run: the interop tier runs them all
def test_the_agent_benchmark_runs_in_smoke_mode():
    done = run_script("bench_agent.py", "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for path in ("/v1/chat/completions", "/v1/messages", "/v1/responses", "/api/chat"):
        assert f"({path}), alone" in out and f"({path}), with 1 other clients decoding" in out
    verdicts = [line for line in out.splitlines() if "worst prefilled/new" in line]
    assert len(verdicts) == 8 and all(line.endswith(": met") for line in verdicts)
    restart = [
        line.split()
        for line in out.splitlines()
        if line.strip().startswith(("from disk", "full re-prefill")) and "/" not in line
    ]
    (disk, full) = [int(row[-2].replace(",", "")) for row in restart]  # tokens prefilled
    assert disk < full


@needs_shared
def test_qwen3_turns_match_their_echo_as_text_or_as_tool_calls():
    """With the real Qwen3 tokenizer: a reply that starts with newlines re-tokenizes
    merged with the header's, and a tool call echoed compact or reordered is the same
    call; other text or other arguments are not."""
    from transformers import AutoTokenizer

    from qwen_mlx.server.turns import TurnMatcher

    tokenizer = AutoTokenizer.from_pretrained(SHARED_MODEL)
    vocab = tokenizer.get_vocab()
    matcher = TurnMatcher(tokenizer, vocab["<|im_start|>"], vocab["<|im_end|>"])
    head = tokenizer.encode("<|im_start|>assistant\n")

    def turn(text: str) -> list[int]:
        return tokenizer.encode("<|im_start|>assistant\n" + text)

    written = head + tokenizer.encode("\n\nHello there.")
    assert turn("\n\nHello there.") != written  # BPE merges the newlines
    assert matcher.same(turn("Hello there."), written)
    assert not matcher.same(turn("Hello here."), written)
    call = '<tool_call>\n{"name": "read", "arguments": {"path": "a.py", "n": 2}}\n</tool_call>'
    compact = '<tool_call>\n{"name":"read","arguments":{"n":2,"path":"a.py"}}\n</tool_call>'
    other = '<tool_call>\n{"name": "read", "arguments": {"path": "b.py", "n": 2}}\n</tool_call>'
    assert matcher.same(turn(compact), head + tokenizer.encode(call))
    assert not matcher.same(turn(other), head + tokenizer.encode(call))
    assert not matcher.same(tokenizer.encode("<|im_start|>user\nHello there."), written)
