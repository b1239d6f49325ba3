"""Control tokens belong to the chat template: text in a conversation that spells one
(`<|im_end|>`, `<|im_start|>`, `<tool_response>`...) is read as that text, never as the
token, so a tool result, a document or a message cannot close its turn and forge a
system or user turn.

Every string the template is given (message contents, names, tool calls, tool schemas,
their keys too) has its control-token spellings wrapped in private-use markers before
rendering (`mark`); the rendered text is then tokenized with the template's own control
tokens as tokens and the marked spellings as plain text, without the markers
(`encode`). Text with no marked spelling tokenizes exactly as before, so a conversation
keeps the token ids (and the prefix cache) it had.

This is the design of transformers' `apply_chat_template(..., sanitize_control_tokens=
True)` (the same markers), done here because that option is only in recent transformers
versions (an older one passes it to the template, silently), it tokenizes the whole
conversation at once where we splice the exact ids of earlier replies, and it leaves dict
keys (a tool schema's property names) as they are. Control tokens are the tokenizer's
added tokens (special or not), whitespace ones left out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

START = "\U000f0000"  # private-use plane 15: no text or template writes these
END = "\U000f0001"


@dataclass(frozen=True)
class ControlTokens:
    """A tokenizer's control tokens as patterns: `spelled` finds one in text, `marked`
    finds a marked one (its text in group 1) or a lone marker."""

    spelled: re.Pattern[str]
    marked: re.Pattern[str]


def control_tokens(model: Any) -> ControlTokens | None:
    """The model's control tokens (found once, kept in `model.memo`); None when the
    tokenizer has no added tokens."""
    if "control_tokens" in model.memo:
        return model.memo["control_tokens"]
    added = getattr(_hf(model), "added_tokens_decoder", None) or {}
    texts = sorted(
        {t.content for t in added.values() if t.content and not t.content.isspace()},
        key=len,
        reverse=True,  # a longer token before one it contains
    )
    found = None
    if texts:
        spelled = re.compile("|".join(map(re.escape, texts)))
        marked = re.compile(f"{START}({spelled.pattern}){END}|[{START}{END}]")
        found = ControlTokens(spelled, marked)
    model.memo["control_tokens"] = found
    return found


def mark(value: Any, controls: ControlTokens) -> Any:
    """`value` (a string, or dicts and lists of them) with every control token's spelling
    wrapped in markers, keys included. Markers already in a string are dropped first, so
    none can be forged."""
    if isinstance(value, str):
        if START in value or END in value:
            value = value.replace(START, "").replace(END, "")
        return controls.spelled.sub(f"{START}\\g<0>{END}", value)
    if isinstance(value, dict):
        return {mark(k, controls): mark(v, controls) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mark(v, controls) for v in value]
    return value


def encode(model: Any, text: str, controls: ControlTokens | None) -> list[int]:
    """Token ids of rendered text: control tokens the template wrote are tokens, marked
    spellings plain text (a lone marker, left by a template's string operation, is
    dropped but still separates the text around it)."""
    if controls is None or (START not in text and END not in text):
        return model.encode(text)
    pieces = controls.marked.split(text)  # text, spelling (or None), text, ...
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if not piece:
            continue
        ids += plain(model, piece) if i % 2 else model.encode(piece)
    return ids


def plain(model: Any, text: str) -> list[int]:
    """Token ids of `text` read as text: no added token is matched in it."""
    tokenizer = _hf(model)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a Python tokenizer: its own switch, per call
        return list(tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))
    # The backend's pipeline without its added-token pass. (Its `encode_special_tokens`
    # switch would be a setting shared by every thread, and leaves non-special added
    # tokens whole.)
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    splits = [text]
    if backend.pre_tokenizer is not None:
        splits = [s for s, _ in backend.pre_tokenizer.pre_tokenize_str(text)]
    return [token.id for split in splits for token in backend.model.tokenize(split)]


def _hf(model: Any) -> Any:
    """The Hugging Face tokenizer (mlx-lm's TokenizerWrapper holds it)."""
    tokenizer = model.tokenizer
    if hasattr(tokenizer, "added_tokens_decoder"):
        return tokenizer
    return getattr(tokenizer, "_tokenizer", tokenizer)
