"""A suite executor defined outside the package is one module: this one. It registers ``sequential`` (every run
one after another, in plan order) and ``dropbench suite --executor sequential`` plans, runs and skips with it, with
no package file edited. The runs are the toy ``probe`` task's, itself a plugin (tests/test_task_registry.py)."""

import os
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from dropbench.plugins import PLUGINS_VARIABLE
from dropbench.suite import Executor, Outcome, Run, Suite, executors, register_executor
from dropbench.suite.running import command_line, conclude, run_logged, skip_or_none
from tests.test_task_registry import _probe_suite

ROOT = Path(__file__).resolve().parents[1]


@register_executor
class SequentialExecutor(Executor):
    name = "sequential"
    help = "every run one after another in plan order, on the CPU (a toy executor)"

    def __init__(self, dry_run: bool = False):
        self.dry_run = dry_run

    def commands(self, suite: Suite) -> list[tuple[Run, str]]:
        return [(run, shlex.join(command_line(run, 0, prepare=False))) for run in suite.runs]

    def gpus_of(self, suite: Suite, stage: str) -> int:
        return 0

    def execute(self, suite: Suite, cwd: Path, echo: Callable[[str], None]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        for run in suite.runs:
            outcome = skip_or_none(run, outcomes) or conclude(run, run_logged(command_line(run, 0), run.log, cwd))
            echo(f"{run.name}: {outcome.status}")
            outcomes[run.name] = outcome
        return [outcomes[run.name] for run in suite.runs]


def test_an_executor_registered_outside_the_package_plans_runs_and_skips_a_suite(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(PLUGINS_VARIABLE, "tests.test_task_registry")  # the probe task, in the runs' processes
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    suite = _probe_suite(tmp_path)

    code, out, err = cli("suite", suite, "--executor", "sequential", "--dry-run")
    assert code == 0, err
    assert sum("-m dropbench.cli transfer probe" in line for line in out.splitlines()) == 2, out

    code, out, err = cli("suite", suite, "--executor", "sequential")
    assert code == 0, out + err
    assert out.count(": done") == 2 and "suite 'probe': 2 done" in out
    assert len(list((tmp_path / "results" / "records").glob("*__weight_probe__*.json"))) == 2

    code, out, _ = cli("suite", suite, "--executor", "sequential")
    assert code == 0 and "2 finished earlier" in out

    code, _, err = cli("suite", suite, "--executor", "sequential", "--gpus", "1")
    assert code == 2 and err.count("\n") == 1 and "--gpus: is the local executor's, not sequential's" in err


def test_an_executor_name_is_refused_from_another_module_and_replaced_from_its_own(monkeypatch):
    monkeypatch.setattr(executors, "_EXECUTORS", dict(executors.executor_classes()))

    class Local(SequentialExecutor):
        name = "local"

    with pytest.raises(ValueError, match="executor 'local' is registered by dropbench.suite.local already"):
        register_executor(Local)
    assert executors.executor_classes()["local"].__module__ == "dropbench.suite.local"

    class Sequential(SequentialExecutor):  # the same module imported again
        pass

    assert register_executor(Sequential) is Sequential
    assert executors.executor_classes()["sequential"] is Sequential
