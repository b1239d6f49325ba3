"""Converted models compute what Qwen3 computes, and quantize as faithfully as mlx-lm."""

from __future__ import annotations

import numpy as np
import pytest

from qwen_mlx import load
from qwen_mlx.convert import convert

from .reference import forward, relative_error

TOKENS = list(range(3, 67))


def logits(model, tokens=TOKENS) -> np.ndarray:
    import mlx.core as mx

    return np.array(model.model(mx.array(tokens)[None])[0].astype(mx.float32))


@pytest.mark.parametrize("fixture", ["tiny_hf", "tiny_hf_untied"])
@pytest.mark.parametrize(("dtype", "tolerance"), [("float32", 1e-4), ("bfloat16", 1e-2)])
def test_unquantized_conversion_matches_an_independent_numpy_qwen3(
    request, fixture, dtype, tolerance, tmp_path
):
    source = request.getfixturevalue(fixture)
    converted = convert(str(source), mlx_path=tmp_path / dtype, quantize=False, dtype=dtype)
    expected = forward(source, TOKENS)
    assert relative_error(logits(load(converted.path)), expected) < tolerance


def test_four_bit_error_is_within_ten_percent_of_mlx_lm_own_conversion(tiny_hf, tmp_path):
    from mlx_lm.convert import convert as mlx_lm_convert

    reference = logits(load(convert(str(tiny_hf), mlx_path=tmp_path / "bf16", quantize=False).path))
    ours = logits(load(convert(str(tiny_hf), mlx_path=tmp_path / "ours").path))
    mlx_lm_convert(
        str(tiny_hf), mlx_path=str(tmp_path / "theirs"), quantize=True, q_bits=4, q_group_size=64
    )
    theirs = logits(load(tmp_path / "theirs"))
    our_error = relative_error(ours, reference)
    their_error = relative_error(theirs, reference)
    assert their_error > 0.05  # 4-bit on a random model is far from exact: compare like with like
    assert our_error <= 1.10 * their_error


def test_eight_bit_agrees_on_the_greedy_token_almost_everywhere(tiny_hf_untied, tmp_path):
    reference = logits(
        load(convert(str(tiny_hf_untied), mlx_path=tmp_path / "bf16", quantize=False).path)
    )
    q8 = logits(load(convert(str(tiny_hf_untied), mlx_path=tmp_path / "q8", q_bits=8).path))
    agreement = np.mean(reference.argmax(-1) == q8.argmax(-1))
    assert agreement >= 0.9
