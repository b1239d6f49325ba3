"""`qwen-mlx models ...`: list, inspect, verify and switch the versions in the store."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from dataclasses import asdict

from . import models_engines
from .common import ProgressBar, command_parser, guarded, human_bytes, print_table

DESCRIPTION = """\
Manage the model versions in the store ($QWEN_MLX_HOME, default ~/.qwen_mlx).

A FAMILY is a name without release, like qwen3-4b-instruct; its `latest` version is what
`load("qwen3-4b-instruct")` and `--model qwen3-4b-instruct` pick. A NAME is a full version
name, like qwen3-4b-instruct-2507-mlx-q4-g64.
"""

VERIFY_FAILED = 1


def build_parser() -> argparse.ArgumentParser:
    p = command_parser("models", DESCRIPTION)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = functools.partial(sub.add_parser, allow_abbrev=False)
    a = add("list", help="table of stored versions (latest and pinned marked)")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a = add("show", help="a version's manifest, readable")
    a.add_argument("name", metavar="NAME|FAMILY")
    a.add_argument("--json", action="store_true", help="the raw manifest.json")
    a = add("verify", help="recompute the sha256 of every file against the manifest")
    a.add_argument("name", nargs="?", metavar="NAME|FAMILY", help="(default: every version)")
    a.add_argument("--all", action="store_true", help="every stored version (the default)")
    a = add("import", help="copy an MLX folder, or convert a Qwen3 .gguf, into the store")
    a.add_argument("path", help="model folder (an mlx-community download, say) or FILE.gguf")
    a.add_argument("--name", help="its name, e.g. qwen3-4b-instruct-2507-mlx-q4-g64")
    a.add_argument(
        "--force",
        action="store_true",
        help="replace a stored version of that name (and import a GGUF whose weights hold NaN)",
    )
    a = add("set-latest", help="make NAME its family's latest")
    a.add_argument("name", metavar="NAME")
    a = add("rollback", help="go back to the family's previous latest")
    a.add_argument("family", metavar="FAMILY")
    a = add("pin", help="freeze a family (at VERSION, or at its latest)")
    a.add_argument("family", metavar="FAMILY")
    a.add_argument("version", nargs="?", metavar="VERSION", help="a NAME or e.g. 2507-mlx-q8-g64")
    a = add("unpin", help="let updates and conversions switch latest again")
    a.add_argument("family", metavar="FAMILY")
    a = add("policy", help="set a family's update policy")
    a.add_argument("family", metavar="FAMILY")
    a.add_argument("policy", choices=("auto", "notify", "frozen"))
    a = add("rm", help="delete a version and free its disk")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--force", action="store_true", help="also the latest or pinned version")
    a = add("check-updates", help="ask the Hub whether a source repo moved on")
    a.add_argument("family", nargs="?", metavar="FAMILY")
    a.add_argument("--apply", action="store_true", help="convert available updates now")
    a = add("log", help="the event history (converted, set-latest, ...)")
    a.add_argument("family", nargs="?", metavar="FAMILY")
    add("repair", help="rebuild a damaged registry from the manifests on disk")
    models_engines.add_parsers(add)
    a = add(
        "compare",
        help="size, bits per weight, KL, top-1, perplexity and decode speed, side by side",
        description="Compare conversions of one model: size on disk, bits per weight, the "
        "quality report against the source (KL divergence, top-1 agreement, perplexity on "
        "each held-out text) and decode tokens/s from a short greedy run. Bits per weight "
        "count every byte of the weight matrices (weights, scales, biases): BPW with the "
        "token embedding, LIN BPW without it. Figures a manifest lacks (a model converted "
        "elsewhere, another text) are computed against --source, or the local source "
        "folder the manifest names.",
    )
    a.add_argument("names", nargs="+", metavar="NAME", help="store names, families or folders")
    a.add_argument("--source", metavar="REF", help="the unquantized checkpoint to measure against")
    a.add_argument(
        "--heldout",
        metavar="FILE",
        action="append",
        help="a held-out text; repeat it for several, one row each (default: the packaged one)",
    )
    a.add_argument("--no-bench", dest="bench", action="store_false", help="skip decode speed")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    return p


@guarded
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..store import Store

    store = Store()
    try:
        return ACTIONS[args.action](store, args)
    finally:
        store.close()


def _list(store, args) -> int:
    models = store.list()
    if args.json:
        rows = [{**asdict(m), "path": str(m.path)} for m in models]
        print(json.dumps(rows, indent=2))
        return 0
    if not models:
        print(
            f"No models in {store.root}. Convert one: "
            "`qwen-mlx convert --hf-path Qwen/Qwen3-4B-Instruct-2507` (or `qwen-mlx demo`)."
        )
        return 0
    header: tuple[str, ...] = ("", "NAME", "RELEASE", "FORMAT", "SIZE", "LAST VERIFIED")
    with_quality = any(m.quality for m in models)
    if with_quality:
        header += ("KL", "TOP-1")
    rows = []
    for m in models:
        mark = ("*" if m.latest else " ") + ("P" if m.pinned else " ")
        verified = "never"
        if m.missing:
            verified = "FOLDER MISSING (deleted; `models rm` drops it)"
        elif not m.manifest_ok:
            verified = "MANIFEST DAMAGED"
        elif m.last_verified_at is not None:
            when = m.last_verified_at[:16].replace("T", " ")
            verified = f"{when} {'ok' if m.last_verify_ok else 'FAILED'}"
        row: tuple[str, ...] = (
            mark,
            m.name,
            m.release,
            m.format,
            human_bytes(m.size_bytes),
            verified,
        )
        if with_quality:
            q = m.quality
            row += (f"{q.kl_divergence:.4f}", f"{q.top1_agreement:.1%}") if q else ("-", "-")
        rows.append(row)
    print_table([header, *rows])
    print("\n* latest   P pinned")
    return 0


def _show(store, args) -> int:
    folder, m = store.manifest(args.name)
    if args.json:
        print((folder / "manifest.json").read_text(), end="")
        return 0
    q = m.quantization
    policy, pinned = store.registry.family(m.family)
    latest = store.latest(m.family)
    lines = [
        f"{m.name}" + ("  (latest)" if latest is not None and str(latest) == m.name else ""),
        f"  folder        {folder}",
        f"  family        {m.family}  (policy {policy}{', pinned' if pinned else ''})",
        f"  release       {m.release}   variant {m.variant}",
        f"  parameters    {m.parameters:,}",
        f"  context       {m.context_length:,} tokens",
        f"  quantization  {q.label}, {q.bits_per_weight} bits per weight, dtype {q.dtype}",
        f"  size          {human_bytes(m.size)} in {len(m.files)} files",
        f"  source        {m.source.repo or m.source.path}"
        + (f" @ {m.source.revision}" if m.source.revision else ""),
        f"  license       {m.license or 'unknown'}",
        f"  created       {m.created_at}",
        "  tools         " + ", ".join(f"{k} {v}" for k, v in m.tools.items()),
    ]
    if m.quality is not None:
        r = m.quality
        lines += [
            f"  quality       {r.verdict}: KL divergence {r.kl_divergence:.5f}, "
            f"top-1 agreement {r.top1_agreement:.1%}",
            f"                perplexity {r.perplexity_source:.3f} (source) -> "
            f"{r.perplexity_converted:.3f} (converted), {r.tokens} held-out tokens",
        ]
    else:
        lines.append("  quality       no report (convert with --report to record one)")
    lines.append("  files")
    for f in m.files:
        lines.append(f"    {f.path:<36} {human_bytes(f.size):>10}  {f.sha256[:16]}...")
    print("\n".join(lines))
    return 0


def _verify(store, args) -> int:
    if args.all and args.name:
        print("error: name a version (or family), or pass --all, not both.", file=sys.stderr)
        return 2
    names = [args.name] if args.name else [m.name for m in store.list()]
    if not names:
        print(f"No models in {store.root} to verify.")
        return 0
    failed = sum(not _verify_one(store, name, several=len(names) > 1) for name in names)
    if failed:
        print(
            f"\n{failed} of {len(names)} failed verification. Convert or import them again "
            "(or `qwen-mlx models rm NAME`).",
            file=sys.stderr,
        )
        return VERIFY_FAILED
    return 0


def _verify_one(store, name: str, *, several: bool) -> bool:
    """Verify one version and print its verdict. With `several`, a version with a file
    that cannot be read (permission denied, say) is reported and the others still run."""
    from ..errors import QwenMLXError

    bar = ProgressBar(unit="bytes")
    try:
        result = store.verify(
            name, progress=lambda file, n, total: bar.advance("verify", n, total, file)
        )
    except OSError as e:
        if not several or isinstance(e, QwenMLXError):  # a full disk: stop right there
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"FAILED  {name}\n  cannot read a file ({e.strerror or e}{where})")
        return False
    finally:
        bar.finish()
    if result.problems:
        print(f"FAILED  {result.name}")
        for p in result.problems:
            print(f"  {p}")
    else:
        print(f"ok      {result.name}: {result.files} files, {human_bytes(result.size)}")
    return not result.problems


def _import(store, args) -> int:
    if models_engines.is_gguf(args.path):
        return models_engines.import_gguf(store, args)
    from ..convert.importer import import_folder
    from ..store.naming import parameters_text

    result = import_folder(args.path, name=args.name, force=args.force, home=store.root)
    manifest = result.manifest
    print(
        f"Imported {manifest.name} ({parameters_text(manifest.parameters)} parameters, "
        f"{human_bytes(manifest.size)}) into {result.path}"
    )
    for note in result.notes:
        print(f"  note: {note}")
    if result.became_latest:
        print(f"  now the latest of {manifest.family}")
    else:
        print(
            f"  {manifest.family}'s latest stays {store.latest(manifest.family)}; switch with "
            f"`qwen-mlx models set-latest {manifest.name}`"
        )
    return 0


def _set_latest(store, args) -> int:
    name = store.set_latest(args.name)
    print(f"{name.family_id}: latest is now {name}")
    return 0


def _rollback(store, args) -> int:
    name = store.rollback(args.family)
    print(f"{name.family_id}: rolled back; latest is now {name}")
    return 0


def _pin(store, args) -> int:
    name = store.pin(args.family, args.version)
    print(f"{name.family_id}: pinned at {name} (updates and conversions will not switch it)")
    return 0


def _unpin(store, args) -> int:
    store.unpin(args.family)
    print(f"{args.family}: unpinned")
    return 0


def _policy(store, args) -> int:
    store.set_policy(args.family, args.policy)
    print(f"{args.family}: update policy {args.policy}")
    return 0


def _rm(store, args) -> int:
    removed = store.remove(args.name, force=args.force)
    name = removed.name
    if removed.was_missing:
        print(f"Removed {name} from the registry (its folder had already been deleted)")
    else:
        print(f"Removed {name}; freed {human_bytes(removed.freed)}")
    latest = store.latest(name.family_id)
    if latest is not None:
        print(f"  latest of {name.family_id}: {latest}")
    return 0


def _check_updates(store, args) -> int:
    from ..convert.updates import check_updates

    bar = ProgressBar(unit="bytes")
    try:
        results = check_updates(
            args.family,
            home=store.root,
            apply=True if args.apply else None,
            progress=lambda p: bar.update(p.stage, p.done, p.total, p.detail),
        )
    finally:
        bar.finish()
    if not results:
        print("No families in the store.")
    for r in results:
        print(f"{r.family}: {r.message}")
    return 0


def _log(store, args) -> int:
    for e in store.registry.events(args.family):
        detail = f"  ({e.detail})" if e.detail else ""
        print(f"{e.at}  {e.kind:<11} {e.family}  {e.model or ''}{detail}")
    return 0


def _repair(store, args) -> int:
    result = store.repair()
    if result.kept:
        print(f"Moved the old registry aside to {result.kept}.")
    print(
        f"Rebuilt the registry from {result.models} manifests. Pins and update policies were reset."
    )
    if result.skipped:
        print(f"Left out {len(result.skipped)} folders whose manifest cannot be read:")
        for line in result.skipped:
            print(f"  {line}")
        print("Convert or import those models again, or delete their folders.")
    return 0


def _compare(store, args) -> int:
    from ..runtime.compare import compare_models

    bar = ProgressBar()
    try:
        rows = compare_models(
            args.names,
            source=args.source,
            heldout=args.heldout,
            bench=args.bench,
            home=store.root,
            progress=lambda stage, name: bar.update(stage, 0, 0, name),
        )
    finally:
        bar.finish()
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=2))
        return 0

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = [
        (
            "NAME",
            "QUANTIZATION",
            "SIZE",
            "BPW",
            "KL",
            "TOP-1",
            "PPL",
            "SRC PPL",
            "TOK/S",
            "LIN BPW",
            "HELD-OUT",
        )
    ]
    for r in rows:
        model = (
            r.name,
            r.quantization,
            human_bytes(r.size_bytes),
            num(r.bits_per_weight, ".2f"),
        )
        speed = (num(r.decode_tps, ".1f"), num(r.bits_per_weight_linear, ".2f"))
        if not r.reports:
            table.append((*model, "-", "-", "-", "-", *speed, "-"))
        for i, q in enumerate(r.reports):
            figures = (
                num(q.kl_divergence, ".4f"),
                num(q.top1_agreement, ".1%"),
                num(q.perplexity, ".2f"),
                num(q.perplexity_source, ".2f"),
            )
            lead = model if i == 0 else ("", "", "", "")
            table.append((*lead, *figures, *(speed if i == 0 else ("", "")), q.text))
    print_table(table, right_align=range(2, 10))
    for r in rows:
        if r.note:
            print(f"{r.name}: {r.note}")
    return 0


ACTIONS = {
    "list": _list,
    "show": _show,
    "verify": _verify,
    "import": _import,
    "set-latest": _set_latest,
    "rollback": _rollback,
    "pin": _pin,
    "unpin": _unpin,
    "policy": _policy,
    "rm": _rm,
    "check-updates": _check_updates,
    "log": _log,
    "repair": _repair,
    "export": models_engines.export,
    "compare": _compare,
}


if __name__ == "__main__":
    raise SystemExit(main())
