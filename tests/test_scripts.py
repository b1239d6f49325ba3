"""Every script in scripts/ runs in CI: each benchmark's `--smoke` run here (interop tier,
as a user runs it: a child process from the repository root), unless a test that reads its
figures already runs it; that test is named below, and a new script that is in neither
list fails `test_every_script_is_run_somewhere`."""

from __future__ import annotations

import pytest

from .helpers import SCRIPTS, TRAINED_TARGET, run_script

# Scripts a test of their own runs, with what it checks in the output.
RUN_ELSEWHERE = {
    "bench_kv.py": "tests/test_kv_batch.py (KL order, bytes per token)",
    "bench_quant.py": "tests/test_quant.py (smoke: both texts, both counts, ratios)",
    "bench_distributed.py": "tests/test_distributed.py (smoke on 1 and 2 ranks)",
    "bench_server.py": "tests/test_server_batching.py (against mlx_lm server)",
    "bench_gguf.py": "tests/test_gguf_interop.py (its table and --json figures)",
    "make_tiny_model.py": "tests/test_tiny_checkpoint.py (a sharded untied checkpoint)",
    "tui_smoke.sh": "tests/test_tui.py::test_tui_smoke_in_a_real_terminal",
    "check_interop.sh": "a user's way to run the interop tier: `pytest -m interop` is it",
}

# The rest: the flags of a short run, and a line its table always prints.
SMOKES = {
    "bench_convert.py": (["--smoke"], "time ratio (ours / mlx-lm)"),
    "bench_logprobs.py": (["--smoke"], "decode with logprobs"),
    "bench_overhead.py": (["--smoke"], "ours / mlx-lm"),
    "bench_session.py": (["--smoke"], "time to first token per turn"),
    "bench_speculative.py": (["--smoke"], "identical to plain greedy"),
    "bench_structured.py": (["--smoke"], "ratio constrained / free"),
    "bench_tui.py": (["--smoke"], "screen updates"),
    "bench_web.py": (["--smoke"], "web chat SSE"),
    "screenshots.py": (["--out", "{tmp}"], "chat.svg"),
}
NEEDS_TRAINED = {"bench_speculative.py"}


def test_every_script_is_run_somewhere():
    scripts = {p.name for p in SCRIPTS.iterdir() if p.suffix in (".py", ".sh")}
    scripts.discard("_bench.py")  # the helpers every benchmark imports
    assert scripts == RUN_ELSEWHERE.keys() | SMOKES.keys()
    assert not RUN_ELSEWHERE.keys() & SMOKES.keys()


@pytest.mark.interop
@pytest.mark.parametrize("script", sorted(SMOKES))
def test_the_benchmark_runs_in_smoke_mode(script, tmp_path):
    if script in NEEDS_TRAINED and not TRAINED_TARGET.is_dir():
        pytest.skip("the trained pair (../shared/models/qwen3-tiny-trained) is not beside the repo")
    flags, expected = SMOKES[script]
    flags = [flag.replace("{tmp}", str(tmp_path / "out")) for flag in flags]
    figures = tmp_path / "figures.json"
    if "--json" in _help(script):
        flags = [*flags, "--json", str(figures)]
    done = run_script(script, *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    assert expected.lower() in done.stdout.lower(), done.stdout[-3000:]
    if "--json" in flags:
        assert figures.is_file() and figures.read_text().strip().startswith("{")


def _help(script: str) -> str:
    done = run_script(script, "--help", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
