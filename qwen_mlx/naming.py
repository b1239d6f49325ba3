"""The naming convention: `<family>-<size>-<variant>-<release>[-<format>[-<quant>]]`.

Examples: `qwen3-4b-instruct-2507` (the source release), `qwen3-4b-instruct-2507-mlx-q4-g64`
(our 4-bit conversion), `qwen3-4b-instruct-2507-gguf-q4_0`, `qwen3-4b-chat-2507-awq-int4`,
`qwen3-4b-medical-instruct-2507` (a fine-tune: variants may have several words). A second
conversion of the same release from a newer upstream revision carries that revision:
`qwen3-4b-instruct-2507-mlx-q4-g64@1a2b3c4`.

The store groups versions by *family id*, the `<family>-<size>-<variant>` prefix
(`qwen3-4b-instruct`); the CLI calls that FAMILY.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import InvalidNameError

FORMATS = ("mlx", "gguf", "awq", "gptq", "exl2")
EXPECTED_FORM = "<family>-<size>-<variant>-<release>[-<format>[-<quant>]]"
EXAMPLE = "qwen3-4b-instruct-2507-mlx-q4-g64"

_FAMILY = r"[a-z][a-z0-9.]*?"
_SIZE = r"\d+(?:\.\d+)?[kmbt](?:-a\d+(?:\.\d+)?[kmbt])?"
_WORD = r"[a-z][a-z0-9_.]*"
_RELEASE = r"\d{4}(?:\d{2}){0,2}"
_QUANT_WORD = r"[a-z0-9][a-z0-9_.]*"
_NAME_RE = re.compile(
    rf"^(?P<family>{_FAMILY})-(?P<size>{_SIZE})-(?P<variant>{_WORD}(?:-{_WORD})*?)"
    rf"-(?P<release>{_RELEASE})"
    rf"(?:-(?P<format>{'|'.join(FORMATS)})(?:-(?P<quant>{_QUANT_WORD}(?:-{_QUANT_WORD})*))?)?"
    r"(?:@(?P<revision>[0-9a-f]{7,40}))?$"
)
_FAMILY_ID_RE = re.compile(rf"^{_FAMILY}-{_SIZE}-{_WORD}(?:-{_WORD})*$")


@dataclass(frozen=True, order=True)
class ModelName:
    """A parsed model name; `str()` gives it back in canonical (lowercase) form."""

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
        if not _NAME_RE.match(str(self)):
            raise InvalidNameError(_explain(str(self)))

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
    text = name.strip().lower()
    m = _NAME_RE.match(text)
    if not m:
        raise InvalidNameError(_explain(name))
    return ModelName(**m.groupdict())


def is_name(text: str) -> bool:
    return _NAME_RE.match(text.strip().lower()) is not None


def is_family_id(text: str) -> bool:
    """True for `qwen3-4b-instruct`-like text (a name without release)."""
    return _FAMILY_ID_RE.match(text.strip().lower()) is not None and not is_name(text)


def name_from_source(source: str) -> ModelName:
    """Derive a name from a repo id or folder name: `Qwen/Qwen3-4B-Instruct-2507`."""
    return parse(source.rstrip("/").rsplit("/", 1)[-1])


def quant_tag(
    *,
    bits: int | None,
    group_size: int | None = None,
    recipe: str | None = None,
    dtype: str | None = None,
) -> str:
    """The `<quant>` part for an MLX conversion: `q4-g64`, `mixed_4_6-g64`, `bf16`."""
    if recipe:
        return f"{recipe}-g{group_size}"
    if bits:
        return f"q{bits}-g{group_size}"
    return {"bfloat16": "bf16", "float16": "f16", "float32": "f32"}[dtype or "bfloat16"]


def _explain(name: str) -> str:
    """Say which part of a name is wrong, then show the expected form."""
    parts = name.strip().lower().split("-")
    if len(parts) < 4:
        problem = "it has fewer than four dash-separated parts"
    elif not re.fullmatch(_FAMILY, parts[0]) or not parts[0]:
        problem = f"the family {parts[0]!r} must start with a letter, like qwen3"
    elif not re.match(rf"^{_SIZE}$", parts[1]) and not re.match(
        rf"^{_SIZE}$", "-".join(parts[1:3])
    ):
        problem = f"the size {parts[1]!r} must look like 4b or 0.6b"
    elif not any(re.fullmatch(_RELEASE, p) for p in parts[2:]):
        problem = "it has no release (4, 6 or 8 digits, like 2507)"
    else:
        i = next(i for i, p in enumerate(parts) if i >= 2 and re.fullmatch(_RELEASE, p))
        rest = parts[i + 1 :]
        if i < 3:
            problem = "the variant (like instruct) is missing before the release"
        elif rest and rest[0].split("@")[0] not in FORMATS:
            problem = f"unknown format {rest[0]!r} (known: {', '.join(FORMATS)})"
        else:
            problem = "a part has characters outside a-z, 0-9, '_' and '.'"
    return f"{name!r} is not a model name: {problem}. Expected {EXPECTED_FORM}, e.g. {EXAMPLE}."
