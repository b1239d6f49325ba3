"""With the real Qwen3-4B-Instruct-2507 tokenizer and config (from ../shared)."""

from __future__ import annotations

import json

import pytest

from qwen_mlx import load
from qwen_mlx.convert import convert
from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

from .helpers import SHARED_MODEL, needs_shared

pytestmark = needs_shared


@pytest.fixture(scope="module")
def real_tok_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("realtok")
    source = build_tiny_checkpoint(
        root / "Qwen3-10M-Realtok-2507", TinyConfig(), tokenizer_from=SHARED_MODEL
    )
    return load(convert(str(source), mlx_path=root / "mlx").path)


def test_prompt_for_system_and_user_ends_with_the_assistant_header(real_tok_model):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}]
    text = real_tok_model.render(messages)
    assert text.endswith("<|im_start|>assistant\n")
    assert "<think>" not in text
    tokens = real_tok_model.prompt_tokens(messages)
    assert tokens[-3:] == [151644, 77091, 198]  # <|im_start|> "assistant" "\n"


@pytest.mark.parametrize(
    "text",
    [
        "Hello world",
        "统一内存 and Metal",
        "emoji 👩‍💻 ok",
        "tabs\tand\r\nCRLF",
        "<tool_call>{}</tool_call>",
    ],
)
def test_encode_decode_round_trips(real_tok_model, text):
    ids = real_tok_model.encode(text)
    assert real_tok_model.tokenizer.decode(ids) == text


def test_known_token_ids(real_tok_model):
    assert real_tok_model.encode("Hello world") == [9707, 1879]
    assert real_tok_model.tokenizer.eos_token_ids >= {151645}


def test_sampling_defaults_match_the_model_card(real_tok_model, tmp_path):
    real = json.loads((SHARED_MODEL / "generation_config.json").read_text())
    assert (real["temperature"], real["top_p"], real["top_k"]) == (0.7, 0.8, 20)
    from qwen_mlx import SamplingParams

    params = SamplingParams.from_generation_config(real)
    assert (params.temperature, params.top_p, params.top_k) == (0.7, 0.8, 20)


def test_generation_runs_with_the_real_vocabulary(real_tok_model):
    from qwen_mlx import generate

    out = generate(real_tok_model, [{"role": "user", "content": "Hi"}], temperature=0, max_tokens=5)
    assert isinstance(out, str)


def test_a_system_message_after_the_first_renders_where_it_stands(real_tok_model):
    """What an Anthropic system turn inside `messages` becomes (Claude Code sends one after
    its first user turn): Qwen3's own template renders it in place."""
    messages = [
        {"role": "system", "content": "Top."},
        {"role": "user", "content": "Hi!"},
        {"role": "system", "content": "Later."},
    ]
    for tools in (None, [{"type": "function", "function": {"name": "f", "parameters": {}}}]):
        text = real_tok_model.render(messages, tools=tools)
        assert text.endswith(
            "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>system\nLater.<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
