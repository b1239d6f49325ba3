"""A follower rank: `python -m qwen_mlx.runtime.follower`, started by `launch.Ranks` on
this machine or over ssh, with the backend's environment (MLX_RANK, MLX_HOSTFILE, ...).

It connects to the group, then makes the calls rank 0 sends (see `mirror.py`) until
rank 0 says stop or goes away. It reports its state on stdout (`launch.CONTROL` lines)
and an error on stderr as `error: ...`, which rank 0 shows with the rank's name.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from .launch import CONTROL


def report(**state: Any) -> None:
    """One state line for rank 0 (see `launch.Ranks`)."""
    sys.stdout.write(CONTROL + json.dumps(state) + "\n")
    sys.stdout.flush()


def main() -> int:
    try:
        from .distributed import join_group
        from .mirror import Follower

        report(state="joining")
        group = join_group(os.environ.get("QWEN_MLX_BACKEND", "ring"))
        report(state="waiting")
        Follower(group, sys.stdin.buffer, report).run()
    except KeyboardInterrupt:
        return 130
    except BaseException as e:  # the message is what rank 0 shows for this rank
        message = str(e) or type(e).__name__
        if not message.startswith("Rank "):
            message = f"{type(e).__name__}: {message}" if not _ours(e) else message
        print(f"error: {message}", file=sys.stderr, flush=True)
        report(state="failed", error=message)
        return 1
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
