"""The naming convention: `<family>-<size>-<variant>-<release>[-<format>[-<quant>]][@<revision>]`.

Examples: `qwen3-4b-instruct-2507` (the source release), `qwen3-4b-instruct-2507-mlx-q4-g64`
(our 4-bit conversion), `qwen3-4b-instruct-2507-gguf-q4_0`, `qwen3-4b-chat-2507-awq-int4`,
`qwen3-4b-medical-instruct-2507` (a fine-tune: variants may have several words),
`qwen3-4b-instruct-2507-ft500` (a fine-tune released as a tag of 2507), `qwen3-4b-myft-v1`
(a release that is not a date). A second conversion of the same release from a newer
upstream revision carries that revision: `qwen3-4b-instruct-2507-mlx-q4-g64@1a2b3c4`.

The parts, separated by dashes: the family (`qwen3`) and size (`4b`, `0.6b`, `30b-a3b`);
the variant, one or more words that start with a letter; the release, a date of 4, 6 or 8
digits optionally followed by tags that each hold a digit (`2507-ft500`), or, when there is
no date, one last word holding a digit (`v1`, `ft500`); the format, the first of FORMATS
after the release; the quantization, the words after the format.

The store groups versions by *family id*, the `<family>-<size>-<variant>` prefix
(`qwen3-4b-instruct`); the CLI calls that FAMILY. `name_for` makes a name for a checkpoint
whose folder or repo name does not follow the convention; `why_not_latest` says whether a
new version is what a user expects to replace the family's latest.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields, replace

from ..errors import InvalidNameError

FORMATS = ("mlx", "gguf", "awq", "gptq", "exl2")
EXPECTED_FORM = "<family>-<size>-<variant>-<release>[-<format>[-<quant>]]"
EXAMPLE = "qwen3-4b-instruct-2507-mlx-q4-g64"
# A checkpoint whose name has no variant (`Qwen/Qwen3-4B`): Qwen's unsuffixed Qwen3 repos
# hold the hybrid thinking models; "base" would misname them as `Qwen/Qwen3-4B-Base`.
DEFAULT_VARIANT = "hybrid"
# Parameter counts that round to Qwen's published sizes (tied embeddings counted once).
USUAL_SIZES = (0.5e9, 0.6e9, 1.5e9, 1.7e9, 3e9, 4e9, 7e9, 8e9, 14e9, 32e9, 72e9)

# Explicit ASCII ranges: `\d` would also match other scripts' digits.
_FAMILY = re.compile(r"[a-z][a-z0-9.]*")
_SIZE = r"[0-9]+(?:\.[0-9]+)?[kmbt]"
_SIZE_RE = re.compile(_SIZE)
_ACTIVE_RE = re.compile(r"a[0-9]+(?:\.[0-9]+)?[kmbt]")  # a MoE's active size: 30b-a3b
_WORD = re.compile(r"[a-z][a-z0-9_.]*")  # a variant word
_DATE = re.compile(r"[0-9]{4}(?:[0-9]{2}){0,2}")
_TAG = re.compile(r"[a-z0-9][a-z0-9_.]*")  # release tags and quantization words
_REVISION = re.compile(r"[0-9a-f]{7,40}")
_FAMILY_ID_RE = re.compile(
    rf"{_FAMILY.pattern}-{_SIZE}(?:-{_ACTIVE_RE.pattern})?-{_WORD.pattern}(?:-{_WORD.pattern})*"
)
# Words in folder names that describe a format, not a model: Qwen3-4B-4bit, ...-bf16.
_FORMAT_WORD = re.compile(
    r"[0-9]+bits?|bf16|fp16|f16|fp32|f32|q[0-9]+(?:_[a-z0-9]+)?|int[0-9]+|g[0-9]+"
)
# A trainer's checkpoint folder: checkpoint-1200 (transformers' Trainer), step-1200,
# global_step1200 (DeepSpeed), epoch-3. Its name says when, not what: the run folder
# above it says what.
_CHECKPOINT_DIR = re.compile(r"(checkpoint|global_step|step|epoch)[-_]?([0-9]+)")


@dataclass(frozen=True, order=True)
class ModelName:
    """A parsed model name; `str()` gives it back in canonical (lowercase) form, and
    parsing that string gives this name again (anything else is refused)."""

    family: str
    size: str
    variant: str
    release: str
    format: str | None = None
    quant: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if self.quant is not None and self.format is None:
            raise InvalidNameError("A quantization needs a format, as in 2507-mlx-q4-g64.")
        text = str(self)
        parts = _split(text)
        if parts is None:
            raise InvalidNameError(_explain(text))
        if parts != astuple(self):
            read = ", ".join(f"{f.name} {v!r}" for f, v in zip(fields(self), parts, strict=True))
            raise InvalidNameError(
                f"{text!r} would read back as another name ({read}). "
                f"Expected {EXPECTED_FORM}, e.g. {EXAMPLE}."
            )

    def __str__(self) -> str:
        name = f"{self.family}-{self.size}-{self.variant}-{self.release}"
        if self.format:
            name += f"-{self.format}"
            if self.quant:
                name += f"-{self.quant}"
        if self.revision:
            name += f"@{self.revision}"
        return name

    @property
    def family_id(self) -> str:
        """What the store groups versions under: `qwen3-4b-instruct`."""
        return f"{self.family}-{self.size}-{self.variant}"

    @property
    def format_dir(self) -> str:
        """The store folder below the release: `mlx-q4-g64`, or `original` for a source."""
        if not self.format:
            return "original"
        tag = f"{self.format}-{self.quant}" if self.quant else self.format
        return f"{tag}@{self.revision}" if self.revision else tag

    @property
    def version(self) -> str:
        """The part after the family id: `2507-mlx-q4-g64`."""
        return str(self)[len(self.family_id) + 1 :]

    def with_format(
        self, format: str, quant: str | None = None, revision: str | None = None
    ) -> ModelName:
        return replace(self, format=format, quant=quant, revision=revision)


def parse(name: str) -> ModelName:
    """Parse a model name (case-insensitive); raise InvalidNameError showing the expected form."""
    parts = _split(name.strip().lower())
    if parts is None:
        raise InvalidNameError(_explain(name))
    return ModelName(*parts)


def is_name(text: str) -> bool:
    return _split(text.strip().lower()) is not None


def is_family_id(text: str) -> bool:
    """True for `qwen3-4b-instruct`-like text (a name without release)."""
    return _FAMILY_ID_RE.fullmatch(text.strip().lower()) is not None and not is_name(text)


def name_from_source(source: str) -> ModelName:
    """Parse the name of a repo id or folder: `Qwen/Qwen3-4B-Instruct-2507`."""
    return parse(source.rstrip("/").rsplit("/", 1)[-1])


# -- parsing ------------------------------------------------------------------------------

_Parts = tuple[str, str, str, str, str | None, str | None, str | None]


def _has_digit(word: str) -> bool:
    return any("0" <= c <= "9" for c in word)


def _is_tag(word: str) -> bool:
    """A release tag after the date (`ft500`) or a release without a date (`v1`)."""
    return _TAG.fullmatch(word) is not None and _has_digit(word)


def _split(text: str) -> _Parts | None:
    """The fields of a name, or None when `text` is not one."""
    base, at, revision = text.partition("@")
    if at and not _REVISION.fullmatch(revision):
        return None
    parts = base.split("-")
    if len(parts) < 4 or not _FAMILY.fullmatch(parts[0]) or not _SIZE_RE.fullmatch(parts[1]):
        return None
    size_words = (2, 1) if _ACTIVE_RE.fullmatch(parts[2]) else (1,)
    for n in size_words:  # `30b-a3b-instruct` is size 30b-a3b; `30b-a3b-2507`, variant a3b
        rest = _split_rest(parts[1 + n :])
        if rest is not None:
            return (parts[0], "-".join(parts[1 : 1 + n]), *rest, revision if at else None)
    return None


def _split_rest(words: list[str]) -> tuple[str, str, str | None, str | None] | None:
    """`<variant>-<release>[-<format>[-<quant>]]`: the format is the first FORMATS word
    that follows a valid release."""
    stops = [i for i, w in enumerate(words) if w in FORMATS] + [len(words)]
    for stop in stops:
        head = _split_head(words[:stop])
        if head is None:
            continue
        quant = words[stop + 1 :]
        if not all(_TAG.fullmatch(w) for w in quant):
            return None
        fmt = words[stop] if stop < len(words) else None
        return (*head, fmt, "-".join(quant) or None)
    return None


def _split_head(words: list[str]) -> tuple[str, str] | None:
    """`<variant>-<release>`: variant words start with a letter; the release is the first
    date and its tags, or, with no date, the last word when it holds a digit."""
    k = next((i for i, w in enumerate(words) if not _WORD.fullmatch(w)), len(words))
    if k < len(words) and _DATE.fullmatch(words[k]):
        if k == 0 or not all(_is_tag(w) for w in words[k + 1 :]):
            return None
        return "-".join(words[:k]), "-".join(words[k:])
    if len(words) >= 2 and k >= len(words) - 1 and _is_tag(words[-1]):
        return "-".join(words[:-1]), words[-1]
    return None


def _explain(name: str) -> str:
    """Say which part of a name is wrong, then show the expected form."""
    text = name.strip().lower()
    base, at, revision = text.partition("@")
    parts = base.split("-")
    words = parts[3:] if len(parts) > 3 and _ACTIVE_RE.fullmatch(parts[2]) else parts[2:]
    date = next((i for i, w in enumerate(words) if _DATE.fullmatch(w)), None)
    if at and not _REVISION.fullmatch(revision):
        problem = f"the revision {revision!r} after '@' must be a commit (7 to 40 hex digits)"
    elif len(parts) < 4:
        problem = "it has fewer than four dash-separated parts"
    elif not _FAMILY.fullmatch(parts[0]):
        problem = f"the family {parts[0]!r} must start with a letter, like qwen3"
    elif not _SIZE_RE.fullmatch(parts[1]):
        problem = f"the size {parts[1]!r} must look like 4b or 0.6b"
    elif any(not _TAG.fullmatch(w) for w in words):
        problem = "a part is empty or has characters outside a-z, 0-9, '_' and '.'"
    elif date is None and any(not _WORD.fullmatch(w) for w in words[:-1]):
        bad = next(w for w in words[:-1] if not _WORD.fullmatch(w))
        problem = f"the variant word {bad!r} must start with a letter"
    elif date == 0:
        problem = "the variant (like instruct) is missing before the release"
    elif date is not None and any(not _WORD.fullmatch(w) for w in words[:date]):
        bad = next(w for w in words[:date] if not _WORD.fullmatch(w))
        problem = f"the variant word {bad!r} must start with a letter"
    elif date is not None:
        bad = next((w for w in words[date + 1 :] if not _is_tag(w) and w not in FORMATS), None)
        problem = (
            f"unknown format {bad!r} (known: {', '.join(FORMATS)}); a release tag after "
            "the date needs a digit, like 2507-ft500"
            if bad
            else "it does not read as variant, release, format and quantization"
        )
    else:
        problem = "it has no release (a date like 2507, or a last word with a digit like v1)"
    return f"{name!r} is not a model name: {problem}. Expected {EXPECTED_FORM}, e.g. {EXAMPLE}."


# -- naming a checkpoint -------------------------------------------------------------------


def quant_tag(
    *,
    bits: int | None,
    group_size: int | None = None,
    recipe: str | None = None,
    dtype: str | None = None,
    mode: str | None = None,
    method: str | None = None,
    target_bpw: float | None = None,
) -> str:
    """The `<quant>` part for an MLX conversion: `q4-g64`, `mixed_4_6-g64`, `bf16`,
    `mxfp4-g32`, `q4-g64-gptq`, `q4-g64-dynamic4.6`."""
    if recipe:
        return f"{recipe}-g{group_size}"
    if bits:
        fmt = mode if mode not in (None, "affine") else f"q{bits}"
        tag = f"{fmt}-g{group_size}"
        if method:
            dynamic = method.startswith("dynamic") and target_bpw
            tag += f"-{method}" + (f"{target_bpw:g}" if dynamic else "")
        return tag
    return {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}[dtype or "bfloat16"]


def size_tag(parameters: int) -> str:
    """A parameter count as names write it: 4.02e9 -> 4b, 5.96e8 -> 0.6b, 4.2e6 -> 4m."""
    for usual in USUAL_SIZES:
        if abs(parameters / usual - 1) <= 0.08:
            return f"{usual / 1e9:g}b"
    unit, scale = next(
        ((u, s) for u, s in (("t", 1e12), ("b", 1e9), ("m", 1e6)) if parameters >= 0.5 * s),
        ("k", 1e3),
    )
    x = max(parameters / scale, 0.1)
    if x < 1:
        text = f"{x:.1f}"
    elif x < 10:
        text = str(round(x)) if abs(round(x) / x - 1) <= 0.1 else f"{x:.1f}"
    else:
        text = f"{float(f'{x:.2g}'):g}"
    return text + unit


def _words(text: str) -> list[str]:
    """Lowercase words of a folder or repo name, with characters names cannot hold dropped."""
    text = text.strip().lower().rstrip("/").rsplit("/", 1)[-1]
    words = re.split(r"[^a-z0-9_.]+", text)
    return [w.strip("._") for w in words if w.strip("._")]


def checkpoint_release(folder: str) -> str | None:
    """The release of a trainer's checkpoint folder: `step1200` for checkpoint-1200,
    step-1200 or global_step1200, `epoch3` for epoch-3; None for any other name."""
    match = _CHECKPOINT_DIR.fullmatch(folder.strip().lower())
    if match is None:
        return None
    return f"{'epoch' if match[1] == 'epoch' else 'step'}{int(match[2])}"


def name_for(
    requested: str | None,
    label: str,
    *,
    family: str,
    parameters: int,
    release: str,
    release_from: str,
    hint: str | None = None,
    checkpoint: str | None = None,
) -> tuple[ModelName, str]:
    """The name of a checkpoint, and a sentence saying how it was chosen.

    `requested` (a `--name`) wins; else `label` (the folder or repo name) when it is a
    name, or a family id that gets `release`. Otherwise the name is made from what the
    checkpoint says: `family` (from its config), the size from `parameters`, the variant
    from `label`'s other words (or `hint`, its config's `_name_or_path`, or
    DEFAULT_VARIANT), the release from `label` if it has one, else `release` (described
    by `release_from`, like "the source's commit"). A `requested` name that does not fit
    is made to fit the same way, and the sentence says so. The sentence is empty when
    nothing was derived.

    `checkpoint` is a trainer's checkpoint folder (`checkpoint-1200`, see
    `checkpoint_release`) and `label` then the run folder above it: the run gives the
    family (variant and all), the checkpoint the release, so each run is its own family
    and its checkpoints are its versions.
    """
    if checkpoint is not None and not requested:
        return _checkpoint_name(label, checkpoint, family, parameters, hint)
    cleaned = requested.strip().lower() if requested else "-".join(_words(label))
    if is_name(cleaned):
        return parse(cleaned), ""
    if is_family_id(cleaned):
        return parse(f"{cleaned}-{release}"), f"release {release} is {release_from}"
    name, size_in_text, release_in_text = _derive(
        _words(requested or label), family, parameters, release, hint
    )
    if requested:
        base = f"{name.family_id}-{name.release}"
        return name, f"--name {requested!r} does not fit {EXPECTED_FORM}, so it became {base}"
    size = _count(parameters)
    parts = [
        f"family {family} from its config",
        f"size {name.size} from {label!r}"
        if size_in_text
        else f"size {name.size} from its {size} parameters",
        f"variant {name.variant!r} as {label!r} names none"
        if name.variant == DEFAULT_VARIANT
        else f"variant {name.variant!r} from {label!r}",
        f"release {name.release} from {label!r}"
        if release_in_text
        else f"release {release}, {release_from}",
    ]
    return name, "derived: " + "; ".join(parts)


def _checkpoint_name(
    run: str, checkpoint: str, family: str, parameters: int, hint: str | None
) -> tuple[ModelName, str]:
    """The name of a trainer's checkpoint folder (see `name_for`)."""
    step = checkpoint_release(checkpoint)
    assert step is not None, checkpoint
    cleaned = "-".join(_words(run))
    if is_family_id(cleaned):
        name = parse(f"{cleaned}-{step}")
        said = f"release {step} from {checkpoint!r}"
        return name, f"derived: {name.family_id} from the run folder {run!r}; {said}"
    if is_name(cleaned):  # a run named like a release: its checkpoints are tags of it
        run_name = parse(cleaned)
        for release in (f"{run_name.release}-{step}", f"{run_name.release}_{step}"):
            try:
                name = ModelName(run_name.family, run_name.size, run_name.variant, release)
            except InvalidNameError:
                continue
            said = f"release {release}, the run's {run_name.release} and {checkpoint!r}"
            return name, f"derived: {name.family_id} from the run folder {run!r}; {said}"
    name, size_in_text, _ = _derive(
        _words(run) or ["checkpoint"], family, parameters, step, hint, release_in_words=False
    )
    parts = [
        f"family {family} from its config",
        f"size {name.size} from {run!r}"
        if size_in_text
        else f"size {name.size} from its {_count(parameters)} parameters",
        f"variant {name.variant!r} from the run folder {run!r}"
        if _words(run)
        else f"variant {name.variant!r} as no run folder names it",
        f"release {step} from {checkpoint!r}",
    ]
    return name, "derived: " + "; ".join(parts)


def size_fits(size: str, parameters: int) -> bool:
    """Whether a name's size (`4b`, `0.6b`, `30b-a3b`) is within a factor of 10 of the
    parameter count: loose, as sizes round and count differently (Qwen3-1.7B holds 2.0B
    parameters with its embeddings), but a 4M-parameter model is no `4b`."""
    total = size.split("-")[0]
    scale = {"k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[total[-1]]
    return 0.1 <= parameters / (float(total[:-1]) * scale) <= 10


def parameters_text(parameters: int) -> str:
    """4.2M, 4.02B: a parameter count as a sentence says it."""
    return _count(parameters)


def _count(parameters: int) -> str:
    """4.2M, 4.02B: a parameter count as a sentence says it."""
    if parameters >= 1e9:
        return f"{parameters / 1e9:,.2f}B"
    if parameters >= 1e6:
        return f"{parameters / 1e6:.1f}M"
    return f"{parameters / 1e3:.0f}K"


def _derive(
    words: list[str],
    family: str,
    parameters: int,
    release: str,
    hint: str | None,
    *,
    release_in_words: bool = True,
) -> tuple[ModelName, bool, bool]:
    """A name from the words of a folder or repo name and the checkpoint's own figures,
    and whether its size and its release came from those words (never, without
    `release_in_words`: `release` is the release and the words are all variant)."""
    words = [w for w in words if not (w == family or (len(w) >= 4 and family.startswith(w)))]
    words = [w for w in words if w not in FORMATS and not _FORMAT_WORD.fullmatch(w)]
    sizes = [w for w in words if _SIZE_RE.fullmatch(w) or _ACTIVE_RE.fullmatch(w)]
    size = sizes[0] if sizes and _SIZE_RE.fullmatch(sizes[0]) else size_tag(parameters)
    words = [w for w in words if w not in sizes]
    date = next((i for i, w in enumerate(words) if _DATE.fullmatch(w)), None)
    if not release_in_words:
        rel = release
    elif date is not None:  # a date and the tags after it; other words after it are variant
        tags = [w for w in words[date + 1 :] if _is_tag(w)]
        rel = "-".join([words[date], *tags])
        words = words[:date] + [w for w in words[date + 1 :] if w not in tags]
    elif len(words) >= 2 and _is_tag(words[-1]):
        rel, words = words[-1], words[:-1]
    else:
        rel = release
    variant = _variant_words(words)
    if not variant and hint:
        hinted = [w for w in _words(hint) if _WORD.fullmatch(w) and not _has_digit(w)]
        variant = _variant_words(
            [w for w in hinted if w != family and not family.startswith(w) and w not in FORMATS]
        )
    name = ModelName(family, size, "-".join(variant) or DEFAULT_VARIANT, rel)
    return name, bool(sizes) and size == sizes[0], rel != release


def _variant_words(words: list[str]) -> list[str]:
    """Words a variant can hold: one that starts with a digit joins the word before it."""
    out: list[str] = []
    for w in words:
        if _WORD.fullmatch(w):
            out.append(w)
        elif out:
            out[-1] = f"{out[-1]}_{w}"
        else:
            out.append(f"v{w}")
    return out


# -- which version is latest ---------------------------------------------------------------


def _release_order(release: str) -> tuple[str, tuple[int, ...]] | None:
    """(shape, numbers) that order releases of one line; None for a commit, which has
    no order. 2507 < 2510 and v2 < v10 compare; 2507 and 2507-ft500 do not (other shapes)."""
    first = release.split("-")[0]
    if _REVISION.fullmatch(release) and not _DATE.fullmatch(release):
        return None
    shape = re.sub(r"[0-9]+", "#", release)
    if _DATE.fullmatch(first):  # a date's length is part of its shape: 2507 vs 20250801
        shape = f"{len(first)}:{shape}"
    return shape, tuple(int(n) for n in re.findall(r"[0-9]+", release))


def why_not_latest(new: ModelName, current: ModelName | None) -> str | None:
    """None when `new` is what a user expects to become its family's latest in place of
    `current`: the first version, or a newer release in the same format and quantization.
    Otherwise the reason it should not, as a phrase ("it is 8-bit ...")."""
    if current is None or new == current:
        return None
    if (new.format, new.quant) != (current.format, current.quant):
        ours, theirs = new.format_dir.split("@")[0], current.format_dir.split("@")[0]
        return f"it is {ours} and the latest is {theirs}"
    if new.release == current.release:
        return f"it is the same release ({new.release}) as the latest"
    a, b = _release_order(new.release), _release_order(current.release)
    if a is None or b is None or a[0] != b[0]:
        return (
            f"its release {new.release} does not follow the latest's {current.release} "
            "(a fine-tune, or another line of releases)"
        )
    if a[1] < b[1]:
        return f"its release {new.release} is older than the latest's {current.release}"
    return None


def distinct(name: ModelName, word: str, taken: Callable[[ModelName], bool]) -> ModelName:
    """`name` with `word` added to its release (`2507_local`, then `2507_local2`, ...
    while `taken(name)` says that one is taken too): a name to suggest beside one another
    model holds. It stays in the same family, and never becomes its latest by release
    order (`2507_local` does not follow `2507`)."""
    word = "_".join(_words(word)) or "copy"
    n = 1
    while True:
        candidate = replace(name, release=f"{name.release}_{word}{n if n > 1 else ''}")
        if not taken(candidate):
            return candidate
        n += 1
