"""A transfer task defined outside the package is one module: this one. It registers a toy task, ``probe`` (the
L2 norm of an export's weights, recorded as a transfer), and the CLI, ``suite --dry-run``, a real ``suite`` run
(each run its own process, which imports this module as a plugin) and ``compare`` take it with no package file
edited."""

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from dropbench.core.export import read_sidecar, read_weights
from dropbench.core.identity import Part, ResultRecord, RunIdentity
from dropbench.core.lifecycle import Measured, RecordedRun, RunContext
from dropbench.suite import load_suite
from dropbench.tasks import PLUGINS_VARIABLE, SuiteOptions, TaskIdentity, TransferTask, register, transfer_tasks
from tests.conftest import make_untrained_export

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.test_task_registry"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm", choices=("l2", "l1"), default="l2")


@dataclass
class WeightNorm(RecordedRun):
    export: Path
    norm: str
    work_dir: Path

    def execute(self, context: RunContext) -> Measured:
        weights = read_weights(self.export)
        order = 2 if self.norm == "l2" else 1
        value = torch.linalg.vector_norm(torch.cat([w.float().flatten() for w in weights.values()]), ord=order)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        model = read_sidecar(self.export).model
        return Measured({f"{self.norm}_norm": float(value)}, model=model, run_dir=self.work_dir, unit="")


def _identity(args: argparse.Namespace) -> TaskIdentity:
    """The one place the task's settings become its records' names and settings digest."""
    return TaskIdentity("weights", args.norm, Part.of({"norm": args.norm}))


def _execute(args: argparse.Namespace, identity: RunIdentity, _: argparse.Namespace) -> None:
    WeightNorm(identity, Path(args.backbone), args.norm, Path(args.work_dir)).run(args.results, args.force)


def _suite_options(index: int, raw: dict) -> SuiteOptions:
    norm = raw.get("norm", "l2")
    return SuiteOptions(raw.get("name") or f"probe-{norm}", ("--norm", norm))


PROBE = register(
    TransferTask(
        kind="probe",
        task="weight_probe",
        help="the norm of an export's weights (a toy task registered from outside the package)",
        identity=_identity,
        execute=_execute,
        suite_options=_suite_options,
        add_arguments=_add_arguments,
        suite_keys=("norm",),
        default_seed=0,
    )
)


def _probe_suite(folder: Path) -> Path:
    for regime in ("no_dropout", "early"):
        make_untrained_export("vit_micro", folder / regime, regime)
    suite = {
        "exports": [str(folder / regime) for regime in ("no_dropout", "early")],
        "transfers": [{"kind": "probe", "norm": "l2"}],
        "output": {"runs": str(folder / "runs"), "results": str(folder / "results")},
    }
    path = folder / "probe.yaml"
    path.write_text(yaml.safe_dump(suite, sort_keys=False))
    return path


def _regime(identity: RunIdentity) -> str:
    return identity.regime


def test_a_task_registered_outside_the_package_runs_through_the_cli_the_suite_and_compare(cli, tmp_path, monkeypatch):
    assert list(transfer_tasks())[:3] == ["det", "seg", "cls"] and "probe" in transfer_tasks()
    monkeypatch.chdir(tmp_path)
    # The suite's runs are processes of their own: they import this module as a plugin.
    monkeypatch.setenv(PLUGINS_VARIABLE, PLUGIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    suite = _probe_suite(tmp_path)

    code, out, err = cli("suite", suite, "--dry-run")
    assert code == 0, err
    planned = [line for line in out.splitlines() if "transfer probe" in line]
    assert len(planned) == 2 and all("--norm l2" in line and line.lstrip().startswith("run") for line in planned)

    code, out, err = cli("suite", suite)
    assert code == 0, out + err
    assert "2 done" in out
    records = sorted((tmp_path / "results" / "records").glob("*.json"))
    assert len(records) == 2 and all("__weight_probe__weights__l2__" in path.name for path in records)
    # The plan and the runs (processes of their own) made each identity from the task's one identity hook.
    written = sorted((ResultRecord(**json.loads(path.read_text())).identity() for path in records), key=_regime)
    planned = sorted((run.identity for run in load_suite(suite).runs), key=_regime)
    assert written == planned and [identity.parts["task"] for identity in written] == [Part.of({"norm": "l2"})] * 2

    code, out, err = cli("compare", "--results", tmp_path / "results")
    assert code == 0, err
    assert "weights l2" in out and "l2_norm" in out
    rows = [line for line in out.splitlines() if line.startswith("| vit_micro")]
    assert {row.split("|")[3].strip() for row in rows} == {"no_dropout", "early"}, out

    code, out, _ = cli("suite", suite)  # finished: nothing runs again
    assert code == 0 and "2 finished earlier" in out


def test_a_plugin_that_cannot_be_imported_is_refused_in_one_line(tmp_path):
    environment = {**os.environ, PLUGINS_VARIABLE: "no_such_plugin_module"}
    result = subprocess.run(
        [sys.executable, "-m", "dropbench.cli", "compare", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        env=environment,
    )
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: DROPBENCH_PLUGINS: cannot import the plugin 'no_such_plugin_module'")


def test_an_unknown_task_kind_names_the_registered_ones(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = _probe_suite(tmp_path)
    suite.write_text(suite.read_text().replace("kind: probe", "kind: prob"))
    code, _, err = cli("suite", suite, "--dry-run")
    assert code == 2 and err.count("\n") == 1
    assert "transfers[0].kind: unknown transfer task 'prob'" in err and "probe" in err


def test_a_suite_entry_is_read_by_the_tasks_own_options(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    suite = _probe_suite(tmp_path)
    suite.write_text(suite.read_text().replace("norm: l2", "norm: l3"))
    code, _, err = cli("suite", suite, "--dry-run")
    assert code == 2 and err.count("\n") == 1, err
    assert "transfers[0]: argument --norm: invalid choice: 'l3'" in err


def test_the_command_line_is_built_without_torch_or_mm(tmp_path):
    """The task registry and the dense tasks' specs load nothing heavy until a run or a suite needs it."""
    probe = "import sys; from dropbench.cli import build_parser; build_parser(); "
    probe += "print(sorted(m for m in ('torch', 'timm', 'mmengine', 'mmdet', 'mmseg') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
