"""Starting the ranks of a group: `Ranks.start(HostFile.local(2))` on one Mac, or
`HostFile.read("hosts.json")` for several Macs, in the host-file format that
`mlx.distributed_config` writes and `mlx.launch` reads.

The process that starts the group is rank 0: it serves, or runs the command, and drives
the others. Each other rank is a follower process (`python -m qwen_mlx.runtime.follower`),
started here directly or over ssh, as `mlx.launch` does it. Unlike `mlx.launch`, every
group gets free ports (not a fixed 32323), and a rank that fails is named with its error
and ends whatever runs (see `Ranks.failure`).

Each follower's stdin stays connected to rank 0. It carries a doorbell: an idle follower
waits on it without spinning (a rank waiting inside a collective polls its sockets at
most of a core), and rank 0 rings it before the next operation. When rank 0 goes away,
for any reason, the followers read the end of stdin and exit: no rank outlives the group.
Tensors and operations travel over `mx.distributed` only.

Followers report their state on stdout in lines of `qwen-mlx-rank {json}`, and a bare
line each second while they run; everything else they print goes to stderr, which is kept
(the last lines name a failure) and passed to `sink`.

A lost rank must never leave rank 0 waiting forever, and MLX alone does not see to it: its
ring backend fails the collective that is waiting when a peer's socket closes, but its
socket threads end there, so any collective queued after it (a step holds several) waits
for good, and one waiting on a peer that is alive but stopped (a frozen process, a Mac
gone to sleep) never ends either. No thread can interrupt a collective blocked in C++, so
`Ranks` watches instead: a call still blocked `STUCK_GRACE` seconds after a rank's failure
is stuck, and so at once is one that waits on a follower silent for `answer_timeout`
seconds (which fails the group, naming it). `on_stuck` callbacks hear of it; by default
the process ends with the failure as its error, as a command does (the server fails its
requests and restarts the group).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RankFailedError

logger = logging.getLogger(__name__)

FOLLOWER_MODULE = "qwen_mlx.runtime.follower"
CONTROL = "qwen-mlx-rank "  # a follower's state line on stdout: CONTROL + JSON
JOIN_TIMEOUT = 120.0  # seconds for every rank to start and for the group to connect
STOP_TIMEOUT = 5.0  # seconds a follower gets to exit after its stdin closes
HEARTBEAT = 1.0  # seconds between a running follower's bare state lines
# A follower silent this long while rank 0 waits on it has stopped answering. Nothing a
# follower does holds Python's lock for long once it has joined (MLX waits and loads
# without it), so a minute of silence is a frozen process or a lost link, never work.
ANSWER_TIMEOUT = 60.0
ANSWER_TIMEOUT_ENV = "QWEN_MLX_RANK_TIMEOUT"
# A call that has not ended this long after a rank's failure is blocked in MLX for good:
# a collective that can fail does so within milliseconds of the loss (see the docstring).
STUCK_GRACE = 10.0
TAIL_LINES = 20
BACKENDS = ("ring", "jaccl", "jaccl-ring")
LOOPBACK = {"localhost", "127.0.0.1", "::1"}
REMOTE_PYTHON_ENV = "QWEN_MLX_REMOTE_PYTHON"  # the interpreter on the other Macs


@dataclass(frozen=True)
class Host:
    """One entry of a host file: where to ssh, the addresses the ring uses, and the RDMA
    device towards each other host (JACCL)."""

    ssh: str
    ips: tuple[str, ...] = ()
    rdma: tuple[str | None, ...] = ()


@dataclass(frozen=True)
class HostFile:
    """The hosts of a group, in rank order, with the backend and environment to use."""

    hosts: tuple[Host, ...]
    backend: str = "ring"
    envs: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.hosts)

    @classmethod
    def local(cls, ranks: int) -> HostFile:
        """`ranks` processes on this machine over the ring backend (as `mlx.launch -n`)."""
        if ranks < 1:
            raise ValueError("--ranks must be at least 1.")
        return cls(tuple(Host("127.0.0.1", ("127.0.0.1",)) for _ in range(ranks)))

    @classmethod
    def read(cls, path: str | Path) -> HostFile:
        """A host file as `mlx.distributed_config --output-hostfile` writes it:
        `{"backend": "ring", "envs": [...], "hosts": [{"ssh": ..., "ips": [...]}, ...]}`,
        or just the list of hosts."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(
                f"Host file {path} does not exist. Write one with `mlx.distributed_config "
                "--hosts mac1,mac2 --over ethernet --output-hostfile hosts.json` (see the "
                "README), or use --ranks N for N processes on this Mac."
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"Host file {path} is not readable JSON ({e}).") from e
        raw_hosts: Any = data.get("hosts") if isinstance(data, dict) else data
        backend = (data.get("backend") if isinstance(data, dict) else None) or "ring"
        envs = data.get("envs", []) if isinstance(data, dict) else []
        if not isinstance(raw_hosts, list) or not raw_hosts:
            raise ValueError(f'Host file {path} lists no hosts (expected a "hosts" list).')
        if backend not in BACKENDS:
            raise ValueError(
                f"Host file {path} asks for the {backend!r} backend; qwen-mlx runs over "
                f"{', '.join(BACKENDS)}."
            )
        if not isinstance(envs, list) or not all(isinstance(e, str) and "=" in e for e in envs):
            raise ValueError(f'Host file {path}: "envs" must be a list of NAME=VALUE strings.')
        hosts = []
        for i, entry in enumerate(raw_hosts):
            if not isinstance(entry, dict) or not isinstance(entry.get("ssh"), str):
                raise ValueError(f'Host file {path}: host {i} has no "ssh" name.')
            ips = entry.get("ips") or []
            rdma = entry.get("rdma") or []
            if not isinstance(ips, list) or not all(isinstance(ip, str) for ip in ips):
                raise ValueError(f'Host file {path}: host {i}\'s "ips" must be a list.')
            if not ips and entry["ssh"] in LOOPBACK:
                ips = ["127.0.0.1"]
            if not ips and backend == "ring":
                raise ValueError(
                    f'Host file {path}: host {i} ({entry["ssh"]}) has no "ips"; the ring '
                    "backend connects to addresses, not names. `mlx.distributed_config` "
                    "fills them in."
                )
            hosts.append(Host(entry["ssh"], tuple(ips), tuple(rdma)))
        result = cls(tuple(hosts), backend, tuple(envs))
        if backend.startswith("jaccl"):
            result._check_rdma(path)
        return result

    def _check_rdma(self, path: Path) -> None:
        n = len(self.hosts)
        for i, host in enumerate(self.hosts):
            if len(host.rdma) != n or host.rdma[i] is not None:
                raise ValueError(
                    f'Host file {path}: JACCL needs each host\'s "rdma" list to name a '
                    f"device towards every other host and null for itself (host {i})."
                )
        if not self.hosts[0].ips:
            raise ValueError(f"Host file {path}: JACCL needs an address for the first host.")


@dataclass
class RankState:
    """What one rank is doing, as /health reports it."""

    rank: int
    host: str
    state: str = "starting"  # starting, joining, loading, ready, failed, stopped
    exit_code: int | None = None
    error: str | None = None
    info: dict[str, Any] = field(default_factory=dict)  # what it reported (memory, ...)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rank": self.rank, "host": self.host, "state": self.state}
        if self.exit_code is not None:
            out["exit_code"] = self.exit_code
        if self.error:
            out["error"] = self.error
        return out | self.info


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct TCP ports that nothing listens on now (held together while picked)."""
    held = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            held.append(sock)
        return [s.getsockname()[1] for s in held]
    finally:
        for sock in held:
            sock.close()


def is_this_machine(host: Host) -> bool:
    """Whether `host` names this machine (its ssh name, or an address it can bind)."""
    names = {socket.gethostname(), socket.gethostname().split(".")[0], *LOOPBACK}
    if host.ssh in names or host.ssh.split(".")[0] in names:
        return True
    for ip in host.ips:
        with contextlib.suppress(OSError), socket.socket(_family(ip), socket.SOCK_STREAM) as s:
            s.bind((ip, 0))
            return True
    return False


def _family(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


class _Follower:
    """One follower process (local or through ssh) and what it has said."""

    def __init__(self, state: RankState, process: subprocess.Popen) -> None:
        self.state = state
        self.process = process
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.readers: list[threading.Thread] = []
        self.heard = time.monotonic()  # its last line on stdout


class Ranks:
    """The ranks of one group, started and watched from rank 0 (this process).

    `start()` launches ranks 1..N-1, waits until each is about to connect, connects this
    process as rank 0 and returns the `mx.distributed` group. From then on a rank that
    exits, or stops answering while rank 0 waits on it, sets `failure` (a RankFailedError
    naming it, with its last error line) and calls every `on_failure` callback once; a
    call left blocked by it calls the `on_stuck` callbacks, or ends the process when there
    are none (see the module docstring). `close()` ends the followers.
    """

    def __init__(
        self,
        hosts: HostFile,
        *,
        python: str | None = None,
        sink: Callable[[int, str], None] | None = None,
        answer_timeout: float | None = None,
    ) -> None:
        if len(hosts) < 2:
            raise ValueError("A group needs at least 2 ranks.")
        if not is_this_machine(hosts.hosts[0]):
            raise ValueError(
                f"The first host in the host file ({hosts.hosts[0].ssh}) must be this "
                "machine: rank 0 is the process you start here (it serves and drives the "
                "others). Run the command there, or list this machine first."
            )
        self.hosts = hosts
        self.python = python or os.environ.get(REMOTE_PYTHON_ENV) or sys.executable
        self.sink = sink
        if answer_timeout is None:
            answer_timeout = float(os.environ.get(ANSWER_TIMEOUT_ENV) or ANSWER_TIMEOUT)
        self.answer_timeout = answer_timeout
        self.states = [RankState(i, h.ssh) for i, h in enumerate(hosts.hosts)]
        self.failure: RankFailedError | None = None
        self._failed_at = 0.0  # time.monotonic() of the failure
        self._callbacks: list[Callable[[RankFailedError], None]] = []
        self._stuck_callbacks: list[Callable[[RankFailedError], None]] = []
        self._stuck = False
        self._followers: dict[int, _Follower] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._closing = False
        self._files: list[Path] = []
        self.group: Any = None  # this process's mx.distributed group, once started
        self.leader: Any = None  # the mirror.Leader of the model loaded on the group
        self.restarts = 0  # times the group was started again after a failure (serve)

    @property
    def size(self) -> int:
        return len(self.hosts)

    # -- starting ----------------------------------------------------------------------------

    def start(self, timeout: float = JOIN_TIMEOUT) -> Any:
        """Start the followers and connect the group; returns the `mx.distributed` group.
        Raises RankFailedError naming a rank that failed to start or to connect."""
        from .distributed import check_not_joined

        check_not_joined()
        env = self._rank_env()
        try:
            for rank in range(1, self.size):
                self._spawn(rank, env)
            self._wait_joining(timeout)
            self.group = self._connect(env, timeout)
        except BaseException:
            self.close()
            raise
        self.states[0].state = "loading"
        threading.Thread(target=self._watch, name="qwen-mlx-ranks", daemon=True).start()
        return self.group

    def _rank_env(self) -> dict[str, str]:
        """What every rank's environment gets: the backend's own variables (the ring's host
        list is written to a file per machine) and the host file's `envs`."""
        env = dict(e.split("=", 1) for e in self.hosts.envs)
        env["QWEN_MLX_BACKEND"] = "jaccl" if self.hosts.backend.startswith("jaccl") else "ring"
        hosts = self.hosts.hosts
        count = sum(len(h.ips) for h in hosts)
        if all(is_this_machine(h) for h in hosts):
            ports = free_ports(count)
        else:  # free here; the other Macs' are most likely free too
            base = free_ports(1)[0]
            ports = list(range(base, base + count))
        if self.hosts.backend == "ring":  # as mlx.launch: a port per host and address
            at = iter(ports)
            ring = [[f"{ip}:{next(at)}" for ip in h.ips] for h in hosts]
            env["MLX_HOSTFILE"] = json.dumps(ring)  # content; a file on each machine
        else:
            env["MLX_JACCL_COORDINATOR"] = f"{hosts[0].ips[0]}:{ports[0]}"
            env["MLX_IBV_DEVICES"] = json.dumps([list(h.rdma) for h in hosts])
            if self.hosts.backend == "jaccl-ring":
                env["MLX_JACCL_RING"] = "1"
        return env

    def _spawn(self, rank: int, env: dict[str, str]) -> None:
        host = self.hosts.hosts[rank]
        command = [self.python, "-m", FOLLOWER_MODULE]
        if is_this_machine(host):
            full = os.environ | self._with_files(env) | {"MLX_RANK": str(rank)}
            argv: list[str] = command
        else:
            full = dict(os.environ)
            argv = ["ssh", "-o", "BatchMode=yes", host.ssh, remote_script(rank, env, command)]
        process = subprocess.Popen(
            argv,
            env=full,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C in a terminal reaches rank 0, which ends them
        )
        follower = _Follower(self.states[rank], process)
        follower.state.info["pid"] = process.pid  # ssh's, for a remote rank
        self._followers[rank] = follower
        for target in (self._read_control, self._read_errors):
            thread = threading.Thread(
                target=target, args=(follower,), name=f"qwen-mlx-rank-{rank}", daemon=True
            )
            thread.start()
            follower.readers.append(thread)

    def _with_files(self, env: dict[str, str]) -> dict[str, str]:
        """The backend variables that name files, written to files on this machine."""
        out = dict(env)
        for key in ("MLX_HOSTFILE", "MLX_IBV_DEVICES"):
            if key in out:
                fd, name = tempfile.mkstemp(prefix="qwen-mlx-", suffix=".json")
                with os.fdopen(fd, "w") as f:
                    f.write(out[key])
                self._files.append(Path(name))
                out[key] = name
        return out

    def _wait_joining(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                if self.failure is not None:
                    raise self.failure
                if all(s.state != "starting" for s in self.states[1:]):
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    late = [s for s in self.states[1:] if s.state == "starting"]
                    raise RankFailedError(
                        f"Rank {late[0].rank} ({late[0].host}) did not start within "
                        f"{timeout:.0f} s. Check that qwen-mlx is installed at {self.python} "
                        f"there (or set {REMOTE_PYTHON_ENV}) and that ssh works without a "
                        "password."
                    )
                self._changed.wait(min(left, 0.5))

    def _connect(self, env: dict[str, str], timeout: float) -> Any:
        """Connect this process as rank 0. MLX's connect holds the interpreter lock until
        it is done, so nothing here can give up on a peer that never answers: a C-level
        watchdog ends the process if connecting outlasts `timeout`."""
        import faulthandler

        from .distributed import join_group

        mine = self._with_files(env) | {"MLX_RANK": "0"}
        saved = {key: os.environ.get(key) for key in mine}
        os.environ.update(mine)
        print(
            f"connecting {self.size} ranks over {self.hosts.backend} "
            f"({', '.join(h.ssh for h in self.hosts.hosts)}) ...",
            file=sys.stderr,
        )
        faulthandler.dump_traceback_later(timeout, exit=True)
        try:
            return join_group(env["QWEN_MLX_BACKEND"])
        except RankFailedError as e:  # a follower that died while connecting is the cause
            failure = self.wait_failure(2.0)
            if failure is None:
                raise
            raise failure from e
        finally:
            faulthandler.cancel_dump_traceback_later()
            for key, value in saved.items():  # read once, at connecting: no child inherits them
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    # -- watching ----------------------------------------------------------------------------

    def _read_control(self, follower: _Follower) -> None:
        """State lines from a follower's stdout; at their end, its exit."""
        stream = follower.process.stdout
        assert stream is not None
        for raw in stream:
            line = raw.decode(errors="replace").rstrip("\n")
            if not line.startswith(CONTROL):
                continue
            try:
                report = json.loads(line[len(CONTROL) :])
            except json.JSONDecodeError:
                continue
            with self._changed:
                follower.heard = time.monotonic()
                state = follower.state
                state.state = report.pop("state", state.state)
                state.error = report.pop("error", state.error)
                state.info |= report
                self._changed.notify_all()
        code = follower.process.wait()
        for reader in follower.readers:
            if reader is not threading.current_thread():
                reader.join(timeout=1.0)  # its last error lines
        self._exited(follower, code)

    def _read_errors(self, follower: _Follower) -> None:
        stream = follower.process.stderr
        assert stream is not None
        for raw in stream:
            line = raw.decode(errors="replace").rstrip()
            if not line:
                continue
            follower.tail.append(line)
            if self.sink is not None:
                try:
                    self.sink(follower.state.rank, line)
                except Exception:  # a broken sink must not stop the watching
                    logger.exception("could not pass on rank %d's output", follower.state.rank)

    def _exited(self, follower: _Follower, code: int) -> None:
        state = follower.state
        with self._changed:
            state.exit_code = code
            if self._closing:
                if state.state != "failed":  # one that stopped answering stays failed
                    state.state = "stopped"
                self._changed.notify_all()
                return
            state.state = "failed"
            how = _describe_exit(code)
            state.error = state.error or _last_error(follower.tail) or how
            said = f": {state.error}" if state.error != how else "."
            error = RankFailedError(
                f"Rank {state.rank} of {self.size} ({state.host}) stopped ({how}){said}"
            )
        self._failed(error)

    def _failed(self, error: RankFailedError) -> None:
        """Record the group's first failure and tell the `on_failure` callbacks."""
        with self._changed:
            first = self.failure is None
            if first:
                self.failure = error
                self._failed_at = time.monotonic()
            callbacks = list(self._callbacks)
            self._changed.notify_all()
        if first:
            logger.error("%s", error)
            for callback in callbacks:
                try:
                    callback(error)
                except Exception:
                    logger.exception("a rank-failure callback failed")

    def on_failure(self, callback: Callable[[RankFailedError], None]) -> None:
        """Call `callback(error)` when a rank fails (at once if one has)."""
        with self._lock:
            failure = self.failure
            if failure is None:
                self._callbacks.append(callback)
        if failure is not None:
            callback(failure)

    def wait_failure(self, timeout: float) -> RankFailedError | None:
        """The failure, waiting up to `timeout` seconds for a rank's exit to be seen (a
        collective notices a lost peer a moment before its process is reaped)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while self.failure is None and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            return self.failure

    def fail(self, error: RankFailedError) -> None:
        """Record a failure found on rank 0 (the group cannot go on)."""
        with self._lock:
            first = self.failure is None
            if first:
                self.failure = error
                self._failed_at = time.monotonic()
                self.states[0].state = "failed"
                self.states[0].error = str(error)
            callbacks = list(self._callbacks)
        if first:
            for callback in callbacks:
                with contextlib.suppress(Exception):
                    callback(error)

    def on_stuck(self, callback: Callable[[RankFailedError], None]) -> None:
        """Call `callback(failure)`, from a watching thread, if a call on rank 0 is left
        blocked in MLX by a rank's failure (it will never return). Without any, the process
        ends: the failure as its error, the followers ended, exit status 1."""
        with self._lock:
            self._stuck_callbacks.append(callback)

    # -- the watch over rank 0's calls -------------------------------------------------------

    def _watch(self) -> None:
        """Twice a second, while the group runs: is a follower silent while rank 0 waits
        on it, or is rank 0's call blocked by a failure? (See the module docstring.)"""
        tick = time.monotonic()
        while not self._closing and not self._stuck:
            time.sleep(0.5)
            now, last = time.monotonic(), tick
            tick = now
            if now - last > 5.0:  # rank 0 was paused (Ctrl-Z, a Mac asleep): so were its
                with self._lock:  # readers, and the followers' lines wait in the pipes
                    for follower in self._followers.values():
                        follower.heard = max(follower.heard, now)
            since = getattr(self.leader, "running_since", None)
            if since is None:
                continue
            if self.failure is None:
                # Waiting on a frozen peer, the call is stuck from the start: MLX sees
                # no closed socket, so nothing can fail it.
                stuck = now - since >= self.answer_timeout and self._check_answering(now)
            else:
                stuck = now - max(since, self._failed_at) >= STUCK_GRACE
            if stuck and self.failure is not None:
                self._stuck = True
                self._blocked(self.failure)

    def _check_answering(self, now: float) -> bool:
        """Fail the group on a follower that has said nothing for `answer_timeout` s;
        whether one had."""
        with self._lock:
            silent = [
                f
                for f in self._followers.values()
                if f.state.exit_code is None and now - f.heard >= self.answer_timeout
            ]
            if not silent:
                return False
            state = silent[0].state
            state.state = "failed"
            state.error = f"it has not answered for {self.answer_timeout:.0f} s"
        self._failed(
            RankFailedError(
                f"Rank {state.rank} of {self.size} ({state.host}) stopped answering: nothing "
                f"from it for {self.answer_timeout:.0f} s while rank 0 waited on it (a frozen "
                f"process, or a lost link; {ANSWER_TIMEOUT_ENV} sets how long to wait)."
            )
        )
        return True

    def _blocked(self, failure: RankFailedError) -> None:
        """Rank 0's call is blocked for good: tell `on_stuck`, or end the process."""
        logger.warning(
            "rank 0 is blocked in a collective operation that cannot end now that the group "
            "has lost a rank"
        )
        with self._lock:
            callbacks = list(self._stuck_callbacks)
        for callback in callbacks:
            try:
                callback(failure)
            except Exception:
                logger.exception("a stuck-group callback failed")
        if callbacks:
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        print(f"error: {failure}", file=sys.stderr, flush=True)
        with contextlib.suppress(Exception):
            self.close(timeout=STOP_TIMEOUT / 2)  # blocked followers exit by themselves
        os._exit(failure.exit_code)

    def loaded(self, infos: Sequence[Any]) -> None:
        """Every rank has its share (`distributed.RankInfo` each): ready, with its figures."""
        with self._lock:
            for info in infos:
                state = self.states[info.rank]
                if state.state not in ("failed", "stopped"):
                    state.state = "ready"
                state.info |= {
                    "machine": info.host,
                    "layers": info.layers,
                    "weights_bytes": info.weights_bytes,
                    "peak_load_bytes": info.peak_bytes,
                }

    def report(self) -> list[dict[str, Any]]:
        """Each rank's state, for /health."""
        with self._lock:
            return [s.to_dict() for s in self.states]

    # -- talking to the followers ------------------------------------------------------------

    def ring(self) -> None:
        """Wake the parked followers: the next operation is on its way."""
        for follower in self._followers.values():
            stdin = follower.process.stdin
            with contextlib.suppress(OSError, ValueError):  # a dead one: its exit reports it
                stdin.write(b"\n")
                stdin.flush()

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """End the followers: close their stdin (they exit when they read its end), then
        terminate and at last kill any still running, each by its own process id."""
        if self.leader is not None and not self._closing:
            self.leader.stop()  # a clean exit where the group is whole and idle
        with self._lock:
            self._closing = True
        for follower in self._followers.values():
            with contextlib.suppress(OSError, ValueError):
                follower.process.stdin.close()
        deadline = time.monotonic() + timeout
        for follower in self._followers.values():
            process = follower.process
            try:
                process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(2.0)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for file in self._files:
            file.unlink(missing_ok=True)
        self._files.clear()

    def pids(self) -> dict[int, int]:
        """Each follower's process id (ssh's, for a remote one)."""
        return {rank: f.process.pid for rank, f in self._followers.items()}


def remote_script(rank: int, env: dict[str, str], command: Sequence[str]) -> str:
    """The shell line ssh runs for a remote rank: the backend's files written where it
    runs, its variables exported, then the follower in place of the shell."""
    parts = ["set -e"]
    for key, value in env.items():
        if key in ("MLX_HOSTFILE", "MLX_IBV_DEVICES"):
            parts.append(f'f=$(mktemp); printf %s {shlex.quote(value)} > "$f"')
            parts.append(f'export {key}="$f"')
        elif key.isidentifier():
            parts.append(f"export {key}={shlex.quote(value)}")
    parts.append(f"export MLX_RANK={rank}")
    parts.append("exec " + shlex.join(command))
    return "; ".join(parts)


def _last_error(tail: Sequence[str]) -> str | None:
    """The follower's own `error: ...` line, else its last line of output."""
    for line in reversed(tail):
        if line.startswith("error: "):
            return line.removeprefix("error: ")
    return tail[-1] if tail else None


def _describe_exit(code: int) -> str:
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
