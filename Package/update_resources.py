#!/usr/bin/env python3
"""Write the resource stanzas of Package/qwen-mlx.rb from Package/requirements-macos.lock.

Each `name==version` of the lock becomes a `resource` with the url and sha256 of its sdist
(Homebrew builds Python packages from source), except mlx and mlx-metal: mlx-metal ships
only as wheels, and building mlx needs Xcode's Metal toolchain, so both come as Apple's
macOS 14 arm64 wheels for CPython 3.12. A package without an sdist falls back to its wheel.

Urls and sha256 come from, in order: the line itself (`name==version url=URL sha256=HEX`),
the stanza already in the formula for the same version (so an unchanged lock needs no
network), PyPI's simple index (the JSON form pip reads, PEP 691), and last `pip download`
of the file, hashed here. `--offline` stops before the network and names what is missing.

    python Package/update_resources.py                  # lock -> formula resources
    python Package/update_resources.py --check          # exit 1 if the formula is stale
    python Package/update_resources.py --sdist dist/qwen_mlx-0.2.0.tar.gz
                                                        # also the release sdist's sha256

On a Mac with qwen-mlx published on PyPI, `brew update-python-resources qwen-mlx` is
Homebrew's own way to refresh resources; it resolves the newest versions rather than this
lock's and knows nothing of the mlx wheels, so run this script after it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LOCK = HERE / "requirements-macos.lock"
FORMULA = HERE / "qwen-mlx.rb"
INDEX = "https://pypi.org/simple"
BEGIN = "  # BEGIN resources: written by Package/update_resources.py from requirements-macos.lock"
END = "  # END resources"
WHEELS = frozenset({"mlx", "mlx-metal"})
PYTHON = (3, 12)
MACOS = (14, 0)  # the oldest macOS mlx publishes wheels for; the formula needs :sonoma


@dataclass(frozen=True)
class Pin:
    """A pinned package and, once known, the file the formula downloads."""

    name: str
    version: str
    url: str | None = None
    sha256: str | None = None


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(text: str) -> list[Pin]:
    """`name==version [url=URL] [sha256=HEX]` lines; comments and blank lines skipped."""
    pins = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *extra = line.split()
        name, sep, version = spec.partition("==")
        if not sep or not name or not version:
            raise ValueError(f"lock line {number}: expected name==version, got {raw.strip()!r}")
        fields = dict(item.split("=", 1) for item in extra if "=" in item)
        pins.append(Pin(normalize(name), version, fields.get("url"), fields.get("sha256")))
    return pins


_STANZA = re.compile(
    r'resource "(?P<name>[^"]+)" do\s+url "(?P<url>[^"]+)"[^\n]*\s+sha256 "(?P<sha>[0-9a-f]{64})"'
)


def file_version(filename: str) -> tuple[str, str] | None:
    """(normalized name, version) of an sdist or wheel file name."""
    from packaging.utils import parse_sdist_filename, parse_wheel_filename

    try:
        if filename.endswith(".whl"):
            name, version, *_ = parse_wheel_filename(filename)
        else:
            name, version = parse_sdist_filename(filename)
    except ValueError:
        return None
    return str(name), str(version)


def _same_version(a: str, b: str) -> bool:
    from packaging.version import Version

    return Version(a) == Version(b)


def read_resources(formula: str) -> dict[str, Pin]:
    """The resources already in a formula, by name."""
    out = {}
    for m in _STANZA.finditer(formula):
        parsed = file_version(m["url"].rsplit("/", 1)[-1])
        if parsed is not None:
            out[normalize(m["name"])] = Pin(normalize(m["name"]), parsed[1], m["url"], m["sha"])
    return out


def _wheel_rank(filename: str) -> int | None:
    """Preference of a wheel for CPython 3.12 on macOS 14 arm64 (lower first), None if it
    does not install there."""
    from packaging import tags
    from packaging.utils import parse_wheel_filename

    platforms = list(tags.mac_platforms(MACOS, "arm64"))
    supported = [
        *tags.cpython_tags(PYTHON, platforms=platforms),
        *tags.compatible_tags(PYTHON, "cp312", platforms=platforms),
    ]
    rank = {t: i for i, t in enumerate(supported)}
    found = [rank[t] for t in parse_wheel_filename(filename)[3] if t in rank]
    return min(found) if found else None


def choose_file(pin: Pin, files: list[dict]) -> tuple[str, str] | None:
    """(url, sha256) of the file to use among an index listing's files."""
    mine = [
        f
        for f in files
        if not f.get("yanked")
        and (parsed := file_version(f["filename"])) is not None
        and parsed[0] == pin.name
        and _same_version(parsed[1], pin.version)
    ]
    sdists = [f for f in mine if f["filename"].endswith((".tar.gz", ".zip"))]
    wheels = [
        (rank, f)
        for f in mine
        if f["filename"].endswith(".whl") and (rank := _wheel_rank(f["filename"])) is not None
    ]
    if sdists and pin.name not in WHEELS:
        chosen = sdists[0]
    elif wheels:
        chosen = min(wheels, key=lambda pair: pair[0])[1]
    else:
        return None
    return chosen["url"], chosen["hashes"]["sha256"]


def from_index(pin: Pin, index: str = INDEX) -> Pin | None:
    request = urllib.request.Request(
        f"{index}/{pin.name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        listing = json.load(response)
    chosen = choose_file(pin, listing["files"])
    return Pin(pin.name, pin.version, *chosen) if chosen else None


def from_pip(pin: Pin) -> Pin | None:
    """Download the file with pip and hash it. The url is PyPI's redirect form of the file
    name (files.pythonhosted.org/packages/source/...), since pip does not report its own."""
    if pin.name in WHEELS:
        kind = ["--only-binary", ":all:", "--platform", "macosx_14_0_arm64"]
        kind += ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
    else:
        kind = ["--no-binary", pin.name]
    # PyPI only: no pip configuration's extra indexes or local wheel folders.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--index-url", INDEX]
        cmd += ["-d", tmp, *kind, f"{pin.name}=={pin.version}"]
        if subprocess.run(cmd, check=False, env=env).returncode != 0:
            return None
        (path,) = Path(tmp).iterdir()
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    folder = "source" if path.suffix != ".whl" else path.name.split("-")[2]
    url = f"https://files.pythonhosted.org/packages/{folder}/{pin.name[0]}/{pin.name}/{path.name}"
    print(
        f"  {pin.name}: sha256 of the downloaded file; url is PyPI's redirect form", file=sys.stderr
    )
    return Pin(pin.name, pin.version, url, sha)


def resolve(pins: list[Pin], known: dict[str, Pin], *, offline: bool = False) -> list[Pin]:
    """Every pin with its url and sha256, looking up only what the lock and formula lack."""
    out, missing = [], []
    for pin in pins:
        if pin.url and pin.sha256:
            out.append(pin)
            continue
        old = known.get(pin.name)
        if old and _same_version(old.version, pin.version):
            out.append(old)
            continue
        if offline:
            missing.append(f"{pin.name}=={pin.version}")
            continue
        print(f"looking up {pin.name}=={pin.version}", file=sys.stderr)
        found = from_index(pin) or from_pip(pin)
        if found is None:
            raise LookupError(
                f"No file for {pin.name}=={pin.version}. Add url=... sha256=... to its lock line."
            )
        out.append(found)
    if missing:
        raise LookupError(f"Not in the formula yet (run without --offline): {', '.join(missing)}")
    return sorted(out, key=lambda p: p.name)


def render(pins: list[Pin]) -> str:
    """The resource stanzas, between the markers the formula keeps them in."""
    blocks = [BEGIN]
    for pin in pins:
        # Wheels are installed as files; Homebrew would otherwise try to unpack them.
        using = ", using: :nounzip" if pin.url.endswith(".whl") else ""
        blocks.append(
            f'  resource "{pin.name}" do\n'
            f'    url "{pin.url}"{using}\n'
            f'    sha256 "{pin.sha256}"\n'
            "  end"
        )
    blocks.append(END)
    return "\n\n".join(blocks)


def replace_block(formula: str, block: str) -> str:
    start, end = formula.index(BEGIN), formula.index(END) + len(END)
    return formula[:start] + block + formula[end:]


def set_source(formula: str, sdist: Path, url: str | None) -> str:
    """Point the formula at a release sdist: its url (PyPI's by default) and sha256."""
    sha = hashlib.sha256(sdist.read_bytes()).hexdigest()
    parsed = file_version(sdist.name)
    if parsed is None:
        raise ValueError(f"{sdist.name} is not an sdist file name (name-version.tar.gz).")
    url = url or f"https://files.pythonhosted.org/packages/source/q/qwen-mlx/{sdist.name}"
    formula = re.sub(r'^  sha256 "[^"]*"\n', "", formula, count=1, flags=re.M)
    source = f'  url "{url}"\n  sha256 "{sha}"'
    return re.sub(r'^  url "[^"]*"$', source, formula, count=1, flags=re.M)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--lock", type=Path, default=LOCK)
    p.add_argument("--formula", type=Path, default=FORMULA)
    p.add_argument("--offline", action="store_true", help="use only the lock and the formula")
    p.add_argument("--check", action="store_true", help="exit 1 if the formula would change")
    p.add_argument("--sdist", type=Path, help="the release sdist: write its sha256 (and url)")
    p.add_argument("--url", help="with --sdist: its url (default: PyPI's for the file name)")
    args = p.parse_args(argv)

    formula = args.formula.read_text()
    pins = resolve(read_lock(args.lock.read_text()), read_resources(formula), offline=args.offline)
    updated = replace_block(formula, render(pins))
    if args.sdist:
        updated = set_source(updated, args.sdist, args.url)
    if args.check:
        stale = updated != formula
        print(f"{args.formula} is {'stale' if stale else 'up to date'}.", file=sys.stderr)
        return 1 if stale else 0
    args.formula.write_text(updated)
    print(f"{args.formula}: {len(pins)} resources.", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
