"""An in-process fake of the Hugging Face Hub HTTP API, for tests that exercise real downloads.

It serves what `huggingface_hub` (2.x, httpx2) needs for `HfApi.model_info` / `repo_info`,
`list_repo_tree`, `snapshot_download` and `hf_hub_download`: `GET /api/models/{repo}[/revision/
{rev}]`, `GET /api/models/{repo}/tree/{rev}[/{path}]` and `HEAD`/`GET /{repo}/resolve/{rev}/
{file}`, with the Hub's headers (`X-Repo-Commit`, `ETag`, and for LFS files `X-Linked-Etag` =
sha256 and `X-Linked-Size`) and error codes (`X-Error-Code: RepoNotFound`, `RevisionNotFound`,
`EntryNotFound`). LFS files are served in place (the real Hub answers 302 to a CDN, but
huggingface_hub reads the same headers either way), and no `X-Xet-Hash` / `xetHash` is ever sent,
so downloads stay plain HTTP.

Using it: huggingface_hub copies `HF_HUB_OFFLINE`, `HF_HOME` (hence the cache dir) and
`HF_ENDPOINT` into `huggingface_hub.constants` once, at import, which often happens lazily inside
an earlier test (whose autouse fixture set `HF_HUB_OFFLINE=1` and its own `HF_HOME`); env vars set
later change nothing. So also patch `constants.HF_HUB_OFFLINE` and `constants.HF_HUB_CACHE` (see
`use_fake_hub`) and pass `endpoint=` explicitly (patching `constants.ENDPOINT` alone breaks
`hf_hub_url`, which rewrites URLs built from the import-time template by prefix).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

_LFS_SPEC = "version https://git-lfs.github.com/spec/v1"
LFS_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth", ".npz", ".onnx")


@dataclass(frozen=True)
class Blob:
    """One file's bytes and the ids the Hub derives from them."""

    data: bytes
    oid: str  # git blob sha1 (of the LFS pointer file for LFS files)
    sha256: str
    lfs: bool
    pointer_size: int

    @classmethod
    def of(cls, path: str, data: bytes) -> Blob:
        sha256 = hashlib.sha256(data).hexdigest()
        lfs = path.endswith(LFS_SUFFIXES)
        pointer = f"{_LFS_SPEC}\noid sha256:{sha256}\nsize {len(data)}\n"
        stored = pointer.encode() if lfs else data
        oid = hashlib.sha1(b"blob %d\0" % len(stored) + stored).hexdigest()
        return cls(data, oid, sha256, lfs, len(pointer))

    @property
    def etag(self) -> str:
        """The Hub's ETag: sha256 for LFS files (the cache names blobs by it), else git sha1."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class Commit:
    sha: str
    files: dict[str, Blob]
    last_modified: str


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # branch -> commit sha

    @property
    def created_at(self) -> str:
        return next(iter(self.commits.values())).last_modified


class HubError(Exception):
    """An error answer, shaped like the Hub's: status, X-Error-Code and a JSON `error`."""

    def __init__(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.commit = status, code, message, commit


class FakeHub:
    """Repos with commits and movable branches, served over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path without query), for assertions
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- content ------------------------------------------------------------------------------

    def add_commit(
        self,
        repo_id: str,
        files: dict[str, bytes] | Path,
        *,
        sha: str | None = None,
        last_modified: str = "2025-08-06T00:00:00.000Z",
        branch: str | None = "main",
    ) -> str:
        """Add a commit holding exactly `files` (a mapping or a folder); move `branch` to it.

        The default sha is derived from the repo, the parent and the content, so it is stable
        across runs. Pass `branch=None` for a commit that no branch points at.
        """
        if repo_id.count("/") != 1:
            raise ValueError(f"repo ids here are 'org/name', got {repo_id!r}")
        if sha is not None and not re.fullmatch(r"[0-9a-f]{40}", sha):
            raise ValueError(f"commit sha must be 40 lowercase hex digits, got {sha!r}")
        if isinstance(files, Path):
            files = {
                p.relative_to(files).as_posix(): p.read_bytes()
                for p in sorted(files.rglob("*"))
                if p.is_file() and not {".git", ".cache"} & set(p.relative_to(files).parts)
            }
        blobs = {path: Blob.of(path, data) for path, data in sorted(files.items())}
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(repo_id))
            if sha is None:
                parent = repo.branches.get(branch or "main", "")
                tree = "".join(f"{p}\0{b.oid}\n" for p, b in blobs.items())
                sha = hashlib.sha1(f"{repo_id}\n{parent}\n{tree}".encode()).hexdigest()
            repo.commits[sha] = Commit(sha, blobs, last_modified)
            if branch is not None:
                repo.branches[branch] = sha
        return sha

    def set_branch(self, repo_id: str, sha: str, branch: str = "main") -> None:
        """Point `branch` at an existing commit (e.g. to move main back)."""
        with self._lock:
            repo = self.repos[repo_id]
            if sha not in repo.commits:
                raise KeyError(f"{repo_id} has no commit {sha}")
            repo.branches[branch] = sha

    def resolve(self, repo_id: str, revision: str) -> Commit:
        """The commit a branch name or full sha names, or a HubError as the Hub would answer."""
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", "Repository not found")
        sha = repo.branches.get(revision, revision)
        if sha not in repo.commits:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return repo.commits[sha]

    # -- server -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeHub is not started")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            assert self._thread is not None
            self._thread.join()
            self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- API payloads -------------------------------------------------------------------------

    def model_info(self, repo_id: str, commit: Commit) -> dict[str, Any]:
        """The JSON of `/api/models/{repo_id}/revision/{rev}`, in the Hub's field order."""
        repo = self.repos[repo_id]
        files = commit.files
        config = _json_or_none(files.get("config.json"))
        tokenizer_config = _json_or_none(files.get("tokenizer_config.json")) or {}
        architectures = config.get("architectures") if config else None
        model_type = config.get("model_type") if config else None
        has_safetensors = any(p.endswith(".safetensors") for p in files)
        tags = ["transformers", *(["safetensors"] if has_safetensors else [])]
        tags += [*([model_type] if model_type else []), "text-generation", "conversational"]
        tags += ["license:apache-2.0", "text-generation-inference", "endpoints_compatible"]
        tags += ["region:us"]
        info: dict[str, Any] = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "private": False,
            "pipeline_tag": "text-generation",
            "library_name": "transformers",
            "tags": tags,
            "downloads": 0,
            "likes": 0,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": commit.sha,
            "lastModified": commit.last_modified,
            "gated": False,
            "disabled": False,
            "model-index": None,
        }
        if config is not None:
            tok_keys = ("bos_token", "chat_template", "eos_token", "pad_token", "unk_token")
            info["config"] = {"architectures": architectures, "model_type": model_type}
            if tokens := {k: v for k, v in tokenizer_config.items() if k in tok_keys}:
                info["config"]["tokenizer_config"] = tokens
        if architectures:
            info["transformersInfo"] = {
                "auto_model": "AutoModelForCausalLM",
                "pipeline_tag": "text-generation",
                "processor": "AutoTokenizer",
            }
        info["siblings"] = [{"rfilename": path} for path in files]
        info["spaces"] = []
        info["createdAt"] = repo.created_at
        params = _safetensors_parameters(files)
        if params:
            info["safetensors"] = {"parameters": params, "total": sum(params.values())}
        blobs = {b.oid: len(b.data) for c in repo.commits.values() for b in c.files.values()}
        info["usedStorage"] = sum(blobs.values())
        return info

    def tree(self, commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        """The JSON of `/api/models/{repo_id}/tree/{rev}/{path}`: files and folders under path."""
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        entries: dict[str, dict[str, Any]] = {}
        for name, blob in commit.files.items():
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            folders = len(parts) - 1 if recursive else min(1, len(parts) - 1)
            for i in range(1, folders + 1):  # the folders on the way, listed like the Hub does
                folder = prefix + "/".join(parts[:i])
                oid = hashlib.sha1(f"{commit.sha}:{folder}".encode()).hexdigest()
                entries[folder] = {"type": "directory", "oid": oid, "size": 0, "path": folder}
            if recursive or len(parts) == 1:
                entry: dict[str, Any] = {"type": "file", "oid": blob.oid, "size": len(blob.data)}
                if blob.lfs:
                    entry["lfs"] = {
                        "oid": blob.sha256,
                        "size": len(blob.data),
                        "pointerSize": blob.pointer_size,
                    }
                entries[name] = {**entry, "path": name}
        if prefix and not entries:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {commit.sha}")
        return [entries[k] for k in sorted(entries)]


class _Handler(BaseHTTPRequestHandler):
    """Routes the three kinds of Hub URLs to FakeHub; HTTP/1.0, so one request per connection."""

    fake: FakeHub
    server_version = "FakeHub"

    def log_message(self, format: str, *args: Any) -> None:  # quiet test output
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        split = urlsplit(self.path)
        with self.fake._lock:
            self.fake.requests.append((self.command, unquote(split.path)))
        # Split before unquoting: a revision such as refs%2Fpr%2F1 is one segment.
        seg = [unquote(s) for s in split.path.strip("/").split("/")]
        try:
            if seg[:2] == ["api", "models"] and len(seg) >= 4:
                repo_id, rest = f"{seg[2]}/{seg[3]}", seg[4:]
                if not rest or (rest[0] == "revision" and len(rest) == 2):
                    commit = self.fake.resolve(repo_id, rest[1] if rest else "main")
                    return self._json(self.fake.model_info(repo_id, commit), body)
                if rest[0] == "tree" and len(rest) >= 2:
                    commit = self.fake.resolve(repo_id, rest[1])
                    flag = parse_qs(split.query).get("recursive", [""])[0]
                    recursive = flag.lower() in {"true", "1"}
                    tree = self.fake.tree(commit, "/".join(rest[2:]), recursive)
                    return self._json(tree, body)
            elif len(seg) >= 5 and seg[2] == "resolve":
                commit = self.fake.resolve(f"{seg[0]}/{seg[1]}", seg[3])
                return self._file(commit, "/".join(seg[4:]), body)
            raise HubError(404, "", "Sorry, we can't find the page you are looking for.")
        except HubError as e:
            self._error(e, body)

    def _file(self, commit: Commit, filename: str, body: bool) -> None:
        blob = commit.files.get(filename)
        if blob is None:
            raise HubError(404, "EntryNotFound", "Entry not found", commit=commit.sha)
        headers = {
            "Content-Type": "application/octet-stream" if blob.lfs else "text/plain; charset=utf-8",
            "ETag": f'"{blob.etag}"',
            "X-Repo-Commit": commit.sha,
        }
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(len(blob.data))
        self._send(200, headers, blob.data, body)

    def _json(self, payload: Any, body: bool) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self._send(200, {"Content-Type": "application/json; charset=utf-8"}, data, body)

    def _error(self, e: HubError, body: bool) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", "X-Error-Message": e.message}
        if e.code:
            headers["X-Error-Code"] = e.code
        if e.commit:
            headers["X-Repo-Commit"] = e.commit
        self._send(e.status, headers, json.dumps({"error": e.message}).encode(), body)

    def _send(self, status: int, headers: dict[str, str], data: bytes, body: bool) -> None:
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(data))}.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(data)


def _json_or_none(blob: Blob | None) -> dict[str, Any] | None:
    try:
        value = json.loads(blob.data) if blob is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _safetensors_parameters(files: dict[str, Blob]) -> dict[str, int]:
    """Parameter count per dtype from the safetensors headers, as the Hub reports it."""
    counts: dict[str, int] = {}
    for path, blob in files.items():
        if not path.endswith(".safetensors") or len(blob.data) < 8:
            continue
        (size,) = struct.unpack("<Q", blob.data[:8])
        try:
            header = json.loads(blob.data[8 : 8 + size])
            tensors = [(t["dtype"], math.prod(t["shape"])) for t in _tensors(header)]
        except (ValueError, TypeError, KeyError):
            continue  # not a real safetensors file: the Hub would omit it too
        for dtype, n in tensors:
            counts[dtype] = counts.get(dtype, 0) + n
    return counts


def _tensors(header: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for name, t in header.items() if name != "__metadata__"]


def use_fake_hub(monkeypatch: Any, hub: FakeHub, hf_home: Path) -> None:
    """Point huggingface_hub (env and import-time constants) at `hub`, online, cache in hf_home."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
