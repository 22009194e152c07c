"""One run, one process: an OS lock on each run folder for the whole run, from its records check to its records.

The lock is ``flock`` on ``.<folder name>.lock`` beside the folder (inside, a ``--force`` that empties the folder
would take the lock file with it). The kernel releases it when the holding process dies, however it dies, so a lock
left by a killed run is never mistaken for a live one. The file names its holder (pid, host) for whoever waits.

A process that starts a run's command for it (the suite's local executor) takes the lock first and passes it down:
the child inherits the open lock (``pass_fds``) and finds its path in ``HELD_ENV``, so it runs without taking it
again, and the lock lasts while either of them lives. Under torchrun only rank 0 takes it: the ranks run one run.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HELD_ENV = "DROPBENCH_HELD_LOCKS"  # lock files a parent process holds for this one, os.pathsep-separated


def lock_path(folder: str | Path) -> Path:
    folder = Path(folder).resolve()
    return folder.parent / f".{folder.name}.lock"


class RunLock:
    """The lock of one run folder, as an open file: ``try_take`` without waiting, ``take`` waiting, ``release``."""

    def __init__(self, folder: str | Path):
        self.path = lock_path(folder)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a+")

    def fileno(self) -> int:
        return self.file.fileno()

    def holder(self) -> str:
        """Who holds it, as its file says: ``pid N on HOST``."""
        self.file.seek(0)
        return self.file.read().strip() or "another process"

    def try_take(self) -> bool:
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self._name_holder()
        return True

    def take(self) -> None:
        fcntl.flock(self.file, fcntl.LOCK_EX)
        self._name_holder()

    def _name_holder(self) -> None:
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        self.file.flush()

    def release(self) -> None:
        self.file.close()  # closing the last descriptor of the open file releases the flock

    def child_env(self) -> dict[str, str]:
        """The environment that tells a child started under this lock that it holds it."""
        held = [p for p in os.environ.get(HELD_ENV, "").split(os.pathsep) if p]
        return {HELD_ENV: os.pathsep.join([*held, str(self.path)])}


_HELD: set[RunLock] = set()  # the locks this process holds for its own run (``hold_run``)


def _close_in_forked_child() -> None:
    """A forked child (a data loader worker) must not hold its parent's run lock: with its copy of the open lock
    file it would keep the lock after the parent released it, and the next run in that folder would wait for it."""
    for lock in _HELD:
        lock.file.close()
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_forked_child)


def _held_by_parent(path: Path) -> bool:
    return str(path) in os.environ.get(HELD_ENV, "").split(os.pathsep)


@contextmanager
def hold_run(folder: str | Path, what: str, echo: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``folder``'s run lock for the block; where another process holds it, say who and wait for it."""
    if int(os.environ.get("RANK", "0")) != 0 or _held_by_parent(lock_path(folder)):
        yield
        return
    lock = RunLock(folder)
    try:
        if not lock.try_take():
            echo(f"{what} is running elsewhere ({lock.holder()}): waiting for it to end")
            lock.take()
        _HELD.add(lock)
        yield
    finally:
        _HELD.discard(lock)
        lock.release()
