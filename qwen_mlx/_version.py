"""qwen-mlx's version, from one place: `version` in pyproject.toml.

pip records it in the installed package's metadata (an editable install as well as a
wheel), and this reads it back from there, as Flask and Click do: a release changes one
line, and nothing can disagree with what pip reports. Reading metadata is file work, so
this module is imported only where the version is asked for (`qwen_mlx.__version__`,
`qwen-mlx --version`, the MCP handshake).
"""

from __future__ import annotations


def installed_version(distribution: str = "qwen-mlx") -> str:
    """The version pip installed, or `0+unknown` for a source tree that is only on
    `sys.path` (never installed, so it has no metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0+unknown"


__version__ = installed_version()
