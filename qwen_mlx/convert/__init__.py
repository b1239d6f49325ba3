"""The conversion layer: Hugging Face checkpoints in, MLX models out, into the store.

- `pipeline.py`: `convert()`, atomic, as steps: check, fetch, inspect, plan, name, stage,
  write, quality, manifest, register (`run_conversion` reads like that list).
- `weights.py`: which layers are quantized how, and the streaming write of the tensors.
- `names.py`: the store name of a conversion or an import, and collisions.
- `checkpoint.py`: a checkpoint folder read from its headers, refused early when broken.
- `tensorfile.py`: streaming safetensors output. `quality.py`: the quality report.
- `progress.py`: the progress events all of it reports.
- `importer.py`: `models import` of an MLX folder. `updates.py`: `models check-updates`.
- `gguf_export.py` / `gguf_import.py`: GGUF out of and into the store (`models export`,
  `models import FILE.gguf`); `engines.py`: Ollama's Modelfile and LM Studio's layout.
- `template.py`: chat templates rendered with bounds (steps, characters, time), and the
  family's known template to fall back on; used at import and by every prompt.
- `quant.py`: quantization modes and mlx-lm's learned methods (AWQ, GPTQ, DWQ, dynamic).
- `tiny.py` and `demo.py`: tiny random Qwen3 checkpoints and the demo model.

`python -m qwen_mlx.convert` is `qwen-mlx convert` (`__main__.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS = {
    "DTYPES": "pipeline",
    "METHODS": "quant",
    "Q_MODES": "quant",
    "Q_BITS": "pipeline",
    "Q_GROUP_SIZES": "pipeline",
    "RECIPES": "pipeline",
    "ConvertResult": "pipeline",
    "Progress": "pipeline",
    "ProgressFn": "pipeline",
    "convert": "pipeline",
    "default_report": "pipeline",
    "quantized_prefill_is_slow": "pipeline",
}

__all__ = [
    "DTYPES",
    "METHODS",
    "Q_BITS",
    "Q_GROUP_SIZES",
    "Q_MODES",
    "RECIPES",
    "ConvertResult",
    "Progress",
    "ProgressFn",
    "convert",
    "default_report",
    "quantized_prefill_is_slow",
]

if TYPE_CHECKING:
    from .pipeline import (
        DTYPES,
        Q_BITS,
        Q_GROUP_SIZES,
        RECIPES,
        ConvertResult,
        Progress,
        ProgressFn,
        convert,
        default_report,
        quantized_prefill_is_slow,
    )
    from .quant import METHODS, Q_MODES

__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
