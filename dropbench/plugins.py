"""Plugins: modules outside the package that register transfer tasks (``dropbench.tasks.register``) or suite
executors (``dropbench.suite.executors.register_executor``) when imported.

The modules named in the ``DROPBENCH_PLUGINS`` environment variable (comma-separated) and in the
``dropbench.plugins`` entry-point group (``[project.entry-points."dropbench.plugins"]`` of a plugin's own
``pyproject.toml``) are imported the first time a registry is read. The variable passes on to every process a suite
starts, so each run knows the same tasks as the suite that planned it.
"""

import importlib
import os
from importlib.metadata import entry_points

from dropbench.core.errors import UserInputError

PLUGINS_VARIABLE = "DROPBENCH_PLUGINS"
PLUGINS_GROUP = "dropbench.plugins"
_loaded = False


def load_plugins() -> None:
    """Import the plugin modules once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    names = [name.strip() for name in os.environ.get(PLUGINS_VARIABLE, "").split(",") if name.strip()]
    names += [point.value for point in entry_points(group=PLUGINS_GROUP)]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise UserInputError(PLUGINS_VARIABLE, f"cannot import the plugin '{name}' ({err})") from None
