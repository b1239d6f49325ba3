"""One rank of test_distributed.py's two-process checks: every rank runs this same script
(the way `mlx.launch` runs a program), with MLX_RANK and MLX_HOSTFILE set, and writes
what it saw to OUT/rank<N>.json for the tests to assert on.

    python tests/distributed_worker.py OUT FLOAT32_MODEL SCALED_MODEL
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path, f32: str, scaled: str) -> None:
    import mlx.core as mx

    from qwen_mlx.runtime import SamplingParams, generate, load, make_cache, prefill, stream_tokens
    from qwen_mlx.runtime.cachesplit import _arrays, describe, gather, scatter
    from qwen_mlx.runtime.distributed import broadcast, exchange, join_group, shared_flag
    from qwen_mlx.runtime.memory import weights_bytes_on_disk
    from qwen_mlx.runtime.sharding import checkpoint_layer_bytes, share_bytes

    group = join_group()
    rank = group.rank()
    seen: dict = {"rank": rank, "size": group.size()}

    # Collectives, both ways round the ring.
    seen["all_sum"] = mx.distributed.all_sum(mx.array([rank + 1.0]), group=group).tolist()
    seen["all_gather"] = mx.distributed.all_gather(mx.array([rank * 10]), group=group).tolist()
    peer = 1 - rank
    for sender in (0, 1):  # each way in turn: a send waits for its receiver
        if rank == sender:
            mx.eval(mx.distributed.send(mx.arange(4) + 100 * rank, peer, group=group))
        else:
            seen["received"] = mx.distributed.recv((4,), mx.int32, peer, group=group).tolist()
    mine = mx.array([7, 8, 9], mx.int32) if rank == 0 else mx.zeros((3,), mx.int32)
    seen["broadcast"] = broadcast(group, mine).tolist()
    seen["exchange"] = exchange(group, {"rank": rank, "word": f"r{rank}"})
    seen["flag"] = [shared_flag(group, rank == 0), shared_flag(group, rank == 1)]

    # The same model whole, split by heads and split by layers.
    tokens = mx.array([[3, 17, 42, 99, 5, 61, 7, 200]])
    whole = load(f32)
    reference = whole.model(tokens)
    greedy = SamplingParams(temperature=0, max_tokens=24)
    sampled = SamplingParams(temperature=0.9, top_k=40, seed=5, max_tokens=24)
    expected = [generate(whole, "Tell me a story", p) for p in (greedy, sampled)]
    ids = whole.encode("Once upon a time")

    def quantized_reply(model) -> str:  # through an 8-bit KV cache
        chunks = stream_tokens(model, ids, greedy, prompt_cache=make_cache(model, 8))
        return "".join(c.text for c in chunks)

    def largest_difference(a: list, b: list) -> float:
        return max(
            mx.abs(x.astype(mx.float32) - y.astype(mx.float32)).max().item()
            for la, lb in zip(a, b, strict=True)
            for x, y in zip(_arrays(la), _arrays(lb), strict=True)
        )

    whole_cache = make_cache(whole)
    prefill(whole, ids, whole_cache)
    for name, pipeline in (("tensor", False), ("pipeline", True)):
        split = load(f32, group=group, pipeline=pipeline)
        logits = split.model(tokens)
        seen[name] = {
            "max_logit_diff": mx.abs(logits - reference).max().item(),
            "bit_exact": bool(mx.array_equal(logits, reference).item()),
            "same_greedy": generate(split, "Tell me a story", greedy) == expected[0],
            "same_sampled": generate(split, "Tell me a story", sampled) == expected[1],
            "same_quantized_kv": quantized_reply(split) == quantized_reply(whole),
        }
        # A split cache put together on rank 0, then split again.
        share = make_cache(split)
        prefill(split, ids, share)
        gathered = gather(split, share)
        if rank == 0:
            seen[name]["gathered_diff"] = largest_difference(gathered, whole_cache)
        again = scatter(split, gathered, layout=describe(whole_cache))
        seen[name]["scattered_diff"] = largest_difference(again, share)
        del split

    # Loading: never more than this rank's share plus one layer of the checkpoint.
    layer = checkpoint_layer_bytes(Path(scaled))
    for name, pipeline in (("tensor", False), ("pipeline", True)):
        split = load(scaled, group=group, pipeline=pipeline)
        share, _ = share_bytes(split.model)
        seen[f"load_{name}"] = {
            "peak": split.shard.ranks[rank].peak_bytes,
            "share": share,
            "layer": layer,
            "whole": weights_bytes_on_disk(scaled),
        }
        del split
    (out / f"rank{rank}.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
