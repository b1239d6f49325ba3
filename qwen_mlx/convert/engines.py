"""Copies of a stored model laid out for other engines: an Ollama `Modelfile` beside a GGUF
(Qwen3's chat template with tools in Ollama's Go template language, stop tokens and the
sampling defaults of generation_config.json), and LM Studio's models folder
(`<models dir>/<publisher>/<model>/<files>`) for MLX and GGUF copies.

In LM Studio's folder the weights are hard links to the store's files, read-only (no
extra disk, and neither side can be written in place); every other file is a copy, so
editing the exported config.json leaves the store's as it was (and `verify` passing)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..errors import OutputExistsError
from ..fileio import atomic_write_text
from ..store import naming
from ..store.staging import PARTIAL_MARK, clean_partials

MODELFILE = "Modelfile"
LMSTUDIO_PUBLISHER = "qwen-mlx"
LINKED_SUFFIXES = (".safetensors", ".gguf")  # the weights: big, and never edited

# Qwen3-Instruct-2507's chat template (tokenizer_config.json) in Ollama's template language:
# the same system and tools block, turns, tool calls and tool responses. Ollama passes the
# system prompt as .System (and leaves system turns out of the loop), and the tools as
# .Tools, whose .Function prints as JSON.
OLLAMA_TEMPLATE = """\
{{- if .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}

{{ end }}# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{{ else if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $m := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq $m.Role "user" }}<|im_start|>user
{{ $m.Content }}<|im_end|>
{{ else if eq $m.Role "assistant" }}<|im_start|>assistant
{{ $m.Content }}
{{- range $j, $call := $m.ToolCalls }}{{ if or $j $m.Content }}
{{ end }}<tool_call>
{"name": "{{ $call.Function.Name }}", "arguments": {{ $call.Function.Arguments }}}
</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq $m.Role "tool" }}<|im_start|>user
<tool_response>
{{ $m.Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne $m.Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""

# generation_config.json key -> Ollama PARAMETER name
_OLLAMA_PARAMETERS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "repetition_penalty": "repeat_penalty",
}


def stop_tokens(folder: Path) -> list[str]:
    """The texts of generation_config.json's eos ids (Qwen3: `<|im_end|>`,
    `<|endoftext|>`), else tokenizer_config.json's eos token."""
    gen = _read_json(folder / "generation_config.json")
    ids = gen.get("eos_token_id")
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    stops: list[str] = []
    if ids and (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        stops = [t for t in (tok.id_to_token(i) for i in ids) if t]
    if not stops:
        eos = _read_json(folder / "tokenizer_config.json").get("eos_token")
        eos = eos.get("content") if isinstance(eos, dict) else eos
        stops = [eos] if isinstance(eos, str) else []
    return list(dict.fromkeys(stops))


def modelfile_text(gguf_file: str, folder: Path) -> str:
    """An Ollama Modelfile for `gguf_file` (a path relative to the Modelfile), with the
    template, stop tokens and sampling defaults of the model in `folder`."""
    gen = _read_json(folder / "generation_config.json")
    lines = [f"FROM ./{gguf_file}", "", f'TEMPLATE """{OLLAMA_TEMPLATE}"""', ""]
    for stop in stop_tokens(folder):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    for key, param in _OLLAMA_PARAMETERS.items():
        value = gen.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            lines.append(f"PARAMETER {param} {value}")
    return "\n".join(lines) + "\n"


def write_modelfile(out: Path, gguf_file: str, folder: Path) -> Path:
    file = out / MODELFILE
    atomic_write_text(file, modelfile_text(gguf_file, folder))
    return file


def ollama_model_name(name: naming.ModelName) -> str:
    """What `ollama create` calls it: `qwen3-4b-instruct-2507:q4_0`."""
    return f"{name.family_id}-{name.release}:{name.quant or 'latest'}"


def ollama_create_command(name: naming.ModelName, modelfile: Path) -> str:
    import shlex

    return f"ollama create {ollama_model_name(name)} -f {shlex.quote(str(modelfile))}"


# -- LM Studio ------------------------------------------------------------------------------


def lmstudio_models_dir() -> Path:
    """LM Studio's models folder: `$LMSTUDIO_MODELS_DIR`, else `~/.lmstudio/models`."""
    return Path(os.environ.get("LMSTUDIO_MODELS_DIR") or "~/.lmstudio/models").expanduser()


@dataclass(frozen=True)
class LMStudioCopy:
    folder: Path  # <models dir>/<publisher>/<model>
    files: tuple[str, ...]
    linked: tuple[str, ...]  # the files hard-linked to the store's (read-only); the rest copied


def lmstudio_folder(name: naming.ModelName, models_dir: Path) -> Path:
    """`qwen-mlx/qwen3-4b-instruct-2507-GGUF` for GGUF files (one folder holds every quant,
    as on the Hub), `qwen-mlx/qwen3-4b-instruct-2507-mlx-q4-g64` for an MLX copy."""
    if name.format == "gguf":
        model = f"{name.family_id}-{name.release}-GGUF"
    else:
        model = str(name).split("@")[0]
    return models_dir / LMSTUDIO_PUBLISHER / model


def export_lmstudio(
    folder: Path,
    name: naming.ModelName,
    files: list[str],
    *,
    models_dir: Path | None = None,
    force: bool = False,
) -> LMStudioCopy:
    """Put `files` of the stored model in `folder` where LM Studio finds them: weights
    hard-linked read-only when the store is on the same disk, else copied, every other
    file copied; either way under a temporary name first (with our pid, so the next
    export deletes what a killed one left), renamed when complete."""
    target = lmstudio_folder(name, models_dir or lmstudio_models_dir())
    tag = f"{PARTIAL_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    linked: list[str] = []
    if name.format == "gguf":
        target.mkdir(parents=True, exist_ok=True)
        clean_partials(target, swaps=False)
        existing = [f for f in files if (target / f).exists()]
        if existing and not force:
            raise OutputExistsError(
                f"{target / existing[0]} already exists; pass --force to replace it."
            )
        for f in files:
            tmp = target / f".{f}{tag}"
            try:
                if _link_or_copy(folder / f, tmp):
                    linked.append(f)
                os.replace(tmp, target / f)
            finally:
                tmp.unlink(missing_ok=True)
        return LMStudioCopy(target, tuple(files), tuple(linked))
    if target.exists() and not force:
        raise OutputExistsError(f"{target} already exists; pass --force to replace it.")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_partials(target.parent, swaps=False)
    tmp = target.parent / f".{target.name}{tag}"
    tmp.mkdir()
    try:
        for f in files:
            (tmp / f).parent.mkdir(parents=True, exist_ok=True)
            if _link_or_copy(folder / f, tmp / f):
                linked.append(f)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return LMStudioCopy(target, tuple(files), tuple(linked))


def _link_or_copy(src: Path, dst: Path) -> bool:
    """Link weights (read-only: the link is the store's file), copy the rest and weights
    that cannot be linked (another disk). True if linked."""
    if src.suffix in LINKED_SUFFIXES:
        try:
            os.link(src, dst)
        except OSError:
            pass
        else:
            os.chmod(dst, stat.S_IMODE(os.stat(dst).st_mode) & ~0o222)
            return True
    shutil.copyfile(src, dst)
    return False


def _read_json(file: Path) -> dict:
    return json.loads(file.read_text()) if file.is_file() else {}
