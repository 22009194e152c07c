"""User-facing errors, each one line: bad input names the offending field and the fix (the CLI exits with code 2);
a run that cannot go on says where it stopped and what to try (exit code 1)."""

import difflib
from collections.abc import Iterable
from pathlib import Path


class UserInputError(Exception):
    """Bad config, data, checkpoint or command-line input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class RunFailed(Exception):
    """A run that cannot go on (its training loss is no longer finite): nothing of it is exported or recorded."""


def diverged(stage: str, loss: float, where: str, lr: float, checkpoint: Path | None) -> RunFailed:
    """The one line of a run whose training loss stopped being finite: where, the lr, what is left, what to try."""
    kept = str(checkpoint) if checkpoint is not None and checkpoint.is_file() else "none (none was written yet)"
    return RunFailed(
        f"{stage}: the training loss is {loss} at {where} (lr {lr:.3g}); nothing is exported or recorded; the last "
        f"good checkpoint: {kept}; try a lower lr, or clip_grad (e.g. clip_grad=1.0)"
    )


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """A suffix like " (did you mean 'vit_micro'?)" when a close match exists, else a list of the choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(value, choices, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (choose from: {', '.join(choices)})" if choices else ""
