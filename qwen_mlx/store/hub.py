"""Where weights come from: a local folder, or a Hugging Face repo through huggingface_hub.

Downloads go to the shared Hugging Face cache (`snapshot_download` with allow patterns
and a pinned revision). Offline mode (`HF_HUB_OFFLINE=1`) uses that cache only. Hub
failures become HubUnavailableError or ModelNotFoundError with what to do next.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubUnavailableError, ModelNotFoundError

CHECKPOINT_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.jinja",
    "LICENSE",
)
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class FetchedSource:
    """A local folder holding the files, plus the repo and commit it came from (if any)."""

    path: Path
    repo_id: str | None = None
    revision: str | None = None

    @property
    def label(self) -> str:
        return self.repo_id or self.path.name


def is_offline() -> bool:
    """HF_HUB_OFFLINE as the user set it now (huggingface_hub reads it only at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def looks_like_repo_id(ref: str) -> bool:
    return bool(_REPO_ID.match(ref)) and not ref.startswith((".", "/", "~"))


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def _is_network_error(e: BaseException) -> bool:
    # huggingface_hub's HTTP stack has changed (requests, httpx, httpx2); match by module.
    module = type(e).__module__
    return isinstance(e, ConnectionError | TimeoutError) or module.split(".")[0] in {
        "httpx",
        "httpx2",
        "requests",
        "urllib3",
    }


def _hub_error(e: Exception, repo_id: str, revision: str | None) -> Exception:
    from huggingface_hub import errors

    at = f" at revision {revision!r}" if revision else ""
    if isinstance(e, errors.RevisionNotFoundError):
        return ModelNotFoundError(f"{repo_id} has no revision {revision!r} on the Hub.")
    if isinstance(e, errors.GatedRepoError):
        return ModelNotFoundError(
            f"{repo_id} is gated: accept its license on the Hub and log in with `hf auth login`."
        )
    if isinstance(e, errors.RepositoryNotFoundError):
        return ModelNotFoundError(
            f"{repo_id} is not a repository on the Hugging Face Hub (or it is private)."
        )
    if isinstance(e, errors.HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", "an error")
        return HubUnavailableError(
            f"The Hugging Face Hub answered {status} for {repo_id}{at}. Try again later; "
            "if it persists, check the repo id and your token (`hf auth login`)."
        )
    if isinstance(e, errors.LocalEntryNotFoundError | errors.OfflineModeIsEnabled) or (
        _is_network_error(e)
    ):
        how = "offline mode is on (HF_HUB_OFFLINE)" if is_offline() else "the Hub is unreachable"
        return HubUnavailableError(
            f"Cannot fetch {repo_id}{at}: {how} and it is not in the local Hugging Face cache. "
            "Connect to the network (and unset HF_HUB_OFFLINE), or pass a local folder."
        )
    return e


def fetch(
    ref: str,
    *,
    revision: str | None = None,
    allow_patterns: tuple[str, ...] = CHECKPOINT_PATTERNS,
) -> FetchedSource:
    """Resolve a local folder or download a Hub repo (to the HF cache) and return it."""
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"{local} is a file; expected a model folder.")
        local = local.resolve()
        return FetchedSource(local, snapshot_repo(local), snapshot_revision(local))
    if not looks_like_repo_id(ref):
        raise ModelNotFoundError(
            f"{ref!r} is neither an existing folder nor a Hugging Face repo id (org/name)."
        )
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            ref,
            revision=revision,
            allow_patterns=list(allow_patterns),
            local_files_only=is_offline(),
            endpoint=_endpoint(),
        )
    except Exception as e:
        mapped = _hub_error(e, ref, revision)
        if mapped is e:
            raise
        raise mapped from e
    path = Path(path)
    return FetchedSource(path, ref, snapshot_revision(path) or revision)


def snapshot_repo(path: Path) -> str | None:
    """`org/name` of an HF cache snapshot folder (`models--org--name/snapshots/<sha>`)."""
    repo_dir = path.parent.parent.name
    if path.parent.name == "snapshots" and repo_dir.startswith("models--"):
        return repo_dir.removeprefix("models--").replace("--", "/", 1)
    return None


def snapshot_revision(path: Path) -> str | None:
    """The commit of an HF cache snapshot folder (`.../snapshots/<sha>`), else None."""
    if path.parent.name == "snapshots" and _SHA.match(path.name):
        return path.name
    return None


def cached_sha256(path: Path) -> str | None:
    """The sha256 of a file in the HF cache, from its blob name, without reading it.

    LFS files (the weights) are stored as `blobs/<sha256>`; the Hub checked that digest
    on download. Small git files use a sha1 blob name and return None.
    """
    if not path.is_symlink():
        return None
    blob = Path(os.path.realpath(path)).name
    return blob if re.fullmatch(r"[0-9a-f]{64}", blob) else None


@dataclass(frozen=True)
class RemoteRevision:
    repo_id: str
    revision: str  # the commit sha the branch points at now
    last_modified: str | None = None


def latest_revision(repo_id: str, *, revision: str = "main") -> RemoteRevision:
    """Ask the Hub which commit `revision` of `repo_id` points at now."""
    if is_offline():
        raise HubUnavailableError(
            "Offline mode is on (HF_HUB_OFFLINE): cannot ask the Hub for updates. "
            "Unset HF_HUB_OFFLINE and connect to the network."
        )
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=_endpoint()).model_info(repo_id, revision=revision, timeout=10)
    except Exception as e:
        mapped = _hub_error(e, repo_id, revision)
        if mapped is e:
            raise HubUnavailableError(f"The Hub did not answer for {repo_id}: {e}") from e
        raise mapped from e
    modified = info.last_modified.isoformat() if info.last_modified else None
    return RemoteRevision(repo_id, info.sha, modified)
