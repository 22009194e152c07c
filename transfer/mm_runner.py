"""What detection and segmentation transfer share: an mm* config → mmengine Runner → result records.

The config is mm*-native; this module fills in the export (``model.backbone.export``), hands the adapter's
channels (``TimmBackbone.out_channels``) to the task, which puts them into its neck or heads, checks
``--cfg-options`` keys against the config (a typo is an error, not a silently added key), trains, evaluates
once (plus the task's extra evaluation), and writes one record per metric.
"""

import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mmengine.config.config as mm_config
import torch
from mmengine.config import Config, ConfigDict, DictAction
from mmengine.dist import is_main_process
from mmengine.hooks import Hook

from dropbench.core.checkpoint import check_same_run, run_tag
from dropbench.core.configs import parse_key_values
from dropbench.core.errors import UserInputError, did_you_mean, diverged
from dropbench.core.export import read_sidecar
from dropbench.core.identity import Part, RunIdentity, now
from dropbench.core.io import atomic_write_json
from dropbench.core.lifecycle import Measured, RecordedRun, RunContext
from dropbench.core.tracking import vis_backends
from dropbench.transfer import mm_checkpoints, mm_distributed, mm_ops
from dropbench.transfer.backbone import TimmBackbone
from dropbench.transfer.optim import family_rule

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskSpec:
    """What a dense task adds to the shared run: its metrics and the steps that know its config's layout."""

    metrics: dict[str, tuple[str, float]]  # mm* metric key → (record metric name, factor to percent)
    wire: Callable[[Config, list[int]], None]  # the adapter's channels into the task's neck or heads
    prepare_data: Callable[[Config], None]  # embedded data made, the dataset checked, before training
    use_data: Callable[[Config, ConfigDict], None]  # a config's custom_data into its dataloaders, evaluator, heads
    optional: tuple[str, ...] = ()  # metric keys only some configs produce (e.g. multi-scale + flip)
    empty_means_zero: bool = False  # an evaluator that returns nothing saw no predictions: AP 0 (mmdet's COCO)
    extra_evaluation: Callable | None = None  # (runner, cfg) → more metrics, after the validation
    # (cfg, fixed input size) → why this task has no sound protocol for a backbone with a fixed token grid, or None
    fixed_grid_problem: Callable[[Config, tuple[int, int]], str | None] = lambda cfg, size: "not supported"


def _check_key(cfg: Config, dotted: str) -> None:
    node = cfg._cfg_dict
    walked = []
    for part in dotted.split("."):
        if isinstance(node, (dict, ConfigDict)) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            choices = list(node.keys()) if isinstance(node, (dict, ConfigDict)) else []
            where = ".".join(walked) or "the config"
            raise UserInputError(
                f"--cfg-options {dotted}", f"'{part}' is not a key of {where}{did_you_mean(part, choices)}"
            )
        walked.append(part)


def load_config(config: Path, cfg_options: Sequence[str]) -> Config:
    """Load an mm* config and apply ``key=value`` options whose keys must already exist in it."""
    if not Path(config).is_file():
        raise UserInputError("--config", f"no such config '{config}'")
    try:
        with _base_configs_found_directly():
            cfg = Config.fromfile(str(config))
    except Exception as err:  # noqa: BLE001 - a broken config file, whatever mmengine raises
        raise UserInputError("--config", f"cannot load '{config}': {str(err).splitlines()[0]}") from None
    # The config's text unformatted: mmengine makes it for its log, its dump and every checkpoint, and yapf takes
    # about half a second each time on a CPU; it is the same Python, not reflowed. (Config.fromfile drops its own
    # format_python_code argument for a config without lazy imports, so the flag is set as its constructor sets it.)
    object.__setattr__(cfg, "_format_python_code", False)
    options = parse_key_values(cfg_options, "--cfg-options", lambda raw, key: DictAction._parse_iterable(raw))
    for key in options:
        _check_key(cfg, key)
    cfg.merge_from_dict(options)
    _check_custom_data(cfg)
    return cfg


@contextmanager
def _base_configs_found_directly() -> Iterator[None]:
    """mmengine looks a ``package::path`` base up among the package's model metafiles (mmdet's: about 100 YAML
    files, 0.5 s on a CPU each time) before it takes the file from the package's config folder; a ``_base_/`` file
    is never a model there, so for those the lookup fails at once and mmengine goes straight to the folder."""
    lookup = mm_config._get_external_cfg_path

    def external_config(package_path: str, cfg_file: str) -> str:
        if cfg_file.startswith("_base_/"):
            raise ValueError(f"{cfg_file} is a base config: not in the metafiles")
        return lookup(package_path, cfg_file)

    mm_config._get_external_cfg_path = external_config
    try:
        yield
    finally:
        mm_config._get_external_cfg_path = lookup


def custom_data_datasets(cfg: Config) -> Iterator[tuple[ConfigDict, str]]:
    """Each dataloader's dataset with the ``custom_data`` split it reads (``train``; ``val`` for val and test)."""
    for loader, split in (("train_dataloader", "train"), ("val_dataloader", "val"), ("test_dataloader", "val")):
        if cfg.get(loader) is not None:
            yield cfg[loader].dataset, split


def _check_custom_data(cfg: Config) -> None:
    """A config with a ``custom_data`` section (configs/*/custom_*.py) needs its folder and class names; the
    records then name the data after ``custom_data.name`` or the folder."""
    data = cfg.get("custom_data")
    if data is None:
        return
    hint = 'e.g. --cfg-options custom_data.root=/data/mine "custom_data.classes=[cat,dog]" (or a classes.txt)'
    for key in ("root", "classes"):
        if not data.get(key):
            raise UserInputError(f"--cfg-options custom_data.{key}", f"is not set; {hint}")
    data.classes = _class_names(data.classes)
    root = Path(str(data.root)).expanduser()
    if not root.is_dir():
        raise UserInputError("--cfg-options custom_data.root", f"no such folder '{root}'")
    data.root = str(root)
    cfg.dataset_name = data.get("name") or root.resolve().name


def _class_names(value: Any) -> tuple[str, ...]:
    """``custom_data.classes``: a list, or a ``.txt`` file with one name per line (names with spaces, which
    ``--cfg-options`` lists drop, and long lists such as COCO's 80)."""
    if isinstance(value, str) and value.endswith(".txt"):
        path = Path(value).expanduser()
        if not path.is_file():
            raise UserInputError("--cfg-options custom_data.classes", f"no such class-name file '{path}'")
        names = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if not names:
            raise UserInputError("--cfg-options custom_data.classes", f"'{path}' names no class (one per line)")
        return names
    return tuple(str(name) for name in (value if isinstance(value, (list, tuple)) else [value]))


class _KeepLastMetrics(Hook):
    priority = "LOWEST"

    def __init__(self):
        self.metrics: dict | None = None

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = dict(metrics or {})


class _StopOnNonFiniteLoss(Hook):
    """Stop the run at the first training iteration whose loss is not finite (mmengine's CheckInvalidLossHook only
    asserts every N iterations): the run fails in one line, keeping its checkpoints, and records nothing. Under fp16
    AMP the scaler's skipped steps are normal; the loss itself is what is checked."""

    priority = "HIGHEST"

    def __init__(self, stage: str):
        self.stage = stage

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        loss = (outputs or {}).get("loss")
        if loss is None or bool(torch.isfinite(torch.as_tensor(loss)).all()):
            return
        lr = runner.optim_wrapper.get_lr()
        lr = float(next(iter(lr.values()))[0]) if isinstance(lr, dict) else float(lr)
        checkpoint = Path(runner.work_dir) / "last_checkpoint"
        kept = Path(checkpoint.read_text().strip()) if checkpoint.is_file() else None
        where = f"iteration {runner.iter + 1}/{runner.max_iters}"
        raise diverged(self.stage, float(torch.as_tensor(loss).detach().float().mean()), where, lr, kept)


# Keys that say where and how a run goes, not what it computes: left out of the task's settings digest.
_RUN_KEYS = ("work_dir", "launcher", "randomness", "custom_imports", "dataset_name", "resume")
RUN_FILE = "dropbench_run.json"  # in the work dir: the run it holds checkpoints of, compared on --resume


def task_identity(cfg: Config, config: Path, cfg_options: Sequence[str]) -> tuple[str, str, Part]:
    """``(dataset, protocol, task part)`` of an mm* config as loaded with its ``--cfg-options``.

    The dataset is the config's ``dataset_name`` (else the config's name), the protocol the config's name."""
    settings = cfg.to_dict()
    for key in _RUN_KEYS:
        settings.pop(key, None)
    settings.get("model", {}).get("backbone", {}).pop("export", None)
    (settings.get("default_hooks") or {}).pop("checkpoint", None)  # how often it saves: free to change on resume
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:  # the total batch is the per-process one times this: another experiment
        settings["world_size"] = world_size
    return str(cfg.get("dataset_name") or Path(config).stem), Path(config).stem, Part.of(settings, list(cfg_options))


def _seed(cfg: Config, seed: int) -> None:
    """mmengine's randomness: every RNG seeded, each rank its own. ``randomness.deterministic = True`` (the embedded
    configs) also asks for deterministic algorithms where a GPU has them (``warn_only``: ops without a deterministic
    kernel warn instead of failing) and keeps cuDNN's autotuner off; the paper-scale configs leave it off, as their
    anchors do. A CPU run is deterministic as it is."""
    deterministic = bool((cfg.get("randomness") or {}).get("deterministic", False))
    cfg.randomness = dict(seed=seed, diff_rank_seed=True, deterministic=False)
    if deterministic and torch.cuda.is_available():
        cfg.setdefault("env_cfg", ConfigDict()).cudnn_benchmark = False  # mmseg's runtime turns it on
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


def use_float32_without_gpu(cfg: Config) -> None:
    """mmengine's ``AmpOptimWrapper`` needs CUDA: without a GPU a paper-scale config trains in float32 instead,
    and says so (the records keep the config's identity, as for any other change of device)."""
    wrapper = cfg.get("optim_wrapper")
    if wrapper is None or wrapper.get("type") != "AmpOptimWrapper" or torch.cuda.is_available():
        return
    wrapper.type = "OptimWrapper"
    for key in ("loss_scale", "dtype"):
        wrapper.pop(key, None)
    logger.info("no GPU: AmpOptimWrapper (float16) needs CUDA, so this run trains in float32 with OptimWrapper")


def configure(spec: TaskSpec, backbone: Path, config: Path, cfg_options: Sequence[str]) -> Config:
    """The config a run trains: loaded with its options, then ``wire``d to the export."""
    return wire(spec, backbone, load_config(config, cfg_options))


def wire(spec: TaskSpec, backbone: Path, cfg: Config) -> Config:
    """``cfg`` with its ``custom_data`` (if any) written where the task reads it, the export in
    ``model.backbone``, the adapter's channels wired into the task's neck or heads. The data itself is checked
    later (``TaskSpec.prepare_data``)."""
    if cfg.get("custom_data") is not None:
        spec.use_data(cfg, cfg.custom_data)
    backbone_cfg = cfg.model.backbone
    if backbone_cfg.get("type") != "TimmBackbone":
        raise UserInputError("model.backbone.type", "must be 'TimmBackbone' to transfer a dropbench export")
    backbone_cfg.export = str(backbone)
    adapter_args = {k: v for k, v in backbone_cfg.items() if k not in ("type", "init_cfg")}
    try:
        adapter = TimmBackbone(**adapter_args)
    except TypeError as err:
        raise UserInputError("model.backbone", str(err)) from None
    check_fixed_grid(spec, cfg, adapter.fixed_size, adapter.sidecar.model)
    layer_decay = (cfg.get("optim_wrapper") or {}).get("paramwise_cfg", {}).get("layer_decay")
    if layer_decay is not None:
        family_rule(layer_decay, adapter.model)  # a missing or malformed family rule fails before the run
    spec.wire(cfg, list(adapter.out_channels))
    return cfg


def check_fixed_grid(spec: TaskSpec, cfg: Config, fixed_size: tuple[int, int] | None, model: str) -> None:
    """Refuse, before any run, a backbone whose token grid is part of its weights (MLP-Mixer) in a task config that
    has no sound protocol for it (docs/paper-scale.md)."""
    if fixed_size is None:
        return
    problem = spec.fixed_grid_problem(cfg, fixed_size)
    if problem is not None:
        size = f"{fixed_size[0]}×{fixed_size[1]}"
        raise UserInputError("--backbone", f"{model} takes only {size} inputs (a fixed token grid): {problem}")


def run_transfer(
    spec: TaskSpec,
    identity: RunIdentity,
    backbone: Path,
    cfg: Config,
    work_dir: Path,
    results_dir: Path | None,
    launcher: str = "none",
    force: bool = False,
    loggers: tuple[str, ...] = (),
    resume: bool = False,
) -> list[Path]:
    """Train and evaluate ``cfg`` (a config as ``load_config`` gave it, the run's ``identity`` computed from it with
    ``task_identity``) on the export ``backbone``, seeded with the identity's transfer seed; returns the record files
    written.

    A run whose records exist is skipped (``force`` runs it again and supersedes them). ``loggers`` adds trackers
    (tensorboard, wandb, mlflow) to mmengine's visualiser, beside its local files. ``resume`` continues the run
    from the newest checkpoint in ``work_dir`` (made by the same settings), or starts it if there is none."""
    model = read_sidecar(backbone).model
    seed = identity.transfer_seed or 0
    stage = DenseTransfer(identity, spec, backbone, model, cfg, work_dir, launcher, seed, loggers, resume)
    done = stage.run(results_dir, force)
    return [] if done.finished_earlier else done.records


@dataclass
class DenseTransfer(RecordedRun):
    """A dense transfer (detection, segmentation, ...): ``cfg`` as loaded, the identity computed from it."""

    spec: TaskSpec
    backbone: Path
    model: str  # the export's timm model
    cfg: Config
    work_dir: Path
    launcher: str
    seed: int
    loggers: tuple[str, ...]
    resume: bool

    def execute(self, context: RunContext) -> Measured | None:
        from mmengine.runner import Runner

        spec, work_dir = self.spec, self.work_dir
        mm_ops.check_cuda_ops()
        cfg = wire(spec, self.backbone, self.cfg)  # the identity was computed from the config as loaded
        use_float32_without_gpu(cfg)
        cfg.pop("dataset_name", None)
        spec.prepare_data(cfg)
        cfg.work_dir = str(work_dir)
        cfg.launcher = self.launcher
        mm_distributed.start_processes(cfg, self.launcher)
        if cfg.get("visualizer") is not None:
            # mmengine hands out the visualiser by name, one per process: a second run under the shipped name
            # 'visualizer' would get the first one, with its folder and backends
            cfg.visualizer.name = f"visualizer:{work_dir.resolve()}"
            if self.loggers:
                name = f"{work_dir.parent.name}/{work_dir.name}"
                cfg.visualizer.vis_backends = vis_backends(self.loggers, work_dir, name)
        _seed(cfg, self.seed)
        _checkpoints(cfg, work_dir, self.identity, self.resume)
        context.started = now()
        try:
            runner = Runner.from_cfg(cfg)
        except (TypeError, KeyError) as err:
            raise UserInputError("--config", f"cannot build the runner: {str(err).splitlines()[0]}") from None
        keeper = _KeepLastMetrics()
        stop = _StopOnNonFiniteLoss(self.identity.task)
        for hook in (keeper, stop, mm_checkpoints.PositionSeeds(), mm_checkpoints.PlainCheckpoints()):
            runner.register_hook(hook)
        runner.train()
        metrics = keeper.metrics if keeper.metrics is not None else runner.val()  # evaluated once
        if spec.extra_evaluation is not None:
            metrics = dict(metrics) | spec.extra_evaluation(runner, cfg)
        values = recorded_values(spec, metrics, runner.logger.info)
        return Measured(values, model=self.model, run_dir=work_dir) if is_main_process() else None


def _checkpoints(cfg: Config, work_dir: Path, identity: RunIdentity, resume: bool) -> None:
    """Checkpoints written atomically and read weights-only (``mm_checkpoints``); with ``resume``, the run continues
    from the newest one in ``work_dir``, which must hold this run (``RUN_FILE``)."""
    mm_checkpoints.install()
    hook = (cfg.get("default_hooks") or {}).get("checkpoint")
    if hook is not None and not hook.get("backend_args"):
        hook.backend_args = dict(backend=mm_checkpoints.ATOMIC_BACKEND)
    this_run = run_tag(identity)
    latest = mm_checkpoints.latest_checkpoint(work_dir) if resume else None
    if latest is not None:
        held = json.loads((work_dir / RUN_FILE).read_text()) if (work_dir / RUN_FILE).is_file() else None
        check_same_run(held, this_run, work_dir)
        cfg.resume, cfg.load_from = True, str(latest)
        logger.info(f"resuming from {latest}")
    elif resume:
        logger.info(f"'{work_dir}' holds no checkpoint: the run starts at iteration 0")
    if is_main_process():
        atomic_write_json(work_dir / RUN_FILE, this_run)


def recorded_values(spec: TaskSpec, metrics: dict, log: Callable[[str], None] = print) -> dict[str, float]:
    """The record values (percent) of an evaluation's metrics. An evaluation that returned nothing, for a task
    whose evaluator does that when there are no predictions, is recorded as 0 (and logged as such); a metric
    missing for any other reason is an error naming it, before any record is written."""
    metrics = dict(metrics or {})
    if not metrics and spec.empty_means_zero:
        log("the model predicted nothing on the validation set; every metric is recorded as 0.0")
        return {name: 0.0 for key, (name, _) in spec.metrics.items() if key not in spec.optional}
    missing = [key for key in spec.metrics if key not in metrics and key not in spec.optional]
    if missing:
        raise UserInputError(
            "val_evaluator",
            f"the evaluation produced no {', '.join(missing)} (it gave: {', '.join(sorted(metrics)) or 'nothing'}); "
            "check the evaluator's metrics",
        )
    return {name: float(metrics[key]) * factor for key, (name, factor) in spec.metrics.items() if key in metrics}
