"""The suite file's schema: its keys, value checks and transfer tasks, each error naming its field."""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dropbench.core.configs import check_keys, parse_key_values, shipped_path
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import config_field, non_empty_list, option_items, renamed_fields, require, yaml_value
from dropbench.tasks import SuiteTask, transfer_task, transfer_tasks

SUITE_KEYS = (
    "name",
    "backbones",
    "exports",
    "regimes",
    "seeds",
    "transfer_seeds",
    "pretrain",
    "transfers",
    "output",
)  # and each executor's section (``slurm``)

PRETRAIN_KEYS = ("recipe", "data", "data_name", "overrides")

BACKBONE_KEYS = ("backbone", "regimes", "transfers")

OUTPUT_KEYS = ("runs", "results")

COMMON_TASK_KEYS = ("kind", "name")  # every transfers entry's; each task adds its own (its suite_keys)


def check_unique(names: list[str], key: str, what: str) -> None:
    """The newest of ``names`` must differ from the others: records and run folders are named after it."""
    if names[-1] in names[:-1]:
        raise UserInputError(
            f"{key}[{len(names) - 1}]", f"is the {what} '{names[-1]}' again ({key}[{names.index(names[-1])}])"
        )


def suite_tasks(raw: Any) -> list[SuiteTask]:
    """The ``transfers`` list, each entry validated by its task (the registry's ``from_suite``)."""
    if raw is None:
        return []
    kinds = ", ".join(transfer_tasks())
    if not isinstance(raw, list):
        raise UserInputError("transfers", f"must be a list of tasks (each with kind: {kinds})")
    tasks: list[SuiteTask] = []
    for index, entry in enumerate(raw):
        prefix = f"transfers[{index}]"
        if not isinstance(entry, dict):
            raise UserInputError(prefix, f"must be a mapping with kind: {kinds}")
        kind = require(entry, "kind", f"{prefix}.", str, kinds)
        task = transfer_task(kind, f"{prefix}.kind")
        check_keys(entry, (*COMMON_TASK_KEYS, *task.suite_keys), f"{prefix}.")
        if "name" in entry and (not isinstance(entry["name"], str) or not entry["name"] or "/" in entry["name"]):
            raise UserInputError(f"{prefix}.name", f"{entry['name']!r} is not a folder name")
        made = task.from_suite(index, entry)
        for earlier_index, earlier in enumerate(tasks):
            same_records = (earlier.kind, earlier.dataset, earlier.protocol) == (made.kind, made.dataset, made.protocol)
            if same_records or earlier.name == made.name:
                what = f"the records of transfers[{earlier_index}]" if same_records else f"the name '{made.name}'"
                raise UserInputError(prefix, f"would share {what}; a finished one would mark the other finished")
        tasks.append(made)
    return tasks


def named_config(value: str, load: Callable[[str], Any], field_name: str) -> tuple[str, Any]:
    """``(command-line argument, loaded config)`` of a name or a file given relative to the repository."""
    existing = shipped_path(value)
    argument = str(existing) if existing is not None and existing.is_file() else value
    with renamed_fields(lambda f: f"{field_name}{f[f.index('.') :] if '.' in f else ''}"):
        return argument, load(argument)


def backbone_entries(raw: dict) -> list[tuple[Any, list[str] | None, list[str] | None]]:
    """The backbones list: names or files, or mappings ``{backbone: name, regimes: [...], transfers: [...]}`` that
    restrict the regimes of one backbone (ConvNeXt has no dropout: only the stochastic-depth regimes fit it) or the
    transfers, by name, its exports go through (an MLP-Mixer has no Mask R-CNN protocol)."""
    entries = require(raw, "backbones", "", list, "a list of backbone names or files")
    if not entries:
        raise UserInputError("backbones", "is empty; give at least one backbone name or file")
    parsed = []
    for index, entry in enumerate(entries):
        field_name = f"backbones[{index}]"
        if isinstance(entry, str):
            parsed.append((entry, None, None))
            continue
        if not isinstance(entry, dict):
            raise UserInputError(field_name, f"{entry!r} is neither a backbone name nor a mapping with 'backbone'")
        check_keys(entry, BACKBONE_KEYS, f"{field_name}.")
        name = require(entry, "backbone", f"{field_name}.", str, "a backbone name or file")
        regimes, transfers = (
            non_empty_list(entry, key, str, what, prefix=f"{field_name}.") if key in entry else None
            for key, what in (("regimes", "regime names or files"), ("transfers", "transfer task names"))
        )
        parsed.append((name, regimes, transfers))
    return parsed


def check_pairings(backbones: list, regimes: dict, pairs: list[tuple[int, str]]) -> None:
    """Build every backbone × regime pairing (on the meta device: no memory, no weights) with its drop controller,
    so that a regime a backbone cannot take fails before anything runs."""
    from dropbench.pretrain.build import check_pairing

    for index, regime_name in pairs:
        argument, backbone = backbones[index]
        try:
            check_pairing(backbone, regimes[regime_name][1])
        except UserInputError as err:
            message = str(err).removeprefix(f"{err.field}: ")
            raise UserInputError(f"backbones[{index}] × regime {regime_name}", message) from None


@dataclass(frozen=True)
class Grid:
    """The suite's backbones and regimes, loaded, and the (backbone index, regime) pairs it pretrains."""

    backbones: list[tuple[str, Any]]  # (command-line argument, BackboneConfig)
    regimes: dict[str, tuple[str, Any]]  # as written → (command-line argument, Regime)
    pairs: list[tuple[int, str]]
    transfers: dict[int, list[str]]  # backbone index → the names of its transfer tasks, where it lists them


def grid_section(raw: dict) -> Grid:
    """Load every regime and backbone the suite names and check that each pairing can be built."""
    from dropbench.core.models import BackboneConfig
    from dropbench.pretrain.config import Regime

    regime_values = non_empty_list(raw, "regimes", str, "regime names or files")
    entries = backbone_entries(raw)
    regimes: dict[str, tuple[str, Any]] = {}
    extra = [r for _, rs, _ in entries for r in rs or [] if r not in regime_values]
    for index, value in enumerate(regime_values + extra):
        argument, regime = named_config(
            value, Regime.load, f"regimes[{index}]" if index < len(regime_values) else "backbones.regimes"
        )
        if any(r.name == regime.name for _, r in regimes.values()):
            raise UserInputError("regimes", f"names the regime '{regime.name}' twice")
        regimes[value] = (argument, regime)
    backbones = []
    for index, (value, _, _) in enumerate(entries):
        backbones.append(named_config(value, BackboneConfig.load, f"backbones[{index}]"))
        check_unique([b.name for _, b in backbones], "backbones", "backbone")
    pairs = [(index, value) for index, (_, own, _) in enumerate(entries) for value in (own or regime_values)]
    check_pairings(backbones, regimes, pairs)
    transfers = {index: names for index, (_, _, names) in enumerate(entries) if names is not None}
    return Grid(backbones, regimes, pairs, transfers)


def tasks_for(names: list[str] | None, tasks: list[SuiteTask], field_name: str) -> list[SuiteTask]:
    """The tasks a backbone's exports go through: all of them, or those ``names`` lists (each must be one)."""
    if names is None:
        return tasks
    by_name = {task.name: task for task in tasks}
    for index, name in enumerate(names):
        if name not in by_name:
            raise UserInputError(
                f"{field_name}[{index}]", f"no transfer task is named '{name}'{did_you_mean(name, by_name)}"
            )
    return [task for task in tasks if task.name in names]


def check_transfer_pairings(model: str, kwargs: dict, tasks: list[SuiteTask], field_name: str) -> None:
    """Refuse, before anything runs, a backbone that a task cannot take (an MLP-Mixer, whose token grid is part of
    its weights, in a dense task), as ``transfer`` itself would refuse it after the pretraining."""
    for task in tasks:
        check = transfer_task(task.kind).check_backbone
        if check is None:
            continue
        try:
            check(model, kwargs, task)
        except UserInputError as err:
            reason = str(err).removeprefix(f"{err.field}: ")
            hint = "leave the task out of its transfers: list"
            raise UserInputError(
                f"{field_name} × {task.name}", f"{reason}; {hint} {{backbone: ..., transfers: [...]}}"
            ) from None


@dataclass(frozen=True)
class Pretraining:
    """The suite's ``pretrain`` section: one recipe per seed, the data and the name its records give it."""

    recipe_argument: str
    data: str
    data_name: str
    overrides: list[str]  # key=value, as passed on
    recipes: dict[int, Any]  # seed → Recipe


def pretrain_section(raw: dict, seeds: list[int]) -> Pretraining:
    from dropbench.pretrain.config import Recipe
    from dropbench.pretrain.data import dataset_name

    section = require(raw, "pretrain", "", dict, "a mapping with recipe, data and overrides")
    check_keys(section, PRETRAIN_KEYS, "pretrain.")
    recipe_value = require(section, "recipe", "pretrain.", str, "a recipe name or file (configs/pretrain)")
    existing = shipped_path(recipe_value)
    recipe_argument = str(existing) if existing is not None and existing.is_file() else recipe_value
    data = require(section, "data", "pretrain.", str, "'mnist' or an ImageNet-layout folder")
    if data != "mnist":
        data = str(Path(data).expanduser().absolute())  # absolute: runs may start in another folder
    overrides = option_items(section.get("overrides"), "pretrain.overrides", lambda v, _: yaml_value(v))
    with renamed_fields(lambda f: f"pretrain.overrides.{f}"):
        parsed = parse_key_values(overrides)
    if "seed" in parsed:
        raise UserInputError("pretrain.overrides.seed", "give seeds in the suite's top-level 'seeds' list")
    with renamed_fields(config_field("recipe", set(parsed), "pretrain.recipe", "pretrain.overrides")):
        recipes = {seed: Recipe.load(recipe_argument, parsed | {"seed": seed}) for seed in seeds}
    data_name = section.get("data_name")
    if data_name is not None and (not isinstance(data_name, str) or not data_name):
        raise UserInputError("pretrain.data_name", f"{data_name!r} is not a dataset name")
    data_name = dataset_name(data, recipes[seeds[0]], data_name)  # the run is told it: both name the data alike
    return Pretraining(recipe_argument, data, data_name, overrides, recipes)


def output_section(raw: dict, name: str) -> tuple[Path, Path]:
    """``(runs folder, results folder)``, absolute."""
    output = raw.get("output") or {}
    if not isinstance(output, dict):
        raise UserInputError("output", "must be a mapping with runs and results folders")
    check_keys(output, OUTPUT_KEYS, "output.")
    for key in OUTPUT_KEYS:
        if key in output and not isinstance(output[key], str):
            raise UserInputError(f"output.{key}", f"{output[key]!r} is not a folder")
    runs_dir = Path(output.get("runs", f"runs/suites/{name}")).expanduser().absolute()
    results_dir = Path(output.get("results", "results")).expanduser().absolute()
    return runs_dir, results_dir


def export_section(raw: dict) -> list[tuple[Path, dict]]:
    """``exports``: export folders (``dropbench import`` or an earlier pretraining) whose transfers the suite runs
    without pretraining them; each folder's sidecar is read here, so a wrong path fails before anything runs."""
    from dropbench.core.export import read_sidecar

    if "exports" not in raw:
        return []
    found = []
    for index, value in enumerate(non_empty_list(raw, "exports", str, "export folders")):
        folder = shipped_path(value) or Path(value).expanduser().absolute()
        with renamed_fields(lambda _field, index=index: f"exports[{index}]"):
            found.append((folder, read_sidecar(folder)))
    return found
