"""Atomic file writes: a temp file beside the target, then ``os.replace``."""

import csv
import errno
import io
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dropbench.core.errors import RunFailed

DISK_FULL = frozenset({errno.ENOSPC, errno.EFBIG, errno.EDQUOT})  # no space, a file-size limit, a quota


def write_failed(path: str | os.PathLike | None, err: OSError) -> RunFailed:
    """The one line of a write the disk had no room for (or a file-size limit, a quota stopped)."""
    what = f"cannot write {path}" if path else "a write failed"
    return RunFailed(
        f"{what}: {err.strerror} (the disk is full, or a quota or file-size limit was reached); the file as it was "
        "is kept and nothing more is recorded; free space, then run again (--resume continues from the last checkpoint)"
    )


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then ``os.replace`` it into place."""
    return atomic_write_many({Path(path): write})[0]


def atomic_write_many(writes: Mapping[Path, Callable[[str], None]]) -> list[Path]:
    """Write each file into a temp file beside it, then ``os.replace`` them all: a write cut short (a full disk, a
    kill) leaves every one of them as it was, and the files are replaced together. A full disk (or a file-size
    limit) is a ``RunFailed`` naming the file; a killed write leaves only a hidden ``.<name>.*.tmp`` beside it."""
    temps: dict[Path, str] = {}
    path = None
    try:
        for path, write in writes.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temps[path] = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            os.close(fd)
            write(temps[path])
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except OSError as err:
        if err.errno in DISK_FULL and path is not None:
            raise write_failed(path, err) from None
        raise
    finally:
        for tmp in temps.values():
            Path(tmp).unlink(missing_ok=True)
    return list(writes)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def json_text(obj: Any) -> str:
    """How every JSON file of the project is written: indented, keys sorted."""
    return json.dumps(obj, indent=2, sort_keys=True) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json_text(obj))


def atomic_write_csv(path: str | os.PathLike, columns: list[str], rows: list[dict]) -> Path:
    """A CSV file with a header of ``columns`` and one line per row (missing values left empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def save_png(fig, path: str | os.PathLike) -> Path:
    """Write a matplotlib figure atomically as a PNG and release it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    written = atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return written
