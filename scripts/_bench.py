"""What the benchmarks in scripts/ share: their command line, the models they measure, a
scratch store, how they time a run, and the table of ratios against a named peer that
each prints (and writes as JSON with `--json FILE`).

A script imports it as `_bench` (Python puts a script's own folder first on the import
path). Importing it puts this checkout first too, so a script measures the code beside
it whether or not the package is installed.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from qwen_mlx.runtime import Model

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SHARED_MODELS = ROOT.parent / "shared" / "models"
# A small Qwen3 trained on real text (`target`) and its `draft`: see their SOURCES.md.
TRAINED = SHARED_MODELS / "qwen3-tiny-trained"
# Qwen3-4B-Instruct-2507's real config.json and tokenizer, without weights.
REAL_QWEN3 = SHARED_MODELS / "qwen3-4b-instruct-2507"

# CPython modules whose source the trained pair learned from: the copying prompts.
STDLIB_MODULES = ("textwrap", "shlex", "fnmatch", "bisect", "colorsys", "glob", "heapq", "queue")


def stdlib_texts() -> list[tuple[str, str, str]]:
    """For each of STDLIB_MODULES: 18 non-blank lines of its source (after the first
    20), its first function's first 14 lines, and the first identifier in that code (the
    one an edit prompt renames)."""
    import inspect

    out = []
    for name in STDLIB_MODULES:
        source = inspect.getsource(__import__(name))
        lines = [line for line in source.splitlines() if line.strip()][20:]
        chunk = "\n".join(lines[:18])
        func = next((i for i, line in enumerate(lines) if line.startswith("def ")), 0)
        code = "\n".join(lines[func : func + 14])
        word = next((w for w in code.replace("(", " ").split() if w.isidentifier()), "x")
        out.append((chunk, code, word))
    return out


# Qwen3-4B's proportions at a quarter of its width (attention 1.6x hidden, MLP 3.8x
# hidden, 4:1 grouped-query attention). On a 2-core CPU a decode step of 4 such layers
# takes ~25 ms, about what Qwen3-4B's takes on a Mac, so per-token costs show at the
# scale they would there.
QUARTER_4B = {
    "hidden_size": 640,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 128,
    "intermediate_size": 2432,
}

T = TypeVar("T")

# -- the command line ---------------------------------------------------------------------------


_PARSER = {"allow_abbrev": False, "formatter_class": argparse.RawDescriptionHelpFormatter}


def command(doc: str) -> argparse.ArgumentParser:
    """A script's parser: no abbreviated flags, the docstring shown as written."""
    return argparse.ArgumentParser(description=doc, **_PARSER)


class BenchParser(argparse.ArgumentParser):
    """A benchmark's parser: `command`'s, with the flags every benchmark has (`--smoke`,
    `--json FILE`) and the common ones a benchmark adds (`--model`, `--rounds`).

    `smoke(**values)` says what `--smoke` changes: each named option the command line
    left at its default takes the value given, so a smoke run is short and a flag given
    still wins over it. A benchmark whose whole run is already that short says
    `smoke=False` and has no `--smoke`; one that writes no figures, `json=False`."""

    def __init__(self, doc: str, *, smoke: bool = True, json: bool = True) -> None:
        super().__init__(description=doc, **_PARSER)
        self._smoke: dict[str, Any] = {}
        self.set_defaults(smoke=False, json=None)
        if smoke:
            self.add_argument(
                "--smoke",
                action="store_true",
                help="a tiny model and a short run, seconds: checks that the script works "
                "(the test suite runs it); its figures mean nothing",
            )
        if json:
            self.add_argument(
                "--json", type=Path, metavar="FILE", help="also write the figures to FILE as JSON"
            )

    def rounds(self, default: int, help: str, *old: str) -> None:
        """`--rounds N`; `old` are the names it had before, still accepted."""
        self.add_argument("--rounds", *old, type=int, default=default, metavar="N", help=help)

    def model(self, default: Path, help: str, *old: str) -> None:
        """`--model DIR` (a Hugging Face folder); `old` are its former names."""
        self.add_argument("--model", *old, type=Path, default=default, metavar="DIR", help=help)

    def smoke(self, **values: Any) -> None:
        self._smoke.update(values)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        parsed = super().parse_args(args, namespace)
        if parsed.smoke:
            for dest, value in self._smoke.items():
                if getattr(parsed, dest) == self.get_default(dest):
                    setattr(parsed, dest, value)
        if getattr(parsed, "rounds", 1) < 1:
            self.error("--rounds must be at least 1")
        if parsed.json is not None and parsed.json.is_dir():
            self.error(f"--json {parsed.json} is a folder; name a file")
        return parsed


# -- models ---------------------------------------------------------------------------------------


def need_model(folder: Path, what: str = "a Hugging Face checkpoint") -> Path:
    """`folder`, or a clean exit saying it is missing and how to give another."""
    if not (folder / "config.json").is_file():
        raise SystemExit(f"No {what} at {folder}: pass --model DIR.")
    return folder


@contextmanager
def workspace(prefix: str = "qwen-mlx-bench-") -> Iterator[Path]:
    """A temporary folder, removed afterwards, with the store (`QWEN_MLX_HOME`) inside it
    meanwhile: what a benchmark converts or loads never lands in the user's store."""
    old = os.environ.get("QWEN_MLX_HOME")
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        os.environ["QWEN_MLX_HOME"] = str(Path(tmp) / "home")
        try:
            yield Path(tmp)
        finally:
            if old is None:
                os.environ.pop("QWEN_MLX_HOME", None)
            else:
                os.environ["QWEN_MLX_HOME"] = old


def tiny_checkpoint(folder: Path, shape: Mapping[str, Any] | None = None, **options: Any) -> Path:
    """A random Qwen3 in Hugging Face format: `TinyConfig`'s sizes, those in `shape`
    replaced; `options` go to `build_tiny_checkpoint` (shards, tokenizer_from, ...)."""
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    return build_tiny_checkpoint(folder, TinyConfig(**(shape or {})), **options)


def tiny_model(
    root: Path,
    name: str,
    shape: Mapping[str, Any] | None = None,
    *,
    quantize: bool | None = None,
    **options: Any,
) -> Model:
    """`tiny_checkpoint` at `root / name`, converted and loaded: 4-bit with Metal, bf16 on
    a CPU (MLX's CPU quantized matmuls are ~10x slower than bf16 ones) unless `quantize`
    says; what was built is said on stderr."""
    import mlx.core as mx

    from qwen_mlx import load
    from qwen_mlx.convert import convert

    source = tiny_checkpoint(root / name, shape, **options)
    if quantize is None:
        quantize = mx.metal.is_available()
    model = load(convert(str(source), mlx_path=root / f"{name}-mlx", quantize=quantize).path)
    print(f"{name}: {describe(model)}", file=sys.stderr)
    return model


def quarter_model(root: Path, layers: int = 4, **shape: Any) -> Model:
    """A random Qwen3 of `QUARTER_4B`'s shape with `layers` layers (and `shape`'s other
    sizes), a 1,024-token vocabulary."""
    sizes = {**QUARTER_4B, "num_hidden_layers": layers, **shape}
    return tiny_model(root, "Qwen3-1M-Quarter-2507", sizes, tokenizer_vocab_size=1024)


def describe(model: Model) -> str:
    """ "4.2M parameters, bf16 (CPU backend)": what a table's reader needs of a model."""
    import mlx.core as mx

    backend = "Metal" if mx.metal.is_available() else "CPU backend"
    return f"{model.parameters / 1e6:.1f}M parameters, {model.quantization_label} ({backend})"


# -- timing ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rate:
    """Tokens after the first over the time from the first to the last, on the wall clock
    and in this process's CPU seconds (all its threads). On a shared machine the wall-clock
    rate swings with other programs' load, the CPU rate much less; on a Mac with Metal
    the GPU does the work and only the wall clock means anything."""

    tokens: int
    wall: float
    cpu: float
    text: str = ""

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.wall if self.tokens > 1 and self.wall > 0 else 0.0

    @property
    def cpu_tps(self) -> float:
        return (self.tokens - 1) / self.cpu if self.tokens > 1 and self.cpu > 0 else 0.0


def time_decode(stream: Callable[[Callable[[int, int], None]], Iterable[Any]], tokens: int) -> Rate:
    """Time one stream of `tokens` tokens from its first token (when the prompt-progress
    callback it is given reports the whole prompt read) to its end. `stream(progress)`
    returns the chunks (each with `.text`)."""
    start: list[tuple[float, float]] = []

    def on_progress(done: int, total: int) -> None:
        if done == total and not start:
            start.append((time.perf_counter(), time.process_time()))

    text = "".join(chunk.text for chunk in stream(on_progress))
    wall, cpu = time.perf_counter(), time.process_time()
    if not start:
        raise RuntimeError("The stream never reported its prompt read.")
    return Rate(tokens, wall - start[0][0], cpu - start[0][1], text)


def alternate(
    runs: Mapping[str, Callable[[], T]],
    rounds: int,
    *,
    warm_up: bool = True,
    say: Callable[[int, dict[str, T]], str] | None = None,
) -> dict[str, list[T]]:
    """Each of `runs` `rounds` times, taking turns, the order reversed every other round
    so that none always goes first (warm caches, other programs' load); after one
    unmeasured run of each when `warm_up`. `say(round, results)` is a progress line for
    stderr after each round."""
    if warm_up:
        for run in runs.values():
            run()
    results: dict[str, list[T]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            results[name].append(runs[name]())
        done = {name: got[-1] for name, got in results.items()}
        line = say(i + 1, done) if say is not None else f"round {i + 1} of {rounds}"
        print(f"  {line}", file=sys.stderr, flush=True)
    return results


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """A column of a table: its title, how a number in it shows (`fmt`; a string shows as
    it is, None as "-"), and with `vs` a ratio column after it, titled `vs`, of each
    row's value over the peer row's."""

    title: str
    fmt: str = "{:.1f}"
    vs: str | None = None
    vs_fmt: str = "{:.2f}x"
    left: bool = False  # numbers align right, labels left


def ratio(a: object, b: object) -> float | None:
    """a / b, or None where either is not a number or b is 0."""
    numbers = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (a, b))
    if not numbers or not b or math.isnan(a) or math.isnan(b):  # type: ignore[arg-type]
        return None
    return a / b  # type: ignore[operator]


def cell(value: object, fmt: str = "{}") -> str:
    """How a value shows in a table: a string as it is, a missing figure as "-"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return value if isinstance(value, str) else fmt.format(value)


class Report:
    """What a benchmark prints on stdout, tables and lines; `save()` writes the same
    figures (the tables' raw values, the lines, and anything more the script adds) to
    the `--json` file when there is one."""

    def __init__(self, json_path: Path | None = None) -> None:
        self.json_path = json_path
        self.tables: list[dict[str, Any]] = []
        self.lines: list[str] = []

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        if text:
            self.lines.append(text)

    def table(
        self,
        columns: Sequence[Column],
        rows: Iterable[Sequence[object]],
        *,
        peer: object = None,
        title: str | None = None,
        markdown: bool = False,
        sep: str = "  ",
    ) -> None:
        """Print `rows` (one value per column, the first naming the row) under `title`;
        ratio columns divide by the row whose first value is `peer`. `markdown` prints
        a Markdown table, else columns `sep` apart."""
        rows = [list(row) for row in rows]
        if title:
            self.line()
            self.line(title)
        base = None
        if any(c.vs for c in columns):
            base = next((row for row in rows if row[0] == peer), None)
            if base is None:
                raise ValueError(f"No row is the peer {peer!r}.")
        header: list[str] = []
        right: list[bool] = []
        for c in columns:
            header += [c.title, *([c.vs] if c.vs else [])]
            right += [not c.left, *([True] if c.vs else [])]
        cells: list[list[str]] = []
        records: list[dict[str, object]] = []
        for row in rows:
            shown: list[str] = []
            record: dict[str, object] = {}
            for i, (c, value) in enumerate(zip(columns, row, strict=True)):
                shown.append(cell(value, c.fmt))
                record[c.title] = value
                if c.vs:
                    r = ratio(value, base[i])  # type: ignore[index]
                    shown.append(cell(r, c.vs_fmt))
                    record[c.vs] = r
            cells.append(shown)
            records.append(record)
        widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]

        def layout(line: list[str]) -> list[str]:
            return [
                c.rjust(w) if r else c.ljust(w) for c, w, r in zip(line, widths, right, strict=True)
            ]

        if markdown:
            rule = ["-" * (w - 1) + (":" if r else "-") for w, r in zip(widths, right, strict=True)]
            for line in (layout(header), rule, *(layout(c) for c in cells)):
                print("| " + " | ".join(line) + " |")
        else:
            for line in (header, *cells):
                print(sep.join(layout(line)).rstrip())
        sys.stdout.flush()
        self.tables.append({"title": title, "peer": peer, "rows": records})

    def save(self, **more: Any) -> None:
        """Write the figures to the `--json` file (nothing without one)."""
        if self.json_path is None:
            return
        from qwen_mlx.fileio import atomic_write_json

        atomic_write_json(self.json_path, {"tables": self.tables, "lines": self.lines, **more})


# -- servers ------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on now, on the loopback address."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    command: list[str], port: int, log: Path, headers: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start a server (ours or a peer: `command`, its output to `log`) with this checkout
    first on the import path, and wait up to 300 s until it answers /v1/models."""
    import httpx

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{command[2]} exited early; see {log}:\n{log.read_text()[-2000:]}")
        try:
            url = f"http://127.0.0.1:{port}/v1/models"
            if httpx.get(url, timeout=2, headers=dict(headers or {})).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{command[2]} did not start in 300 s; see {log}")
