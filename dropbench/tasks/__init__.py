"""Transfer tasks: the registry (``registry``) and the package's own tasks, registered on import in the order
transfer papers print them (detection, segmentation, classification), which the table's columns follow."""

import importlib

from dropbench.plugins import PLUGINS_VARIABLE
from dropbench.tasks.registry import (
    PRETRAIN_STAGE,
    SuiteTask,
    TransferTask,
    node_wide,
    register,
    stages,
    transfer_task,
    transfer_tasks,
)

for _module in ("dense", "classification"):
    importlib.import_module(f"dropbench.tasks.{_module}")

__all__ = [
    "PLUGINS_VARIABLE",
    "PRETRAIN_STAGE",
    "SuiteTask",
    "TransferTask",
    "node_wide",
    "register",
    "stages",
    "transfer_task",
    "transfer_tasks",
]
