"""The context policy: what a turn does when the conversation would not fit.

`truncate` leaves the oldest turns out of the prompt (never the system prompt), `kv-quantize`
switches the KV cache to 8-bit then 4-bit, `error` refuses before any work. The memory
planner says whether a context fits; `fit` works out what the policy does about it (the
session then carries it out). No policy lets a turn start that the planner says will not
fit.

Leaving turns out changes the front of the prompt, so everything after the system prompt
is read again: `truncate` drops whole exchanges only when it must, and then enough of them
that a quarter of the context is free (`HEADROOM`), so the next turns fit without another
drop and the cache is rebuilt rarely. A prompt far over the context is found by counting
its characters, then its tokens piece by piece, before it is rendered and tokenized whole
(as the API's routes do), so a huge message or system prompt costs no more than the
context it could fill.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from ..errors import ContextOverflowError
from ..runtime.memory import KV_BITS, MemoryPlanner, Plan, kv_label
from ..runtime.messages import Message

if TYPE_CHECKING:
    from ..runtime.model import Model

# Room kept for the reply when max_tokens is unlimited (-1).
UNLIMITED_REPLY_RESERVE = 4096
HEADROOM = 0.25  # of the context left free after leaving turns out, for the next turns
# Prompts with more characters than this per token of context are counted piece by piece
# before they are rendered (real text has about four per token).
COUNT_ABOVE = 8
COMPOSED = 4  # NFC can compose up to four code points into one character
PIECE = 8192  # characters per piece when counting


class ContextPolicy(str, Enum):
    """What a turn does when the conversation would not fit."""

    TRUNCATE = "truncate"
    KV_QUANTIZE = "kv-quantize"
    ERROR = "error"

    @property
    def action(self) -> str:
        """What happens under this policy, for a warning before a message is sent."""
        return {
            ContextPolicy.TRUNCATE: "the oldest turns will be left out of the prompt",
            ContextPolicy.KV_QUANTIZE: "the KV cache will switch to a lower precision",
            ContextPolicy.ERROR: "it will be refused",
        }[self]

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """`("truncate", "kv-quantize", "error")`, for flags, menus and help."""
        return tuple(p.value for p in cls)


def longest_token(model: Model) -> int:
    """The most characters one token spells (128 for Qwen3), found once per model: a text
    of more characters than the context times this (times COMPOSED) cannot fit, whatever
    it says."""
    if "longest_token" not in model.memo:
        try:
            vocab = model.tokenizer.get_vocab()
        except AttributeError:  # not a Hugging Face tokenizer: no bound from characters
            vocab = {"x" * (1 << 20): 0}
        model.memo["longest_token"] = max(map(len, vocab), default=1)
    return model.memo["longest_token"]


def most_characters(model: Model, context: int) -> int:
    """More characters than this cannot fit in `context` tokens, whatever they say."""
    return context * longest_token(model) * COMPOSED


def reply_reserve(max_tokens: int) -> int:
    """Tokens kept free for the reply."""
    return UNLIMITED_REPLY_RESERVE if max_tokens < 0 else max_tokens


def why_not(planner: MemoryPlanner, plan: Plan) -> str:
    """Which limit a plan breaks: the model's context, or memory."""
    if not plan.fits_context:
        return f"the model's context is {plan.context_limit:,} tokens"
    fit = planner.max_context(plan.kv_bits)
    return (
        f"only {fit:,} tokens fit in memory with {kv_label(plan.kv_bits)} KV "
        f"({plan.budget / 1e9:.1f} GB budget, {plan.weights / 1e9:.1f} GB of weights)"
    )


@dataclass(frozen=True)
class Fit:
    """What a turn reads once the policy has done its part: the prompt's token ids, how
    many of the oldest messages (after the system prompt) it leaves out, the KV cache's
    precision, and what the policy did, a sentence each."""

    tokens: list[int]
    dropped: int
    kv_bits: int | None
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Conversation:
    """What `fit` needs of a conversation: its system prompt (if any) and turn messages,
    how many turn messages are left out already, and `render(d)`, the prompt's token ids
    with the oldest `d` turn messages left out."""

    system: Sequence[Message]
    turns: Sequence[Message]
    dropped: int
    render: Callable[[int], list[int]]
    encode: Callable[[str], list[int]]
    longest_token: int  # characters the longest token spells (bounds tokens by characters)


def fit(
    policy: ContextPolicy,
    planner: MemoryPlanner,
    chat: Conversation,
    *,
    kv_bits: int | None,
    reserve: int,
) -> Fit:
    """The prompt a turn reads under `policy`, with `reserve` tokens kept for the reply;
    ContextOverflowError when the policy cannot make it fit."""
    notices: list[str] = []
    dropped = _drop_by_count(policy, planner, chat, kv_bits, notices)
    while True:
        tokens = chat.render(dropped)
        plan = planner.plan(len(tokens) + reserve, kv_bits)
        if plan.fits:
            return Fit(tokens, dropped, kv_bits, tuple(notices))
        points = drop_points(chat.turns, dropped)
        need = f"{len(tokens):,} prompt tokens + {reserve:,} for the reply"
        step = next_step(policy, planner, plan, need=need, kv_bits=kv_bits, can_drop=bool(points))
        if step.drop:
            dropped = _drop_for_room(planner, chat, points, kv_bits, reserve)
            after = len(chat.render(dropped))
            notices.append(
                f"Left the {dropped} oldest messages out of the prompt: with them it took "
                f"{len(tokens):,} tokens, plus {reserve:,} kept for the reply, and "
                f"{why_not(planner, plan)}. It now takes {after:,} tokens, read again from "
                "the start, with room left for the next turns."
            )
        else:
            notices.append(
                f"Switched the KV cache to {step.kv_bits}-bit: the conversation took "
                f"{len(tokens):,} tokens, plus {reserve:,} kept for the reply, and "
                f"{why_not(planner, plan)}."
            )
            kv_bits = step.kv_bits


def drop_points(turns: Sequence[Message], dropped: int) -> list[int]:
    """Where the prompt may start instead, leaving out whole exchanges: at each later user
    message, and at the last message. Empty when only the last message is left."""
    last = len(turns) - 1
    points = [i for i in range(dropped + 1, last) if turns[i].role == "user"]
    return [*points, last] if dropped < last else points


def _drop_for_room(
    planner: MemoryPlanner,
    chat: Conversation,
    points: list[int],
    kv_bits: int | None,
    reserve: int,
) -> int:
    """The fewest messages to leave out so that the prompt fits with `HEADROOM` of the
    context to spare, or failing that fits at all, or failing that the most (the caller
    then says the last message alone is too long). A binary search: fitting only gets
    easier as more is left out."""
    limit = min(planner.shape.context_length, planner.max_context(kv_bits))
    for spare in (int(limit * HEADROOM), 0):
        lo, hi = 0, len(points)
        while lo < hi:
            mid = (lo + hi) // 2
            if planner.plan(len(chat.render(points[mid])) + reserve + spare, kv_bits).fits:
                hi = mid
            else:
                lo = mid + 1
        if lo < len(points):
            return points[lo]
    return points[-1]


def _drop_by_count(
    policy: ContextPolicy,
    planner: MemoryPlanner,
    chat: Conversation,
    kv_bits: int | None,
    notices: list[str],
) -> int:
    """Before anything is rendered: the messages to leave out of a prompt far over the
    context (truncate), or ContextOverflowError (the other policies, or when what cannot
    be left out is itself too long). Most conversations are near the context or under it,
    and pass untouched."""
    lowest = min((b for b in KV_BITS if b is not None), default=None)
    bits = lowest if policy is ContextPolicy.KV_QUANTIZE else kv_bits
    limit = min(planner.shape.context_length, planner.max_context(bits))

    def over(dropped: int) -> int | None:
        texts = [m.content for m in (*chat.system, *chat.turns[dropped:])]
        return tokens_over(texts, limit, chat.encode, chat.longest_token)

    dropped = chat.dropped
    found = over(dropped)
    if found is None:
        return dropped
    points = drop_points(chat.turns, dropped) if policy is ContextPolicy.TRUNCATE else []
    lo, hi = 0, len(points)
    while lo < hi:  # the fewest messages to leave out so that it is no longer far over
        mid = (lo + hi) // 2
        if over(points[mid]) is None:
            hi = mid
        else:
            lo = mid + 1
    if lo == len(points):
        if policy is not ContextPolicy.TRUNCATE:
            raise ContextOverflowError(
                f"The conversation takes at least {found:,} tokens, but the context holds "
                f"{limit:,}. Shorten it, or start a new chat."
            )
        least = over(points[-1]) if points else found
        what = "The system prompt and the last message" if chat.system else "The last message"
        raise ContextOverflowError(
            f"{what} alone take{'' if chat.system else 's'} at least {least:,} tokens, but "
            f"the context holds {limit:,}. Shorten {'them' if chat.system else 'it'}."
        )
    notices.append(
        f"Left the {points[lo]} oldest messages out of the prompt: with them it took at "
        f"least {found:,} tokens, far over the {limit:,}-token context."
    )
    return points[lo]


def tokens_over(
    texts: list[str], limit: int, encode: Callable[[str], list[int]], longest: int
) -> int | None:
    """A lower bound on the tokens of `texts` when they are certainly over `limit`; None
    when they may fit (then they are rendered and counted exactly). No token spells more
    than `longest` characters, so the characters give a bound; else the texts are
    counted piece by piece until the count is well over (pieces may differ from the whole
    by a token or two at their seams)."""
    chars = sum(map(len, texts))
    if chars <= limit * COUNT_ABOVE:
        return None
    if chars >= limit * longest * COMPOSED:
        return chars // (longest * COMPOSED)
    enough = limit + limit // 4 + 64
    counted = 0
    for text in texts:
        pos = 0
        while pos < len(text) and counted < enough:
            end = _piece_end(text, pos + PIECE)
            counted += len(encode(text[pos:end]))
            pos = end
        if counted >= enough:
            return counted
    return None


def _piece_end(text: str, at: int) -> int:
    """Where a piece ending near `at` ends: before a space that follows a non-space, where
    BPE pre-tokenizers split anyway, so pieces count as the whole text does."""
    if at >= len(text):
        return len(text)
    low = at - PIECE // 2
    cut = text.rfind(" ", low, at)
    while cut > low and text[cut - 1].isspace():
        cut = text.rfind(" ", low, cut)
    return cut if cut > low else at


@dataclass(frozen=True)
class Step:
    """What to do about a conversation that does not fit: leave the oldest turn out
    (`drop`), or store the KV cache at `kv_bits`."""

    drop: bool = False
    kv_bits: int | None = None


def next_step(
    policy: ContextPolicy,
    planner: MemoryPlanner,
    plan: Plan,
    *,
    need: str,
    kv_bits: int | None,
    can_drop: bool,
) -> Step:
    """The policy's next step for a conversation whose `plan` does not fit (`need` says
    how many tokens it needs); ContextOverflowError when there is none."""
    if policy is ContextPolicy.ERROR:
        raise ContextOverflowError(f"The conversation needs {need}, but {why_not(planner, plan)}.")
    if policy is ContextPolicy.KV_QUANTIZE:
        lower = [b for b in KV_BITS if b is not None and (kv_bits or 16) > b]
        if not plan.fits_context or not lower:
            raise ContextOverflowError(
                f"The conversation needs {need}, but {why_not(planner, plan)}, even with "
                f"{kv_label(kv_bits)} KV. Start a new chat or use the truncate policy."
            )
        return Step(kv_bits=lower[0])
    if not can_drop:
        raise ContextOverflowError(
            f"The last message alone needs {need}, but {why_not(planner, plan)}. Shorten it "
            "or lower max_tokens."
        )
    return Step(drop=True)
