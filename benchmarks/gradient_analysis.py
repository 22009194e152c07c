"""The paper's §3 experiment in miniature: does dropout lower GDV and GDE early in training?

The micro ViT on MNIST, no dropout vs. dropout 0.1 for the whole run, several seeds, with the gradient
diagnostics every few iterations. Prints mean ± std over seeds of each metric in the first iterations and over
the whole run, and draws the curves (``diagnostics_<metric>.png``).

    python benchmarks/gradient_analysis.py --out runs/gradient_analysis [--seeds 0 1 2] [--early 100]
"""

import argparse
import csv
import statistics
from pathlib import Path

from dropbench.core.models import BackboneConfig
from dropbench.plots import plot_diagnostics
from dropbench.pretrain.config import Recipe, Regime
from dropbench.pretrain.diagnostics import DiagnosticsConfig
from dropbench.pretrain.train import pretrain

REGIMES = ("no_dropout", "standard_dropout")
METRICS = ("grad_norm", "model_distance", "gdv", "gde")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gradient_analysis"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--early", type=int, default=100, help="iterations that count as 'first iterations'")
    args = parser.parse_args()

    backbone = BackboneConfig.load("vit_micro")
    diagnostics = DiagnosticsConfig(every=args.every, batches=8, full=1024)
    run_dirs = []
    for regime in REGIMES:
        for seed in args.seeds:
            run_dir = args.out / f"{regime}-seed{seed}"
            run_dirs.append(run_dir)
            if (run_dir / "export").is_dir():
                continue
            recipe = Recipe.load("cpu", {"epochs": args.epochs, "seed": seed})
            pretrain(
                backbone,
                Regime.load(regime),
                recipe,
                "mnist",
                run_dir,
                results_dir=None,
                resume=run_dir.exists(),
                diagnostics=diagnostics,
            )

    print(f"\nmean ± std over seeds {args.seeds}; 'first' = iterations < {args.early}")
    print(f"| regime | window | {' | '.join(METRICS)} |\n|---|---|{'---|' * len(METRICS)}")
    for regime in REGIMES:
        for window, limit in (("first", args.early), ("whole run", None)):
            cells = []
            for metric in METRICS:
                per_seed = []
                for seed in args.seeds:
                    with (args.out / f"{regime}-seed{seed}" / "diagnostics.csv").open() as f:
                        rows = [r for r in csv.DictReader(f) if limit is None or int(r["update"]) < limit]
                    per_seed.append(statistics.mean(float(r[metric]) for r in rows))
                spread = statistics.stdev(per_seed) if len(per_seed) > 1 else 0.0
                cells.append(f"{statistics.mean(per_seed):.4f} ± {spread:.4f}")
            print(f"| {regime} | {window} | {' | '.join(cells)} |")
    for path in plot_diagnostics(run_dirs, args.out):
        print(path)


if __name__ == "__main__":
    main()
