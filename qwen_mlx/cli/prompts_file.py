"""`qwen-mlx generate --prompts-file FILE.jsonl --output OUT.jsonl`: many prompts, one
batch (`runtime.batch_generate`), a progress bar, one result line per prompt.

Each input line is a JSON string (a user message), or an object with `prompt` (text) or
`messages` (a chat), and optionally `id` and sampling fields (`temperature`,
`max_tokens`, `seed`, `stop`, ...) that override the command line's for that prompt.
Each output line, in input order: `id` (if given), `text`, `finish_reason`,
`prompt_tokens`, `completion_tokens`, and with `--draft` `draft_tokens` and
`accepted_draft_tokens`. `--draft lookup|REF` speculates inside the batch, each prompt
on its own; `--kv-bits` quantizes the batch's KV cache. The output is written whole at
the end, or not at all.
"""

from __future__ import annotations

import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .common import ProgressBar

_KEYS = {"id", "prompt", "messages"}


def read_prompts(path: Path) -> list[dict[str, Any]]:
    """The file's prompts as objects; a ValueError naming the line for anything else."""
    from ..runtime import SamplingParams

    sampling = {f.name for f in fields(SamplingParams)}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"Cannot read the prompts file {path} ({e.strerror}).") from e
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} line {number} is not valid JSON ({e.msg}).") from e
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict) or ("prompt" in item) == ("messages" in item):
            raise ValueError(
                f"{path} line {number}: give a JSON string, or an object with either "
                '"prompt" (text) or "messages" (a chat).'
            )
        unknown = set(item) - _KEYS - sampling
        if unknown:
            raise ValueError(
                f"{path} line {number}: unknown field(s) {', '.join(sorted(unknown))}; use "
                f"id, prompt, messages or sampling fields ({', '.join(sorted(sampling))})."
            )
        items.append(item)
    if not items:
        raise ValueError(f"{path} has no prompts: write one JSON value per line.")
    return items


def run(model: Any, args: Any, overrides: dict[str, Any]) -> int:
    """Generate a reply for every prompt of `args.prompts_file` into `args.output`."""
    from ..fileio import atomic_write_text
    from ..runtime import batch_generate

    items = read_prompts(args.prompts_file)
    prompts, params = [], []
    for number, item in enumerate(items, 1):
        if "messages" in item:
            prompt = item["messages"]
        elif args.raw:
            prompt = item["prompt"]
        else:
            prompt = [{"role": "user", "content": item["prompt"]}]
            if args.system:
                prompt.insert(0, {"role": "system", "content": args.system})
        prompts.append(prompt)
        own = {k: v for k, v in item.items() if k not in _KEYS}
        try:
            params.append(model.default_params.replace(**{**overrides, **own}))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{args.prompts_file} prompt {number}: {e}") from e
    bar = ProgressBar(unit="prompts")
    bar.update("generating", 0, len(prompts))
    results = batch_generate(
        model,
        prompts,
        params,
        progress=lambda done, total: bar.update("generating", done, total),
        kv_bits=args.kv_bits,
        draft=args.drafter,
        num_draft_tokens=args.num_draft_tokens,
    )
    bar.finish()
    lines = []
    for item, result in zip(items, results, strict=True):
        out = {"id": item["id"]} if "id" in item else {}
        out.update(
            text=result.text,
            finish_reason=result.finish_reason,
            prompt_tokens=result.prompt_tokens,
            completion_tokens=result.completion_tokens,
        )
        if args.drafter is not None:
            out.update(draft_tokens=result.drafted, accepted_draft_tokens=result.accepted)
        lines.append(json.dumps(out, ensure_ascii=False) + "\n")
    atomic_write_text(args.output, "".join(lines))
    generated = sum(r.completion_tokens for r in results)
    drafts = ""
    if args.drafter is not None:
        drafted = sum(r.drafted for r in results)
        accepted = sum(r.accepted for r in results)
        drafts = f"; {accepted:,} of {drafted:,} drafted tokens accepted"
    print(
        f"wrote {len(results)} replies ({generated:,} tokens{drafts}) to {args.output}",
        file=sys.stderr,
    )
    return 0
