"""Whether an assistant turn a client echoes says what the model wrote (for the prompt
cache, `cache_pool.py`), and where a chat prompt's reply begins.

Clients send a reply back as text or as parsed tool calls, and the chat template renders
that to other ids than the model sampled: the text re-tokenizes differently (a reply that
begins with a newline merges with the header's), the template trims it, tool arguments
come back re-serialized (`{"a":1}` for `{"a": 1}`) or their keys reordered. Two turns are
the same when their text is, once stripped, or when they make the same tool calls (names
and arguments equal as JSON values) around the same prose.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ..chat.tools import parse_tool_calls
from .jobs import Job, Turn

START, END = "<|im_start|>", "<|im_end|>"
HEADER = START + "assistant\n"


class TurnMatcher:
    """`same(echoed, written)` for a model whose template marks turns with ChatML's
    `<|im_start|>` / `<|im_end|>` (Qwen's); `for_model` gives None for any other."""

    def __init__(self, tokenizer: Any, start: int, end: int) -> None:
        self._tokenizer = tokenizer
        self.start_of_turn = start
        self.end_of_turn = end

    @classmethod
    def for_model(cls, model: Any) -> TurnMatcher | None:
        tokenizer = model.tokenizer
        try:
            vocab = tokenizer.get_vocab()
        except AttributeError:  # not a Hugging Face tokenizer
            return None
        if START not in vocab or END not in vocab:
            return None
        return cls(tokenizer, vocab[START], vocab[END])

    def same(self, echoed: Sequence[int], written: Sequence[int]) -> bool:
        """Whether two assistant turns (from `<|im_start|>` to the content's end) say
        the same, as the module docstring has it."""
        a, b = self._body(echoed), self._body(written)
        if a is None or b is None:
            return False
        if a.strip() == b.strip():
            return True
        prose_a, calls_a = parse_tool_calls(a)
        prose_b, calls_b = parse_tool_calls(b)
        if not calls_a or prose_a != prose_b or len(calls_a) != len(calls_b):
            return False
        return all(
            x.error is None and y.error is None and (x.name, x.arguments) == (y.name, y.arguments)
            for x, y in zip(calls_a, calls_b, strict=True)
        )

    def reply_tail(self, tokens: Sequence[int]) -> int | None:
        """How many of a chat prompt's last tokens open its reply (from the last
        `<|im_start|>`), or None when it has none."""
        for i in range(len(tokens) - 1, -1, -1):
            if tokens[i] == self.start_of_turn:
                return len(tokens) - i
        return None

    def _body(self, ids: Sequence[int]) -> str | None:
        text = self._tokenizer.decode(list(ids))
        return text[len(HEADER) :] if text.startswith(HEADER) else None


def finished_turns(
    job: Job, reply: Sequence[int], eos: Iterable[int], *, complete: bool
) -> tuple[Turn, ...]:
    """The assistant turns a finished job's cache holds as the model wrote them: those
    its prompt had (`job.turns`) and the reply it wrote, from its opening at the prompt's
    end to the last id sampled before the end-of-turn, with, for a forced call
    (`job.reply_close`) that ended by itself (`complete`), the closing ids the server adds
    to its text. The reply's turn runs past what the cache holds; it only tells the pool
    what the client will echo."""
    if job.reply_tail is None:
        return job.turns
    ids = list(reply)
    stop = set(eos)
    while ids and ids[-1] in stop:
        ids.pop()
    if job.reply_close and complete:
        ids += job.reply_close
    start = len(job.tokens) - job.reply_tail
    return (*job.turns, Turn(start, tuple(job.tokens[start:]) + tuple(ids)))
