"""Quantization modes, learned methods and `models compare`, through the CLI on a tiny
model: what each writes, what the manifest records, and the errors for what cannot work."""

from __future__ import annotations

import contextlib
import io
import json
from importlib import resources
from pathlib import Path

import pytest

from qwen_mlx.cli import main
from qwen_mlx.fileio import sha256_file
from qwen_mlx.store.manifest import read_manifest

from .helpers import run_script

PACKAGED = resources.files("qwen_mlx.data")


def leftovers(root: Path) -> list[str]:
    if not root.exists():
        return []
    return sorted(
        p.name for p in root.rglob("*") if ".partial-" in p.name or p.name.endswith(".tmp")
    )


def _weights(folder: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(folder / "model.safetensors"))


@pytest.mark.parametrize(
    ("mode", "bits", "group"), [("mxfp4", 4, 32), ("nvfp4", 4, 16), ("mxfp8", 8, 32)]
)
def test_q_mode_writes_that_format_and_the_model_loads(tiny_hf, tmp_path, mode, bits, group):
    import mlx.core as mx

    from qwen_mlx import load

    out = tmp_path / mode
    assert (
        main(["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--q-mode", mode]) == 0
    )
    q = read_manifest(out).quantization
    assert (q.mode, q.bits, q.group_size, q.method) == (mode, bits, group, None)
    config = json.loads((out / "config.json").read_text())["quantization"]
    assert (config["mode"], config["bits"], config["group_size"]) == (mode, bits, group)
    weights = _weights(out)
    name = "model.layers.0.mlp.down_proj"
    assert str(weights[f"{name}.scales"].dtype) == "mlx.core.uint8"
    assert f"{name}.biases" not in weights  # the MX and NV formats have none
    model = load(out)
    logits = model.model(mx.array([[1, 2, 3]]))
    assert logits.shape[-1] == model.config["vocab_size"]
    assert bool(mx.all(mx.isfinite(logits)))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--q-mode", "mxfp4", "--q-bits", "3"], "--q-mode mxfp4 stores 4 bits per weight, not 3."),
        (["--q-mode", "nvfp4", "--q-group-size", "32"], "--q-mode nvfp4 uses a group size of 16"),
        (["--q-group-size", "16"], "--q-mode affine uses a group size of 32 or 64 or 128"),
        (["--method", "awq", "--q-mode", "mxfp4"], "--method awq works with --q-mode affine only"),
        (["--method", "gptq", "--q-bits", "3"], "--method gptq quantizes to 2, 4, 8 bits"),
        (["--target-bpw", "4.6"], "add --method dynamic"),
        (["--calibration", "x.txt"], "--calibration is the text a learned method calibrates on"),
        (["--method", "dynamic", "--target-bpw", "9"], "outside what 6- and 8-bit layers"),
        (["--method", "dwq", "--recipe", "mixed_4_6"], "--recipe is a mix of affine"),
    ],
)
def test_flags_that_cannot_work_are_refused_before_any_work(
    tiny_hf, home, tmp_path, capsys, flags, message
):
    out = tmp_path / "out"
    assert main(["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), *flags]) == 1
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")
    assert not out.exists() and not leftovers(tmp_path)


@pytest.fixture(scope="module")
def learned(tiny_hf, tmp_path_factory):
    """The tiny model converted by each method through the CLI, into one store: GPTQ on
    the packaged calibration text, the slower methods on a short file of it (fast)."""
    import os

    home = tmp_path_factory.mktemp("quant_home")
    short = home.parent / "short.txt"
    short.write_text(PACKAGED.joinpath("quant_calibration.txt").read_text()[:2000])
    saved = os.environ.get("QWEN_MLX_HOME")
    os.environ["QWEN_MLX_HOME"] = str(home)
    runs = {
        "gptq": ["--method", "gptq"],
        "awq": ["--method", "awq", "--calibration", str(short)],
        "dwq": ["--method", "dwq", "--calibration", str(short)],
        "dynamic": ["--method", "dynamic", "--target-bpw", "5.0", "--calibration", str(short)],
        "dynamic-gptq": [
            "--method",
            "dynamic-gptq",
            "--target-bpw",
            "5.0",
            "--calibration",
            str(short),
        ],
        "rtn": ["--report"],
    }
    codes, errors = {}, {}
    from qwen_mlx.convert import quant

    fewer = pytest.MonkeyPatch()
    fewer.setattr(quant, "MAX_WINDOWS", 16)  # GPTQ reads 16 of the packaged text's windows
    try:
        for method, flags in runs.items():
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                codes[method] = main(["convert", "--hf-path", str(tiny_hf), *flags])
            errors[method] = err.getvalue()
    finally:
        fewer.undo()
        if saved is None:
            os.environ.pop("QWEN_MLX_HOME", None)
        else:
            os.environ["QWEN_MLX_HOME"] = saved
    return home, codes, errors, sha256_file(short)


@pytest.mark.parametrize("method", ["gptq", "awq", "dwq", "dynamic", "dynamic-gptq"])
def test_method_records_itself_its_calibration_and_a_held_out_report(learned, method):
    home, codes, errors, short_sha = learned
    assert codes[method] == 0, errors[method][-2000:]
    tag = f"q4-g64-{method}5" if method.startswith("dynamic") else f"q4-g64-{method}"
    m = read_manifest(home / "models/qwen3-1m-tiny/2507" / f"mlx-{tag}")
    q = m.quantization
    assert (q.method, q.mode, q.bits, q.group_size) == (method, "affine", 4, 64)
    if method == "gptq":
        packaged = sha256_file(Path(str(PACKAGED.joinpath("quant_calibration.txt"))))
        assert (q.calibration.source, q.calibration.sha256) == ("packaged", packaged)
    else:
        assert (q.calibration.source, q.calibration.sha256) == ("short.txt", short_sha)
    assert q.calibration.samples >= 4 and q.calibration.tokens > 0
    r = m.quality
    assert r is not None and r.verdict == "ok" and r.text == "packaged"
    assert r.text_sha256 == sha256_file(Path(str(PACKAGED.joinpath("calibration.txt"))))
    assert r.text_sha256 != q.calibration.sha256  # held out: not what it calibrated on
    assert 0 <= r.kl_divergence < 1 and 0 < r.top1_agreement <= 1


@pytest.mark.parametrize("method", ["dynamic", "dynamic-gptq"])
def test_dynamic_gives_sensitive_layers_more_bits_within_the_target(learned, method):
    home, _, _, _ = learned
    folder = home / f"models/qwen3-1m-tiny/2507/mlx-q4-g64-{method}5"
    q = read_manifest(folder).quantization
    assert q.target_bpw == 5.0
    assert q.layers and {v["bits"] for v in q.layers.values()} == {5}
    assert 4.5 < q.bits_per_weight <= 5.05
    config = json.loads((folder / "config.json").read_text())["quantization"]
    assert all(config[path]["bits"] == 5 for path in q.layers)


def test_calibration_jsonl_is_read_and_its_digest_recorded(tiny_hf, tmp_path, capsys):
    text = PACKAGED.joinpath("quant_calibration.txt").read_text()
    half = len(text) // 2
    file = tmp_path / "calib.jsonl"
    records = [
        {"text": text[:half]},
        {
            "messages": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": text[half:]},
            ]
        },
        {"prompt": "Q: two plus two?", "completion": " A: four."},
    ]
    file.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--method", "gptq"]
    assert main([*args, "--calibration", str(file)]) == 0
    assert "held-out tokens" in capsys.readouterr().out
    cal = read_manifest(out).quantization.calibration
    assert (cal.source, cal.sha256) == ("calib.jsonl", sha256_file(file))


def test_a_broken_calibration_file_is_named_with_its_line(tiny_hf, tmp_path, capsys):
    file = tmp_path / "bad.jsonl"
    file.write_text('{"text": "fine"}\n{"nope": 1}\n')
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--method", "gptq"]
    assert main([*args, "--calibration", str(file)]) == 1
    assert 'bad.jsonl line 2 has no "text"' in capsys.readouterr().err
    assert not out.exists()


def test_the_held_out_text_may_not_be_the_calibration_text(tiny_hf, tmp_path, capsys):
    file = tmp_path / "same.txt"
    file.write_text(PACKAGED.joinpath("quant_calibration.txt").read_text())
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--method", "awq"]
    assert main([*args, "--calibration", str(file), "--heldout", str(file)]) == 1
    assert "is the calibration text" in capsys.readouterr().err


def test_a_method_that_would_not_fit_in_memory_is_refused_first(
    tiny_hf, tmp_path, monkeypatch, capsys
):
    from qwen_mlx.runtime import memory

    monkeypatch.setattr(
        memory,
        "machine_budget",
        lambda: memory.Budget(1 << 20, 1 << 30, "physical-memory-minus-headroom"),
    )
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--method", "dwq"]
    assert main(args) == 1
    assert "but the memory budget is 1.0 MB" in capsys.readouterr().err
    assert not out.exists()


def test_ctrl_c_during_a_method_leaves_nothing_behind(tiny_hf, home):
    from qwen_mlx.convert import convert

    def interrupt(p):
        if p.stage == "gptq" and p.done:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(str(tiny_hf), method="gptq", progress=interrupt)
    assert not (home / "models/qwen3-1m-tiny/2507/mlx-q4-g64-gptq").exists()
    assert not leftovers(home)


def test_models_compare_reads_manifests_and_computes_what_they_lack(
    learned, tiny_hf, tmp_path, monkeypatch, capsys
):
    from mlx_lm.convert import convert as mlx_lm_convert

    home, _, _, _ = learned
    monkeypatch.setenv("QWEN_MLX_HOME", str(home))
    elsewhere = tmp_path / "mlx-lm-q4"
    mlx_lm_convert(str(tiny_hf), mlx_path=str(elsewhere), quantize=True)
    capsys.readouterr()  # what mlx-lm printed
    names = ["qwen3-1m-tiny-2507-mlx-q4-g64", "qwen3-1m-tiny-2507-mlx-q4-g64-gptq"]
    args = ["models", "compare", *names, str(elsewhere), "--source", str(tiny_hf)]
    assert main([*args, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["quality_from"] for r in rows] == ["manifest", "manifest", "computed"]
    ours, gptq, theirs = rows
    # Ours is bit-identical to mlx-lm's default 4-bit, so the computed figures match.
    assert theirs["kl_divergence"] == pytest.approx(ours["kl_divergence"], rel=1e-3)
    assert theirs["bits_per_weight"] == pytest.approx(ours["bits_per_weight"], abs=0.01)
    assert all(r["size_bytes"] > 0 and r["decode_tps"] > 0 for r in rows)
    assert gptq["quantization"] == "4-bit g64 gptq"

    assert main(["models", "compare", names[1], str(elsewhere), "--no-bench"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0].split()
    assert header[:6] == ["NAME", "QUANTIZATION", "SIZE", "BPW", "KL", "TOP-1"]
    assert "pass --source" in out  # the mlx-lm folder has no manifest to find its source by


# -- bits per weight: every byte a layer stores, with and without the embedding ----------


def _matrix_bytes_and_weights(folder: Path, source: Path) -> tuple[int, int, int, int]:
    """Independently of count_bits: the bytes of every tensor of a module whose source
    weight is a matrix, from the written file, and the weights of those matrices, from
    the source checkpoint; (all bytes, all weights, embedding bytes, embedding weights)."""
    import mlx.core as mx

    written = {}
    for f in folder.glob("*.safetensors"):
        written.update(mx.load(str(f)))
    matrices = {}
    for f in source.glob("*.safetensors"):
        for name, array in mx.load(str(f)).items():
            if name.endswith(".weight") and array.ndim == 2:
                matrices[name.removesuffix(".weight")] = array.size
    stored = {
        m: sum(a.nbytes for n, a in written.items() if n.startswith(m + ".")) for m in matrices
    }
    embed = "model.embed_tokens"
    return sum(stored.values()), sum(matrices.values()), stored[embed], matrices[embed]


@pytest.mark.parametrize(
    "flags", [[], ["--q-bits", "8", "--q-group-size", "32"], ["--recipe", "mixed_3_6"]]
)
def test_bits_per_weight_count_every_byte_of_each_matrix_with_and_without_the_embedding(
    tiny_hf, tmp_path, flags
):
    from qwen_mlx.convert.weights import count_bits

    out = tmp_path / "out"
    assert main(["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), *flags]) == 0
    total_bytes, weights, embed_bytes, embed_weights = _matrix_bytes_and_weights(out, tiny_hf)
    bits = count_bits(out)
    assert bits.linear_bits + bits.embedding_bits == 8 * total_bytes
    assert bits.linear_weights + bits.embedding_weights == weights
    assert (bits.embedding_bits, bits.embedding_weights) == (8 * embed_bytes, embed_weights)
    q = read_manifest(out).quantization
    assert q.bits_per_weight == round(8 * total_bytes / weights, 3)
    linear = 8 * (total_bytes - embed_bytes) / (weights - embed_weights)
    assert q.bits_per_weight_linear == round(linear, 3)
    if not flags:  # 4 bits and a bf16 scale and bias per 64 weights: exactly 4.5
        assert q.bits_per_weight == q.bits_per_weight_linear == 4.5
    if "--recipe" in flags:  # a mix: with and without the embedding differ
        assert q.bits_per_weight != q.bits_per_weight_linear


def _shapes() -> dict[str, tuple[int, int]]:
    shapes = {"model.embed_tokens": (4096, 256)}
    for i in range(4):
        p = f"model.layers.{i}"
        shapes |= {f"{p}.self_attn.q_proj": (256, 256), f"{p}.self_attn.k_proj": (128, 256)}
        shapes |= {f"{p}.self_attn.v_proj": (128, 256), f"{p}.self_attn.o_proj": (256, 256)}
        shapes |= {f"{p}.mlp.gate_proj": (768, 256), f"{p}.mlp.up_proj": (768, 256)}
        shapes |= {f"{p}.mlp.down_proj": (256, 768)}
    return shapes


@pytest.mark.parametrize("target", [4.52, 4.55, 4.6, 4.75, 5.0, 5.3])
@pytest.mark.parametrize("embedding_first", [True, False])
def test_the_allocation_stays_within_the_target_both_ways_and_leaves_no_room(
    target, embedding_first
):
    from qwen_mlx.convert.quant import allocate_bits
    from qwen_mlx.convert.weights import is_embedding, layer_bits

    shapes = _shapes()
    order = sorted(shapes, key=lambda p: (is_embedding(p) != embedding_first, p))
    sensitivities = {p: float(len(order) - i) for i, p in enumerate(order)}
    chosen = allocate_bits(shapes, sensitivities, target, 4, 5, 64, 16)

    def spent(paths):
        return sum(layer_bits(*shapes[p], 5 if p in chosen else 4, 64, 16) for p in paths)

    def weights(paths):
        return sum(r * c for r, c in (shapes[p] for p in paths))

    linear = [p for p in shapes if not is_embedding(p)]
    assert spent(shapes) <= target * weights(shapes)
    assert spent(linear) <= target * weights(linear)
    for path in set(shapes) - chosen:  # no layer left out would still have fit
        chosen.add(path)
        assert spent(shapes) > target * weights(shapes) or spent(linear) > target * weights(linear)
        chosen.discard(path)


def test_target_bpw_is_a_budget_the_written_files_keep_both_ways(learned):
    from qwen_mlx.convert.weights import count_bits

    home, _, _, _ = learned
    for method in ("dynamic", "dynamic-gptq"):
        folder = home / f"models/qwen3-1m-tiny/2507/mlx-q4-g64-{method}5"
        bits = count_bits(folder)
        assert 4.5 < bits.per_weight <= 5.0 and bits.per_weight_linear <= 5.0
        q = read_manifest(folder).quantization
        assert (q.bits_per_weight, q.bits_per_weight_linear) == (
            round(bits.per_weight, 3),
            round(bits.per_weight_linear, 3),
        )


# -- several held-out texts --------------------------------------------------------------


def _texts(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "code-a.txt", tmp_path / "code-b.txt"
    a.write_text("def add(a, b):\n    return a + b\n\n" * 20)
    b.write_text("class Stack:\n    def push(self, item):\n        self.items.append(item)\n" * 12)
    return a, b


def test_convert_reports_on_each_held_out_text(tiny_hf, tmp_path, capsys):
    a, b = _texts(tmp_path)
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out)]
    assert main([*args, "--heldout", str(a), "--heldout", str(b)]) == 0
    printed = capsys.readouterr().out
    assert "held-out tokens of code-a.txt" in printed and "held-out tokens of code-b.txt" in printed
    m = read_manifest(out)
    assert [r.text for r in m.quality_reports] == ["code-a.txt", "code-b.txt"]
    assert [r.text_sha256 for r in m.quality_reports] == [sha256_file(a), sha256_file(b)]
    assert m.quality_reports[0].kl_divergence != m.quality_reports[1].kl_divergence

    assert main([*args, "--force", "--heldout", str(a), "--heldout", str(a)]) == 1
    assert "are the same text; pass each held-out text once" in capsys.readouterr().err


def test_models_compare_reports_each_held_out_text_and_reuses_the_manifests(
    tiny_hf, tmp_path, monkeypatch, capsys
):
    a, b = _texts(tmp_path)
    monkeypatch.setenv("QWEN_MLX_HOME", str(tmp_path / "home"))
    assert main(["convert", "--hf-path", str(tiny_hf), "--heldout", str(a)]) == 0
    capsys.readouterr()
    name = "qwen3-1m-tiny-2507-mlx-q4-g64"
    args = ["models", "compare", name, "--no-bench", "--heldout", str(a), "--heldout", str(b)]
    assert main([*args, "--json"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert [(r["text"], r["quality_from"]) for r in row["reports"]] == [
        ("code-a.txt", "manifest"),
        ("code-b.txt", "computed"),  # the manifest has no report on it; its source has
    ]
    assert row["kl_divergence"] == row["reports"][0]["kl_divergence"]
    assert row["bits_per_weight"] == row["bits_per_weight_linear"] == 4.5
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-4:] == ["TOK/S", "LIN", "BPW", "HELD-OUT"]
    assert lines[1].startswith(name) and lines[1].endswith("code-a.txt")
    assert lines[2].strip().split()[-1] == "code-b.txt" and not lines[2].startswith(name)


# -- calibration files of any size ---------------------------------------------------------


def test_a_huge_one_line_calibration_file_is_tokenized_in_pieces_up_to_the_cap(tiny_hf, tmp_path):
    from mlx_lm.tokenizer_utils import load as load_tokenizer

    from qwen_mlx.convert import quant

    big = tmp_path / "one-line.txt"
    with big.open("w") as f:
        for _ in range(400):  # 20 MB, no line end anywhere
            f.write("the keeper wrote the weather and the ships that passed " * 900)
    text = quant.read_calibration(big)
    assert text.sha256 == sha256_file(big)
    tokenizer = load_tokenizer(tiny_hf)
    seen = []
    encode = tokenizer.encode

    def spy(piece, **kw):
        seen.append(len(piece))
        return encode(piece, **kw)

    tokenizer.encode = spy
    windows, info, notice = quant.calibration_windows(text, tokenizer, 64, 8)
    assert windows.shape == (8, 64) and (info.samples, info.sequence_length) == (8, 64)
    assert max(seen) <= 1 << 16  # never the whole line at once
    assert sum(seen) < 4 * (1 << 16)  # and read no further than the cap needed
    assert "is longer than the 512 tokens a method calibrates on (8 windows of 64)" in notice


def test_a_long_calibration_file_is_capped_with_a_warning(tiny_hf, tmp_path, capsys, monkeypatch):
    from qwen_mlx.convert import quant

    # The cap's own size (128 windows of 512) makes a slow test: 8 windows of 64 here.
    monkeypatch.setattr(quant, "MAX_WINDOWS", 8)
    monkeypatch.setattr(quant, "SEQUENCE_LENGTH", 64)
    cap = 8 * 64
    big = tmp_path / "long.txt"
    line = "def keeper(weather, ships):\n    return [s for s in ships if s.safe(weather)]\n"
    big.write_text(line * 20000)  # about 1.6 MB, several times the cap
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--method", "gptq"]
    assert main([*args, "--calibration", str(big)]) == 0
    err = capsys.readouterr().err
    assert f"warning: The calibration text (long.txt) is longer than the {cap:,} tokens" in err
    cal = read_manifest(out).quantization.calibration
    assert (cal.samples, cal.sequence_length) == (8, 64)
    assert cal.tokens == cap and cal.sha256 == sha256_file(big)


def test_a_calibration_file_that_stops_being_utf8_is_refused_before_any_work(
    tiny_hf, tmp_path, capsys
):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine text\n" * 300000 + b"\xff\xfe")  # the bad bytes past the first read
    out = tmp_path / "out"
    args = ["convert", "--hf-path", str(tiny_hf), "--mlx-path", str(out), "--method", "gptq"]
    assert main([*args, "--calibration", str(bad)]) == 1
    assert "bad.txt is not UTF-8 text" in capsys.readouterr().err
    assert not out.exists()


# -- our GPTQ --------------------------------------------------------------------------


def test_gptq_codes_are_packed_as_mlx_unpacks_them():
    import mlx.core as mx
    import numpy as np

    from qwen_mlx.convert.gptq import pack

    rng = np.random.default_rng(0)
    for bits in (2, 4, 8):
        codes = rng.integers(0, 2**bits, size=(8, 128)).astype(np.uint32)
        scales = rng.uniform(0.01, 0.1, size=(8, 2)).astype(np.float32)
        biases = rng.uniform(-1, 0, size=(8, 2)).astype(np.float32)
        got = mx.dequantize(
            mx.array(pack(codes, bits)),
            mx.array(scales),
            mx.array(biases),
            group_size=64,
            bits=bits,
        )
        expected = codes.reshape(8, 2, 64) * scales[..., None] + biases[..., None]
        np.testing.assert_allclose(np.array(got), expected.reshape(8, 128), atol=1e-6)


def test_gptq_has_less_output_error_than_rounding_to_nearest_on_correlated_inputs():
    import mlx.core as mx
    import numpy as np

    from qwen_mlx.convert.gptq import gptq_matrix

    rng = np.random.default_rng(1)
    x = rng.normal(size=(2048, 32)) @ rng.normal(size=(32, 128))  # correlated inputs
    x[:, 5] *= 20  # and one loud channel
    w = rng.normal(size=(64, 128)).astype(np.float32)
    codes, scales, biases = gptq_matrix(w, x.T @ x / len(x), 4, 64, mx.bfloat16)
    gptq = (codes.reshape(64, 2, 64) * scales[..., None] + biases[..., None]).reshape(64, 128)
    wq, s, b = mx.quantize(mx.array(w), group_size=64, bits=4)
    rtn = np.array(mx.dequantize(wq, s, b, group_size=64, bits=4))
    assert np.linalg.norm((w - gptq) @ x.T) < 0.8 * np.linalg.norm((w - rtn) @ x.T)


@pytest.mark.interop  # a benchmark's smoke run: the interop tier runs them all
def test_the_benchmarks_smoke_mode_prints_both_texts_both_counts_and_ratios():

    done = run_script("bench_quant.py", "--smoke", timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| recipe"))
    for column in ("bpw", "bpw w/o embedding", "KL A / mlx-lm", "KL B / mlx-lm"):
        assert f" {column} " in header
    peer = next(line for line in lines if line.startswith("| mlx-lm convert -q"))
    assert peer.count("1.00x") == 2
    assert any(line.startswith("| --method gptq") for line in lines)
    assert "best at <= 4.6 bits per weight (both counts)" in done.stdout


@pytest.mark.parametrize("mode", ["affine", "mxfp4"])
def test_the_report_scores_quantized_layers_dequantized_with_the_same_logits(
    tiny_hf, tmp_path, mode
):
    import mlx.core as mx
    import numpy as np
    from mlx_lm.utils import load_model

    from qwen_mlx.convert import convert
    from qwen_mlx.convert.quality import load_for_scoring, model_logits

    out = convert(str(tiny_hf), mlx_path=tmp_path / "q4", q_mode=mode).path
    quantized, _ = load_model(out)
    quantized.set_dtype(mx.float32)
    tokens = list(range(3, 200))
    expected = np.array(quantized(mx.array(tokens)[None])[0])
    scoring = load_for_scoring(out)
    assert not any("Quantized" in type(m).__name__ for _, m in scoring.named_modules())
    np.testing.assert_allclose(np.array(model_logits(scoring, tokens)), expected, atol=1e-4)
