"""What the embedded benchmark can resolve: the sensitivity suite, then its table with the noise floor.

Runs ``configs/suites/sensitivity.yaml`` (the micro ViT under random init, no dropout and early dropout, 4
pretraining seeds, every embedded transfer; finished runs are skipped), then prints the comparison table with
each column's seed-to-seed std and minimum detectable Δ, the (no_dropout − random_init) Δ of every column with
its paired 95 % interval, and the wall time per stage.

    python benchmarks/sensitivity.py [--suite configs/suites/sensitivity.yaml] [--jobs 2] [--write-floors]

``--write-floors`` then writes each column's measured floor, with its provenance, to
``results/noise_floors/<suite name>.csv``: the floors ``dropbench plot deltas`` and the demo draw for a single-seed Δ.
"""

import argparse
import datetime
import os
import time
from pathlib import Path

from dropbench.cli import DEMO_JOBS
from dropbench.compare import COLUMN, noise_floor, read_records, render, summarise
from dropbench.core.configs import CONFIG_ROOT, NOISE_FLOORS
from dropbench.core.version import code_version
from dropbench.deltas import write_floors
from dropbench.suite import execute_local, load_suite, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", default=str(CONFIG_ROOT / "suites" / "sensitivity.yaml"))
    parser.add_argument("--jobs", type=int, default=DEMO_JOBS, help="runs side by side on the CPU, as for the demo")
    parser.add_argument("--write-floors", action="store_true", help="write results/noise_floors/<suite>.csv")
    args = parser.parse_args()
    suite = load_suite(args.suite)
    start = time.perf_counter()
    outcomes = execute_local(suite, Path.cwd(), lambda line: print(line, flush=True), jobs=args.jobs)
    text, _ = report(suite, outcomes)
    print(text)
    seconds: dict[str, float] = {}
    for outcome in outcomes:
        seconds[outcome.run.kind] = seconds.get(outcome.run.kind, 0.0) + outcome.seconds
    print(f"wall time {time.perf_counter() - start:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))

    stats = summarise(read_records(suite.results_dir)[0])
    print("\n" + render(stats, "md"))
    floors = noise_floor(stats).set_index(COLUMN)
    reference = stats[stats["regime"] == "random_init"].set_index(COLUMN)
    print("The benchmark measures the backbone in a column where (no_dropout − random_init) excludes 0:\n")
    print("| column | no_dropout − random_init [95 % paired t] | seed std | min detectable Δ (3 seeds) |")
    print("|---|---|---|---|")
    for key, row in reference.iterrows():  # its Δ is random_init − no_dropout: turned round
        floor = floors.loc[key]
        print(
            f"| {'/'.join(key)} | {-row['delta']:+.2f} [{-row['delta_high']:+.2f}, {-row['delta_low']:+.2f}] "
            f"n={int(row['n_paired'])} | {floor['seed_std']:.2f} | {floor['min_detectable_delta']:.2f} |"
        )
    if args.write_floors:
        source = (
            f"{suite.name} suite at {code_version()} ({datetime.date.today()}): {suite.grid[2]} pretraining seeds, "
            f"{os.cpu_count()} CPU cores"
        )
        print(write_floors(stats, source, NOISE_FLOORS / f"{suite.name}.csv"))


if __name__ == "__main__":
    main()
