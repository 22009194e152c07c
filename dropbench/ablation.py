"""Ablation figures, drawn from records alone: a headline metric against one swept field.

For each headline metric, each point of the sweep is the mean over pretraining seeds with its 95 % Student-t
interval (df = n − 1), beside the paired Δ against the baseline regime with the paired t interval over the seeds
both have, as ``compare`` computes them. The baseline is a band (mean ± its interval), ``random_init`` a line; one
series per combination of the other swept fields. At n = 1 a point has no interval: the figure draws the measured
noise floor instead (the seed-to-seed std pooled over the column's rows with n ≥ 2, as ``compare`` prints it), or
says that there is none. Beside the figures goes ``ablation.csv``: the numbers they draw.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from dropbench.compare import (
    COLUMN,
    LEVEL,
    METRIC_LABELS,
    REFERENCE_REGIMES,
    ROW,
    noise_floor,
    select_metrics,
    swept_fields,
)
from dropbench.core.errors import UserInputError, did_you_mean
from dropbench.core.identity import EXPORT_EPOCH
from dropbench.core.io import atomic_write_csv
from dropbench.core.sweeps import is_geometric

ABLATION_COLUMNS = ["metric", "x", "mean", "ci_low", "ci_high", "n", "delta", "delta_low", "delta_high", "n_paired"]


def swept_field(stats: pd.DataFrame, name: str) -> str:
    """The swept field ``name`` names: in full (``regime.dropout.cutoff_epoch``) or by its end (``cutoff_epoch``,
    ``dropout.cutoff_epoch``) where that is one field."""
    swept = swept_fields(stats)
    matches = [field for field in swept if field == name or field.endswith(f".{name}")]
    if len(matches) != 1:
        known = ", ".join(swept) or "none: the records hold no sweep"
        hint = did_you_mean(name, swept) if not matches else f"; it names {', '.join(matches)}"
        raise UserInputError("--x", f"'{name}' is not one swept field{hint} (swept: {known})")
    return matches[0]


def ablation_table(stats: pd.DataFrame, x_field: str, baseline: str, metrics: str = "headline") -> pd.DataFrame:
    """One row per metric × sweep point: the point's mean and t interval over seeds, its paired Δ against the
    baseline, the other swept fields, and the row it is (backbone, recipe, regime)."""
    shown = select_metrics(stats, metrics)
    points = shown[shown[x_field].notna()].copy()
    if points.empty:
        raise UserInputError("--x", f"no records hold a value of {x_field}")
    others = [f for f in swept_fields(stats) if f != x_field and points[f].notna().any()]
    half = _t_half_width(points)
    points["x"] = points[x_field]
    points["ci_low"], points["ci_high"] = points["mean"] - half, points["mean"] + half
    columns = ABLATION_COLUMNS + others + [c for c in COLUMN if c != "metric"] + ROW
    return points[columns].reset_index(drop=True)


def _t_half_width(stats: pd.DataFrame) -> np.ndarray:
    n = stats["n"].to_numpy(dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(n >= 2, scipy_stats.t.ppf(0.5 + LEVEL / 2, np.maximum(n - 1, 1)), np.nan)
        return t * stats["std"].to_numpy(dtype=float) / np.sqrt(n)


def _reference(stats: pd.DataFrame, points: pd.DataFrame, regime: str) -> pd.DataFrame:
    """The rows of ``regime`` (the baseline, ``random_init``) beside the sweep's backbones and recipes."""
    rows = stats[(stats["regime"] == regime) & stats["backbone"].isin(points["backbone"])]
    rows = rows[rows["recipe"].isin(points["recipe"])].copy()
    half = _t_half_width(rows)
    rows["ci_low"], rows["ci_high"] = rows["mean"] - half, rows["mean"] + half
    return rows


def plot_ablation(
    stats: pd.DataFrame, x_name: str, out_dir: str | Path, baseline: str = "no_dropout", metrics: str = "headline"
) -> list[Path]:
    """``ablation_<metric>.png`` per headline metric and ``ablation.csv``, in ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator, NullFormatter

    from dropbench.plots import save_png

    x_field = swept_field(stats, x_name)
    table = ablation_table(stats, x_field, baseline, metrics)
    others = [c for c in table.columns if c not in ABLATION_COLUMNS + ROW + COLUMN]
    out_dir = Path(out_dir)
    written = [atomic_write_csv(out_dir / "ablation.csv", list(table.columns), _csv_rows(table))]
    base = _reference(stats, table, baseline)
    reference = {regime: _reference(stats, table, regime) for regime in REFERENCE_REGIMES}
    floors = noise_floor(stats).set_index(COLUMN)
    categorical = not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in table["x"])
    for key, own in table.groupby(COLUMN, sort=False):
        metric = " / ".join(str(part) for part in key)
        fig, (ax, ax_delta) = plt.subplots(2, 1, figsize=(6.4, 6.0), dpi=130, sharex=True)
        labels = list(dict.fromkeys(own["x"])) if categorical else []
        rows = _series_rows(own, x_field)  # a regime (or backbone) of its own where x is no field of it
        keys = rows + others
        for series, group in own.groupby(keys, sort=False, dropna=False) if keys else [((), own)]:
            group = group.sort_values("x", key=lambda v: v.map(str) if categorical else v)
            label = _series_label(keys, series, rows)
            x = np.asarray([labels.index(v) for v in group["x"]] if categorical else group["x"], dtype=float)
            _draw(ax, x, group["mean"], group["ci_low"], group["ci_high"], label)
            _draw(ax_delta, x, group["delta"], group["delta_low"], group["delta_high"], label)
        if "regime" not in rows:  # the baseline is not itself a series over x: its band
            _band(ax, _of_column(base, key), f"{baseline} (baseline)", "tab:gray")
        for regime, rows in reference.items():
            rows = _of_column(rows, key)
            if not rows.empty:
                ax.axhline(rows["mean"].mean(), color="tab:red", linestyle=":", label=f"{regime} (n={rows['n'].min()})")
        ax_delta.axhline(0, color="black", linewidth=0.8)
        n_text = _noise_text(own, floors)
        ax.set_ylabel(METRIC_LABELS.get(key[-1], key[-1]))
        ax_delta.set_ylabel(f"Δ vs {baseline}\n({LEVEL:.0%} paired t interval)")
        ax.set_title(f"{metric}\nmean, {LEVEL:.0%} t interval over seeds; {n_text}", fontsize=8)
        ax_delta.set_xlabel("pretraining epoch of the export" if x_field == EXPORT_EPOCH else x_field)
        if categorical:
            ax_delta.set_xticks(range(len(labels)), [str(v) for v in labels])
        elif is_geometric(list(own["x"].unique())):
            ax_delta.set_xscale("log")
            ax_delta.set_xticks(sorted(own["x"].unique()), [f"{v:g}" for v in sorted(own["x"].unique())])
            ax_delta.xaxis.set_minor_formatter(NullFormatter())
        elif all(float(v).is_integer() for v in own["x"]):
            ax_delta.xaxis.set_major_locator(MaxNLocator(integer=True))
        for axis in (ax, ax_delta):
            axis.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in metric.replace(" / ", "__"))
        written.append(save_png(fig, out_dir / f"ablation_{safe}.png"))
        plt.close(fig)
    return written


def _of_column(rows: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of one table column (task, dataset, protocol, metric)."""
    return rows[(rows[COLUMN] == pd.Series(key, index=COLUMN)).all(axis=1)]


def _draw(ax, x: np.ndarray, mean: pd.Series, low: pd.Series, high: pd.Series, label: str) -> None:
    mean, low, high = (np.asarray(v, dtype=float) for v in (mean, low, high))
    line = ax.plot(x, mean, marker="o", label=label or None)[0]
    has = ~np.isnan(low)
    if has.any():
        err = np.vstack([mean[has] - low[has], high[has] - mean[has]])
        ax.errorbar(x[has], mean[has], yerr=err, fmt="none", ecolor=line.get_color(), capsize=3)


def _band(ax, rows: pd.DataFrame, label: str, color: str) -> None:
    if rows.empty:
        return
    mean, low, high = rows["mean"].mean(), rows["ci_low"].mean(), rows["ci_high"].mean()
    ax.axhline(mean, color=color, label=f"{label}, n={int(rows['n'].min())}")
    if not np.isnan(low):
        ax.axhspan(low, high, color=color, alpha=0.2)


def _series_rows(points: pd.DataFrame, x_field: str) -> list[str]:
    """The row fields that split the points into series: the backbone or regime, where the points have several and
    x is not a field of theirs (a recipe sweep, or the epochs of exports over pretraining time)."""
    return [c for c in ("backbone", "regime") if not x_field.startswith(f"{c}.") and points[c].nunique() > 1]


def _series_label(keys: list[str], values, rows: list[str] = ()) -> str:
    values = values if isinstance(values, tuple) else (values,)
    return ", ".join(
        str(value) if name in rows else f"{name.rsplit('.', 1)[-1]}={value}"
        for name, value in zip(keys, values, strict=True)
    )


def _noise_text(own: pd.DataFrame, floors: pd.DataFrame) -> str:
    n = sorted(set(own["n"].astype(int)))
    text = f"n = {n[0]}" if len(n) == 1 else f"n = {n[0]}–{n[-1]}"
    if n[-1] >= 2:
        return text
    key = tuple(own.iloc[0][c] for c in COLUMN)
    floor = floors["seed_std"].get(key, np.nan) if key in floors.index else np.nan
    if np.isnan(floor):
        return f"{text}: no interval, and no row with 2 seeds measures the noise"
    return f"{text}: no interval; seed-to-seed std {floor:.2f} (measured on rows with ≥ 2 seeds)"


def _csv_rows(table: pd.DataFrame) -> list[dict]:
    return [
        {key: ("" if isinstance(value, float) and np.isnan(value) else value) for key, value in row.items()}
        for row in table.to_dict("records")
    ]
