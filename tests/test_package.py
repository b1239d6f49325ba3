"""Package/: the Homebrew formula, its resources and the launchd agent for `qwen-mlx serve`.

What runs only on a Mac (`brew install`, `brew test`, `launchctl bootstrap`) is not tested
here; these tests check the files' structure, and Ruby's syntax check when Ruby is present.
"""

from __future__ import annotations

import importlib.util
import plistlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "Package"
FORMULA = PACKAGE / "qwen-mlx.rb"
PLIST = PACKAGE / "com.qwen-mlx.serve.plist"


@pytest.fixture(scope="module")
def resources_script():
    spec = importlib.util.spec_from_file_location(
        "update_resources", PACKAGE / "update_resources.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class builds
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def formula() -> str:
    return FORMULA.read_text()


@pytest.fixture(scope="module")
def project() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _name(requirement: str) -> str:
    bare = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", bare).lower()


def _resource_names(formula: str) -> set[str]:
    return set(re.findall(r'^  resource "([^"]+)" do$', formula, flags=re.M))


# -- launchd agent ----------------------------------------------------------------------------
# launchd is macOS only: these install the agent as Package/README.md says (its own sed
# line) for a made-up user, then check what launchd would run, and with what, against
# qwen-mlx's own code: the serve command's parser, the store's default, launchd's keys.

HOME = "/Users/ada"
PREFIX = "/opt/homebrew"  # `brew --prefix` on Apple Silicon

# launchd.plist(5): the keys this agent may set, and the type launchd reads each as (a key
# it does not know, or of another type, is silently ignored).
LAUNCHD_KEYS = {
    "Label": str,
    "ProgramArguments": list,
    "EnvironmentVariables": dict,
    "WorkingDirectory": str,
    "RunAtLoad": bool,
    "KeepAlive": bool | dict,
    "ThrottleInterval": int,
    "ProcessType": str,
    "StandardOutPath": str,
    "StandardErrorPath": str,
}


@pytest.fixture(scope="module")
def agent() -> dict:
    """The agent as installed by the README's sed line, for HOME and PREFIX."""
    readme = (PACKAGE / "README.md").read_text()
    line = re.search(r"^sed (-e .*?) Package/com\.qwen-mlx\.serve\.plist", readme, flags=re.M)
    assert line, "the README has no sed line that fills in the agent"
    values = {"$HOME": HOME, "$(brew --prefix)": PREFIX}
    text = PLIST.read_text()
    for pattern, replacement in re.findall(r'-e "s\|([^|]+)\|([^|]+)\|g"', line[1]):
        text = text.replace(pattern, values[replacement])
    assert not re.findall(r"@[A-Z]+@", text), "a placeholder the README leaves unfilled"
    return plistlib.loads(text.encode())


def test_every_key_is_one_launchd_reads_as_the_type_it_reads(agent):
    assert set(agent) <= set(LAUNCHD_KEYS), set(agent) - set(LAUNCHD_KEYS)
    for key, value in agent.items():
        assert isinstance(value, LAUNCHD_KEYS[key]), key
    assert all(isinstance(a, str) for a in agent["ProgramArguments"])
    assert agent["ProcessType"] in ("Background", "Standard", "Adaptive", "Interactive")
    # The README's launchctl lines name the agent by its label.
    readme = (PACKAGE / "README.md").read_text()
    assert f'"gui/$(id -u)/{agent["Label"]}"' in readme and agent["Label"] == PLIST.stem


def test_the_agent_runs_the_installed_qwen_mlx_serve_on_loopback_unwarned(agent, project):
    from qwen_mlx.cli.serve import bind_warning, build_parser
    from qwen_mlx.server.net import is_loopback

    program, command, *options = agent["ProgramArguments"]
    # The formula installs the project's console script into Homebrew's bin.
    assert program == f"{PREFIX}/bin/{next(iter(project['scripts']))}" and command == "serve"
    args = build_parser().parse_args(options)  # what `qwen-mlx serve` makes of them
    assert is_loopback(args.host) and bind_warning(args.host, args.api_key) is None
    assert agent["WorkingDirectory"] == HOME


def test_the_agent_keeps_its_models_where_qwen_mlx_looks_by_default(agent, monkeypatch):
    from qwen_mlx.store import home

    monkeypatch.setenv("HOME", HOME)
    monkeypatch.delenv("QWEN_MLX_HOME")
    assert Path(agent["EnvironmentVariables"]["QWEN_MLX_HOME"]) == home()


def test_the_agent_starts_at_login_and_comes_back_at_most_once_a_minute(agent):
    assert agent["RunAtLoad"] is True  # loaded at login, started at once
    assert agent["KeepAlive"] is True  # restarted whatever way it exits
    assert agent["ThrottleInterval"] == 60  # a crash loop retries once a minute


def test_the_agent_logs_where_the_readme_tails_them(agent):
    out, err = Path(agent["StandardOutPath"]), Path(agent["StandardErrorPath"])
    assert out != err and out.parent == err.parent == Path(HOME) / "Library" / "Logs"
    tail = re.search(r"^tail -f (.+)$", (PACKAGE / "README.md").read_text(), flags=re.M)[1]
    assert tail.replace("~", HOME).split() == [str(out), str(err)]


# -- formula ----------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("ruby") is None, reason="Ruby is not installed: no `ruby -c`")
def test_formula_is_valid_ruby():
    proc = subprocess.run(["ruby", "-c", str(FORMULA)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Syntax OK" in proc.stdout


def test_formula_is_a_python_virtualenv_formula_for_apple_silicon_macs(formula):
    for line in (
        "class QwenMlx < Formula",
        "include Language::Python::Virtualenv",
        'depends_on "python@3.12"',
        "depends_on arch: :arm64",
        "depends_on :macos",
        'virtualenv_create(libexec, "python3.12")',
    ):
        assert line in formula, line


def test_formula_version_is_the_project_version(formula, project):
    url = re.search(r'^  url "([^"]+)"$', formula, flags=re.M)[1]
    assert url.endswith(f"/qwen_mlx-{project['version']}.tar.gz")


def test_the_version_shown_is_pyprojects(project, capsys):
    # One source: pyproject.toml's version, read back from what pip installed.
    import qwen_mlx
    from qwen_mlx.cli.main import main

    assert qwen_mlx.__version__ == project["version"]
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"qwen-mlx {project['version']}\n"


def test_a_source_tree_that_was_never_installed_has_an_unknown_version():
    from qwen_mlx._version import installed_version

    assert installed_version("qwen-mlx-never-installed") == "0+unknown"


def test_formula_test_block_runs_the_help(formula):
    block = re.search(r"^  test do\n(.*?)^  end$", formula, flags=re.M | re.S)
    assert block is not None
    assert '#{bin}/qwen-mlx --help"' in block[1]


def test_formula_resources_cover_every_runtime_dependency(formula, project):
    needed = {_name(r) for r in project["dependencies"]} | {"mlx-metal"}  # mlx's Metal half
    missing = needed - _resource_names(formula)
    assert not missing, f"no resource for {sorted(missing)}: run Package/update_resources.py"


def test_every_resource_has_an_https_url_and_a_sha256(formula):
    stanzas = re.findall(
        r'^  resource "([^"]+)" do\n    url "([^"]+)"(.*)\n    sha256 "([^"]+)"\n  end$',
        formula,
        flags=re.M,
    )
    assert len(stanzas) == len(_resource_names(formula))
    for name, url, options, sha in stanzas:
        assert url.startswith("https://files.pythonhosted.org/"), name
        assert re.fullmatch(r"[0-9a-f]{64}", sha), name
        assert (options == ", using: :nounzip") == url.endswith(".whl"), name


def test_formula_matches_the_lock_exactly(resources_script, formula):
    """The committed resources are what the script writes from the lock (no network)."""
    script = resources_script
    pins = script.read_lock(script.LOCK.read_text())
    resolved = script.resolve(pins, script.read_resources(formula), offline=True)
    assert script.replace_block(formula, script.render(resolved)) == formula
    assert _resource_names(formula) == {p.name for p in pins}


def test_mlx_comes_as_apples_wheel_for_cpython_312_on_macos_14(resources_script, formula):
    known = resources_script.read_resources(formula)
    assert known["mlx"].url.endswith("-cp312-cp312-macosx_14_0_arm64.whl")
    assert known["mlx-metal"].url.endswith("-py3-none-macosx_14_0_arm64.whl")
    sdists = [p for name, p in known.items() if name not in {"mlx", "mlx-metal"}]
    assert all(p.url.endswith((".tar.gz", ".zip")) for p in sdists)


# -- update_resources.py ----------------------------------------------------------------------


def test_lock_lines_may_carry_their_own_url_and_sha256(resources_script):
    pins = resources_script.read_lock(
        "# comment\n\nFoo_Bar==1.0  # why\nbaz==2.0 url=https://x/baz-2.0.tar.gz sha256=" + "a" * 64
    )
    assert [(p.name, p.version, p.url) for p in pins] == [
        ("foo-bar", "1.0", None),
        ("baz", "2.0", "https://x/baz-2.0.tar.gz"),
    ]
    with pytest.raises(ValueError, match="line 1: expected name==version"):
        resources_script.read_lock("numpy>=2\n")


def test_offline_update_names_the_pins_it_cannot_resolve(resources_script):
    pins = resources_script.read_lock("newpkg==9.9\n")
    with pytest.raises(LookupError, match=r"newpkg==9\.9"):
        resources_script.resolve(pins, {}, offline=True)


def test_a_changed_version_is_looked_up_again(resources_script, formula):
    known = resources_script.read_resources(formula)
    pin = resources_script.Pin("numpy", "0.0.1")
    with pytest.raises(LookupError, match=r"numpy==0\.0\.1"):
        resources_script.resolve([pin], known, offline=True)


def test_file_choice_prefers_the_sdist_except_for_mlx(resources_script):
    Pin, choose = resources_script.Pin, resources_script.choose_file
    files = [
        {
            "filename": "mlx-1.0-cp312-cp312-macosx_15_0_arm64.whl",
            "url": "u15",
            "hashes": {"sha256": "a"},
        },
        {
            "filename": "mlx-1.0-cp312-cp312-macosx_14_0_arm64.whl",
            "url": "u14",
            "hashes": {"sha256": "b"},
        },
        {
            "filename": "mlx-1.0-cp311-cp311-macosx_14_0_arm64.whl",
            "url": "u11",
            "hashes": {"sha256": "c"},
        },
        {"filename": "mlx-1.0.tar.gz", "url": "src", "hashes": {"sha256": "d"}},
        {"filename": "mlx-0.9.tar.gz", "url": "old", "hashes": {"sha256": "e"}},
    ]
    assert choose(Pin("mlx", "1.0"), files) == ("u14", "b")
    renamed = [dict(f, filename=f["filename"].replace("mlx", "numpy")) for f in files]
    assert choose(Pin("numpy", "1.0"), renamed) == ("src", "d")
    assert choose(Pin("numpy", "2.0"), renamed) is None


def test_release_sdist_sets_url_and_sha256(resources_script, formula, tmp_path):
    import hashlib

    sdist = tmp_path / "qwen_mlx-0.2.0.tar.gz"
    sdist.write_bytes(b"release")
    updated = resources_script.set_source(formula, sdist, None)
    assert (
        f'  url "https://files.pythonhosted.org/packages/source/q/qwen-mlx/{sdist.name}"' in updated
    )
    assert f'  sha256 "{hashlib.sha256(b"release").hexdigest()}"' in updated
    again = resources_script.set_source(updated, sdist, "file:///tmp/x.tar.gz")
    assert again.count('\n  sha256 "') == 1 and '  url "file:///tmp/x.tar.gz"' in again
    assert resources_script.read_resources(again) == resources_script.read_resources(formula)
