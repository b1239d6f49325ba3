"""llama.cpp itself (llama-cpp-python) against our GGUF exports and imports, on the trained
tiny Qwen3 (figures from scripts/bench_gguf.py, which prints them as a table):

- every exported file loads, and its logits on a fixed prompt agree with ours: f16 within
  1e-2 relative error, q8_0 top-1 agreement >= 0.9, q4_0 top-1 no worse than llama.cpp's
  own quantization of the same f16 file;
- llama.cpp tokenizes the prompt as we do and reads the chat template we wrote;
- GGUF files imported into the store (a llama.cpp-style f16 build, our q4_0 and q8_0,
  llama.cpp's q4_k_m) run in MLX as llama.cpp runs the same file.
"""

from __future__ import annotations

import importlib.util
import sys

import pytest

from .helpers import SCRIPTS, TRAINED_TARGET

TRAINED = TRAINED_TARGET

pytestmark = [
    pytest.mark.interop,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None,
        reason="llama-cpp-python is not installed: `pip install 'qwen-mlx[interop]'` "
        "(it builds llama.cpp from source) or run scripts/check_interop.sh",
    ),
    pytest.mark.skipif(
        not (TRAINED / "model.safetensors").is_file(),
        reason=f"the trained tiny Qwen3 is not at {TRAINED}",
    ),
]


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("bench_gguf", SCRIPTS / "bench_gguf.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_gguf"] = bench  # dataclasses look their module up while it loads
    spec.loader.exec_module(bench)
    figures = bench.measure(TRAINED, tmp_path_factory.mktemp("bench_gguf"))
    bench.print_table(figures)
    return figures


def test_llama_cpp_runs_our_f16_export_as_we_run_the_model(figures):
    assert figures.row("ours f16 in llama.cpp").rel_err < 1e-2


def test_llama_cpp_runs_our_q8_0_export_with_top1_agreement_of_at_least_90_percent(figures):
    assert figures.row("ours q8_0 in llama.cpp").top1 >= 0.9


def test_our_q4_0_is_no_worse_than_llama_cpp_quantizing_the_same_f16_file(figures):
    ours = figures.row("ours q4_0 in llama.cpp")
    theirs = figures.row("llama.cpp's own q4_0 in llama.cpp")
    assert ours.top1 >= theirs.top1
    assert ours.kl <= theirs.kl * 1.05


def test_llama_cpp_loads_our_q4_k_m_export(figures):
    assert figures.row("ours q4_k_m in llama.cpp").top1 >= 0.8


def test_llama_cpp_tokenizes_as_we_do_and_reads_our_chat_template(figures):
    assert figures.tokens_llama == figures.tokens_ours
    assert figures.template_llama == figures.template_ours


def test_imported_gguf_files_run_in_mlx_as_in_llama_cpp(figures):
    assert figures.row("import of a llama.cpp-style f16 GGUF, in MLX").rel_err < 1e-2
    assert figures.row("import of our q8_0 GGUF, in MLX").top1 >= 0.95
    assert figures.row("import of our q4_0 GGUF, in MLX").top1 >= 0.9
    assert figures.row("import of llama.cpp's q4_k_m, in MLX").top1 >= 0.8
    notes = figures.import_notes["llama.cpp's q4_k_m"]
    assert any("re-quantized" in n for n in notes)
    assert not figures.import_notes["our q4_0 GGUF"]  # carried over as it is
