"""The comparison table: result records → backbone × recipe × regime rows, task/dataset/protocol/metric columns.

Each cell is the mean ± std over seeds (with the number of seeds); each regime also gets its Δ against the
baseline regime of the same backbone and recipe, with a 95 % paired-bootstrap interval (paired by seed) where
both have at least two common seeds. The best mean of each column (per backbone and recipe) is bold. Files
that are not records are skipped with a warning that names them.
"""

import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd

from dropbench.errors import UserInputError
from dropbench.records import ResultRecord

RECORD_FIELDS = [f.name for f in fields(ResultRecord)]
ROW = ["backbone", "recipe", "regime"]
PAPER_HASH = "paper"  # the config_hash of the paper's published numbers, shown with their recipe as "<recipe> (paper)"
COLUMN = ["task", "dataset", "protocol", "metric"]
PAPER_DIR = "paper"


def _json_files(results: Path, include_paper: bool) -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(results):
        if not include_paper and folder == str(results) and PAPER_DIR in subfolders:
            subfolders.remove(PAPER_DIR)
        subfolders.sort()
        found.extend(os.path.join(folder, name) for name in sorted(files) if name.endswith(".json"))
    return found


def _read_bytes(path: str) -> bytes | OSError:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        return err


def _parse(path: str, data: bytes | OSError) -> dict | str:
    """The record in one file, or the reason it is skipped."""
    if isinstance(data, OSError):
        return f"skipping '{path}': unreadable ({data.__class__.__name__})"
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"skipping '{path}': not valid JSON ({err.__class__.__name__})"
    return _check_record(path, record)


def _check_record(path: str, record) -> dict | str:
    if not isinstance(record, dict) or any(key not in record for key in RECORD_FIELDS):
        return f"skipping '{path}': not a result record (fields missing)"
    if not isinstance(record["value"], (int, float)) or isinstance(record["value"], bool):
        return f"skipping '{path}': value is not a number"
    return record


def read_records(results: str | Path, include_paper: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Every record under ``results`` (recursively; ``results/paper/`` only with ``include_paper``), and one
    message per file that was skipped because it is not a record."""
    results = Path(results)
    if not results.is_dir():
        raise UserInputError("--results", f"no such folder '{results}'")
    paths = _json_files(results, include_paper)
    contents = [_read_bytes(path) for path in paths]
    try:  # one parse of all files is much faster than one per file; any bad file falls back to per-file
        if any(isinstance(c, OSError) for c in contents):
            raise ValueError
        parsed = [
            _check_record(p, r) for p, r in zip(paths, json.loads(b"[" + b",".join(contents) + b"]"), strict=True)
        ]
    except (ValueError, UnicodeDecodeError):
        parsed = [_parse(p, c) for p, c in zip(paths, contents, strict=True)]
    rows = [r for r in parsed if isinstance(r, dict)]
    skipped = [r for r in parsed if isinstance(r, str)]
    frame = pd.DataFrame.from_records(rows, columns=RECORD_FIELDS)
    published = frame["config_hash"] == PAPER_HASH
    frame.loc[published, "recipe"] = frame.loc[published, "recipe"] + " (paper)"
    return frame, skipped


def paired_bootstrap_interval(
    deltas: np.ndarray, resamples: int = 10_000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile interval of the mean of per-seed differences, resampling seeds with replacement."""
    rng = np.random.default_rng(seed)
    means = rng.choice(deltas, size=(resamples, len(deltas)), replace=True).mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def summarise(records: pd.DataFrame, baseline: str = "no_dropout") -> pd.DataFrame:
    """One row per (backbone, regime, task, dataset, protocol, metric): mean, std, n, Δ and its interval."""
    if records.empty:
        return pd.DataFrame(columns=[*ROW, *COLUMN, "mean", "std", "n", "delta", "delta_low", "delta_high"])
    # a seed run twice counts once (its last record)
    per_seed = records.groupby([*ROW, *COLUMN, "seed"], sort=False)["value"].last()
    stats = per_seed.groupby(level=[*ROW, *COLUMN]).agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    stats = stats.reset_index()
    base = stats[stats["regime"] == baseline].set_index(["backbone", "recipe", *COLUMN])["mean"]
    key = pd.MultiIndex.from_frame(stats[["backbone", "recipe", *COLUMN]])
    stats["delta"] = stats["mean"].to_numpy() - base.reindex(key).to_numpy()
    stats.loc[stats["regime"] == baseline, "delta"] = np.nan

    seeds = per_seed.unstack("seed")
    low, high = [], []
    for _, row in stats.iterrows():
        interval = (np.nan, np.nan)
        if row["regime"] != baseline:
            own = (row["backbone"], row["recipe"], row["regime"], *(row[c] for c in COLUMN))
            ref = (row["backbone"], row["recipe"], baseline, *(row[c] for c in COLUMN))
            if ref in seeds.index:
                paired = (seeds.loc[own] - seeds.loc[ref]).dropna().to_numpy()
                if len(paired) >= 2:
                    interval = paired_bootstrap_interval(paired)
        low.append(interval[0])
        high.append(interval[1])
    stats["delta_low"], stats["delta_high"] = low, high
    return stats


BOLD = {"md": ("**", "**"), "csv": ("", ""), "latex": ("\\textbf{", "}"), "html": ("<b>", "</b>")}


def comparison_table(stats: pd.DataFrame, bold: tuple[str, str] = BOLD["md"]) -> pd.DataFrame:
    """Pivot to rows backbone × recipe × regime, columns task/dataset/protocol/metric, formatted cells."""
    if stats.empty:
        return pd.DataFrame()
    best = stats.groupby(["backbone", "recipe", *COLUMN])["mean"].transform("max")

    def cell(row) -> str:
        text = f"{row['mean']:.2f}"
        if row["n"] > 1:
            text += f" ± {row['std']:.2f}"
        text += f" (n={int(row['n'])})"
        if row["mean"] == best[row.name]:
            text = f"{bold[0]}{text}{bold[1]}"
        if not np.isnan(row["delta"]):
            text += f" Δ {row['delta']:+.2f}"
            if not np.isnan(row["delta_low"]):
                text += f" [{row['delta_low']:+.2f}, {row['delta_high']:+.2f}]"
        return text

    cells = stats.assign(cell=stats.apply(cell, axis=1))
    cells["column"] = cells[COLUMN].astype(str).agg("/".join, axis=1)
    table = cells.pivot(index=ROW, columns="column", values="cell").fillna("–")
    table.columns.name = None
    return table


def _markdown(table: pd.DataFrame) -> str:
    header = [*table.index.names, *table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([*index, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def render(stats: pd.DataFrame, fmt: str) -> str:
    """The table as Markdown, CSV, LaTeX or HTML, with the best mean of each column in bold."""
    if fmt not in BOLD:
        raise UserInputError("--format", f"'{fmt}' is not one of {', '.join(BOLD)}")
    table = comparison_table(stats, BOLD[fmt])
    if table.empty:
        return "no records\n"
    if fmt == "md":
        return _markdown(table)
    if fmt == "csv":
        return table.to_csv()
    if fmt == "latex":
        table = table.rename(index=lambda name: name.replace("_", r"\_"), columns=lambda name: name.replace("_", r"\_"))
        return table.to_latex(escape=False).replace("±", "$\\pm$").replace("Δ", "$\\Delta$")
    return table.to_html(escape=False)


def plot_deltas(stats: pd.DataFrame, out: str | Path) -> Path:
    """Δ against the baseline per task/dataset/metric column (groups) and regime (bars), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dropbench.io import atomic_write

    deltas = stats.dropna(subset=["delta"]).copy()
    deltas["column"] = deltas[COLUMN].astype(str).agg("/".join, axis=1)
    deltas["row"] = deltas["backbone"] + " " + deltas["regime"]
    table = deltas.pivot_table(index="column", columns="row", values="delta")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(table) + 2), 4.0), dpi=120)
    if table.empty:
        ax.text(0.5, 0.5, "no Δ to show (no baseline runs)", ha="center", va="center")
    else:
        width = 0.8 / len(table.columns)
        for i, row in enumerate(table.columns):
            ax.bar(np.arange(len(table)) + i * width, table[row].to_numpy(), width=width, label=row)
        ax.set_xticks(np.arange(len(table)) + 0.4 - width / 2, table.index, rotation=20, ha="right", fontsize=8)
        ax.axhline(0, color="black", linewidth=0.8)
        ax.legend(frameon=False, fontsize=8)
    ax.set_ylabel("Δ vs baseline (points)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png"))
    plt.close(fig)
    return written
