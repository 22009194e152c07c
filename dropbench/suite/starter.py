"""CPU runs started from a process that has imported the stack already, instead of a new Python each.

A run's command (``python -m dropbench.cli ...``) spends seconds importing torch, timm and mm* before its first step,
more than the embedded runs spend training. The local executor therefore forks its runs from a *starter*: a Python
process of its own (started the usual way, and SIGKILLed with the suite's process) that imports the stack once, and
that the main thread keeps for the suites it runs one after another (``suite_starter``). It forks one child per run
and runs the command's ``main`` in it, in the run's folder, environment and log, with the run's lock passed down.
The child is what ``python -m dropbench.cli`` would have been: the log still names that command, and running it by
hand does the same.

Forking is only safe from a process that has started nothing: the starter runs no torch op, has no Python thread
but its own and never touches CUDA; where any of that fails to hold, the suite starts its runs the usual way. It is
used for CPU runs only. A GPU run starts the usual way: its imports are a small part of it.

How the starter ends: when a suite fails or the process that keeps it ends, when that process dies
(``PR_SET_PDEATHSIG``), never on a signal sent to the process group (SIGINT, SIGTERM), which go to the runs: a run
it started dies with it (``core.orphans``).
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib
import io
import json
import os
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from dropbench.core.ending import end, exit_code
from dropbench.core.lock import HELD_ENV
from dropbench.core.orphans import die_with_parent

# What every run imports before its first step (torch._dynamo: the first optimizer step imports it).
STACK = ("torch", "torch._dynamo", "timm", "dropbench.cli", "dropbench.tasks", "dropbench.pretrain.train")
STATUS = struct.Struct("i")
STARTED_IN = os.getcwd()  # the starter's folder
MESSAGE_BYTES = 1 << 20


class StartedRun:
    """A run the starter forked, as ``subprocess.Popen`` is used for one: ``pid``, ``poll``, ``wait``,
    ``terminate``, ``kill``, ``returncode`` (negative: the signal that ended it)."""

    def __init__(self, pid: int, status_fd: int):
        self.pid = pid
        self.returncode: int | None = None
        self._status = os.fdopen(status_fd, "rb")

    def poll(self) -> int | None:
        if self.returncode is None and select.select([self._status], [], [], 0)[0]:
            self._read_status()
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            self._read_status()
        return self.returncode

    def _read_status(self) -> None:
        data = self._status.read(STATUS.size)
        # A starter that died took the run with it (its children die with it): as a SIGKILL.
        self.returncode = STATUS.unpack(data)[0] if len(data) == STATUS.size else -signal.SIGKILL
        self._status.close()

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Starter:
    """The suite's side: ``start`` a run's ``dropbench`` arguments, or None where the starter cannot (then the
    caller starts the command itself). Started at the first ``start``; ``close`` ends it."""

    def __init__(self) -> None:
        self._socket: socket.socket | None = None
        self._process: subprocess.Popen | None = None
        self._usable = True
        self._environment: dict[str, str] = {}

    def start(
        self,
        arguments: Sequence[str],
        log_fd: int,
        cwd: str | Path,
        env: dict[str, str],
        pass_fds: Sequence[int] = (),
        imports: Sequence[str] = (),
    ) -> StartedRun | None:
        if not self._usable or (self._socket is None and not self._open()):
            return None
        if _read_at_start(self._environment, env):  # the starter's interpreter started with other settings
            return None
        request = {"arguments": list(arguments), "cwd": str(cwd), "env": env, "imports": list(imports)}
        try:
            socket.send_fds(self._socket, [json.dumps(request).encode()], [log_fd, *pass_fds])
            reply, fds, _, _ = socket.recv_fds(self._socket, MESSAGE_BYTES, 1)
        except OSError:
            reply, fds = b"", []
        started = json.loads(reply) if reply else {}
        if "pid" not in started:  # forking became unsafe, or the starter is gone: the next runs start the usual way
            for fd in fds:
                os.close(fd)
            self._usable = False  # kept open while it refuses: the runs it started go on (``close`` ends them)
            return None
        return StartedRun(started["pid"], fds[0])

    def _open(self) -> bool:
        self._environment = dict(os.environ)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from dropbench.suite.starter import main; main()", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            preexec_fn=die_with_parent,  # noqa: PLW1509 - a prctl only
        )
        theirs.close()
        self._socket = ours
        ready = ours.recv(MESSAGE_BYTES)
        if ready != b"ready":
            self.close()
            self._usable = False
            return False
        return True

    @property
    def pid(self) -> int | None:
        """The starter's process (None until the first ``start`` opens it)."""
        return self._process.pid if self._process is not None else None

    def serves(self, environ: dict[str, str]) -> bool:
        """Whether runs in ``environ`` can still be forked from here (one not opened yet: it opens in ``environ``)."""
        if self._socket is None:
            return self._usable
        alive = self._process is not None and self._process.poll() is None
        return alive and self._usable and not _read_at_start(self._environment, environ)

    def close(self) -> None:
        """End the starter (a run it started and that still runs dies with it)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._process is not None:
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

    def __enter__(self) -> Starter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_kept: Starter | None = None  # the main thread's, between suites (``suite_starter``)


@contextlib.contextmanager
def suite_starter() -> Iterator[Starter]:
    """The starter a suite forks its CPU runs from. The main thread keeps one for the suites it runs one after
    another (a sweep script's, a test session's), so that they import the stack once; it is replaced where the
    environment now differs in what an interpreter reads as it starts, or where it can no longer fork. A suite that
    ends by an exception closes it and its runs end with it; the one kept ends with the process. Another thread's
    suite has a starter of its own."""
    global _kept
    if threading.current_thread() is not threading.main_thread():
        with Starter() as starter:
            yield starter
        return
    if _kept is None or not _kept.serves(dict(os.environ)):
        if _kept is None:
            atexit.register(_close_kept, os.getpid())
        else:
            _kept.close()
        _kept = Starter()
    try:
        yield _kept
    except BaseException:
        _kept.close()
        _kept = None
        raise


def _close_kept(owner: int) -> None:
    if _kept is not None and os.getpid() == owner:  # not in a forked child that inherited it
        _kept.close()


# What a run's environment may set that a forked run applies itself (``_become_the_run``); any other variable that
# differs from the starter's may have been read as the interpreter or a library started.
APPLIED_IN_THE_RUN = {"OMP_NUM_THREADS", "MKL_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", HELD_ENV}


def _read_at_start(starters: dict[str, str], runs: dict[str, str]) -> set[str]:
    """The variables that differ between the starter's environment and a run's, beyond ``APPLIED_IN_THE_RUN``."""
    return {key for key in starters.keys() | runs.keys() if starters.get(key) != runs.get(key)} - APPLIED_IN_THE_RUN


def _why_not_usable() -> str:
    """Why forking from here would not be safe, or '' where it is."""
    import torch

    if threading.active_count() > 1:
        return f"{threading.active_count()} Python threads"
    if torch.cuda.is_initialized():
        return "CUDA is initialised"
    return ""


def serve(connection: socket.socket) -> None:
    """The starter's side: import the stack, say ``ready``, then fork one run per request until the suite closes
    the connection."""
    for name in STACK:
        importlib.import_module(name)
    freeze_imported()
    why = _why_not_usable()
    connection.send(b"ready" if not why else why.encode())
    if why:
        return
    statuses: dict[int, int] = {}  # child pid → the write end of its status pipe
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    selector = selectors.DefaultSelector()
    selector.register(connection, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    own = {connection.fileno(), wake_r, wake_w, selector.fileno()}
    while True:
        for key, _ in selector.select():
            if key.fileobj is not connection:
                os.read(wake_r, 4096)
                _reap(statuses)
            elif not _serve_request(connection, own, statuses):
                return


def _serve_request(connection: socket.socket, own: set[int], statuses: dict[int, int]) -> bool:
    """Fork the run the suite asks for and send it its pid and status pipe; False when the suite has closed."""
    message, fds, _, _ = socket.recv_fds(connection, MESSAGE_BYTES, 64)
    if not message:
        return False
    request = json.loads(message)
    _import(request["imports"])
    freeze_imported()
    why = _why_not_usable()
    if why:  # no more forks; the runs it started go on, and their statuses are still sent
        connection.send(json.dumps({"refused": why}).encode())
    else:
        status_r, status_w = os.pipe()
        pid = _fork_run(request, fds, own | set(statuses.values()) | {status_r, status_w})
        statuses[pid] = status_w
        socket.send_fds(connection, [json.dumps({"pid": pid}).encode()], [status_r])
        os.close(status_r)
    for fd in fds:
        os.close(fd)
    return True


def _import(names: Sequence[str]) -> None:
    """What the next run imports anyway; one that fails is left to the run, which says why."""
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001, S112 - the run imports it again and fails with its own message
            continue


def freeze_imported() -> None:
    """What the starter imported is never garbage: frozen out of the cyclic collector, a run's collections look at
    its own objects only (mmengine's datasets collect twice as they load: 0.45 s each with the stack in view, on 2
    cores), and the forked runs share those pages instead of copying them as the collector walks them."""
    gc.collect()
    gc.freeze()


def _reap(statuses: dict[int, int]) -> None:
    while statuses:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        status_w = statuses.pop(pid, None)
        if status_w is not None:
            os.write(status_w, STATUS.pack(os.waitstatus_to_exitcode(status)))
            os.close(status_w)


def _fork_run(request: dict, fds: list[int], starters_fds: set[int]) -> int:
    """Fork the run's process (dies with this one: ``core.orphans``); returns its pid. The child never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    try:
        _become_the_run(request, fds[0], starters_fds)
        from dropbench.cli import main

        end(exit_code(main, request["arguments"]))
    finally:
        os._exit(1)  # only where becoming the run failed: never back into the starter's loop


def _become_the_run(request: dict, log_fd: int, starters_fds: set[int]) -> None:
    """What ``python -m dropbench.cli`` would start as: the run's folder, environment, log, threads, signals."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for fd in starters_fds:
        os.close(fd)
    for target in (1, 2):
        os.dup2(log_fd, target)
    os.close(log_fd)
    encoding = sys.stdout.encoding
    sys.stdout, sys.stderr = _unbuffered(1, encoding), _unbuffered(2, encoding, "backslashreplace")
    os.chdir(request["cwd"])
    # The entries an interpreter makes of the folder it starts in (``-m``'s first, PYTHONPATH's empty or relative
    # ones) named the starter's folder; a run's name its own.
    sys.path[:] = [os.getcwd() if entry in ("", STARTED_IN) else entry for entry in sys.path]
    os.environ.clear()
    os.environ.update(request["env"])
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) > 0:  # torch read the starter's when it loaded; a new process reads this
        import torch

        torch.set_num_threads(int(threads))
    import dropbench.cli

    sys.argv = [dropbench.cli.__file__, *request["arguments"]]
    atexit._clear()  # the starter's; the run's own run at its end


def _unbuffered(fd: int, encoding: str, errors: str = "strict") -> io.TextIOWrapper:
    """A text stream on ``fd`` as ``PYTHONUNBUFFERED`` makes it (the suite's runs set it)."""
    return io.TextIOWrapper(open(fd, "wb", buffering=0, closefd=False), encoding, errors, write_through=True)


def main() -> NoReturn:
    """The starter process (``python -c``, its socket's descriptor as the argument): serve, then end."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # the process group's signals are for the runs
        signal.signal(signum, signal.SIG_IGN)
    serve(socket.socket(fileno=int(sys.argv[1])))
    end(0)
