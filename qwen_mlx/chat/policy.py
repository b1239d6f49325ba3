"""The context policy: what a turn does when the conversation would not fit.

`truncate` leaves the oldest turns out of the prompt (never the system prompt), `kv-quantize`
switches the KV cache to 8-bit then 4-bit, `error` refuses before any work. The memory
planner says whether a context fits; `next_step` says what the policy does about it, and
the session carries it out. No policy lets a turn start that the planner says will not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from ..errors import ContextOverflowError
from ..runtime.memory import KV_BITS, MemoryPlanner, Plan, kv_label

# Room kept for the reply when max_tokens is unlimited (-1).
UNLIMITED_REPLY_RESERVE = 4096


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
