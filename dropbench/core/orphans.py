"""A forked child (a data loader worker, mmengine's included) dies with the thread that forked it: Linux's
``PR_SET_PDEATHSIG`` sends it SIGKILL when its parent dies, SIGKILL included, so a killed, preempted or OOM-killed
run leaves no worker holding a core. Processes started with ``exec`` (torchrun's workers, a suite's runs) are not
forked children of Python and are not affected: torchrun and the suite stop their own."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
_parent = os.getpid()


def _note_parent() -> None:
    global _parent
    _parent = os.getpid()


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the child outlives a killed parent, as without this module
        return
    if os.getppid() != _parent:  # the parent died between fork and prctl
        os._exit(1)


if sys.platform.startswith("linux"):
    os.register_at_fork(before=_note_parent, after_in_child=_die_with_parent)
