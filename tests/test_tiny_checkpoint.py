"""The tiny checkpoint builder writes a folder that looks like a real Qwen3 download."""

from __future__ import annotations

import json

import pytest

from qwen_mlx.convert.checkpoint import inspect_checkpoint
from qwen_mlx.convert.tiny import MARKUP_TOKENS, SPECIAL_TOKENS, TinyConfig, build_tiny_checkpoint

from .helpers import SHARED_MODEL, needs_shared, run_script


def test_config_describes_a_qwen3_with_the_requested_sizes(tmp_path):
    cfg = TinyConfig(
        hidden_size=96,
        num_hidden_layers=3,
        num_attention_heads=6,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=160,
    )
    folder = build_tiny_checkpoint(tmp_path / "m", cfg)
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["Qwen3ForCausalLM"]
    assert config["model_type"] == "qwen3"
    assert (config["hidden_size"], config["num_hidden_layers"]) == (96, 3)
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (6, 2)
    assert (config["head_dim"], config["intermediate_size"]) == (16, 160)
    assert config["tie_word_embeddings"] is True
    assert config["vocab_size"] % 64 == 0
    gen = json.loads((folder / "generation_config.json").read_text())
    assert (gen["temperature"], gen["top_p"], gen["top_k"]) == (0.7, 0.8, 20)


def test_sharded_untied_checkpoint_has_an_index_and_an_lm_head(tiny_hf_untied):
    index = json.loads((tiny_hf_untied / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) == 3
    assert "lm_head.weight" in index["weight_map"]
    ckpt = inspect_checkpoint(tiny_hf_untied)
    assert len(ckpt.weight_files) == 3
    assert ckpt.tensors["model.embed_tokens.weight"].dtype == "BF16"


def test_tokenizer_carries_qwen_special_tokens_and_a_chatml_template(tiny_model):
    tok = tiny_model.tokenizer
    vocab = tok.get_vocab()
    for token in SPECIAL_TOKENS + MARKUP_TOKENS:
        assert token in vocab
        assert tok.encode(token, add_special_tokens=False) == [vocab[token]]
    assert tok.eos_token == "<|im_end|>"
    text = tiny_model.render([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}])
    assert (
        text
        == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chat_template_renders_tools_calls_and_responses_in_qwen3_format(tiny_model):
    tools = [{"type": "function", "function": {"name": "clock", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "time?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "clock", "arguments": {"tz": "UTC"}}}
            ],
        },
        {"role": "tool", "content": "12:00"},
    ]
    text = tiny_model.render(messages, tools=tools)
    assert text.startswith("<|im_start|>system\n# Tools\n")
    assert '<tools>\n{"type": "function", "function": {"name": "clock"' in text
    assert (
        '<tool_call>\n{"name": "clock", "arguments": {"tz": "UTC"}}\n</tool_call><|im_end|>' in text
    )
    assert "<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_builder_refuses_to_mix_into_a_non_empty_folder(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "old.safetensors").write_bytes(b"x")
    with pytest.raises(FileExistsError):
        build_tiny_checkpoint(tmp_path / "m")
    build_tiny_checkpoint(tmp_path / "m", overwrite=True)
    assert not (tmp_path / "m" / "old.safetensors").exists()


def test_script_builds_a_checkpoint(tmp_path):
    out = tmp_path / "Qwen3-1M-Script-2507"
    args = [str(out), "--layers", "3", "--shards", "2", "--untied"]
    done = run_script("make_tiny_model.py", *args, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    ckpt = inspect_checkpoint(out)
    assert ckpt.config["num_hidden_layers"] == 3 and not ckpt.tied_embeddings


@needs_shared
def test_real_tokenizer_folder_can_replace_the_trained_one(tmp_path):
    folder = build_tiny_checkpoint(tmp_path / "m", tokenizer_from=SHARED_MODEL)
    config = json.loads((folder / "config.json").read_text())
    real = json.loads((SHARED_MODEL / "config.json").read_text())
    assert config["vocab_size"] == real["vocab_size"] == 151936
    assert config["eos_token_id"] == 151645
