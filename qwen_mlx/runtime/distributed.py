"""One model split across processes (ranks) over `mx.distributed`: what a rank knows of
its group (`Shard`), the sampling every rank agrees on, and the operation channel.

Two ways to run a group:
- Every rank runs the same program (`load(ref, group=mx.distributed.init())` in a script
  started by `mlx.launch`): each call happens on every rank, as in mlx-lm's examples.
- Rank 0 drives (`load(ref, group=Ranks(...))`, what `qwen-mlx serve --ranks N` does):
  only rank 0 runs the program; each call that touches the model is sent to the other
  ranks first, in order, and they replay it on their share (`mirror.py`).

Either way every rank must feed the model the same tokens. Sampling happens on all of
them, but the token that counts is rank 0's, summed into every rank's result inside the
step's graph (`shared_sampler`): logits processors, seeds and last-bit differences between
Macs cannot make the ranks disagree, and followers need no processors at all.

Collectives run on mlx-lm's generation stream, the one the model's own collectives use:
operations on one stream run in the order they were queued, so a control message never
overtakes a step that is still being computed.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import RankFailedError

TENSOR, PIPELINE = "tensor", "pipeline"
_INFO_BYTES = 4096  # room for one rank's facts in the startup exchange


@dataclass(frozen=True)
class RankInfo:
    """What each rank reports once its share is loaded (rank 0 keeps all of them)."""

    rank: int
    host: str
    weights_bytes: int  # of its share
    peak_bytes: int  # the most it held while loading
    budget_bytes: int  # what the memory planner may use on its machine
    memory_bytes: int  # its machine's memory
    kv_per_token: int  # bytes of KV cache per token on this rank (bf16)
    fingerprint: str
    layers: int  # transformer layers it runs


@dataclass
class Shard:
    """A loaded model's place in its group: the group, this rank, how the model is split,
    and (on rank 0, when it drives the others) the leader that mirrors each call."""

    group: Any  # mx.distributed.Group
    mode: str  # TENSOR or PIPELINE
    ranks: tuple[RankInfo, ...] = ()
    leader: Any = field(default=None, repr=False)  # mirror.Leader on a driving rank 0

    @property
    def rank(self) -> int:
        return self.group.rank()

    @property
    def size(self) -> int:
        return self.group.size()


def leader_of(model: Any) -> Any:
    """The `mirror.Leader` that mirrors this model's calls on the other ranks, or None
    (one process, a follower, or every rank running the same program)."""
    shard = getattr(model, "shard", None)
    return shard.leader if shard is not None else None


_JOINED: list[Any] = []


def join_group(backend: str = "ring") -> Any:
    """This process's `mx.distributed` group, from the launcher's environment variables
    (MLX_RANK and MLX_HOSTFILE for the ring). MLX connects a process to one group, once
    (a second init returns the first group, even one that lost a rank), so a second call
    is refused: a new group needs a new process."""
    import mlx.core as mx

    check_not_joined()
    try:
        group = mx.distributed.init(strict=True, backend=backend)
    except RuntimeError as e:
        raise RankFailedError(f"Could not connect the group over {backend}: {e}") from e
    _JOINED.append(group)
    return group


def check_not_joined() -> None:
    """Refuse to start a second group in a process that has joined one."""
    if _JOINED:
        raise RankFailedError(
            "This process has joined a group of ranks already, and MLX connects a process "
            "to one group only: start the new group from a new process."
        )


def control_stream() -> Any:
    """The stream every rank's control collectives run on (see the module docstring)."""
    from mlx_lm.generate import generation_stream

    return generation_stream


def broadcast(group: Any, data: Any) -> Any:
    """Rank 0's `data` (an mx.array) on every rank: the others pass zeros of its shape."""
    import mlx.core as mx

    with mx.stream(control_stream()):
        out = mx.distributed.all_sum(data, group=group)
        mx.eval(out)
    return out


def shared_sampler(model: Any, sampler: Callable | None) -> Callable | None:
    """`sampler` made to give every rank rank 0's tokens (see the module docstring).

    Alone, `sampler` as it is. In a group, None stands for greedy (the batch's shared
    default); rank 0 samples and the others add zeros, inside the step's graph, so the
    step's evaluation is not held up.
    """
    shard = getattr(model, "shard", None)
    if shard is None or shard.size == 1:
        return sampler
    import mlx.core as mx

    group = shard.group
    if shard.rank == 0:
        if sampler is None:
            from mlx_lm.sample_utils import greedy_sampler as sampler

        chosen = sampler

        def lead(logprobs: Any) -> Any:
            return mx.distributed.all_sum(chosen(logprobs).astype(mx.uint32), group=group)

        return lead

    def follow(logprobs: Any) -> Any:
        return mx.distributed.all_sum(mx.zeros((logprobs.shape[0],), mx.uint32), group=group)

    return follow


def shared_flag(group: Any, value: bool) -> bool:
    """Rank 0's yes or no on every rank (the others' `value` is ignored): whether to
    stop, asked at the same point of the same loop everywhere."""
    import mlx.core as mx

    mine = mx.array([1 if value and group.rank() == 0 else 0], dtype=mx.int32)
    return bool(broadcast(group, mine).item())


def exchange(group: Any, facts: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's `facts` (small JSON), on every rank, in rank order."""
    import mlx.core as mx

    raw = json.dumps(facts).encode()
    if len(raw) > _INFO_BYTES:
        raise ValueError("A rank's facts are too large to exchange.")
    padded = mx.array(list(raw.ljust(_INFO_BYTES)), dtype=mx.uint8)
    with mx.stream(mx.cpu):
        gathered = mx.distributed.all_gather(padded, group=group, stream=mx.cpu)
        mx.eval(gathered)
    blob = bytes(gathered.tolist())
    return [
        json.loads(blob[i * _INFO_BYTES : (i + 1) * _INFO_BYTES].rstrip())
        for i in range(group.size())
    ]


def digest(value: Any) -> int:
    """A 31-bit checksum of a JSON-able value: ranks compare what each step gave them."""
    return zlib.crc32(json.dumps(value, sort_keys=True, default=str).encode()) & 0x7FFFFFFF


def lost_peer(error: BaseException) -> bool:
    """Whether an exception is MLX's report of a rank that went away."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "[ring]" in text or "[jaccl]" in text or "peer" in text
    )


def group_failure(model: Any) -> RankFailedError | None:
    """Why the model's group cannot run any more (a rank stopped), or None."""
    leader = leader_of(model)
    if leader is None:
        return None
    return leader.failure or leader.ranks.failure


def group_status(model: Any) -> dict[str, Any]:
    """What /health says about the ranks: how many, how the model is split, each one's
    state, and (status "degraded") the failure that stopped the group."""
    shard = getattr(model, "shard", None)
    if shard is None:
        return {"ranks": 1}
    out: dict[str, Any] = {"ranks": shard.size, "split": shard.mode}
    leader = shard.leader
    if leader is not None:
        out["rank_states"] = leader.ranks.report()
        out["group_restarts"] = leader.ranks.restarts
        failure = group_failure(model)
        if failure is not None:
            out["status"] = "degraded"
            out["error"] = str(failure)
    return out
