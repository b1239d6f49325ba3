"""Planning with a quantized KV cache: a planner set to 8 or 4 bits admits by those bytes,
counts the sequences that fit at once, and `qwen-mlx plan` shows both per KV setting for
this machine or a Mac of a given memory."""

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
    mac_budget,
)

GIB = 1 << 30
QWEN3_4B = ModelShape(
    layers=36, heads=32, kv_heads=8, head_dim=128, hidden=2560, context_length=262_144
)


def _planner(kv_bits=None, memory=16):
    return MemoryPlanner(QWEN3_4B, int(2.3e9), mac_budget(memory), kv_bits=kv_bits)


@pytest.mark.parametrize("bits", [8, 4])
def test_a_planner_set_to_quantized_kv_admits_by_its_bytes(bits):
    planner = _planner(bits)
    assert planner.kv_per_token() == kv_bytes_per_token(QWEN3_4B, bits)
    plan = planner.plan(20_000)
    assert plan.kv_bits == bits and plan.kv_cache == 20_000 * kv_bytes_per_token(QWEN3_4B, bits)
    # Naming a precision still plans for it: None is bf16.
    assert planner.plan(20_000, None).kv_cache == _planner().plan(20_000).kv_cache
    assert planner.max_context() == planner.max_context(bits) > _planner().max_context()
    assert planner.chunk_for(50_000) == planner.chunk_for(50_000, bits)


def test_the_server_default_batch_grows_with_a_quantized_planner():
    from qwen_mlx.server.scheduler import default_max_batch

    # Its admission (planner.plan / kv_per_token without a precision) follows the planner.
    small = MemoryPlanner(QWEN3_4B, int(2.3e9), mac_budget(8))
    counts = [
        default_max_batch(MemoryPlanner(QWEN3_4B, int(2.3e9), small.budget, kv_bits=b))
        for b in (None, 8, 4)
    ]
    assert counts[0] < counts[1] < counts[2]


def test_sequences_that_fit_at_once_per_kv_setting():
    bf16, q8, q4 = (_planner().max_sequences(4096, b) for b in (None, 8, 4))
    # 144 KiB, 76.5 KiB and 40.5 KiB per token: about 1.9x and 3.6x as many sequences.
    assert (bf16, q8, q4) == (14, 26, 50)
    assert _planner(8).max_sequences(4096) == q8
    # Each sequence's KV, weights and one prefill chunk's working space fit the budget,
    # and one sequence more would not.
    planner = _planner()
    fixed = planner.weights + attention_workspace(QWEN3_4B, 512, 4096)
    for bits, n in ((None, bf16), (8, q8), (4, q4)):
        per_sequence = 4096 * planner.kv_per_token(bits)
        assert fixed + n * per_sequence <= planner.budget.bytes < fixed + (n + 1) * per_sequence
    tiny = MemoryPlanner(QWEN3_4B, int(2.3e9), Budget(int(2.4e9), 8 * GIB, "test"))
    assert tiny.max_sequences(4096) == 0
    with pytest.raises(ValueError, match="at least one token"):
        planner.max_sequences(0)


def test_a_macs_budget_is_its_metal_working_set():
    assert mac_budget(16).bytes == pytest.approx(16 * GIB * 2 / 3, abs=1)
    assert mac_budget(64).bytes == pytest.approx(64 * GIB * 3 / 4, abs=1)
    assert mac_budget(16).total == 16 * GIB
    with pytest.raises(ValueError, match="positive"):
        mac_budget(0)
    with pytest.raises(ValueError, match="kv_bits"):
        MemoryPlanner(QWEN3_4B, 1, mac_budget(16), kv_bits=3)


def test_plan_shows_sequences_per_kv_setting_for_a_given_mac(tiny_mlx, capsys):
    assert main(["--model", str(tiny_mlx), "--memory", "16", "--per-sequence", "8192"]) == 0
    out = capsys.readouterr().out
    assert "SEQUENCES x 8,192" in out
    assert "16 gb mac" in out
    assert main(["--model", str(tiny_mlx), "--memory", "16", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["budget_bytes"] == mac_budget(16).bytes and data["per_sequence"] == 4096
    seqs = [r["max_sequences"] for r in data["rows"]]
    assert seqs[0] < seqs[1] < seqs[2]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [("--memory", "0", "--memory"), ("--per-sequence", "-5", "--per-sequence")],
)
def test_plan_refuses_bad_memory_and_sequence_sizes(tiny_mlx, capsys, flag, value, message):
    assert main(["--model", str(tiny_mlx), flag, value]) != 0
    assert message in capsys.readouterr().err
