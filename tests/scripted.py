"""A scripted model: the real tiny model, run by the real engine path, replying what a test
writes.

Protocol tests need exact replies (a tool call, a stop string, a long reply to cut short)
from a random model, and they must run the path production runs: the server's scheduler,
`BatchDecoder`, mlx-lm's `BatchGenerator`, the prompt-cache pool, `ChatSession`,
`stream_tokens`, speculative decoding. So the fake sits where mlx-lm's own server tests put
theirs, at the model: `Script(model).model` is a `Model` whose module runs the real one on
the real KV caches (so caches, their bytes and the timing are real) and then moves nearly
all the probability onto the token the script says comes next.

How it knows what comes next, through every cache operation the machinery applies
(batch caches merged, filtered, extended and left-padded, trimmed, deep-copied by the pool,
saved and loaded): its `make_cache()` gives the real layers' caches plus one more whose
keys are the token ids themselves, shaped (B, 1, T, 1). Whatever happens to the real
caches happens to that one, so each row's history is always exactly the tokens its cache
holds. From a row's history the script finds the reply being written (after the prompt's
last `<|im_start|>assistant\\n`, or after a completion prompt's text) and its next token;
after the scripted tokens comes the end of the turn. A prompt no entry matches gets the
real model's logits untouched, so an unscripted Script is the tiny model itself.

Quantized KV caches (`kv_bits`) have no room for the history layer: the scripted model
refuses them with a clear error.
"""

from __future__ import annotations

import bisect
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

from qwen_mlx.runtime import Model

# Added to the scripted token's logit: every other token of a random model's vocabulary
# then has about e^-60 of its weight (e^-30 at temperature 2, OpenAI's highest), so the
# scripted token is the one sampled, while the rest of the distribution keeps the real
# model's order (a schema that rules the scripted token out gets the real model's pick).
BONUS = 60.0


@dataclass
class Read:
    """What the model read in one call for one sequence: `tokens`, placed at `start` in
    its history (the tokens its cache held before)."""

    start: int
    tokens: list[int]


@dataclass(eq=False)
class _Entry:
    reply: list[int]
    after: tuple[int, ...]  # the tokens the prompt ends with; the reply follows them
    when: str | None  # text the prompt's last message must contain (chat entries)
    end: bool  # the end-of-turn token after the reply (else the real model goes on)
    repeat: bool  # the reply over and over, never ending
    hold: threading.Event | None  # waited for before the end of the turn
    error: BaseException | None = None  # raised when the reply's token `error_at` is due
    error_at: int = 0

    def token(self, k: int, eos: int) -> int | None:
        """The reply's `k`-th token (0: the first), the end of the turn after it, or None
        (the real model's choice)."""
        if self.repeat:
            return self.reply[k % len(self.reply)]
        if k < len(self.reply):
            return self.reply[k]
        return eos if self.end else None


@dataclass(eq=False)
class Script:
    """What `model` replies, entry by entry: the most recently added entry that matches a
    prompt writes its reply. `model` is the scripted `Model` to serve or chat with.

    Records, for the test to check: `prompts`, each prompt whose reply the model was
    asked to begin (one per request, as its sequence reached its first token), `reads`,
    what each call of the model read per sequence, and `batches`, how many sequences
    each call ran together.
    """

    base: Model
    delay: float = 0.0  # seconds each call of the model takes on top (a slow model)
    prompts: list[list[int]] = field(default_factory=list)
    reads: list[Read] = field(default_factory=list)
    batches: list[int] = field(default_factory=list)
    _entries: list[_Entry] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    live: ClassVar[weakref.WeakSet[Script]] = weakref.WeakSet()  # conftest clears each test

    def __post_init__(self) -> None:
        Script.live.add(self)
        tokenizer = self.base.tokenizer
        self.eos = int(tokenizer.eos_token_id)
        turn = [{"role": "user", "content": "x"}]
        opened = self.base.render_tokens(turn, add_generation_prompt=True)
        closed = self.base.render_tokens(turn, add_generation_prompt=False)
        assert opened[: len(closed)] == closed, "the generation prompt is not a suffix"
        self.header = tuple(opened[len(closed) :])  # <|im_start|>assistant\n
        self.turn_start = self.header[0]  # <|im_start|>
        self.model = replace(
            self.base,
            model=ScriptedModule(self.base.model, self),
            memo={},
            fingerprint=f"{self.base.fingerprint}+scripted",  # its caches have one layer more
        )

    # -- writing the script ----------------------------------------------------------------------

    def reply(
        self,
        text: str | Sequence[int],
        *,
        when: str | None = None,
        end: bool = True,
        repeat: bool = False,
        hold: threading.Event | None = None,
    ) -> None:
        """The assistant's turn in reply to a chat prompt (text, or token ids), then its
        end (with `end=False`, the real model goes on from there; with `repeat`, the reply
        never ends). It is the whole turn after `<|im_start|>assistant\n`: where the
        server opens the turn itself (a forced call's `<tool_call>\n` in the prompt), the
        script starts with those tokens too. `when` limits it to prompts whose last
        message contains that text. With `hold`, the model waits for the event before
        ending the turn."""
        self._add(_Entry(self._ids(text), self.header, when, end, repeat, hold))

    def complete(
        self,
        prompt: str | Sequence[int],
        text: str | Sequence[int],
        *,
        end: bool = True,
        repeat: bool = False,
        hold: threading.Event | None = None,
    ) -> None:
        """The continuation of a raw prompt (a completion): `text` follows `prompt`'s
        tokens wherever a history ends with them. Options as `reply`."""
        after = tuple(self._ids(prompt))
        self._add(_Entry(self._ids(text), after, None, end, repeat, hold))

    def fail(self, error: BaseException, *, when: str | None = None, after: str = "") -> None:
        """Raise `error` from the model (a crash inside its step) when a chat reply is
        about to begin, or once it has written `after`."""
        reply = self.base.encode(after) if after else []
        self._add(_Entry(reply, self.header, when, True, False, None, error, len(reply)))

    def clear(self) -> None:
        """Forget every entry and record (the model is the real one again)."""
        with self._lock:
            self._entries.clear()
        self.prompts.clear()
        self.reads.clear()
        self.batches.clear()
        self.delay = 0.0

    def read_of(self, prompt: Sequence[int]) -> int:
        """How many of `prompt`'s tokens the model read, over the calls recorded in
        `reads` (a prompt whose beginning came from a cache reads only the rest)."""
        prompt = list(prompt)
        total = 0
        for read in self.reads:
            span = prompt[read.start : read.start + len(read.tokens)]
            if span and read.tokens[: len(span)] == span:
                total += len(span)
        return total

    def text(self, tokens: Sequence[int]) -> str:
        return self.base.tokenizer.decode(list(tokens))

    def _ids(self, text: str | Sequence[int]) -> list[int]:
        ids = self.base.encode(text) if isinstance(text, str) else [int(t) for t in text]
        if not ids:
            raise ValueError("a scripted reply needs at least one token")
        return ids

    def _add(self, entry: _Entry) -> None:
        with self._lock:
            self._entries.append(entry)

    # -- reading a history -----------------------------------------------------------------------

    def targets(self, history: list[int], start: int, last: bool) -> list[int | None]:
        """The scripted next token after each of `history[:start + 1]` ... `history`
        (None where the real model decides). `last`: the call's final position is one the
        model samples from (its first reply token then counts as a prompt answered)."""
        with self._lock:
            entries = list(self._entries)
        if not entries:
            return [None] * (len(history) - start)
        ends: dict[tuple[int, ...], list[int]] = {}
        for entry in entries:
            if entry.after not in ends:
                ends[entry.after] = _ends_of(history, entry.after)
        matched: dict[tuple[int, int], bool] = {}
        out: list[int | None] = []
        for n in range(start + 1, len(history) + 1):  # the history up to each position
            target = None
            for index in range(len(entries) - 1, -1, -1):
                entry = entries[index]
                found = ends[entry.after]
                at = bisect.bisect_right(found, n) - 1
                if at < 0:
                    continue
                reply_start = found[at]
                key = (index, reply_start)
                if key not in matched:
                    matched[key] = self._matches(entry, history[:reply_start])
                if not matched[key]:
                    continue
                k = n - reply_start
                sampled = last and n == len(history)  # the token the model is asked for
                if sampled and k == 0:
                    self.prompts.append(history[:reply_start])
                if sampled and entry.error is not None and k == entry.error_at:
                    raise entry.error
                if entry.hold is not None and k == len(entry.reply) and n == len(history):
                    entry.hold.wait(60)
                target = entry.token(k, self.eos)
                break
            out.append(target)
        return out

    def _matches(self, entry: _Entry, prompt: list[int]) -> bool:
        if entry.when is None:
            return True
        last = len(prompt) - len(entry.after)  # where the assistant header begins
        opened = max((i for i in range(last) if prompt[i] == self.turn_start), default=0)
        return entry.when in self.text(prompt[opened:last])


class ScriptedModule:
    """The model module of a scripted `Model`: the real one, plus the history layer and
    the script's logits (see the module docstring). Everything else is the real module's."""

    def __init__(self, inner: Any, script: Script) -> None:
        self.inner = inner
        self.script = script

    def __getattr__(self, name: str) -> Any:  # layers, args, parameters(), ...
        if name in ("inner", "script"):  # not set yet (a copy being built)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def make_cache(self) -> list[Any]:
        from mlx_lm.models.cache import KVCache, make_prompt_cache

        return [*make_prompt_cache(self.inner), KVCache()]

    def __call__(self, inputs: Any, cache: list[Any] | None = None, **kwargs: Any) -> Any:
        import mlx.core as mx

        script = self.script
        if cache is None or len(cache) != len(self.inner.layers) + 1:
            raise RuntimeError(
                "The scripted model keeps each sequence's tokens in one extra cache layer: "
                "build its caches with make_cache(model) without kv_bits (quantized caches "
                "have no room for token ids)."
            )
        if script.delay:
            time.sleep(script.delay)
        logits = self.inner(inputs, cache=cache[:-1], **kwargs)
        ids = inputs.astype(mx.int32)[:, None, :, None]
        keys, _ = cache[-1].update_and_fetch(ids, ids)
        batch, length = inputs.shape
        script.batches.append(batch)
        rows = keys[:, 0, :, 0].tolist()
        # A batch cache pads rows on the left; while mlx-lm's batch reads prompts of other
        # lengths together it pads them on the right too, until it rolls that padding to
        # the left (BatchDecoder hands it at most one chunk of a prompt, so all of a row's
        # right padding is in this call).
        padding = getattr(cache[-1], "left_padding", None)
        left = padding.tolist() if padding is not None else [0] * batch
        right = getattr(cache[-1], "_right_padding", None)
        right = right.tolist() if right is not None else [0] * batch
        targets = []
        for row, lp, rp in zip(rows, left, right, strict=True):
            history = row[lp : len(row) - rp]
            start = len(history) - (length - rp)
            script.reads.append(Read(start, history[start:]))
            found = script.targets(history, start, last=rp == 0)
            targets.append(found + [None] * rp)  # right padding: never read
        if all(t is None for row in targets for t in row):
            return logits  # the real model's logits, untouched
        chosen = mx.array([[-1 if t is None else t for t in row] for row in targets])
        onehot = mx.arange(logits.shape[-1])[None, None, :] == chosen[:, :, None]
        return logits + onehot.astype(logits.dtype) * BONUS


def _ends_of(history: list[int], marker: tuple[int, ...]) -> list[int]:
    """Every index just past an occurrence of `marker` in `history`, in order."""
    m = len(marker)
    if m == 0:
        return []
    first = marker[0]
    return [
        i + m for i, t in enumerate(history) if t == first and tuple(history[i : i + m]) == marker
    ]
