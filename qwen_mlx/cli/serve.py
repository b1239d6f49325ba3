"""`qwen-mlx serve`: the model over an OpenAI-compatible HTTP API (FastAPI + uvicorn).

Binds 127.0.0.1 unless told otherwise. On a loopback address it answers only requests
addressed to localhost, 127.0.0.1, [::1] or that address (a web page cannot reach it through
DNS rebinding). On any other address without an API key it warns: anyone who can reach the
port can use the model.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable

from ..server.defaults import (
    CONNECTION_HEADROOM,
    DEFAULT_CACHE_DIR_BYTES,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_TOKENS_CAP,
)
from ..server.net import allowed_hosts, is_loopback
from .common import (
    add_draft_args,
    add_group_args,
    add_model_arg,
    command_parser,
    group_load_args,
    guarded,
    ranks_from_args,
)

API_KEY_ENV = "QWEN_MLX_API_KEY"
# A group of ranks that loses one restarts by running this command again in this process,
# which keeps its listening sockets (their numbers in LISTEN_FDS_ENV): the port never
# closes, and requests that arrive meanwhile wait in its queue.
LISTEN_FDS_ENV = "QWEN_MLX_LISTEN_FDS"
RESTARTS_ENV = "QWEN_MLX_GROUP_RESTARTS"  # "count:time of the last restart"
MAX_RESTARTS = 3  # in a row; a group that then runs RESTART_RESET seconds starts over
RESTART_RESET = 600.0
# Seconds from a failure to the restart: requests in flight get their error, and /health
# says what happened (tests wait longer, through QWEN_MLX_RESTART_DELAY, to look).
RESTART_DELAY = 3.0
DRAIN_TIMEOUT = 30.0  # at most this long for the requests in flight to hear the error

EXAMPLES = f"""\
examples:
  qwen-mlx serve
  qwen-mlx serve --model qwen3-4b-instruct-2507-mlx-q8-g64 --port 8000
  {API_KEY_ENV}=secret qwen-mlx serve --host 0.0.0.0
  qwen-mlx serve --hosts hosts.json        # one model across the Macs in hosts.json
  qwen-mlx serve --cache-dir ~/kv-cache    # agent sessions resume after a restart
  qwen-mlx serve --record session.jsonl    # then: qwen-mlx replay session.jsonl --url ...

then point any OpenAI client at it:
  OpenAI(base_url="http://127.0.0.1:8080/v1", api_key="unused")
or any Anthropic client (Claude Code too):
  ANTHROPIC_BASE_URL=http://127.0.0.1:8080 ANTHROPIC_MODEL=qwen3-4b-instruct claude
"""


def build_parser() -> argparse.ArgumentParser:
    p = command_parser(
        "serve",
        "Serve the model over HTTP: OpenAI's /v1/chat/completions, /v1/completions, "
        "/v1/responses and /v1/models, Anthropic's /v1/messages, Ollama's /api/chat and "
        "/api/generate, Prometheus' /metrics, and /health.",
        EXAMPLES,
    )
    add_model_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default: 8080; 0: any free port)")
    p.add_argument(
        "--api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"require `Authorization: Bearer KEY` (or `x-api-key: KEY` on /v1/messages) on "
        "every route but /health "
        f"(default: ${API_KEY_ENV}, which keeps the key out of the process list)",
    )
    p.add_argument(
        "--max-tokens-cap",
        type=int,
        default=DEFAULT_MAX_TOKENS_CAP,
        metavar="N",
        help=f"the most tokens one reply may have; larger max_tokens are lowered to it "
        f"(default: {DEFAULT_MAX_TOKENS_CAP})",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        metavar="N",
        help=f"larger request bodies get 413 (default: {DEFAULT_MAX_BODY_BYTES:,})",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="requests in progress at most; more get 503 with Retry-After, while /health and "
        f"other reads keep a reserve (default: --max-batch + --max-queue + "
        f"{CONNECTION_HEADROOM})",
    )
    p.add_argument(
        "--max-context",
        type=int,
        metavar="N",
        help="refuse prompts of N tokens or more (default: what the model and memory allow)",
    )
    p.add_argument(
        "--cache-gb",
        type=float,
        metavar="GB",
        help="memory for KV caches kept between requests, so resent conversations prefill "
        "only what is new (default: half of what the weights leave; 0 turns it off)",
    )
    p.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep prompt caches on disk too: those memory lets go, and all of them when the "
        "server stops, so a long conversation resumes without being read again after a "
        "restart (checksummed; entries of another model or settings are dropped)",
    )
    p.add_argument(
        "--cache-dir-gb",
        type=float,
        default=DEFAULT_CACHE_DIR_BYTES / 1e9,
        metavar="GB",
        help="the most --cache-dir may hold; the least recently used entries go first "
        f"(default: {DEFAULT_CACHE_DIR_BYTES / 1e9:g})",
    )
    p.add_argument(
        "--record",
        metavar="FILE",
        help="append every API request to FILE, one JSON line each (never the API key), to "
        "replay a session later with `qwen-mlx replay FILE --url URL`",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        metavar="N",
        help="requests decoded together at most (default: as many 4,096-token sequences "
        "as memory holds beside the weights, up to 32)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        metavar="N",
        help="requests waiting behind a full batch at most; more get 503 with Retry-After "
        "(default: 4 x --max-batch)",
    )
    p.add_argument(
        "--kv-bits",
        type=int,
        choices=(4, 8),
        help="quantize the KV caches to 8 or 4 bits (about 0.53x or 0.28x the bytes: more "
        "requests and pooled conversations fit; batches hold quantized KV too)",
    )
    p.add_argument(
        "--context-extension",
        type=float,
        metavar="F",
        help="YaRN rope scaling: F x the model's native context",
    )
    p.add_argument("--verify", action="store_true", help="check every file's sha256 before loading")
    p.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log verbosity (default: info)",
    )
    add_draft_args(
        p,
        note="; each request drafts on its own inside the batch (a draft model drafts for "
        "all of them from a KV cache of its own)",
    )
    add_group_args(p)
    return p


def bind_warning(host: str, api_key: str | None) -> str | None:
    """What to tell the user when `host` is reachable from other machines without a key."""
    if api_key or is_loopback(host):
        return None
    return (
        f"serving on {host} without --api-key: anyone who can reach this port can use the "
        f"model. Set {API_KEY_ENV} or pass --api-key, or bind 127.0.0.1."
    )


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_tokens_cap is not None and args.max_tokens_cap <= 0:
        raise ValueError("--max-tokens-cap must be positive.")
    if args.max_connections is not None and args.max_connections <= 0:
        raise ValueError("--max-connections must be positive.")
    if args.max_batch is not None and args.max_batch <= 0:
        raise ValueError("--max-batch must be positive.")
    if args.max_queue is not None and args.max_queue < 0:
        raise ValueError("--max-queue must be 0 or more.")
    if args.cache_dir_gb <= 0:
        raise ValueError("--cache-dir-gb must be positive.")
    warning = bind_warning(args.host, args.api_key)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    sockets = listen_sockets(args.host, args.port)  # a taken port fails before loading
    try:
        with ranks_from_args(args) as ranks:
            return _serve(args, sockets, ranks, list(sys.argv[1:] if argv is None else argv))
    finally:
        for sock in sockets:
            sock.close()


def _serve(args: argparse.Namespace, sockets: list[socket.socket], ranks, argv: list[str]) -> int:
    import uvicorn

    from ..runtime import load
    from ..server import Engine, create_app, server_config

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    from .common import model_ref

    args.model = model_ref(args)
    print(f"loading {args.model} ...", file=sys.stderr)
    model = load(
        args.model,
        verify=args.verify,
        context_extension=args.context_extension,
        **group_load_args(args, ranks),
    )
    from .common import draft_from_args

    engine = Engine(
        model,
        draft=draft_from_args(model, args),
        num_draft_tokens=args.num_draft_tokens,
        kv_bits=args.kv_bits,
        cache_bytes=None if args.cache_gb is None else int(args.cache_gb * 1e9),
        max_context=args.max_context,
        max_tokens_cap=args.max_tokens_cap,
        aliases=[args.model],  # requests may name the model as it was asked for here
        max_batch=args.max_batch,
        max_queue=args.max_queue,
        cache_dir=args.cache_dir,
        cache_dir_bytes=int(args.cache_dir_gb * 1e9),
    )
    if ranks is not None:
        _restart_on_failure(ranks, sockets, argv, idle=lambda: engine.queued == 0)
    app = create_app(
        engine,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
        allowed_hosts=allowed_hosts(args.host),
        max_connections=args.max_connections,
        record=args.record,
    )
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = sockets[0].getsockname()[1]
    config = server_config(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )
    for sock in sockets:  # from here a client waits for uvicorn's accept, never refused
        sock.listen(config.backlog)
    split = f", split across {ranks.size} ranks" if ranks is not None else ""
    print(
        f"serving {model.name} at http://{host}:{port}/v1 "
        f"(context {engine.context_limit:,} tokens, {_concurrency(engine)}, "
        f"{engine.max_queue} more waiting{split}); Ollama apps: OLLAMA_HOST=http://{host}:{port}",
        file=sys.stderr,
    )
    try:
        uvicorn.Server(config).run(sockets=sockets)
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C once it has shut down cleanly
        print("stopped.", file=sys.stderr)
    finally:
        engine.close()
    return 0


def _restart_on_failure(
    ranks, sockets: list[socket.socket], argv: list[str], idle: Callable[[], bool]
) -> None:
    """When a rank fails: requests in flight end with an error naming it, /health says
    so (status "degraded"), and once they have ended (`idle`), a few seconds later, the
    whole group starts again in this process, on the same sockets (MLX connects a process
    to a group once, so rank 0 cannot rejoin a new one otherwise). Clients see a short
    wait, never a closed port; saved chats and their KV caches stay valid (the model is
    the same)."""
    count, last = _restarts()
    if last and time.time() - last > RESTART_RESET:
        count = 0
    ranks.restarts = count

    def restart(error: BaseException) -> None:
        if count >= MAX_RESTARTS:
            print(
                f"error: {error} The group has restarted {count} times in a row; it stays "
                "down (/health says why). Restart `qwen-mlx serve` once the ranks can run.",
                file=sys.stderr,
            )
            return
        print(f"error: {error}", file=sys.stderr)

        def later() -> None:
            time.sleep(float(os.environ.get("QWEN_MLX_RESTART_DELAY", RESTART_DELAY)))
            deadline = time.monotonic() + DRAIN_TIMEOUT
            while not idle() and time.monotonic() < deadline:
                time.sleep(0.2)
            print(f"restarting the group ({count + 1} of {MAX_RESTARTS}) ...", file=sys.stderr)
            ranks.close(timeout=2.0)
            _reexec(sockets, argv, count + 1)

        threading.Thread(target=later, name="qwen-mlx-restart", daemon=True).start()

    ranks.on_failure(restart)


def _restarts() -> tuple[int, float]:
    raw = os.environ.pop(RESTARTS_ENV, "")
    count, _, when = raw.partition(":")
    try:
        return int(count), float(when)
    except ValueError:
        return 0, 0.0


def _reexec(sockets: list[socket.socket], argv: list[str], count: int) -> None:
    """Run `qwen-mlx serve ARGV` again in this process, keeping the listening sockets."""
    for sock in sockets:
        os.set_inheritable(sock.fileno(), True)
    env = dict(os.environ)
    env[LISTEN_FDS_ENV] = ",".join(str(s.fileno()) for s in sockets)
    env[RESTARTS_ENV] = f"{count}:{time.time()}"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "qwen_mlx", "serve", *argv], env)


def listen_sockets(host: str, port: int) -> list[socket.socket]:
    """TCP sockets bound to every address of `host` (localhost can be both ::1 and
    127.0.0.1) on `port` (0: a free one, the same for all), or an error saying why not.
    A restarted server (see `_restart_on_failure`) takes back the sockets it had."""
    inherited = os.environ.pop(LISTEN_FDS_ENV, "")
    if inherited:
        kept = [socket.socket(fileno=int(fd)) for fd in inherited.split(",")]
        for sock in kept:
            os.set_inheritable(sock.fileno(), False)
        return kept
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 and 65535, not {port}.")
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ValueError(f"--host {host} is not an address of this machine ({e.strerror}).") from e
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # as asyncio does: IPv4 gets its own socket
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if sockets[0] is not sock:
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
    except OSError as e:
        for sock in sockets:
            sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ValueError(
                f"Port {port} on {host} is in use (another `qwen-mlx serve`?). Stop it, or "
                "pick another port with --port (0 picks a free one)."
            ) from e
        raise ValueError(f"Cannot listen on {host} port {port}: {e.strerror}.") from e
    return sockets


def _concurrency(engine) -> str:
    """How requests share the model, for the start line."""
    if engine.batched:
        kv = f", {engine.kv_bits}-bit KV" if engine.kv_bits else ""
        drafts = {"lookup": ", prompt lookup per sequence", "model": ", a draft model per sequence"}
        drafts = drafts.get(getattr(engine.drafter, "kind", None), "")
        return f"batches of up to {engine.max_batch}{kv}{drafts}"
    if engine.drafter is not None:
        return "one request at a time with a draft model (--draft MODEL; no batching)"
    return "one request at a time"


if __name__ == "__main__":
    raise SystemExit(main())
