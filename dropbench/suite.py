"""Suites: a grid of pretraining runs (backbones × regimes × seeds) and the transfers of each export, run once.

``dropbench suite configs/suites/<name>.yaml [--dry-run] [--executor local|slurm]``

A suite file is validated as a whole (every backbone, regime, recipe with its overrides, and task config with its
options is loaded) before anything runs. The plan puts each pretraining run before the transfers that read its
export; a run whose result records exist is finished and is skipped, so a second invocation runs nothing. Each run
is one ``python -m dropbench.cli ...`` process whose stdout and stderr are appended to ``<run>.log`` beside its
folder; a failed run is reported with that log at the end and costs only the transfers that needed its export.

Executors: ``local`` runs one subprocess after another; ``slurm`` submits every run through submitit, a transfer
with ``--dependency=afterok:<its pretraining job>``, waits for them all, and cancels the transfers of a failed
pretraining (Slurm would otherwise leave them pending forever).
"""

import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from dropbench import CONFIG_ROOT, REPO_ROOT
from dropbench.errors import UserInputError, did_you_mean
from dropbench.identity import Part, RunIdentity
from dropbench.io import load_yaml

TRANSFER_KINDS = {"det": "detection", "seg": "segmentation", "cls": "classification"}
DENSE_CONFIG_FOLDERS = {"det": "detection", "seg": "segmentation"}
CLS_PROTOCOLS = ("finetune", "linear")
SUITE_KEYS = ("name", "backbones", "regimes", "seeds", "transfer_seeds", "pretrain", "transfers", "output", "slurm")
PRETRAIN_KEYS = ("recipe", "data", "data_name", "overrides")
BACKBONE_KEYS = ("backbone", "regimes")
OUTPUT_KEYS = ("runs", "results")
TASK_KEYS = {
    "det": ("kind", "name", "config", "cfg_options"),
    "seg": ("kind", "name", "config", "cfg_options"),
    "cls": ("kind", "name", "dataset", "protocol", "overrides"),
}
RESOURCE_KEYS = ("partition", "cpus", "gpus", "mem_gb", "time", "setup", "additional")
STAGES = ("pretrain", *TRANSFER_KINDS)  # a run's stage: "pretrain" or a transfer kind
PRETRAIN_FOLDER = "pretrain"  # the pretraining run folder inside its grid point's folder
SLURM_FOLDER = "slurm"  # submitit's job files, under the runs folder
# Slurm states after which a job will not write a result any more.
SLURM_ACTIVE_STATES = {
    *("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT"),
    *("REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "RESV_DEL_HOLD"),
}


# ------------------------------------------------------------------------------------------------ the plan


@dataclass(frozen=True)
class Run:
    """One command of the plan: a pretraining run or one transfer of its export."""

    name: str  # "<backbone>-<regime>-seed<seed>/<task>", unique in the suite
    stage: str  # "pretrain", "det", "seg" or "cls"
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
class SlurmResources:
    """What one Slurm job asks for; ``gpus`` > 1 runs pretraining and det/seg under torchrun on one node."""

    partition: str | None = None
    cpus: int = 1
    gpus: int = 0
    mem_gb: float | None = None
    time: int = 60  # minutes
    setup: tuple[str, ...] = ()  # shell lines before the run, e.g. "module load cuda"
    additional: dict = field(default_factory=dict)  # any other sbatch option, e.g. {"account": "x", "qos": "y"}


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    runs: list[Run]  # each pretraining run before the transfers of its export
    data: str
    runs_dir: Path
    results_dir: Path
    grid: tuple[int, int, int, int]  # backbones, regimes, seeds, transfer tasks × transfer seeds
    slurm: dict[str, SlurmResources]  # per stage
    regimes: dict[str, Any] = field(default_factory=dict)  # regime name → Regime
    recipes: dict[int, Any] = field(default_factory=dict)  # seed → Recipe

    def run(self, name: str) -> Run:
        return next(run for run in self.runs if run.name == name)


@contextmanager
def _field(rename: Callable[[str], str]) -> Iterator[None]:
    """Re-raise a loader's UserInputError under the suite file's field name."""
    try:
        yield
    except UserInputError as err:
        message = str(err).removeprefix(f"{err.field}: ")
        raise UserInputError(rename(err.field), message) from None


def _config_field(loader: str, overridden: set[str], file_field: str, overrides_field: str) -> Callable[[str], str]:
    """Name a config loader's error field in suite terms: the config itself, one of its keys, or an override.

    Loaders name their config ``<loader>`` (``recipe``, ``dataset``), a key of it ``<loader>.<key>``, and an
    unknown override by its bare key."""

    def rename(loader_field: str) -> str:
        if loader_field == loader:
            return file_field
        key = loader_field.removeprefix(f"{loader}.")
        if key in overridden or not loader_field.startswith(f"{loader}."):
            return f"{overrides_field}.{key}"
        return f"{file_field}.{key}"

    return rename


def _check_keys(data: dict, allowed: Sequence[str], prefix: str) -> None:
    for key in data:
        if key not in allowed:
            raise UserInputError(f"{prefix}{key}", f"unknown key{did_you_mean(str(key), allowed)}")


def _require(data: dict, key: str, prefix: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in data or data[key] is None:
        raise UserInputError(f"{prefix}{key}", f"missing; give {what}")
    if not isinstance(data[key], kind):
        raise UserInputError(f"{prefix}{key}", f"{data[key]!r} is not {what}")
    return data[key]


def _non_empty_list(data: dict, key: str, item: type, what: str, prefix: str = "") -> list:
    values = _require(data, key, prefix, list, f"a list of {what}")
    if not values:
        raise UserInputError(f"{prefix}{key}", f"is empty; give at least one of {what}")
    for index, value in enumerate(values):
        if not isinstance(value, item) or isinstance(value, bool):
            raise UserInputError(f"{prefix}{key}[{index}]", f"{value!r} is not one of {what}")
    if len(set(values)) != len(values):
        duplicate = next(v for v in values if values.count(v) > 1)
        raise UserInputError(f"{prefix}{key}", f"lists {duplicate!r} twice")
    return values


def _check_unique(names: list[str], key: str, what: str) -> None:
    """The newest of ``names`` must differ from the others: records and run folders are named after it."""
    if names[-1] in names[:-1]:
        raise UserInputError(
            f"{key}[{len(names) - 1}]", f"is the {what} '{names[-1]}' again ({key}[{names.index(names[-1])}])"
        )


def _existing_path(value: str) -> Path | None:
    """A file or folder given relative to the working folder or to the repository (where ``configs/`` is)."""
    for candidate in (Path(value), REPO_ROOT / value):
        if candidate.exists():
            return candidate.resolve()
    return None


def _yaml_value(value: Any) -> str:
    """A value as the ``key=value`` text that ``parse_overrides`` (YAML) reads back as the same value."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def _mm_value(value: Any, field_name: str) -> str:
    """A value as the ``--cfg-options`` text that mmengine's DictAction reads back as the same value."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        inner = ",".join(_mm_value(item, field_name) for item in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    raise UserInputError(field_name, f"{value!r}: give nested keys dotted (a.b=1), values as scalars or lists")


def _options(raw: Any, field_name: str, render: Callable[[Any, str], str]) -> list[str]:
    """Overrides given as a mapping ``{key: value}`` or as a list of ``key=value`` strings."""
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [f"{key}={render(value, f'{field_name}.{key}')}" for key, value in raw.items()]
    if isinstance(raw, list):
        for index, item in enumerate(raw):
            if not isinstance(item, str) or "=" not in item or item.startswith("="):
                raise UserInputError(f"{field_name}[{index}]", f"{item!r} is not key=value")
        return list(raw)
    raise UserInputError(field_name, f"{raw!r} is neither a mapping nor a list of key=value")


def _parse_minutes(value: Any, field_name: str) -> int:
    """Minutes, or one of Slurm's time formats: "M", "M:S", "H:M:S", "D-H", "D-H:M", "D-H:M:S"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        days, dash, clock = value.partition("-") if "-" in value else ("0", "", value)
        try:
            day_count, numbers = int(days), [int(part) for part in clock.split(":")]
        except ValueError:
            numbers = []
        if numbers and len(numbers) <= 3 and min(numbers) >= 0 and day_count >= 0:
            if dash:
                hours, minutes, seconds = (numbers + [0, 0])[:3]
            else:
                hours, minutes, seconds = {1: [0, *numbers, 0], 2: [0, *numbers], 3: numbers}[len(numbers)]
            total = day_count * 1440 + hours * 60 + minutes + math.ceil(seconds / 60)
            if total > 0:
                return total
    raise UserInputError(field_name, f"{value!r} is not a time (minutes, 'H:M:S' or 'D-H:M:S')")


def _resources(raw: dict, field_name: str, base: SlurmResources) -> SlurmResources:
    values = {}
    for key, value in raw.items():
        name = f"{field_name}.{key}"
        if key == "partition":
            if not isinstance(value, str):
                raise UserInputError(name, f"{value!r} is not a partition name")
        elif key in ("cpus", "gpus"):
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "cpus" else 0):
                raise UserInputError(name, f"{value!r} is not a {'positive' if key == 'cpus' else 'whole'} number")
        elif key == "mem_gb":
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise UserInputError(name, f"{value!r} is not a positive number of GB")
        elif key == "time":
            value = _parse_minutes(value, name)
        elif key == "setup":
            if not isinstance(value, list) or not all(isinstance(line, str) for line in value):
                raise UserInputError(name, "must be a list of shell lines")
            value = tuple(value)
        elif key == "additional":
            if not isinstance(value, dict):
                raise UserInputError(name, "must be a mapping of sbatch options, e.g. {account: x}")
            if "dependency" in value:
                raise UserInputError(f"{name}.dependency", "is set by the suite (a transfer waits for its export)")
        values[key] = value
    return SlurmResources(**(base.__dict__ | values))


def _slurm_section(raw: Any) -> dict[str, SlurmResources]:
    """Resources for every stage: the section's defaults, then its per-stage mappings (pretrain, det, seg, cls)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UserInputError("slurm", "must be a mapping (partition, cpus, gpus, mem_gb, time, setup, additional)")
    _check_keys(raw, (*RESOURCE_KEYS, *STAGES), "slurm.")
    defaults = _resources({k: v for k, v in raw.items() if k in RESOURCE_KEYS}, "slurm", SlurmResources())
    resources = {}
    for stage in STAGES:
        stage_raw = raw.get(stage) or {}
        if not isinstance(stage_raw, dict):
            raise UserInputError(f"slurm.{stage}", "must be a mapping of resources")
        _check_keys(stage_raw, RESOURCE_KEYS, f"slurm.{stage}.")
        resources[stage] = _resources(stage_raw, f"slurm.{stage}", defaults)
    return resources


@dataclass(frozen=True)
class _Task:
    """A validated transfer task: what its records are called and how its command ends."""

    kind: str
    name: str
    dataset: str  # as the records name it
    protocol: str  # as the records name it
    part: Part  # the task's settings, as the run computes them
    arguments: tuple[str, ...]  # everything of the command but --backbone, --work-dir, --results and --seed
    trailing: tuple[str, ...]  # key=value options, last on the command line


def _dense_task(index: int, raw: dict, kind: str) -> _Task:
    from transfer.mm_runner import load_config, task_identity  # mmengine: only when a suite has det/seg tasks

    prefix = f"transfers[{index}]"
    value = _require(raw, "config", f"{prefix}.", str, f"an {DENSE_CONFIG_FOLDERS[kind]} config path or name")
    folder = CONFIG_ROOT / DENSE_CONFIG_FOLDERS[kind]
    config = _existing_path(value)
    if config is None or not config.is_file():
        named = folder / (value if value.endswith(".py") else f"{value}.py")
        if not named.is_file():
            hint = did_you_mean(Path(value).stem, [p.stem for p in folder.glob("*.py")])
            raise UserInputError(f"{prefix}.config", f"no such config '{value}'{hint}")
        config = named.resolve()
    options = _options(raw.get("cfg_options"), f"{prefix}.cfg_options", _mm_value)

    def rename(loader_field: str) -> str:
        if loader_field.startswith("--cfg-options "):
            return f"{prefix}.cfg_options.{loader_field.removeprefix('--cfg-options ')}"
        return f"{prefix}.config"

    with _field(rename):
        cfg = load_config(config, options)
    dataset, protocol, part = task_identity(cfg, config, options)
    trailing = ("--cfg-options", *options) if options else ()
    name = raw.get("name") or f"{kind}-{config.stem}"
    return _Task(kind, name, dataset, protocol, part, ("--config", str(config)), trailing)


def _cls_task(index: int, raw: dict) -> _Task:
    from pretrain.config import parse_overrides
    from transfer.classification import task_identity
    from transfer.cls_data import load_cls_config

    prefix = f"transfers[{index}]"
    value = _require(raw, "dataset", f"{prefix}.", str, "a classification dataset name, config or folder")
    protocol = _require(raw, "protocol", f"{prefix}.", str, f"one of {', '.join(CLS_PROTOCOLS)}")
    if protocol not in CLS_PROTOCOLS:
        raise UserInputError(
            f"{prefix}.protocol", f"unknown protocol '{protocol}'{did_you_mean(protocol, CLS_PROTOCOLS)}"
        )
    existing = _existing_path(value)
    dataset = str(existing) if existing is not None else value
    overrides = _options(raw.get("overrides"), f"{prefix}.overrides", lambda v, _: _yaml_value(v))
    parsed = parse_overrides(overrides)
    if "seed" in parsed:
        raise UserInputError(f"{prefix}.overrides.seed", "give transfer seeds in the suite's 'transfer_seeds' list")
    with _field(_config_field("dataset", set(parsed), f"{prefix}.dataset", f"{prefix}.overrides")):
        config = load_cls_config(dataset, parsed)
    name = raw.get("name") or f"cls-{config.name}-{protocol}"
    dataset_name, _, part = task_identity(config, protocol, parsed)
    arguments = ("--dataset", dataset, "--protocol", protocol)
    return _Task("cls", name, dataset_name, protocol, part, arguments, tuple(overrides))


def _transfer_tasks(raw: Any) -> list[_Task]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserInputError("transfers", "must be a list of tasks (each with kind: det, seg or cls)")
    tasks = []
    for index, task in enumerate(raw):
        prefix = f"transfers[{index}]"
        if not isinstance(task, dict):
            raise UserInputError(prefix, "must be a mapping with kind: det, seg or cls")
        kind = _require(task, "kind", f"{prefix}.", str, "det, seg or cls")
        if kind not in TRANSFER_KINDS:
            raise UserInputError(f"{prefix}.kind", f"unknown task kind '{kind}'{did_you_mean(kind, TRANSFER_KINDS)}")
        _check_keys(task, TASK_KEYS[kind], f"{prefix}.")
        if "name" in task and (not isinstance(task["name"], str) or not task["name"] or "/" in task["name"]):
            raise UserInputError(f"{prefix}.name", f"{task['name']!r} is not a folder name")
        made = _cls_task(index, task) if kind == "cls" else _dense_task(index, task, kind)
        for earlier_index, earlier in enumerate(tasks):
            same_records = (earlier.kind, earlier.dataset, earlier.protocol) == (made.kind, made.dataset, made.protocol)
            if same_records or earlier.name == made.name:
                what = f"the records of transfers[{earlier_index}]" if same_records else f"the name '{made.name}'"
                raise UserInputError(prefix, f"would share {what}; a finished one would mark the other finished")
        tasks.append(made)
    return tasks


def _named_config(value: str, load: Callable[[str], Any], field_name: str) -> tuple[str, Any]:
    """``(command-line argument, loaded config)`` of a name or a file given relative to the repository."""
    existing = _existing_path(value)
    argument = str(existing) if existing is not None and existing.is_file() else value
    with _field(lambda f: f"{field_name}{f[f.index('.') :] if '.' in f else ''}"):
        return argument, load(argument)


def _backbone_entries(raw: dict) -> list[tuple[Any, list[str] | None]]:
    """The backbones list: names or files, or mappings ``{backbone: name, regimes: [...]}`` that restrict the
    regimes of one backbone (ConvNeXt has no dropout: only the stochastic-depth regimes fit it)."""
    entries = _require(raw, "backbones", "", list, "a list of backbone names or files")
    if not entries:
        raise UserInputError("backbones", "is empty; give at least one backbone name or file")
    parsed = []
    for index, entry in enumerate(entries):
        field_name = f"backbones[{index}]"
        if isinstance(entry, str):
            parsed.append((entry, None))
            continue
        if not isinstance(entry, dict):
            raise UserInputError(field_name, f"{entry!r} is neither a backbone name nor a mapping with 'backbone'")
        _check_keys(entry, BACKBONE_KEYS, f"{field_name}.")
        name = _require(entry, "backbone", f"{field_name}.", str, "a backbone name or file")
        regimes = (
            _non_empty_list(entry, "regimes", str, "regime names or files", prefix=f"{field_name}.")
            if "regimes" in entry
            else None
        )
        parsed.append((name, regimes))
    return parsed


def check_pairings(backbones: list, regimes: dict, pairs: list[tuple[int, str]]) -> None:
    """Build every backbone × regime pairing (on the meta device: no memory, no weights) with its drop controller,
    so that a regime a backbone cannot take fails before anything runs."""
    from pretrain.train import check_pairing

    for index, regime_name in pairs:
        argument, backbone = backbones[index]
        try:
            check_pairing(backbone, regimes[regime_name][1])
        except UserInputError as err:
            message = str(err).removeprefix(f"{err.field}: ")
            raise UserInputError(f"backbones[{index}] × regime {regime_name}", message) from None


def load_suite(path: str | Path) -> Suite:
    """Validate a suite file and expand its grid into the ordered plan; nothing is run or written.

    Every backbone × regime pairing is built (on the meta device) with its drop controller and every transfer
    config is loaded with its options, so that a mistake fails here, before any run is started or submitted."""
    from pretrain.config import BackboneConfig, Recipe, Regime, parse_overrides, pretrain_identity
    from pretrain.data import dataset_name

    path = Path(path)
    raw = load_yaml(path, "suite")
    _check_keys(raw, SUITE_KEYS, "")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name or "/" in name:
        raise UserInputError("name", f"{name!r} is not a plain name")

    regime_values = _non_empty_list(raw, "regimes", str, "regime names or files")
    entries = _backbone_entries(raw)
    regimes = {}
    for index, value in enumerate(regime_values + [r for _, rs in entries for r in rs or [] if r not in regime_values]):
        argument, regime = _named_config(
            value, Regime.load, f"regimes[{index}]" if index < len(regime_values) else "backbones.regimes"
        )
        if any(r.name == regime.name for _, r in regimes.values()):
            raise UserInputError("regimes", f"names the regime '{regime.name}' twice")
        regimes[value] = (argument, regime)
    backbones = []
    for index, (value, _) in enumerate(entries):
        backbones.append(_named_config(value, BackboneConfig.load, f"backbones[{index}]"))
        _check_unique([b.name for _, b in backbones], "backbones", "backbone")
    pairs = [(index, value) for index, (_, own) in enumerate(entries) for value in (own or regime_values)]
    check_pairings(backbones, regimes, pairs)
    seeds = _non_empty_list(raw, "seeds", int, "whole-number seeds") if "seeds" in raw else [0]
    transfer_seeds = (
        _non_empty_list(raw, "transfer_seeds", int, "whole-number seeds") if "transfer_seeds" in raw else [0]
    )

    pretrain_raw = _require(raw, "pretrain", "", dict, "a mapping with recipe, data and overrides")
    _check_keys(pretrain_raw, PRETRAIN_KEYS, "pretrain.")
    recipe_value = _require(pretrain_raw, "recipe", "pretrain.", str, "a recipe name or file (configs/pretrain)")
    existing = _existing_path(recipe_value)
    recipe_argument = str(existing) if existing is not None and existing.is_file() else recipe_value
    data = _require(pretrain_raw, "data", "pretrain.", str, "'mnist' or an ImageNet-layout folder")
    if data != "mnist":
        data = str(Path(data).expanduser().absolute())  # absolute: runs may start in another folder
    overrides = _options(pretrain_raw.get("overrides"), "pretrain.overrides", lambda v, _: _yaml_value(v))
    with _field(lambda f: f"pretrain.overrides.{f}"):
        parsed = parse_overrides(overrides)
    if "seed" in parsed:
        raise UserInputError("pretrain.overrides.seed", "give seeds in the suite's top-level 'seeds' list")
    recipe_field = _config_field("recipe", set(parsed), "pretrain.recipe", "pretrain.overrides")
    with _field(recipe_field):
        recipes = {seed: Recipe.load(recipe_argument, parsed | {"seed": seed}) for seed in seeds}
    data_name = pretrain_raw.get("data_name")
    if data_name is not None and (not isinstance(data_name, str) or not data_name):
        raise UserInputError("pretrain.data_name", f"{data_name!r} is not a dataset name")
    data_name = dataset_name(data, recipes[seeds[0]], data_name)  # the run is told it: both name the data alike

    tasks = _transfer_tasks(raw.get("transfers"))
    output = raw.get("output") or {}
    if not isinstance(output, dict):
        raise UserInputError("output", "must be a mapping with runs and results folders")
    _check_keys(output, OUTPUT_KEYS, "output.")
    for key in OUTPUT_KEYS:
        if key in output and not isinstance(output[key], str):
            raise UserInputError(f"output.{key}", f"{output[key]!r} is not a folder")
    runs_dir = Path(output.get("runs", f"runs/suites/{name}")).expanduser().absolute()
    results_dir = Path(output.get("results", "results")).expanduser().absolute()
    slurm = _slurm_section(raw.get("slurm"))

    runs = []
    for index, regime_value in pairs:
        backbone_argument, backbone = backbones[index]
        regime_argument, regime = regimes[regime_value]
        for seed in seeds:
            recipe = recipes[seed]
            point = f"{backbone.name}-{regime.name}-seed{seed}"
            pretrain_dir = runs_dir / point / PRETRAIN_FOLDER
            identity = pretrain_identity(backbone, regime, recipe, data_name)
            pretraining = Run(
                name=f"{point}/{PRETRAIN_FOLDER}",
                stage="pretrain",
                command=(
                    "pretrain",
                    *("--backbone", backbone_argument, "--regime", regime_argument),
                    *("--recipe", recipe_argument, "--data", data, "--data-name", data_name),
                    *("--out", str(pretrain_dir), "--results", str(results_dir)),
                    f"seed={seed}",
                    *overrides,
                ),
                work_dir=pretrain_dir,
                log=runs_dir / point / f"{PRETRAIN_FOLDER}.log",
                results_dir=results_dir,
                identity=identity,
            )
            runs.append(pretraining)
            for task in tasks:
                for transfer_seed in transfer_seeds:
                    folder = task.name if transfer_seeds == [0] else f"{task.name}-tseed{transfer_seed}"
                    work_dir = runs_dir / point / folder
                    runs.append(
                        Run(
                            name=f"{point}/{folder}",
                            stage=task.kind,
                            command=(
                                "transfer",
                                task.kind,
                                *("--backbone", str(pretrain_dir / "export"), *task.arguments),
                                *("--work-dir", str(work_dir), "--results", str(results_dir)),
                                *("--seed", str(transfer_seed)),
                                *task.trailing,
                            ),
                            work_dir=work_dir,
                            log=runs_dir / point / f"{folder}.log",
                            results_dir=results_dir,
                            identity=identity.transfer(
                                TRANSFER_KINDS[task.kind], task.dataset, task.protocol, transfer_seed, task.part
                            ),
                            after=pretraining.name,
                        )
                    )
    return Suite(
        name=name,
        path=path,
        runs=runs,
        data=data,
        runs_dir=runs_dir,
        results_dir=results_dir,
        grid=(len(backbones), len(regimes), len(seeds), len(tasks) * len(transfer_seeds)),
        slurm=slurm,
        regimes={regime.name: regime for _, regime in regimes.values()},
        recipes=recipes,
    )


def describe(suite: Suite) -> str:
    """The plan, one line per run in the order they go (each transfer after its pretraining): whether it is
    finished, its name and its command."""
    backbones, regimes, seeds, tasks = suite.grid
    finished = {run.name for run in suite.runs if run.finished()}
    pretraining = sum(run.stage == "pretrain" for run in suite.runs)
    lines = [
        f"suite '{suite.name}': {backbones} backbone(s) × {regimes} regime(s) × {seeds} seed(s) → {pretraining} "
        f"pretraining run(s), each with {tasks} transfer(s): {len(suite.runs)} runs, {len(finished)} finished, "
        f"{len(suite.runs) - len(finished)} to run"
    ]
    width = max(len(run.name) for run in suite.runs)
    for run in suite.runs:
        status = "finished" if run.name in finished else "run"
        lines.append(f"  {status:<8}  {run.name:<{width}}  $ {run.shell_command()}")
    if suite.data != "mnist" and not Path(suite.data).is_dir():
        lines.append(f"note: pretrain.data '{suite.data}' is not a folder on this machine")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ running


@dataclass
class Outcome:
    run: Run
    status: str  # "finished earlier", "done", "failed", "skipped"
    detail: str = ""
    seconds: float = 0.0  # wall time of the run's command


def _prepare_pretraining(run: Run) -> tuple[str, ...]:
    """The command for a pretraining run folder as it is now: resumed from its checkpoint, or started afresh.

    A folder left by an attempt that died before its first checkpoint holds nothing to resume and would make
    ``pretrain`` refuse to start, so it is removed (its output is in the run's log).
    """
    from pretrain.train import CHECKPOINT_FILE, EXPORT_DIR

    folder = run.work_dir
    if (folder / CHECKPOINT_FILE).is_file() or (folder / EXPORT_DIR).is_dir():
        return (run.command[0], "--resume", *run.command[1:])
    if folder.exists():
        shutil.rmtree(folder)
    return run.command


def _command_line(run: Run, gpus: int) -> list[str]:
    """``python -m dropbench.cli ...``; on several GPUs of one node, pretraining and det/seg go under torchrun."""
    command = _prepare_pretraining(run) if run.stage == "pretrain" else run.command
    if gpus > 1 and run.stage in ("pretrain", "det", "seg"):
        launcher = ("--launcher", "pytorch") if run.stage != "pretrain" else ()
        return [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}"),
            *("-m", "dropbench.cli", *command, *launcher),
        ]
    return [sys.executable, "-m", "dropbench.cli", *command]


def run_logged(argv: Sequence[str], log: str | Path, cwd: str | Path) -> int:
    """Run ``argv`` in ``cwd`` with stdout and stderr appended to ``log``; returns its exit code."""
    log = Path(log)
    log.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("a") as stream:
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        stream.write(f"===== {stamp} {shlex.join(argv)}\n")
        stream.flush()
        return subprocess.run(list(argv), cwd=cwd, stdout=stream, stderr=subprocess.STDOUT, env=env).returncode


class RunFailed(RuntimeError):
    """A run's command exited with an error (raised inside a Slurm job, so that the job fails)."""


def run_in_job(run: Run, gpus: int, cwd: str) -> int:
    """What a Slurm job executes: the run's command, logged; a failure fails the job (and ``afterok``)."""
    code = run_logged(_command_line(run, gpus), run.log, cwd)
    if code != 0:
        raise RunFailed(f"exit code {code}; see {run.log}")
    return code


def _last_line(log: Path, limit: int = 200) -> str:
    """The log's last non-empty line (a one-line ``error: ...`` or a traceback's last line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    if not lines or lines[-1].startswith("====="):
        return ""
    return lines[-1] if len(lines[-1]) <= limit else lines[-1][: limit - 1] + "…"


def _conclude(run: Run, code: int) -> Outcome:
    if code != 0:
        last = _last_line(run.log)
        return Outcome(run, "failed", f"exit code {code}" + (f": {last}" if last else ""))
    if not run.finished():
        return Outcome(run, "failed", f"exited 0 but wrote no record '{run.identity.stem()}*.json'")
    return Outcome(run, "done")


def _skip_or_none(run: Run, outcomes: dict[str, Outcome]) -> Outcome | None:
    if run.finished():
        return Outcome(run, "finished earlier")
    pretraining = outcomes.get(run.after) if run.after else None  # None too while its job is queued
    if pretraining is not None and pretraining.status in ("failed", "skipped"):
        return Outcome(run, "skipped", f"its pretraining {run.after} {pretraining.status}")
    return None


def execute_local(suite: Suite, cwd: Path, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Run the plan one subprocess at a time, in order."""
    if suite.data != "mnist" and not Path(suite.data).is_dir():
        raise UserInputError("pretrain.data", f"'{suite.data}' is neither 'mnist' nor a folder")
    outcomes: dict[str, Outcome] = {}
    for index, run in enumerate(suite.runs, 1):
        prefix = f"[{index}/{len(suite.runs)}] {run.name}"
        outcome = _skip_or_none(run, outcomes)
        if outcome is None:
            echo(f"{prefix}: running, log {run.log}")
            start = time.perf_counter()
            outcome = _conclude(run, run_logged(_command_line(run, gpus=0), run.log, cwd))
            outcome.seconds = time.perf_counter() - start
            echo(f"{prefix}: {outcome.status} in {outcome.seconds:.0f} s" + _detail(outcome))
        else:
            echo(f"{prefix}: {outcome.status}" + _detail(outcome))
        outcomes[run.name] = outcome
    return list(outcomes.values())


def _detail(outcome: Outcome) -> str:
    return f" ({outcome.detail})" if outcome.detail else ""


def _squeue_states(job_ids: Sequence[str]) -> dict[str, str] | None:
    """The Slurm state of each job the controller still knows; None when it cannot be asked."""
    if not job_ids:
        return {}
    result = subprocess.run(
        ["squeue", "--noheader", "--states=all", "--format=%i %T", f"--jobs={','.join(job_ids)}"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        # A job the controller has forgotten (MinJobAge) is "invalid"; anything else: ask again later.
        return {} if "Invalid job id" in result.stderr else None
    states = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition(" ")
        if job_id:
            states[job_id] = state.strip() or "UNKNOWN"
    return states


def _job_name(suite: Suite, run: Run) -> str:
    return f"dropbench:{suite.name}:{run.name}"


def queued_jobs(names: set[str]) -> dict[str, str]:
    """Jobs of this user that are still queued or running under one of ``names``: name → job id."""
    result = subprocess.run(
        ["squeue", "--noheader", "--format=%j|%i", f"--user={os.getuid()}"], capture_output=True, text=True
    )
    if result.returncode != 0:
        raise UserInputError("--executor", f"cannot ask Slurm for the queue: {result.stderr.strip()}")
    queued = {}
    for line in result.stdout.splitlines():
        name, _, job_id = line.rpartition("|")
        if name in names:
            queued[name] = job_id.strip()
    return queued


def execute_slurm(
    suite: Suite, cwd: Path, echo: Callable[[str], None] = print, poll_seconds: float = 30.0
) -> list[Outcome]:
    """Submit every unfinished run through submitit (transfers ``afterok`` their pretraining) and wait for all.

    A run already queued or running under its job name (an earlier invocation that was interrupted) is waited
    for, not submitted again.
    """
    import submitit
    from submitit.slurm.slurm import SlurmJob

    if shutil.which("sbatch") is None:
        raise UserInputError("--executor", "slurm needs Slurm's sbatch on the PATH")
    folder = suite.runs_dir / SLURM_FOLDER / "%j"
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    outcomes: dict[str, Outcome] = {}
    jobs: dict[str, Any] = {}  # run name → submitit job
    queued = queued_jobs({_job_name(suite, run) for run in suite.runs})
    for run in suite.runs:
        outcome = _skip_or_none(run, outcomes)
        if outcome is not None:
            outcomes[run.name] = outcome
            echo(f"{run.name}: {outcome.status}" + _detail(outcome))
            continue
        job_name = _job_name(suite, run)
        if job_name in queued:
            jobs[run.name] = SlurmJob(folder=folder, job_id=queued[job_name])
            echo(f"{run.name}: already queued as Slurm job {queued[job_name]}, not submitted again")
            continue
        resources = suite.slurm[run.stage]
        additional = dict(resources.additional)
        if run.after in jobs:
            additional["dependency"] = f"afterok:{jobs[run.after].job_id}"
        parameters = dict(
            name=job_name,
            timeout_min=resources.time,
            cpus_per_task=resources.cpus,
            nodes=1,
            tasks_per_node=1,
            slurm_additional_parameters=additional,
            slurm_setup=list(resources.setup),
        )
        if resources.partition:
            parameters["slurm_partition"] = resources.partition
        if resources.gpus:
            parameters["gpus_per_node"] = resources.gpus
        if resources.mem_gb:
            parameters["mem_gb"] = resources.mem_gb
        executor.update_parameters(**parameters)
        try:
            jobs[run.name] = executor.submit(run_in_job, run, resources.gpus, str(cwd))
        except Exception as err:  # noqa: BLE001 - sbatch refused it (a bad partition; its pretraining failed already)
            reason = [line for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
            outcomes[run.name] = Outcome(run, "failed", f"not submitted: {reason[-1].strip()}")
            echo(f"{run.name}: failed" + _detail(outcomes[run.name]))
            continue
        after = f", after job {additional['dependency'].split(':')[1]}" if "dependency" in additional else ""
        echo(f"{run.name}: submitted as Slurm job {jobs[run.name].job_id}{after}, log {run.log}")
    try:
        _wait_for_jobs(suite, jobs, outcomes, echo, poll_seconds)
    except KeyboardInterrupt:
        echo(
            "interrupted: the submitted jobs stay in Slurm; run the suite again to wait for them "
            "(a queued run is not submitted twice), or scancel them"
        )
        raise SystemExit(130) from None
    return [outcomes[run.name] for run in suite.runs]


def _wait_for_jobs(
    suite: Suite, jobs: dict[str, Any], outcomes: dict[str, Outcome], echo: Callable[[str], None], poll: float
) -> None:
    """Poll until every job has ended; the transfers of a failed pretraining are cancelled and skipped.

    A job is finished when submitit's result file is there (the run's function returned or raised). Slurm's
    accounting (sacct) is not needed: a job that ended without a result file (cancelled, timed out, out of
    memory) is noticed because it has left squeue's active states.
    """
    waiting = dict(jobs)
    ended_without_result: dict[str, int] = {}
    delay = 1.0  # seconds; grows while nothing changes, up to ``poll``
    while waiting:
        before = len(waiting)
        states = _squeue_states([job.job_id for job in waiting.values()])
        for name, job in list(waiting.items()):
            run = suite.run(name)
            if job.paths.result_pickle.exists():
                try:
                    job.result()
                    outcome = _conclude(run, 0)
                except Exception as err:  # noqa: BLE001 - the job's error, whatever it was, is the run's failure
                    outcome = Outcome(run, "failed", _job_failure(run, job, err))
            elif states is not None and states.get(job.job_id, "GONE").split()[0] not in SLURM_ACTIVE_STATES:
                # Its result file may lag behind on a network file system: look again at the next poll first.
                ended_without_result[name] = ended_without_result.get(name, 0) + 1
                if ended_without_result[name] < 3:
                    continue
                state = states.get(job.job_id, "no longer in the queue")
                outcome = Outcome(run, "failed", f"Slurm job {job.job_id} {state} without a result; {job.paths.stderr}")
            else:
                continue
            outcomes[name] = outcome
            del waiting[name]
            echo(f"{name}: {outcome.status}" + _detail(outcome))
            if outcome.status == "failed" and run.stage == "pretrain":
                for dependent, dependent_job in list(waiting.items()):
                    if suite.run(dependent).after == name:
                        dependent_job.cancel(check=False)
                        del waiting[dependent]
                        outcomes[dependent] = Outcome(suite.run(dependent), "skipped", f"its pretraining {name} failed")
                        echo(f"{dependent}: skipped (Slurm job {dependent_job.job_id} cancelled)")
        if waiting:
            delay = 1.0 if len(waiting) < before else min(poll, delay * 1.5)
            time.sleep(delay)


def _job_failure(run: Run, job: Any, err: Exception) -> str:
    """Why a job that left a result failed: its run's exit code and last log line, or submitit's own error."""
    text = str(err)
    ran = re.search(r"RunFailed: exit code (\d+)", text)  # submitit passes the job's traceback on as text
    if ran:
        return f"{_conclude(run, int(ran.group(1))).detail} (Slurm job {job.job_id})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"Slurm job {job.job_id}: {lines[-1] if lines else type(err).__name__}; Slurm output {job.paths.stderr}"


def report(suite: Suite, outcomes: list[Outcome]) -> tuple[str, bool]:
    """The closing summary (counts, then each failed or skipped run with its log) and whether all went well."""
    counts = {status: 0 for status in ("done", "finished earlier", "failed", "skipped")}
    for outcome in outcomes:
        counts[outcome.status] += 1
    lines = [f"suite '{suite.name}': " + ", ".join(f"{n} {status}" for status, n in counts.items())]
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    if failed:
        lines.append("failed:")
        lines += [f"  {o.run.name}: {o.detail}\n    log: {o.run.log}" for o in failed]
    if skipped:
        lines.append("skipped (their pretraining failed):")
        lines += [f"  {o.run.name}" for o in skipped]
    return "\n".join(lines), not failed and not skipped


def run_suite(path: str | Path, executor: str = "local", dry_run: bool = False, poll_seconds: float = 30.0) -> int:
    """Load the suite, print its plan (``dry_run``) or run it; returns the exit code (1 when any run failed)."""
    suite = load_suite(path)
    if dry_run:
        print(describe(suite))
        return 0
    if executor not in ("local", "slurm"):
        raise UserInputError("--executor", f"unknown executor '{executor}' (choose from: local, slurm)")
    cwd = Path.cwd()
    echo = lambda line: print(line, flush=True)  # noqa: E731 - progress lines must appear as runs go
    if executor == "local":
        outcomes = execute_local(suite, cwd, echo)
    else:
        outcomes = execute_slurm(suite, cwd, echo, poll_seconds)
    text, ok = report(suite, outcomes)
    print(text, flush=True)
    return 0 if ok else 1
