"""A loaded model: `load(ref)` -> `Model` (MLX module, tokenizer, config, manifest), its
chat template with exact token reuse for earlier replies, YaRN context extension, and the
fingerprint a KV cache is tied to.

A model reference is a store name (`qwen3-4b-instruct` for the family's latest, or a full
name), a folder, or a Hugging Face repo id of an MLX model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..convert.template import ChatTemplate
from ..errors import DamagedModelError, ModelNotFoundError, UnsupportedModelError
from ..store import resolve
from ..store.manifest import Manifest, manifest_sha256, read_manifest, verify_files
from .control import control_tokens, encode, mark
from .messages import Message
from .sampling import SamplingParams

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import mlx.nn as nn


Prompt = str | Sequence[Message | dict[str, Any]] | Sequence[int]


_REPLY_MARK = "\x00qwen-mlx-reply-{}\x00"


@dataclass
class Model:
    """A loaded model: the MLX module, its tokenizer, config and (if stored) manifest."""

    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict[str, Any]
    path: Path
    manifest: Manifest | None = None
    generation_config: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    # State helpers keep per model (recent document conversations), freed with the model.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Split across the ranks of a group (`runtime.distributed.Shard`); None on one process.
    shard: Any = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        """One line (the dataclass's would print every layer of the module)."""
        from ..store.naming import parameters_text

        return (
            f"Model({self.name!r}, {parameters_text(self.parameters)} parameters, "
            f"{self.quantization_label}, context {self.context_length:,})"
        )

    @property
    def parameters(self) -> int:
        """The parameter count: the manifest's, else counted from the weights (a quantized
        weight's packed words hold 32 / bits values each)."""
        if self.manifest is not None and self.manifest.parameters:
            return self.manifest.parameters
        from mlx.utils import tree_flatten

        bits = (self.config.get("quantization") or {}).get("bits")
        total = 0
        for name, array in tree_flatten(self.model.parameters()):
            if name.endswith((".scales", ".biases")):
                continue
            packed = bits and str(array.dtype) == "mlx.core.uint32"
            total += array.size * 32 // bits if packed else array.size
        return total

    @property
    def name(self) -> str:
        return self.manifest.name if self.manifest else self.path.name

    @property
    def ref(self) -> str:
        """What loads this model again from anywhere: its store name when it sits in the
        store, else its folder."""
        from ..store import home

        folder = self.path.resolve()
        if self.manifest and folder.is_relative_to((home() / "models").resolve()):
            return self.manifest.name
        return str(folder)

    @property
    def default_params(self) -> SamplingParams:
        return SamplingParams.from_generation_config(self.generation_config)

    @property
    def context_length(self) -> int:
        """Tokens the model can attend to (after any YaRN extension)."""
        return int(self.config.get("max_position_embeddings", 32768))

    @property
    def quantization_label(self) -> str:
        q = self.config.get("quantization")
        if not q:
            return str(self.config.get("torch_dtype", "bf16"))
        mode = q.get("mode", "affine")
        return (
            f"{q['bits']}-bit g{q['group_size']}"
            if mode == "affine"
            else f"{mode} g{q['group_size']}"
        )

    def render(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        """The conversation as the chat template renders it (to show; `render_tokens`
        gives the ids a prompt is made of)."""
        rendered = [m.template() if isinstance(m, Message) else m for m in messages]
        return self._apply_template(rendered, tools, add_generation_prompt)

    def _apply_template(
        self,
        messages: list[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None,
        add_generation_prompt: bool,
    ) -> str:
        """The chat template's text for `messages`: with bounds on steps, size and time,
        and the family's known template if the model's own runs past them (see
        `convert.template`)."""
        if getattr(self.tokenizer, "_chat_template", None) is not None:  # mlx-lm's own code
            kwargs: dict[str, Any] = {"add_generation_prompt": add_generation_prompt}
            if tools:
                kwargs["tools"] = list(tools)
            return self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        template = self.memo.get("chat_template")
        if template is None:
            template = ChatTemplate.of(self.tokenizer, self.config, self.name)
            self.memo["chat_template"] = template
        return template.render(
            messages,
            tools=list(tools) if tools else None,
            add_generation_prompt=add_generation_prompt,
        )

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def render_tokens(
        self,
        messages: Sequence[Message | dict[str, Any]],
        *,
        tools: Sequence[dict[str, Any]] | None = None,
        add_generation_prompt: bool = True,
        check: Callable[[str], None] | None = None,
    ) -> list[int]:
        """Token ids of the rendered conversation, reusing the exact ids the model produced
        for earlier replies (`Message.token_ids`).

        Control tokens are the template's alone (`control.py`): a message, a tool result
        or a tool's schema that spells `<|im_end|>` is read as that text, so no content
        can end its turn and forge another. All of a conversation is treated so, the
        user's messages too: they come from clients, documents and other people as
        often as from the person at the keyboard, and raw control stays available to
        those who write the whole prompt (a text prompt is encoded as it is).

        Re-encoding a reply's text does not always give back the tokens the model sampled,
        and every difference would make the prefix cache re-read from there. The template
        still renders everything: replies are swapped for markers, the text around them is
        encoded, and each reply's own ids go in between. If the markers would render any
        differently from the real text, this falls back to encoding the whole text.
        `check` sees the rendered text before any of it is tokenized (the server refuses a
        prompt far over the context there).
        """
        messages = [Message.of(m) for m in messages]
        controls = control_tokens(self)
        turns = [m.template() for m in messages]
        specs = list(tools) if tools else None
        if controls is not None:
            turns = mark(turns, controls)
            specs = mark(specs, controls) if specs else None
        real = self._apply_template(turns, specs, add_generation_prompt)
        if check is not None:
            check(real)
        spliced = [i for i, m in enumerate(messages) if m.role == "assistant" and m.token_ids]
        if not spliced:
            return encode(self, real, controls)
        marks = {i: _REPLY_MARK.format(i) for i in spliced}
        marked = [dict(t, content=marks[i]) if i in marks else t for i, t in enumerate(turns)]
        text = self._apply_template(marked, specs, add_generation_prompt)
        rebuilt = text
        for i, reply in marks.items():
            if text.count(reply) != 1:
                return encode(self, real, controls)
            rebuilt = rebuilt.replace(reply, turns[i]["content"])
        if rebuilt != real:
            return encode(self, real, controls)
        tokens: list[int] = []
        pos = 0
        for i, reply in marks.items():
            at = text.index(reply, pos)
            tokens += encode(self, text[pos:at], controls) + list(messages[i].token_ids)
            pos = at + len(reply)
        return tokens + encode(self, text[pos:], controls)

    def prompt_tokens(
        self, prompt: Prompt, tools: Sequence[dict[str, Any]] | None = None
    ) -> list[int]:
        """Token ids for raw text, a list of chat messages, or ids passed through."""
        if isinstance(prompt, str):
            return self.encode(prompt)
        items = list(prompt)
        if items and all(isinstance(t, int) for t in items):
            return items
        return self.render_tokens(items, tools=tools)


def resolve_params(
    model: Model, params: SamplingParams | None, overrides: dict[str, Any]
) -> SamplingParams:
    """The parameters a call runs with: `params`, else the model's defaults (its
    generation_config.json), with `overrides` on top."""
    return (params or model.default_params).replace(**overrides)


def sampling_for(model: Model, params: SamplingParams) -> SamplingParams:
    """`params` as they apply to `model`: a `top_k` at or above its vocabulary keeps every
    token, so it becomes 0 (off), the same distribution (mlx-lm refuses such a top_k)."""
    vocab = int(model.config.get("vocab_size") or 0)
    if vocab and params.top_k >= vocab:
        return replace(params, top_k=0)
    return params


def load(
    ref: str | Path,
    *,
    verify: bool = False,
    context_extension: float | None = None,
    revision: str | None = None,
    home: str | Path | None = None,
    lazy: bool = False,
    group: Any = None,
    pipeline: bool = False,
) -> Model:
    """Load a model by store name, family id (its latest), folder or Hugging Face repo id.

    A stored model's files are checked against its manifest first: sizes always (cheap),
    sha256 too with `verify=True`. `context_extension=F` applies YaRN rope scaling by F
    to reach F x the model's native context, as Qwen's model card documents.

    `group` splits the model across processes or Macs (see `runtime/distributed.py`):
    `launch.Ranks` that this process started (it drives them: every call is mirrored
    on the others), or an `mx.distributed` group when every rank runs this same program.
    The split is by attention heads (tensor parallel), or by layers with `pipeline=True`.
    """
    from mlx_lm.utils import load as mlx_load

    from .launch import Ranks

    if isinstance(group, Ranks):
        from .mirror import load_driven

        options = {"verify": verify, "context_extension": context_extension}
        options |= {"revision": revision, "pipeline": pipeline}
        return load_driven(group, ref, home=home, **options)
    if group is not None and group.size() == 1:
        group = None
    folder = resolve(ref, home=home, revision=revision)
    manifest = read_manifest(folder)
    if manifest is not None and (manifest.quantization.mode or "").startswith("gguf-"):
        raise UnsupportedModelError(
            f"{manifest.name} is a GGUF copy for llama.cpp, Ollama and LM Studio; load an MLX "
            "version (`qwen-mlx models list`), or import the file with `qwen-mlx models import`."
        )
    if manifest is None:
        _check_model_folder(folder)
        if verify:
            logger.warning(
                "%s has no manifest.json: there are no checksums to verify it against "
                "(`qwen-mlx models import` adds it to the store with one).",
                folder,
            )
    elif group is None:  # a rank checks the files it reads (in `load_rank`)
        problems = verify_files(folder, manifest, full=verify)
        if problems:
            listed = "; ".join(map(str, problems[:5]))
            raise DamagedModelError(
                f"{manifest.name} at {folder} does not match its manifest: {listed}. "
                f"Run `qwen-mlx models verify {manifest.name}` for details, then convert it "
                "again or remove it."
            )
    overrides = yarn_overrides(folder, context_extension) if context_extension else None
    mode = "pipeline" if pipeline else "tensor"
    if group is None:
        module, tokenizer, config = mlx_load(
            str(folder), model_config=overrides, lazy=lazy, return_config=True
        )
    else:
        from .sharding import load_rank

        module, tokenizer, config, peak = load_rank(
            folder, manifest, group, mode=mode, verify=verify, model_config=overrides
        )
    _evaluate_buffers(module)
    gen_file = folder / "generation_config.json"
    generation_config = json.loads(gen_file.read_text()) if gen_file.is_file() else {}
    model = Model(
        model=module,
        tokenizer=tokenizer,
        config=config,
        path=folder,
        manifest=manifest,
        generation_config=generation_config,
        fingerprint=_with_extension(
            manifest_sha256(folder) or _fingerprint(folder), context_extension
        ),
    )
    if group is not None:
        from .sharding import join_ranks

        model.shard = join_ranks(model, group, mode, peak)
    return model


def _evaluate_buffers(module: Any) -> None:
    """Evaluate the arrays a model holds beside its weights (YaRN's rope frequencies, kept
    as a private attribute) on the thread that loads it. MLX ties an unevaluated array
    to the thread that built it: left lazy, the first generation on another thread (a
    server's or an app's model thread) fails with "There is no Stream(cpu, 0) in current
    thread". Weights are left as loading left them (lazy when asked)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    buffers = module.filter_and_map(
        lambda _, key, value: (
            isinstance(value, dict | list) or (isinstance(value, mx.array) and key.startswith("_"))
        )
    )
    arrays = [a for _, a in tree_flatten(buffers) if isinstance(a, mx.array)]
    if arrays:
        mx.eval(arrays)


def _check_model_folder(folder: Path) -> None:
    missing = [
        what
        for what, present in (
            ("config.json", (folder / "config.json").is_file()),
            ("weights (*.safetensors)", any(folder.glob("*.safetensors"))),
        )
        if not present
    ]
    if missing:
        raise ModelNotFoundError(
            f"{folder} is not a model folder: it has no {' and no '.join(missing)}. Convert "
            "a Hugging Face checkpoint with `qwen-mlx convert --hf-path PATH_OR_REPO`, or "
            "name a stored model (see `qwen-mlx models list`)."
        )


def yarn_overrides(folder: Path, factor: float) -> dict[str, Any]:
    """Config changes for YaRN rope scaling by `factor` (Qwen's model card recipe)."""
    if factor <= 1:
        raise ValueError("context_extension must be greater than 1.")
    config = json.loads((folder / "config.json").read_text())
    native = int(config.get("max_position_embeddings", 32768))
    return {
        "rope_scaling": {
            "rope_type": "yarn",
            "type": "yarn",
            "factor": float(factor),
            "original_max_position_embeddings": native,
        },
        "max_position_embeddings": int(native * factor),
    }


def _with_extension(fingerprint: str, factor: float | None) -> str:
    """YaRN changes every position's rotation: a KV cache computed with one factor is
    wrong under another, so the factor is part of the model's identity."""
    if not factor:
        return fingerprint
    return hashlib.sha256(f"{fingerprint}:yarn:{float(factor)}".encode()).hexdigest()


def _fingerprint(folder: Path) -> str:
    """Identity of a folder without a manifest: its config and its weight files' sizes."""
    digest = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.glob("*.safetensors")):
        stat = f.stat()
        digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()
