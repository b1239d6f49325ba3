"""Quantization beyond round-to-nearest: mlx's formats (affine, mxfp4, nvfp4, mxfp8) and
learned methods (AWQ, GPTQ, DWQ, dynamic), run as one step of `convert`.

AWQ, DWQ and dynamic's sensitivities are mlx-lm's own (`mlx_lm.quant.awq`, `.dwq`,
`.dynamic_quant`); GPTQ is ours (`gptq.py`: it also quantizes the tied embedding, block by
block, with act-order). What is ours besides: options checked before any work,
calibration text from a file or the package (theirs comes from the Hub), read in pieces
up to a cap, a memory check against the planner's budget, their tqdm bars turned into
our progress events (so Ctrl-C and the CLI's bar work as for every other stage), an
exact bit budget for `--target-bpw`, and a plan of which layer ended up with which bits,
for the manifest.

Every method needs the whole model in memory (they run it on the calibration text), so
unlike the streaming round-to-nearest path, peak memory is a few times the weights; see
`method_memory`.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import io
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..store.manifest import CalibrationInfo
from .progress import Progress, ProgressFn


@dataclass(frozen=True)
class ModeRule:
    """The bits and group sizes a quantization mode can store, and its defaults."""

    bits: tuple[int, ...]
    group_sizes: tuple[int, ...]
    default_bits: int
    default_group_size: int
    scale_bits: int  # per group: bf16 scale and bias for affine, one 8-bit scale otherwise


MODES = {
    "affine": ModeRule((2, 3, 4, 5, 6, 8), (32, 64, 128), 4, 64, 32),
    "mxfp4": ModeRule((4,), (32,), 4, 32, 8),
    "nvfp4": ModeRule((4,), (16,), 4, 16, 8),
    "mxfp8": ModeRule((8,), (32,), 8, 32, 8),
}
Q_MODES = tuple(MODES)
# dynamic-gptq: dynamic's choice of the layers that get more bits, GPTQ for the rest.
METHODS = ("awq", "gptq", "dwq", "dynamic", "dynamic-gptq")
# mlx-lm's GPTQ packs the integers itself and asserts these.
GPTQ_BITS = (2, 4, 8)
# Calibration: at most MAX_WINDOWS windows of SEQUENCE_LENGTH tokens (mlx-lm's scripts take
# 128 of 512), so a file of any size costs at most that many tokens, read in pieces.
SEQUENCE_LENGTH = 512
MAX_WINDOWS = 128
MAX_TOKENS = SEQUENCE_LENGTH * MAX_WINDOWS
MIN_SAMPLES = 4  # windows: DWQ's batch, and enough for a Hessian or a sensitivity
# Peak memory of each method in multiples of the float weights (a teacher and a student,
# gradients, Adam's moments for DWQ; a copy for the dynamic search), measured on CPU.
MEMORY_FACTOR = {"awq": 2.5, "gptq": 2.5, "dwq": 4.0, "dynamic": 3.5, "dynamic-gptq": 3.5}
# DWQ's defaults in mlx-lm (1e-6, one pass over 2048 long samples) suit its Hub data set;
# a few KB of calibration text needs a higher rate and several passes to move at all.
DWQ_LEARNING_RATE = 1e-5
DWQ_EPOCHS = 8
DWQ_BATCH = 4
AWQ_GRID = 10  # the grid LEARNED_QUANTS.md documents (the code's default, 20, is twice the work)


def uniform_bpw(bits: int, group_size: int, mode: str = "affine") -> float:
    """Bits per weight of a layer quantized uniformly (its scales and biases counted)."""
    return bits + MODES[mode].scale_bits / group_size


@cache
def supported_modes() -> tuple[str, ...]:
    """The modes the installed mlx can quantize with (tried on a tiny array)."""
    import mlx.core as mx

    found = []
    for mode, rule in MODES.items():
        try:
            w = mx.zeros((8, 2 * rule.default_group_size))
            mx.eval(
                mx.quantize(
                    w, group_size=rule.default_group_size, bits=rule.default_bits, mode=mode
                )
            )
        except (ValueError, RuntimeError, TypeError):
            continue
        found.append(mode)
    return tuple(found)


@dataclass(frozen=True)
class QuantOptions:
    """What to quantize with, checked and with each mode's defaults filled in."""

    mode: str
    bits: int
    group_size: int
    method: str | None = None
    target_bpw: float | None = None
    high_bits: int | None = None  # dynamic: the bits of the sensitive layers


def resolve_options(
    *,
    mode: str,
    bits: int | None,
    group_size: int | None,
    method: str | None,
    target_bpw: float | None,
    recipe: str | None,
    calibration: str | Path | None,
) -> QuantOptions:
    """Check the quantization flags together and fill in what a mode implies; raise
    ValueError saying what to pass instead, before any work starts."""
    if mode not in MODES:
        raise ValueError(f"--q-mode must be one of {', '.join(Q_MODES)}, not {mode!r}.")
    if mode not in supported_modes():
        import mlx.core as mx

        raise ValueError(
            f"The installed mlx ({mx.__version__}) cannot quantize with --q-mode {mode}; "
            f"choose one of {', '.join(supported_modes())} or upgrade mlx."
        )
    rule = MODES[mode]
    if method is not None and method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, not {method!r}.")
    if target_bpw is not None and method not in ("dynamic", "dynamic-gptq"):
        raise ValueError("--target-bpw chooses the mix of --method dynamic; add --method dynamic.")
    if calibration is not None and method is None:
        raise ValueError(
            "--calibration is the text a learned method calibrates on; add --method "
            f"({', '.join(METHODS)}) or drop --calibration."
        )
    if method is not None and mode != "affine":
        raise ValueError(
            f"--method {method} works with --q-mode affine only (mlx-lm's {method} "
            f"computes affine scales and biases); drop --q-mode {mode} or --method."
        )
    if recipe is not None and (mode != "affine" or method is not None):
        raise ValueError(
            "--recipe is a mix of affine round-to-nearest bits; it does not combine with "
            "--method or another --q-mode."
        )
    group_size = group_size or rule.default_group_size
    if group_size not in rule.group_sizes:
        raise ValueError(
            f"--q-mode {mode} uses a group size of {' or '.join(map(str, rule.group_sizes))}, "
            f"not {group_size}."
        )
    high = None
    if method in ("dynamic", "dynamic-gptq"):
        lows = GPTQ_BITS[:-1] if method == "dynamic-gptq" else MODES["affine"].bits[:-1]
        bits, high, target_bpw = _dynamic_bits(bits, group_size, target_bpw, lows)
    bits = bits or rule.default_bits
    if bits not in rule.bits:
        raise ValueError(
            f"--q-mode {mode} stores {' or '.join(map(str, rule.bits))} bits per weight, "
            f"not {bits}."
        )
    if method in ("gptq", "dynamic-gptq") and bits not in GPTQ_BITS:
        raise ValueError(
            f"--method {method} quantizes to {', '.join(map(str, GPTQ_BITS))} bits (mlx-lm's "
            f"packer), not {bits}; choose one of those --q-bits."
        )
    return QuantOptions(mode, bits, group_size, method, target_bpw, high)


def _dynamic_bits(
    bits: int | None, group_size: int, target_bpw: float | None, lows: tuple[int, ...]
) -> tuple[int, int, float]:
    """Low and high bits of a dynamic mix and its target: by default the largest bits
    whose uniform size fits the target, and the next bits up for the sensitive layers."""
    steps = MODES["affine"].bits
    if target_bpw is None:
        low = bits or 4
        high = steps[min(steps.index(low) + 1, len(steps) - 1)] if low in steps else low
        target_bpw = round((uniform_bpw(low, group_size) + uniform_bpw(high, group_size)) / 2, 2)
    elif bits is None:
        fitting = [b for b in lows if uniform_bpw(b, group_size) <= target_bpw]
        if not fitting:
            raise ValueError(
                f"--target-bpw {target_bpw} is below what 2-bit g{group_size} takes "
                f"({uniform_bpw(2, group_size)}); ask for at least that."
            )
        low = fitting[-1]
    else:
        low = bits
    if low not in steps[:-1]:
        raise ValueError(
            f"--method dynamic mixes two of {', '.join(map(str, steps))} bits; --q-bits "
            f"{low} leaves nothing above it to mix in."
        )
    high = steps[steps.index(low) + 1]
    lo, hi = uniform_bpw(low, group_size), uniform_bpw(high, group_size)
    if not lo <= target_bpw <= hi:
        raise ValueError(
            f"--target-bpw {target_bpw} is outside what {low}- and {high}-bit layers "
            f"(g{group_size}) can mix to ({lo} to {hi}); choose a target in that range "
            "or other --q-bits."
        )
    return low, high, target_bpw


# -- calibration text ----------------------------------------------------------------------


@dataclass(frozen=True)
class CalibrationText:
    """The text a method calibrates on: the packaged one, or a file, read in pieces when
    it is used (`calibration_windows`), so a file of any size takes no more memory than
    the tokens a method keeps."""

    source: str  # "packaged" or the file's name
    sha256: str
    path: Path | None = None  # None: the packaged text
    jsonl: bool = False

    def documents(self) -> Iterator[Iterator[str] | tuple[dict[str, str], ...]]:
        """Each document: a plain text as an iterator of pieces (cut at line ends where
        it has them), or a chat conversation as a tuple of {"role", "content"}."""
        if self.path is None:
            text = resources.files("qwen_mlx.data").joinpath("quant_calibration.txt").read_text()
            yield _cut(text)
            return
        with _open_text(self.path) as f:
            if not self.jsonl:
                yield _pieces(f)
                return
            for n, line in enumerate(f, 1):
                if line.strip():
                    doc = _document(_json_line(line, self.path, n), self.path, n)
                    yield _cut(doc) if isinstance(doc, str) else doc


def packaged_calibration() -> CalibrationText:
    data = resources.files("qwen_mlx.data").joinpath("quant_calibration.txt").read_bytes()
    return CalibrationText("packaged", hashlib.sha256(data).hexdigest())


def read_calibration(path: str | Path | None) -> CalibrationText:
    """The packaged calibration text, or a file: plain text, or JSONL (`.jsonl`) with one
    object per line holding "text", or "messages" (a chat), or "prompt" and "completion".

    The file is checked here, before any work, in one streaming pass (bounded memory):
    UTF-8 throughout, not empty, every JSONL line one of those objects; its sha256 is of
    the whole file. Only `calibration_windows` tokenizes it, up to the method's cap."""
    if path is None:
        return packaged_calibration()
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"No calibration file at {file}; pass a text or JSONL file.")
    jsonl = file.suffix.lower() == ".jsonl"
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    text_seen = records = 0
    line_number, partial = 0, ""
    with file.open("rb") as f:
        while chunk := f.read(_READ_BYTES):
            digest.update(chunk)
            try:
                text = decoder.decode(chunk)
            except UnicodeDecodeError as e:
                raise ValueError(f"{file} is not UTF-8 text; pass a text or JSONL file.") from e
            text_seen = text_seen or bool(text.strip())
            if jsonl:
                *lines, partial = (partial + text).split("\n")
                for line in lines:
                    line_number += 1
                    records += _check_line(line, file, line_number)
        try:
            tail = decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:
            raise ValueError(f"{file} is not UTF-8 text; pass a text or JSONL file.") from e
    if jsonl:
        records += _check_line(partial + tail, file, line_number + 1)
        if not records:
            raise ValueError(f"{file} holds no records; one JSON object per line.")
    elif not text_seen:
        raise ValueError(f"{file} is empty; pass a calibration text of a few KB or more.")
    return CalibrationText(file.name, digest.hexdigest(), file, jsonl)


_READ_BYTES = 1 << 20  # read and hashed at a time
_PIECE_CHARS = 1 << 16  # tokenized at a time: a long line costs no more than this


def _open_text(path: Path) -> Any:
    return path.open(encoding="utf-8", newline="")


def _pieces(f: Any) -> Iterator[str]:
    """A text file's contents in pieces of about `_PIECE_CHARS`, each ending at a line end
    (or, in a line longer than that, at a space, else anywhere), so tokenizing piece by
    piece gives the tokens of the whole text but at very few seams."""
    rest = ""
    while chunk := f.read(_PIECE_CHARS):
        piece, rest = _split_seam(rest + chunk)
        if piece:
            yield piece
    if rest:
        yield rest


def _cut(text: str) -> Iterator[str]:
    """A document already in memory, in the pieces `_pieces` would read it in."""
    rest = ""
    for i in range(0, len(text), _PIECE_CHARS):
        piece, rest = _split_seam(rest + text[i : i + _PIECE_CHARS])
        if piece:
            yield piece
    if rest:
        yield rest


def _split_seam(text: str) -> tuple[str, str]:
    if len(text) < _PIECE_CHARS:
        return "", text
    cut = text.rfind("\n") + 1 or text.rfind(" ") + 1 or len(text)
    return text[:cut], text[cut:]


def _json_line(line: str, file: Path, n: int) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} line {n} is not JSON ({e.msg}).") from e


def _check_line(line: str, file: Path, n: int) -> int:
    """1 for a valid record, 0 for a blank line; ValueError naming the line otherwise."""
    if not line.strip():
        return 0
    _document(_json_line(line, file, n), file, n)
    return 1


def _document(record: Any, file: Path, n: int) -> str | tuple[dict[str, str], ...]:
    if isinstance(record, dict):
        if isinstance(record.get("text"), str):
            return record["text"]
        messages = record.get("messages")
        if isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        ):
            return tuple(
                {"role": str(m.get("role", "user")), "content": m["content"]} for m in messages
            )
        if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
            return record["prompt"] + record["completion"]
    raise ValueError(
        f'{file} line {n} has no "text", "messages" or "prompt"/"completion"; '
        "each line must be one of those objects."
    )


def calibration_tokens(
    text: CalibrationText, tokenizer: Any, max_tokens: int = MAX_TOKENS
) -> tuple[list[int], bool]:
    """The documents as one token stream (an end-of-text token after each), tokenized a
    piece at a time and read no further than `max_tokens`; and whether there was more."""
    tokens: list[int] = []
    eos = tokenizer.eos_token_id
    for doc in text.documents():
        if isinstance(doc, tuple):
            doc = _cut(tokenizer.apply_chat_template(list(doc), tokenize=False))
        for piece in doc:
            if len(tokens) >= max_tokens:
                return tokens[:max_tokens], True
            tokens += tokenizer.encode(piece, add_special_tokens=False)
        if eos is not None:
            tokens.append(eos)
    return tokens[:max_tokens], len(tokens) > max_tokens


def calibration_windows(
    text: CalibrationText,
    tokenizer: Any,
    sequence_length: int = SEQUENCE_LENGTH,
    max_windows: int = MAX_WINDOWS,
) -> tuple[Any, CalibrationInfo, str | None]:
    """The calibration text cut into windows (samples x `sequence_length`) in order, at
    most `max_windows` of them: mlx-lm's own methods take 128 windows of 512 tokens.
    Returns the windows, what was used, and a notice when the text was longer."""
    import mlx.core as mx

    cap = sequence_length * max_windows
    tokens, capped = calibration_tokens(text, tokenizer, cap)
    length = min(sequence_length, len(tokens) // MIN_SAMPLES)
    if length < 16:
        raise ValueError(
            f"The calibration text ({text.source}) is {len(tokens)} tokens; a learned "
            f"method needs at least {16 * MIN_SAMPLES}. Pass a longer --calibration file."
        )
    samples = min(max_windows, len(tokens) // length)
    windows = mx.array(tokens[: samples * length]).reshape(samples, length)
    info = CalibrationInfo(text.source, text.sha256, samples * length, samples, length)
    notice = None
    if capped:
        notice = (
            f"The calibration text ({text.source}) is longer than the {cap:,} tokens a method "
            f"calibrates on ({max_windows} windows of {sequence_length}); its first "
            f"{cap:,} tokens are used and the rest is not read."
        )
    return windows, info, notice


# -- memory --------------------------------------------------------------------------------


def method_memory(method: str, float_weight_bytes: int) -> int:
    """Peak bytes a method takes on a model of `float_weight_bytes` (bf16 weights)."""
    return int(MEMORY_FACTOR[method] * float_weight_bytes) + (256 << 20)


# -- progress ------------------------------------------------------------------------------


@contextlib.contextmanager
def _bars_as_progress(module: Any, stage: str, progress: ProgressFn) -> Iterator[list[str]]:
    """Swap the method module's tqdm for a bar that reports Progress events (and whose
    iteration is where a Ctrl-C lands between steps); collect what it writes.
    mlx-lm's methods take no progress callback, so this is the seam."""
    notes: list[str] = []

    class Bar:
        def __init__(
            self, iterable: Any = None, total: int | None = None, desc: str = "", **_: Any
        ):
            self.iterable = iterable
            if total is None and hasattr(iterable, "__len__"):
                total = len(iterable)
            self.total = int(total or 0)
            self.desc = desc or ""
            self.n = 0

        def __iter__(self) -> Iterator[Any]:
            for item in self.iterable:
                progress(Progress(stage, min(self.n, self.total), self.total, self.desc))
                yield item
                self.n += 1
            progress(Progress(stage, self.total, self.total, self.desc))

        def update(self, n: int = 1) -> None:
            self.n += n
            progress(Progress(stage, min(self.n, self.total), self.total, self.desc))

        def set_description(self, desc: str | None = None, **_: Any) -> None:
            self.desc = desc or self.desc

        def close(self) -> None:
            pass

        @staticmethod
        def write(text: str, *_: Any, **__: Any) -> None:
            notes.append(str(text))

    saved = module.tqdm
    module.tqdm = Bar
    try:
        yield notes
    finally:
        module.tqdm = saved


@contextlib.contextmanager
def _one_process() -> Iterator[None]:
    """mlx-lm's methods average their losses over `mx.distributed.init()`'s group. In a
    process that has joined a group of ranks (a notebook that loaded a model split across
    Macs, the CLI's rank 0) that is the group, whose other ranks are not converting and
    may be gone: the method would wait on them or fail ("connection to a peer was lost").
    A conversion runs in this process alone, so while it runs mlx-lm sees a group of one."""
    import mlx.core as mx

    dist = mx.distributed
    if not dist.is_available() or dist.init().size() == 1:
        yield
        return

    class Alone:
        @staticmethod
        def rank() -> int:
            return 0

        @staticmethod
        def size() -> int:
            return 1

    saved = dist.init, dist.all_sum
    dist.init = lambda *_, **__: Alone()
    dist.all_sum = lambda x, *_, **__: x
    try:
        yield
    finally:
        dist.init, dist.all_sum = saved


# -- the methods ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodResult:
    model: Any  # the quantized mlx-lm model, in memory
    quantization: dict[str, Any]  # config.json's "quantization"
    layers: dict[str, Any]  # layers whose settings differ from the top-level ones
    calibration: CalibrationInfo
    warnings: tuple[str, ...]


def run_method(
    folder: Path,
    options: QuantOptions,
    calibration: CalibrationText,
    *,
    dtype: str | None,
    progress: ProgressFn,
    seed: int = 123,
) -> MethodResult:
    """Load the source model from `folder`, quantize it with `options.method` on the
    calibration text, and return it with its per-layer plan."""
    import mlx.core as mx
    import numpy as np
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.utils import load_model

    method = options.method
    assert method is not None
    progress(Progress(method, 0, 0, "loading the source model"))
    model, config = load_model(folder, lazy=True)
    output_type = getattr(mx, dtype) if dtype else _float_type(model)
    # mlx's CPU backend has no fast bfloat16 kernels (5x slower than float32); compute
    # in float32 there and store the result in the output's type.
    model.set_dtype(output_type if mx.metal.is_available() else mx.float32)
    tokenizer = load_tokenizer(folder)
    data, info, notice = calibration_windows(calibration, tokenizer, SEQUENCE_LENGTH, MAX_WINDOWS)
    if notice:
        progress(Progress("warning", detail=notice))
    mx.random.seed(seed)
    np.random.seed(seed)
    warnings: list[str] = [notice] if notice else []
    # mlx-lm prints its own summaries to stdout; the CLI keeps stdout for its results.
    with contextlib.redirect_stdout(io.StringIO()), _one_process():
        if method == "awq":
            notes = _awq(model, config, data, options, progress)
        elif method == "gptq":
            notes = _gptq(model, data, options, progress, output_type, set())
        elif method in ("dynamic", "dynamic-gptq"):
            notes = _dynamic(model, config, data, options, progress, output_type)
        else:
            model, notes = _dwq(model, config, data, options, progress, seed)
    warnings += [n.strip("❌\n ") for n in notes if "WARNING" in n or "falling back" in n]
    model.set_dtype(output_type)
    mx.eval(model.parameters())
    quantization, layers = quantization_config(model)
    return MethodResult(model, quantization, layers, info, tuple(dict.fromkeys(warnings)))


def _awq(model, config, data, options: QuantOptions, progress: ProgressFn) -> list[str]:
    from mlx_lm.quant import awq

    awq_config = awq.AWQ_MODEL_CONFIGS.get(config["model_type"])
    if awq_config is None:
        raise ValueError(
            f"mlx-lm's AWQ has no recipe for {config['model_type']} models; choose "
            "--method gptq, dwq or dynamic."
        )
    with _bars_as_progress(awq, "awq", progress) as notes:
        # The embedding at the same bits and group as every other layer, so the size
        # is that of a uniform conversion (mlx-lm's default puts it at 4-bit g32).
        awq.awq_quantize(
            model,
            data,
            awq_config,
            group_size=options.group_size,
            bits=options.bits,
            embed_group_size=options.group_size,
            embed_bits=options.bits,
            n_grid=AWQ_GRID,
        )
    return notes


def _gptq(
    model, data, options: QuantOptions, progress: ProgressFn, stored: Any, skip: set[str]
) -> list[str]:
    """Our GPTQ (see gptq.py: the tied embedding as the output layer, block by block,
    act-order, searched ranges), then round-to-nearest at the same bits for any layer it
    does not take (an untied input embedding), so the size is a uniform conversion's."""
    import mlx.nn as nn

    from .gptq import gptq_quantize

    gptq_quantize(model, data, options.bits, options.group_size, stored, progress, skip)
    nn.quantize(
        model,
        group_size=options.group_size,
        bits=options.bits,
        class_predicate=lambda p, m: (
            hasattr(m, "to_quantized") and m.weight.shape[-1] % options.group_size == 0
        ),
    )
    return []


def _dynamic(
    model, config, data, options: QuantOptions, progress: ProgressFn, output_type: Any
) -> list[str]:
    from mlx_lm.quant import dynamic_quant as dq
    from mlx_lm.utils import quantize_model

    low, high, group = options.bits, options.high_bits, options.group_size
    assert high is not None and options.target_bpw is not None
    with _bars_as_progress(dq, "dynamic", progress) as notes:
        sensitivities = dict(dq.estimate_sensitivities(model, data, low, group, high, group))
    progress(Progress("dynamic", 0, 0, "choosing the layers that get more bits"))
    model.set_dtype(output_type)  # rounded from the stored type, as round-to-nearest is
    scale_bits = 8 * output_type.size  # scales and biases are stored in the output type
    shapes = quantizable_shapes(model, group)
    chosen = allocate_bits(shapes, sensitivities, options.target_bpw, low, high, group, scale_bits)

    def predicate(path: str, module: Any) -> bool | dict[str, Any]:
        if not hasattr(module, "to_quantized"):
            return False
        if path in chosen:
            return {"bits": high, "group_size": group, "mode": "affine"}
        return True

    if options.method == "dynamic":
        quantize_model(model, config, group_size=group, bits=low, quant_predicate=predicate)
        return notes
    import mlx.core as mx
    import mlx.nn as nn

    # The sensitive layers first, round-to-nearest at `high` bits (the packer writes 2, 4
    # and 8 bits); GPTQ takes the rest at `low`.
    nn.quantize(
        model,
        group_size=group,
        bits=high,
        class_predicate=lambda p, m: p in chosen and hasattr(m, "to_quantized"),
    )
    if not mx.metal.is_available():
        model.set_dtype(mx.float32)
    return notes + _gptq(model, data, options, progress, output_type, chosen)


def allocate_bits(
    shapes: dict[str, tuple[int, int]],
    sensitivities: dict[str, float],
    target_bpw: float,
    low: int,
    high: int,
    group: int,
    scale_bits: int,
) -> set[str]:
    """The layers that get `high` bits: the most sensitive first (mlx-lm's sensitivity is
    per weight), each while the budget holds. `shapes` are the weight matrices that can
    be quantized (path -> rows, columns); `scale_bits` the width of a stored scale.

    The budget counts every bit the matrices store, as `weights.count_bits` counts the
    written files (packed weights, a scale and a bias per group), and holds both ways:
    over all of them with the token embedding, and over the linear layers alone. So
    `--target-bpw 4.6` never writes 4.61 by either count.

    mlx-lm's `estimate_threshold` bisects a sensitivity threshold and returns the midpoint
    of its last interval, which can sit past a large layer's sensitivity: on the tiny
    trained Qwen3 it gave 4.79 bits per weight for a 4.6 target. Counting exactly never
    overshoots."""
    from .weights import is_embedding, layer_bits

    def cost(path: str, bits: int) -> int:
        return layer_bits(*shapes[path], bits, group, scale_bits)

    weights_all = sum(r * c for r, c in shapes.values())
    weights_linear = sum(r * c for p, (r, c) in shapes.items() if not is_embedding(p))
    spent_all = sum(cost(p, low) for p in shapes)
    spent_linear = sum(cost(p, low) for p in shapes if not is_embedding(p))
    room_all = target_bpw * weights_all - spent_all
    room_linear = target_bpw * weights_linear - spent_linear if weights_linear else 0.0
    chosen = set()
    for path in sorted(shapes, key=lambda p: -sensitivities.get(p, float("-inf"))):
        step = cost(path, high) - cost(path, low)
        linear = not is_embedding(path)
        if step <= room_all and (not linear or step <= room_linear):
            chosen.add(path)
            room_all -= step
            room_linear -= step if linear else 0
    return chosen


def quantizable_shapes(model: Any, group: int) -> dict[str, tuple[int, int]]:
    """The weight matrices `group` divides (path -> rows, columns): what a method
    quantizes. The rest stay in full precision."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    return {
        path: tuple(module.weight.shape)
        for path, module in tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module)
        if hasattr(module, "to_quantized") and module.weight.shape[-1] % group == 0
    }


def _dwq(model, config, data, options: QuantOptions, progress: ProgressFn, seed: int):
    import copy

    import mlx.optimizers as optimizers
    from mlx_lm.quant import dwq
    from mlx_lm.utils import quantize_model

    student = copy.deepcopy(model)
    quantize_model(student, config, group_size=options.group_size, bits=options.bits)
    rows = [(list(map(int, row)), 0) for row in data.tolist()]
    valid = rows[-DWQ_BATCH:]
    train = rows[:-DWQ_BATCH] if len(rows) >= 2 * DWQ_BATCH else rows
    train = train * DWQ_EPOCHS
    length = int(data.shape[1])

    def targets(batch: Any, _index: int, split: str) -> Any:
        return model(batch)

    opt = optimizers.Adam(learning_rate=DWQ_LEARNING_RATE, bias_correction=True)
    float_type = _float_type(student)
    with _bars_as_progress(dwq, "dwq", progress) as notes:
        dwq.dwq_quantize(
            student,
            targets,
            opt,
            train,
            valid,
            batch_size=DWQ_BATCH,
            max_seq_length=length + 1,
            seed=seed,
            dtype=float_type,
        )
    student.eval()
    return student, notes


def _float_type(model: Any) -> Any:
    """The type of the model's float parameters (its first one's)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return next(
        v.dtype for _, v in tree_flatten(model.parameters()) if mx.issubdtype(v.dtype, mx.floating)
    )


def quantization_config(model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """config.json's "quantization" for a quantized model in memory: the most common
    settings at the top, and each layer that differs by its path (False: unquantized)."""
    from mlx.utils import tree_flatten

    leaves = tree_flatten(model.leaf_modules(), is_leaf=lambda m: hasattr(m, "parameters"))
    settings: dict[str, dict[str, Any] | bool] = {}
    for path, module in leaves:
        if hasattr(module, "bits") and hasattr(module, "group_size"):
            settings[path] = {
                "group_size": module.group_size,
                "bits": module.bits,
                "mode": getattr(module, "mode", "affine"),
            }
        elif hasattr(module, "to_quantized"):
            settings[path] = False
    counts = Counter(json.dumps(s, sort_keys=True) for s in settings.values() if s)
    top = json.loads(counts.most_common(1)[0][0]) if counts else {}
    layers = {p: s for p, s in settings.items() if s != top}
    return {**top, **layers}, layers


@dataclass(frozen=True)
class LearnedOutput:
    """What `write_learned` wrote: hashes of the source files (when asked), the layers
    that differ from the top-level settings, calibration."""

    hashes: dict[str, str]  # output file -> sha256 (empty: the pipeline hashes them)
    sources: dict[str, str]
    layers: dict[str, Any]
    calibration: CalibrationInfo
    warnings: list[str]


def write_learned(
    ckpt: Any,
    options: QuantOptions,
    text: CalibrationText,
    dtype: str | None,
    out: Path,
    progress: ProgressFn,
    hash_sources: bool,
) -> LearnedOutput:
    """Run the method on the checkpoint and write the weights and config.json into
    `out` (the pipeline's staging folder) as mlx-lm writes them."""
    from mlx_lm.utils import save_config, save_model

    from ..fileio import sha256_file

    result = run_method(ckpt.path, options, text, dtype=dtype, progress=progress)
    progress(Progress("write", 0, 0, "the quantized weights"))
    save_model(out, result.model)
    if (out / "model.safetensors").is_file():  # one shard needs no index
        (out / "model.safetensors.index.json").unlink(missing_ok=True)
    config = dict(ckpt.config)
    config["quantization"] = result.quantization
    save_config(config, config_path=out / "config.json")
    sources = {f: sha256_file(ckpt.path / f) for f in ckpt.weight_files} if hash_sources else {}
    return LearnedOutput(
        hashes={},
        sources=sources,
        layers=result.layers,
        calibration=result.calibration,
        warnings=list(result.warnings),
    )
