"""The comparison table: result records → backbone × recipe × regime rows, task/dataset/protocol/metric columns.

- **Never two settings in one cell.** Records are grouped by their run identity including the settings digest
  (``dropbench.identity``). Where one name (a backbone, regime, recipe or transfer protocol) was run with
  different settings, each variant gets its own label: the overrides it was given (``cpu·epochs=4``), or its
  digest where the overrides do not tell them apart (``cpu·#1a2b3c``). The same run (identity, digest, seeds)
  found twice is counted once, with a warning naming both files.
- **Seeds.** A cell is the mean ± std over pretraining seeds (a pretraining seed's transfer seeds are averaged
  first); a row with a single pretraining seed counts its transfer seeds instead, which measures fine-tuning noise
  only. ``n`` is always shown.
- **Δ** against the baseline regime of the same backbone and recipe variant, with the paired Student-t 95 %
  interval over the seeds both have (df = n − 1, n ≥ 2). A Δ is marked significant (``†``) only where n ≥ 3 and
  the interval excludes 0. Bold marks the best mean of each column within a backbone and recipe.
- Files that are not records are skipped with a warning that names them; ``records/superseded/`` is not read.
"""

import json
import math
import os
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from dropbench.core.configs import PAPER_RESULTS
from dropbench.core.corruptions import CLEAN_TOP1, CORRUPTED_TOP1
from dropbench.core.corruptions import PROTOCOL as CORRUPTIONS_PROTOCOL
from dropbench.core.errors import UserInputError
from dropbench.core.identity import (
    CORRUPTION_DROP,
    FINE_METRICS,
    LEGACY,
    LOWER_IS_BETTER,
    MCE,
    REQUIRED_RECORD_FIELDS,
    SUPERSEDED_FOLDER,
    TRAIN_LOSS,
    ResultRecord,
    StageName,
)
from dropbench.core.settings import variant_name
from dropbench.tasks import transfer_tasks

ROW = ["backbone", "recipe", "regime"]
COLUMN = ["task", "dataset", "protocol", "metric"]
PAPER_HASH = "paper"  # the config_hash of the paper's published numbers, shown with their recipe as "<recipe> (paper)"
PAPER_DIR = "paper"
SHIPPED_PAPER = PAPER_RESULTS
LEVEL = 0.95
MIN_SIGNIFICANT_N = 3  # fewer paired seeds never claim significance
SIGNIFICANT = "†"
# The columns of the tidy table (``--format csv``): one row per cell.
STAT_COLUMNS = [*ROW, *COLUMN, "mean", "std", "n"]
STAT_COLUMNS += ["delta", "delta_low", "delta_high", "delta_sd", "n_paired", "significant"]
DETECT_SEEDS = 3  # the noise floor's minimum detectable Δ is that of a paired t test over this many seeds
# The records' own columns (``--format records``): every field of the record type, then the file it was read from.
RECORD_COLUMNS = [*(f.name for f in fields(ResultRecord)), "path"]
# Which record field a settings part labels.
LABELLED_PARTS = {"backbone": "backbone", "recipe": "recipe", "regime": "regime", "task": "protocol"}


# ------------------------------------------------------------------------------------------------ reading


def _json_files(results: Path, include_paper: bool) -> list[str]:
    found = []
    for folder, subfolders, files in os.walk(results):
        if SUPERSEDED_FOLDER in subfolders:
            subfolders.remove(SUPERSEDED_FOLDER)
        if folder == str(results) and PAPER_DIR in subfolders:
            subfolders.remove(PAPER_DIR)  # read from results/paper/ only with include_paper (below)
        subfolders.sort()
        found.extend(os.path.join(folder, name) for name in sorted(files) if name.endswith(".json"))
    if include_paper:
        paper = results / PAPER_DIR if (results / PAPER_DIR).is_dir() else SHIPPED_PAPER
        found.extend(str(p) for p in sorted(paper.glob("*.json")))
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
    if not isinstance(record, dict) or any(key not in record for key in REQUIRED_RECORD_FIELDS):
        return f"skipping '{path}': not a result record (fields missing)"
    if not isinstance(record["value"], (int, float)) or isinstance(record["value"], bool):
        return f"skipping '{path}': value is not a number"
    if not math.isfinite(record["value"]):
        return f"skipping '{path}': value {record['value']} is not finite (a diverged run's; re-run it)"
    record["path"] = path
    return record


def read_records(results: str | Path, include_paper: bool = False) -> tuple[pd.DataFrame, list[str]]:
    """Every record under ``results`` (recursively, without ``superseded/`` folders), plus the paper's published
    numbers with ``include_paper`` (``results/paper/`` when there is one, else the shipped ones), and one message
    per file that was skipped because it is not a record."""
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
    frame = pd.DataFrame.from_records(rows, columns=RECORD_COLUMNS)
    for column in ("parts", "sweep"):  # records older than a field have none
        frame[column] = [value if isinstance(value, dict) else {} for value in frame[column]]
    return frame, skipped


def records_csv(records: pd.DataFrame) -> str:
    """The records themselves, one row per record with every field of the record type (``parts`` as JSON)."""
    frame = records[RECORD_COLUMNS].copy()
    for column in ("parts", "sweep"):
        frame[column] = [json.dumps(value, sort_keys=True) for value in frame[column]]
    return frame.to_csv(index=False)


# ------------------------------------------------------------------------------------------------ variants


def _part(parts: dict, name: str, config_hash: str) -> tuple[str, str]:
    """``(digest, overrides)`` of a record's part; a record written before settings parts existed has only its
    ``config_hash``, which stands for the digest of every part (``legacy·<hash>``), so two such experiments stay
    apart."""
    part = parts.get(name) if isinstance(parts, dict) else None
    if not isinstance(part, dict):
        return f"{LEGACY}·{config_hash}", LEGACY
    return str(part.get("digest", LEGACY)), str(part.get("overrides", ""))


def _variant_labels(names: pd.Series, digests: list[str], overrides: list[str]) -> list[str]:
    """A label per record: the name alone where it was run with one digest, else the name with what tells its
    variants apart — their overrides (the one variant without any keeps the bare name), else their digests."""
    frame = pd.DataFrame({"name": names.to_numpy(), "digest": digests, "overrides": overrides})
    labels = {}
    for name, group in frame.drop_duplicates(["name", "digest"]).groupby("name", sort=False):
        texts = list(group["overrides"])
        for digest, text in zip(group["digest"], texts, strict=True):
            if len(group) == 1 or (not text and texts.count("") == 1):
                labels[(name, digest)] = name
            elif text and texts.count(text) == 1:
                labels[(name, digest)] = f"{name}·{text}"
            else:
                short = digest.removeprefix(f"{LEGACY}·")[:6]
                labels[(name, digest)] = "·".join(t for t in (name, text, f"#{short}") if t)
    return [labels[key] for key in zip(frame["name"], frame["digest"], strict=True)]


def _task_digest(digest: str, stage: str, parts) -> str:
    """What tells a record's protocol variants apart: a transfer's task part, or an evaluation's (its number of
    corrupted images, its mCE reference); none for a pretraining, or an evaluation recorded without parts."""
    if stage == StageName.TRANSFER:
        return digest
    has_task = isinstance(parts, dict) and isinstance(parts.get("task"), dict)
    return digest if stage == StageName.EVAL and has_task else ""


def label_variants(records: pd.DataFrame) -> pd.DataFrame:
    """``records`` with backbone, recipe, regime and protocol replaced by their variant labels; the paper's
    published numbers keep their names, their recipe marked ``(paper)``."""
    labelled = records.copy()
    published = (labelled["config_hash"] == PAPER_HASH).to_numpy()
    own = labelled[~published]
    for part, column in LABELLED_PARTS.items():
        found = [_part(parts, part, str(h)) for parts, h in zip(own["parts"], own["config_hash"], strict=True)]
        digests = [digest for digest, _ in found]
        if part == "task":  # a pretraining record has no task part: its protocol has no variants
            stages_and_parts = zip(digests, own["stage"], own["parts"], strict=True)
            digests = [_task_digest(d, stage, parts) for d, stage, parts in stages_and_parts]
        labelled.loc[~published, column] = _variant_labels(own[column], digests, [text for _, text in found])
    labelled.loc[published, "recipe"] = labelled.loc[published, "recipe"] + " (paper)"
    return labelled


def _drop_repeats(records: pd.DataFrame, warn) -> pd.DataFrame:
    """The same run found twice (e.g. a copied records folder) counts once: its newest record."""
    key = [*ROW, *COLUMN, "seed", "transfer_seed"]
    records = records.assign(transfer_seed=records["transfer_seed"].fillna(-1))
    repeated = records[records.duplicated(key, keep=False)]
    for _, group in repeated.groupby(key, sort=False):
        warn(f"the same run is recorded twice, counted once: '{group['path'].iloc[0]}' and '{group['path'].iloc[1]}'")
    return records.sort_values("finished", kind="stable").drop_duplicates(key, keep="last")


# ------------------------------------------------------------------------------------------------ statistics


def paired_t_interval(deltas: Iterable[float], level: float = LEVEL) -> tuple[float, float]:
    """The Student-t interval of the mean of paired differences (df = n − 1); NaN for fewer than 2."""
    deltas = np.asarray(list(deltas), dtype=np.float64)
    n = len(deltas)
    if n < 2:
        return float("nan"), float("nan")
    half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * deltas.std(ddof=1) / np.sqrt(n)
    return float(deltas.mean() - half), float(deltas.mean() + half)


def _per_unit(records: pd.DataFrame) -> pd.Series:
    """Each cell's values per unit of replication: its pretraining seeds (their transfer seeds averaged), or the
    transfer seeds of a cell that has one pretraining seed and several transfer seeds."""
    cell = [*ROW, *COLUMN]
    frame = records.groupby([*cell, "seed", "transfer_seed"], sort=False)["value"].mean().reset_index()
    grouped = frame.groupby(cell, sort=False)
    by_transfer_seed = (grouped["seed"].transform("nunique") == 1) & (grouped["transfer_seed"].transform("nunique") > 1)
    frame["unit"] = np.where(
        by_transfer_seed, "t" + frame["transfer_seed"].astype(str), "s" + frame["seed"].astype(str)
    )
    return frame.groupby([*cell, "unit"], sort=False)["value"].mean()


NO_DELTA = dict(delta=np.nan, delta_low=np.nan, delta_high=np.nan, delta_sd=np.nan, n_paired=0)


def _versus_baseline(own: pd.Series, baseline: pd.Series) -> dict:
    """Δ of a cell's units against its baseline's: paired where both have a unit (with the t interval), else the
    difference of their means."""
    paired = (own - baseline).dropna().to_numpy()
    low, high = paired_t_interval(paired)
    return dict(
        delta=float(paired.mean()) if len(paired) else float(own.mean() - baseline.mean()),
        delta_low=low,
        delta_high=high,
        delta_sd=float(paired.std(ddof=1)) if len(paired) > 1 else np.nan,
        n_paired=len(paired),
    )


def summarise(records: pd.DataFrame, baseline: str = "no_dropout", warn=lambda message: None) -> pd.DataFrame:
    """The tidy table: one row per (backbone, recipe, regime) × (task, dataset, protocol, metric) cell."""
    if records.empty:
        return pd.DataFrame(columns=STAT_COLUMNS)
    records = _drop_repeats(label_variants(records), warn)
    units = _per_unit(records)
    cell = [*ROW, *COLUMN]
    stats = units.groupby(level=cell, sort=False).agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    stats = stats.reset_index()
    by_unit = units.unstack("unit")
    deltas = []
    for row in stats.itertuples(index=False):
        own = tuple(getattr(row, c) for c in cell)
        ref = (row.backbone, row.recipe, baseline, *own[len(ROW) :])
        has_baseline = row.regime != baseline and ref in by_unit.index
        deltas.append(_versus_baseline(by_unit.loc[own], by_unit.loc[ref]) if has_baseline else NO_DELTA)
    stats = pd.concat([stats, pd.DataFrame(deltas, index=stats.index)], axis=1)
    excludes_zero = (stats["delta_low"] > 0) | (stats["delta_high"] < 0)
    stats["significant"] = excludes_zero & (stats["n_paired"] >= MIN_SIGNIFICANT_N)
    swept = swept_fields(records)
    if swept:
        values = records.groupby(ROW, sort=False)["sweep"].first()
        rows = list(zip(*(stats[c] for c in ROW), strict=True))
        for name in swept:
            stats[name] = pd.Series([values[row].get(name) for row in rows], index=stats.index, dtype=object)
    stats = stats[STAT_COLUMNS + swept]
    stats.attrs["baseline"] = baseline
    return stats


def swept_fields(frame: pd.DataFrame) -> list[str]:
    """The fields a sweep set in any of the records (``regime.dropout.rate``), in the order first seen; in a
    table, the columns after the statistics."""
    if "sweep" in frame:
        return list(dict.fromkeys(key for sweep in frame["sweep"] if isinstance(sweep, dict) for key in sweep))
    return [c for c in frame.columns if c.split(".")[0] in ROW and c not in ROW]


def _sortable(value) -> tuple:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def row_order(stats: pd.DataFrame) -> list[tuple]:
    """The table's rows, each sweep's variants under the config they vary, in the order of their values: the
    backbone, recipe and regime of a row each sort by their base name, then by the values of its swept fields."""
    swept = swept_fields(stats)
    keys = {}
    for values_of_row in stats[ROW + swept].drop_duplicates(ROW).itertuples(index=False, name=None):
        row = dict(zip(ROW + swept, values_of_row, strict=True))
        key = []
        for part in ROW:
            values = {
                name.removeprefix(f"{part}."): row[name]
                for name in swept
                if name.startswith(f"{part}.") and not _missing(row[name])
            }
            base = row[part].removesuffix(variant_name("", values)) if values else row[part]
            key.append((base, tuple(_sortable(v) for v in values.values())))
        keys[tuple(row[part] for part in ROW)] = tuple(key)
    return sorted(keys, key=keys.__getitem__)


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def noise_floor(stats: pd.DataFrame) -> pd.DataFrame:
    """Per column: the seed-to-seed std pooled over its rows with ≥ 2 seeds, and the minimum detectable Δ — the Δ a
    paired t test over ``DETECT_SEEDS`` seeds would just detect at 95 %, at the pooled std of paired differences
    (measured where rows have ≥ 2 paired seeds, else √2 × the seed std)."""
    floors = []
    for key, column in stats.groupby(COLUMN, sort=False):
        seeds = column[column["n"] >= 2]
        pairs = column[column["n_paired"] >= 2]
        df = int((seeds["n"] - 1).sum())
        std = float(np.sqrt(((seeds["n"] - 1) * seeds["std"] ** 2).sum() / df)) if df else np.nan
        paired_df = int((pairs["n_paired"] - 1).sum())
        if paired_df:
            delta_sd = float(np.sqrt(((pairs["n_paired"] - 1) * pairs["delta_sd"] ** 2).sum() / paired_df))
        else:
            delta_sd = np.sqrt(2) * std
        t = scipy_stats.t.ppf(0.5 + LEVEL / 2, DETECT_SEEDS - 1)
        floors.append((*key, std, df, delta_sd, t * delta_sd / np.sqrt(DETECT_SEEDS)))
    return pd.DataFrame(floors, columns=[*COLUMN, "seed_std", "df", "delta_sd", "min_detectable_delta"])


def _noise_lines(stats: pd.DataFrame) -> str:
    floors = noise_floor(stats).dropna(subset=["seed_std"])
    if floors.empty:
        return "\nnoise floor: needs rows with 2 or more seeds\n"
    lines = [
        "",
        f"noise floor: seed-to-seed std (pooled over the rows with ≥ 2 seeds, df) and the minimum Δ a paired t test "
        f"over {DETECT_SEEDS} seeds detects at {LEVEL:.0%}",
    ]
    for row in floors.itertuples(index=False):
        column = "/".join(str(getattr(row, c)) for c in COLUMN)
        lines.append(
            f"  {column}: std {row.seed_std:.2f} (df {row.df}), min detectable Δ {row.min_detectable_delta:.2f}"
        )
    return "\n".join(lines) + "\n"


# The paper's diagnosis (Liu et al. 2023): a model underfits where standard dropout (or s.d.) lowers its accuracy,
# and early dropout is the remedy; it overfits where standard dropout raises it, and late dropout is the remedy.
DIAGNOSED_BY = {"standard_dropout": ("early_dropout", "late_dropout"), "standard_sd": ("early_sd", "late_sd")}


def _of_regime(label: str, name: str) -> bool:
    """A row label is of the named regime: the regime itself or one of its variants (``name.rate=0.2``)."""
    return label == name or label.startswith((f"{name}.", f"{name}·"))


def regime_verdicts(stats: pd.DataFrame) -> list[str]:
    """For each backbone × recipe with a no-dropout row and a standard dropout or s.d. row: which regime of the
    paper the model is in, from the paired Δ of its pretraining top-1, with the interval and the paper's remedy.
    Only a significant Δ (n ≥ 3, the interval excludes 0) decides; Δs against another baseline decide nothing."""
    baseline = stats.attrs.get("baseline", "no_dropout")
    if baseline != "no_dropout":
        return []
    own = stats[(stats["protocol"] == PRETRAINING) & (stats["metric"] == "top1") & stats["delta"].notna()]
    lines = []
    for row in own.itertuples(index=False):
        standard = next((name for name in DIAGNOSED_BY if _of_regime(row.regime, name)), None)
        if standard is None:
            continue
        early, late = DIAGNOSED_BY[standard]
        measured = f"{row.backbone} / {row.recipe}: {row.regime} − {baseline}, {row.dataset} top-1 {row.delta:+.2f}"
        if row.n_paired >= 2:
            measured += f" [{row.delta_low:+.2f}, {row.delta_high:+.2f}]"
        measured += f" (n={int(row.n_paired)})"
        if row.significant and row.delta < 0:
            lines.append(f"{measured}: underfitting (standard regularisation hurts); the paper's remedy: {early}")
        elif row.significant:
            lines.append(f"{measured}: overfitting (standard regularisation helps); the paper's remedy: {late}")
        else:
            needs = "the interval includes 0" if row.n_paired >= MIN_SIGNIFICANT_N else f"n < {MIN_SIGNIFICANT_N}"
            lines.append(f"{measured}: neither underfitting nor overfitting resolved ({needs})")
    return lines


def _verdict_lines(stats: pd.DataFrame) -> str:
    lines = regime_verdicts(stats)
    return "\nregime of the paper (Liu et al. 2023):\n" + "".join(f"  {line}\n" for line in lines) if lines else ""


# ------------------------------------------------------------------------------------------------ rendering

BOLD = {"md": ("**", "**"), "latex": ("\\textbf{", "}"), "html": ("<b>", "</b>")}
FORMATS = ("md", "csv", "latex", "html")


def headline_metrics() -> dict[str, tuple[str, ...]]:
    """The metrics a transfer paper reports per task (ConvNeXt, Swin, ViTDet, MAE tables), as each registered task
    names them; the rest are one flag away. A task that names none shows all of its metrics."""
    return {task.task: task.headline_metrics for task in transfer_tasks().values() if task.headline_metrics}


REFERENCE_REGIMES = ("random_init",)  # reference rows: shown in the table, not on the regime Δ's axes


PRETRAINING = "from_scratch"  # the protocol of a pretraining's own records
PROTOCOL_HEADLINE = {
    PRETRAINING: ("top1", TRAIN_LOSS),  # its accuracy, and the training loss the paper's claim is about
    CORRUPTIONS_PROTOCOL: (CORRUPTED_TOP1, CORRUPTION_DROP, MCE),  # the mean over the cells, its drop from clean, mCE
}


def _headline(stats: pd.DataFrame) -> pd.DataFrame:
    headline = headline_metrics()
    cells = zip(stats["task"], stats["protocol"], stats["metric"], strict=True)
    keep = [
        metric in PROTOCOL_HEADLINE.get(protocol, headline.get(task, (metric,))) for task, protocol, metric in cells
    ]
    return stats[np.asarray(keep, dtype=bool)]


# Short column headers, as transfer papers print them; a metric not named here keeps its record name.
METRIC_LABELS = {"box_AP": "AP^box", "mask_AP": "AP^mask", "top1": "top-1", "top5": "top-5", TRAIN_LOSS: "train loss ↓"}
METRIC_LABELS |= {CORRUPTED_TOP1: "corrupted top-1", CORRUPTION_DROP: "drop from clean ↓", MCE: "mCE ↓"}
METRIC_LABELS |= {CLEAN_TOP1: "clean top-1"}


def select_metrics(stats: pd.DataFrame, metrics: str = "headline") -> pd.DataFrame:
    """The cells a formatted table shows: each task's headline metrics, all of them, or the metrics named."""
    if metrics == "headline":
        return _headline(stats)
    if metrics == "all":
        return stats
    wanted = [name.strip() for name in metrics.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(stats["metric"]))
    if not wanted or unknown:
        known = ", ".join(sorted(set(stats["metric"])))
        raise UserInputError("--metrics", f"{', '.join(unknown) or metrics!r} not in the records (they have: {known})")
    return stats[stats["metric"].isin(wanted)]


def _column_order(values: pd.Series) -> pd.Series:
    """Sort key: the pretraining's own accuracy (``from_scratch``) first, then the tasks in the registry's order
    (det, seg, cls, as transfer papers order their tables), then tasks no registered one records."""
    if values.name == "protocol":
        return (values != PRETRAINING).astype(int)
    order = [task.task for task in transfer_tasks().values()]
    return values.map(lambda task: order.index(task) if task in order else len(order))


def _group(row) -> str:
    return f"{row['dataset']} {row['protocol']}"


UNRANKED = frozenset({"temperature", "chosen_c"})  # settings a run chose, neither better high nor low


def best_means(stats: pd.DataFrame) -> pd.Series:
    """Per cell, the best mean of its column within its backbone and recipe: the highest, or the lowest for a
    metric where lower is better (a loss); none for a value the run chose (``UNRANKED``)."""
    grouped = stats.groupby(["backbone", "recipe", *COLUMN])["mean"]
    best = grouped.transform("max").where(~stats["metric"].isin(LOWER_IS_BETTER), grouped.transform("min"))
    return best.where(~stats["metric"].isin(UNRANKED))


def comparison_table(stats: pd.DataFrame, bold: tuple[str, str] = BOLD["md"]) -> pd.DataFrame:
    """Rows backbone × recipe × regime, with ``n`` once per row where it is the same in every cell; columns
    grouped by dataset and protocol (level 0) with short metric names (level 1); formatted cells."""
    if stats.empty:
        return pd.DataFrame()
    best = best_means(stats)
    row_n = stats.groupby(ROW, sort=False)["n"].transform(lambda n: n.iloc[0] if n.nunique() == 1 else np.nan)

    def cell(row) -> str:
        uniform = not np.isnan(row_n[row.name])
        places = 3 if row["metric"] in FINE_METRICS else 2
        text = f"{row['mean']:.{places}f}" + (f" ± {row['std']:.{places}f}" if row["n"] > 1 else "")
        text += "" if uniform else f" (n={int(row['n'])})"
        if row["mean"] == best[row.name]:
            text = f"{bold[0]}{text}{bold[1]}"
        if not np.isnan(row["delta"]):
            text += f" Δ {row['delta']:+.{places}f}"
            if not np.isnan(row["delta_low"]):
                text += f" [{row['delta_low']:+.{places}f}, {row['delta_high']:+.{places}f}]"
                text += "" if uniform and row["n_paired"] == row["n"] else f" n={int(row['n_paired'])}"
            text += SIGNIFICANT if row["significant"] else ""
        return text

    cells = stats.assign(cell=stats.apply(cell, axis=1), group=stats.apply(_group, axis=1))
    cells["label"] = cells["metric"].map(lambda m: METRIC_LABELS.get(m, m))
    first = cells.sort_values(["protocol", "task"], key=_column_order, kind="stable")
    order = list(dict.fromkeys(zip(first["group"], first["label"], strict=True)))
    table = cells.pivot(index=ROW, columns=["group", "label"], values="cell").reindex(columns=order).fillna("–")
    table = table.reindex(pd.MultiIndex.from_tuples(row_order(stats), names=ROW))
    table.columns.names = [None, None]
    n = stats.assign(row_n=row_n).groupby(ROW, sort=False)["row_n"].first()
    if n.notna().all():
        table.insert(0, ("", "n"), n.reindex(table.index).astype(int).astype(str))
    return table


def _markdown(table: pd.DataFrame) -> str:
    header = [*table.index.names, *(f"{group} {label}".strip() for group, label in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        lines.append("| " + " | ".join([*index, *row.tolist()]) + " |")
    return "\n".join(lines) + "\n"


def _latex(table: pd.DataFrame) -> str:
    def escape(text: str) -> str:
        return text.replace("_", r"\_").replace("^box", r"$^\mathrm{box}$").replace("^mask", r"$^\mathrm{mask}$")

    table = table.rename(index=escape, columns=escape)
    text = table.to_latex(escape=False, multicolumn=True, multicolumn_format="c", multirow=False)
    return text.replace("±", "$\\pm$").replace("Δ", "$\\Delta$").replace("†", "$^\\dagger$")


def _html(table: pd.DataFrame, notes: str) -> str:
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;font-size:13px}"
        "th,td{border-bottom:1px solid #ccc;padding:4px 8px;text-align:right;white-space:nowrap}th{text-align:center}"
        "pre{font-size:12px;color:#444}"
    )
    body = table.to_html(escape=False, border=0)
    body = body.replace("^box", "<sup>box</sup>").replace("^mask", "<sup>mask</sup>")
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>dropbench comparison</title>"
        f"<style>{style}</style></head>\n<body>\n{body}\n<pre>{notes.strip()}</pre>\n</body></html>\n"
    )


def render(stats: pd.DataFrame, fmt: str, metrics: str = "headline") -> str:
    """The table as Markdown, LaTeX (booktabs, grouped headers) or one self-contained HTML file, with ``metrics``
    (``select_metrics``); CSV is the tidy table of every metric, one row per cell."""
    if fmt not in FORMATS:
        raise UserInputError("--format", f"'{fmt}' is not one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return stats.to_csv(index=False)
    shown = select_metrics(stats, metrics) if not stats.empty else stats
    table = comparison_table(shown, BOLD[fmt])
    if table.empty:
        return "no records\n"
    if fmt == "md":
        return _markdown(table) + _noise_lines(shown) + _verdict_lines(stats)
    if fmt == "latex":
        return _latex(table)
    return _html(table, _noise_lines(shown) + _verdict_lines(stats))
