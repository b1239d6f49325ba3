"""`models check-updates`: compare each family's latest model with its Hub repo.

Per-family policy: `notify` (default) reports a newer upstream revision, `auto` converts
it (same quantization) and makes it latest, `frozen` (or a pinned family) never changes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DamagedModelError
from ..store import Store, hub
from . import ProgressFn, convert


@dataclass(frozen=True)
class UpdateStatus:
    family: str
    model: str | None
    repo: str | None
    current: str | None  # the revision the latest model was converted from
    remote: str | None  # the revision the Hub's branch points at now
    policy: str
    state: str  # up-to-date | available | updated | frozen | local | no-latest | damaged
    new_model: str | None = None

    @property
    def message(self) -> str:
        short = (self.remote or "")[:7]
        return {
            "up-to-date": f"up to date ({(self.current or '')[:7]} on {self.repo})",
            "available": f"update available: {(self.current or '?')[:7]} -> {short} on {self.repo}"
            f" (apply: `qwen-mlx models check-updates {self.family} --apply`)",
            "updated": f"updated to {short}: {self.new_model} is now latest",
            "frozen": f"frozen: {self.repo} is at {short}, not applied",
            "local": "converted from a local folder; no Hub repo to check",
            "no-latest": "no latest version",
            "damaged": f"the manifest of {self.model} cannot be read; "
            f"run `qwen-mlx models verify {self.model}`",
        }[self.state]


def check_updates(
    family: str | None = None,
    *,
    home: str | Path | None = None,
    apply: bool | None = None,
    progress: ProgressFn | None = None,
) -> list[UpdateStatus]:
    """Check one family or all. `apply` forces converting (True) or not (False) an update;
    None follows each family's policy. Raises HubUnavailableError when offline."""
    store = Store(home)
    families = [family.strip().lower()] if family else store.registry.families()
    try:
        return [_check(store, fam, home, apply, progress) for fam in families]
    finally:
        store.close()


def _check(store: Store, family: str, home, apply: bool | None, progress) -> UpdateStatus:
    policy, pinned = store.registry.family(family)
    if pinned:
        policy = "frozen"
    latest = store.latest(family)
    if latest is None:
        return UpdateStatus(family, None, None, None, None, policy, "no-latest")
    try:
        _, manifest = store.manifest(str(latest))
    except DamagedModelError:
        return UpdateStatus(family, str(latest), None, None, None, policy, "damaged")
    repo, current = manifest.source.repo, manifest.source.revision
    if repo is None:
        return UpdateStatus(family, str(latest), None, current, None, policy, "local")
    remote = hub.latest_revision(repo).revision
    status = UpdateStatus(family, str(latest), repo, current, remote, policy, "up-to-date")
    if remote == current:
        return status
    if policy == "frozen":
        return replace(status, state="frozen")
    if not (apply if apply is not None else policy == "auto"):
        return replace(status, state="available")
    q = manifest.quantization
    new_name = latest.with_format(latest.format or "mlx", latest.quant, remote[:7])
    result = convert(
        repo,
        revision=remote,
        name=str(new_name),
        quantize=q.bits is not None,
        q_bits=q.bits or 4,
        q_group_size=q.group_size or 64,
        q_mode=q.mode or "affine",
        # A method runs again on the packaged calibration text (a user's file may be gone).
        method=q.method,
        target_bpw=q.target_bpw,
        recipe=q.recipe,
        dtype=q.dtype,
        set_latest=True,  # the same release at a newer revision: what `auto` promises
        home=home,
        progress=progress,
    )
    return replace(status, state="updated", new_model=result.manifest.name)
