"""Rank 0 drives, the other ranks follow: every call that touches the model on rank 0 is
first sent to the followers as an operation, in order, and they make the same call on
their share of the model (`Leader` on rank 0, `Follower` on the others).

The operations, each a message of 1 KiB summed from rank 0 over `mx.distributed`
(`distributed.broadcast`): a header (op, payload length, check, sequence) and a JSON
payload, of which what does not fit follows in a second message (a long prompt's ids):

    LOAD     ref and options         every rank loads its share (`sharding.load_rank`)
    OPEN     decoder id, sizes       a BatchDecoder (the server's batch)
    ADD      id, tokens, params,     a sequence joins it
             cache reference
    STEP     id                      one decode step and prefill chunk
    CANCEL   id, uid                 a sequence leaves it
    CLOSE    id                      the batch ends
    STREAM   tokens, params, cache   one sequence alone (`stream_tokens`), to its end
    PREFILL  tokens, cache           the model reads tokens into a cache
    REQUANT  cache, bits             a cache at a lower precision
    GATHER   cache                   a cache's shares put together on rank 0 (to save it)
    SCATTER  cache                   a whole cache from rank 0 shared out (to resume it)
    STOP                             the followers exit

Every payload also carries the cache bookkeeping since the last one: caches rank 0 copied
(`copy`) or let go (`drop`). A KV cache is split like the model: rank 0 holds its share in
a `MirroredCache` (a list, as mlx-lm's caches are) tagged with a handle, each follower
its share under the same handle. Rank 0's prompt-cache pool keeps, copies, trims and
evicts caches without telling anyone; an operation that uses a cache names its handle
and how many tokens rank 0's share holds, and a follower trims its own to match.

Every rank sends the same tokens to the model (`distributed.shared_sampler`), so the
ranks take the same path through each call; the check in each header (a digest of what
the previous operation gave rank 0) proves it, and a follower that finds otherwise stops
with an error instead of computing garbage. A `lone` call (`stream_tokens`, `prefill`)
asks rank 0 at each point where it could stop (`distributed.shared_flag`).

When no sequence is running the followers park: they wait on the doorbell of
`launch.Ranks` instead of inside a collective, which would spin.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import json
import struct
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import IO, Any

from ..errors import GenerationCancelled, RankFailedError
from .distributed import broadcast, digest, lost_peer, shared_flag

LOAD, OPEN, ADD, STEP, CANCEL, CLOSE, STREAM, PREFILL, REQUANT, GATHER, SCATTER, STOP = range(1, 13)
NAMES = {
    LOAD: "load",
    OPEN: "open",
    ADD: "add",
    STEP: "step",
    CANCEL: "cancel",
    CLOSE: "close",
    STREAM: "stream",
    PREFILL: "prefill",
    REQUANT: "requantize",
    GATHER: "gather",
    SCATTER: "scatter",
    STOP: "stop",
}
MESSAGE_BYTES = 1024  # one collective carries an operation, unless its payload is long
_HEADER = "<4i"  # op, payload bytes, check, sequence
_INLINE = MESSAGE_BYTES - struct.calcsize(_HEADER)
# Operations whose calls run collectives: a failure in one leaves the ranks out of step.
COLLECTIVE = {LOAD, STEP, STREAM, PREFILL, GATHER, SCATTER}


class DesyncError(RuntimeError):
    """A follower found that it did not get what rank 0 got."""


_LEADERS: weakref.WeakSet[Leader] = weakref.WeakSet()


def owner(cache: Sequence[Any]) -> Leader | None:
    """The leader whose group holds the rest of `cache`, if it is a split cache."""
    if isinstance(cache, MirroredCache):
        return cache._leader()
    if not cache:
        return None
    return next((lead for lead in list(_LEADERS) if cache[0] in lead._owned), None)


class MirroredCache(list):
    """Rank 0's share of a KV cache that the followers hold the rest of (see the module
    docstring). Copying it copies theirs; when it is garbage, theirs go too."""

    def __init__(self, layers: Sequence[Any], leader: Leader, handle: str) -> None:
        super().__init__(layers)
        self.handle = handle
        self._leader = weakref.ref(leader)
        weakref.finalize(self, leader.released, handle)
        if self:  # a plain list of the same layers (a slice, say) is still known
            leader._owned[self[0]] = handle

    def __deepcopy__(self, memo: dict[int, Any]) -> MirroredCache:
        leader = self._leader()
        if leader is None:
            raise RuntimeError("This cache's group has ended.")
        twin = MirroredCache(copy.deepcopy(list(self), memo), leader, leader.new_handle("c"))
        leader.pending.append(("copy", self.handle, twin.handle))
        return twin

    def __copy__(self) -> MirroredCache:
        return self.__deepcopy__({})

    def __reduce__(self) -> Any:
        raise TypeError("A split KV cache cannot be pickled; save it with save_cache.")


def _cache_bits(cache: Sequence[Any]) -> int | None:
    return getattr(cache[0], "bits", None) if cache else None


def _cache_length(cache: Sequence[Any]) -> int:
    return cache[0].offset if cache else 0


class Leader:
    """Rank 0's side: sends each operation, then makes the call on its own share.

    Used from one thread at a time (the model thread). After a rank fails every call
    raises RankFailedError naming it; `ranks.on_failure` hears of it at once.
    `running_since` tells `launch.Ranks` how long the model thread has been inside the
    call it is in (None between calls, and while a stream waits on its reader): a call
    that outlasts a rank's loss is blocked in MLX for good (see `launch.Ranks`).
    """

    def __init__(self, ranks: Any) -> None:
        self.ranks = ranks
        self.group = ranks.group
        self.model: Any = None  # the split model, once loaded
        self.local: Any = None  # the same model without this leader: calls run here
        self.failure: RankFailedError | None = None
        self.pending: deque[tuple[str, ...]] = deque()
        self.parked = True  # the followers wait on the doorbell until the first operation
        self.running_since: float | None = None  # time.monotonic() the current call began
        self._check = 0
        self._seq = 0
        self._handles = itertools.count()
        self._decoders = itertools.count()
        self._open: dict[int, Any] = {}
        self._busy = threading.Lock()
        self._closed = False
        # First layer of each split cache -> its handle: lists of the same layers count.
        self._owned: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()
        _LEADERS.add(self)

    # -- the channel -------------------------------------------------------------------------

    def new_handle(self, kind: str) -> str:
        return f"{kind}{next(self._handles)}"

    def released(self, handle: str) -> None:
        """A MirroredCache was collected: its follower shares go with the next operation."""
        if not self._closed:
            self.pending.append(("drop", handle))

    def call(self, op: int, meta: dict[str, Any], run: Callable[[], Any]) -> Any:
        """Send `op` with `meta`, then `run()` it here; the outcome's digest goes with the
        next operation. An error inside a collective operation breaks the group."""
        if not self._busy.acquire(blocking=False):
            raise RuntimeError("The group's model is used from two threads at once.")
        self.running_since = time.monotonic()
        try:
            self._send(op, meta)
            try:
                result = run()
            except BaseException as e:
                self._outcome(op, e)
                if op not in COLLECTIVE:
                    raise
                raise self._broken(op, e) from None
            self._outcome(op, result)
            return result
        finally:
            self.running_since = None
            self._busy.release()

    def _send(self, op: int, meta: dict[str, Any]) -> None:
        import mlx.core as mx
        import numpy as np

        self.check_alive()
        meta = dict(meta)
        meta["pending"] = [self.pending.popleft() for _ in range(len(self.pending))]
        payload = json.dumps(meta, separators=(",", ":")).encode()
        header = struct.pack(_HEADER, op, len(payload), self._check, self._seq & 0x7FFFFFFF)
        first = (header + payload[:_INLINE]).ljust(MESSAGE_BYTES, b"\0")
        if self.parked:
            self.ranks.ring()
            self.parked = False
        try:
            broadcast(self.group, mx.array(np.frombuffer(first, dtype=np.uint8)))
            if len(payload) > _INLINE:
                rest = np.frombuffer(payload[_INLINE:], dtype=np.uint8)
                broadcast(self.group, mx.array(rest))
        except RuntimeError as e:
            raise self._lost(e) from e
        self._seq += 1

    def _outcome(self, op: int, result: Any) -> None:
        self._check = digest(_summary(op, result))
        self.parked = not any(len(d) for d in self._open.values())

    def check_alive(self) -> None:
        """Raise the group's failure, if a rank has failed."""
        if self.failure is None and self.ranks.failure is not None:
            self.failure = self.ranks.failure
        if self.failure is not None:
            raise self.failure

    def _lost(self, error: BaseException) -> RankFailedError:
        failure = self.ranks.wait_failure(3.0) or RankFailedError(
            f"A rank of the group went away ({error})."
        )
        self.failure = failure
        return failure

    def _broken(self, op: int, error: BaseException) -> BaseException:
        """The ranks are no longer in step after `op` failed: fail the group."""
        if isinstance(error, RankFailedError):
            self.failure = error
            return error
        if lost_peer(error):
            return self._lost(error)
        if isinstance(error, GenerationCancelled):
            return error  # every rank stopped at the same point
        failure = RankFailedError(
            f"Rank 0 failed during a {NAMES[op]} ({type(error).__name__}: {error}); the "
            "other ranks are out of step with it, so the group has stopped."
        )
        self.failure = failure
        self.ranks.fail(failure)
        failure.__cause__ = error
        return error

    # -- loading -----------------------------------------------------------------------------

    def load(self, ref: str, options: dict[str, Any], home: Any = None) -> Any:
        """Every rank loads its share of `ref` (see `model.load`); returns rank 0's Model."""
        from .model import load

        def run() -> Any:
            return load(ref, group=self.group, home=home, **options)

        try:
            model = self.call(LOAD, {"ref": ref, "options": options}, run)
        except RuntimeError as e:
            if lost_peer(e):
                raise self._lost(e) from e
            raise
        self.attach(model)
        return model

    def attach(self, model: Any) -> None:
        self.model = model
        self.local = replace(model, shard=replace(model.shard, leader=None))
        model.shard.leader = self

    def ref(self, cache: Sequence[Any] | None) -> dict[str, Any] | None:
        """How the followers find their share of `cache` (None: the callee makes one)."""
        if cache is None:
            return None
        handle = cache.handle if isinstance(cache, MirroredCache) else None
        if handle is None and cache:
            handle = self._owned.get(cache[0])
        if handle is None and _cache_length(cache) > 0:
            if not self._whole(cache):
                raise ValueError(
                    "This KV cache was not made for the group's model: make caches with "
                    "make_cache(model), which splits them like the model."
                )
            handle = self._adopt(cache)
        return {"handle": handle, "cached": _cache_length(cache), "bits": _cache_bits(cache)}

    def _whole(self, cache: Sequence[Any]) -> bool:
        """Whether `cache` is a whole model's cache (loaded from a file, say)."""
        from .distributed import PIPELINE

        config = self.model.config
        if self.model.shard.mode == PIPELINE:
            return len(cache) == int(config["num_hidden_layers"])
        keys = cache[0].keys
        keys = keys[0] if isinstance(keys, tuple | list) else keys
        heads = int(config.get("num_key_value_heads", config["num_attention_heads"]))
        return len(cache) == int(config["num_hidden_layers"]) and keys.shape[1] == heads

    def _adopt(self, cache: list[Any]) -> str:
        """Split a whole cache across the ranks, in place: `cache` then holds rank 0's
        share (its list object stays the caller's)."""
        share, handle = self._scatter(cache)
        cache[:] = share
        self._owned[cache[0]] = handle
        weakref.finalize(cache[0], self.released, handle)
        return handle

    def wrap(self, cache: list[Any], handle: str | None = None) -> MirroredCache:
        return MirroredCache(cache, self, handle or self.new_handle("n"))

    # -- the batch ---------------------------------------------------------------------------

    def decoder(self, **options: Any) -> MirroredDecoder:
        return MirroredDecoder(self, **options)

    # -- one sequence ------------------------------------------------------------------------

    def stream(self, tokens: Sequence[int], params: Any, **kw: Any) -> Iterator[Any]:
        """`stream_tokens` on every rank (see the module docstring)."""
        from .generation import stream_tokens

        if kw.get("draft") is not None:
            raise ValueError(
                "Speculative decoding does not run on a model split across ranks; leave "
                "out the draft."
            )
        kw.pop("draft", None)
        kw.pop("num_draft_tokens", None)
        cache = kw.get("prompt_cache")
        meta = {
            "tokens": list(tokens),
            "params": params.to_dict(),
            "cache": self.ref(cache),
            "prefill_step_size": kw.get("prefill_step_size", 2048),
        }
        asked = kw.pop("should_stop", None)
        forced = [False]

        def stop() -> bool:
            return shared_flag(self.group, forced[0] or bool(asked and asked()))

        if not self._busy.acquire(blocking=False):
            raise RuntimeError("The group's model is used from two threads at once.")
        last: list[Any] = []
        self.running_since = time.monotonic()
        try:
            self._send(STREAM, meta)
            inner = stream_tokens(self.local, tokens, params, should_stop=stop, **kw)
            try:
                for chunk in inner:
                    last[:] = [chunk]
                    self.running_since = None  # the reader's time, not the group's
                    yield chunk
                    self.running_since = time.monotonic()
            except GeneratorExit:
                self.running_since = time.monotonic()
                forced[0] = True  # the caller left: every rank stops at the next point
                for chunk in inner:
                    last[:] = [chunk]
                self._outcome(STREAM, last)
                raise
            except BaseException as e:
                self._outcome(STREAM, e)
                raise self._broken(STREAM, e) from None
            self._outcome(STREAM, last)
        finally:
            self.running_since = None
            self._busy.release()

    def prefill(self, tokens: Sequence[int], cache: list[Any], **kw: Any) -> None:
        from .cache import prefill

        asked = kw.pop("should_stop", None)

        def stop() -> bool:
            return shared_flag(self.group, bool(asked and asked()))

        meta = {"tokens": list(tokens), "cache": self.ref(cache), "step": kw.get("step", 2048)}
        self.call(PREFILL, meta, lambda: prefill(self.local, tokens, cache, should_stop=stop, **kw))

    def requantize(self, cache: list[Any], bits: int) -> MirroredCache:
        from .cache import requantize_cache

        handle = self.new_handle("q")
        meta = {"cache": self.ref(cache), "bits": bits, "handle": handle}
        out = self.call(REQUANT, meta, lambda: requantize_cache(self.local, cache, bits))
        return self.wrap(out, handle)

    def gather(self, cache: list[Any]) -> list[Any]:
        """The whole cache on rank 0 (every rank's share put together), to save it."""
        from .cachesplit import gather

        return self.call(GATHER, {"cache": self.ref(cache)}, lambda: gather(self.local, cache))

    def scatter(self, cache: list[Any]) -> MirroredCache:
        """A whole cache (loaded from a file on rank 0) split across the ranks."""
        share, handle = self._scatter(cache)
        return self.wrap(share, handle)

    def _scatter(self, cache: list[Any]) -> tuple[list[Any], str]:
        from .cachesplit import describe, scatter

        handle = self.new_handle("s")
        meta = {"layout": describe(cache), "handle": handle}
        return self.call(SCATTER, meta, lambda: scatter(self.local, cache)), handle

    def stop(self) -> None:
        """Tell the followers to exit (the group is done with), if it is still whole."""
        if self.failure is None and self.ranks.failure is None:
            with contextlib.suppress(RankFailedError, RuntimeError):
                self.call(STOP, {}, lambda: None)
        self._closed = True


def load_driven(ranks: Any, ref: Any, *, home: Any = None, **options: Any) -> Any:
    """`load(ref, group=ranks)`: rank 0 finds the model first (a wrong name fails here,
    before the other ranks do anything), then every rank loads its share. The others
    are told the exact stored version, or the folder, that rank 0 found."""
    from pathlib import Path

    from ..store import resolve
    from ..store.manifest import read_manifest

    folder = resolve(ref, home=home, revision=options.get("revision"))
    manifest = read_manifest(folder)
    if Path(str(ref)).expanduser().exists():
        sent = str(folder.resolve())
    elif manifest is not None:
        sent = manifest.name
    else:
        sent = str(ref)
    if ranks.leader is None:
        ranks.leader = Leader(ranks)
    model = ranks.leader.load(sent, options, home=home)
    ranks.loaded(model.shard.ranks)
    return model


class MirroredDecoder:
    """A `BatchDecoder` on every rank, driven from rank 0: `add`, `cancel`, `step` and
    `close` as BatchDecoder has them. Finished sequences' caches come back as
    MirroredCaches, ready for a prompt-cache pool."""

    def __init__(self, leader: Leader, **options: Any) -> None:
        from .batch import BatchDecoder

        self.leader = leader
        self.id = next(leader._decoders)
        self._inner = leader.call(
            OPEN, {"id": self.id, "options": options}, lambda: BatchDecoder(leader.local, **options)
        )
        leader._open[self.id] = self._inner

    @property
    def model(self) -> Any:
        return self.leader.model

    def __len__(self) -> int:
        return len(self._inner)

    def add(
        self,
        tokens: Sequence[int],
        params: Any,
        *,
        logits_processors: Sequence[Callable] = (),
        cache: list[Any] | None = None,
        cached: int = 0,
        logprobs: int | None = None,
    ) -> int:
        meta = {
            "id": self.id,
            "tokens": list(tokens),
            "params": params.to_dict(),
            "cache": self.leader.ref(cache),
            "cached": cached,
        }

        def run() -> int:
            return self._inner.add(
                tokens,
                params,
                logits_processors=logits_processors,
                cache=list(cache) if cache is not None else None,
                cached=cached,
                logprobs=logprobs,
            )

        return self.leader.call(ADD, meta, run)

    def cancel(self, uid: int) -> Any:
        event = self.leader.call(
            CANCEL, {"id": self.id, "uid": uid}, lambda: self._inner.cancel(uid)
        )
        return self._wrap(event)

    def step(self) -> list[Any]:
        events = self.leader.call(STEP, {"id": self.id}, self._inner.step)
        return [self._wrap(e) for e in events]

    def close(self) -> None:
        self.leader._open.pop(self.id, None)
        if self.leader.failure is not None or self.leader.ranks.failure is not None:
            self._inner.close()  # the followers are gone or out of step: nothing to tell
            return
        self.leader.call(CLOSE, {"id": self.id}, self._inner.close)

    def _wrap(self, event: Any) -> Any:
        if event is None or event.cache is None:
            return event
        handle = f"d{self.id}:{event.uid}"
        return replace(event, cache=self.leader.wrap(event.cache, handle))


def _summary(op: int, result: Any) -> Any:
    """What both sides compare after `op`: its outcome, without the arrays."""
    if isinstance(result, BaseException):
        return ["error", type(result).__name__]
    if op == ADD:
        return result
    if op == STEP:
        return [[e.uid, e.finish_reason, len(e.text)] for e in result]
    if op == CANCEL:
        return None if result is None else [result.uid, result.completion_tokens]
    if op == STREAM:
        last = result[-1] if result else None
        return None if last is None else [last.finish_reason, last.generation_tokens]
    return None


class Follower:
    """A follower rank's side: waits for each operation and makes the call it names on
    its share. `run()` returns when rank 0 says stop or goes away."""

    def __init__(
        self,
        group: Any,
        bell: IO[bytes],
        report: Callable[..., None] = lambda **kw: None,
    ) -> None:
        self.group = group
        self.bell = bell
        self.report = report
        self.model: Any = None
        self.parked = True
        self.check = 0
        self.seq = 0
        self.store: dict[str, list[Any]] = {}
        self.decoders: dict[int, Any] = {}

    def run(self) -> None:
        while True:
            if self.parked and not self.bell.read(1):
                return  # rank 0 has gone: its end of the pipe closed
            op, meta = self._receive()
            if op == STOP:
                return
            handler = getattr(self, f"_{NAMES[op]}")
            try:
                result = handler(meta)
            except Exception as e:
                if op in COLLECTIVE and not isinstance(e, GenerationCancelled):
                    raise
                result = e
            self.check = digest(_summary(op, result))
            self.parked = not any(len(d) for d in self.decoders.values())

    def _receive(self) -> tuple[int, dict[str, Any]]:
        import mlx.core as mx
        import numpy as np

        first = np.array(broadcast(self.group, mx.zeros((MESSAGE_BYTES,), mx.uint8))).tobytes()
        op, size, check, seq = struct.unpack_from(_HEADER, first)
        payload = first[struct.calcsize(_HEADER) :][: min(size, _INLINE)]
        if size > _INLINE:
            rest = broadcast(self.group, mx.zeros((size - _INLINE,), mx.uint8))
            payload += np.array(rest).tobytes()
        if op not in NAMES or seq != self.seq & 0x7FFFFFFF:
            raise DesyncError(f"Got operation {op} number {seq}, expected number {self.seq}.")
        if check != self.check:
            raise DesyncError(
                f"Rank {self.group.rank()} is out of step with rank 0 before its "
                f"{NAMES[op]} (operation {seq}): the previous step gave them different results."
            )
        self.seq += 1
        meta = json.loads(payload)
        for entry in meta.pop("pending"):
            if entry[0] == "drop":
                self.store.pop(entry[1], None)
            else:  # copy
                self.store[entry[2]] = copy.deepcopy(self.store[entry[1]])
        return op, meta

    def _take(self, ref: dict[str, Any] | None) -> list[Any] | None:
        """This rank's share of the cache rank 0 named, trimmed to what rank 0's holds."""
        from .cache import make_cache, trim_cache

        if ref is None:
            return None
        if ref["cached"] == 0:
            if ref["handle"] is not None:
                self.store.pop(ref["handle"], None)
            return make_cache(self.model, ref["bits"])
        try:
            cache = self.store.pop(ref["handle"])
        except KeyError:
            raise DesyncError(
                f"Rank 0 named a KV cache this rank lacks ({ref['handle']})."
            ) from None
        trim_cache(cache, _cache_length(cache) - ref["cached"])
        return cache

    # -- the operations ----------------------------------------------------------------------

    def _load(self, meta: dict[str, Any]) -> None:
        from .model import load

        self.report(state="loading")
        self.store.clear()
        self.decoders.clear()
        self.model = load(meta["ref"], group=self.group, **meta["options"])
        self.report(state="ready")

    def _open(self, meta: dict[str, Any]) -> None:
        from .batch import BatchDecoder

        self.decoders[meta["id"]] = BatchDecoder(self.model, **meta["options"])

    def _add(self, meta: dict[str, Any]) -> int:
        from .sampling import SamplingParams

        params = SamplingParams(**meta["params"])
        decoder = self.decoders[meta["id"]]
        return decoder.add(
            meta["tokens"], params, cache=self._take(meta["cache"]), cached=meta["cached"]
        )

    def _step(self, meta: dict[str, Any]) -> list[Any]:
        events = self.decoders[meta["id"]].step()
        for e in events:
            if e.cache is not None:
                self.store[f"d{meta['id']}:{e.uid}"] = e.cache
        return events

    def _cancel(self, meta: dict[str, Any]) -> Any:
        event = self.decoders[meta["id"]].cancel(meta["uid"])
        if event is not None and event.cache is not None:
            self.store[f"d{meta['id']}:{event.uid}"] = event.cache
        return event

    def _close(self, meta: dict[str, Any]) -> None:
        decoder = self.decoders.pop(meta["id"], None)
        if decoder is not None:
            decoder.close()

    def _stream(self, meta: dict[str, Any]) -> list[Any]:
        from .generation import stream_tokens
        from .sampling import SamplingParams

        ref = meta["cache"]
        cache = self._take(ref)
        last: list[Any] = []
        try:
            for chunk in stream_tokens(
                self.model,
                meta["tokens"],
                SamplingParams(**meta["params"]),
                prompt_cache=cache,
                prefill_step_size=meta["prefill_step_size"],
                should_stop=lambda: shared_flag(self.group, False),
            ):
                last[:] = [chunk]
        finally:  # a stop during the prefill leaves a cache rank 0 goes on with
            if ref is not None and ref["handle"] is not None:
                self.store[ref["handle"]] = cache
        return last

    def _prefill(self, meta: dict[str, Any]) -> None:
        from .cache import prefill

        ref = meta["cache"]
        cache = self._take(ref)
        try:
            prefill(
                self.model,
                meta["tokens"],
                cache,
                step=meta["step"],
                should_stop=lambda: shared_flag(self.group, False),
            )
        finally:
            if ref["handle"] is not None:
                self.store[ref["handle"]] = cache

    def _requantize(self, meta: dict[str, Any]) -> None:
        from .cache import requantize_cache

        ref = meta["cache"]
        cache = self._take(ref)
        self.store[meta["handle"]] = requantize_cache(self.model, cache, meta["bits"])
        if ref["handle"] is not None:
            self.store[ref["handle"]] = cache  # rank 0 may still use the old one

    def _gather(self, meta: dict[str, Any]) -> None:
        from .cachesplit import gather

        ref = meta["cache"]
        cache = self._take(ref)
        gather(self.model, cache)
        if ref["handle"] is not None:
            self.store[ref["handle"]] = cache

    def _scatter(self, meta: dict[str, Any]) -> None:
        from .cachesplit import scatter

        self.store[meta["handle"]] = scatter(self.model, None, layout=meta["layout"])
