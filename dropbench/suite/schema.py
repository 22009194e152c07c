"""The suite file's schema: its keys, value checks and transfer tasks, each error naming its field."""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dropbench.core.configs import check_keys, parse_key_values, shipped_path
from dropbench.core.embedded import EMBEDDED_ARRAYS
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.fields import config_field, non_empty_list, option_items, renamed_fields, require, yaml_value
from dropbench.core.identity import settings_digest
from dropbench.core.settings import Settings, setting
from dropbench.core.sweeps import check_each_field_matters, sweep_points
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


@dataclass(frozen=True)
class Variant:
    """A backbone, regime or recipe of the suite, loaded: the file or name the command line gives, the config, and
    the values its sweep point sets (empty for the config itself), passed on as ``--variant key=value``."""

    argument: str
    config: Any
    values: dict[str, Any] = field(default_factory=dict)

    def variant_items(self) -> list[str]:
        return [f"{key}={yaml_value(value)}" for key, value in self.values.items()]


def named_config(value: str, load: Callable[..., Any], field_name: str, point: dict[str, Any] | None = None) -> Variant:
    """A config given by name or by a file relative to the repository, as the sweep ``point`` varies it."""
    existing = shipped_path(value)
    argument = str(existing) if existing is not None and existing.is_file() else value

    def rename(loader_field: str) -> str:
        if point and loader_field.split(".")[0] in {key.split(".")[0] for key in point}:
            return f"{field_name}.sweep.{loader_field}"  # an override the sweep names: its own spelling
        rest = loader_field[loader_field.index(".") :] if "." in loader_field else ""
        if point:  # a value the point gave: the point, then the field
            label = ",".join(f"{key.rpartition('.')[2]}={yaml_value(value)}" for key, value in point.items())
            return f"{field_name}.sweep[{label}]{rest}"
        return f"{field_name}{rest}"

    with renamed_fields(rename):
        config = load(argument, point) if point else load(argument)
    return Variant(argument, config, dict(point or {}))


@dataclass(frozen=True)
class BackboneSpec(Settings):
    """A ``backbones`` entry given as a mapping: one backbone, and what restricts or sweeps it."""

    PREFIX: ClassVar[str] = "backbones."

    backbone: str = setting()
    regimes: tuple[str, ...] | None = None  # the regimes it pretrains under (default: the suite's)
    transfers: tuple[str, ...] | None = None  # the transfer tasks, by name, its exports go through
    sweep: dict | None = None  # its fields swept, e.g. {kwargs.depth: [4, 8]}


@dataclass(frozen=True)
class RegimeSpec(Settings):
    """A ``regimes`` entry given as a mapping: a regime and the sweep of its fields."""

    PREFIX: ClassVar[str] = "regimes."

    regime: str = setting()
    sweep: dict = setting(default_factory=dict)


def _entry(raw: Any, spec: type[Settings], field_name: str, what: str) -> Any:
    """A list entry: a plain name, or a mapping read as ``spec``."""
    if isinstance(raw, str):
        return spec.from_mapping({spec.keys()[0]: raw}, f"{field_name}.")
    if not isinstance(raw, dict):
        raise UserInputError(field_name, f"{raw!r} is neither a {what} name nor a mapping with '{spec.keys()[0]}'")
    return spec.from_mapping(raw, f"{field_name}.")


def backbone_entries(raw: dict) -> list[BackboneSpec]:
    """The backbones list: names or files, or mappings ``{backbone: name, regimes: [...], transfers: [...], sweep:
    {...}}`` that restrict the regimes of one backbone (ConvNeXt has no dropout: only the stochastic-depth regimes
    fit it), the transfers, by name, its exports go through (an MLP-Mixer has no Mask R-CNN protocol), or sweep its
    fields (``kwargs.depth``)."""
    entries = require(raw, "backbones", "", list, "a list of backbone names or files")
    if not entries:
        raise UserInputError("backbones", "is empty; give at least one backbone name or file")
    parsed = []
    for index, entry in enumerate(entries):
        field_name = f"backbones[{index}]"
        spec = _entry(entry, BackboneSpec, field_name, "backbone")
        for key, what in (("regimes", "regime names or files"), ("transfers", "transfer task names")):
            if key in (entry if isinstance(entry, dict) else {}):
                non_empty_list(entry, key, str, what, prefix=f"{field_name}.")
        parsed.append(spec)
    return parsed


def regime_entries(raw: dict) -> list[RegimeSpec]:
    """The regimes list: names or files, or mappings ``{regime: name, sweep: {field: [values]}}``."""
    entries = require(raw, "regimes", "", list, "a list of regime names or files")
    if not entries:
        raise UserInputError("regimes", "is empty; give at least one regime name or file")
    return [_entry(entry, RegimeSpec, f"regimes[{index}]", "regime") for index, entry in enumerate(entries)]


def _points(spec_sweep: dict | None, field_name: str) -> list[dict[str, Any]]:
    return sweep_points(spec_sweep, f"{field_name}.sweep") if spec_sweep else [{}]


def check_pairings(backbones: list[Variant], regimes: dict[str, Variant], pairs: list[tuple[int, str]]) -> None:
    """Build every backbone × regime pairing (on the meta device: no memory, no weights) with its drop controller,
    so that a regime a backbone cannot take fails before anything runs. A pairing is built once per backbone and
    kinds of scheduled rate: the controller's verdict depends on nothing else."""
    from dropbench.pretrain.build import check_pairing

    built = set()
    for index, regime_name in pairs:
        regime = regimes[regime_name].config
        key = (index, tuple(sorted(regime.max_rates())))
        if key in built:
            continue
        try:
            check_pairing(backbones[index].config, regime)
        except UserInputError as err:
            message = str(err).removeprefix(f"{err.field}: ")
            raise UserInputError(f"backbones[{index}] × regime {regime_name}", message) from None
        built.add(key)


@dataclass(frozen=True)
class Grid:
    """The suite's backbones and regimes, loaded (a sweep's every point), and the (backbone index, regime name)
    pairs it pretrains."""

    backbones: list[Variant]  # each backbone (variant), in order
    regimes: dict[str, Variant]  # regime name → its variant
    pairs: list[tuple[int, str]]
    transfers: dict[int, list[str]]  # backbone index → the names of its transfer tasks, where it lists them
    swept: dict[str, tuple[Variant, list[str]]] = field(default_factory=dict)  # regimes[i] → (base, points' names)


@dataclass
class _Regimes:
    """The regimes a suite names: each by name, what each written value stands for (a sweep: all its points), the
    names its ``regimes`` list stands for in order, and each sweep's base and points."""

    by_name: dict[str, Variant] = field(default_factory=dict)
    written: dict[str, list[str]] = field(default_factory=dict)
    listed: list[str] = field(default_factory=list)
    swept: dict[str, tuple[Variant, list[str]]] = field(default_factory=dict)


def _load_regimes(specs: list[RegimeSpec], extra: list[str]) -> _Regimes:
    from dropbench.pretrain.config import Regime

    found = _Regimes()
    entries = [(f"regimes[{i}]", spec.regime, spec.sweep) for i, spec in enumerate(specs)]
    entries += [("backbones.regimes", value, {}) for value in extra]
    for field_name, value, sweep in entries:
        names = []
        for point in _points(sweep, field_name):
            variant = named_config(value, Regime.load, field_name, point)
            name = variant.config.name
            if name in found.by_name:
                raise UserInputError(field_name, f"names the regime '{name}' twice")
            found.by_name[name] = variant
            names.append(name)
        found.written.setdefault(value, []).extend(names)
        if field_name.startswith("regimes["):
            found.listed += names
        if sweep:
            found.swept[field_name] = (named_config(value, Regime.load, field_name), names)
    return found


def grid_section(raw: dict) -> Grid:
    """Load every regime and backbone the suite names (each point of a sweep) and check that each pairing can be
    built."""
    from dropbench.core.models import BackboneConfig

    specs = regime_entries(raw)
    entries = backbone_entries(raw)
    plain = {spec.regime for spec in specs}
    extra = list(dict.fromkeys(r for entry in entries for r in entry.regimes or () if r not in plain))
    regimes = _load_regimes(specs, extra)
    backbones: list[Variant] = []
    owners: list[int] = []  # the entry each backbone variant comes from
    for index, entry in enumerate(entries):
        for point in _points(entry.sweep, f"backbones[{index}]"):
            backbones.append(named_config(entry.backbone, BackboneConfig.load, f"backbones[{index}]", point))
            owners.append(index)
            check_unique([b.config.name for b in backbones], "backbones", "backbone")
    pairs = []
    for variant_index, entry_index in enumerate(owners):
        own = entries[entry_index].regimes
        names = [name for value in own for name in regimes.written[value]] if own else regimes.listed
        pairs += [(variant_index, name) for name in dict.fromkeys(names)]
    check_pairings(backbones, regimes.by_name, pairs)
    transfers = {
        variant_index: list(entries[entry_index].transfers)
        for variant_index, entry_index in enumerate(owners)
        if entries[entry_index].transfers is not None
    }
    return Grid(backbones, regimes.by_name, pairs, transfers, regimes.swept)


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
class PretrainSpec(Settings):
    """The suite's ``pretrain`` section as the file gives it."""

    PREFIX: ClassVar[str] = "pretrain."

    recipe: str = setting()  # a recipe name or file (configs/pretrain)
    data: str = setting()  # 'mnist' or an ImageNet-layout folder
    data_name: str | None = None  # the records' dataset name (default: from the data)
    overrides: dict | tuple[str, ...] | None = None  # {key: value} or [key=value]: recipe overrides of every run
    sweep: dict | None = None  # recipe fields swept, e.g. {epochs: [5, 20]}


@dataclass(frozen=True)
class Pretraining:
    """The suite's ``pretrain`` section: the recipe of each sweep point and seed, the data and its records' name."""

    recipe_argument: str
    data: str
    data_name: str
    overrides: list[str]  # key=value, as passed on
    recipes: dict[tuple[str, int], Any]  # (recipe variant's name, seed) → Recipe
    variants: list[Variant]  # the recipe of each sweep point (one without a sweep), for seed 0's values


def pretrain_section(raw: dict, seeds: list[int]) -> Pretraining:
    from dropbench.pretrain.config import Recipe
    from dropbench.pretrain.data import dataset_name

    if not isinstance(raw.get("pretrain"), dict):
        raise UserInputError("pretrain", "must be a mapping with recipe, data and overrides")
    section = PretrainSpec.from_mapping(raw["pretrain"])
    existing = shipped_path(section.recipe)
    recipe_argument = str(existing) if existing is not None and existing.is_file() else section.recipe
    data = section.data
    if data not in EMBEDDED_ARRAYS:
        data = str(Path(data).expanduser().absolute())  # absolute: runs may start in another folder
    given = list(section.overrides) if isinstance(section.overrides, tuple) else section.overrides
    overrides = option_items(given, "pretrain.overrides", lambda v, _: yaml_value(v))
    with renamed_fields(lambda f: f"pretrain.overrides.{f}"):
        parsed = parse_key_values(overrides)
    if "seed" in parsed:
        raise UserInputError("pretrain.overrides.seed", "give seeds in the suite's top-level 'seeds' list")
    recipes, variants = {}, []
    for point in sweep_points(section.sweep, "pretrain.sweep") if section.sweep else [{}]:
        if "seed" in point:
            raise UserInputError("pretrain.sweep.seed", "give seeds in the suite's top-level 'seeds' list")
        with renamed_fields(_recipe_field(set(parsed), set(point))):
            for seed in seeds:
                recipe = Recipe.load(recipe_argument, parsed | {"seed": seed}, variant=point)
                recipes[(recipe.name, seed)] = recipe
        variants.append(Variant(recipe_argument, recipes[(recipe.name, seeds[0])], dict(point)))
    data_name = section.data_name
    if data_name is not None and not data_name:
        raise UserInputError("pretrain.data_name", f"{data_name!r} is not a dataset name")
    data_name = dataset_name(data, variants[0].config, data_name)  # the run is told it: both name the data alike
    return Pretraining(recipe_argument, data, data_name, overrides, recipes, variants)


def _recipe_field(overridden: set[str], swept: set[str]) -> Callable[[str], str]:
    """A recipe loader's error field in suite terms: the sweep's, an override's or the recipe file's."""
    rename = config_field("recipe", overridden, "pretrain.recipe", "pretrain.overrides")

    def field_name(loader_field: str) -> str:
        key = loader_field.removeprefix("recipe.")
        return f"pretrain.sweep.{key}" if key in swept else rename(loader_field)

    return field_name


@dataclass(frozen=True)
class OutputSpec(Settings):
    """The suite's ``output`` section: where run folders and records go."""

    PREFIX: ClassVar[str] = "output."

    runs: str | None = None  # default: runs/suites/<name>
    results: str | None = None  # default: results


def output_section(raw: dict, name: str) -> tuple[Path, Path]:
    """``(runs folder, results folder)``, absolute."""
    output = raw.get("output") or {}
    if not isinstance(output, dict):
        raise UserInputError("output", "must be a mapping with runs and results folders")
    spec = OutputSpec.from_mapping(output)
    runs_dir = Path(spec.runs or f"runs/suites/{name}").expanduser().absolute()
    results_dir = Path(spec.results or "results").expanduser().absolute()
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


def check_sweeps(grid: Grid, pretraining: Pretraining) -> None:
    """What a sweep's points must be, in a run of each recipe's length: every schedule fits the run (a cutoff
    beyond it is refused), every swept field changes the schedules, and no two regimes, recipes or backbones
    resolve to the same settings (their runs would be one experiment under two names)."""
    where = {name: field_name for field_name, (_, names) in grid.swept.items() for name in names}
    for epochs in sorted({variant.config.epochs for variant in pretraining.variants}):
        for name, variant in grid.regimes.items():
            try:
                variant.config.check_run(epochs)
            except UserInputError as err:
                message = str(err).removeprefix(f"{err.field}: ")
                raise UserInputError(f"{where.get(name, 'regimes')} {name}: {err.field}", message) from None
        for field_name, (base, names) in grid.swept.items():
            check_each_field_matters(
                [grid.regimes[name].values for name in names],
                [grid.regimes[name].config.effective(epochs) for name in names],
                base.config.effective(epochs),
                f"{field_name}.sweep",
                lambda key, base=base, epochs=epochs: base.config.why_unchanged(key, epochs),
            )
        _check_distinct(
            {name: variant.config.effective(epochs) for name, variant in grid.regimes.items()},
            where,
            f"regimes in a run of {epochs} epochs",
        )
    recipes = {v.config.name: settings_digest(v.config.settings()) for v in pretraining.variants}
    _check_distinct(recipes, dict.fromkeys(recipes, "pretrain.sweep"), "recipes")
    backbones = {v.config.name: settings_digest(v.config.settings()) for v in grid.backbones}
    _check_distinct(backbones, dict.fromkeys(backbones, "backbones"), "backbones")


def _check_distinct(settings: dict[str, str], where: dict[str, str], what: str) -> None:
    seen: dict[str, str] = {}
    for name, key in settings.items():
        if key in seen:
            raise UserInputError(
                where.get(name, where.get(seen[key], "regimes")),
                f"'{name}' resolves to the same settings as '{seen[key]}' ({what}); leave one out",
            )
        seen[key] = name
