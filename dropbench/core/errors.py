"""User-facing errors: one line that names the offending field and the fix; the CLI exits with code 2."""

import difflib
from collections.abc import Iterable


class UserInputError(Exception):
    """Bad config, data, checkpoint or command-line input."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """A suffix like " (did you mean 'vit_micro'?)" when a close match exists, else a list of the choices."""
    choices = sorted(choices)
    close = difflib.get_close_matches(value, choices, n=1)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (choose from: {', '.join(choices)})" if choices else ""
