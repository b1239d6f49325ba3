#!/usr/bin/env python3
"""Write a tiny random Qwen3 checkpoint in Hugging Face format.

    python scripts/make_tiny_model.py OUT [--hidden 64 --layers 2 ...] [--shards 3]
    python scripts/make_tiny_model.py OUT --tokenizer-from ../shared/models/qwen3-4b-instruct-2507

The tests build the same checkpoints through `qwen_mlx.convert.tiny.build_tiny_checkpoint`.
"""

from __future__ import annotations

import sys

from _bench import command


def main(argv: list[str] | None = None) -> int:
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    d = TinyConfig()
    p = command(__doc__)
    p.add_argument("out", help="output folder (created; must be empty unless --overwrite)")
    p.add_argument("--hidden", type=int, default=d.hidden_size)
    p.add_argument("--layers", type=int, default=d.num_hidden_layers)
    p.add_argument("--heads", type=int, default=d.num_attention_heads)
    p.add_argument("--kv-heads", type=int, default=d.num_key_value_heads)
    p.add_argument("--head-dim", type=int, default=d.head_dim)
    p.add_argument("--intermediate", type=int, default=d.intermediate_size)
    p.add_argument(
        "--vocab", type=int, default=None, help="default: tokenizer size rounded up to 64"
    )
    p.add_argument(
        "--context", type=int, default=d.max_position_embeddings, help="max_position_embeddings"
    )
    p.add_argument(
        "--untied", action="store_true", help="separate lm_head instead of tied embeddings"
    )
    p.add_argument("--shards", type=int, default=1, help="safetensors files (>1 writes an index)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer-vocab", type=int, default=512, help="size of the trained BPE")
    p.add_argument("--tokenizer-from", metavar="DIR", help="copy a real tokenizer folder instead")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    config = TinyConfig(
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.head_dim,
        intermediate_size=args.intermediate,
        vocab_size=args.vocab,
        tie_word_embeddings=not args.untied,
        max_position_embeddings=args.context,
    )
    out = build_tiny_checkpoint(
        args.out,
        config,
        shards=args.shards,
        seed=args.seed,
        tokenizer_from=args.tokenizer_from,
        tokenizer_vocab_size=args.tokenizer_vocab,
        overwrite=args.overwrite,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
