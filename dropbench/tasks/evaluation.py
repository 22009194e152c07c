"""An export's own classifier, evaluated as it is (``dropbench.evaluation``): top-1/top-5 and calibration on a test
set, or top-1 under ImageNet-C's corruptions. One measurement per export, with no transfer seed: a suite runs it
once on each export, beside the transfers."""

import argparse
from pathlib import Path

from dropbench.core.errors import UserInputError
from dropbench.core.fields import require
from dropbench.core.identity import RunIdentity, StageName
from dropbench.tasks.registry import SuiteOptions, TaskIdentity, TransferTask, register, results_dir

DATA_HELP = "'mnist', 'fashion_mnist', a folder with val/<class>/*, an ImageNet-V2/R/A/Sketch or an ImageNet-C folder"


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help=DATA_HELP)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    parser.add_argument(
        "--corruptions",
        type=int,
        default=0,
        metavar="N",
        help="instead, top-1 on N test images under 15 corruptions x 5 severities (ImageNet-C's; mnist, fashion_mnist)",
    )
    parser.add_argument(
        "--mce-reference",
        metavar="CSV",
        help="with corruptions: an earlier run's RESULTS/corruptions/<run>.csv; its errors normalise the mCE",
    )


def _load(args: argparse.Namespace):
    from dropbench.evaluation import eval_settings

    reference = Path(args.mce_reference) if args.mce_reference else None
    return eval_settings(args.data, args.corruptions, reference, args.batch_size, args.workers, args.device)


def _identity(settings) -> TaskIdentity:
    return TaskIdentity(settings.dataset, settings.protocol, settings.part(), transfer_seed=0)


def _execute(settings, identity: RunIdentity, args: argparse.Namespace) -> None:
    from dropbench.evaluation import measure_export

    measure_export(Path(args.backbone), settings, identity, results_dir(args))


SUITE_KEYS = ("data", "corruptions", "mce_reference", "batch_size", "workers")


def _suite_options(index: int, raw: dict) -> SuiteOptions:
    prefix = f"transfers[{index}]."
    data = require(raw, "data", prefix, str, "mnist, fashion_mnist or a folder")
    arguments = ["--data", data]
    for key in SUITE_KEYS[1:]:
        if key in raw:
            value = raw[key]
            wanted = str if key == "mce_reference" else int
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise UserInputError(prefix + key, f"{value!r} is not {'a csv path' if wanted is str else 'a number'}")
            arguments += [f"--{key.replace('_', '-')}", str(value)]
    corrupted = "corruptions" in raw or raw.get("mce_reference")
    return SuiteOptions(
        raw.get("name") or (lambda found: f"eval-{found.dataset}{'-corruptions' if corrupted else ''}"),
        tuple(arguments),
        rename=lambda option: prefix + option.removeprefix("--").replace("-", "_"),
    )


EVAL_TASK = register(
    TransferTask(
        kind="eval",
        task="classification",
        help="the export's own classifier as it is: top-1, calibration, or top-1 under corruptions",
        identity=_identity,
        execute=_execute,
        suite_options=_suite_options,
        add_arguments=add_eval_arguments,
        load=_load,
        suite_keys=SUITE_KEYS,
        stage=StageName.EVAL,
        seeded=False,
    )
)
