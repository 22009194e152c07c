"""The regime Δ figure and its numbers, with the noise they sit in: ``deltas.png`` and ``deltas.csv``.

One bar per backbone × regime in each headline column: its Δ against the baseline regime (``compare``'s paired Δ).
With n ≥ 2 paired seeds the bar carries its paired Student-t 95 % interval and is marked significant, as in the
table, only where n ≥ 3 and the interval excludes 0. With n = 1 there is no interval: the column's **noise floor**
is drawn as a band around 0 instead and nothing is marked significant. The floor is the half-width within which a
single-seed Δ falls 95 % of the time when the regimes do not differ, ``t(0.975, df) × sd`` of paired seed
differences; it is measured from the records themselves where rows have ≥ 2 paired seeds, else taken from the
floors the benchmark's sensitivity suite measured (``results/noise_floors/``, each with its provenance). Panels
whose metrics share a unit share one y scale, so a −0.05 Δ never fills a panel as a −3 Δ does.
"""

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from dropbench.compare import COLUMN, LEVEL, MIN_SIGNIFICANT_N, REFERENCE_REGIMES, noise_floor, select_metrics
from dropbench.core.configs import NOISE_FLOORS
from dropbench.core.identity import PERCENT
from dropbench.core.io import atomic_write, atomic_write_csv

DELTA_COLUMNS = [
    *("backbone", "recipe", "task", "dataset", "protocol", "metric", "unit", "regime"),
    *("delta", "ci_low", "ci_high", "n", "noise_floor", "significant", "floor_source"),
]
MEASURED = "measured: these records"


def shipped_floors(folder: Path = NOISE_FLOORS) -> pd.DataFrame:
    """The noise floors shipped with the benchmark: per column, the sd of paired seed differences, its df and
    where it was measured."""
    frames = [pd.read_csv(path) for path in sorted(Path(folder).glob("*.csv"))]
    columns = [*COLUMN, "delta_sd", "paired_df", "source"]
    return pd.concat(frames)[columns] if frames else pd.DataFrame(columns=columns)


def measured_floors(stats: pd.DataFrame) -> pd.DataFrame:
    """Per column, the sd of paired seed differences pooled over the rows with ≥ 2 paired seeds, and its df."""
    pairs = stats[stats["n_paired"] >= 2]
    rows = []
    for key, column in pairs.groupby(COLUMN, sort=False):
        df = int((column["n_paired"] - 1).sum())
        delta_sd = float(np.sqrt(((column["n_paired"] - 1) * column["delta_sd"] ** 2).sum() / df))
        rows.append((*key, delta_sd, df, MEASURED))
    return pd.DataFrame(rows, columns=[*COLUMN, "delta_sd", "paired_df", "source"])


FLOOR_COLUMNS = [*COLUMN, "seed_std", "df", "delta_sd", "paired_df", "source"]


def write_floors(stats: pd.DataFrame, source: str, path: str | Path) -> Path:
    """The floors these records measure (columns with ≥ 2 paired seeds), as the shipped floors are kept: per column
    the seed std and the sd of paired seed differences, their df, and ``source``, where they were measured."""
    seeds = noise_floor(stats).set_index(COLUMN)
    rows = [
        {
            **dict(zip(COLUMN, key, strict=True)),
            "seed_std": f"{seeds.loc[key, 'seed_std']:.3f}",
            "df": int(seeds.loc[key, "df"]),
            "delta_sd": f"{row['delta_sd']:.4f}",
            "paired_df": int(row["paired_df"]),
            "source": source,
        }
        for key, row in measured_floors(stats).set_index(COLUMN).iterrows()
    ]
    return atomic_write_csv(path, FLOOR_COLUMNS, rows)


def column_units(records: pd.DataFrame) -> dict[tuple, str]:
    """Each column's unit, as its records give it."""
    return {key: str(unit) for key, unit in records.groupby(COLUMN, sort=False)["unit"].first().items()}


def delta_table(
    stats: pd.DataFrame, units: dict[tuple, str] | None = None, floors: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per headline cell with a Δ (reference regimes left out): the Δ, its paired interval, n, the
    column's noise floor and where it comes from, and whether the Δ is significant."""
    cells = select_metrics(stats.dropna(subset=["delta"]), "headline")
    cells = cells[~cells["regime"].isin(REFERENCE_REGIMES)]
    known = pd.concat([measured_floors(stats), shipped_floors() if floors is None else floors])
    known = known.drop_duplicates(COLUMN, keep="first").set_index(COLUMN)  # these records' own first
    rows = []
    for cell in cells.itertuples(index=False):
        key = tuple(getattr(cell, c) for c in COLUMN)
        floor, source = np.nan, "none measured"
        if key in known.index:
            found = known.loc[key]
            floor = float(scipy_stats.t.ppf(0.5 + LEVEL / 2, int(found["paired_df"])) * found["delta_sd"])
            source = str(found["source"])
        rows.append(
            {
                **{c: getattr(cell, c) for c in ("backbone", "recipe", *COLUMN, "regime", "delta")},
                "unit": (units or {}).get(key, PERCENT),
                "ci_low": cell.delta_low,
                "ci_high": cell.delta_high,
                "n": int(cell.n_paired),
                "noise_floor": floor,
                "significant": bool(cell.significant) and cell.n_paired >= MIN_SIGNIFICANT_N,
                "floor_source": source,
            }
        )
    return pd.DataFrame(rows, columns=DELTA_COLUMNS)


def beyond_floor_line(table: pd.DataFrame) -> str:
    """One line on the single-seed Δs: which exceed their column's noise floor, or that none does."""
    single = table[table["n"] <= 1]
    if single.empty:
        return ""
    with_floor = single.dropna(subset=["noise_floor"])
    beyond = with_floor[with_floor["delta"].abs() > with_floor["noise_floor"]]
    named = ", ".join(f"{r.regime} {r.dataset} {r.protocol} {r.metric} {r.delta:+.2f}" for r in beyond.itertuples())
    if with_floor.empty:
        said = f"n = 1: no noise floor is known for the columns of these {len(single)} regime Δs"
    else:
        said = f"n = 1: {len(beyond)} of {len(with_floor)} regime Δs exceed their column's noise floor"
        said += f" ({named})" if named else ""
    return said + "; one seed cannot resolve a regime (5 seeds: configs/suites/regimes_embedded.yaml)"


def plot_delta_table(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """``deltas.png`` (a panel per column, bars with intervals or the noise-floor band) and ``deltas.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    table = table.assign(panel=table[COLUMN].astype(str).agg(" / ".join, axis=1)) if len(table) else table
    panels = list(dict.fromkeys(table["panel"])) if len(table) else []
    columns = min(3, max(1, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(max(4.5, 3.6 * columns), 3.1 * rows), dpi=150, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    if not panels:
        axes.flat[0].axis("on")
        axes.flat[0].text(0.5, 0.5, "no Δ to show (no baseline runs)", ha="center", va="center")
    limits = shared_y_limits(table)
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw_panel(ax, table[table["panel"] == panel], limits)
    fig.suptitle(
        f"Δ vs baseline: {LEVEL:.0%} paired t interval (n ≥ 2; green: excludes 0, n ≥ {MIN_SIGNIFICANT_N}); "
        "grey band: the noise floor a single-seed Δ falls in",
        fontsize=8,
    )
    fig.tight_layout()
    png = atomic_write(out_dir / "deltas.png", lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"))
    plt.close(fig)
    rows_out = table[DELTA_COLUMNS].to_dict("records")
    csv_path = atomic_write_csv(out_dir / "deltas.csv", DELTA_COLUMNS, rows_out)
    return [png, csv_path]


def shared_y_limits(table: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """One y range per unit, holding every bar, interval and floor band drawn in it."""
    limits = {}
    for unit, own in table.groupby("unit") if len(table) else []:
        values = np.concatenate(
            [own["delta"], own["ci_low"], own["ci_high"], own["noise_floor"], -own["noise_floor"], [0.0]]
        )
        values = values[np.isfinite(values)]
        low, high = float(values.min()), float(values.max())
        pad = 0.08 * max(high - low, 1e-6)
        limits[unit] = (low - pad, high + pad)
    return limits


def _draw_panel(ax, own: pd.DataFrame, limits: dict) -> None:
    values = own["delta"].to_numpy(dtype=float)
    x = np.arange(len(own))
    floor = own["noise_floor"].to_numpy(dtype=float)
    for position, half, n in zip(x, floor, own["n"], strict=True):
        if n >= 2:
            continue  # its interval is drawn
        if np.isfinite(half):
            ax.fill_between([position - 0.45, position + 0.45], -half, half, color="0.85", zorder=0)
        else:
            ax.text(position, 0, "no noise\nfloor known", ha="center", va="bottom", fontsize=6, color="0.3")
    paired = zip(own["significant"], own["n"], strict=True)
    colors = ["tab:green" if significant else ("tab:blue" if n >= 2 else "0.45") for significant, n in paired]
    ax.bar(x, values, color=colors, width=0.6, zorder=2)
    has_interval = own["n"].to_numpy() >= 2
    low, high = own["ci_low"].to_numpy(dtype=float), own["ci_high"].to_numpy(dtype=float)
    if has_interval.any():
        errors = np.vstack([values - low, high - values])[:, has_interval]
        ax.errorbar(x[has_interval], values[has_interval], yerr=errors, fmt="none", ecolor="black", capsize=3, zorder=3)
    ax.axhline(0, color="black", linewidth=0.8)
    middle, half_width = (len(own) - 1) / 2, max(len(own), 3) / 2  # a lone bar keeps a bar's width, centred
    ax.set_xlim(middle - half_width, middle + half_width)
    labels = [f"{b}\n{r}\nn={n}" for b, r, n in zip(own["backbone"], own["regime"], own["n"], strict=True)]
    ax.set_xticks(x, labels, fontsize=6.5)
    unit = own["unit"].iloc[0]
    ax.set_ylim(*limits[unit])
    first = own.iloc[0]
    ax.set_title(f"{first['task']} / {first['dataset']} / {first['protocol']} / {first['metric']}", fontsize=7.5)
    ax.set_ylabel(f"Δ ({'points' if unit == PERCENT else unit})", fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3)
