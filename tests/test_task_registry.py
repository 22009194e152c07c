"""A transfer task defined outside the package is one module: this one. It registers a toy task, ``probe`` (the
L2 norm of an export's weights, recorded as a transfer), and the CLI, ``suite --dry-run``, a real ``suite`` run
(each run its own process, which imports this module as a plugin) and ``compare`` take it with no package file
edited."""

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from dropbench.core.export import read_sidecar, read_weights
from dropbench.core.identity import Part
from dropbench.core.lifecycle import Measured, Stage, StageRun
from dropbench.tasks import PLUGINS_VARIABLE, SuiteTask, TransferTask, register, transfer_tasks
from tests.conftest import make_untrained_export

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = "tests.test_task_registry"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--norm", choices=("l2", "l1"), default="l2")


@dataclass
class WeightNorm(Stage):
    export: Path
    norm: str
    work_dir: Path

    def execute(self, stage_run: StageRun) -> Measured:
        weights = read_weights(self.export)
        order = 2 if self.norm == "l2" else 1
        value = torch.linalg.vector_norm(torch.cat([w.float().flatten() for w in weights.values()]), ord=order)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        return Measured({f"{self.norm}_norm": float(value)}, read_sidecar(self.export).model, self.work_dir, unit="")


def _run(args: argparse.Namespace) -> None:
    task_part = Part.of({"norm": args.norm})
    identity = read_sidecar(args.backbone).pretraining_identity()
    identity = identity.transfer("weight_probe", "weights", args.norm, args.seed, task_part)
    WeightNorm(identity, Path(args.backbone), args.norm, Path(args.work_dir)).run(args.results, args.force)


def _from_suite(index: int, raw: dict) -> SuiteTask:
    norm = raw.get("norm", "l2")
    return SuiteTask(
        "probe", raw.get("name") or f"probe-{norm}", "weights", norm, Part.of({"norm": norm}), ("--norm", norm)
    )


PROBE = register(
    TransferTask(
        kind="probe",
        task="weight_probe",
        help="the norm of an export's weights (a toy task registered from outside the package)",
        run=_run,
        from_suite=_from_suite,
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
