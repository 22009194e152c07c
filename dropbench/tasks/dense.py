"""Dense tasks on mm*: detection (Mask R-CNN, mmdet) and semantic segmentation (UperNet, mmseg), each one
``DenseTask``, made into a transfer task by ``dense_task``. A third (keypoints, another detector) is one more."""

import argparse
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbench.core.configs import CONFIG_ROOT, DATA_ROOT, shipped_path
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import mm_value, option_items, require
from dropbench.core.identity import RunIdentity
from dropbench.core.tracking import check_trackers
from dropbench.tasks.registry import SuiteOptions, SuiteTask, TaskIdentity, TransferTask, register, results_dir


@dataclass(frozen=True)
class DenseTask:
    """An mm*-based transfer task as data.

    ``spec`` names the runner's ``TaskSpec`` (``dropbench/transfer/mm_runner.py``: metrics, wiring, data checks) as
    ``module:attribute``, a ``TaskSpec`` or a function that makes one. It is imported when a run or a suite needs it,
    never when the command line is parsed, which loads neither torch nor mm*. ``configs`` is the folder where a
    config given by name is found; ``example`` is one of them, for ``--help``."""

    kind: str  # dropbench transfer <kind>, kind: <kind> in a suite
    task: str  # the records' task
    help: str
    spec: str  # "module:attribute" of its TaskSpec
    configs: Path
    example: str
    headline_metrics: tuple[str, ...] = ()  # record metric names of the spec's metrics
    node_wide: bool = True  # mmengine under torchrun, every GPU of a node
    needs_cuda_ops: bool = True  # mmcv's compiled ops (RoIAlign, NMS, ...)

    def task_spec(self) -> Any:
        """The ``TaskSpec``, imported now."""
        module, _, name = self.spec.partition(":")
        found = getattr(importlib.import_module(module), name)
        return found() if callable(found) else found


@dataclass(frozen=True)
class DenseSettings:
    """What a dense task runs: an mm* config loaded with its ``--cfg-options``."""

    config: Path
    cfg_options: tuple[str, ...]
    cfg: Any  # mmengine's Config


def config_path(value: str, folder: Path, field_name: str) -> Path:
    """A config given as a path, or by name under the task's config folder."""
    config = shipped_path(value)
    if config is not None and config.is_file():
        return config
    named = folder / (value if value.endswith(".py") else f"{value}.py")
    if not named.is_file():
        hint = did_you_mean(Path(value).stem, [p.stem for p in folder.glob("*.py")])
        raise UserInputError(field_name, f"no such config '{value}'{hint}")
    return named.resolve()


def dense_task(dense: DenseTask) -> TransferTask:
    """The transfer task of an mm* config: ``--config`` (a path or a name in ``dense.configs``), ``--cfg-options``,
    ``--launcher``, ``--loggers``; the records' dataset is the config's ``dataset_name``, the protocol its name."""

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        folder = dense.configs.relative_to(DATA_ROOT) if dense.configs.is_relative_to(DATA_ROOT) else dense.configs
        parser.add_argument(
            "--config", required=True, help=f"an mm* config, or its name in {folder}/, e.g. {folder}/{dense.example}"
        )
        parser.add_argument("--cfg-options", nargs="+", metavar="key=value", help="mmengine config overrides")
        parser.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
        parser.add_argument(
            "--loggers", nargs="+", default=[], metavar="TRACKER", help="also log to: tensorboard, wandb, mlflow"
        )

    def load(args: argparse.Namespace) -> DenseSettings:
        from dropbench.transfer.mm_runner import load_config

        config = config_path(args.config, dense.configs, "--config")
        options = tuple(args.cfg_options or ())
        return DenseSettings(config, options, load_config(config, options))

    def identity(settings: DenseSettings) -> TaskIdentity:
        from dropbench.transfer.mm_runner import task_identity

        return TaskIdentity(*task_identity(settings.cfg, settings.config, settings.cfg_options))

    def execute(settings: DenseSettings, run: RunIdentity, args: argparse.Namespace) -> None:
        from dropbench.transfer.mm_runner import run_transfer

        loggers = check_trackers(args.loggers, "--loggers")
        run_transfer(
            dense.task_spec(),
            run,
            Path(args.backbone),
            settings.cfg,
            Path(args.work_dir),
            results_dir(args),
            launcher=args.launcher,
            force=args.force,
            loggers=loggers,
            resume=args.resume,
        )

    def suite_options(index: int, raw: dict) -> SuiteOptions:
        prefix = f"transfers[{index}]"
        value = require(raw, "config", f"{prefix}.", str, f"a {dense.task} config path or name")
        config = config_path(value, dense.configs, f"{prefix}.config")
        options = option_items(raw.get("cfg_options"), f"{prefix}.cfg_options", mm_value)
        loggers = check_trackers(raw.get("loggers", []), f"{prefix}.loggers")

        def rename(option: str) -> str:
            if option.startswith("--cfg-options "):
                return f"{prefix}.cfg_options.{option.removeprefix('--cfg-options ')}"
            return f"{prefix}.config"

        return SuiteOptions(
            raw.get("name") or f"{dense.kind}-{config.stem}",
            ("--config", str(config), *(("--loggers", *loggers) if loggers else ())),
            ("--cfg-options", *options) if options else (),
            rename,
        )

    def check_backbone(model: str, kwargs: dict, task: SuiteTask) -> None:
        """A backbone whose token grid is part of its weights (MLP-Mixer) has no sound protocol in some tasks."""
        from dropbench.transfer.backbone import backbone_fixed_size
        from dropbench.transfer.mm_runner import check_fixed_grid

        check_fixed_grid(dense.task_spec(), task.settings.cfg.copy(), backbone_fixed_size(model, kwargs), model)

    return TransferTask(
        kind=dense.kind,
        task=dense.task,
        help=dense.help,
        identity=identity,
        execute=execute,
        suite_options=suite_options,
        add_arguments=add_arguments,
        load=load,
        suite_keys=("config", "cfg_options", "loggers"),
        node_wide=dense.node_wide,
        needs_cuda_ops=dense.needs_cuda_ops,
        headline_metrics=dense.headline_metrics,
        default_seed=0,
        check_backbone=check_backbone,
        origin=dense.spec.partition(":")[0],
    )


DETECTION_TASK = register(
    dense_task(
        DenseTask(
            kind="det",
            task="detection",
            help="COCO detection + instance segmentation with Mask R-CNN (mmdet)",
            spec="dropbench.transfer.detection:DETECTION",
            configs=CONFIG_ROOT / "detection",
            example="mask_rcnn_cpu.py",
            headline_metrics=("box_AP", "mask_AP"),
        )
    )
)
SEGMENTATION_TASK = register(
    dense_task(
        DenseTask(
            kind="seg",
            task="segmentation",
            help="ADE20K semantic segmentation with UperNet (mmseg)",
            spec="dropbench.transfer.segmentation:SEGMENTATION",
            configs=CONFIG_ROOT / "segmentation",
            example="upernet_cpu.py",
            headline_metrics=("mIoU",),
        )
    )
)
