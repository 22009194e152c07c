"""Image classification: fine-tuning and linear probing on a dataset config (or an image folder)."""

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbench.core.configs import parse_key_values, shipped_path
from dropbench.core.corruptions import CORRUPTED_TOP1
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import config_field, option_items, require, yaml_value
from dropbench.core.identity import CORRUPTION_DROP, MCE, RunIdentity
from dropbench.tasks.registry import SuiteOptions, TaskIdentity, TransferTask, register, results_dir
from dropbench.transfer import CLS_PROTOCOLS


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="configs/classification/<name>.yaml, its name, or a folder")
    parser.add_argument("--protocol", choices=CLS_PROTOCOLS, required=True)
    parser.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dataset-config overrides, e.g. epochs=5")


@dataclass(frozen=True)
class ClsSettings:
    """What a classification transfer runs: a dataset config with its overrides (``--seed`` among them)."""

    protocol: str
    overrides: dict
    config: Any  # dropbench.transfer.cls_data.ClsConfig


def _load(args: argparse.Namespace) -> ClsSettings:
    from dropbench.transfer.cls_data import load_cls_config

    overrides = parse_key_values(args.overrides)
    if args.seed is not None:
        if overrides.get("seed", args.seed) != args.seed:
            raise UserInputError("--seed", f"{args.seed} differs from the override seed={overrides['seed']}; give one")
        overrides["seed"] = args.seed
    return ClsSettings(args.protocol, overrides, load_cls_config(args.dataset, overrides))


def _identity(settings: ClsSettings) -> TaskIdentity:
    from dropbench.transfer.classification import task_identity

    dataset, protocol, part = task_identity(settings.config, settings.protocol, settings.overrides)
    return TaskIdentity(dataset, protocol, part, transfer_seed=settings.config.seed)


def _execute(settings: ClsSettings, identity: RunIdentity, args: argparse.Namespace) -> None:
    from dropbench.transfer.classification import run_classification

    run_classification(
        identity,
        backbone=Path(args.backbone),
        protocol=settings.protocol,
        config=settings.config,
        work_dir=Path(args.work_dir),
        results_dir=results_dir(args),
        device=args.device,
        force=args.force,
        resume=args.resume,
    )


def _suite_options(index: int, raw: dict) -> SuiteOptions:
    prefix = f"transfers[{index}]"
    value = require(raw, "dataset", f"{prefix}.", str, "a classification dataset name, config or folder")
    protocol = require(raw, "protocol", f"{prefix}.", str, f"one of {', '.join(CLS_PROTOCOLS)}")
    if protocol not in CLS_PROTOCOLS:
        raise UserInputError(
            f"{prefix}.protocol", f"unknown protocol '{protocol}'{did_you_mean(protocol, CLS_PROTOCOLS)}"
        )
    existing = shipped_path(value)
    dataset = str(existing) if existing is not None else value
    overrides = option_items(raw.get("overrides"), f"{prefix}.overrides", lambda v, _: yaml_value(v))
    parsed = parse_key_values(overrides)
    if "seed" in parsed:
        raise UserInputError(f"{prefix}.overrides.seed", "give transfer seeds in the suite's 'transfer_seeds' list")
    return SuiteOptions(
        raw.get("name") or (lambda found: f"cls-{found.dataset}-{protocol}"),
        ("--dataset", dataset, "--protocol", protocol),
        tuple(overrides),
        config_field("dataset", set(parsed), f"{prefix}.dataset", f"{prefix}.overrides"),
    )


CLASSIFICATION_TASK = register(
    TransferTask(
        kind="cls",
        task="classification",
        help="classification: fine-tuning or linear probing",
        identity=_identity,
        execute=_execute,
        suite_options=_suite_options,
        add_arguments=_add_arguments,
        load=_load,
        suite_keys=("dataset", "protocol", "overrides"),
        headline_metrics=("top1", CORRUPTED_TOP1, CORRUPTION_DROP, MCE),  # the last three where measured
    )
)
