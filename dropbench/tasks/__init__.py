"""Transfer tasks: the registry (``registry``) and the package's own tasks, registered on import in the order
transfer papers print them (detection, segmentation, classification), which the table's columns follow, then the
evaluation of an export as it is."""

import importlib

from dropbench.plugins import PLUGINS_VARIABLE
from dropbench.tasks.dense import DenseTask, dense_task
from dropbench.tasks.registry import (
    PRETRAIN_KIND,
    SuiteOptions,
    SuiteTask,
    TaskIdentity,
    TransferTask,
    node_wide,
    register,
    run_kinds,
    transfer_task,
    transfer_tasks,
)

for _module in ("dense", "classification", "evaluation"):
    importlib.import_module(f"dropbench.tasks.{_module}")

__all__ = [
    "PLUGINS_VARIABLE",
    "PRETRAIN_KIND",
    "DenseTask",
    "SuiteOptions",
    "SuiteTask",
    "TaskIdentity",
    "TransferTask",
    "dense_task",
    "node_wide",
    "register",
    "run_kinds",
    "transfer_task",
    "transfer_tasks",
]
