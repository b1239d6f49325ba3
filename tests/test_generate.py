"""load, generate and stream_generate: chat template, sampling defaults, stop strings."""

from __future__ import annotations

import pytest

from qwen_mlx import SamplingParams, generate, load, stream_generate
from qwen_mlx.cli.generate import main
from qwen_mlx.convert import convert
from qwen_mlx.errors import ModelNotFoundError

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Tell me a story"},
]


def test_load_returns_model_tokenizer_config_and_manifest(tiny_model, tiny_mlx):
    assert tiny_model.path == tiny_mlx
    assert tiny_model.manifest.name == "qwen3-1m-tiny-2507-mlx-q4-g64"
    assert tiny_model.config["model_type"] == "qwen3"
    assert tiny_model.tokenizer.eos_token == "<|im_end|>"
    assert len(tiny_model.fingerprint) == 64


def test_sampling_defaults_come_from_generation_config(tiny_model):
    params = tiny_model.default_params
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.8, 20)


def test_greedy_generation_is_deterministic(tiny_model):
    first = generate(tiny_model, MESSAGES, temperature=0, max_tokens=24)
    assert first == generate(tiny_model, MESSAGES, temperature=0, max_tokens=24)
    assert first


def test_same_seed_same_text_other_seed_other_text(tiny_model):
    a = generate(tiny_model, MESSAGES, seed=7, max_tokens=24)
    assert a == generate(tiny_model, MESSAGES, seed=7, max_tokens=24)
    others = {generate(tiny_model, MESSAGES, seed=s, max_tokens=24) for s in range(1, 5)}
    assert len(others | {a}) > 1


def test_max_tokens_holds(tiny_model):
    chunks = list(stream_generate(tiny_model, MESSAGES, temperature=0, max_tokens=9))
    assert chunks[-1].generation_tokens == 9
    assert chunks[-1].finish_reason == "length"
    assert all(c.finish_reason is None for c in chunks[:-1])


def test_stream_chunks_carry_running_stats(tiny_model):
    chunks = list(stream_generate(tiny_model, MESSAGES, temperature=0, max_tokens=12))
    last = chunks[-1]
    assert last.prompt_tokens == len(tiny_model.prompt_tokens(MESSAGES))
    assert last.prompt_tps > 0 and last.generation_tps > 0
    assert last.time_to_first_token > 0 and last.peak_memory > 0
    counts = [c.generation_tokens for c in chunks]
    assert counts == sorted(counts)


def test_messages_go_through_the_chat_template(tiny_model):
    tokens = tiny_model.prompt_tokens(MESSAGES)
    text = tiny_model.tokenizer.decode(tokens)
    assert text.endswith("<|im_start|>user\nTell me a story<|im_end|>\n<|im_start|>assistant\n")
    raw = tiny_model.prompt_tokens("Tell me a story")
    assert tiny_model.tokenizer.decode(raw) == "Tell me a story"


def _token_texts(model, n=30):
    """The greedy reply and the text each of its tokens adds."""
    pieces = [c.text for c in stream_generate(model, MESSAGES, temperature=0, max_tokens=n)]
    return "".join(pieces), [p for p in pieces if p]


def test_stop_string_ends_the_reply_and_is_not_part_of_it(tiny_model):
    full, _ = _token_texts(tiny_model)
    stop = full[10:13]
    out = generate(tiny_model, MESSAGES, temperature=0, max_tokens=30, stop=[stop])
    assert out == full[: full.index(stop)]
    last = list(stream_generate(tiny_model, MESSAGES, temperature=0, max_tokens=30, stop=[stop]))[
        -1
    ]
    assert last.finish_reason == "stop"


def test_stop_string_spanning_two_tokens(tiny_model):
    full, pieces = _token_texts(tiny_model)
    # Build a stop string from the end of one token's text and the start of the next.
    cut = 0
    for i in range(3, len(pieces) - 1):
        if len(pieces[i]) >= 1 and len(pieces[i + 1]) >= 1:
            cut = i
            break
    boundary = sum(len(p) for p in pieces[: cut + 1])
    stop = full[boundary - 1 : boundary + 1]
    assert len(stop) == 2
    out = generate(tiny_model, MESSAGES, temperature=0, max_tokens=30, stop=[stop])
    assert out == full[: full.index(stop)]
    assert stop not in out


def test_params_object_and_overrides_combine(tiny_model):
    params = SamplingParams(temperature=0, max_tokens=5)
    chunks = list(stream_generate(tiny_model, MESSAGES, params, max_tokens=3))
    assert chunks[-1].generation_tokens == 3


def test_invalid_params_are_rejected():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(TypeError, match="Unknown sampling parameter"):
        SamplingParams().replace(temprature=1)


def test_load_by_family_uses_the_latest_and_by_full_name(tiny_hf, home):
    convert(str(tiny_hf))
    convert(str(tiny_hf), q_bits=8, set_latest=True)  # another quantization: asked for
    assert load("qwen3-1m-tiny").manifest.name == "qwen3-1m-tiny-2507-mlx-q8-g64"
    assert load("qwen3-1m-tiny-2507-mlx-q4-g64").manifest.name.endswith("q4-g64")


def test_unknown_model_says_how_to_get_one():
    with pytest.raises(ModelNotFoundError, match="qwen-mlx convert"):
        load("qwen3-4b-instruct")


def test_a_folder_that_is_not_a_model_is_named_as_such(tmp_path, capsys):
    with pytest.raises(ModelNotFoundError, match=r"no config\.json and no weights"):
        load(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen3"}')
    assert main(["--model", str(tmp_path), "--prompt", "Hi"]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path} is not a model folder: it has no weights (*.safetensors)" in err


def test_verify_without_a_manifest_says_there_is_nothing_to_check(tiny_mlx, tmp_path, caplog):
    import shutil

    folder = tmp_path / "plain"
    shutil.copytree(tiny_mlx, folder)
    (folder / "manifest.json").unlink()
    with caplog.at_level("WARNING", logger="qwen_mlx.runtime"):
        load(folder, verify=True)
    assert "no manifest.json: there are no checksums" in caplog.text


def test_cli_streams_to_stdout_and_stats_to_stderr(tiny_mlx, capsys):
    code = main(["--model", str(tiny_mlx), "--prompt", "Hi", "--temperature", "0", "-n", "8"])
    assert code == 0
    captured = capsys.readouterr()
    expected = generate(
        load(tiny_mlx), [{"role": "user", "content": "Hi"}], temperature=0, max_tokens=8
    )
    assert captured.out == expected + "\n"
    assert "generation: 8 tokens" in captured.err and "first token" in captured.err


def test_cli_without_a_model_points_to_convert(capsys):
    assert main(["--prompt", "Hi"]) == 1
    assert "qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507" in capsys.readouterr().err


def test_a_top_k_at_or_above_the_vocabulary_means_off_and_breaks_nothing(tiny_model):
    vocab = tiny_model.config["vocab_size"]
    huge = generate(tiny_model, MESSAGES, top_k=100_000, temperature=1.0, seed=3, max_tokens=12)
    assert huge == generate(tiny_model, MESSAGES, top_k=0, temperature=1.0, seed=3, max_tokens=12)
    exact = generate(tiny_model, MESSAGES, top_k=vocab, temperature=1.0, seed=3, max_tokens=12)
    assert exact == huge
    # Unseeded sampling afterwards still works (it used to fail for the rest of the process).
    assert generate(tiny_model, MESSAGES, top_k=5, temperature=1.0, max_tokens=4) is not None


def test_a_sampler_that_fails_while_compiling_leaves_sampling_usable(tiny_model, monkeypatch):
    import mlx_lm.sample_utils as sample_utils

    real = sample_utils.make_sampler
    # mlx-lm's compiled top-k raising while it traces, as it did for any top_k >= vocab.
    monkeypatch.setattr(
        sample_utils, "make_sampler", lambda **_: lambda x: sample_utils.apply_top_k(x, 10**9)
    )
    with pytest.raises(ValueError, match="top_k"):
        generate(tiny_model, MESSAGES, temperature=1.0, max_tokens=4)
    monkeypatch.setattr(sample_utils, "make_sampler", real)
    for _ in range(2):
        chunks = list(stream_generate(tiny_model, MESSAGES, temperature=1.0, top_k=5, max_tokens=4))
        assert chunks[-1].finish_reason in ("stop", "length")


def test_sampling_params_refuse_non_finite_and_mistyped_values():
    for bad in (
        {"repetition_penalty": float("inf")},
        {"temperature": float("nan")},
        {"presence_penalty": float("-inf")},
        {"max_tokens": "10"},
        {"top_k": 2.5},
        {"top_k": True},
        {"seed": "1"},
        {"min_p": 1.5},
        {"repetition_penalty": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SamplingParams(**bad)


def test_stream_tokens_reports_each_sampled_tokens_logprob_once(tiny_model):
    from qwen_mlx.runtime import stream_tokens

    ids = tiny_model.prompt_tokens(MESSAGES)
    params = tiny_model.default_params.replace(temperature=0, max_tokens=12)
    chunks = list(stream_tokens(tiny_model, ids, params, logprobs=3))
    scored = [lp for c in chunks for lp in c.logprobs]
    assert len(scored) == chunks[-1].generation_tokens
    assert tiny_model.tokenizer.decode([lp.token for lp in scored]) == "".join(
        c.text for c in chunks
    )
    for lp in scored:  # greedy: the chosen token is the best of the top 3
        assert len(lp.top) == 3 and lp.top[0] == (lp.token, lp.logprob)
        assert lp.top[0][1] >= lp.top[1][1] >= lp.top[2][1]
    assert not any(c.logprobs for c in stream_tokens(tiny_model, ids, params))


def test_the_stop_string_that_ended_a_reply_is_named(tiny_model):
    full, _ = _token_texts(tiny_model)
    stop = full[10:13]
    last = list(
        stream_generate(tiny_model, MESSAGES, temperature=0, max_tokens=30, stop=["zzzz", stop])
    )[-1]
    assert last.finish_reason == "stop" and last.stop_string == stop
    last = list(stream_generate(tiny_model, MESSAGES, temperature=0, max_tokens=5))[-1]
    assert last.stop_string is None


def test_a_model_prints_as_one_line(tiny_model, tiny_mlx, tmp_path):
    import shutil

    from qwen_mlx import load

    text = repr(tiny_model)
    assert "\n" not in text and len(text) < 160
    assert text.startswith("Model('qwen3-1m-tiny-2507-mlx-q4-g64', ")
    assert "4-bit g64" in text and f"context {tiny_model.context_length:,}" in text
    assert f"{tiny_model.manifest.parameters / 1e3:.0f}K parameters" in text
    assert str(tiny_model) == text  # print(model) too
    bare = tmp_path / "no-manifest"  # a folder without a manifest counts its weights
    shutil.copytree(tiny_mlx, bare, ignore=shutil.ignore_patterns("manifest.json"))
    counted = load(bare)
    assert counted.manifest is None
    assert counted.parameters == tiny_model.manifest.parameters
