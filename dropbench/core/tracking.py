"""Experiment trackers: TensorBoard (the default), Weights & Biases and MLflow.

Pretraining logs through :class:`Trackers` (``add_scalar``, ``flush``, ``close``: TensorBoard's ``SummaryWriter``
interface, fanned out to every chosen tracker); det/seg runs get the same choice as mmengine visualisation backends
(:func:`vis_backends`). Both work offline: wandb follows its own ``WANDB_MODE`` (``offline`` writes the run under
the run folder for ``wandb sync`` later) and ``WANDB_PROJECT`` (default ``dropbench``); MLflow logs to
``MLFLOW_TRACKING_URI`` or, without one, as MLflow itself does, to the file store ``mlruns/`` of the working
directory (all runs in one store; ``mlflow ui`` there shows them), under ``MLFLOW_EXPERIMENT_NAME`` (default
``dropbench``). A resumed run continues the same wandb and MLflow run.
"""

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

from dropbench.core.configs import flatten
from dropbench.core.errors import UserInputError
from dropbench.core.io import atomic_write_text

TRACKERS = ("tensorboard", "wandb", "mlflow")  # each also the name of the package it needs
_PIP_NAME = {"mlflow": "mlflow-skinny"}  # what to install where it differs
PROJECT = "dropbench"
MLFLOW_RUN_FILE = "mlflow_run_id"


def check_trackers(names: Any, field: str) -> tuple[str, ...]:
    """``names`` as a tuple of known, installed trackers, or a one-line error naming ``field``."""
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise UserInputError(field, f"{names!r} must be a list of trackers from {list(TRACKERS)}")
    for name in names:
        if name not in TRACKERS:
            raise UserInputError(field, f"unknown tracker '{name}'; choose from {list(TRACKERS)}")
        if importlib.util.find_spec(name) is None:
            raise UserInputError(field, f"'{name}' is not installed: pip install {_PIP_NAME.get(name, name)}")
    return tuple(dict.fromkeys(names))


def _run_id(out: Path) -> str:
    """One id per run folder: a resumed run logs into the run it started."""
    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]


def mlflow_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else ``./mlruns`` (MLflow 3 asks to allow its file store explicitly). Not inside a
    run folder: mmengine uploads a run folder's files as the run's artifacts."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return Path("mlruns").resolve().as_uri()


class _Wandb:
    def __init__(self, out: Path, name: str, config: dict):
        import wandb

        project = os.environ.get("WANDB_PROJECT", PROJECT)
        self.run = wandb.init(project=project, name=name, id=_run_id(out), resume="allow", dir=str(out), config=config)
        self.axes: set[str] = set()

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        axis = f"{tag.split('/')[0]}/step"  # per-epoch and per-update scalars each keep their own step
        if axis not in self.axes:
            self.run.define_metric(axis)
            self.run.define_metric(f"{tag.split('/')[0]}/*", step_metric=axis)
            self.axes.add(axis)
        self.run.log({tag: value, axis: step})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class _Mlflow:
    def __init__(self, out: Path, name: str, config: dict):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(mlflow_uri())
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
        experiment = self.client.get_experiment_by_name(experiment_name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(experiment_name)
        run_file = out / MLFLOW_RUN_FILE
        if run_file.is_file():
            self.run_id = run_file.read_text().strip()
        else:
            self.run_id = self.client.create_run(experiment_id, run_name=name).info.run_id
            atomic_write_text(run_file, self.run_id)
            for key, value in flatten(config).items():
                self.client.log_param(self.run_id, key, str(value)[:6000])
        self.client.update_run(self.run_id, status="RUNNING")

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, tag, float(value), step=int(step))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackers:
    """Every chosen tracker behind one ``add_scalar(tag, value, step)``; ``resume_step`` drops TensorBoard events
    logged after the checkpoint a resumed run restarts from."""

    def __init__(self, names: tuple[str, ...], out: Path, name: str, config: dict, resume_step: int | None = None):
        self.backends: list[Any] = []
        for tracker in names:
            if tracker == "tensorboard":
                from torch.utils.tensorboard import SummaryWriter

                self.backends.append(SummaryWriter(str(out / "tensorboard"), purge_step=resume_step))
            elif tracker == "wandb":
                self.backends.append(_Wandb(out, name, config))
            else:
                self.backends.append(_Mlflow(out, name, config))

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for backend in self.backends:
            backend.add_scalar(tag, value, step)

    def flush(self) -> None:
        for backend in self.backends:
            backend.flush()

    def close(self) -> None:
        for backend in self.backends:
            backend.close()


def vis_backends(names: tuple[str, ...], work_dir: Path, name: str) -> list[dict]:
    """mmengine visualisation backends for ``names``, beside the local one mmengine always keeps."""
    backends = [dict(type="LocalVisBackend")]
    for tracker in names:
        if tracker == "tensorboard":
            backends.append(dict(type="TensorboardVisBackend"))
        elif tracker == "wandb":
            project = os.environ.get("WANDB_PROJECT", PROJECT)
            init = dict(project=project, name=name, id=_run_id(work_dir), resume="allow", dir=str(work_dir))
            backends.append(dict(type="WandbVisBackend", init_kwargs=init))
        else:
            experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
            backends.append(
                dict(type="MLflowVisBackend", tracking_uri=mlflow_uri(), exp_name=experiment, run_name=name)
            )
    return backends
