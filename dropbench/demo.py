"""The embedded default, end to end: ``configs/suites/demo.yaml`` run through the suite runner (so an interrupted
demo resumes where it stopped and finished runs are skipped), then the comparison table and the figures.
"""

import csv
import time
from pathlib import Path

from dropbench.compare import read_records, render, summarise
from dropbench.core.configs import CONFIG_ROOT
from dropbench.core.io import atomic_write_text
from dropbench.deltas import beyond_floor_line, column_units, delta_table, plot_delta_table
from dropbench.plots import plot_curves, plot_schedules
from dropbench.suite import Suite, execute_local, load_suite, report
from dropbench.tasks import PRETRAIN_KIND

DEMO_SUITE = CONFIG_ROOT / "suites" / "demo.yaml"


def _echo(line: str) -> None:
    print(line, flush=True)


def _figures(suite: Suite, deltas) -> list[Path]:
    """Pretraining curves and schedules (first seed of each backbone × regime) and the Δ plot with its csv."""
    figures = suite.results_dir / "figures"
    logs, schedules, iters_per_epoch = {}, {}, 1
    for run in suite.runs:
        log = run.work_dir / "log.csv"
        if run.kind != PRETRAIN_KIND or not log.is_file():
            continue
        label = f"{run.identity.backbone} {run.identity.regime}"
        with log.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if label in logs or not rows or int(rows[-1]["epoch"]) == 0:  # random_init trains no epoch
            continue
        logs[label] = rows
        iters_per_epoch = int(rows[-1]["update"]) // int(rows[-1]["epoch"])
        regime, recipe = suite.regimes[run.identity.regime], suite.recipes[(run.identity.recipe, run.identity.seed)]
        for kind in ("dropout", "drop_path"):
            setting = getattr(regime, kind)
            if setting is not None:
                schedules[f"{regime.name} ({kind})"] = setting.rates(recipe.epochs, iters_per_epoch)
    written = plot_delta_table(deltas, figures)
    if logs:
        written.append(plot_curves(logs, figures / "pretrain_curves.png", title=f"pretraining, suite '{suite.name}'"))
    if schedules:
        written.append(plot_schedules(schedules, iters_per_epoch, figures / "schedules.png"))
    return written


def run_demo(suite_path: Path | None = None, jobs: int = 1) -> int:
    """Run the demo suite (``jobs`` runs side by side on the CPU), print the table and the wall time per stage;
    returns the exit code."""
    start = time.perf_counter()
    suite = load_suite(suite_path or DEMO_SUITE)
    outcomes = execute_local(suite, Path.cwd(), _echo, jobs=jobs)
    text, ok = report(suite, outcomes)
    print(text, flush=True)

    def warn(message: str) -> None:
        print(f"warning: {message}", flush=True)

    records, _ = read_records(suite.results_dir)
    stats = summarise(records, warn=warn)
    deltas = delta_table(stats, column_units(records))
    table = render(stats, "md")
    floor_line = beyond_floor_line(deltas)
    atomic_write_text(suite.results_dir / "table.md", table + (f"\n{floor_line}\n" if floor_line else ""))
    print("\n" + table)
    if floor_line:
        print(floor_line)
    written = _figures(suite, deltas)
    print("table:", suite.results_dir / "table.md")
    print("figures:", ", ".join(str(p) for p in written))
    seconds: dict[str, float] = {}
    for outcome in outcomes:
        seconds[outcome.run.kind] = seconds.get(outcome.run.kind, 0.0) + outcome.seconds
    split = ", ".join(f"{stage} {value:.0f} s" for stage, value in seconds.items())
    print(f"demo wall time: {time.perf_counter() - start:.0f} s (seconds in runs, per stage: {split})")
    return 0 if ok else 1
