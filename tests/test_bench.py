"""`qwen-mlx bench`: exact workloads, the figures it reports, and the bandwidth ceiling."""

from __future__ import annotations

import json

import pytest

from qwen_mlx.cli.bench import main
from qwen_mlx.runtime import bench
from qwen_mlx.runtime.bench import (
    mask_tokens,
    measure_copy_bandwidth,
    measure_run,
    published_bandwidth,
    synthetic_prompt,
)


@pytest.fixture
def own_model(tiny_mlx):
    """A private copy of the tiny model that a test may change (its tokenizer's EOS set)."""
    from qwen_mlx import load

    return load(tiny_mlx)


@pytest.fixture
def apple_m2_pro(monkeypatch):
    """Pretend to run on an M2 Pro, so that no copy is measured."""
    monkeypatch.setattr(bench, "device_name", lambda: "Apple M2 Pro")


def test_table_shows_each_run_the_medians_and_the_bandwidth_ceiling(tiny_mlx, apple_m2_pro, capsys):
    assert main(["--model", str(tiny_mlx), "-p", "40", "-g", "12", "--repeat", "2"]) == 0
    out = capsys.readouterr().out
    for heading in ("PREFILL TOK/S", "DECODE TOK/S", "FIRST TOKEN", "PEAK MEMORY"):
        assert heading in out
    lines = out.splitlines()
    assert [line.split()[0] for line in lines if line[:1].isdigit()] == ["1", "2"]
    assert any(line.startswith("median") for line in lines)
    assert "40 prompt tokens, 12 generated" in out
    assert "200.0 GB/s (published, Apple M2 Pro)" in out
    assert "of the ceiling" in out


def test_json_reports_exact_token_counts_and_a_consistent_ceiling(tiny_mlx, apple_m2_pro, capsys):
    assert main(["--model", str(tiny_mlx), "-p", "37", "-g", "9", "--repeat", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["prompt_tokens"], r["generation_tokens"]) == (37, 9)
    assert [(run["prompt_tokens"], run["generation_tokens"]) for run in r["runs"]] == [(37, 9)] * 2
    for run in r["runs"]:
        assert run["prefill_tps"] > 0 and run["decode_tps"] > 0
        assert run["time_to_first_token"] > 0 and run["peak_memory"] > 0
    assert r["bandwidth"] == {
        "bytes_per_second": 200e9,
        "source": "published",
        "device": "Apple M2 Pro",
        "note": "",
        "gb_per_second": 200.0,
    }
    assert r["decode_context"] == 37 + 9 / 2
    assert r["bytes_per_token"] == r["weights_bytes"] + r["kv_bytes_per_token"] * (37 + 4.5)
    assert r["ceiling_tps"] == pytest.approx(200e9 / r["bytes_per_token"])
    assert r["bandwidth_share"] == pytest.approx(r["decode_tps"] / r["ceiling_tps"])


def test_weights_and_kv_bytes_come_from_the_memory_planner(tiny_mlx, capsys):
    from qwen_mlx import load
    from qwen_mlx.runtime.memory import MemoryPlanner

    planner = MemoryPlanner.for_model(load(tiny_mlx))
    main(["--model", str(tiny_mlx), "-p", "8", "-g", "2", "--repeat", "1", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert r["weights_bytes"] == planner.weights  # tied embeddings: every weight is read
    assert r["kv_bytes_per_token"] == planner.kv_per_token()


def test_generation_runs_its_full_length_even_when_almost_every_token_ends_the_turn(
    own_model,
):
    vocab = own_model.config["vocab_size"]
    own_model.tokenizer.eos_token_ids = set(range(vocab)) - set(range(10, 20))
    prompt = synthetic_prompt(own_model, 16)
    run = measure_run(own_model, prompt, 20)
    assert (run.prompt_tokens, run.generation_tokens) == (16, 20)


def test_the_eos_mask_makes_only_the_given_tokens_impossible():
    import mlx.core as mx

    logits = mx.array([[0.0, 5.0, 1.0, 9.0]])
    masked = mask_tokens([3, 1])(None, logits)
    assert masked.tolist() == [[0.0, -float("inf"), 1.0, -float("inf")]]
    assert mx.argmax(masked, axis=-1).item() == 2


@pytest.mark.parametrize("n", [1, 7, 513])
def test_synthetic_prompt_has_exactly_n_ordinary_tokens(tiny_model, n):
    prompt = synthetic_prompt(tiny_model, n)
    assert len(prompt) == n
    assert not set(prompt) & tiny_model.tokenizer.eos_token_ids


@pytest.mark.parametrize(
    ("device", "cpu_cores", "gb_per_second"),
    [
        ("Apple M1", None, 68.25),
        ("Apple M1 Max", None, 400),
        ("Apple M2", None, 100),
        ("Apple M2 Pro", None, 200),
        ("Apple M2 Ultra", None, 800),
        ("Apple M3 Pro", 12, 150),
        ("Apple M3 Max", 14, 300),
        ("Apple M3 Max", 16, 400),
        ("Apple M3 Max", None, 400),  # binning unknown: the higher figure
        ("Apple M3 Ultra", None, 819),
        ("Apple M4", 10, 120),
        ("Apple M4 Pro", 14, 273),
        ("Apple M4 Max", 14, 410),
        ("Apple M4 Max", 16, 546),
        ("apple m4 max", None, 546),
        ("Apple M5", None, 153),
    ],
)
def test_published_bandwidth_of_apple_chips(device, cpu_cores, gb_per_second):
    assert published_bandwidth(device, cpu_cores=cpu_cores) == gb_per_second


@pytest.mark.parametrize(
    "device", ["Intel(R) Xeon(R) Processor", "AMD Ryzen 9 7950X", "Apple M9 Hyper", "Apple A17"]
)
def test_unknown_chips_have_no_published_bandwidth(device):
    assert published_bandwidth(device) is None


def test_measured_copy_bandwidth_is_bytes_read_and_written_over_the_fastest_copy(monkeypatch):
    from types import SimpleNamespace

    # A clock that makes the three copies take 0.5 s, 0.25 s and 1 s.
    ticks = iter([10.0, 10.5, 20.0, 20.25, 30.0, 31.0])
    monkeypatch.setattr(bench, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    size = 8 << 20
    assert measure_copy_bandwidth(size=size, repeats=3) == 2 * size / 0.25
    assert next(ticks, None) is None  # each copy timed, and only the copies


def test_a_machine_without_a_published_figure_reports_a_measured_one(monkeypatch):
    monkeypatch.setattr(bench, "device_name", lambda: "Intel(R) Xeon(R) Processor")
    monkeypatch.setattr(bench, "measure_copy_bandwidth", lambda: 12.5e9)
    bandwidth = bench.machine_bandwidth()
    assert (bandwidth.source, bandwidth.gb_per_second) == ("measured", 12.5)


def test_an_apple_chip_missing_from_the_table_is_measured_and_says_so(monkeypatch):
    monkeypatch.setattr(bench, "device_name", lambda: "Apple M9 Max")
    monkeypatch.setattr(bench, "measure_copy_bandwidth", lambda: 300e9)
    bandwidth = bench.machine_bandwidth()
    assert bandwidth.source == "measured"
    assert "M9 Max is not in the published table" in bandwidth.note


def test_a_binned_chip_without_its_core_count_gets_the_higher_figure(monkeypatch):
    monkeypatch.setattr(bench, "device_name", lambda: "Apple M4 Max")
    monkeypatch.setattr(bench, "_sysctl", lambda name: None)
    bandwidth = bench.machine_bandwidth()
    assert (bandwidth.source, bandwidth.gb_per_second) == ("published", 546)
    assert "higher" in bandwidth.note


def test_given_bandwidth_replaces_detection(tiny_mlx, capsys):
    argv = ["--model", str(tiny_mlx), "-p", "8", "-g", "2", "--repeat", "1", "--json"]
    assert main([*argv, "--bandwidth", "100"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert (r["bandwidth"]["source"], r["bandwidth"]["gb_per_second"]) == ("given", 100.0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-p", "0"], "at least 1 token"),
        (["-g", "1"], "at least 2 tokens"),
        (["--repeat", "0"], "repeat must be at least 1"),
        (["--bandwidth", "-5"], "--bandwidth must be positive"),
    ],
)
def test_bad_lengths_are_refused_before_any_model_is_loaded(flags, message, capsys):
    assert main(["--model", "no-such-model", *flags]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_a_workload_longer_than_the_context_is_refused(tiny_mlx, capsys):
    assert main(["--model", str(tiny_mlx), "-p", "32760", "-g", "16"]) == 1
    assert "exceed the model's context of 32768" in capsys.readouterr().err


def test_an_unknown_model_is_an_error_message(capsys):
    assert main(["--model", "no-such-model"]) == 1
    assert capsys.readouterr().err.startswith("error: ")


def test_a_non_number_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["-p", "many"])
    assert exit_.value.code == 2
    assert "invalid int value" in capsys.readouterr().err
