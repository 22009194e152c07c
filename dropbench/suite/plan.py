"""The plan: a validated suite file expanded into its runs, each pretraining before the transfers of its export."""

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dropbench.core.configs import check_keys, load_yaml
from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError
from dropbench.core.fields import non_empty_list
from dropbench.core.identity import RunIdentity
from dropbench.core.layout import EXPORT_DIR, epoch_export_dir
from dropbench.suite.executors import executor_classes
from dropbench.suite.schema import (
    SUITE_KEYS,
    Pretraining,
    Variant,
    check_sweeps,
    check_transfer_pairings,
    export_section,
    grid_section,
    output_section,
    pretrain_section,
    suite_tasks,
    tasks_for,
)
from dropbench.tasks import PRETRAIN_KIND, SuiteTask, transfer_task

PRETRAIN_FOLDER = "pretrain"  # the pretraining run folder inside its grid point's folder


@dataclass(frozen=True)
class Run:
    """One command of the plan: a pretraining run or one transfer of its export."""

    name: str  # "<backbone>-<regime>-seed<seed>/<task>", unique in the suite
    kind: str  # "pretrain" or a transfer task's kind ("det", "seg", "cls", ...)
    command: tuple[str, ...]  # the ``dropbench`` arguments
    work_dir: Path
    log: Path
    results_dir: Path
    identity: RunIdentity  # what its records are called
    after: str | None = None  # the pretraining run whose export this run reads

    def records(self) -> list[Path]:
        """This run's result records that exist."""
        return self.identity.existing_records(self.results_dir)

    def finished(self) -> bool:
        return bool(self.records())

    def shell_command(self) -> str:
        return shlex.join(["dropbench", *self.command])


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    runs: list[Run]  # each pretraining run before the transfers of its export
    data: str
    runs_dir: Path
    results_dir: Path
    grid: tuple[int, int, int, int]  # backbones, regimes, seeds, transfer tasks × transfer seeds
    sections: dict[str, Any]  # each executor's section of the file (``slurm``), validated
    regimes: dict[str, Any] = field(default_factory=dict)  # regime name → Regime
    recipe_variants: int = 1  # the recipes a sweep of the pretrain section makes
    recipes: dict[tuple[str, int], Any] = field(default_factory=dict)  # (recipe name, seed) → Recipe

    def run(self, name: str) -> Run:
        return next(run for run in self.runs if run.name == name)


def load_suite(path: str | Path) -> Suite:
    """Validate a suite file and expand its grid into the ordered plan; nothing is run or written.

    Every backbone × regime pairing is built (on the meta device) with its drop controller and every transfer
    config is loaded with its options, so that a mistake fails here, before any run is started or submitted."""
    path = Path(path)
    raw = load_yaml(path, "suite")
    sections = {cls.section: cls for cls in executor_classes().values() if cls.section}
    check_keys(raw, (*SUITE_KEYS, *sections), "")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise UserInputError("name", f"{name!r} is not a plain name")
    pretrains = "backbones" in raw or "exports" not in raw  # a suite of imported exports needs no pretraining
    grid = grid_section(raw) if pretrains else None
    seeds = non_empty_list(raw, "seeds", int, "whole-number seeds") if "seeds" in raw else [0]
    transfer_seeds = (
        non_empty_list(raw, "transfer_seeds", int, "whole-number seeds") if "transfer_seeds" in raw else [0]
    )
    pretraining = pretrain_section(raw, seeds) if pretrains else None
    if grid and pretraining:
        check_sweeps(grid, pretraining)
    tasks = suite_tasks(raw.get("transfers"))
    runs_dir, results_dir = output_section(raw, name)
    parsed_sections = {section: cls.parse_section(raw.get(section)) for section, cls in sections.items()}
    seeded = transfer_seeds != [0]  # folders name the transfer seed when there are several
    backbone_tasks = {}  # backbone index → its tasks, each pairing checked before anything runs
    for index, variant in enumerate(grid.backbones if grid else []):
        field_name = f"backbones[{index}]"
        backbone_tasks[index] = tasks_for(grid.transfers.get(index), tasks, f"{field_name}.transfers")
        check_transfer_pairings(variant.config.model, variant.config.kwargs, backbone_tasks[index], field_name)
    sources: list[tuple[Run | None, _Source, list[SuiteTask]]] = []
    recipe_swept = pretraining is not None and len(pretraining.variants) > 1
    for index, regime_name in grid.pairs if grid else []:
        for recipe in pretraining.variants if pretraining else []:
            for seed in seeds:
                point = _Point(grid.backbones[index], grid.regimes[regime_name], recipe, seed, recipe_swept)
                run = _pretraining_run(point, pretraining, runs_dir, results_dir)
                source = _Source(run.work_dir.parent, run.work_dir / EXPORT_DIR, run.identity, run.name)
                sources.append((run, source, backbone_tasks[index]))
                sources += [(None, s, backbone_tasks[index]) for s in _epoch_sources(point, pretraining, run)]
    for index, (export, sidecar) in enumerate(export_section(raw)):
        check_transfer_pairings(sidecar.model, sidecar.kwargs, tasks, f"exports[{index}]")
        identity = sidecar.pretraining_identity()
        point = runs_dir / f"{identity.backbone}-{identity.regime}-seed{identity.seed}"
        sources.append((None, _Source(point, export, identity, None), tasks))
    runs = []
    per_export = sum(len(transfer_seeds) if task.transfer_seed is None else 1 for task in tasks)
    for pretraining_run, source, source_tasks in sources:
        runs += [pretraining_run] if pretraining_run else []
        for task in source_tasks:
            task_seeds = transfer_seeds if task.transfer_seed is None else [task.transfer_seed]
            named = seeded and task.transfer_seed is None
            runs += [_transfer_run(source, results_dir, task, s, named) for s in task_seeds]
    return Suite(
        name=name,
        path=path,
        runs=runs,
        data=pretraining.data if pretraining else "",
        runs_dir=runs_dir,
        results_dir=results_dir,
        grid=(len(grid.backbones), len(grid.regimes), len(seeds), per_export) if grid else (0, 0, 0, per_export),
        sections=parsed_sections,
        regimes={name: variant.config for name, variant in grid.regimes.items()} if grid else {},
        recipes=pretraining.recipes if pretraining else {},
        recipe_variants=len(pretraining.variants) if pretraining else 1,
    )


@dataclass(frozen=True)
class _Point:
    """One pretraining of the grid: a backbone, regime and recipe (each maybe a sweep's variant) and a seed."""

    backbone: Variant
    regime: Variant
    recipe: Variant
    seed: int
    recipe_swept: bool  # the folder names the recipe when the suite sweeps it

    def folder(self) -> str:
        recipe = [self.recipe.config.name] if self.recipe_swept else []
        return "-".join([self.backbone.config.name, self.regime.config.name, *recipe, f"seed{self.seed}"])

    def variant_items(self) -> list[str]:
        """The swept values of every part, as ``pretrain --variant`` takes them."""
        return [*self.backbone.variant_items(), *self.regime.variant_items(), *self.recipe.variant_items()]


def _pretraining_run(point: _Point, pretraining: Pretraining, runs_dir: Path, results_dir: Path) -> Run:
    from dropbench.pretrain.config import pretrain_identity

    recipe = pretraining.recipes[(point.recipe.config.name, point.seed)]
    folder = runs_dir / point.folder() / PRETRAIN_FOLDER
    variant = point.variant_items()
    return Run(
        name=f"{point.folder()}/{PRETRAIN_FOLDER}",
        kind=PRETRAIN_KIND,
        command=(
            "pretrain",
            *("--backbone", point.backbone.argument, "--regime", point.regime.argument),
            *("--recipe", pretraining.recipe_argument, "--data", pretraining.data),
            *("--data-name", pretraining.data_name),
            *("--out", str(folder), "--results", str(results_dir)),
            f"seed={point.seed}",
            *pretraining.overrides,
            *(("--variant", *variant) if variant else ()),
        ),
        work_dir=folder,
        log=runs_dir / point.folder() / f"{PRETRAIN_FOLDER}.log",
        results_dir=results_dir,
        identity=pretrain_identity(point.backbone.config, point.regime.config, recipe, pretraining.data_name),
    )


def _epoch_sources(point: _Point, pretraining: Pretraining, run: Run) -> list["_Source"]:
    """The exports a pretraining writes before its last epoch (recipe ``export_epochs``), each transferred from a
    folder of its own beside the grid point's: ``<point>@epoch<N>/``."""
    recipe = pretraining.recipes[(point.recipe.config.name, point.seed)]
    if not point.regime.config.train:
        return []
    if run.finished():  # a run made before these epochs were listed holds no export of them
        missing = recipe.missing_epoch_exports(run.work_dir, recipe.epochs)
        if missing:
            raise UserInputError(
                "pretrain.overrides.export_epochs",
                f"{run.name} has finished without an export after epoch {missing[0]}; leave the epoch out, or run "
                "that pretraining afresh (its command with --force)",
            )
    point_dir = run.work_dir.parent
    return [
        _Source(
            point_dir.with_name(f"{point_dir.name}@epoch{epoch}"),
            run.work_dir / epoch_export_dir(epoch),
            run.identity.at_epoch(epoch),
            run.name,
        )
        for epoch in recipe.earlier_export_epochs
    ]


@dataclass(frozen=True)
class _Source:
    """Where a grid point's transfers read their export: a pretraining run of the suite, or an imported export."""

    point: Path  # the grid point's folder under the runs folder
    export: Path
    identity: RunIdentity  # the pretraining's (or the import's)
    after: str | None  # the pretraining run to wait for; None for an export that exists


def _transfer_run(source: _Source, results_dir: Path, task: SuiteTask, transfer_seed: int, seeded: bool) -> Run:
    """A transfer of the source's export, in a folder named after the task (and the seed when ``seeded``)."""
    folder = f"{task.name}-tseed{transfer_seed}" if seeded else task.name
    work_dir, definition = source.point / folder, transfer_task(task.kind)
    return Run(
        name=f"{source.point.name}/{folder}",
        kind=task.kind,
        command=(
            "transfer",
            task.kind,
            *("--backbone", str(source.export), *task.arguments),
            *("--work-dir", str(work_dir), "--results", str(results_dir)),
            *("--seed", str(transfer_seed)),
            *task.trailing,
        ),
        work_dir=work_dir,
        log=source.point / f"{folder}.log",
        results_dir=results_dir,
        identity=source.identity.transfer(
            definition.task, task.dataset, task.protocol, transfer_seed, task.part, definition.stage
        ),
        after=source.after,
    )


def describe(suite: Suite, commands: list[tuple[Run, str]] | None = None) -> str:
    """The plan, one line per run in the order they go (each transfer after its pretraining): whether it is
    finished, its name and its command (``commands``: each run with the exact command line an executor starts)."""
    backbones, regimes, seeds, tasks = suite.grid
    finished = {run.name for run in suite.runs if run.finished()}
    pretraining = sum(run.kind == PRETRAIN_KIND for run in suite.runs)
    each = f"each with {tasks} transfer(s)"
    exports = {run.command[run.command.index("--backbone") + 1] for run in suite.runs if run.kind != PRETRAIN_KIND}
    if pretraining and len(exports) > pretraining:  # exports over pretraining time (recipe export_epochs)
        each = f"{len(exports)} exports over their epochs, each with up to {tasks} transfer(s)"
    elif pretraining and len(suite.runs) != pretraining * (1 + tasks):  # some backbones list their own transfers
        each = f"each with up to {tasks} transfer(s)"
    recipes = f" × {suite.recipe_variants} recipe(s)" if suite.recipe_variants > 1 else ""
    grid = f"{backbones} backbone(s) × {regimes} regime(s){recipes} × {seeds} seed(s)"
    lines = [
        f"suite '{suite.name}': {grid} → {pretraining} "
        f"pretraining run(s), {each}: {len(suite.runs)} runs, {len(finished)} finished, "
        f"{len(suite.runs) - len(finished)} to run"
    ]
    width = max(len(run.name) for run in suite.runs)
    for run, command in commands or [(run, run.shell_command()) for run in suite.runs]:
        status = "finished" if run.name in finished else "run"
        lines.append(f"  {status:<8}  {run.name:<{width}}  $ {command}")
    if suite.data and suite.data not in EMBEDDED_ARRAYS and not Path(suite.data).is_dir():
        lines.append(f"note: pretrain.data '{suite.data}' is not a folder on this machine")
    return "\n".join(lines)
