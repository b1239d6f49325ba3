"""`qwen-mlx generate`: one reply, streamed to stdout; stats on stderr.

With `--session FILE` the reply continues the conversation saved in FILE (created when
missing) and the conversation, KV cache included, is saved back: the next call reads only
the new message. With `--prompts-file FILE.jsonl --output OUT.jsonl` every prompt of FILE
is answered, decoded together in one batch (see `prompts_file.py`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..chat.policy import ContextPolicy
from .common import (
    DEFAULT_MODEL,
    INTERRUPTED,
    ProgressBar,
    add_draft_args,
    add_group_args,
    add_model_arg,
    add_sampling_args,
    command_parser,
    draft_from_args,
    format_stats,
    group_load_args,
    guarded,
    model_ref,
    ranks_from_args,
    sampling_overrides,
)

PREFILL_BAR_FROM = 2048  # tokens: shorter prompts prefill too fast for a bar

EXAMPLES = """\
examples:
  qwen-mlx generate --prompt "Write a haiku about unified memory"
  qwen-mlx generate --model qwen3-4b-instruct-2507-mlx-q8-g64 --prompt - < question.txt
  qwen-mlx generate --session trip.json --prompt "Plan a day in Kyoto"
  qwen-mlx generate --session trip.json --prompt "Make it cheaper"   # reads only this turn
  qwen-mlx generate --mcp tools.json --prompt "What is in my notes about Kyoto?"
  qwen-mlx generate --prompts-file questions.jsonl --output answers.jsonl --temperature 0
  qwen-mlx generate --draft lookup --prompt - < fix-this-function.py
  qwen-mlx generate --hosts hosts.json --prompt - < long-report.txt   # across two Macs
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "generate",
        "Generate a reply with the model's chat template and sampling defaults.",
        EXAMPLES,
    )
    add_model_arg(
        p,
        help="store name, family (its latest), folder or repo id (default: the model "
        f"saved in --session, else {DEFAULT_MODEL}, else the most recently converted model "
        "that is not a draft)",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", "-p", help="the user message; '-' reads stdin")
    source.add_argument(
        "--prompts-file",
        type=Path,
        metavar="FILE",
        help="a JSONL file of prompts, answered together in one batch (needs --output; "
        "--draft and --kv-bits work inside the batch)",
    )
    p.add_argument(
        "--output",
        "-o",
        type=Path,
        metavar="FILE",
        help="where --prompts-file's replies go (JSONL)",
    )
    p.add_argument("--system", "-s", help="system prompt (for a new conversation)")
    p.add_argument(
        "--raw", action="store_true", help="send the prompt as-is, without the chat template"
    )
    p.add_argument("--verify", action="store_true", help="check every file's sha256 before loading")
    p.add_argument("--session", type=Path, metavar="FILE", help="continue and save a conversation")
    p.add_argument("--kv-bits", type=int, choices=(4, 8), help="quantize the KV cache")
    p.add_argument(
        "--policy",
        choices=ContextPolicy.names(),
        default=None,
        help="when the conversation does not fit: leave out the oldest turns (default), "
        "quantize the KV cache, or refuse",
    )
    p.add_argument(
        "--json-schema",
        type=Path,
        metavar="FILE",
        help="constrain the reply to JSON valid for the schema in FILE",
    )
    p.add_argument(
        "--context-extension",
        type=float,
        metavar="F",
        help="YaRN rope scaling: F x the model's native context",
    )
    p.add_argument(
        "--mcp",
        type=Path,
        metavar="CONFIG",
        help="give the model the tools of the MCP servers in CONFIG's `mcp` section (JSON); "
        "calls to servers not marked trusted are asked about on the terminal",
    )
    add_sampling_args(p)
    add_draft_args(p)
    add_group_args(p)
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with ranks_from_args(args) as ranks:
        args.load_group = group_load_args(args, ranks)
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    if args.prompts_file is not None:
        return _prompts_file(args)
    if args.output is not None:
        raise ValueError("--output goes with --prompts-file; a single reply goes to stdout.")
    if args.raw and (args.session or args.kv_bits or args.policy or args.system or args.mcp):
        raise ValueError(
            "--raw sends text without the chat template; it cannot be combined "
            "with --system, --session, --kv-bits, --policy or --mcp."
        )
    from .mcp import mcp_tools

    interactive = args.prompt != "-" and sys.stdin.isatty()
    with mcp_tools(args.mcp, interactive=interactive) as tools:
        return _generate(args, tools)


def _generate(args: argparse.Namespace, tools) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    schema = _read_schema(args.json_schema) if args.json_schema else None
    from ..runtime import load

    model = load(
        _model_ref(args),
        verify=args.verify,
        context_extension=args.context_extension,
        **args.load_group,
    )
    args.drafter = draft_from_args(model, args)
    bar = ProgressBar(min_total=PREFILL_BAR_FROM)
    if args.raw:
        from ..runtime import stream_generate

        chunks = stream_generate(
            model,
            prompt,
            json_schema=schema,
            prompt_progress=lambda d, t: bar.update("prefill", d, t),
            draft=args.drafter,
            num_draft_tokens=args.num_draft_tokens,
            **sampling_overrides(args),
        )
        last = _stream(chunks, bar)
        print(format_stats(last), file=sys.stderr)
        return 0

    session = _open_session(model, args, tools)
    session.prefill_progress = lambda done, total: bar.update("prefill", done, total)
    for notice in session.notices:
        print(f"note: {notice}", file=sys.stderr)
    stream = session.send(prompt, json_schema=schema, **sampling_overrides(args))
    try:
        last = _stream(stream, bar)
    except KeyboardInterrupt:
        stream.close()  # ends the turn: the partial reply is recorded, the session idle
        if args.session:
            session.save(args.session)
            print(f"\ninterrupted; the partial reply is saved in {args.session}.", file=sys.stderr)
        return INTERRUPTED
    stats = session.last_stats
    for notice in stats.notices:
        print(f"note: {notice}", file=sys.stderr)
    print(format_stats(last), file=sys.stderr)
    print(
        f"context: {stats.prompt_tokens:,} prompt tokens, {stats.prefilled_tokens:,} read "
        f"this turn, {stats.reused_tokens:,} from the cache",
        file=sys.stderr,
    )
    if args.session:
        session.save(args.session)
    return 0


def _prompts_file(args: argparse.Namespace) -> int:
    if args.output is None:
        raise ValueError("--prompts-file needs --output FILE.jsonl for the replies.")
    if args.session or args.policy or args.json_schema or args.mcp:
        raise ValueError(
            "--prompts-file answers each prompt on its own, in one batch; it cannot be "
            "combined with --session, --policy, --json-schema or --mcp."
        )
    from . import prompts_file

    prompts_file.read_prompts(args.prompts_file)  # a bad file fails before the model loads
    from ..runtime import load

    model = load(
        _model_ref(args),
        verify=args.verify,
        context_extension=args.context_extension,
        **args.load_group,
    )
    args.drafter = draft_from_args(model, args)
    return prompts_file.run(model, args, sampling_overrides(args))


def _model_ref(args: argparse.Namespace) -> str:
    """--model, else the model a saved --session was made with (as `chat` does), else the
    default (see common.default_model)."""
    if args.model:
        return args.model
    if args.session and args.session.exists():
        from ..chat.saved import read_session

        saved = read_session(args.session).get("model")
        for key in ("ref", "name"):  # "ref" loads from anywhere; older files have "name"
            if isinstance(saved, dict) and isinstance(saved.get(key), str) and saved[key]:
                return saved[key]
    return model_ref(args)


def _read_schema(path: Path) -> dict:
    import json

    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise FileNotFoundError(f"Cannot read the schema file {path} ({e.strerror}).") from e
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}).") from e


def _open_session(model, args, tools=None):
    from ..chat.session import ChatSession

    extra = tools.session_kwargs() if tools else {}
    if args.session and args.session.exists():
        session = ChatSession.load(
            args.session,
            model,
            policy=args.policy,
            draft=args.drafter,
            num_draft_tokens=args.num_draft_tokens,
            **extra,
        )
        if args.kv_bits and session.kv_bits != args.kv_bits:
            session.set_kv_bits(args.kv_bits)
        if args.system:
            session.system = args.system
    else:
        session = ChatSession(
            model,
            system=args.system,
            policy=args.policy or ContextPolicy.TRUNCATE,
            kv_bits=args.kv_bits,
            draft=args.drafter,
            num_draft_tokens=args.num_draft_tokens,
            **extra,
        )
    if tools:
        session.on_tool_call = tools.show
    return session


def _stream(chunks, bar: ProgressBar):
    last = None
    started = False
    for last in chunks:
        if not started:
            bar.finish()
            started = True
        sys.stdout.write(last.text)
        sys.stdout.flush()
    bar.finish()
    sys.stdout.write("\n")
    return last


if __name__ == "__main__":
    raise SystemExit(main())
