"""Image classification: fine-tuning and linear probing on a dataset config (or an image folder)."""

import argparse
from pathlib import Path

from dropbench.core.configs import parse_key_values, shipped_path
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import config_field, option_items, renamed_fields, require, yaml_value
from dropbench.tasks.registry import SuiteTask, TransferTask, register
from dropbench.transfer import CLS_PROTOCOLS


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="configs/classification/<name>.yaml, its name, or a folder")
    parser.add_argument("--protocol", choices=CLS_PROTOCOLS, required=True)
    parser.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dataset-config overrides, e.g. epochs=5")


def _run(args: argparse.Namespace) -> None:
    from dropbench.transfer.classification import transfer_classification

    overrides = parse_key_values(args.overrides)
    if args.seed is not None:
        if overrides.get("seed", args.seed) != args.seed:
            raise UserInputError("--seed", f"{args.seed} differs from the override seed={overrides['seed']}; give one")
        overrides["seed"] = args.seed
    transfer_classification(
        backbone=Path(args.backbone),
        dataset=args.dataset,
        protocol=args.protocol,
        work_dir=Path(args.work_dir),
        results_dir=Path(args.results) if args.results else None,
        overrides=overrides,
        device=args.device,
        force=args.force,
        resume=args.resume,
    )


def _from_suite(index: int, raw: dict) -> SuiteTask:
    from dropbench.transfer.classification import task_identity
    from dropbench.transfer.cls_data import load_cls_config

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
    with renamed_fields(config_field("dataset", set(parsed), f"{prefix}.dataset", f"{prefix}.overrides")):
        config = load_cls_config(dataset, parsed)
    dataset_name, _, part = task_identity(config, protocol, parsed)
    return SuiteTask(
        "cls",
        raw.get("name") or f"cls-{config.name}-{protocol}",
        dataset_name,
        protocol,
        part,
        arguments=("--dataset", dataset, "--protocol", protocol),
        trailing=tuple(overrides),
    )


CLASSIFICATION_TASK = register(
    TransferTask(
        kind="cls",
        task="classification",
        help="classification: fine-tuning or linear probing",
        run=_run,
        from_suite=_from_suite,
        add_arguments=_add_arguments,
        suite_keys=("dataset", "protocol", "overrides"),
        headline_metrics=("top1",),
    )
)
