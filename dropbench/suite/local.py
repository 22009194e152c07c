"""The local executor: the plan's runs one subprocess after another, in order."""

import time
from collections.abc import Callable
from pathlib import Path

from dropbench.core.errors import UserInputError
from dropbench.suite.plan import Suite
from dropbench.suite.running import Outcome, command_line, conclude, detail, run_logged, skip_or_none


def execute_local(suite: Suite, cwd: Path, echo: Callable[[str], None] = print) -> list[Outcome]:
    """Run the plan one subprocess at a time, in order."""
    if suite.data and suite.data != "mnist" and not Path(suite.data).is_dir():
        raise UserInputError("pretrain.data", f"'{suite.data}' is neither 'mnist' nor a folder")
    outcomes: dict[str, Outcome] = {}
    for index, run in enumerate(suite.runs, 1):
        prefix = f"[{index}/{len(suite.runs)}] {run.name}"
        outcome = skip_or_none(run, outcomes)
        if outcome is None:
            echo(f"{prefix}: running, log {run.log}")
            start = time.perf_counter()
            outcome = conclude(run, run_logged(command_line(run, gpus=0), run.log, cwd))
            outcome.seconds = time.perf_counter() - start
            echo(f"{prefix}: {outcome.status} in {outcome.seconds:.0f} s" + detail(outcome))
        else:
            echo(f"{prefix}: {outcome.status}" + detail(outcome))
        outcomes[run.name] = outcome
    return list(outcomes.values())
