"""Progress events of conversion work (download, validate, convert, hash, quality), for
the CLI's bars and the chat app's first-run build."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    """A progress event: `stage` is download, validate, convert, hash, quality or done;
    `name` (detail: the name chosen and how) and `warning` (detail: what to know) are
    one-off notices."""

    stage: str
    done: int = 0
    total: int = 0
    detail: str = ""


ProgressFn = Callable[[Progress], None]  # how long conversion work reports
