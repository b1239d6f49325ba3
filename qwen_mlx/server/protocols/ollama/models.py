"""The served model as Ollama describes models: `/api/tags` and `/api/ps` entries
(`model_entry`: name with its tag, size, digest, details) and `/api/show` (`show`: the
parameters, template, license and the architecture's figures)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

from ...engine import Engine
from .encode import model_name, stamp


def _size(engine: Engine) -> int:
    model = engine.model
    if model.manifest is not None:
        return sum(f.size for f in model.manifest.files)
    return sum(p.stat().st_size for p in model.path.glob("*.safetensors"))


def _details(engine: Engine) -> dict[str, Any]:
    model = engine.model
    family = str(model.config.get("model_type", "qwen3"))
    q = model.config.get("quantization")
    parameters = model.manifest.parameters if model.manifest else 0
    if parameters >= 1e9:
        size = f"{parameters / 1e9:.1f}B"
    else:
        size = f"{parameters / 1e6:.1f}M" if parameters else ""
    return {
        "parent_model": "",
        "format": "mlx",
        "family": family,
        "families": [family],
        "parameter_size": size,
        "quantization_level": f"Q{q['bits']}" if q else model.quantization_label.upper(),
    }


def _modified(engine: Engine) -> str:
    manifest = engine.model.manifest
    try:
        return stamp(datetime.fromisoformat(manifest.created_at).astimezone(timezone.utc))
    except (AttributeError, ValueError):  # no manifest, or no date in it
        return stamp(datetime.fromtimestamp(engine.model.path.stat().st_mtime, timezone.utc))


def model_entry(engine: Engine) -> dict[str, Any]:
    name = model_name(engine)
    return {
        "name": name,
        "model": name,
        "modified_at": _modified(engine),
        "size": _size(engine),
        "digest": engine.model.fingerprint,
        "details": _details(engine),
    }


def show(engine: Engine) -> dict[str, Any]:
    model = engine.model
    config = model.config
    family = str(config.get("model_type", "qwen3"))
    params = model.default_params
    parameters = "\n".join(
        f"{key:<15}{value}"
        for key, value in (
            ("temperature", params.temperature),
            ("top_p", params.top_p),
            ("top_k", params.top_k),
            ("num_ctx", engine.context_limit),
            ("num_predict", params.max_tokens),
            *(("stop", json.dumps(s)) for s in params.stop),
        )
    )
    info = {
        "general.architecture": family,
        "general.name": model.name,
        "general.parameter_count": model.manifest.parameters if model.manifest else None,
        f"{family}.context_length": engine.context_limit,
        f"{family}.embedding_length": config.get("hidden_size"),
        f"{family}.block_count": config.get("num_hidden_layers"),
        f"{family}.attention.head_count": config.get("num_attention_heads"),
        f"{family}.attention.head_count_kv": config.get("num_key_value_heads"),
        f"{family}.vocab_size": config.get("vocab_size"),
    }
    return {
        "modelfile": f"# Served by qwen-mlx from {model.path.name}\nFROM {model.name}\n",
        "parameters": parameters,
        "template": getattr(model.tokenizer, "chat_template", None) or "",
        "license": (model.manifest.license if model.manifest else None) or "",
        "details": _details(engine),
        "model_info": {k: v for k, v in info.items() if v is not None},
        "capabilities": ["completion", "tools"],
        "modified_at": _modified(engine),
    }
