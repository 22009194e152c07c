"""The code version written into every record and export."""

import subprocess
from functools import lru_cache

from dropbench import __version__
from dropbench.core.configs import DATA_ROOT


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the checkout (with ``+dirty`` for local edits), else the package version."""
    if not (DATA_ROOT / ".git").exists():
        return __version__
    try:
        commit = subprocess.run(
            ["git", "-C", str(DATA_ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(DATA_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{commit}+dirty" if dirty else commit
