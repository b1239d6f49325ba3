"""The sources layer: where weights come from and the versioned local store.

    $QWEN_MLX_HOME/models/<family>/<release>/<format>/   one model, with manifest.json
    $QWEN_MLX_HOME/models/<family>/latest                which <release>/<format> is current
    $QWEN_MLX_HOME/registry.sqlite                       models, files, events, pins, policies

- `naming.py`: the naming convention, both ways, and names made from a checkpoint.
- `manifest.py`: manifest.json, file hashes, verification.
- `safetensors_header.py`: what a weight file holds, read from its header alone.
- `registry.py`: registry.sqlite (all SQL of the store lives there); `migrations.py`.
- `versions.py`: `Store` (latest, pin, rollback, verify, rm, repair); `home()`, its root.
- `staging.py`: staging folders, atomic install, the swap journal and recovery.
- `refs.py`: model references -> folders. `hub.py`: the Hugging Face Hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "MLX_PATTERNS": "refs",
    "resolve": "refs",
    "check_replaceable": "staging",
    "clean_partials": "staging",
    "install": "staging",
    "LATEST_FILE": "versions",
    "RepairResult": "versions",
    "Store": "versions",
    "home": "versions",
    "StoredModel": "versions",
    "VerifyResult": "versions",
}

__all__ = [
    "LATEST_FILE",
    "MLX_PATTERNS",
    "RepairResult",
    "Store",
    "StoredModel",
    "VerifyResult",
    "check_replaceable",
    "clean_partials",
    "home",
    "install",
    "resolve",
]

if TYPE_CHECKING:
    from .refs import MLX_PATTERNS, resolve
    from .staging import check_replaceable, clean_partials, install
    from .versions import LATEST_FILE, RepairResult, Store, StoredModel, VerifyResult, home

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
