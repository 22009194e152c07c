"""The ``dropbench`` command: ``schedule``, ``pretrain``, ``transfer cls|det|seg``, ``compare``, ``plot``,
``suite``, ``demo``, ``import``, ``eval`` and ``data shard``."""

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from dropbench.core.ending import run_to_the_end
from dropbench.core.errors import RunFailed, UserInputError
from dropbench.core.io import DISK_FULL, write_failed
from dropbench.core.lock import hold_run
from dropbench.core.log import log_to_stdout

# The demo's runs side by side on a CPU machine, each with half its cores: on 2 cores, 1.58× the throughput of one run
# at a time with both (measured; docs/suites.md).
DEMO_JOBS = 2

METRIC_CHOICES_HELP = "headline (default: AP^box, AP^mask, mIoU, top-1), all, or a list (box_AP,mIoU); csv has all"
FORCE_HELP = "run it even though its records exist (they move to records/superseded/)"
TRANSFER_RESUME_HELP = "continue the run from the newest checkpoint in --work-dir (start it if there is none)"


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"error: {self.prog}: {message}\n")


def _schedule(args: argparse.Namespace) -> None:
    from dropbench.core.configs import parse_key_values
    from dropbench.core.settings import from_arguments
    from dropbench.pretrain.config import Regime
    from dropbench.pretrain.schedules import DropSetting

    if args.regime:
        regime = Regime.load(args.regime, parse_key_values(args.overrides))
        schedules = {f"{regime.name} ({kind})": s for kind, s in regime.schedules().items()}
    elif args.overrides:
        raise UserInputError("overrides", "key=value overrides vary a regime: give --regime NAME with them")
    elif args.rate is None:
        raise UserInputError("--rate", "missing; give --rate (with --mode, --shape, --cutoff-epoch) or --regime NAME")
    else:
        setting = from_arguments(DropSetting, args, args.setting_fields)
        label = f"{args.mode}/{args.shape} rate {args.rate}"
        schedules = {label + (f", cutoff {args.cutoff_epoch}" if args.mode != "standard" else ""): setting}
    rates = {label: s.rates(args.epochs, args.iters_per_epoch) for label, s in schedules.items()}
    if args.format == "json":
        values = {label: [float(r) for r in values] for label, values in rates.items()}
        print(json.dumps(next(iter(values.values())) if not args.regime else values))
        return
    if not args.out:
        raise UserInputError("--out", "--format png needs --out FILE.png")
    from dropbench.plots import plot_schedules

    plot_schedules(rates, args.iters_per_epoch, args.out)
    print(args.out)


def _pretrain(args: argparse.Namespace) -> None:
    from dropbench.core.configs import parse_key_values
    from dropbench.core.models import BackboneConfig
    from dropbench.pretrain.config import Recipe, Regime, split_overrides
    from dropbench.pretrain.diagnostics import DiagnosticsConfig
    from dropbench.pretrain.train import pretrain

    # `--diagnostics every=.. batches=..` takes the key=value items that name a diagnostics setting, and `--variant`
    # the values that name the variants; the others are overrides, wherever they stand on the line.
    diagnostic_items = [i for i in args.diagnostics or [] if i.partition("=")[0] in DiagnosticsConfig.keys()]
    override_items = args.overrides + [i for i in args.diagnostics or [] if i not in diagnostic_items]
    diagnostics = DiagnosticsConfig.parse(diagnostic_items) if args.diagnostics is not None else None
    overrides = split_overrides(parse_key_values(override_items))
    variant = split_overrides(parse_key_values(args.variant or [], "--variant"))
    backbone = BackboneConfig.load(args.backbone, overrides["backbone"] | variant["backbone"])
    regime = Regime.load(args.regime, overrides["regime"] | variant["regime"])
    recipe = Recipe.load(args.recipe, overrides["recipe"], variant=variant["recipe"])
    with hold_run(args.out, f"the run in '{args.out}'"):
        summary = pretrain(
            backbone,
            regime,
            recipe,
            args.data,
            args.out,
            results_dir=args.results,
            resume=args.resume,
            device=args.device,
            diagnostics=diagnostics,
            force=args.force,
            data_name=args.data_name,
        )
    if summary.finished_earlier or not summary.main_process:
        return
    print(
        f"{backbone.name} / {regime.name}: train_loss {summary.train_loss:.4f}"
        + (f" ({summary.final_train_loss:.4f} with dropout off)" if summary.final_train_loss is not None else "")
        + f", val_top1 {summary.val_top1:.2f}% "
        f"→ {summary.run_dir / 'export'}"
    )


def _plot_diagnostics(args: argparse.Namespace) -> None:
    from dropbench.plots import plot_diagnostics

    for path in plot_diagnostics(args.run_dirs, Path(args.out)):
        print(path)


def _read_stats(results: str, baseline: str):
    """``(records, stats)`` under ``results``, each skipped file and repeated run said on stderr."""
    from dropbench.compare import read_records, summarise

    records, skipped = read_records(results)
    for message in skipped:
        print(f"warning: {message}", file=sys.stderr)
    return records, summarise(records, baseline=baseline, warn=lambda m: print(f"warning: {m}", file=sys.stderr))


def _plot_ablation(args: argparse.Namespace) -> None:
    from dropbench.ablation import plot_ablation

    _, stats = _read_stats(args.results, args.baseline)
    for path in plot_ablation(stats, args.x, Path(args.out), baseline=args.baseline, metrics=args.metrics):
        print(path)


def _plot_deltas(args: argparse.Namespace) -> None:
    from dropbench.deltas import beyond_floor_line, column_units, delta_table, plot_delta_table

    records, stats = _read_stats(args.results, args.baseline)
    table = delta_table(stats, column_units(records))
    for path in plot_delta_table(table, Path(args.out)):
        print(path)
    line = beyond_floor_line(table)
    if line:
        print(line)


def _plot_schedules(args: argparse.Namespace) -> None:
    from dropbench.suite import load_suite
    from dropbench.suite.schedules import plot_suite_schedules

    for path in plot_suite_schedules(load_suite(args.suite), Path(args.out), args.iters_per_epoch):
        print(path)


def _transfer(args: argparse.Namespace) -> None:
    from dropbench.tasks import transfer_task

    with hold_run(args.work_dir, f"the run in '{args.work_dir}'"):
        transfer_task(args.task).run(args)


def _import(args: argparse.Namespace) -> None:
    from dropbench.importing import import_official, import_weights

    source, out = Path(args.source), Path(args.out)
    if (out / "backbone.json").exists() and not args.force:
        raise UserInputError("--out", f"'{out}' already holds an export; pass --force to replace it")
    if args.kind == "official":
        path = import_official(source, out, args.ema, args.regime, args.recipe, args.seed)
    elif args.kind == "timm":
        weights = Path(args.weights) if args.weights else None
        path = import_weights(
            args.source, weights, out, args.regime or "timm_pretrained", args.recipe or "timm", args.seed or 0
        )
    else:
        if not args.backbone:
            raise UserInputError("--backbone", "--from file needs the backbone config the weights belong to")
        regime, recipe = args.regime or "imported", args.recipe or "imported"
        path = import_weights(args.backbone, source, out, regime, recipe, args.seed or 0)
    print(path)


def _eval(args: argparse.Namespace) -> None:
    """``dropbench eval``: the ``eval`` task (``dropbench transfer eval``) with no work folder, which it needs not."""
    from dropbench.tasks import transfer_task

    transfer_task("eval").run(argparse.Namespace(**vars(args), seed=None, work_dir=None, force=True, resume=False))


def _compare(args: argparse.Namespace) -> None:
    from dropbench.compare import read_records, records_csv, render, summarise
    from dropbench.core.io import atomic_write_text

    def warn(message: str) -> None:
        print(f"warning: {message}", file=sys.stderr)

    records, skipped = read_records(args.results, include_paper=args.include_paper)
    if skipped and args.strict:
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise UserInputError("--strict", f"{skipped[0]}{more}; remove or re-run them, or leave out --strict")
    for message in skipped:
        warn(message)
    if args.format == "records":
        text = records_csv(records)
    else:
        text = render(summarise(records, baseline=args.baseline, warn=warn), args.format, args.metrics)
    if args.out:
        atomic_write_text(args.out, text)
    print(text, end="")


def _shard(args: argparse.Namespace) -> None:
    from dropbench.pretrain.shards import write_shards

    info = write_shards(args.folder, args.out, args.shard_size)
    counts = ", ".join(
        f"{split} {part['num_samples']} images in {len(part['filenames'])} shards"
        for split, part in info["splits"].items()
    )
    print(f"{args.out}: {counts}; train with --data {args.out}")


def _suite(args: argparse.Namespace) -> None:
    from dropbench.suite import run_suite

    code = run_suite(args.suite, executor=args.executor, dry_run=args.dry_run, gpus=args.gpus, jobs=args.jobs)
    if code:
        raise SystemExit(code)  # some run failed: the summary above lists them with their logs


def _demo(args: argparse.Namespace) -> None:
    from dropbench.demo import run_demo

    code = run_demo(Path(args.suite) if args.suite else None, jobs=args.jobs)
    if code:
        raise SystemExit(code)


def build_parser() -> argparse.ArgumentParser:
    from dropbench.core.settings import add_arguments
    from dropbench.pretrain.schedules import DropSetting
    from dropbench.suite import executor_classes
    from dropbench.tasks import transfer_tasks

    parser = _Parser(prog="dropbench", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    schedule = commands.add_parser("schedule", help="print or plot a per-iteration drop-rate schedule")
    # the regime's schedule fields (a cutoff is given for the run itself, not scaled from the paper's 300 epochs)
    setting_fields = add_arguments(schedule, DropSetting, skip=("reference_epochs",), optional=True)
    schedule.add_argument("--regime", help="a regime's schedules instead (name or file), varied by key=value")
    schedule.add_argument(
        "overrides", nargs="*", metavar="key=value", help="with --regime: its variant, e.g. dropout.cutoff_epoch=25"
    )
    schedule.add_argument("--epochs", type=int, required=True)
    schedule.add_argument("--iters-per-epoch", type=int, required=True)
    schedule.add_argument("--format", choices=("json", "png"), default="json")
    schedule.add_argument("--out", help="PNG file for --format png")
    schedule.set_defaults(run=_schedule, setting_fields=setting_fields)

    pretrain = commands.add_parser("pretrain", help="train a backbone under one regime and export it")
    pretrain.add_argument("--backbone", required=True, help="configs/backbones/<name>.yaml, its name, or a timm name")
    pretrain.add_argument("--regime", required=True, help="configs/regimes/<name>.yaml or its name")
    pretrain.add_argument("--recipe", required=True, help="configs/pretrain/<name>.yaml or its name")
    pretrain.add_argument(
        "--data",
        required=True,
        help="'mnist', 'fashion_mnist' (Debian's dataset-fashion-mnist), 'synthetic' (random images, for speed) or an "
        "ImageNet-layout folder (train/, val/)",
    )
    pretrain.add_argument("--out", required=True, help="the run folder")
    pretrain.add_argument("--results", default="results", help="where the result record goes (default: results)")
    pretrain.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    pretrain.add_argument("--force", action="store_true", help=FORCE_HELP)
    pretrain.add_argument(
        "--data-name",
        help="the dataset name in the records (default: mnist, imagenet-1k for an ImageNet-1k folder, "
        "else the folder's name)",
    )
    pretrain.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    pretrain.add_argument(
        "--diagnostics",
        nargs="*",
        metavar="every=N batches=K",
        help="measure gradient norm, model distance, GDV and GDE every N updates from K mini-batches "
        "(defaults every=400 batches=8 full=1024: ĝ from 1024 training images)",
    )
    pretrain.add_argument(
        "--variant",
        nargs="+",
        metavar="key=value",
        help="values that name the run's variants, as a suite's sweep does (a recipe's then reads cpu.epochs=20)",
    )
    pretrain.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="overrides: the recipe's (epochs=10 lr=1e-3: they label it cpu·epochs=10), the regime's "
        "(dropout.cutoff_epoch=25) and the backbone's (kwargs.depth=8), which name variants "
        "(early_dropout.cutoff_epoch=25)",
    )
    pretrain.set_defaults(run=_pretrain)

    transfer = commands.add_parser("transfer", help="fine-tune an exported backbone on a downstream task")
    tasks = transfer.add_subparsers(dest="task", required=True, parser_class=_Parser)

    for kind, task in transfer_tasks().items():
        command = tasks.add_parser(kind, help=task.help)
        command.add_argument(
            "--backbone", required=True, help="a pretraining export folder (backbone.safetensors + .json)"
        )
        command.add_argument("--work-dir", required=True)
        command.add_argument("--results", default="results", help="where result records go (default: results)")
        seed_default = "the task config's" if task.default_seed is None else task.default_seed
        command.add_argument(
            "--seed", type=int, default=task.default_seed, help=f"the transfer seed (default: {seed_default})"
        )
        command.add_argument("--force", action="store_true", help=FORCE_HELP)
        command.add_argument("--resume", action="store_true", help=TRANSFER_RESUME_HELP)
        task.add_arguments(command)
        command.set_defaults(run=_transfer)

    imports = commands.add_parser(
        "import", help="released weights as an export: the paper's checkpoints, timm weights or any state dict"
    )
    imports.add_argument("--from", dest="kind", choices=("official", "timm", "file"), required=True)
    imports.add_argument("source", help="official: the checkpoint; timm: the model name; file: the weights file")
    imports.add_argument("--out", required=True, help="the export folder to write")
    imports.add_argument("--weights", help="timm: a local .safetensors/.pth/.bin (default: the local HF cache)")
    imports.add_argument("--backbone", help="file: the backbone config (or timm name) the weights belong to")
    imports.add_argument("--ema", action="store_true", help="official: take model_ema instead of model")
    imports.add_argument("--regime", help="the regime the records name (official: read from the checkpoint's args)")
    imports.add_argument("--recipe", help="the recipe the records name (official: read from the checkpoint's args)")
    imports.add_argument("--seed", type=int, help="the pretraining seed the records name")
    imports.add_argument("--force", action="store_true", help="replace an export already in --out")
    imports.set_defaults(run=_import)

    evaluation = commands.add_parser(
        "eval", help="top-1/top-5 and calibration of an export's classifier, or its top-1 under corruptions"
    )
    evaluation.add_argument("--backbone", required=True, help="an export folder")
    evaluation.add_argument("--results", default="results", help="records go to RESULTS/records ('' for none)")
    transfer_tasks()["eval"].add_arguments(evaluation)
    evaluation.set_defaults(run=_eval)

    compare = commands.add_parser("compare", help="the comparison table from result records")
    compare.add_argument("--results", default="results", help="folder of records, searched recursively")
    compare.add_argument(
        "--format",
        choices=("md", "csv", "latex", "html", "records"),
        default="md",
        help="the table (md, latex, html), its tidy cells (csv) or the records themselves, every field (records)",
    )
    compare.add_argument("--metrics", default="headline", help="the metrics md/latex/html show: " + METRIC_CHOICES_HELP)
    compare.add_argument("--baseline", default="no_dropout", help="the regime Δ is measured against")
    compare.add_argument(
        "--include-paper", action="store_true", help="add the paper's published numbers (results/paper/, shipped)"
    )
    compare.add_argument(
        "--strict", action="store_true", help="a file that is not a readable record is an error (exit 2), not a warning"
    )
    compare.add_argument("--out", help="also write the table to this file")
    compare.set_defaults(run=_compare)

    plot = commands.add_parser("plot", help="figures (PNG) from finished runs")
    plots = plot.add_subparsers(dest="figure", required=True, parser_class=_Parser)
    plot_diagnostics = plots.add_parser("diagnostics", help="gradient norm, model distance, GDV and GDE per run")
    plot_diagnostics.add_argument("run_dirs", nargs="+", help="pretraining run folders made with --diagnostics")
    plot_diagnostics.add_argument("--out", default=".", help="folder for diagnostics_<metric>.png")
    plot_diagnostics.set_defaults(run=_plot_diagnostics)
    plot_ablation = plots.add_parser("ablation", help="a headline metric against one swept field, from records")
    plot_ablation.add_argument("--results", default="results", help="folder of records, searched recursively")
    plot_ablation.add_argument("--x", required=True, help="the swept field: dropout.cutoff_epoch, cutoff_epoch, ...")
    plot_ablation.add_argument("--metrics", default="headline", help="the metrics drawn: " + METRIC_CHOICES_HELP)
    plot_ablation.add_argument("--baseline", default="no_dropout", help="the regime drawn as a band, Δ against it")
    plot_ablation.add_argument("--out", default=".", help="folder for ablation_<metric>.png and ablation.csv")
    plot_ablation.set_defaults(run=_plot_ablation)
    plot_deltas = plots.add_parser("deltas", help="each regime's Δ against the baseline, its interval or noise floor")
    plot_deltas.add_argument("--results", default="results", help="folder of records, searched recursively")
    plot_deltas.add_argument("--baseline", default="no_dropout", help="the regime each Δ is against")
    plot_deltas.add_argument("--out", default=".", help="folder for deltas.png and deltas.csv")
    plot_deltas.set_defaults(run=_plot_deltas)
    plot_schedules = plots.add_parser("schedules", help="the drop-rate schedules of a suite's regimes, one figure")
    plot_schedules.add_argument("suite", help="a suite file")
    plot_schedules.add_argument(
        "--iters-per-epoch", type=int, help="default: the recipe's, from its train_subset and batch size (else 100)"
    )
    plot_schedules.add_argument("--out", default="schedules.png", help="the PNG to write (and its .csv beside it)")
    plot_schedules.set_defaults(run=_plot_schedules)

    suite = commands.add_parser(
        "suite", help="run a suite: backbones × regimes × seeds pretrained, then transferred (finished runs skipped)"
    )
    suite.add_argument("suite", help="a suite file, e.g. configs/suites/embedded.yaml")
    suite.add_argument(
        "--dry-run", action="store_true", help="check the whole suite and print the plan (finished runs marked)"
    )
    executors = executor_classes()
    suite.add_argument(
        "--executor",
        choices=list(executors),
        default="local",
        help="; ".join(f"{name}: {cls.help}" for name, cls in executors.items()),
    )
    suite.add_argument(
        "--gpus",
        type=int,
        default=None,
        help="local executor: GPUs to use (default: every visible one; 0: the CPU). Pretraining and det/seg run "
        "under torchrun on all of them, classification transfers one per GPU, N at a time",
    )
    suite.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="local executor on the CPU: runs side by side, each with cores/N threads (default 1: one after another)",
    )
    suite.set_defaults(run=_suite)

    data = commands.add_parser("data", help="prepare data: 'shard' packs an image folder into WebDataset shards")
    data_tools = data.add_subparsers(dest="tool", required=True, parser_class=_Parser)
    shard = data_tools.add_parser(
        "shard", help="FOLDER (train/, val/ of class folders) → OUT/{train,val}-NNNNNN.tar and _info.json"
    )
    shard.add_argument("folder")
    shard.add_argument("out")
    shard.add_argument("--shard-size", type=int, default=1000, help="images per shard (default 1000)")
    shard.set_defaults(run=_shard)

    demo = commands.add_parser(
        "demo",
        help="the embedded default: the demo suite (a micro ViT on MNIST under several regimes → detection, "
        "segmentation, classification), then the table and figures",
    )
    demo.add_argument("--suite", help="another suite file to run as the demo (default: configs/suites/demo.yaml)")
    demo.add_argument(
        "--jobs", type=int, default=DEMO_JOBS, help=f"runs side by side on the CPU (default {DEMO_JOBS}), as for suite"
    )
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    log_to_stdout()
    try:
        args = build_parser().parse_args(argv)  # the parser reads the task and executor registries: plugins load
        args.run(args)
    except UserInputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a write of mmengine's or tensorboard's own that the disk had no room for
        if err.errno not in DISK_FULL:
            raise
        print(f"error: {write_failed(err.filename, err)}", file=sys.stderr)
        return 1
    return 0


def run() -> NoReturn:
    """The ``dropbench`` command: :func:`main` on the command line's arguments, then the process ends as
    ``sys.exit`` ends it, less the interpreter's seconds-long teardown of torch (``core.ending``)."""
    run_to_the_end(main)


if __name__ == "__main__":
    run()
