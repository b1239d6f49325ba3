"""The memory planner: KV bytes per token, budgets, chunk sizes, `qwen-mlx plan`."""

from __future__ import annotations

import json

import pytest

from qwen_mlx.cli.plan import main
from qwen_mlx.runtime.memory import (
    Budget,
    MemoryPlanner,
    ModelShape,
    attention_workspace,
    kv_bytes_per_token,
    machine_budget,
)

from .helpers import SHARED_MODEL, needs_shared

GIB = 1 << 30
KIB = 1 << 10


@pytest.fixture
def qwen3_4b() -> ModelShape:
    return ModelShape.from_config(json.loads((SHARED_MODEL / "config.json").read_text()))


@needs_shared
def test_qwen3_4b_worked_figures(qwen3_4b):
    assert kv_bytes_per_token(qwen3_4b) == 144 * KIB
    assert kv_bytes_per_token(qwen3_4b) * 262_144 == 36 * GIB
    four_bit = kv_bytes_per_token(qwen3_4b, 4) * 262_144
    assert 0.25 <= four_bit / (36 * GIB) < 0.3  # about a quarter: scales and biases on top
    assert kv_bytes_per_token(qwen3_4b, 8) == 76.5 * KIB
    assert qwen3_4b.context_length == 262_144


@needs_shared
def test_max_context_per_kv_precision_on_a_16_gb_mac(qwen3_4b):
    # A 16 GB Mac recommends about 10.7 GB of working set; 4-bit weights take ~2.3 GB.
    planner = MemoryPlanner(qwen3_4b, int(2.3e9), Budget(int(10.7e9), 16 * GIB, "test"))
    bf16, q8, q4 = (planner.max_context(b) for b in (None, 8, 4))
    assert 40_000 < bf16 < q8 < q4 < 262_144
    # 4-bit KV is 3.6x smaller per token, but the scores of even the smallest prefill
    # chunk grow with the context too, so the reach grows a little less.
    assert q4 / bf16 > 2.5
    for bits, limit in ((None, bf16), (8, q8), (4, q4)):
        assert planner.plan(limit, bits).fits
        assert not planner.plan(limit + 1, bits).fits


@needs_shared
def test_everything_fits_on_a_big_machine_up_to_the_model_context(qwen3_4b):
    planner = MemoryPlanner(qwen3_4b, int(2.3e9), Budget(200 * GIB, 256 * GIB, "test"))
    assert planner.max_context(None) == 262_144
    assert not planner.plan(262_145).fits_context


@needs_shared
def test_prefill_chunks_shrink_so_attention_scores_fit(qwen3_4b):
    planner = MemoryPlanner(qwen3_4b, int(2.3e9), Budget(int(40e9), 64 * GIB, "test"))
    short = planner.chunk_for(4_000, 4)
    long = planner.chunk_for(200_000, 4)
    assert short == 2048
    assert 64 <= long < short
    plan = planner.plan(200_000, 4)
    assert plan.fits
    assert (
        attention_workspace(qwen3_4b, plan.chunk, 200_000)
        <= plan.budget - plan.weights - plan.kv_cache
    )


def test_budget_is_physical_memory_with_headroom_on_cpu():
    budget = machine_budget()
    assert budget.source == "physical-memory-minus-headroom"
    assert 0 < budget.bytes <= budget.total - 2 * GIB


def test_planner_reads_weights_from_the_loaded_arrays(tiny_model):
    planner = MemoryPlanner.for_model(tiny_model)
    size = sum(f.size for f in tiny_model.manifest.files if f.path.endswith(".safetensors"))
    assert 0.9 * size < planner.weights <= size


def test_plan_command_prints_a_table_for_each_precision(tiny_mlx, capsys):
    assert main(["--model", str(tiny_mlx), "--context", "4096"]) == 0
    out = capsys.readouterr().out
    assert "plan for 4,096 tokens" in out
    lines = out.splitlines()
    assert any(line.startswith("bf16") for line in lines)
    assert any(line.startswith("8-bit") for line in lines)
    assert any(line.startswith("4-bit") for line in lines)
    assert "physical memory minus headroom" in out


def test_plan_command_json(tiny_mlx, capsys):
    assert main(["--model", str(tiny_mlx), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [r["kv"] for r in data["rows"]] == ["bf16", "8-bit", "4-bit"]
    per_token = [r["kv_bytes_per_token"] for r in data["rows"]]
    assert per_token[0] > per_token[1] > per_token[2]
    assert data["context"] == 32768


@needs_shared
def test_plan_uses_one_unit_and_says_why_a_smaller_cache_gets_more_workspace(capsys):
    assert main(["--model", str(SHARED_MODEL), "--context", "32768", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    bf16, _, four = rows
    assert four["prefill_chunk"] >= bf16["prefill_chunk"]  # room the smaller cache left
    assert main(["--model", str(SHARED_MODEL), "--context", "32768"]) == 0
    out = capsys.readouterr().out
    assert "KiB" not in out and "GiB" not in out
    assert "147.5 KB" in out  # bf16 KV per token of Qwen3-4B, as the README says
    table = {row[0]: row for row in map(str.split, out.splitlines()) if row[:1] == ["4-bit"]}
    assert table["4-bit"][5] == f"{four['prefill_chunk']:,}"  # CHUNK, after two sizes
    assert "a smaller KV cache leaves room for a larger chunk" in " ".join(out.split())
