"""What every subcommand shares: error reporting, progress bars, sampling flags."""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TextIO

from ..errors import QwenMLXError
from ..fileio import human_bytes

INTERRUPTED = 130
# How a shell reports a command ended by SIGPIPE (`yes | head`): 128 + 13.
BROKEN_PIPE = 128 + getattr(signal, "SIGPIPE", 13)
DEFAULT_MODEL = "qwen3-4b-instruct"
# Without a terminal, work smaller than this shows its stage line only.
QUIET_BELOW = 256 << 20
# Said where a quantized model would be made or suggested on a machine without Metal.
CPU_QUANT_NOTE = (
    "note: without Metal (MLX's CPU backend, as on Linux) a 4-bit model reads prompts about "
    "30x slower than a bf16 one (Qwen3-4B: 15 vs 432 tokens/s), so a long prompt or an "
    "attachment takes minutes. To use the model on this machine, convert with --no-quantize."
)


def guarded(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn our errors into `error: ...` on stderr and an exit code, never a traceback.

    Output piped into a reader that stops early (`| head`) ends the command quietly with
    the status a shell gives a command killed by SIGPIPE, as Unix tools do."""

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> int:
        try:
            code = main(argv)
            sys.stdout.flush()  # a reader that went away shows up here, not at exit
            return code
        except BrokenPipeError:
            return _reader_gone()
        except QwenMLXError as e:
            print(f"error: {e}", file=sys.stderr)
            return e.exit_code
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except OSError as e:  # a file we could not read or write: say which and why
            where = f": {e.filename}" if e.filename else ""
            print(f"error: {e.strerror or e}{where}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("\ninterrupted.", file=sys.stderr)
            return INTERRUPTED
        except Exception as e:
            if os.environ.get("QWEN_MLX_DEBUG"):
                raise
            print(
                f"error: unexpected {type(e).__name__}: {e} "
                "(run with QWEN_MLX_DEBUG=1 for the traceback)",
                file=sys.stderr,
            )
            return 1

    return wrapper


def _reader_gone() -> int:
    """Point stdout at /dev/null, so that Python's own flush at exit has nowhere to fail
    ("Exception ignored ... BrokenPipeError"), and return the SIGPIPE status."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # stdout is not a file (captured by a test, say)
        pass
    return BROKEN_PIPE


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose errors suggest the flag a mistyped one was meant to be
    (`--promt`: did you mean --prompt?), as an unknown command gets the command."""

    _given: list[str] = []

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self._given = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # type: ignore[override]
        super().error(message + self._suggestions())

    def _options(self) -> set[str]:
        """Every flag of this parser and of its subcommands."""
        found = set(self._option_string_actions)
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    found |= sub._options() if isinstance(sub, ArgumentParser) else set()
        return found

    def _suggestions(self) -> str:
        import difflib

        known = self._options()
        said = []
        for arg in self._given:
            if arg == "--":
                break
            flag = arg.split("=", 1)[0]
            if not flag.startswith("-") or flag in known or flag.lstrip("-").isdigit():
                continue
            close = difflib.get_close_matches(flag, sorted(known), n=1, cutoff=0.6)
            if close:
                said.append(f"{flag}: did you mean {' or '.join(close)}?")
        return "".join(f"\n  {line}" for line in said)


class ParagraphFormatter(argparse.HelpFormatter):
    """Help whose description and epilog are paragraphs (separated by blank lines), each
    filled to the terminal's width, so a sentence never breaks where the source text did;
    indented lines (examples, tables) keep their own line breaks."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        import re
        import textwrap

        out: list[str] = []
        for block in re.split(r"\n[ \t]*\n", text.strip("\n")):
            prose: list[str] = []
            for line in [*block.splitlines(), ""]:
                if line and not line[0].isspace():
                    prose.append(line.strip())
                    continue
                if prose:
                    out += textwrap.wrap(
                        " ".join(prose),
                        width,
                        initial_indent=indent,
                        subsequent_indent=indent,
                        break_on_hyphens=False,
                        break_long_words=False,
                    )
                    prose = []
                if line:
                    out.append(indent + line)
            out.append("")
        return "\n".join(out).rstrip("\n")


def command_parser(
    name: str, description: str, epilog: str | None = None, *, raw: bool = True
) -> argparse.ArgumentParser:
    """The parser of `qwen-mlx NAME`: no abbreviated flags; the description and epilog are
    paragraphs filled to the terminal (ParagraphFormatter), with `raw` their indented lines
    as written (else argparse wraps everything)."""
    return ArgumentParser(
        allow_abbrev=False,
        prog=f"qwen-mlx {name}",
        description=description,
        epilog=epilog,
        formatter_class=ParagraphFormatter if raw else argparse.HelpFormatter,
    )


def format_table(rows: Sequence[Sequence[object]], *, right_align: Iterable[int] = ()) -> list[str]:
    """Rows (the first is the header) as lines of columns two spaces apart; columns in
    `right_align` are right-aligned, the last column is never padded."""
    cells = [[str(c) for c in row] for row in rows]
    if not cells:
        return []
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    right = set(right_align)
    return [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]


def print_table(
    rows: Sequence[Sequence[object]], *, right_align: Iterable[int] = (), file: TextIO | None = None
) -> None:
    """`format_table`, printed."""
    for line in format_table(rows, right_align=right_align):
        print(line, file=file or sys.stdout)


class ProgressBar:
    """Progress on a terminal: a one-line bar per stage that has a total, a line per stage
    that has none (`validate: ./my-finetune`). Elsewhere (logs, pipes) only those stage
    lines, and for large work (or with a `unit`) one line per quarter: never one line per
    tensor or file.

    With a `unit` ("tokens", say) the bar counts them (`1,024/8,000 tokens`) and estimates
    the time left from the rate so far in the stage; "bytes" counts sizes (`1.2 GB/8.0
    GB`), and names a stage's size on its line elsewhere (`convert: 8.0 GB`)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        width: int = 30,
        min_total: int = 0,
        unit: str | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.min_total = min_total  # smaller work shows nothing at all
        self.tty = self.stream.isatty()
        self.width = width
        self.unit = unit
        self._stage = ""
        self._last_draw = 0.0
        self._last_quarter = -1
        self._done = 0
        self._started = (0.0, 0)  # when the stage began, and its count then
        self._on_line = False  # a bar is drawn and its line not ended yet
        self._pending: tuple[int, int, str] | None = None  # the latest state not drawn

    def advance(self, stage: str, n: int, total: int, detail: str = "") -> None:
        """Add `n` to the running count of this stage and redraw."""
        self._done = (self._done if stage == self._stage else 0) + n
        self.update(stage, self._done, total, detail)

    def update(self, stage: str, done: int = 0, total: int = 0, detail: str = "") -> None:
        """A stage's progress. `detail` says what the stage works on when it has no total
        (a folder, a repo); with a total it is the current item, shown in the bar only."""
        if total < self.min_total:
            return
        now = time.monotonic()
        if stage != self._stage:
            self.finish()
            self._stage = stage
            self._last_quarter = -1
            self._started = (now, done)
            if not total or not self.tty:
                said = f"{stage}: {detail}" if detail and not total else stage
                if total and self.unit == "bytes":
                    said += f": {human_bytes(total)}"
                print(said, file=self.stream, flush=True)
        if not total:
            return
        frac = min(done / total, 1.0)
        if self.tty:
            if now - self._last_draw < 0.1 and done < total:
                self._pending = (done, total, detail)  # drawn later, or by finish()
                return
            self._draw(now, done, total, detail)
        elif (self.unit and self.unit != "bytes") or total >= QUIET_BELOW:
            quarter = int(frac * 4)
            if quarter > self._last_quarter:
                self._last_quarter = quarter
                count = f" ({self._count(done, total)})" if self.unit else ""
                print(f"{stage}: {frac:.0%}{count}", file=self.stream, flush=True)

    def _draw(self, now: float, done: int, total: int, detail: str) -> None:
        self._last_draw = now
        self._pending = None
        frac = min(done / total, 1.0)
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        if self.unit:
            detail = f"{self._count(done, total)}{self._eta(now, done, total)} {detail}"
        line = f"\r{self._stage:<9} [{bar}] {frac:6.1%} {detail[:48]:<48}"
        self.stream.write(line)
        self.stream.flush()
        self._on_line = True

    def _count(self, done: int, total: int) -> str:
        if self.unit == "bytes":
            return f"{human_bytes(done)}/{human_bytes(total)}"
        return f"{done:,}/{total:,} {self.unit}"

    def _eta(self, now: float, done: int, total: int) -> str:
        """`, 1:05 left` from the stage's rate so far; empty until there is one."""
        began, at_start = self._started
        rate = (done - at_start) / (now - began) if now > began else 0.0
        if rate <= 0 or done >= total:
            return ""
        left = int((total - done) / rate)
        return f", {left // 60}:{left % 60:02d} left"

    def finish(self) -> None:
        """End the stage: its last state drawn (a throttled update is not lost), and the
        bar's line ended."""
        if self._pending is not None:
            self._draw(time.monotonic(), *self._pending)
        if self._on_line:
            self.stream.write("\n")
            self.stream.flush()
            self._on_line = False
        self._stage = ""


def add_model_arg(parser: argparse.ArgumentParser, *, help: str = "") -> None:
    """`--model REF`: what every command that runs the model accepts; without it,
    `model_ref(args)` picks one."""
    parser.add_argument(
        "--model",
        "-m",
        help=help
        or f"store name, family (its latest), folder or repo id (default: {DEFAULT_MODEL}, "
        "else the most recently converted model that is not a draft)",
    )


def model_ref(args: argparse.Namespace) -> str:
    """--model, else `default_model` (leaving out this run's --draft)."""
    return args.model or default_model(draft=getattr(args, "draft", None))


def default_model(*, draft: str | None = None) -> str:
    """The model a command runs when none is named: qwen3-4b-instruct's latest when the
    store has one; else the most recently converted or imported model that was never
    used as a draft (nor is `draft`), said on stderr; else qwen3-4b-instruct, whose
    absence loading explains."""
    from ..store import Store

    store = Store()
    try:
        if store.latest(DEFAULT_MODEL) is not None:
            return DEFAULT_MODEL
        recent = store.recent_model(exclude=(draft,) if draft and draft != "lookup" else ())
    except (QwenMLXError, OSError):  # an unreadable store: loading will say what is wrong
        recent = None
    finally:
        store.close()
    if recent is None:
        return DEFAULT_MODEL
    print(f"model: {recent} (the most recently converted; --model picks another)", file=sys.stderr)
    return recent


def add_sampling_args(parser: argparse.ArgumentParser) -> None:
    """Flags for SamplingParams; unset ones keep the model's generation_config defaults."""
    g = parser.add_argument_group("sampling (defaults: the model's generation_config.json)")
    g.add_argument("--temperature", "--temp", type=float, help="0 is greedy")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (0: off)")
    g.add_argument("--min-p", type=float, help="drop tokens below min_p x the top probability")
    g.add_argument("--repetition-penalty", type=float)
    g.add_argument("--presence-penalty", type=float)
    g.add_argument("--frequency-penalty", type=float)
    g.add_argument("--seed", type=int, help="same seed, same text")
    g.add_argument("--max-tokens", "-n", type=int, help="reply length limit (default 1024)")
    g.add_argument(
        "--stop",
        action="append",
        default=None,
        metavar="TEXT",
        help="end the reply at TEXT (not included); repeatable",
    )


def sampling_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplingParams fields given on the command line (see add_sampling_args)."""
    from dataclasses import fields

    from ..runtime import SamplingParams

    keys = [f.name for f in fields(SamplingParams)]
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def format_stats(chunk: Any) -> str:
    """One line of generation stats for stderr."""
    line = (
        f"prompt: {chunk.prompt_tokens} tokens, {chunk.prompt_tps:.1f} tokens/s | "
        f"generation: {chunk.generation_tokens} tokens, {chunk.generation_tps:.1f} tokens/s | "
        f"first token: {chunk.time_to_first_token * 1000:.0f} ms | "
        f"peak memory: {human_bytes(chunk.peak_memory * 1e9)} | finish: {chunk.finish_reason}"
    )
    if getattr(chunk, "drafted", 0):
        line += f" | {format_acceptance(chunk)}"
    return line


def format_acceptance(stats: Any) -> str:
    """Speculative decoding's figures: `draft: 42/60 accepted (70%)`."""
    return f"draft: {stats.accepted}/{stats.drafted} accepted ({stats.acceptance_rate:.0%})"


def add_draft_args(parser: argparse.ArgumentParser, note: str = "") -> None:
    """--draft and --num-draft-tokens (speculative decoding); `note` ends --draft's help."""
    g = parser.add_argument_group("speculative decoding (same output, faster)")
    g.add_argument(
        "--draft",
        metavar="lookup|REF",
        help="'lookup' drafts from the prompt and the reply so far; a model reference "
        "(store name, folder) drafts with that small model, which must share the tokenizer" + note,
    )
    g.add_argument(
        "--num-draft-tokens",
        type=int,
        metavar="K",
        help="most tokens drafted per step (default: 8 for lookup, 4 for a model; "
        "fewer when acceptance does not pay)",
    )


def draft_from_args(model: Any, args: argparse.Namespace) -> Any:
    """A drafter for --draft (None without it); the draft model loads here, and a
    tokenizer mismatch is an error before any generation."""
    k = getattr(args, "num_draft_tokens", None)
    if k is not None and k < 0:
        raise ValueError("--num-draft-tokens must be 0 or more.")
    if not getattr(args, "draft", None):
        if k is not None:
            raise ValueError("--num-draft-tokens needs --draft lookup or --draft REF.")
        return None
    from ..runtime import make_drafter

    drafter = make_drafter(model, args.draft)
    if args.draft != "lookup":
        note_draft(args.draft)
    return drafter


def note_draft(ref: str) -> None:
    """Remember in the store that `ref` served as a draft, so that no command picks it as
    the model when none is named; a store that cannot record it changes nothing else."""
    from ..store import Store

    try:
        store = Store()
        try:
            store.note_draft(ref)
        finally:
            store.close()
    except (QwenMLXError, OSError):
        pass


GROUP_FLAGS = ("--ranks", "--hosts", "--pipeline")


def add_group_args(parser: argparse.ArgumentParser) -> None:
    """--ranks, --hosts and --pipeline: one model split across processes or Macs."""
    g = parser.add_argument_group(
        "one model across several processes or Macs (mx.distributed; see the README)"
    )
    g.add_argument(
        "--ranks",
        type=int,
        metavar="N",
        help="split the model across N processes on this machine (to try a group out: on "
        "one Mac it is slower, not faster)",
    )
    g.add_argument(
        "--hosts",
        metavar="FILE",
        help="split the model across the Macs in FILE, a host file as `mlx.distributed_config` "
        "writes it (ring or JACCL); this Mac must be its first host",
    )
    g.add_argument(
        "--pipeline",
        action="store_true",
        help="split by layers (pipeline parallel) instead of by attention heads (tensor "
        "parallel, the default)",
    )


@contextlib.contextmanager
def ranks_from_args(args: argparse.Namespace, *, echo: bool = True) -> Iterator[Any]:
    """The group --ranks or --hosts asks for, started (None without either, or for one
    rank), and ended on the way out. `echo` passes the other ranks' output to stderr."""
    ranks_n, hosts_file = getattr(args, "ranks", None), getattr(args, "hosts", None)
    if ranks_n is not None and hosts_file is not None:
        raise ValueError("--ranks and --hosts do not combine: --hosts lists every rank.")
    if ranks_n is not None and ranks_n < 1:
        raise ValueError("--ranks must be at least 1.")
    if getattr(args, "pipeline", False) and ranks_n is None and hosts_file is None:
        raise ValueError("--pipeline splits the model across ranks: add --ranks N or --hosts.")
    if getattr(args, "draft", None) and (ranks_n or hosts_file):
        raise ValueError("--draft does not run on a model split across ranks (yet).")
    from ..runtime.launch import HostFile, Ranks

    hosts = HostFile.read(hosts_file) if hosts_file else HostFile.local(ranks_n or 1)
    if len(hosts) < 2:
        yield None
        return
    sink = (lambda rank, line: print(f"[rank {rank}] {line}", file=sys.stderr)) if echo else None
    ranks = Ranks(hosts, sink=sink)
    ranks.start()
    try:
        yield ranks
    finally:
        ranks.close()


def group_load_args(args: argparse.Namespace, ranks: Any) -> dict[str, Any]:
    """What `load` gets for the group (nothing without one)."""
    if ranks is None:
        return {}
    return {"group": ranks, "pipeline": bool(getattr(args, "pipeline", False))}
