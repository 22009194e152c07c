"""`dropbench compare` over many records (goal: 100,000 records in ≤ 2 s).

Writes N real record files (10 backbones × 4 regimes × 25 datasets × 10 seeds, repeated), then times reading
them and building the table, with the paired t intervals that seeds make possible.

    python benchmarks/bench_compare.py [--records 100000]
"""

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dropbench.compare import read_records, render, summarise
from dropbench.core.identity import ResultRecord

REGIMES = ("no_dropout", "early_dropout", "late_dropout", "standard_dropout")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "records"
        folder.mkdir()
        for i in range(args.records):
            record = ResultRecord(
                backbone=f"b{i % 10}",
                model="m",
                regime=REGIMES[(i // 10) % 4],
                recipe="cpu",
                seed=(i // 1000) % 10,
                stage="transfer",
                task="classification",
                dataset=f"d{(i // 40) % 25}",
                protocol="p",
                metric="top1",
                value=float(rng.normal(70, 2)),
                unit="%",
                config_hash="h",
                code_version="v",
                started="s",
                finished="f",
                run_dir="r",
            )
            (folder / f"{i}.json").write_text(json.dumps(asdict(record)))
        start = time.perf_counter()
        records, _ = read_records(tmp)
        read = time.perf_counter()
        stats = summarise(records)
        render(stats, "md")
        done = time.perf_counter()
    intervals = int(stats["delta_low"].notna().sum())
    print(
        f"{len(records)} records: read {read - start:.2f} s, table {done - read:.2f} s "
        f"({len(stats)} cells, {intervals} paired t intervals), total {done - start:.2f} s"
    )


if __name__ == "__main__":
    main()
