"""Progress and diagnostic messages go through the standard library's logger ``dropbench`` (each module's logger
sits below it), so that an application can route, filter or silence them. The command line prints them on stdout,
one line each, as they come (``log_to_stdout``)."""

import logging
import sys

LOGGER = "dropbench"


class _Stdout(logging.StreamHandler):
    """A handler on whatever ``sys.stdout`` is when a message comes (a redirected or captured stdout)."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self):  # noqa: D102 - logging.StreamHandler's attribute
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:
        pass


def log_to_stdout(level: int = logging.INFO) -> None:
    """Print the package's messages of ``level`` and above on stdout, bare (the command line's setting)."""
    logger = logging.getLogger(LOGGER)
    if not any(isinstance(handler, _Stdout) for handler in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
