"""The `qwen-mlx` dispatcher and the demo."""

from __future__ import annotations

import itertools
import subprocess
import sys

import pytest

from qwen_mlx.cli.main import COMMANDS, main

from .helpers import child_env


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_exits_2(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_help_is_fast_and_does_not_import_mlx():
    code = (
        "import sys; from qwen_mlx.cli.main import main; main(['--help']);"
        "print('MLX' if any(m == 'mlx' or m.startswith(('mlx.', 'mlx_lm')) for m in sys.modules)"
        " else 'NOMLX')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env()
    )
    assert proc.stdout.strip().endswith("NOMLX")
    for name in COMMANDS:
        sub = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; from qwen_mlx.cli.main import main\ntry: main(['{name}', '--help'])\n"
                "except SystemExit: pass\n"
                "print('MLX' if 'mlx.core' in sys.modules else 'NOMLX')",
            ],
            capture_output=True,
            text=True,
            env=child_env(),
        )
        assert sub.stdout.strip().endswith("NOMLX"), name


def test_subcommands_run_as_modules():
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_mlx.cli.generate", "--help"],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert proc.returncode == 0 and "--prompt" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "qwen_mlx", "models", "--help"],
        capture_output=True,
        text=True,
        env=child_env(),
    )
    assert proc.returncode == 0 and "usage: qwen-mlx models" in proc.stdout


def test_demo_builds_converts_loads_and_generates(home, capsys):
    from qwen_mlx.convert.demo import DEMO_MODEL

    assert main(["demo", "--max-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert "[3/3] Generating" in captured.err
    assert "generation:" in captured.err
    assert (home / "models/qwen3-3m-demo/latest").is_file()
    from qwen_mlx.store import Store

    assert [m.name for m in Store(home).list()] == [DEMO_MODEL]
    assert main(["demo", "--max-tokens", "4"]) == 0  # second run reuses the stored model
    err = capsys.readouterr().err
    assert "convert:" not in err
    from qwen_mlx.convert import quantized_prefill_is_slow

    if quantized_prefill_is_slow():  # Linux: the next step it suggests is a bf16 model
        assert "--no-quantize`" in err and "30x slower" in err
    else:
        assert "--no-quantize" not in err


def test_the_demo_suggests_no_quantize_without_metal_only(home, capsys, monkeypatch):
    slow = "qwen_mlx.convert.quantized_prefill_is_slow"
    for linux in (True, False):
        monkeypatch.setattr(slow, lambda linux=linux: linux)
        assert main(["demo", "--max-tokens", "2"]) == 0
        err = capsys.readouterr().err
        assert ("Qwen3-4B-Instruct-2507 --no-quantize`" in err) is linux
        assert ("30x slower" in err) is linux


def test_every_sampling_parameter_has_a_flag():
    import argparse
    from dataclasses import fields

    from qwen_mlx.cli.common import add_sampling_args, sampling_overrides
    from qwen_mlx.runtime import SamplingParams

    parser = argparse.ArgumentParser()
    add_sampling_args(parser)
    dests = {a.dest for a in parser._actions}
    assert {f.name for f in fields(SamplingParams)} <= dests
    args = parser.parse_args(["--top-k", "5", "--stop", "END", "--seed", "3"])
    assert sampling_overrides(args) == {"top_k": 5, "stop": ["END"], "seed": 3}


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["generate", "--promt", "hi"], "--promt: did you mean --prompt?"),
        (
            ["generate", "--prompt", "hi", "--temprature=0"],
            "--temprature: did you mean --temperature?",
        ),
        (["models", "list", "--jsn"], "--jsn: did you mean --json?"),
        (["models", "export", "x", "--fromat", "gguf"], "--fromat: did you mean --format?"),
        (["chat", "--modle", "x"], "--modle: did you mean --model?"),
        (["serve", "--prot", "8080"], "--prot: did you mean --port?"),
        (["convert", "--hf-pth", "x"], "--hf-pth: did you mean --hf-path?"),
        (
            ["summarize", "doc.txt", "--max-contxt", "9"],
            "--max-contxt: did you mean --max-context?",
        ),
    ],
)
def test_a_mistyped_flag_gets_a_suggestion_in_every_command(argv, said, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert said in capsys.readouterr().err


@pytest.mark.parametrize("columns", [72, 100, 140])
@pytest.mark.parametrize("command", ["convert", "models", "bench", "demo", "generate"])
def test_help_fills_paragraphs_to_the_terminal(command, columns, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", str(columns))
    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = capsys.readouterr().out
    description = out.split("\n\n", 1)[1].split("\noptions:")[0].split("\npositional")[0]
    width = columns - 2  # what argparse fills to
    for paragraph in description.split("\n\n"):
        lines = paragraph.splitlines()
        assert all(len(line) <= width for line in lines if not line.startswith(" ")), paragraph
        for line, following in itertools.pairwise(lines):
            if not line.startswith(" ") and not following.startswith(" "):
                room = width - len(line)  # the next line's first word did not fit here
                assert len(following.split()[0]) >= room, (line, following)


def test_the_command_list_names_models_set_latest(capsys):
    assert main(["--help"]) == 0
    line = next(
        ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("models")
    )
    assert "set-latest" in line and ", latest," not in line
