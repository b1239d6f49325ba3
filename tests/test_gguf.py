"""GGUF export and import through `qwen-mlx models ...` (main(argv)) on tiny models: the
store versions, their manifests, the file's metadata and tensors, the Ollama and LM Studio
layouts, and what an import keeps. llama.cpp's own checks are in test_gguf_interop.py."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from qwen_mlx.cli import main
from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

from .gguf_builder import write_llama_style_gguf
from .helpers import SHARED_MODEL, child_env, needs_shared

NAME = "qwen3-1m-tiny-2507-mlx-q4-g64"
IDS = [[3, 17, 42, 99, 250, 301, 7, 512, 11]]


def run(*argv: str) -> int:
    return main(list(argv))


@pytest.fixture(scope="module")
def exported(tiny_hf, tmp_path_factory):
    """A store holding the tiny model (4-bit MLX, converted from a copy of its HF files)
    and its f16, q8_0 and q4_0 GGUF versions, exported through the CLI."""
    import os

    from qwen_mlx.convert import convert

    root = tmp_path_factory.mktemp("gguf")
    hf = shutil.copytree(tiny_hf, root / tiny_hf.name)
    home = root / "home"
    old = os.environ.get("QWEN_MLX_HOME")
    os.environ["QWEN_MLX_HOME"] = str(home)
    try:
        convert(str(hf))
        for quant in ("f16", "q8_0", "q4_0"):
            assert run("models", "export", NAME, "--format", "gguf", "--quant", quant) == 0
    finally:
        if old is None:
            os.environ.pop("QWEN_MLX_HOME", None)
        else:
            os.environ["QWEN_MLX_HOME"] = old
    return {"home": home, "hf": hf}


@pytest.fixture
def store(exported, tmp_path, monkeypatch) -> Path:
    """A private copy of the exported store, as this test's QWEN_MLX_HOME."""
    home = shutil.copytree(exported["home"], tmp_path / "home")
    monkeypatch.setenv("QWEN_MLX_HOME", str(home))
    return home


def gguf_file(home: Path, quant: str) -> Path:
    return home / f"models/qwen3-1m-tiny/2507/gguf-{quant}/qwen3-1m-tiny-2507-gguf-{quant}.gguf"


def reader(path: Path):
    import gguf

    r = gguf.GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def logits(folder) -> np.ndarray:
    import mlx.core as mx

    from qwen_mlx import load

    return np.array(load(folder).model(mx.array(IDS)).astype(mx.float32))


# -- export ---------------------------------------------------------------------------------


def test_export_writes_a_gguf_version_that_list_verify_and_rm_handle(store, capsys):
    assert run("models", "list", "--json") == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    for quant in ("f16", "q8_0", "q4_0"):
        row = rows[f"qwen3-1m-tiny-2507-gguf-{quant}"]
        assert row["format"] == f"gguf-{quant}" and not row["latest"]
    manifest = json.loads((gguf_file(store, "q4_0").parent / "manifest.json").read_text())
    files = {f["path"] for f in manifest["files"]}
    assert files == {"qwen3-1m-tiny-2507-gguf-q4_0.gguf", "Modelfile"}
    assert manifest["quantization"]["mode"] == "gguf-q4_0"
    assert run("models", "verify", "qwen3-1m-tiny-2507-gguf-q4_0") == 0
    assert run("models", "show", "qwen3-1m-tiny-2507-gguf-q4_0") == 0
    assert "quantization  q4_0" in capsys.readouterr().out
    from qwen_mlx import load
    from qwen_mlx.errors import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match="GGUF copy"):
        load("qwen3-1m-tiny-2507-gguf-q4_0")
    with open(gguf_file(store, "q4_0"), "r+b") as f:  # damage one byte of the weights
        f.seek(-10, 2)
        byte = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert run("models", "verify", "qwen3-1m-tiny-2507-gguf-q4_0") == 1
    assert "sha256" in capsys.readouterr().out
    assert run("models", "rm", "qwen3-1m-tiny-2507-gguf-q4_0") == 0
    assert not gguf_file(store, "q4_0").parent.exists()
    assert run("models", "show", NAME) == 0  # the MLX version is untouched


def test_export_metadata_holds_hyperparameters_tokenizer_template_and_sampling(store, exported):
    from tokenizers import Tokenizer

    hf = exported["hf"]
    config = json.loads((hf / "config.json").read_text())
    tok_config = json.loads((hf / "tokenizer_config.json").read_text())
    gen = json.loads((hf / "generation_config.json").read_text())
    _, meta = reader(gguf_file(store, "f16"))
    assert meta["general.architecture"] == "qwen3"
    assert meta["general.name"] == "qwen3-1m-tiny-2507-gguf-f16"
    assert meta["qwen3.block_count"] == config["num_hidden_layers"]
    assert meta["qwen3.context_length"] == config["max_position_embeddings"]
    assert meta["qwen3.attention.head_count_kv"] == config["num_key_value_heads"]
    assert meta["qwen3.attention.key_length"] == config["head_dim"]
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "qwen2"
    tok = Tokenizer.from_file(str(hf / "tokenizer.json"))
    tokens = meta["tokenizer.ggml.tokens"]
    assert len(tokens) == config["vocab_size"]
    assert all(tokens[i] == t for t, i in tok.get_vocab(with_added_tokens=True).items())
    types = meta["tokenizer.ggml.token_type"]
    assert types[tok.token_to_id("<|im_end|>")] == 3  # CONTROL
    assert types[tok.token_to_id("<tool_call>")] == 4  # USER_DEFINED: not special
    assert types[-1] == 5  # UNUSED: a padding row of the embedding
    assert meta["tokenizer.ggml.merges"][0] == " ".join(
        json.loads((hf / "tokenizer.json").read_text())["model"]["merges"][0]
    )
    assert meta["tokenizer.ggml.eos_token_id"] == tok.token_to_id("<|im_end|>")
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == tok_config["chat_template"]
    assert meta["general.sampling.temp"] == pytest.approx(gen["temperature"])
    assert meta["general.sampling.top_p"] == pytest.approx(gen["top_p"])
    assert meta["general.sampling.top_k"] == gen["top_k"]


def test_export_tensor_types_follow_llama_cpp_convert(store):
    expected = {"f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}
    for quant, kind in expected.items():
        r, _ = reader(gguf_file(store, quant))
        types = {t.name: t.tensor_type.name for t in r.tensors}
        assert types["blk.0.attn_norm.weight"] == "F32"
        assert types["blk.1.attn_q_norm.weight"] == "F32"
        assert types["blk.0.ffn_down.weight"] == kind
        assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
        # q4_0 keeps the (tied) output projection in Q8_0, as llama.cpp keeps it in Q6_K
        assert types["token_embd.weight"] == ("Q8_0" if quant == "q4_0" else kind)
        assert len(types) == 2 * 11 + 2


@pytest.fixture
def hub(tmp_path, monkeypatch):
    from .fakehub import FakeHub, use_fake_hub

    with FakeHub() as fake:
        use_fake_hub(monkeypatch, fake, tmp_path / "hf_home")
        yield fake


def test_export_reads_the_hf_cache_when_the_source_is_there_else_the_mlx_weights(
    hub, tiny_hf, tmp_path, capsys
):
    import gguf
    import mlx.core as mx

    repo = "Qwen/Qwen3-1M-Tiny-2507"
    hub.add_commit(repo, tiny_hf)
    assert run("convert", "--hf-path", repo) == 0
    out = tmp_path / "out"
    assert run("models", "export", NAME, "--quant", "f16", "--output", str(out)) == 0
    assert f"the original Hugging Face files ({repo})" in capsys.readouterr().out
    shutil.rmtree(tmp_path / "hf_home" / "hub")  # the HF cache was cleaned up
    assert run("models", "export", NAME, "--quant", "f16", "--output", str(out), "--force") == 0
    assert "the MLX weights, dequantized" in capsys.readouterr().out
    r, _ = reader(out / "qwen3-1m-tiny-2507-gguf-f16.gguf")
    got = next(t for t in r.tensors if t.name == "blk.0.ffn_up.weight")
    from qwen_mlx.store import Store

    w = mx.load(str(Store().find(NAME) / "model.safetensors"))
    p = "model.layers.0.mlp.up_proj"
    want = mx.dequantize(w[f"{p}.weight"], w[f"{p}.scales"], w[f"{p}.biases"], 64, 4)
    data = gguf.quants.dequantize(got.data, got.tensor_type)
    np.testing.assert_allclose(data, np.array(want.astype(mx.float32)), rtol=1e-3, atol=1e-4)
    assert sorted(p.name for p in out.iterdir()) == [
        "Modelfile",
        "qwen3-1m-tiny-2507-gguf-f16.gguf",
    ]


def test_export_refuses_an_existing_version_and_leaves_nothing_when_it_fails(
    store, capsys, monkeypatch
):
    assert run("models", "export", NAME, "--quant", "q8_0") == 1
    assert "--force" in capsys.readouterr().err

    def broken(array, qtype):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qwen_mlx.convert.gguf_export._encode", broken)
    assert run("models", "export", NAME, "--quant", "bf16") == 1
    assert "No space left" in capsys.readouterr().err
    release = store / "models/qwen3-1m-tiny/2507"
    assert sorted(p.name for p in release.iterdir()) == [
        "gguf-f16",
        "gguf-q4_0",
        "gguf-q8_0",
        "mlx-q4-g64",
    ]


def test_export_q4_k_m_without_llama_cpp_says_what_to_install(store, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a)
    )
    assert run("models", "export", NAME, "--quant", "q4_k_m") == 1
    assert "qwen-mlx[interop]" in capsys.readouterr().err
    assert not (store / "models/qwen3-1m-tiny/2507/gguf-q4_k_m").exists()


# -- Ollama and LM Studio ---------------------------------------------------------------------


def test_export_ollama_writes_a_modelfile_and_prints_the_create_command(
    store, exported, tmp_path, capsys
):
    from qwen_mlx.convert.tiny import chat_template

    assert run("models", "export", NAME, "--format", "ollama") == 0
    out = capsys.readouterr().out
    folder = gguf_file(store, "q4_0").parent
    assert f"ollama create qwen3-1m-tiny-2507:q4_0 -f {folder / 'Modelfile'}" in out
    text = (folder / "Modelfile").read_text()
    assert text.startswith("FROM ./qwen3-1m-tiny-2507-gguf-q4_0.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text and 'PARAMETER stop "<|endoftext|>"' in text
    gen = json.loads((exported["hf"] / "generation_config.json").read_text())
    for key in ("temperature", "top_p", "top_k"):
        assert f"PARAMETER {key} {gen[key]}\n" in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # The tools preamble is the jinja template's, word for word.
    import jinja2

    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    rendered = (
        jinja2.Environment()
        .from_string(chat_template())
        .render(
            messages=[{"role": "user", "content": "hi"}], tools=tools, add_generation_prompt=True
        )
    )
    preamble = rendered.split("\n<tools>")[0].removeprefix("<|im_start|>system\n")
    after = rendered.split("\n</tools>")[1].split("<|im_start|>user")[0]
    assert preamble in template and after in template
    for marker in ("<tool_call>", "<tool_response>", ".ToolCalls", "<|im_start|>assistant"):
        assert marker in template
    elsewhere = tmp_path / "ollama"
    assert run("models", "export", NAME, "--format", "ollama", "--output", str(elsewhere)) == 0
    assert f"-f {elsewhere / 'Modelfile'}" in capsys.readouterr().out
    assert sorted(p.name for p in elsewhere.iterdir()) == [
        "Modelfile",
        "qwen3-1m-tiny-2507-gguf-q4_0.gguf",
    ]


def test_export_lmstudio_lays_out_publisher_model_folders(store, tmp_path, capsys):
    models = tmp_path / "lmstudio"
    assert run("models", "export", NAME, "--format", "lmstudio", "--output", str(models)) == 0
    mlx = models / "qwen-mlx" / NAME
    assert (mlx / "config.json").is_file() and (mlx / "model.safetensors").is_file()
    assert (mlx / "tokenizer.json").is_file()
    argv = ["--format", "lmstudio", "--quant", "q8_0", "--output", str(models)]
    assert run("models", "export", NAME, *argv) == 0
    gguf_dir = models / "qwen-mlx" / "qwen3-1m-tiny-2507-GGUF"
    assert [p.name for p in gguf_dir.iterdir()] == ["qwen3-1m-tiny-2507-gguf-q8_0.gguf"]
    assert "LM Studio: 1 file into" in capsys.readouterr().out
    assert run("models", "export", NAME, "--format", "lmstudio", "--output", str(models)) == 1


def test_export_lmstudio_links_weights_read_only_and_copies_the_rest(store, tmp_path, capsys):
    import stat

    models = tmp_path / "lmstudio"
    assert run("models", "export", NAME, "--format", "lmstudio", "--output", str(models)) == 0
    out = capsys.readouterr().out
    assert "model.safetensors: hard-linked to the store's copy" in out
    assert "the other 4 files copied, so editing them leaves the store's as it is" in out
    ours, theirs = store / "models/qwen3-1m-tiny/2507/mlx-q4-g64", models / "qwen-mlx" / NAME
    weights = (ours / "model.safetensors").stat(), (theirs / "model.safetensors").stat()
    assert weights[0].st_ino == weights[1].st_ino  # no extra disk
    assert stat.S_IMODE(weights[1].st_mode) & 0o222 == 0  # and neither side writable in place
    config = theirs / "config.json"
    assert config.stat().st_ino != (ours / "config.json").stat().st_ino
    config.write_text(config.read_text().replace('"hidden_size"', '"hidden_size" '))
    assert run("models", "verify", NAME) == 0  # the store's copy is as it was
    argv = ["--format", "lmstudio", "--quant", "q8_0", "--output", str(models)]
    assert run("models", "export", NAME, *argv) == 0
    assert "LM Studio: 1 file into" in capsys.readouterr().out
    assert stat.S_IMODE((ours / "config.json").stat().st_mode) & 0o200  # the store's own copy


def test_export_output_refuses_to_replace_a_modelfile_without_force(store, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "Modelfile").write_text("FROM ./mine.gguf\n")
    argv = ["models", "export", NAME, "--quant", "f16", "--output", str(out)]
    assert run(*argv) == 1
    assert f"{out / 'Modelfile'} already exists; pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile"]
    assert (out / "Modelfile").read_text() == "FROM ./mine.gguf\n"
    assert run(*argv, "--force") == 0
    assert (out / "Modelfile").read_text().startswith("FROM ./qwen3-1m-tiny-2507-gguf-f16.gguf")


# Runs an export in a child process that pauses half-way (a patched seam prints "paused"
# and sleeps) so the test can kill it with SIGKILL.
KILLED_EXPORT = """
import sys, time
import qwen_mlx.convert.engines as engines
import qwen_mlx.convert.gguf_export as gguf_export
from qwen_mlx.cli import main

def pause():
    print("paused", flush=True)
    time.sleep(600)

encode, place = gguf_export._encode, engines._link_or_copy
if sys.argv[1] == "gguf":  # the first tensor written, the file not complete
    def paused_encode(array, qtype, seen=[]):
        if seen:
            pause()
        seen.append(1)
        return encode(array, qtype)
    gguf_export._encode = paused_encode
else:  # the file is in LM Studio's folder under its temporary name
    def paused_place(src, dst):
        place(src, dst)
        pause()
    engines._link_or_copy = paused_place
main(sys.argv[2:])
"""


@pytest.mark.parametrize("where", ["gguf", "lmstudio"])
def test_an_export_killed_half_way_is_cleaned_up_by_the_next(store, tmp_path, where):
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out"
    if where == "gguf":
        argv = ["models", "export", NAME, "--quant", "f16", "--output", str(out)]
        folder = out
    else:
        argv = ["models", "export", NAME, "--format", "lmstudio", "--quant", "q8_0"]
        argv += ["--output", str(out)]
        folder = out / "qwen-mlx" / "qwen3-1m-tiny-2507-GGUF"
    code = [sys.executable, "-c", textwrap.dedent(KILLED_EXPORT), where, *argv]
    child = subprocess.Popen(
        code, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env()
    )
    lines = iter(child.stdout.readline, "")  # what it prints before the pause, then "paused"
    if "paused\n" not in lines:
        child.kill()
        raise AssertionError(f"the child did not pause: {child.communicate()[1]}")
    child.kill()  # SIGKILL: no finally, no atexit
    child.communicate()
    hidden = [p for p in folder.iterdir() if p.name.startswith(".")]
    assert len(hidden) == 1 and ".partial-" in hidden[0].name  # what the kill left
    assert run(*argv) == 0
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


# -- import ---------------------------------------------------------------------------------


def test_import_q8_0_and_q4_0_carry_codes_and_scales_over_bit_for_bit(store, capsys):
    import gguf
    import mlx.core as mx

    for quant, bits in (("q8_0", 8), ("q4_0", 4)):
        assert run("models", "import", str(gguf_file(store, quant))) == 0
        out = capsys.readouterr().out
        name = f"qwen3-1m-tiny-2507-mlx-q{bits}-g32"
        assert f"Imported {name}" in out
        folder = store / f"models/qwen3-1m-tiny/2507/mlx-q{bits}-g32"
        manifest = json.loads((folder / "manifest.json").read_text())
        from qwen_mlx.fileio import sha256_file

        digest = sha256_file(gguf_file(store, quant))
        assert manifest["source"]["files"] == {gguf_file(store, quant).name: digest}
        assert digest in out
        r, _ = reader(gguf_file(store, quant))
        t = next(t for t in r.tensors if t.name == "blk.1.ffn_gate.weight")
        w = mx.load(str(folder / "model.safetensors"))
        p = "model.layers.1.mlp.gate_proj"
        rows = w[f"{p}.weight"].shape[0]
        blocks = np.asarray(t.data).reshape(rows, -1, gguf.GGML_QUANT_SIZES[t.tensor_type][1])
        d = blocks[..., :2].copy().view(np.float16)[..., 0]
        np.testing.assert_array_equal(np.array(w[f"{p}.scales"]), d)  # the file's scales
        ours = mx.dequantize(
            w[f"{p}.weight"], w[f"{p}.scales"].astype(mx.float32),
            w[f"{p}.biases"].astype(mx.float32), 32, bits,
        )  # fmt: skip
        theirs = gguf.quants.dequantize(t.data, t.tensor_type)
        np.testing.assert_array_equal(np.array(ours), theirs)  # and the file's codes
        assert run("models", "verify", name) == 0


def test_import_of_an_f16_export_gives_back_the_model(store, exported, tmp_path, capsys):
    blob = tmp_path / "sha256-4f1a9c"  # as Ollama keeps it: no .gguf suffix
    shutil.copyfile(gguf_file(store, "f16"), blob)
    assert run("models", "import", str(blob)) == 0
    assert "Imported qwen3-1m-tiny-2507-mlx-f16" in capsys.readouterr().out
    folder = store / "models/qwen3-1m-tiny/2507/mlx-f16"
    ref, got = logits(exported["hf"]), logits(folder)
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 2e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() == 1.0
    config = json.loads((folder / "tokenizer_config.json").read_text())
    original = json.loads((exported["hf"] / "tokenizer_config.json").read_text())
    assert config["chat_template"] == original["chat_template"]
    assert config["eos_token"] == "<|im_end|>"
    from tokenizers import Tokenizer

    text = 'Hello <tool_call>{"a": 1}</tool_call> wörld 1234\n<|im_end|>'
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(exported["hf"] / "tokenizer.json"))
    assert ours.encode(text).ids == theirs.encode(text).ids
    gen = json.loads((folder / "generation_config.json").read_text())
    assert gen["temperature"] == pytest.approx(0.7) and gen["top_k"] == 20


def test_import_requantizes_k_quants_and_says_so(tmp_path, capsys, monkeypatch):
    import gguf
    import mlx.core as mx

    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    hf = build_tiny_checkpoint(
        tmp_path / "Qwen3-4M-Wide-2507", TinyConfig(hidden_size=256, intermediate_size=256)
    )

    def types(name, shape):
        return {"token_embd.weight": "Q6_K", "blk.0.ffn_up.weight": "Q4_K"}.get(name, "Q8_0")

    file = write_llama_style_gguf(hf, tmp_path / "Qwen3-4M-Wide-2507-Q8_0.gguf", types=types)
    assert run("models", "import", str(file)) == 0
    out = capsys.readouterr().out
    assert "2 tensors (Q4_K, Q6_K) were dequantized and re-quantized" in out
    name = "qwen3-4m-wide-2507-mlx-q8-g32"
    assert f"Imported {name}" in out
    folder = tmp_path / "home/models/qwen3-4m-wide/2507/mlx-q8-g32"
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"]["bits"] == 8
    assert config["quantization"]["model.embed_tokens"]["bits"] == 6
    assert config["quantization"]["model.layers.0.mlp.up_proj"]["bits"] == 4
    r, _ = reader(file)
    t = next(t for t in r.tensors if t.name == "token_embd.weight")
    w = mx.load(str(folder / "model.safetensors"))
    p = "model.embed_tokens"
    got = mx.dequantize(w[f"{p}.weight"], w[f"{p}.scales"], w[f"{p}.biases"], 32, 6)
    want = gguf.quants.dequantize(t.data, t.tensor_type)
    err = np.abs(np.array(got.astype(mx.float32)) - want).max()
    assert err <= np.abs(want).max() / 2**5  # within 6-bit rounding of each group's range
    assert logits(folder).shape[-1] == config["vocab_size"]  # and it loads and runs


def test_import_refuses_a_gguf_that_is_not_qwen3_with_the_reason(tiny_hf, tmp_path, capsys):
    file = write_llama_style_gguf(tiny_hf, tmp_path / "llama.gguf", arch="llama")
    assert run("models", "import", str(file)) == 1
    err = capsys.readouterr().err
    assert "holds a 'llama' model" in err and "only Qwen3" in err
    assert not (Path(tmp_path) / "home").exists()


def hf_with_nan(tiny_hf, tmp_path) -> Path:
    """A copy of the tiny checkpoint with three NaN weights in layer 0's up projection."""
    import mlx.core as mx

    hf = shutil.copytree(tiny_hf, tmp_path / "hf")
    weights = mx.load(str(hf / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    poisoned = np.array(weights[name].astype(mx.float32))
    poisoned[0, :3] = np.nan
    weights[name] = mx.array(poisoned).astype(weights[name].dtype)
    mx.save_safetensors(str(hf / "model.safetensors"), weights, metadata={"format": "pt"})
    return hf


def test_import_refuses_nan_weights_unless_forced_and_leaves_no_folders(
    tiny_hf, tmp_path, home, capsys
):
    file = write_llama_style_gguf(hf_with_nan(tiny_hf, tmp_path), tmp_path / "x-F16.gguf")
    argv = ["models", "import", str(file), "--name", "qwen3-1m-tiny-2507-mlx-f16"]
    assert run(*argv) == 1
    err = capsys.readouterr().err
    assert "tensor blk.0.ffn_up.weight holds 3 NaN or infinite values" in err
    assert "Import it anyway with --force" in err
    assert not any((home / "models").glob("*"))  # refused half-way: no empty folders
    assert run(*argv, "--force") == 0
    out = capsys.readouterr().out
    assert "note: 1 tensor holds NaN or infinite values (blk.0.ffn_up.weight); imported" in out


def test_import_refuses_a_feed_forward_length_the_tensors_do_not_have(
    tiny_hf, tmp_path, home, capsys
):
    hf = shutil.copytree(tiny_hf, tmp_path / "hf")
    config = json.loads((hf / "config.json").read_text())
    config["intermediate_size"] = 100  # the tensors stay 128 wide
    (hf / "config.json").write_text(json.dumps(config))
    file = write_llama_style_gguf(hf, tmp_path / "Qwen3-1M-Tiny-2507-F16.gguf")
    assert run("models", "import", str(file)) == 1
    err = capsys.readouterr().err
    assert "tensor blk.0.ffn_gate.weight is 128 x 64, but the metadata" in err
    assert "qwen3.feed_forward_length 100" in err and "could not load" in err
    assert not any((home / "models").glob("*"))


DAMAGED_METADATA = {
    "a count that is text": (
        {"qwen3.block_count": "two"},
        "its qwen3.block_count is 'two', not a whole number above 0",
    ),
    "no attention heads": (
        {"qwen3.attention.head_count": 0},
        "its qwen3.attention.head_count is 0, not a whole number above 0",
    ),
    "heads that do not share": (
        {"qwen3.attention.head_count_kv": 3},
        "its 4 attention heads do not share 3 key/value heads evenly",
    ),
    "an end token past the vocabulary": (
        {"tokenizer.ggml.eos_token_id": 1_000_000},
        "its tokenizer.ggml.eos_token_id is 1000000, but the vocabulary has",
    ),
    "token types missing": (
        {"tokenizer.ggml.token_type": "SHORT"},
        "entries for 576 tokens; the file's metadata is damaged",
    ),
    "a broken merge": (
        {"tokenizer.ggml.merges": ["x"]},
        "its merge 'x' is not two tokens separated by a space",
    ),
}


@pytest.mark.parametrize("case", DAMAGED_METADATA.values(), ids=DAMAGED_METADATA.keys())
def test_import_says_clearly_what_is_wrong_with_damaged_metadata(tiny_hf, tmp_path, capsys, case):
    changes, message = case
    if changes.get("tokenizer.ggml.token_type") == "SHORT":
        _, meta = reader(write_llama_style_gguf(tiny_hf, tmp_path / "base.gguf"))
        changes = {"tokenizer.ggml.token_type": meta["tokenizer.ggml.token_type"][:-5]}
    file = write_llama_style_gguf(tiny_hf, tmp_path / "damaged.gguf", metadata=changes)
    assert run("models", "import", str(file)) == 1
    err = capsys.readouterr().err
    assert message in err and "unexpected" not in err


def test_import_says_a_truncated_gguf_is_truncated(tiny_hf, tmp_path, capsys):
    whole = write_llama_style_gguf(tiny_hf, tmp_path / "whole.gguf").read_bytes()
    for cut in (8, 24, 1000, 20_000, len(whole) // 2, len(whole) - 1):  # header to tensors
        part = tmp_path / f"cut-{cut}.gguf"
        part.write_bytes(whole[:cut])
        assert run("models", "import", str(part)) == 1
        err = capsys.readouterr().err
        assert f"{part} is a truncated or damaged GGUF file ({cut:,} bytes)" in err
        assert "out of bounds" not in err and "reshape" not in err
    text = tmp_path / "notes.gguf"
    text.write_text("not a model\n")
    assert run("models", "import", str(text)) == 1
    assert "is not a GGUF file (it does not start with the bytes 'GGUF')" in capsys.readouterr().err


def test_import_refuses_a_damaged_gguf_and_a_broken_template(tiny_hf, tmp_path, capsys):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 8)
    assert run("models", "import", str(bad)) == 1
    assert "is a truncated or damaged GGUF file" in capsys.readouterr().err
    hf = shutil.copytree(tiny_hf, tmp_path / "hf")
    config = json.loads((hf / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% if messages %}unclosed"
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    file = write_llama_style_gguf(hf, tmp_path / "Qwen3-1M-Tiny-2507-F16.gguf")
    assert run("models", "import", str(file)) == 1
    assert "chat template does not parse" in capsys.readouterr().err


def gguf_with_template(tiny_hf, tmp_path, template: str) -> Path:
    """A llama.cpp-style GGUF of the tiny model whose chat template is `template`."""
    hf = shutil.copytree(tiny_hf, tmp_path / "hf")
    config = json.loads((hf / "tokenizer_config.json").read_text())
    config["chat_template"] = template
    (hf / "tokenizer_config.json").write_text(json.dumps(config))
    return write_llama_style_gguf(hf, tmp_path / "Qwen3-1M-Tiny-2507-F16.gguf")


RUNAWAY = {
    "nested loops": "{% for i in range(100000) %}{% for j in range(100000) %}"
    "{% endfor %}{% endfor %}",
    "string multiplication": "{{ 'x' * 10**10 }}",
}


@pytest.mark.parametrize("template", RUNAWAY.values(), ids=RUNAWAY.keys())
def test_import_replaces_a_runaway_chat_template_with_qwens_and_says_so(
    tiny_hf, tmp_path, home, capsys, template
):
    from qwen_mlx.convert.template import family_template

    file = gguf_with_template(tiny_hf, tmp_path, template)
    assert run("models", "import", str(file)) == 0
    out = capsys.readouterr().out
    assert "note: the file's chat template was refused (" in out
    assert "the model uses Qwen's ChatML template (with tools) instead" in out
    folder = home / "models/qwen3-1m-tiny/2507/mlx-f16"
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == family_template("qwen3")
    assert run("models", "verify", "qwen3-1m-tiny-2507-mlx-f16") == 0
    argv = ["generate", "--model", "qwen3-1m-tiny-2507-mlx-f16", "--prompt", "hi", "-n", "4"]
    assert run(*argv) == 0


def test_an_imported_template_that_runs_away_later_falls_back_at_run_time(
    tiny_hf, tmp_path, capsys, caplog
):
    import logging

    from .helpers import BOOM

    file = gguf_with_template(tiny_hf, tmp_path, BOOM)  # fine until a message says "boom"
    assert run("models", "import", str(file)) == 0
    assert "chat template was refused" not in capsys.readouterr().out
    argv = ["generate", "--model", "qwen3-1m-tiny-2507-mlx-f16", "-n", "4", "--prompt"]
    with caplog.at_level(logging.WARNING, logger="qwen_mlx.convert.template"):
        assert run(*argv, "boom") == 0
    assert "The chat template of qwen3-1m-tiny-2507-mlx-f16 was stopped" in caplog.text


@needs_shared
@pytest.mark.interop  # about a minute of CPU: 151,669 tokens and 151,387 merges each way
def test_the_real_qwen3_tokenizer_survives_export_and_import(tmp_path, capsys, monkeypatch):
    """Qwen3-4B-Instruct-2507's own tokenizer (151,669 tokens, its template) on a tiny model:
    the GGUF says `qwen2`, and the imported tokenizer encodes as the original does."""
    from tokenizers import Tokenizer

    from qwen_mlx.convert import convert

    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    hf = build_tiny_checkpoint(
        tmp_path / "Qwen3-10M-Realtok-2507", TinyConfig(), tokenizer_from=SHARED_MODEL
    )
    convert(str(hf))
    name = "qwen3-10m-realtok-2507-mlx-q4-g64"
    assert run("models", "export", name, "--quant", "q8_0") == 0
    file = tmp_path / "home/models/qwen3-10m-realtok/2507/gguf-q8_0/"
    file = file / "qwen3-10m-realtok-2507-gguf-q8_0.gguf"
    _, meta = reader(file)
    assert meta["tokenizer.ggml.pre"] == "qwen2"
    assert len(meta["tokenizer.ggml.merges"]) == 151387
    assert run("models", "import", str(file)) == 0
    assert "Imported qwen3-10m-realtok-2507-mlx-q8-g32" in capsys.readouterr().out
    folder = tmp_path / "home/models/qwen3-10m-realtok/2507/mlx-q8-g32"
    ours = Tokenizer.from_file(str(folder / "tokenizer.json"))
    theirs = Tokenizer.from_file(str(SHARED_MODEL / "tokenizer.json"))
    text = (
        "<|im_start|>user\nWie spät ist es in Zürich? 東京は今何時ですか 🙂\n"
        '<tool_call>{"name": "time", "arguments": {"tz": "Europe/Zurich"}}</tool_call>'
        "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n   x = 12345\t\n"
    )
    assert ours.encode(text).ids == theirs.encode(text).ids
    config = json.loads((folder / "tokenizer_config.json").read_text())
    original = json.loads((SHARED_MODEL / "tokenizer_config.json").read_text())
    assert config["chat_template"] == original["chat_template"]


def test_an_output_ending_in_gguf_is_the_file(store, tmp_path, capsys):
    target = tmp_path / "exports" / "m.gguf"
    assert run("models", "export", NAME, "--quant", "q8_0", "--output", str(target)) == 0
    assert target.is_file()  # the file itself, not a folder named m.gguf
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf"]  # nothing beside it
    assert f"to {target}" in capsys.readouterr().out
    r, _ = reader(target)
    assert r.fields["general.architecture"].contents() == "qwen3"
    assert run("models", "export", NAME, "--quant", "q8_0", "--output", str(target)) == 1
    assert "already exists; pass --force" in capsys.readouterr().err
    argv = ["--quant", "q4_0", "--output", str(target), "--force"]
    assert run("models", "export", NAME, *argv) == 0
    assert sorted(p.name for p in target.parent.iterdir()) == ["m.gguf"]
    assert run("models", "export", NAME, "--format", "ollama", "--output", str(target)) == 1
    assert "give --output a folder, not a .gguf file" in capsys.readouterr().err


def test_a_name_read_from_a_file_never_takes_over_a_family(tiny_hf, home, tmp_path, capsys):
    from qwen_mlx.store import Store

    def latest(family: str) -> str:
        return str(Store().latest(family))

    # A file whose metadata calls it the official qwen3-4b-instruct-2507: 140K parameters.
    assert run("convert", "--hf-path", str(tiny_hf), "--name", "qwen3-4b-instruct-2507") == 0
    official = latest("qwen3-4b-instruct")
    claims = tmp_path / "claims.gguf"
    argv = ["--quant", "f16", "--output", str(claims)]
    assert run("models", "export", "qwen3-4b-instruct", *argv) == 0
    capsys.readouterr()
    assert run("models", "import", str(claims)) == 0
    out = capsys.readouterr().out
    assert re.search(r"Imported qwen3-140k-instruct-2507-mlx-f16 \(1[34]\dK parameters", out)
    assert re.search(r"calls itself qwen3-4b-instruct-2507-mlx-f16, but it has 1[34]\dK", out)
    assert latest("qwen3-4b-instruct") == official

    # Its size fits, and it is a newer release in the latest's format: still not the latest.
    assert run("convert", "--hf-path", str(tiny_hf), "--name", "qwen3-140k-tiny-2510") == 0
    newer = tmp_path / "newer.gguf"
    assert run("models", "export", "qwen3-140k-tiny", "--quant", "f16", "--output", str(newer)) == 0
    assert run("models", "rm", "qwen3-140k-tiny", "--force") == 0
    argv = ["--name", "qwen3-140k-tiny-2507", "--no-quantize", "--dtype", "float16"]
    assert run("convert", "--hf-path", str(tiny_hf), *argv) == 0
    capsys.readouterr()
    assert run("models", "import", str(newer)) == 0
    out = capsys.readouterr().out
    assert "Imported qwen3-140k-tiny-2510-mlx-f16" in out
    assert "qwen3-140k-tiny already has a latest (qwen3-140k-tiny-2507-mlx-f16)" in out
    assert "`qwen-mlx models set-latest qwen3-140k-tiny-2510-mlx-f16` switches" in out
    assert latest("qwen3-140k-tiny") == "qwen3-140k-tiny-2507-mlx-f16"
    # --name is the user's word: it follows the usual rule (a newer release becomes latest).
    argv = ["--name", "qwen3-140k-tiny-2511", "--force"]
    assert run("models", "import", str(newer), *argv) == 0
    assert latest("qwen3-140k-tiny") == "qwen3-140k-tiny-2511-mlx-f16"
