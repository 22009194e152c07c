"""Every pretraining export of a suite under ImageNet-C's corruptions (``dropbench eval --corruptions``), the mCE
normalised by one reference export outside the comparison, then the paired table.

    .venv/bin/python benchmarks/corruptions.py --runs runs/suites/regimes_embedded --data fashion_mnist \\
        --reference runs/suites/regimes_select/vit_micro-no_dropout-seed0/pretrain/export --results results/robustness
"""

import argparse
import logging
import time
from pathlib import Path

from dropbench.compare import read_records, render, summarise
from dropbench.core.corruptions import CACHE, SEED, corrupted_set
from dropbench.evaluation import corruption_test_images, evaluate_export
from dropbench.plots import plot_corruption_examples


def draw_examples(data: str, images: int, out: Path) -> None:
    """The first of the evaluated images clean and in every cell (read from the cache the evaluation made)."""
    clean, _ = corruption_test_images(data, images)
    cells = corrupted_set(clean, data, CACHE, SEED)
    plot_corruption_examples(clean[0], {key: array[0] for key, array in cells.items()}, out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, help="a suite's runs folder: <runs>/<run>/pretrain/export")
    parser.add_argument("--data", default="fashion_mnist")
    parser.add_argument("--reference", required=True, help="the export whose errors normalise the mCE")
    parser.add_argument("--results", required=True)
    parser.add_argument("--images", type=int, default=1000)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = Path(args.results)
    start = time.perf_counter()
    evaluate_export(Path(args.reference), args.data, results / "reference", corruptions=args.images)
    (reference,) = (results / "reference" / "corruptions").glob("*.csv")
    exports = sorted(Path(args.runs).glob("*/pretrain/export"))
    for export in exports:
        evaluate_export(export, args.data, results, corruptions=args.images, mce_reference=reference)
    records, _ = read_records(results)
    print(render(summarise(records), "md"))
    draw_examples(args.data, args.images, results / "corruption_examples.png")
    print(f"{len(exports)} exports, {args.images} images x 75 cells, {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
