"""Stored responses, in this process's memory: each as the JSON that GET returns and its
conversation (serialized, with the reply's token ids as 32-bit arrays), nothing else of
the request. The store keeps the most recent ones, up to `DEFAULT_STORED` of them and
`DEFAULT_STORED_BYTES` in all, dropping the oldest first."""

from __future__ import annotations

import json
import logging
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_STORED = 1000
DEFAULT_STORED_BYTES = 256 << 20


@dataclass
class Conversation:
    """The messages a response continues and adds to (without the instructions), and the
    exact token ids of its earlier replies, by message index."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    reply_ids: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Stored:
    """A stored response: the JSON GET returns, and its conversation: the chat messages
    (without the instructions) as JSON, and the exact token ids of its assistant replies
    by message index."""

    response: bytes
    messages: bytes
    reply_ids: dict[int, array]

    @classmethod
    def of(
        cls,
        response: dict[str, Any],
        messages: list[dict[str, Any]],
        reply_ids: dict[int, list[int]],
    ) -> Stored:
        return cls(
            json.dumps(response, ensure_ascii=False).encode(),
            json.dumps(messages, ensure_ascii=False).encode(),
            {i: array("I", ids) for i, ids in reply_ids.items()},
        )

    @property
    def bytes(self) -> int:
        """About what it holds in memory."""
        ids = sum(len(a) * a.itemsize + 64 for a in self.reply_ids.values())
        return len(self.response) + len(self.messages) + ids + 256

    def conversation(self) -> Conversation:
        """The conversation to continue from."""
        return Conversation(
            json.loads(self.messages), {i: a.tolist() for i, a in self.reply_ids.items()}
        )


class ResponseStore:
    """The most recent stored responses by id, at most `limit` of them and `max_bytes`
    in all (the oldest go first; one larger than that alone is not kept); safe from any
    thread."""

    def __init__(self, limit: int = DEFAULT_STORED, max_bytes: int = DEFAULT_STORED_BYTES) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def get(self, response_id: str) -> Stored | None:
        with self._lock:
            return self._items.get(response_id)

    def put(self, response_id: str, stored: Stored) -> None:
        if stored.bytes > self.max_bytes:
            logger.warning(
                "%s: not stored: %s bytes, more than the store's %s",
                response_id,
                f"{stored.bytes:,}",
                f"{self.max_bytes:,}",
            )
            return
        with self._lock:
            self._drop(response_id)
            self._items[response_id] = stored
            self.bytes += stored.bytes
            while len(self._items) > self.limit or self.bytes > self.max_bytes:
                self._drop(next(iter(self._items)))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self.bytes -= stored.bytes
        return True
