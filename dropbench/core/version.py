"""The code version written into every record and export."""

import subprocess
from functools import lru_cache

from dropbench import __version__
from dropbench.core.configs import DATA_ROOT


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(DATA_ROOT), *args], capture_output=True, text=True, check=True, timeout=10
    ).stdout.strip()


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout (with ``+dirty`` for local edits), else the package version."""
    if not (DATA_ROOT / ".git").exists():
        return __version__
    try:
        commit = _git("rev-parse", "--short=12", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{commit}+dirty" if dirty else commit
