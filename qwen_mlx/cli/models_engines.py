"""`qwen-mlx models export` (GGUF, Ollama, LM Studio) and `models import FILE.gguf`: the
store's models as other engines' copies, and back. The work is in `convert.gguf_export`,
`convert.gguf_import` and `convert.engines`; this module parses and prints."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from .common import ParagraphFormatter, ProgressBar, human_bytes

FORMATS = ("gguf", "ollama", "lmstudio")
QUANTS = ("f16", "bf16", "q8_0", "q4_0", "q4_k_m", "mlx")
DEFAULT_GGUF_QUANT = "q4_0"

EXPORT_EPILOG = """\
formats:
  gguf      a gguf-<quant> version of the same release in the store (manifest, sha256;
            `models list/verify/rm` work on it), or the .gguf file in --output
  ollama    the GGUF plus a Modelfile (Qwen3's template with tools, stop tokens, the
            sampling defaults), and the `ollama create` command to run
  lmstudio  the folder layout of LM Studio's models directory (--output, default
            $LMSTUDIO_MODELS_DIR or ~/.lmstudio/models): --quant mlx (the default for an
            MLX version) copies the MLX files, a GGUF quant the GGUF

quants: f16, bf16, q8_0, q4_0 (the default) are written by the gguf package; q4_k_m by
llama.cpp's own quantizer (needs `pip install 'qwen-mlx[interop]'`).

examples:
  qwen-mlx models export qwen3-4b-instruct --format gguf --quant q8_0
  qwen-mlx models export qwen3-4b-instruct --format gguf --output ~/models/qwen3-4b.gguf
  qwen-mlx models export qwen3-4b-instruct --format ollama
  qwen-mlx models export qwen3-4b-instruct --format lmstudio
"""


def add_parsers(add: Callable[..., argparse.ArgumentParser]) -> None:
    """Add the `export` action to `models`' subparsers."""
    a = add(
        "export",
        help="a copy for llama.cpp, Ollama or LM Studio (GGUF or MLX)",
        description="Export a stored model for another engine.",
        epilog=EXPORT_EPILOG,
        formatter_class=ParagraphFormatter,
    )
    a.add_argument("name", metavar="NAME|FAMILY")
    a.add_argument("--format", choices=FORMATS, default="gguf", help="(default: gguf)")
    a.add_argument("--quant", choices=QUANTS, help="(default: q4_0; mlx for lmstudio)")
    a.add_argument(
        "--output",
        metavar="DIR|FILE.gguf",
        help="a folder instead of the store; for --format gguf, a path ending in .gguf is "
        "the file to write",
    )
    a.add_argument("--force", action="store_true", help="export again, replacing a copy")


def export(store, args) -> int:
    from ..convert.gguf_export import is_gguf_file_path
    from ..store import naming

    if args.format != "gguf" and args.output and is_gguf_file_path(Path(args.output).expanduser()):
        what = "the GGUF and its Modelfile" if args.format == "ollama" else "LM Studio's models"
        raise ValueError(
            f"--format {args.format} writes a folder ({what}): give --output a folder, "
            "not a .gguf file (--format gguf --output FILE.gguf writes the file alone)."
        )
    folder, manifest = store.manifest(args.name)
    name = naming.parse(manifest.name)
    quant = args.quant or ("mlx" if args.format == "lmstudio" else DEFAULT_GGUF_QUANT)
    if name.format == "gguf" and args.quant in (None, name.quant) and args.format != "gguf":
        return _finish(store, args, folder, name)
    if quant == "mlx":
        if args.format != "lmstudio":
            raise ValueError("--quant mlx is for --format lmstudio; GGUF needs a GGUF quant.")
        if name.format == "gguf":
            raise ValueError(f"{name} is a GGUF version; export an MLX version with --quant mlx.")
        return _lmstudio(store, args, folder, name, manifest)
    from ..convert.gguf_export import export_gguf

    output = args.output if args.format != "lmstudio" else None
    result = _with_bar(
        lambda progress: export_gguf(
            args.name,
            quant=quant,
            output=output,
            force=args.force,
            reuse=args.format != "gguf" and not args.force,
            home=store.root,
            progress=progress,
        )
    )
    size = human_bytes(result.file.stat().st_size)
    if result.reused:
        print(f"Using {result.name} from the store ({size}): {result.file}")
    else:
        where = "into the store" if output is None else "to"
        print(f"Exported {result.name} ({size}) {where} {result.file}")
        print(f"  weights from {result.source.description}")
    if args.format == "gguf":
        if output is None:
            print(f"  check it with `qwen-mlx models verify {result.name}`")
        return 0
    return _finish(store, args, result.folder, result.name)


def _finish(store, args, folder: Path, name) -> int:
    """The Ollama or LM Studio step for the GGUF version `name` in `folder`."""
    from ..convert.engines import MODELFILE, ollama_create_command
    from ..convert.gguf_export import gguf_file_name

    file = gguf_file_name(name)
    if args.format == "ollama":
        if args.output and folder != Path(args.output).expanduser():
            raise ValueError(f"{name} is already a stored GGUF; drop --output to use it as is.")
        print(f"Modelfile: {folder / MODELFILE}")
        print("Create the Ollama model with:")
        print(f"  {ollama_create_command(name, folder / MODELFILE)}")
        return 0
    from ..convert.engines import export_lmstudio

    copy = export_lmstudio(folder, name, [file], models_dir=_models_dir(args), force=args.force)
    _print_lmstudio(copy)
    return 0


def _lmstudio(store, args, folder: Path, name, manifest) -> int:
    from ..convert.engines import export_lmstudio

    files = [f.path for f in manifest.files]
    copy = export_lmstudio(folder, name, files, models_dir=_models_dir(args), force=args.force)
    _print_lmstudio(copy)
    return 0


def _models_dir(args) -> Path | None:
    return Path(args.output).expanduser() if args.output else None


def _print_lmstudio(copy) -> None:
    count = len(copy.files)
    print(f"LM Studio: {count} {'file' if count == 1 else 'files'} into {copy.folder}")
    if copy.linked:
        print(
            f"  {', '.join(copy.linked)}: hard-linked to the store's copy (no extra disk; "
            "read-only, as the store's is)"
        )
    copied = count - len(copy.linked)
    if copied and copy.linked:
        noun = "file" if copied == 1 else "files"
        print(f"  the other {copied} {noun} copied, so editing them leaves the store's as it is")
    elif copied:
        print("  copied, so editing them leaves the store's as it is")
    print("  it appears in LM Studio's model list (My Models) on its next scan")


def import_gguf(store, args) -> int:
    from ..convert.gguf_import import import_gguf as run

    result = _with_bar(
        lambda progress: run(
            args.path, name=args.name, force=args.force, home=store.root, progress=progress
        )
    )
    from ..store.naming import parameters_text

    m = result.manifest
    print(
        f"Imported {m.name} ({parameters_text(m.parameters)} parameters, "
        f"{human_bytes(m.size)}) into {result.path}"
    )
    print(f"  source {Path(args.path).name}, sha256 {next(iter(m.source.files.values()))}")
    for note in result.notes:
        print(f"  note: {note}")
    if result.became_latest:
        print(f"  now the latest of {m.family}")
    else:
        print(
            f"  {m.family}'s latest stays {store.latest(m.family)}; switch with "
            f"`qwen-mlx models set-latest {m.name}`"
        )
    return 0


def is_gguf(path: str) -> bool:
    p = Path(path).expanduser()
    if p.suffix.lower() == ".gguf":
        return True
    if not p.is_file():
        return False
    with open(p, "rb") as f:
        return f.read(4) == b"GGUF"


def _with_bar(work):
    bar = ProgressBar(unit="bytes")
    try:
        return work(lambda p: bar.update(p.stage, p.done, p.total, p.detail))
    finally:
        bar.finish()
