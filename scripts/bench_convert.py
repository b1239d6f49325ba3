#!/usr/bin/env python3
"""Convert a Qwen3-4B-shaped checkpoint with qwen-mlx and with `mlx_lm convert`, same run.

The source is a random bf16 checkpoint with the real Qwen3-4B-Instruct-2507 shapes (its
config.json and tokenizer from ../shared), built once into the cache folder (about 8 GB;
`--smoke`: a tiny random Qwen3 instead, built in a temporary folder).
Each converter runs in a fresh process; we report wall time and peak RSS and the ratios
ours / mlx-lm. Targets: time ratio <= 1.05, peak RSS ratio <= 1.0.

    python scripts/bench_convert.py [--cache DIR] [--rounds N] [--q-bits 4] [--json FILE]
                                    [--smoke]

(`--repeat` is the former name of `--rounds`.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _bench import REAL_QWEN3, ROOT, BenchParser, Column, Report, tiny_checkpoint, workspace

SOURCE_NAME = "Qwen3-4B-Instruct-2507"

RUNNER = r"""
import json, resource, sys, time
which, src, out, bits = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
start = time.perf_counter()
if which == "qwen-mlx":
    from qwen_mlx.convert import convert
    convert(src, mlx_path=out, q_bits=bits, q_group_size=64)
else:
    from mlx_lm.convert import convert
    convert(src, mlx_path=out, quantize=True, q_bits=bits, q_group_size=64)
seconds = time.perf_counter() - start
rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss": rss_kb * 1024}))
"""


def build_source(cache: Path) -> Path:
    """A random checkpoint with the real config and tokenizer, written tensor by tensor."""
    import mlx.core as mx

    from qwen_mlx.convert.tensorfile import TensorFileWriter, TensorSpec

    folder = cache / SOURCE_NAME
    if (folder / "model.safetensors.index.json").is_file():
        return folder
    if not (REAL_QWEN3 / "config.json").is_file():
        sys.exit(f"needs the real config and tokenizer in {REAL_QWEN3}")
    tmp = cache / f".{SOURCE_NAME}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "LICENSE",
    ):
        shutil.copyfile(REAL_QWEN3 / name, tmp / name)
    cfg = json.loads((REAL_QWEN3 / "config.json").read_text())
    h, inter, hd = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
    q_out, kv_out = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": (cfg["vocab_size"], h), "model.norm.weight": (h,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}"
        shapes |= {
            f"{p}.input_layernorm.weight": (h,),
            f"{p}.post_attention_layernorm.weight": (h,),
            f"{p}.self_attn.q_proj.weight": (q_out, h),
            f"{p}.self_attn.k_proj.weight": (kv_out, h),
            f"{p}.self_attn.v_proj.weight": (kv_out, h),
            f"{p}.self_attn.o_proj.weight": (h, q_out),
            f"{p}.self_attn.q_norm.weight": (hd,),
            f"{p}.self_attn.k_norm.weight": (hd,),
            f"{p}.mlp.gate_proj.weight": (inter, h),
            f"{p}.mlp.up_proj.weight": (inter, h),
            f"{p}.mlp.down_proj.weight": (h, inter),
        }
    names = sorted(shapes)
    shards = [names[i::3] for i in range(3)]
    weight_map = {}
    for index, group in enumerate(shards, start=1):
        file = f"model-{index:05d}-of-00003.safetensors"
        specs = [TensorSpec(n, "BF16", shapes[n]) for n in group]
        with TensorFileWriter(tmp / file, specs, metadata={"format": "pt"}) as writer:
            for n in group:
                array = (mx.random.normal(shapes[n]) * 0.02).astype(mx.bfloat16)
                mx.eval(array)
                writer.write(n, array)
            writer.close()
        weight_map |= dict.fromkeys(group, file)
        print(f"  wrote {file}", file=sys.stderr)
    index = {"metadata": {}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index))
    os.replace(tmp, folder)
    return folder


def run(which: str, source: Path, bits: int) -> dict:
    with tempfile.TemporaryDirectory(dir=source.parent) as tmp:
        out = Path(tmp) / "out"
        # A store of its own: the run must not touch the user's (the output is --mlx-path).
        env = {**os.environ, "QWEN_MLX_HOME": str(Path(tmp) / "home"), "PYTHONPATH": str(ROOT)}
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, which, str(source), str(out), str(bits)],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        if proc.returncode != 0:
            sys.exit(f"{which} failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result["size"] = sum(p.stat().st_size for p in out.iterdir())
        return result


def main(argv: list[str] | None = None) -> int:
    p = BenchParser(__doc__)
    p.add_argument(
        "--cache",
        type=Path,
        default=Path(os.environ.get("QWEN_MLX_BENCH_CACHE", "bench-cache")),
        help="where the 4B-shaped source is built once (default: $QWEN_MLX_BENCH_CACHE or "
        "./bench-cache)",
    )
    p.rounds(1, "runs of each converter, taking turns (the fastest is kept)", "--repeat")
    p.add_argument("--q-bits", type=int, default=4)
    args = p.parse_args(argv)
    with workspace() as work:
        if args.smoke:
            source = tiny_checkpoint(work / "Qwen3-1M-Tiny-2507")
        else:
            args.cache.mkdir(parents=True, exist_ok=True)
            print(f"source: {args.cache / SOURCE_NAME} (built once)", file=sys.stderr)
            source = build_source(args.cache)
        results: dict[str, list[dict]] = {"qwen-mlx": [], "mlx-lm": []}
        for _ in range(args.rounds):
            for which in ("mlx-lm", "qwen-mlx"):  # turns, so the page cache treats both alike
                r = run(which, source, args.q_bits)
                results[which].append(r)
                print(
                    f"  {which}: {r['seconds']:.1f} s, peak RSS {r['peak_rss'] / 1e9:.2f} GB",
                    file=sys.stderr,
                )
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in results.items()}
    peak = {k: min(r["peak_rss"] for r in v) for k, v in results.items()}
    report = Report(args.json)
    report.table(
        [
            Column("converter", "{}", left=True),
            Column("wall s", vs="time ratio", vs_fmt="{:.3f}"),
            Column("peak RSS MB", "{:,.0f}", vs="RSS ratio", vs_fmt="{:.3f}"),
            Column("output MB", "{:,.1f}"),
        ],
        [
            (k, best[k]["seconds"], peak[k] / 1e6, best[k]["size"] / 1e6)
            for k in ("qwen-mlx", "mlx-lm")
        ],
        peer="mlx-lm",
        title=f"{source.name} at {args.q_bits} bits, group 64; ratios ours / mlx-lm",
    )
    time_ratio = best["qwen-mlx"]["seconds"] / best["mlx-lm"]["seconds"]
    rss_ratio = peak["qwen-mlx"] / peak["mlx-lm"]
    report.line()
    report.line(f"time ratio (ours / mlx-lm): {time_ratio:.3f}   target <= 1.05")
    report.line(f"peak RSS ratio (ours / mlx-lm): {rss_ratio:.3f}   target <= 1.00")
    report.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
