"""A forked child (a data loader worker, mmengine's included) dies with the thread that forked it: Linux's
``PR_SET_PDEATHSIG`` sends it SIGKILL when its parent dies, SIGKILL included, so a killed, preempted or OOM-killed
run leaves no worker holding a core. A suite's runs ask for the same in their ``preexec_fn`` (``die_with_parent``;
it holds across ``exec``). torchrun's own workers are started by torchrun, not by Python's fork: a SIGTERM'd
torchrun stops them, a SIGKILL'd one cannot."""

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
_parent = os.getpid()


def _note_parent() -> None:
    global _parent
    _parent = os.getpid()


def die_with_parent() -> None:
    """In a child between fork and exec (or a forked worker): SIGKILL it when the thread that started it ends."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the child outlives a killed parent, as without this module
        return
    if os.getppid() != _parent:  # the parent died between fork and prctl
        os._exit(1)


if sys.platform.startswith("linux"):
    os.register_at_fork(before=_note_parent, after_in_child=die_with_parent)
