"""Batched generation: `batch_generate` and `BatchDecoder` against one-at-a-time
generation on real MLX, and `qwen-mlx generate --prompts-file` through main(argv)."""

from __future__ import annotations

import json

import jsonschema
import pytest

from qwen_mlx import SamplingParams, batch_generate, generate, load
from qwen_mlx.runtime import BatchDecoder, stream_generate

PROMPTS = ["hi", "Tell me about the sea. " * 2, "1 2 3", "A much longer prompt, " * 12]


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def trained(trained_mlx):
    """The small trained Qwen3 (real text, confident logits), bf16."""
    return load(trained_mlx)


def test_batched_greedy_text_is_what_generate_gives_one_at_a_time(tiny_model):
    alone = [generate(tiny_model, p, temperature=0, max_tokens=10) for p in PROMPTS]
    results = batch_generate(tiny_model, PROMPTS, temperature=0, max_tokens=10, progress=False)
    assert [r.text for r in results] == alone
    assert [r.prompt_tokens for r in results] == [len(tiny_model.encode(p)) for p in PROMPTS]
    assert all(r.finish_reason in ("stop", "length") for r in results)
    assert all(0 < r.completion_tokens <= 10 for r in results if r.finish_reason == "length")


def test_a_trained_model_batched_writes_the_greedy_text_it_writes_alone(trained):
    chats = [
        user("Continue:\nimport os"),
        user("Continue:\ndef main(argv):\n    parser = argparse.ArgumentParser()\n"),
        user("What does the with statement do?"),
    ]
    alone = [generate(trained, c, temperature=0, max_tokens=16) for c in chats]
    results = batch_generate(trained, chats, temperature=0, max_tokens=16, progress=False)
    assert [r.text for r in results] == alone
    assert len(set(alone)) == len(alone)  # real, distinct replies: a mix-up would show


def test_batch_generate_with_quantized_kv_and_lookup_writes_the_greedy_text_alone(trained):
    chats = [
        user("Continue:\nimport os\nimport os\nimport"),
        user("Continue:\ndef main(argv):\n    parser = argparse.ArgumentParser()\n"),
        user("Repeat the text above: for line in open(path): print(line)"),
    ]

    def replies(**options):
        out = batch_generate(
            trained, chats, temperature=0, max_tokens=24, progress=False, **options
        )
        return [r.text for r in out]

    # Lookup: exactly the text without drafting, with bf16 KV and with 8-bit KV (whose
    # batch writes what each sequence writes alone: test_kv_batch.py).
    assert replies(draft="lookup") == replies()
    assert replies(kv_bits=8, draft="lookup") == replies(kv_bits=8)


def test_a_seeded_sequence_draws_in_a_batch_what_it_draws_alone(tiny_model):
    params = [tiny_model.default_params.replace(temperature=1.0, seed=i) for i in range(4)]
    alone = [generate(tiny_model, p, params[i], max_tokens=12) for i, p in enumerate(PROMPTS)]
    assert len(set(alone)) > 2  # sampled, not all the same
    results = batch_generate(tiny_model, PROMPTS, params, max_tokens=12, progress=False)
    assert [r.text for r in results] == alone


def test_stop_strings_and_max_tokens_are_per_sequence(tiny_model):
    seeded = tiny_model.default_params.replace(temperature=1.0, seed=3, max_tokens=16)
    text = generate(tiny_model, "stop here", seeded)
    stop = text[5:8]
    assert stop and text.find(stop) >= 0
    params = [seeded.replace(stop=(stop,)), seeded.replace(max_tokens=3), seeded]
    results = batch_generate(tiny_model, ["stop here"] * 3, params, progress=False)
    assert results[0].text == text[: text.find(stop)] and results[0].finish_reason == "stop"
    assert results[1].completion_tokens == 3 and results[1].finish_reason == "length"
    assert results[2].text == text


def test_penalties_and_a_json_schema_hold_each_sequence_in_a_shared_batch(tiny_model):
    from qwen_mlx.runtime.structured import JsonSchemaProcessor

    schema = {
        "type": "object",
        "properties": {"mood": {"enum": ["happy", "sad"]}, "ok": {"type": "boolean"}},
        "required": ["mood", "ok"],
        "additionalProperties": False,
    }
    penalized = SamplingParams(temperature=0, repetition_penalty=1.5, max_tokens=10)
    alone = "".join(c.text for c in stream_generate(tiny_model, "1 2 3", penalized))
    plain = generate(tiny_model, "1 2 3", temperature=0, max_tokens=10)
    assert alone != plain  # the penalty changes this reply

    decoder = BatchDecoder(tiny_model)
    texts: dict[int, list[str]] = {}
    ends: dict[int, str] = {}
    uids = [
        decoder.add(tiny_model.encode("1 2 3"), penalized),
        decoder.add(
            tiny_model.encode("JSON please"),
            SamplingParams(temperature=0, max_tokens=40),
            logits_processors=[JsonSchemaProcessor(tiny_model, schema)],
        ),
        decoder.add(tiny_model.encode("1 2 3"), SamplingParams(temperature=0, max_tokens=10)),
    ]
    while len(decoder):
        for event in decoder.step():
            texts.setdefault(event.uid, []).append(event.text)
            if event.finish_reason:
                ends[event.uid] = event.finish_reason
                assert event.cache_tokens and len(event.cache_tokens) >= event.prompt_tokens
    decoder.close()
    assert "".join(texts[uids[0]]) == alone
    assert "".join(texts[uids[2]]) == plain
    assert ends[uids[1]] == "stop"  # the JSON was complete before max_tokens
    jsonschema.validate(json.loads("".join(texts[uids[1]])), schema)


def test_progress_reports_each_finished_prompt_and_bad_params_are_refused(tiny_model):
    seen: list[tuple[int, int]] = []
    batch_generate(tiny_model, PROMPTS[:3], max_tokens=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (3, 3) and [d for d, _ in seen] == sorted(d for d, _ in seen)
    with pytest.raises(ValueError, match="one per prompt"):
        batch_generate(tiny_model, PROMPTS, [SamplingParams()], progress=False)


# -- the command ---------------------------------------------------------------------------


def test_generate_answers_a_prompts_file_into_a_jsonl_file(tiny_mlx, tmp_path, capsys):
    from qwen_mlx.cli.generate import main

    prompts = tmp_path / "prompts.jsonl"
    lines = [
        json.dumps("plain text"),
        json.dumps({"id": "two", "prompt": "with an id", "max_tokens": 2}),
        "",
        json.dumps({"messages": user("a chat"), "temperature": 0}),
    ]
    prompts.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.jsonl"
    argv = ["--model", str(tiny_mlx), "--prompts-file", str(prompts), "--output", str(out)]
    assert main([*argv, "--temperature", "0", "--max-tokens", "6"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and rows[1]["id"] == "two" and "id" not in rows[0]
    assert rows[1]["completion_tokens"] <= 2 and all(r["completion_tokens"] <= 6 for r in rows)
    model = load(tiny_mlx)
    assert rows[2]["text"] == generate(model, user("a chat"), temperature=0, max_tokens=6)
    err = capsys.readouterr().err
    assert "generating" in err and "wrote 3 replies" in err


def test_a_bad_prompts_file_fails_before_loading_and_writes_nothing(tmp_path, capsys):
    from qwen_mlx.cli.generate import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"fine"\n{"prompt": "x", "colour": 1}\n')
    out = tmp_path / "out.jsonl"
    argv = ["--model", "nowhere", "--prompts-file", str(prompts), "--output", str(out)]
    assert main(argv) == 1
    assert "line 2" in capsys.readouterr().err and not out.exists()
    assert main(["--prompts-file", str(prompts)]) == 1
    assert "--output" in capsys.readouterr().err


def test_a_prompts_file_refuses_flags_it_cannot_honour(tmp_path, capsys):
    from qwen_mlx.cli.generate import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"fine"\n')
    out = tmp_path / "out.jsonl"
    tools = tmp_path / "tools.json"
    tools.write_text('{"mcp": {}}')
    base = ["--model", "nowhere", "--prompts-file", str(prompts), "--output", str(out)]
    for extra in (["--mcp", str(tools)], ["--policy", "error"], ["--session", "s.json"]):
        assert main(base + extra) == 1
        assert "cannot be combined" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--ranks", "2", "--draft", "lookup"]) == 1  # before any rank starts
    assert "split across ranks" in capsys.readouterr().err and not out.exists()


def test_a_prompts_file_speculates_and_quantizes_its_kv_inside_the_batch(
    trained, trained_mlx, tmp_path, capsys
):
    from qwen_mlx.cli.generate import main

    def run(asks: list[str], *extra: str) -> list[dict]:
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text("".join(json.dumps(a) + "\n" for a in asks))
        out = tmp_path / "out.jsonl"
        argv = ["--model", str(trained_mlx), "--prompts-file", str(prompts), "--output"]
        argv += [str(out), "--raw", "--temperature", "0", "--max-tokens", "24", *extra]
        assert main(argv) == 0
        return [json.loads(line) for line in out.read_text().splitlines()]

    # A raw continuation the trained target copies from: its first match drafts (on a
    # CPU, rows of a bigger batch draft only where most of them copy: batch_speculative).
    copying = "def parse(self, text):\n    return text\n\ndef parse(self, text):\n    return"
    rows = run([copying], "--draft", "lookup")
    assert rows[0]["text"] == generate(trained, copying, temperature=0, max_tokens=24)
    assert 0 <= rows[0]["accepted_draft_tokens"] <= rows[0]["draft_tokens"]
    assert rows[0]["draft_tokens"] > 0
    drafted, accepted = rows[0]["draft_tokens"], rows[0]["accepted_draft_tokens"]
    assert f"{accepted:,} of {drafted:,} drafted tokens accepted" in capsys.readouterr().err

    asks = [copying, "x = [1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2,", "class Queue:\n"]
    rows = run(asks, "--kv-bits", "8")
    quantized = batch_generate(
        trained, asks, temperature=0, max_tokens=24, kv_bits=8, progress=False
    )
    assert [r["text"] for r in rows] == [q.text for q in quantized]
    assert "draft_tokens" not in rows[0]


def test_a_short_prompt_answers_while_long_ones_are_still_being_read(tiny_model):
    # Eight long prompts fill mlx-lm's prefill slots until each is read to its end; a short
    # prompt added behind them must not wait for that: its token comes first.
    decoder = BatchDecoder(tiny_model, max_batch=12, prefill_step_size=16)
    one = tiny_model.default_params.replace(temperature=0, max_tokens=1)
    longs = {
        decoder.add(tiny_model.encode(f"Long prompt {i}: " + "the sea and the sky " * 40), one)
        for i in range(8)
    }
    decoder.step()  # the long prompts are being read
    short = decoder.add(tiny_model.encode("hi"), one)
    finished: list[tuple[int, int]] = []  # (step, uid)
    steps = 0
    try:
        while len(decoder):
            steps += 1
            finished += [(steps, e.uid) for e in decoder.step() if e.finish_reason]
    finally:
        decoder.close()
    order = [uid for _, uid in finished]
    assert order[0] == short and set(order[1:]) == longs
    assert finished[0][0] <= 4  # a few steps: a chunk or two of the long prompts'
    assert finished[1][0] > 2 * finished[0][0]


def test_long_prompts_read_in_chunks_write_the_greedy_text_they_write_alone(tiny_model):
    prompts = [f"{i}: " + "A much longer prompt, " * (10 + 15 * i) for i in range(4)] + ["hi"]
    alone = [generate(tiny_model, p, temperature=0, max_tokens=8) for p in prompts]
    results = batch_generate(
        tiny_model, prompts, temperature=0, max_tokens=8, prefill_step_size=16, progress=False
    )
    assert [r.text for r in results] == alone
    assert [r.prompt_tokens for r in results] == [len(tiny_model.encode(p)) for p in prompts]
