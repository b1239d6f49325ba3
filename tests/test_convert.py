"""`qwen-mlx convert`: HF -> MLX into the store, atomically, with a manifest; bad input is
rejected with a clear message before any heavy work and leaves nothing behind."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from qwen_mlx.cli.convert import main
from qwen_mlx.convert import Progress, convert
from qwen_mlx.errors import InsufficientDiskError, OutputExistsError
from qwen_mlx.fileio import sha256_file
from qwen_mlx.store import Store
from qwen_mlx.store.manifest import read_manifest

from .helpers import TRAINED_TARGET, child_env, needs_trained

STORE_DIR = "models/qwen3-1m-tiny/2507/mlx-q4-g64"


def leftovers(root: Path) -> list[str]:
    """Anything under root that is not a finished model folder (partials, temp files)."""
    if not root.exists():
        return []
    return sorted(
        p.name for p in root.rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")
    )


def test_cli_converts_into_the_store_and_makes_it_latest(tiny_hf, home, capsys):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    out = capsys.readouterr().out
    assert "Converted qwen3-1m-tiny-2507-mlx-q4-g64" in out
    assert "now the latest" in out
    folder = home / STORE_DIR
    assert (folder / "model.safetensors").is_file()
    assert (home / "models/qwen3-1m-tiny/latest").read_text().strip() == "2507/mlx-q4-g64"
    assert [m.name for m in Store(home).list()] == ["qwen3-1m-tiny-2507-mlx-q4-g64"]


def test_manifest_records_source_outputs_and_tools(tiny_hf, home):
    result = convert(str(tiny_hf))
    m = read_manifest(result.path)
    assert m.name == "qwen3-1m-tiny-2507-mlx-q4-g64"
    assert (m.family, m.variant, m.release) == ("qwen3-1m-tiny", "tiny", "2507")
    assert m.context_length == 32768
    assert m.parameters == result.manifest.parameters > 0
    assert (m.quantization.bits, m.quantization.group_size, m.quantization.mode) == (
        4,
        64,
        "affine",
    )
    assert m.source.path == str(tiny_hf) and m.source.repo is None
    assert m.source.files["model.safetensors"] == sha256_file(tiny_hf / "model.safetensors")
    assert m.source.files["tokenizer.json"] == sha256_file(tiny_hf / "tokenizer.json")
    listed = {f.path: f for f in m.files}
    assert set(listed) == {p.name for p in result.path.iterdir()} - {"manifest.json"}
    for f in m.files:
        assert f.size == (result.path / f.path).stat().st_size
        assert f.sha256 == sha256_file(result.path / f.path)
    assert {"mlx", "mlx-lm", "python"} <= set(m.tools)
    assert m.created_at.endswith("+00:00")


def test_bits_per_weight_counts_scales_and_biases(tiny_hf, tmp_path):
    # Per group of 64 weights: bits x 64 plus a bf16 scale and bias (32 bits) -> +0.5 bit.
    for bits in (4, 8):
        result = convert(str(tiny_hf), mlx_path=tmp_path / f"q{bits}", q_bits=bits)
        bpw = result.manifest.quantization.bits_per_weight
        assert bits + 0.5 <= bpw < bits + 0.6  # norms stay bf16: a little over
    plain = convert(str(tiny_hf), mlx_path=tmp_path / "bf16", quantize=False)
    assert plain.manifest.quantization.bits_per_weight == 16.0
    assert plain.manifest.name == "qwen3-1m-tiny-2507-mlx-bf16"


def test_untied_sharded_checkpoint_converts_with_its_lm_head(tiny_hf_untied, tmp_path):
    import mlx.core as mx

    result = convert(str(tiny_hf_untied), mlx_path=tmp_path / "out", q_bits=8)
    weights = mx.load(str(result.path / "model.safetensors"))
    assert "lm_head.scales" in weights
    assert result.manifest.source.files.keys() >= {
        "model-00001-of-00003.safetensors",
        "model.safetensors.index.json",
    }


def test_tied_checkpoint_has_no_separate_lm_head(tiny_hf, tmp_path):
    import mlx.core as mx

    result = convert(str(tiny_hf), mlx_path=tmp_path / "out")
    weights = mx.load(str(result.path / "model.safetensors"))
    assert not any(k.startswith("lm_head") for k in weights)


def test_unquantized_copy_uses_the_requested_dtype(tiny_hf, tmp_path):
    import mlx.core as mx

    result = convert(str(tiny_hf), mlx_path=tmp_path / "f16", quantize=False, dtype="float16")
    weights = mx.load(str(result.path / "model.safetensors"))
    assert {w.dtype for w in weights.values()} == {mx.float16}
    assert "quantization" not in json.loads((result.path / "config.json").read_text())


def test_existing_output_needs_force(tiny_hf, home, capsys):
    assert main(["--hf-path", str(tiny_hf)]) == 0
    before = sha256_file(home / STORE_DIR / "manifest.json")
    assert main(["--hf-path", str(tiny_hf)]) == 1
    assert "already exists" in capsys.readouterr().err
    assert sha256_file(home / STORE_DIR / "manifest.json") == before
    assert main(["--hf-path", str(tiny_hf), "--force"]) == 0
    assert leftovers(home) == []


def test_a_model_of_the_same_name_finished_first_is_kept(tiny_hf, home, capsys, monkeypatch):
    # Two conversions of the same name at once: both pass the up-front check; the one
    # that finishes second must say so and leave the first one's model alone.
    assert main(["--hf-path", str(tiny_hf)]) == 0
    before = sha256_file(home / STORE_DIR / "manifest.json")
    monkeypatch.setattr("qwen_mlx.convert.pipeline._check_output", lambda final, force: None)
    assert main(["--hf-path", str(tiny_hf)]) == 1
    err = capsys.readouterr().err
    assert "appeared while this one was being written" in err and "--force" in err
    assert sha256_file(home / STORE_DIR / "manifest.json") == before
    assert leftovers(home) == []


def test_a_model_appearing_at_the_last_moment_is_kept(tiny_hf, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_replace = os.replace

    def racing_replace(src, dst):  # another process renames its model in just before us
        if Path(dst) == out and not out.exists():
            out.mkdir()
            (out / "config.json").write_text("{}")
        return real_replace(src, dst)

    monkeypatch.setattr("qwen_mlx.store.staging.os.replace", racing_replace)
    with pytest.raises(OutputExistsError, match="appeared while"):
        convert(str(tiny_hf), mlx_path=out)
    assert [p.name for p in out.iterdir()] == ["config.json"]
    assert leftovers(tmp_path) == []


def test_force_never_replaces_a_folder_that_is_not_a_model(tiny_hf, tmp_path, capsys):
    documents = tmp_path / "Documents"
    documents.mkdir()
    (documents / "thesis.txt").write_text("years of work")
    code = main(["--hf-path", str(tiny_hf), "--mlx-path", str(documents), "--force"])
    assert code == 1
    assert "not a model folder" in capsys.readouterr().err
    assert (documents / "thesis.txt").read_text() == "years of work"


def test_a_failed_swap_puts_the_previous_model_back(tiny_hf, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first = convert(str(tiny_hf), mlx_path=out)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst) == out and ".partial-" in Path(src).name:
            raise OSError(errno.EIO, "I/O error", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr("qwen_mlx.store.staging.os.replace", failing_replace)
    with pytest.raises(OSError, match="I/O error"):
        convert(str(tiny_hf), mlx_path=out, q_bits=8, force=True)
    assert read_manifest(out) == first.manifest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_mixed_recipe_writes_per_layer_settings(tiny_hf, tmp_path):
    result = convert(str(tiny_hf), mlx_path=tmp_path / "mixed", recipe="mixed_4_6")
    quant = json.loads((result.path / "config.json").read_text())["quantization"]
    assert quant["bits"] == 4
    per_layer = {k: v["bits"] for k, v in quant.items() if isinstance(v, dict)}
    assert set(per_layer.values()) == {4, 6}
    assert result.manifest.name.endswith("-mlx-mixed_4_6-g64")


# -- bad input: a clear error, a non-zero exit, nothing left behind ----------------------


def run_bad(args, capsys, home) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert not (home / "models").exists() or leftovers(home) == []
    assert not (home / STORE_DIR).exists()
    return err


def test_missing_config_is_named(hf_copy, capsys, home):
    (hf_copy / "config.json").unlink()
    assert "has no config.json" in run_bad(["--hf-path", str(hf_copy)], capsys, home)


def test_unsupported_model_type_lists_the_supported_ones(hf_copy, capsys, home):
    config = json.loads((hf_copy / "config.json").read_text())
    config["model_type"] = "llama"
    (hf_copy / "config.json").write_text(json.dumps(config))
    err = run_bad(["--hf-path", str(hf_copy)], capsys, home)
    assert "'llama'" in err and "supported model types: qwen3" in err


def test_missing_shard_is_named(tiny_hf_untied, tmp_path, capsys, home):
    src = tmp_path / tiny_hf_untied.name
    shutil.copytree(tiny_hf_untied, src)
    (src / "model-00002-of-00003.safetensors").unlink()
    err = run_bad(["--hf-path", str(src)], capsys, home)
    assert "model-00002-of-00003.safetensors" in err and "missing" in err


def test_truncated_safetensors_is_named(hf_copy, capsys, home):
    weights = hf_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) - 100])
    err = run_bad(["--hf-path", str(hf_copy)], capsys, home)
    assert "model.safetensors is truncated or corrupt" in err


def test_garbage_safetensors_is_named(hf_copy, capsys, home):
    (hf_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    assert "truncated or corrupt" in run_bad(["--hf-path", str(hf_copy)], capsys, home)


def test_missing_tokenizer_is_named(hf_copy, capsys, home):
    (hf_copy / "tokenizer.json").unlink()
    err = run_bad(["--hf-path", str(hf_copy)], capsys, home)
    assert "missing tokenizer files: tokenizer.json" in err


def test_missing_tensor_is_named(hf_copy, capsys, home):
    import mlx.core as mx

    weights = mx.load(str(hf_copy / "model.safetensors"))
    del weights["model.layers.1.mlp.up_proj.weight"]
    mx.save_safetensors(str(hf_copy / "model.safetensors"), weights)
    assert "model.layers.1.mlp.up_proj.weight" in run_bad(["--hf-path", str(hf_copy)], capsys, home)


def test_not_enough_disk_is_refused_up_front(tiny_hf, home, monkeypatch):
    import qwen_mlx.convert.pipeline as conv

    def tiny_disk(path):
        return shutil._ntuple_diskusage(10**9, 10**9 - 1000, 1000)

    monkeypatch.setattr(conv.shutil, "disk_usage", tiny_disk)
    called = []
    monkeypatch.setattr(conv, "write_weights", lambda *a, **k: called.append(1))
    with pytest.raises(InsufficientDiskError, match="needs about"):
        convert(str(tiny_hf))
    assert called == []
    assert not (home / STORE_DIR).exists()


def test_the_request_holds_every_keyword_of_convert_with_its_default():
    # `convert` hands its keywords to the steps as one ConvertRequest: none may be dropped.
    import dataclasses
    import inspect

    from qwen_mlx.convert.pipeline import ConvertRequest

    keywords = [p for p in inspect.signature(convert).parameters.values() if p.name != "progress"]
    request = ConvertRequest("x")
    assert [p.name for p in keywords] == [f.name for f in dataclasses.fields(ConvertRequest)]
    for p in keywords[1:]:
        assert getattr(request, p.name) == p.default, p.name


def test_bad_option_values_are_rejected(tiny_hf, capsys):
    with pytest.raises(SystemExit):
        main(["--hf-path", str(tiny_hf), "--q-bits", "7"])
    with pytest.raises(ValueError, match="q-group-size"):
        convert(str(tiny_hf), q_group_size=48)


def test_unknown_repo_offline_is_a_clear_hub_error(capsys):
    assert main(["--hf-path", "Qwen/Qwen3-4B-Instruct-2507"]) == 3
    err = capsys.readouterr().err
    assert "offline mode is on" in err and "not in the local Hugging Face cache" in err


def test_neither_folder_nor_repo(capsys):
    assert main(["--hf-path", "./no/such/folder"]) == 1
    assert "neither an existing folder nor" in capsys.readouterr().err


# -- atomicity ----------------------------------------------------------------------------


def test_ctrl_c_mid_conversion_leaves_nothing(tiny_hf, home):
    def interrupt(p: Progress) -> None:
        if p.stage == "convert" and p.done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny_hf), progress=interrupt)
    assert not (home / STORE_DIR).exists()
    assert leftovers(home) == []


def test_disk_full_while_writing_leaves_nothing(tiny_hf, home, monkeypatch):
    from qwen_mlx.convert import tensorfile

    written = []

    def emit(self, data):
        written.append(len(data))
        if len(written) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        self._file.write(data)

    monkeypatch.setattr(tensorfile.TensorFileWriter, "_emit", emit)
    with pytest.raises(InsufficientDiskError, match="filled up"):
        convert(str(tiny_hf))
    assert not (home / STORE_DIR).exists()
    assert leftovers(home) == []


def test_failure_while_replacing_keeps_the_old_model(tiny_hf, home, monkeypatch):
    first = convert(str(tiny_hf))
    before = sha256_file(first.path / "manifest.json")
    import qwen_mlx.convert.pipeline as conv

    monkeypatch.setattr(
        conv, "write_config", lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    with pytest.raises(RuntimeError):
        convert(str(tiny_hf), force=True)
    assert sha256_file(first.path / "manifest.json") == before
    assert leftovers(home) == []


def test_leftovers_of_a_killed_conversion_are_cleaned(tiny_hf, home):
    parent = home / "models/qwen3-1m-tiny/2507"
    parent.mkdir(parents=True)
    dead = parent / ".mlx-q4-g64.partial-999999999-abcd1234"
    dead.mkdir()
    (dead / "model.safetensors").write_bytes(b"half")
    convert(str(tiny_hf))
    assert not dead.exists()


def test_python_dash_m_entry_point(tiny_hf, tmp_path, home):
    out = tmp_path / "via-m"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "qwen_mlx.convert",
            "--hf-path",
            str(tiny_hf),
            "--mlx-path",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "manifest.json").is_file()


# -- float types (as mlx-lm keeps them) ---------------------------------------------------


def _retag_dtype(folder: Path, key: str) -> None:
    """Write the config's float type under `key`: transformers 5 says `dtype`, older ones
    `torch_dtype` (the only one mlx-lm reads)."""
    config = json.loads((folder / "config.json").read_text())
    config[key] = config.pop("torch_dtype")
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def tiny_hf_f32(tmp_path_factory) -> Path:
    """A float32 checkpoint (a full-precision fine-tune) with a transformers 5 config."""
    from qwen_mlx.convert.tiny import build_tiny_checkpoint

    folder = build_tiny_checkpoint(
        tmp_path_factory.mktemp("f32") / "Qwen3-1M-Full-2507", seed=3, dtype="float32"
    )
    _retag_dtype(folder, "dtype")
    return folder


def _weights(folder: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(folder / "model.safetensors"))


@pytest.mark.parametrize("fixture", ["tiny_hf", "tiny_hf_f32"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_weights_are_bit_identical_to_mlx_lm(request, fixture, bits, tmp_path):
    import mlx.core as mx
    from mlx_lm.convert import convert as mlx_lm_convert

    source = request.getfixturevalue(fixture)
    ours = _weights(convert(str(source), mlx_path=tmp_path / "ours", q_bits=bits).path)
    mlx_lm_convert(
        str(source), mlx_path=str(tmp_path / "theirs"), quantize=True, q_bits=bits, q_group_size=64
    )
    theirs = _weights(tmp_path / "theirs")
    assert ours.keys() == theirs.keys()
    for key, array in ours.items():
        assert array.dtype == theirs[key].dtype, key
        assert mx.array_equal(array, theirs[key]).item(), key


def test_a_float32_checkpoint_keeps_float32_scales_and_norms(tiny_hf_f32, tmp_path):
    import mlx.core as mx

    result = convert(str(tiny_hf_f32), mlx_path=tmp_path / "q8", q_bits=8)
    weights = _weights(result.path)
    assert weights["model.norm.weight"].dtype == mx.float32
    assert weights["model.layers.0.mlp.up_proj.scales"].dtype == mx.float32
    assert result.manifest.quantization.dtype == "float32"
    plain = convert(str(tiny_hf_f32), mlx_path=tmp_path / "plain", quantize=False)
    assert plain.manifest.name.endswith("-mlx-f32")
    assert plain.manifest.quantization.bits_per_weight == 32.0


def test_dtype_or_an_older_configs_torch_dtype_casts_every_float(tiny_hf_f32, tmp_path):
    import mlx.core as mx

    asked = convert(str(tiny_hf_f32), mlx_path=tmp_path / "asked", q_bits=8, dtype="bfloat16")
    assert {str(w.dtype) for w in _weights(asked.path).values()} == {
        "mlx.core.uint32",
        "mlx.core.bfloat16",
    }
    older = tmp_path / "Qwen3-1M-Full-2507"
    shutil.copytree(tiny_hf_f32, older)
    config = json.loads((older / "config.json").read_text())
    config["torch_dtype"] = "float16"  # what mlx-lm casts to, whatever the tensors hold
    (older / "config.json").write_text(json.dumps(config))
    cast = convert(str(older), mlx_path=tmp_path / "cast", q_bits=8)
    assert _weights(cast.path)["model.norm.weight"].dtype == mx.float16
    assert cast.manifest.quantization.dtype == "float16"


@needs_trained
def test_a_float32_finetune_at_8_bits_agrees_with_its_source_as_often_as_mlx_lm(tmp_path):
    # A trained model, so that agreement on the greedy token means something; cast to
    # float32 as a full-precision fine-tune is, with a transformers 5 config.
    import mlx.core as mx
    from mlx_lm.convert import convert as mlx_lm_convert
    from mlx_lm.tokenizer_utils import load as load_tokenizer
    from mlx_lm.utils import load_model

    from qwen_mlx.convert.quality import calibration_text

    source = tmp_path / "target"
    shutil.copytree(TRAINED_TARGET, source)
    weights = mx.load(str(TRAINED_TARGET / "model.safetensors"))
    mx.save_safetensors(
        str(source / "model.safetensors"),
        {k: v.astype(mx.float32) for k, v in weights.items()},
        metadata={"format": "pt"},
    )
    config = json.loads((source / "config.json").read_text())
    config["dtype"] = "float32"
    (source / "config.json").write_text(json.dumps(config))
    convert(str(source), mlx_path=tmp_path / "ours", q_bits=8)
    mlx_lm_convert(
        str(source), mlx_path=str(tmp_path / "theirs"), quantize=True, q_bits=8, q_group_size=64
    )
    tokens = load_tokenizer(source).encode(calibration_text(), add_special_tokens=False)

    def greedy(folder: Path) -> mx.array:
        model, _ = load_model(folder)
        return mx.argmax(model(mx.array(tokens)[None])[0], axis=-1)

    expected = greedy(source)
    ours = mx.mean(greedy(tmp_path / "ours") == expected).item()
    theirs = mx.mean(greedy(tmp_path / "theirs") == expected).item()
    assert len(tokens) > 300 and theirs > 0.9
    assert abs(ours - theirs) <= 0.01


# -- layers the group size does not fit ---------------------------------------------------


def _odd(tmp_path: Path, name: str, **sizes) -> Path:
    from qwen_mlx.convert.tiny import TinyConfig, build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path / name, TinyConfig(**sizes))


def test_a_hidden_size_64_does_not_divide_is_quantized_with_group_size_32(tmp_path, capsys):
    from qwen_mlx import generate, load

    src = _odd(tmp_path, "Qwen3-1M-Odd-2507", hidden_size=96, intermediate_size=192)
    out = tmp_path / "out"
    assert main(["--hf-path", str(src), "--mlx-path", str(out)]) == 0
    stdout, stderr = capsys.readouterr()
    assert "warning: --q-group-size 64 does not divide the input size of every layer (96)" in stderr
    m = read_manifest(out)
    assert m.name == "qwen3-1m-odd-2507-mlx-q4-g32"
    assert (m.quantization.bits, m.quantization.group_size) == (4, 32)
    assert 5.0 <= m.quantization.bits_per_weight < 5.2  # a bf16 scale and bias per 32
    assert "4-bit g32" in stdout
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"]["group_size"] == 32
    assert generate(load(out), [{"role": "user", "content": "Hi"}], max_tokens=3, temperature=0)


def test_layers_no_group_size_fits_stay_unquantized_and_are_named(tmp_path):
    import mlx.core as mx

    src = _odd(tmp_path, "Qwen3-1M-Odd-2507", hidden_size=80, intermediate_size=128)
    result = convert(str(src), mlx_path=tmp_path / "out")
    [warning] = result.warnings
    assert "11 of 15 layers stay unquantized" in warning and "(80)" in warning
    assert "model.layers.*.self_attn.q_proj" in warning and "model.embed_tokens" in warning
    weights = _weights(result.path)
    assert "model.layers.0.mlp.down_proj.scales" in weights  # 128 inputs: quantized
    assert weights["model.layers.0.mlp.up_proj.weight"].dtype == mx.bfloat16
    q = result.manifest.quantization
    assert result.manifest.name.endswith("-mlx-q4-g64") and q.group_size == 64
    assert 4.5 < q.bits_per_weight < 16  # what was written, neither 4.5 nor 16


def test_a_model_no_layer_can_be_quantized_in_is_named_unquantized(tmp_path, capsys):
    src = _odd(tmp_path, "Qwen3-1M-Odd-2507", hidden_size=80, head_dim=20, intermediate_size=200)
    out = tmp_path / "out"
    assert main(["--hf-path", str(src), "--mlx-path", str(out)]) == 0
    assert "warning: No layer can be quantized" in capsys.readouterr().err
    m = read_manifest(out)
    assert m.name == "qwen3-1m-odd-2507-mlx-bf16"
    assert m.quantization.bits is None and m.quantization.bits_per_weight == 16.0
    assert "quantization" not in json.loads((out / "config.json").read_text())


def test_quantizing_without_metal_says_4bit_prefill_is_slow_and_suggests_no_quantize(
    tiny_hf, tmp_path, capsys, monkeypatch
):
    slow = "qwen_mlx.convert.quantized_prefill_is_slow"
    monkeypatch.setattr(slow, lambda: True)  # Linux
    assert main(["--hf-path", str(tiny_hf), "--mlx-path", str(tmp_path / "q4")]) == 0
    err = capsys.readouterr().err
    assert "30x slower" in err and "--no-quantize" in err
    out = ["--mlx-path", str(tmp_path / "bf16"), "--no-quantize"]
    assert main(["--hf-path", str(tiny_hf), *out]) == 0
    assert "30x slower" not in capsys.readouterr().err
    monkeypatch.setattr(slow, lambda: False)  # Metal
    assert main(["--hf-path", str(tiny_hf), "--mlx-path", str(tmp_path / "mac")]) == 0
    assert "30x slower" not in capsys.readouterr().err


def test_a_conversion_to_mlx_path_says_it_is_not_in_the_store_and_how_to_add_it(
    tiny_hf, tmp_path, home, capsys
):
    from qwen_mlx.cli.models import main as models_main

    out = tmp_path / "my out"
    assert main(["--hf-path", str(tiny_hf), "--mlx-path", str(out)]) == 0
    said = capsys.readouterr().out
    assert "not in the store" in said
    assert f"`qwen-mlx models import '{out}'`" in said
    assert models_main(["import", str(out)]) == 0  # what it says works
    assert "Imported qwen3-1m-tiny-2507-mlx-q4-g64" in capsys.readouterr().out


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_without_a_terminal_is_a_few_lines_that_say_something(
    tiny_hf, home, capsys, monkeypatch
):
    from qwen_mlx.cli.models import main as models_main

    monkeypatch.chdir(tiny_hf.parent)
    assert main(["--hf-path", f"./{tiny_hf.name}", "--report"]) == 0
    printed = capsys.readouterr()
    err = printed.err.splitlines()
    assert "download: ./" + tiny_hf.name not in err  # a local folder downloads nothing
    assert f"validate: {tiny_hf}" in err
    assert not [line for line in err if "model.layers" in line or ".partial" in line]
    converts = [line for line in err if line.startswith("convert")]
    assert len(converts) == 1 and re.fullmatch(r"convert: [\d.]+ KB", converts[0])  # its size
    assert "quality: the held-out text, through both models" in err
    assert len(err) <= 8, err
    # convert's summary and `models show` count the same report's tokens in the same words
    said = re.search(r"\((\d+) held-out tokens of", printed.out)
    assert said, "convert's summary names the held-out tokens"
    assert models_main(["show", "qwen3-1m-tiny"]) == 0
    assert f"{said.group(1)} held-out tokens" in capsys.readouterr().out
    assert main(["--hf-path", f"./{tiny_hf.name}", "--q-bits", "8"]) == 0
    capsys.readouterr()
    assert models_main(["verify"]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[0] for line in err] == ["verify", "verify"]  # one per version
    assert not [line for line in err if ".json" in line or ".jinja" in line]


def test_the_convert_bar_on_a_terminal_ends_at_100_percent(tiny_hf, home, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["--hf-path", str(tiny_hf)]) == 0
    drawn = [line for line in terminal.getvalue().split("\r") if line.startswith("convert ")]
    assert drawn and "100.0%" in drawn[-1]  # a quick conversion is throttled, not cut short
