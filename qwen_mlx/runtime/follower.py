"""A follower rank: `python -m qwen_mlx.runtime.follower`, started by `launch.Ranks` on
this machine or over ssh, with the backend's environment (MLX_RANK, MLX_HOSTFILE, ...).

It connects to the group, then makes the calls rank 0 sends (see `mirror.py`) until
rank 0 says stop or goes away. It reports its state on stdout (`launch.CONTROL` lines,
and a bare one each `launch.HEARTBEAT` seconds: rank 0 knows it still runs) and an error
on stderr as `error: ...`, which rank 0 shows with the rank's name.

Its stdin is rank 0's end of the line (see `launch.py`), read on a thread of its own, so
the end of it is seen at any moment: a parked follower then returns, and one inside an
operation, which MLX may never end without rank 0, exits after `LEAVE_GRACE` seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import sys
import threading
from typing import IO, Any

from .launch import CONTROL, HEARTBEAT, JOIN_TIMEOUT

LEAVE_GRACE = 2.0  # seconds an operation gets to end by itself once rank 0 has gone

_out = threading.Lock()  # state lines come from the main thread and the heartbeat


def report(**state: Any) -> None:
    """One state line for rank 0 (see `launch.Ranks`)."""
    line = CONTROL + json.dumps(state) + "\n"
    with _out:
        sys.stdout.write(line)
        sys.stdout.flush()


class Doorbell:
    """Rank 0's end of stdin, read on a thread: `read()` waits for the next ring (a byte)
    or the end (b""), as reading the stream would. At the end, unless `done` is set
    within `grace` seconds, the process exits (see the module docstring)."""

    def __init__(self, stream: IO[bytes], done: threading.Event, grace: float = LEAVE_GRACE):
        self._stream = stream
        self._done = done
        self._grace = grace
        self._rings: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        threading.Thread(target=self._listen, name="qwen-mlx-doorbell", daemon=True).start()

    def read(self, size: int = 1) -> bytes:
        return self._rings.get()

    def _listen(self) -> None:
        while True:
            try:
                ring = self._stream.read(1)
            except (OSError, ValueError):
                ring = b""
            self._rings.put(ring)
            if not ring:
                break
        if not self._done.wait(self._grace):
            with contextlib.suppress(OSError, ValueError):  # rank 0's end of stderr too
                print("error: rank 0 went away during an operation", file=sys.stderr, flush=True)
            os._exit(1)


def _heartbeat(done: threading.Event) -> None:
    while not done.wait(HEARTBEAT):
        try:
            report()
        except (OSError, ValueError):  # rank 0 has gone: the doorbell sees to it
            return


def main() -> int:
    done = threading.Event()
    try:
        import faulthandler

        import mlx.core  # noqa: F401  (first: rank 0 connects once every rank is joining)

        from .distributed import join_group
        from .mirror import Follower

        report(state="joining")
        bell = Doorbell(sys.stdin.buffer, done)
        threading.Thread(target=_heartbeat, args=(done,), name="qwen-mlx-beat", daemon=True).start()
        # MLX connects holding Python's lock: only a C-level watchdog can end a connect
        # whose peer never comes (rank 0 gone before it connected).
        faulthandler.dump_traceback_later(JOIN_TIMEOUT, exit=True)
        try:
            group = join_group(os.environ.get("QWEN_MLX_BACKEND", "ring"))
        finally:
            faulthandler.cancel_dump_traceback_later()
        report(state="waiting")
        Follower(group, bell, report).run()
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # the message is what rank 0 shows for this rank
        message = str(e) or type(e).__name__
        if not message.startswith("Rank "):
            message = f"{type(e).__name__}: {message}" if not _ours(e) else message
        print(f"error: {message}", file=sys.stderr, flush=True)
        report(state="failed", error=message)
        return 1
    finally:
        done.set()
    report(state="stopped")
    return 0


def _ours(error: BaseException) -> bool:
    from ..errors import QwenMLXError

    return isinstance(error, QwenMLXError | ValueError | FileNotFoundError)


if __name__ == "__main__":
    # Skip the interpreter's clean-up: MLX's per-thread state can abort at exit (see
    # runtime/thread.py), and a follower has nothing left to flush.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
