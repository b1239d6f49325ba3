"""ChatSession: prefix-reused KV cache, stop, save and resume, context policies."""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import replace

import numpy as np
import pytest

from qwen_mlx import ChatSession, load
from qwen_mlx.chat.policy import PIECE
from qwen_mlx.chat.saved import cache_files
from qwen_mlx.cli.generate import main as generate_main
from qwen_mlx.convert import convert
from qwen_mlx.errors import ContextOverflowError
from qwen_mlx.runtime import cache_length
from qwen_mlx.runtime.memory import (
    MIN_CHUNK,
    Budget,
    MemoryPlanner,
    ModelShape,
    attention_workspace,
)

from .helpers import assert_cache_matches_conversation, common_len

REPLY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def f32_model(tiny_hf, tmp_path_factory):
    """An unquantized float32 copy: reused-cache logits can be compared tightly."""
    out = tmp_path_factory.mktemp("f32") / "m"
    return load(convert(str(tiny_hf), mlx_path=out, quantize=False, dtype="float32").path)


def reply(stream) -> str:
    return "".join(c.text for c in stream)


def test_send_streams_chunks_and_records_the_reply(tiny_model):
    session = ChatSession(tiny_model, system="Be brief.")
    chunks = list(session.send("Hello", **REPLY))
    assert chunks[-1].finish_reason in ("stop", "length")
    text = "".join(c.text for c in chunks)
    assert session.messages[-1] == {"role": "assistant", "content": text}
    assert [m["role"] for m in session.messages] == ["system", "user", "assistant"]
    stats = session.last_stats
    assert stats.prompt_tokens == stats.prefilled_tokens  # nothing to reuse on turn 1
    assert stats.generation_tokens == chunks[-1].generation_tokens
    assert stats.time_to_first_token > 0 and stats.tokens_per_second > 0


def test_turn_ten_prefills_only_its_own_new_tokens(tiny_model):
    session = ChatSession(tiny_model, system="Be brief.")
    for i in range(10):
        before = list(session.cache_tokens)
        reply(session.send(f"Message number {i}", **REPLY))
        stats = session.last_stats
        # Everything the cache held is reused: only the new turn (its markup, the message,
        # the generation prompt) is read.
        assert stats.reused_tokens == len(before)
        assert stats.prefilled_tokens == stats.prompt_tokens - len(before)
        if i:
            markup = len(session.model.encode(f"Message number {i}")) + 16
            assert stats.prefilled_tokens <= markup
    assert_cache_matches_conversation(session)


def test_reused_cache_logits_equal_a_fresh_full_prefill(f32_model):
    import mlx.core as mx

    from qwen_mlx.runtime import make_cache, trim_cache

    session = ChatSession(f32_model, system="S")
    for text in ("first question", "second, longer question about caches", "third"):
        reply(session.send(text, **REPLY))
    list(session.regenerate(**REPLY))
    next_tokens = f32_model.prompt_tokens([*session.messages, {"role": "user", "content": "next"}])
    held = session.cache_tokens
    reuse = common_len(next_tokens, held)
    assert reuse > len(next_tokens) // 2
    trim_cache(session._cache, len(held) - reuse)
    reused = f32_model.model(mx.array(next_tokens[reuse:])[None], cache=session._cache)[0, -1]
    fresh_cache = make_cache(f32_model)
    fresh = f32_model.model(mx.array(next_tokens)[None], cache=fresh_cache)[0, -1]
    np.testing.assert_allclose(np.array(reused), np.array(fresh), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "steps",
    [
        ["send", "send", "regenerate", "send"],
        ["send", "send", "undo", "send", "edit"],
        ["send", "edit", "regenerate", "undo", "send", "send"],
        ["send", "reset", "send", "send"],
    ],
)
def test_cache_holds_the_rendered_tokens_after_any_sequence(tiny_model, steps):
    session = ChatSession(tiny_model, system="You are a test.")
    for i, step in enumerate(steps):
        if step == "send":
            reply(session.send(f"turn {i}", **REPLY))
        elif step == "regenerate":
            reply(session.regenerate(**REPLY))
        elif step == "undo":
            assert session.undo() is not None
        elif step == "edit":
            last_user = max(j for j, m in enumerate(session.messages) if m["role"] == "user")
            reply(session.edit(last_user, f"edited {i}", **REPLY))
        elif step == "reset":
            session.reset()
            assert [m["role"] for m in session.messages] == ["system"]
    # One more turn: everything the cache holds must be a prefix of what is rendered.
    reply(session.send("final", **REPLY))
    assert_cache_matches_conversation(session)
    prompt = session.model.prompt_tokens(session.messages[:-1])
    assert session.cache_tokens[: len(prompt)] == prompt


def test_edit_of_a_user_message_replaces_the_rest(tiny_model):
    session = ChatSession(tiny_model)
    reply(session.send("one", **REPLY))
    reply(session.send("two", **REPLY))
    reply(session.edit(0, "uno", **REPLY))
    assert [m["content"] for m in session.messages if m["role"] == "user"] == ["uno"]
    assert len(session.messages) == 2


def test_stop_from_another_thread_keeps_the_partial_reply(tiny_model):
    session = ChatSession(tiny_model)
    seen = []
    for chunk in session.send("Tell me everything", max_tokens=400, temperature=0.8, seed=3):
        seen.append(chunk)
        if len(seen) == 5:
            threading.Thread(target=session.stop).start()
    assert seen[-1].finish_reason == "cancelled"
    last = session.messages[-1]
    assert last["stopped"] is True
    assert last["content"] == "".join(c.text for c in seen)
    assert session.last_stats.finish_reason == "cancelled"
    assert session.last_stats.generation_tokens < 400
    assert_cache_matches_conversation(session)
    reply(session.send("go on", **REPLY))  # the session carries on normally


def test_stop_during_prefill_leaves_a_consistent_cache(tiny_model):
    session = ChatSession(tiny_model)
    session.planner = MemoryPlanner(
        session.planner.shape, session.planner.weights, Budget(10**12, 10**12, "test")
    )
    calls = []

    def progress(done, total):
        calls.append(done)
        if len(calls) == 2:
            session.stop()

    session.prefill_progress = progress
    long_text = "word " * 600
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session.planner, "chunk_for", lambda *a: 64)
        chunks = list(session.send(long_text, **REPLY))
    assert chunks[-1].finish_reason == "cancelled"
    assert session.messages[-1] == {"role": "assistant", "content": "", "stopped": True}
    held = len(session.cache_tokens)
    assert cache_length(session._cache) == held == 2 * 64  # the two chunks read before the stop
    assert calls[0] == 0  # progress is told from the start of the read
    session.prefill_progress = None
    reply(session.send("short", **REPLY))
    assert session.last_stats.reused_tokens == held  # what was read is not read again


def test_prefill_reads_ahead_and_stops_when_asked(tiny_model):
    session = ChatSession(tiny_model)
    session.add_message({"role": "user", "content": "word " * 600})
    chunks = []
    session.prefill_progress = lambda done, total: chunks.append(done)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session.planner, "chunk_for", lambda *a: 64)
        read = session.prefill(should_stop=lambda: len(chunks) >= 4)  # the start, 3 chunks
    assert chunks == [0, 64, 128, 192]
    assert read == len(session.cache_tokens) == 3 * 64 < session.context_tokens
    assert session.prefill() == session.context_tokens - 3 * 64  # the rest, not again
    assert len(session.cache_tokens) == session.context_tokens


def test_abandoning_the_stream_counts_as_a_stop(tiny_model):
    session = ChatSession(tiny_model)
    stream = session.send("hi", max_tokens=50, temperature=0)
    next(stream)
    stream.close()
    assert session.messages[-1]["stopped"] is True
    assert not session.busy
    assert_cache_matches_conversation(session)


# -- save and resume -------------------------------------------------------------------------


def test_resume_with_the_same_model_prefills_only_the_next_message(tiny_model, tmp_path):
    session = ChatSession(tiny_model, system="Remember things.")
    for text in ("My name is Ada.", "I like bicycles.", "And tea."):
        reply(session.send(text, **REPLY))
    path = session.save(tmp_path / "chat.json")
    assert len(cache_files(path)) == 1
    resumed = ChatSession.load(path, tiny_model)
    assert resumed.notices == []
    assert resumed.messages == session.messages
    assert resumed.cache_tokens == session.cache_tokens
    reply(resumed.send("What is my name?", **REPLY))
    assert resumed.last_stats.reused_tokens == len(session.cache_tokens)
    assert resumed.last_stats.prefilled_tokens <= len(tiny_model.encode("What is my name?")) + 16


def test_resume_with_another_model_discards_the_cache_and_says_so(tiny_model, tmp_path, tiny_hf):
    session = ChatSession(tiny_model)
    reply(session.send("hello", **REPLY))
    session.save(tmp_path / "chat.json")
    other = load(convert(str(tiny_hf), mlx_path=tmp_path / "q8", q_bits=8).path)
    resumed = ChatSession.load(tmp_path / "chat.json", other)
    assert len(resumed.notices) == 1 and "discarded" in resumed.notices[0]
    assert resumed.messages == session.messages
    reply(resumed.send("again", **REPLY))
    assert resumed.last_stats.reused_tokens == 0  # everything read again


@pytest.mark.parametrize("damage", ["truncate", "garbage", "delete"])
def test_damaged_cache_file_falls_back_without_losing_messages(tiny_model, tmp_path, damage):
    session = ChatSession(tiny_model)
    reply(session.send("hello", **REPLY))
    session.save(tmp_path / "chat.json")
    [cache_file] = cache_files(tmp_path / "chat.json")
    if damage == "truncate":
        cache_file.write_bytes(cache_file.read_bytes()[:-50])
    elif damage == "garbage":
        cache_file.write_bytes(b"\x00" * 200)
    else:
        cache_file.unlink()
    resumed = ChatSession.load(tmp_path / "chat.json", tiny_model)
    assert resumed.messages == session.messages
    assert "discarded" in resumed.notices[0]
    reply(resumed.send("again", **REPLY))
    assert resumed.last_stats.reused_tokens == 0


def test_a_cache_whose_checksum_passes_but_content_lies_is_caught(tiny_model, tmp_path):
    session = ChatSession(tiny_model)
    reply(session.send("hello", **REPLY))
    session.save(tmp_path / "chat.json")
    data = json.loads((tmp_path / "chat.json").read_text())
    data["cache"]["tokens"] = data["cache"]["tokens"][:-3]
    (tmp_path / "chat.json").write_text(json.dumps(data))
    resumed = ChatSession.load(tmp_path / "chat.json", tiny_model)
    assert "different number of tokens" in resumed.notices[0]


def test_save_is_atomic_when_writing_fails(tiny_model, tmp_path, monkeypatch):
    session = ChatSession(tiny_model)
    reply(session.send("hello", **REPLY))
    session.save(tmp_path / "chat.json")
    before = (tmp_path / "chat.json").read_bytes()
    reply(session.send("more", **REPLY))
    import qwen_mlx.chat.saved as mod

    monkeypatch.setattr(mod, "atomic_write_json", lambda *a: (_ for _ in ()).throw(OSError("disk")))
    with pytest.raises(OSError):
        session.save(tmp_path / "chat.json")
    assert (tmp_path / "chat.json").read_bytes() == before
    resumed = ChatSession.load(tmp_path / "chat.json", tiny_model)
    # The old JSON and the very cache it names: the previous save, whole.
    assert len(resumed.messages) == 2 and resumed.notices == []
    assert len(resumed.cache_tokens) > 0
    assert len(cache_files(tmp_path / "chat.json")) == 1  # the new cache went with its JSON
    assert not list(tmp_path.glob(".*"))


def test_each_save_keeps_only_the_cache_its_json_names(tiny_model, tmp_path):
    session = ChatSession(tiny_model)
    path = tmp_path / "chat.json"
    reply(session.send("hello", **REPLY))
    session.save(path)
    first = cache_files(path)
    reply(session.send("more", **REPLY))
    session.save(path)
    [second] = cache_files(path)
    assert first != [second] and json.loads(path.read_text())["cache"]["file"] == second.name
    neighbour = tmp_path / f"chat.json.old.json.{'0' * 12}.kv.safetensors"  # another's
    legacy = tmp_path / "chat.json.kv.safetensors"  # how earlier versions named it
    neighbour.write_bytes(b"x")
    legacy.write_bytes(b"x")
    ChatSession(tiny_model).save(path)  # nothing cached: no stale file is left to mislead
    assert not legacy.exists() and neighbour.exists()
    assert cache_files(path) == [] and json.loads(path.read_text())["cache"] is None


def test_sampling_params_survive_a_save(tiny_model, tmp_path):
    session = ChatSession(
        tiny_model, params=tiny_model.default_params.replace(temperature=0.2, stop=["END"])
    )
    session.save(tmp_path / "s.json")
    resumed = ChatSession.load(tmp_path / "s.json", tiny_model)
    assert resumed.params.temperature == 0.2 and resumed.params.stop == ("END",)


# -- context policies ---------------------------------------------------------------------------


def small_planner(model, tokens: int, kv_bits=None, shape=None) -> MemoryPlanner:
    """A planner whose budget holds exactly `tokens` tokens at `kv_bits` (smallest chunk)."""
    real = MemoryPlanner.for_model(model)
    shape = shape or real.shape
    planner = MemoryPlanner(shape, real.weights, Budget(1, 1, "test"))
    budget = real.weights + planner.kv_per_token(kv_bits) * tokens
    budget += attention_workspace(shape, MIN_CHUNK, tokens)
    return MemoryPlanner(shape, real.weights, Budget(budget, budget, "test"))


def test_truncate_leaves_out_the_oldest_turns_but_never_the_system_prompt(tiny_model):
    session = ChatSession(
        tiny_model, system="SYSTEM PROMPT", planner=small_planner(tiny_model, 140)
    )
    for i in range(6):
        reply(session.send(f"message {i} " * 3, **REPLY))
    assert session.dropped_messages > 0
    assert len(session.messages) == 13  # all history is kept for display
    stats = session.last_stats
    assert stats.dropped_messages == session.dropped_messages
    prompt = tiny_model.tokenizer.decode(session.cache_tokens)
    assert prompt.startswith("<|im_start|>system\nSYSTEM PROMPT")
    assert "message 0" not in prompt and "message 5" in prompt
    assert any("Left the" in n for n in session.notices)


def test_truncate_drops_enough_at_once_that_the_next_turns_reuse_the_cache(tiny_model):
    limit = 300
    session = ChatSession(tiny_model, system="S", planner=small_planner(tiny_model, limit))
    dropped_at, stats = [], []
    for i in range(14):
        reply(session.send(f"message {i} " * 3, **REPLY))
        stats.append(session.last_stats)
        if session.last_stats.notices:
            dropped_at.append(i)
    assert dropped_at, "the conversation never outgrew the context"
    # Each drop frees a quarter of the context: the turns after it only read what is new.
    assert all(b - a >= 2 for a, b in itertools.pairwise(dropped_at))
    after = stats[dropped_at[0] + 1]
    assert after.notices == () and after.reused_tokens > after.prefilled_tokens
    prompt = tiny_model.tokenizer.decode(session.cache_tokens)
    assert prompt.startswith("<|im_start|>system\nS") and "message 0 " not in prompt


def test_the_truncation_notice_says_what_it_took_and_takes_now(tiny_model):
    limit = 300
    session = ChatSession(tiny_model, planner=small_planner(tiny_model, limit))
    heard = []
    session.on_notice = heard.append
    while not heard:
        reply(session.send("a few words in a message " * 2, **REPLY))
    [notice] = session.last_stats.notices  # one notice for the turn, with its final figures
    assert heard == [notice]
    took, reserve, now = (
        int(n.replace(",", ""))
        for n in re.search(
            r"took ([\d,]+) tokens, plus ([\d,]+) kept .* now takes ([\d,]+)", notice
        ).groups()
    )
    assert took + reserve > limit >= now + reserve  # true figures: it did not fit, now it does
    assert f"Left the {session.dropped_messages} oldest messages" in notice
    assert now == session.last_stats.prompt_tokens


def test_the_policys_notice_comes_before_the_long_read(tiny_model):
    session = ChatSession(tiny_model, planner=small_planner(tiny_model, 300))
    for _ in range(4):
        reply(session.send("a few words in a message " * 2, **REPLY))
    events = []
    session.on_notice = lambda text: events.append("notice")
    session.prefill_progress = lambda done, total: events.append("progress")
    while "notice" not in events:
        events.clear()
        reply(session.send("a few words in a message " * 2, **REPLY))
    assert events[0] == "notice" and "progress" in events  # heard before the re-read starts


def encodes(monkeypatch, model) -> list[int]:
    """The length of each text `model` tokenizes from now on."""
    sizes: list[int] = []
    real = model.encode

    def spy(text, *args, **kwargs):
        sizes.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(model, "encode", spy)
    return sizes


def test_a_system_prompt_far_over_the_context_is_refused_without_tokenizing_it(
    tiny_model, monkeypatch
):
    # Over the context by its tokens (counted piece by piece until over), then by its
    # characters alone (no token spells that many).
    session = ChatSession(tiny_model, system="word " * 3000, planner=small_planner(tiny_model, 300))
    sizes = encodes(monkeypatch, tiny_model)
    with pytest.raises(ContextOverflowError, match="system prompt and the last message"):
        reply(session.send("hi", **REPLY))
    assert sizes and max(sizes) <= PIECE and sum(sizes) < 15_000
    sizes.clear()
    session.system = "word " * 200_000  # over by its characters alone: nothing tokenized
    with pytest.raises(ContextOverflowError, match="at least"):
        session.prepare()
    assert sizes == []


def test_a_huge_old_message_is_left_out_without_tokenizing_it(tiny_model, monkeypatch):
    session = ChatSession(tiny_model, planner=small_planner(tiny_model, 300))
    session.add_message({"role": "user", "content": "word " * 20_000})
    session.add_message({"role": "assistant", "content": "noted"})
    sizes = encodes(monkeypatch, tiny_model)
    reply(session.send("and now?", **REPLY))
    assert max(sizes) <= PIECE
    assert session.dropped_messages == 2
    assert "far over" in session.last_stats.notices[0]


def test_a_turn_prepared_on_another_thread_tokenizes_nothing_itself(tiny_model, monkeypatch):
    from qwen_mlx.runtime import Message

    session = ChatSession(tiny_model, system="Be brief.")
    reply(session.send("first question", **REPLY))
    text = "second question " * 20
    worker = threading.Thread(
        target=session.prepare, args=([*session.history, Message("user", text)],)
    )
    worker.start()
    worker.join()
    sizes = encodes(monkeypatch, tiny_model)
    reply(session.send(text, **REPLY))
    assert sizes == []  # every render the turn needed was done ahead


def test_error_policy_refuses_before_any_work(tiny_model):
    session = ChatSession(tiny_model, policy="error", planner=small_planner(tiny_model, 60))
    with pytest.raises(ContextOverflowError, match="fit in memory"):
        reply(session.send("x " * 80, **REPLY))
    assert session._cache is None  # nothing was computed
    assert session.messages == []  # and nothing was added


def test_a_refused_regenerate_keeps_the_previous_reply(tiny_model):
    session = ChatSession(tiny_model, policy="error")
    reply(session.send("hello", **REPLY))
    before = session.messages
    with pytest.raises(ContextOverflowError):
        reply(session.regenerate(max_tokens=10**7))
    assert session.messages == before


def test_the_conversation_cannot_change_under_a_running_reply(tiny_model):
    session = ChatSession(tiny_model)
    stream = session.send("first", max_tokens=50, temperature=0)
    next(stream)
    for change in (
        lambda: session.send("second"),
        session.regenerate,
        session.undo,
        session.reset,
        lambda: session.add_message({"role": "user", "content": "x"}),
    ):
        with pytest.raises(RuntimeError, match="being generated"):
            change()
    stream.close()
    assert [m["role"] for m in session.messages] == ["user", "assistant"]


def test_kv_quantize_policy_switches_to_8_then_4_bit(tiny_model):
    # In a tiny model attention scores outweigh the KV cache; plan as if it had 200
    # layers so that the KV precision is what decides (the policy only asks the planner).
    shape = replace(MemoryPlanner.for_model(tiny_model).shape, layers=200)
    planner = small_planner(tiny_model, 90, kv_bits=8, shape=shape)
    assert planner.max_context(None) < 81 <= planner.max_context(8) < planner.max_context(4)
    session = ChatSession(tiny_model, policy="kv-quantize", planner=planner)
    reply(session.send("hello " * 20, **REPLY))
    assert session.kv_bits == 8
    assert any("8-bit" in n for n in session.last_stats.notices)
    while session.kv_bits == 8:
        reply(session.send("more words here " * 4, **REPLY))
    assert session.kv_bits == 4
    assert any("4-bit" in n for n in session.last_stats.notices)
    assert_cache_matches_conversation(session)
    with pytest.raises(ContextOverflowError, match="even with 4-bit KV"):
        for _ in range(10):
            reply(session.send("and more words " * 10, **REPLY))


def test_a_message_longer_than_the_context_is_refused_under_truncate(tiny_model):
    session = ChatSession(tiny_model, planner=small_planner(tiny_model, 50))
    with pytest.raises(ContextOverflowError, match="last message alone"):
        reply(session.send("word " * 200, **REPLY))


def test_fit_report_warns_before_a_message_that_will_not_fit(tiny_model):
    session = ChatSession(tiny_model, planner=small_planner(tiny_model, 120))
    assert session.fit_report("short", max_tokens=8) is None
    warning = session.fit_report("word " * 300, max_tokens=8)
    assert "truncate" in warning and "oldest turns" in warning


def test_context_counts(tiny_model):
    session = ChatSession(tiny_model, system="S")
    assert session.context_tokens == len(tiny_model.encode("<|im_start|>system\nS<|im_end|>\n"))
    reply(session.send("hi", **REPLY))
    assert session.context_tokens > 10
    assert session.context_limit == tiny_model.context_length  # memory is plentiful here


def test_quantized_kv_session_matches_bf16_greedy_mostly(tiny_model):
    a = ChatSession(tiny_model)
    b = ChatSession(tiny_model, kv_bits=8)
    ra = reply(a.send("hello there", max_tokens=12, temperature=0))
    rb = reply(b.send("hello there", max_tokens=12, temperature=0))
    assert common_len(ra, rb) >= 4
    assert b._cache[0].bits == 8


# -- long contexts -------------------------------------------------------------------------------


def test_long_prompt_prefills_in_chunks_with_progress(tiny_model):
    session = ChatSession(tiny_model)
    seen = []
    session.prefill_progress = lambda done, total: seen.append((done, total))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(session.planner, "chunk_for", lambda *a: 256)
        reply(session.send("lorem ipsum " * 700, **REPLY))
    total = session.last_stats.prompt_tokens
    assert seen[-1] == (total, total)
    steps = [d for d, _ in seen]
    assert steps == sorted(steps) and len(steps) >= total // 256


def test_yarn_context_extension_loads_and_runs(tiny_mlx):
    model = load(tiny_mlx, context_extension=4.0)
    assert model.context_length == 4 * 32768
    assert model.config["rope_scaling"]["rope_type"] == "yarn"
    assert type(model.model.layers[0].self_attn.rope).__name__ == "YarnRoPE"
    session = ChatSession(model)
    assert reply(session.send("hello", **REPLY)) is not None
    assert session.context_limit <= 4 * 32768


def test_a_cache_saved_under_yarn_is_not_reused_without_it(tiny_mlx, tmp_path):
    extended = load(tiny_mlx, context_extension=4.0)
    assert extended.fingerprint != load(tiny_mlx).fingerprint
    assert extended.fingerprint != load(tiny_mlx, context_extension=2.0).fingerprint
    session = ChatSession(extended)
    reply(session.send("hello", **REPLY))
    session.save(tmp_path / "chat.json")
    resumed = ChatSession.load(tmp_path / "chat.json", load(tiny_mlx))
    assert len(resumed.notices) == 1 and "discarded" in resumed.notices[0]
    again = ChatSession.load(tmp_path / "chat.json", load(tiny_mlx, context_extension=4.0))
    assert again.notices == [] and again.cache_tokens == session.cache_tokens


def test_qwen3_4b_shaped_long_context_plan(tiny_model):
    shape = ModelShape(
        layers=36, heads=32, kv_heads=8, head_dim=128, hidden=2560, context_length=262_144
    )
    planner = MemoryPlanner(shape, int(2.3e9), Budget(int(40e9), 64 << 30, "test"))
    assert planner.plan(262_144, 4).fits
    assert not planner.plan(262_144, None).fits  # 36 GiB (38.7 GB) of bf16 KV + weights


# -- CLI -------------------------------------------------------------------------------------------


def test_generate_with_a_session_file_continues_the_conversation(tiny_mlx, tmp_path, capsys):
    chat = tmp_path / "chat.json"
    args = ["--model", str(tiny_mlx), "--session", str(chat), "-n", "6", "--temperature", "0"]
    assert generate_main([*args, "--prompt", "first"]) == 0
    capsys.readouterr()
    assert generate_main([*args, "--prompt", "second"]) == 0
    err = capsys.readouterr().err
    data = json.loads(chat.read_text())
    assert [m["content"] for m in data["messages"] if m["role"] == "user"] == ["first", "second"]
    context = err.split("context: ")[1]
    prefilled = int(context.split(" read this turn")[0].rsplit(", ", 1)[1].replace(",", ""))
    cached = int(context.split(" from the cache")[0].rsplit(", ", 1)[1].replace(",", ""))
    assert cached > 0
    assert prefilled <= len("second") + 16


def test_generate_with_kv_bits(tiny_mlx, tmp_path, capsys):
    chat = tmp_path / "q.json"
    assert (
        generate_main(
            [
                "--model",
                str(tiny_mlx),
                "--session",
                str(chat),
                "--kv-bits",
                "4",
                "-n",
                "4",
                "--prompt",
                "hi",
            ]
        )
        == 0
    )
    assert json.loads(chat.read_text())["kv_bits"] == 4


def test_generate_prints_policy_errors_cleanly(tiny_mlx, capsys):
    code = generate_main(
        ["--model", str(tiny_mlx), "--policy", "error", "-n", "40000", "--prompt", "hi"]
    )
    assert code == 1
    assert "error: The conversation needs" in capsys.readouterr().err


def test_ctrl_c_during_generate_saves_the_partial_reply(tiny_mlx, tmp_path, monkeypatch):
    import io
    import sys

    chat = tmp_path / "c.json"

    class Interrupting(io.StringIO):
        writes = 0

        def write(self, text):
            Interrupting.writes += 1
            if Interrupting.writes == 3:
                raise KeyboardInterrupt
            return super().write(text)

    monkeypatch.setattr(sys, "stdout", Interrupting())
    code = generate_main(
        [
            "--model",
            str(tiny_mlx),
            "--session",
            str(chat),
            "--prompt",
            "hi",
            "--temperature",
            "0",
            "-n",
            "200",
        ]
    )
    assert code == 130
    saved = json.loads(chat.read_text())["messages"]
    assert saved[0] == {"role": "user", "content": "hi"}
    assert saved[1]["role"] == "assistant" and saved[1]["stopped"] is True


# -- saved sessions: the cache beside the JSON, leftovers, malformed files ------------------


def saved_chat(model, path):
    session = ChatSession(model)
    reply(session.send("hello", **REPLY))
    session.save(path)
    return session


def test_copy_session_takes_the_cache_along_and_resumes_without_rereading(tiny_model, tmp_path):
    from qwen_mlx.chat.saved import copy_session

    original = saved_chat(tiny_model, tmp_path / "kyoto.json")
    copy = copy_session(tmp_path / "kyoto.json", tmp_path / "trips" / "kyoto-copy.json")
    assert len(cache_files(copy)) == 1
    resumed = ChatSession.load(copy, tiny_model)
    assert resumed.notices == [] and resumed.messages == original.messages
    assert resumed.cache_tokens == original.cache_tokens and resumed.id != original.id
    assert ChatSession.load(tmp_path / "kyoto.json", tiny_model).notices == []  # untouched
    with pytest.raises(FileExistsError, match="already exists"):
        copy_session(tmp_path / "kyoto.json", copy)


def test_move_session_takes_the_cache_along(tiny_model, tmp_path):
    from qwen_mlx.chat.saved import move_session

    original = saved_chat(tiny_model, tmp_path / "kyoto.json")
    moved = move_session(tmp_path / "kyoto.json", tmp_path / "osaka.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["osaka.json", *(p.name for p in cache_files(moved))]
    )
    resumed = ChatSession.load(moved, tiny_model)
    assert resumed.notices == [] and resumed.cache_tokens == original.cache_tokens
    assert resumed.id == original.id


def test_a_saved_session_and_its_cache_are_private(tiny_model, tmp_path):
    saved_chat(tiny_model, tmp_path / "chat.json")
    [cache_file] = cache_files(tmp_path / "chat.json")
    assert (tmp_path / "chat.json").stat().st_mode & 0o777 == 0o600
    assert cache_file.stat().st_mode & 0o777 == 0o600


def test_temporary_cache_files_of_killed_saves_are_deleted_by_the_next_save_and_load(
    tiny_model, tmp_path
):
    import os
    import subprocess
    import sys

    path = tmp_path / "chat.json"
    session = saved_chat(tiny_model, path)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    killed = tmp_path / f".chat.json.{dead}-0123abcd.kv.safetensors"  # save killed with -9
    legacy = tmp_path / ".chat.json.4567cdef.kv.safetensors"  # an earlier version's
    running = tmp_path / f".chat.json.{os.getpid()}-89abcdef.kv.safetensors"  # a save under way
    other = tmp_path / f".chat.json.old.json.{dead}-0123abcd.kv.safetensors"  # another session's
    for leftover in (killed, legacy, running, other):
        leftover.write_bytes(b"\0" * 1000)
    ChatSession.load(path, tiny_model)
    assert not killed.exists() and not legacy.exists()
    assert running.exists() and other.exists()
    running.unlink()
    legacy.write_bytes(b"\0" * 1000)
    session.save(path)
    assert not legacy.exists() and other.exists()


@pytest.mark.parametrize(
    "entry",
    [
        "x",
        ["x"],
        {"tokens": [1, 2, 3]},
        "no sha256",
        "../x",
        "/etc/hostname",
        "another session's",
        "tokens are text",
        "kv_bits 3",
    ],
)
def test_a_malformed_cache_entry_is_dropped_and_the_messages_come_back(tiny_model, tmp_path, entry):
    path = tmp_path / "chat.json"
    session = saved_chat(tiny_model, path)
    data = json.loads(path.read_text())
    good = data["cache"]
    if entry == "no sha256":
        entry = {k: v for k, v in good.items() if k != "sha256"}
    elif entry in ("../x", "/etc/hostname"):
        entry = {**good, "file": entry}
    elif entry == "another session's":
        entry = {**good, "file": f"other.json.{good['sha256'][:12]}.kv.safetensors"}
    elif entry == "tokens are text":
        entry = {**good, "tokens": "1 2 3"}
    elif entry == "kv_bits 3":
        entry = {**good, "kv_bits": 3}
    data["cache"] = entry
    path.write_text(json.dumps(data))
    resumed = ChatSession.load(path, tiny_model)
    assert resumed.messages == session.messages
    assert len(resumed.notices) == 1 and "cache entry" in resumed.notices[0]
    assert "discarded" in resumed.notices[0] and resumed.cache_tokens == []
    reply(resumed.send("again", **REPLY))
    assert resumed.last_stats.reused_tokens == 0


@pytest.mark.parametrize(
    "message",
    [
        "hello",
        None,
        ["user", "hi"],
        {"content": "hi"},
        {"role": "robot", "content": "hi"},
        {"role": "user", "content": 5},
    ],
)
def test_a_message_that_is_not_a_message_is_refused_clearly(
    tiny_model, tiny_mlx, tmp_path, message, capsys
):
    path = tmp_path / "chat.json"
    saved_chat(tiny_model, path)
    data = json.loads(path.read_text())
    data["messages"].insert(1, message)
    path.write_text(json.dumps(data))
    with pytest.raises(
        ValueError,
        match=r"chat\.json is not a readable qwen-mlx session \(message 1 is not a message",
    ):
        ChatSession.load(path, tiny_model)
    capsys.readouterr()
    code = generate_main(["--model", str(tiny_mlx), "--session", str(path), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and "message 1 is not a message" in err


def test_a_saved_message_that_is_not_valid_unicode_is_refused(tiny_model, tmp_path):
    path = tmp_path / "chat.json"
    saved_chat(tiny_model, path)
    path.write_text(path.read_text().replace('"hello"', '"hel\\ud800lo"'))
    with pytest.raises(ValueError, match="message 0 is not valid Unicode"):
        ChatSession.load(path, tiny_model)


def test_malformed_settings_in_a_session_file_name_the_file(tiny_model, tmp_path):
    path = tmp_path / "chat.json"
    saved_chat(tiny_model, path)
    data = json.loads(path.read_text())
    data["dropped"] = "many"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"chat\.json has unusable settings"):
        ChatSession.load(path, tiny_model)


def test_token_ids_that_are_not_token_ids_are_ignored(tiny_model, tmp_path):
    path = tmp_path / "chat.json"
    session = saved_chat(tiny_model, path)
    data = json.loads(path.read_text())
    assert "token_ids" in data["messages"][-1]
    data["messages"][-1]["token_ids"] = ["a", "b"]
    path.write_text(json.dumps(data))
    resumed = ChatSession.load(path, tiny_model)
    assert resumed.messages == session.messages
    assert resumed.history[-1].token_ids is None
    reply(resumed.send("again", **REPLY))


def test_a_session_saved_by_an_earlier_version_keeps_its_reply_tokens(tiny_model, tmp_path):
    # Earlier versions wrote a reply's token ids and sampling as `_token_ids`, `_sampling`.
    path = tmp_path / "chat.json"
    session = saved_chat(tiny_model, path)
    data = json.loads(path.read_text())
    last = data["messages"][-1]
    last["_token_ids"], last["_sampling"] = last.pop("token_ids"), last.pop("sampling")
    path.write_text(json.dumps(data))
    resumed = ChatSession.load(path, tiny_model)
    assert resumed.history[-1].token_ids == session.history[-1].token_ids is not None
    assert resumed.history[-1].sampling == session.history[-1].sampling is not None
    reply(resumed.send("again", **REPLY))
    assert resumed.last_stats.prefilled_tokens < resumed.last_stats.prompt_tokens
