"""The suite file's schema: its keys, value checks and transfer tasks, each error naming its field."""

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dropbench.core.configs import CONFIG_ROOT, check_keys, parse_key_values, shipped_path
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.identity import Part
from dropbench.core.tracking import check_trackers

TRANSFER_KINDS = {"det": "detection", "seg": "segmentation", "cls": "classification"}

DENSE_CONFIG_FOLDERS = {"det": "detection", "seg": "segmentation"}

CLS_PROTOCOLS = ("finetune", "linear")

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
    "slurm",
)

PRETRAIN_KEYS = ("recipe", "data", "data_name", "overrides")

BACKBONE_KEYS = ("backbone", "regimes", "transfers")

OUTPUT_KEYS = ("runs", "results")

TASK_KEYS = {
    "det": ("kind", "name", "config", "cfg_options", "loggers"),
    "seg": ("kind", "name", "config", "cfg_options", "loggers"),
    "cls": ("kind", "name", "dataset", "protocol", "overrides"),
}

STAGES = ("pretrain", *TRANSFER_KINDS)  # a run's stage: "pretrain" or a transfer kind


@contextmanager
def renamed_fields(rename: Callable[[str], str]) -> Iterator[None]:
    """Re-raise a loader's UserInputError under the suite file's field name."""
    try:
        yield
    except UserInputError as err:
        message = str(err).removeprefix(f"{err.field}: ")
        raise UserInputError(rename(err.field), message) from None


def config_field(loader: str, overridden: set[str], file_field: str, overrides_field: str) -> Callable[[str], str]:
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


def require(data: dict, key: str, prefix: str, kind: type | tuple[type, ...], what: str) -> Any:
    if key not in data or data[key] is None:
        raise UserInputError(f"{prefix}{key}", f"missing; give {what}")
    if not isinstance(data[key], kind):
        raise UserInputError(f"{prefix}{key}", f"{data[key]!r} is not {what}")
    return data[key]


def non_empty_list(data: dict, key: str, item: type, what: str, prefix: str = "") -> list:
    values = require(data, key, prefix, list, f"a list of {what}")
    if not values:
        raise UserInputError(f"{prefix}{key}", f"is empty; give at least one of {what}")
    for index, value in enumerate(values):
        if not isinstance(value, item) or isinstance(value, bool):
            raise UserInputError(f"{prefix}{key}[{index}]", f"{value!r} is not one of {what}")
    if len(set(values)) != len(values):
        duplicate = next(v for v in values if values.count(v) > 1)
        raise UserInputError(f"{prefix}{key}", f"lists {duplicate!r} twice")
    return values


def check_unique(names: list[str], key: str, what: str) -> None:
    """The newest of ``names`` must differ from the others: records and run folders are named after it."""
    if names[-1] in names[:-1]:
        raise UserInputError(
            f"{key}[{len(names) - 1}]", f"is the {what} '{names[-1]}' again ({key}[{names.index(names[-1])}])"
        )


def yaml_value(value: Any) -> str:
    """A value as the ``key=value`` text that ``parse_overrides`` (YAML) reads back as the same value."""
    if isinstance(value, str) and yaml.safe_load(value) == value:
        return value
    return json.dumps(value)


def mm_value(value: Any, field_name: str) -> str:
    """A value as the ``--cfg-options`` text that mmengine's DictAction reads back as the same value."""
    if value is None or isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    if isinstance(value, (list, tuple)):
        inner = ",".join(mm_value(item, field_name) for item in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    raise UserInputError(field_name, f"{value!r}: give nested keys dotted (a.b=1), values as scalars or lists")


def option_items(raw: Any, field_name: str, render: Callable[[Any, str], str]) -> list[str]:
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


@dataclass(frozen=True)
class Task:
    """A validated transfer task: what its records are called and how its command ends."""

    kind: str
    name: str
    dataset: str  # as the records name it
    protocol: str  # as the records name it
    part: Part  # the task's settings, as the run computes them
    arguments: tuple[str, ...]  # everything of the command but --backbone, --work-dir, --results and --seed
    trailing: tuple[str, ...]  # key=value options, last on the command line
    config: Any = field(default=None, compare=False, repr=False)  # a det/seg task's mm* config, as loaded


def _dense_task(index: int, raw: dict, kind: str) -> Task:
    from dropbench.transfer.mm_runner import load_config, task_identity  # mmengine: only when a suite has det/seg tasks

    prefix = f"transfers[{index}]"
    value = require(raw, "config", f"{prefix}.", str, f"an {DENSE_CONFIG_FOLDERS[kind]} config path or name")
    folder = CONFIG_ROOT / DENSE_CONFIG_FOLDERS[kind]
    config = shipped_path(value)
    if config is None or not config.is_file():
        named = folder / (value if value.endswith(".py") else f"{value}.py")
        if not named.is_file():
            hint = did_you_mean(Path(value).stem, [p.stem for p in folder.glob("*.py")])
            raise UserInputError(f"{prefix}.config", f"no such config '{value}'{hint}")
        config = named.resolve()
    options = option_items(raw.get("cfg_options"), f"{prefix}.cfg_options", mm_value)

    def rename(loader_field: str) -> str:
        if loader_field.startswith("--cfg-options "):
            return f"{prefix}.cfg_options.{loader_field.removeprefix('--cfg-options ')}"
        return f"{prefix}.config"

    with renamed_fields(rename):
        cfg = load_config(config, options)
    dataset, protocol, part = task_identity(cfg, config, options)
    trailing = ("--cfg-options", *options) if options else ()
    name = raw.get("name") or f"{kind}-{config.stem}"
    loggers = check_trackers(raw.get("loggers", []), f"{prefix}.loggers")
    arguments = ("--config", str(config), *(("--loggers", *loggers) if loggers else ()))
    return Task(kind, name, dataset, protocol, part, arguments, trailing, config=cfg)


def _cls_task(index: int, raw: dict) -> Task:
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
    name = raw.get("name") or f"cls-{config.name}-{protocol}"
    dataset_name, _, part = task_identity(config, protocol, parsed)
    arguments = ("--dataset", dataset, "--protocol", protocol)
    return Task("cls", name, dataset_name, protocol, part, arguments, tuple(overrides))


def transfer_tasks(raw: Any) -> list[Task]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise UserInputError("transfers", "must be a list of tasks (each with kind: det, seg or cls)")
    tasks = []
    for index, task in enumerate(raw):
        prefix = f"transfers[{index}]"
        if not isinstance(task, dict):
            raise UserInputError(prefix, "must be a mapping with kind: det, seg or cls")
        kind = require(task, "kind", f"{prefix}.", str, "det, seg or cls")
        if kind not in TRANSFER_KINDS:
            raise UserInputError(f"{prefix}.kind", f"unknown task kind '{kind}'{did_you_mean(kind, TRANSFER_KINDS)}")
        check_keys(task, TASK_KEYS[kind], f"{prefix}.")
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
    from dropbench.pretrain.train import check_pairing

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


def tasks_for(names: list[str] | None, tasks: list[Task], field_name: str) -> list[Task]:
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


def check_transfer_pairings(model: str, kwargs: dict, tasks: list[Task], field_name: str) -> None:
    """Refuse, before anything runs, a backbone whose token grid is part of its weights (MLP-Mixer) in a dense task
    that has no sound protocol for it, as ``transfer`` itself would refuse it after the pretraining."""
    dense = [task for task in tasks if task.config is not None]
    if not dense:
        return
    from dropbench.transfer.backbone import backbone_fixed_size
    from dropbench.transfer.mm_runner import check_fixed_grid

    fixed = backbone_fixed_size(model, kwargs)
    for task in dense:
        spec = _task_spec(task.kind)
        try:
            check_fixed_grid(spec, task.config.copy(), fixed, model)
        except UserInputError as err:
            reason = str(err).removeprefix(f"{err.field}: ")
            hint = "leave the task out of its transfers: list"
            raise UserInputError(
                f"{field_name} × {task.name}", f"{reason}; {hint} {{backbone: ..., transfers: [...]}}"
            ) from None


def _task_spec(kind: str) -> Any:
    if kind == "det":
        from dropbench.transfer.detection import DETECTION

        return DETECTION
    from dropbench.transfer.segmentation import SEGMENTATION

    return SEGMENTATION


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
