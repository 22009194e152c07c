"""Detection (Mask R-CNN, mmdet) and semantic segmentation (UperNet, mmseg): the dense tasks, one mm* config each."""

import argparse
from pathlib import Path

from dropbench.core.configs import CONFIG_ROOT, shipped_path
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import mm_value, option_items, renamed_fields, require
from dropbench.core.tracking import check_trackers
from dropbench.tasks.registry import SuiteTask, TransferTask, register


def _arguments(folder: str, example: str):
    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--config", required=True, help=f"an mm* config, e.g. configs/{folder}/{example}")
        parser.add_argument("--cfg-options", nargs="+", metavar="key=value", help="mmengine config overrides")
        parser.add_argument("--launcher", choices=("none", "pytorch", "slurm"), default="none")
        parser.add_argument(
            "--loggers", nargs="+", default=[], metavar="TRACKER", help="also log to: tensorboard, wandb, mlflow"
        )

    return add


def _transfer(kind: str):
    if kind == "det":
        from dropbench.transfer.detection import DETECTION, transfer_detection

        return DETECTION, transfer_detection
    from dropbench.transfer.segmentation import SEGMENTATION, transfer_segmentation

    return SEGMENTATION, transfer_segmentation


def _runner(kind: str):
    def run(args: argparse.Namespace) -> None:
        _, transfer = _transfer(kind)
        transfer(
            backbone=Path(args.backbone),
            config=Path(args.config),
            work_dir=Path(args.work_dir),
            results_dir=Path(args.results) if args.results else None,
            cfg_options=args.cfg_options or [],
            launcher=args.launcher,
            seed=args.seed,
            force=args.force,
            loggers=check_trackers(args.loggers, "--loggers"),
            resume=args.resume,
        )

    return run


def _config_path(value: str, folder: Path, field_name: str) -> Path:
    """A config given as a path, or by name under ``configs/<task folder>/``."""
    config = shipped_path(value)
    if config is not None and config.is_file():
        return config
    named = folder / (value if value.endswith(".py") else f"{value}.py")
    if not named.is_file():
        hint = did_you_mean(Path(value).stem, [p.stem for p in folder.glob("*.py")])
        raise UserInputError(field_name, f"no such config '{value}'{hint}")
    return named.resolve()


def _from_suite(kind: str, folder: str):
    def from_suite(index: int, raw: dict) -> SuiteTask:
        from dropbench.transfer.mm_runner import load_config, task_identity  # mmengine: only for det/seg suites

        prefix = f"transfers[{index}]"
        value = require(raw, "config", f"{prefix}.", str, f"an {folder} config path or name")
        config = _config_path(value, CONFIG_ROOT / folder, f"{prefix}.config")
        options = option_items(raw.get("cfg_options"), f"{prefix}.cfg_options", mm_value)

        def rename(loader_field: str) -> str:
            if loader_field.startswith("--cfg-options "):
                return f"{prefix}.cfg_options.{loader_field.removeprefix('--cfg-options ')}"
            return f"{prefix}.config"

        with renamed_fields(rename):
            cfg = load_config(config, options)
        dataset, protocol, part = task_identity(cfg, config, options)
        loggers = check_trackers(raw.get("loggers", []), f"{prefix}.loggers")
        return SuiteTask(
            kind,
            raw.get("name") or f"{kind}-{config.stem}",
            dataset,
            protocol,
            part,
            arguments=("--config", str(config), *(("--loggers", *loggers) if loggers else ())),
            trailing=("--cfg-options", *options) if options else (),
            config=cfg,
        )

    return from_suite


def _backbone_check(kind: str):
    def check(model: str, kwargs: dict, task: SuiteTask) -> None:
        """A backbone whose token grid is part of its weights (MLP-Mixer) has no sound protocol here."""
        from dropbench.transfer.backbone import backbone_fixed_size
        from dropbench.transfer.mm_runner import check_fixed_grid

        spec, _ = _transfer(kind)
        check_fixed_grid(spec, task.config.copy(), backbone_fixed_size(model, kwargs), model)

    return check


def _dense(kind: str, task: str, folder: str, help_text: str, example: str, headline: tuple[str, ...]) -> TransferTask:
    return TransferTask(
        kind=kind,
        task=task,
        help=help_text,
        run=_runner(kind),
        from_suite=_from_suite(kind, folder),
        add_arguments=_arguments(folder, example),
        suite_keys=("config", "cfg_options", "loggers"),
        node_wide=True,
        needs_cuda_ops=True,
        headline_metrics=headline,
        default_seed=0,
        check_backbone=_backbone_check(kind),
    )


DETECTION_TASK = register(
    _dense(
        "det",
        "detection",
        "detection",
        "COCO detection + instance segmentation with Mask R-CNN (mmdet)",
        "mask_rcnn_cpu.py",
        ("box_AP", "mask_AP"),
    )
)
SEGMENTATION_TASK = register(
    _dense(
        "seg",
        "segmentation",
        "segmentation",
        "ADE20K semantic segmentation with UperNet (mmseg)",
        "upernet_cpu.py",
        ("mIoU",),
    )
)
