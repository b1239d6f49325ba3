"""`qwen-mlx chat --web`: open the web chat, starting `qwen-mlx serve` if none answers.

A server already answering /health as qwen-mlx on that address is reused (one model in
memory, whatever the number of tabs); otherwise the server runs in this process, and the
browser opens once it answers (loading a model takes a while).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.error
import urllib.request
import webbrowser

READY_TIMEOUT = 600.0  # seconds to wait for the model to load before giving up on the browser


def page_url(host: str, port: int, chat_id: str | None = None) -> str:
    shown = f"[{host}]" if ":" in host else host
    if shown in ("0.0.0.0", "[::]"):  # every address: the browser goes to this machine's
        shown = "127.0.0.1"
    url = f"http://{shown}:{port}/"
    return f"{url}?chat={chat_id}" if chat_id else url


def serving(url: str, timeout: float = 1.0) -> bool:
    """Whether a qwen-mlx server answers at `url` (its /health names a model)."""
    try:
        with urllib.request.urlopen(url + "health", timeout=timeout) as response:
            return "model" in json.loads(response.read())
    except (OSError, ValueError, urllib.error.URLError):
        return False


def open_web_chat(*, host: str, port: int, model: str | None, chat_id: str | None) -> int:
    if port == 0:
        raise ValueError("--web needs a fixed --port, so the browser knows where to go.")
    root = page_url(host, port)
    url = page_url(host, port, chat_id)
    if serving(root):
        print(f"opening {url} (qwen-mlx serve is running there already)", file=sys.stderr)
        webbrowser.open(url)
        return 0
    from . import serve

    ready = threading.Event()  # set when serve returns: nobody to open the page for

    def open_when_up() -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready.is_set() and time.monotonic() < deadline:
            if serving(root):
                print(f"opening {url} in the browser", file=sys.stderr)
                webbrowser.open(url)
                return
            ready.wait(0.25)

    threading.Thread(target=open_when_up, name="qwen-mlx-open-browser", daemon=True).start()
    argv = ["--host", host, "--port", str(port)] + (["--model", model] if model else [])
    try:
        return serve.main(argv)
    finally:
        ready.set()
