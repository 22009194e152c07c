"""How a ``dropbench`` process ends: as ``sys.exit(main())`` ends it, without the interpreter's teardown.

What a finished command needs of its end is done here, in the interpreter's own order: the exit code (a traceback
and 1 for an exception, SIGINT for Ctrl-C), the run's non-daemon threads joined, its ``atexit`` functions (logging's
flush and close, the loader workers' and trackers' shutdown), stdout and stderr flushed. What is left out is the
teardown of every module and object, which frees nothing a process that ends needs freed and costs seconds once
torch, timm and ``torch._dynamo`` are loaded (2.4 s of the 8.3 s that ``import dropbench.cli`` and the pretraining
stack take on 2 cores, measured with and without ``os._exit``). A suite's forked runs end the same way.
"""

import atexit
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from typing import NoReturn


def exit_code(main: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """``main(argv)``'s exit code as ``sys.exit`` makes it; an exception's traceback is printed, as Python does.
    Ctrl-C gives -SIGINT, which :func:`end` turns into the signal."""
    try:
        code = main(list(argv))
    except SystemExit as exit_:
        code = exit_.code
    except KeyboardInterrupt:
        traceback.print_exc()
        return -signal.SIGINT
    except BaseException:  # noqa: BLE001 - the command's traceback, as Python prints it
        traceback.print_exc()
        return 1
    if code is None:
        return 0
    if not isinstance(code, int):
        print(code, file=sys.stderr)
        return 1
    return code


def end(code: int) -> NoReturn:
    """End this process with ``code`` once its threads and ``atexit`` functions have run (-SIGINT: by SIGINT, as
    Python ends on an uncaught Ctrl-C)."""
    threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads, as at the interpreter's end
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a reader that went away (`| head`), or a stream closed already
            pass
    if code == -signal.SIGINT:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code & 0xFF)


def run_to_the_end(main: Callable[[list[str]], int | None]) -> NoReturn:
    """``sys.exit(main(sys.argv[1:]))``, ended by :func:`end`."""
    end(exit_code(main, sys.argv[1:]))
