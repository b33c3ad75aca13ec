"""Statistics for the analysis: correlations with bootstrap CIs, result tables, Markdown.

Conventions:

- ``summarise`` gives mean and sample standard deviation (``ddof=1``; NaN with one seed)
  of ``score`` over seeds per (pretrain_set, task, task_region, method).
- ``main_table`` ranks the pretraining sets as the paper does: per task, each set gets the
  0-based *dense* rank of its mean score **rounded to 2 decimals** (best = 0, equal
  displayed values share a rank, the next value gets the next integer), and ``rank`` is the
  mean of these over tasks. Rounding first reproduces the paper's rank column from its
  displayed numbers (e.g. North America, 0.32 / 0.22 / 0.36 / 0.49, is second on every task
  → 1.00; South America, 2 + 2 + 1 + 1 → 1.50). All scores are higher-is-better.
- Tables put a task's mean in column ``<task>`` and its std in ``<task>_std``;
  :func:`to_markdown` renders such pairs as ``0.33 ± 0.02`` cells.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as st

log = logging.getLogger(__name__)

GROUP_KEYS = ["pretrain_set", "task", "task_region", "method"]
DIVERSITY_MEASURES = ["continent_entropy", "biome_entropy", "landcover_entropy",
                      "spectral_entropy_hist", "spectral_entropy_codebook"]
STD_SUFFIX = "_std"


# --------------------------------------------------------------------------- correlation


def _rowwise_pearson(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``(B, n)`` arrays; NaN where a row is constant."""
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    num = (a * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    # Rows with (numerically) zero variance have no correlation.
    scale = np.sqrt((a * a).sum(axis=1)) * np.sqrt((b * b).sum(axis=1))
    r[~(scale > 1e-12)] = np.nan
    return np.clip(r, -1.0, 1.0)


def correlate(x, y, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> dict[str, float]:
    """Spearman and Pearson correlation of paired values with percentile-bootstrap CIs.

    NaN pairs are dropped. The CIs resample the *pairs* with replacement ``n_boot`` times
    and take the ``(1 − ci)/2`` and ``(1 + ci)/2`` percentiles of the resampled
    coefficients; resamples in which x or y is constant (no defined correlation) are left
    out. With fewer than 3 pairs, or ``n_boot = 0`` for the CIs, the values are NaN.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlate: x has {x.size} values but y has {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    nan = float("nan")
    out = {"spearman_rho": nan, "spearman_p": nan, "spearman_ci_low": nan, "spearman_ci_high": nan,
           "pearson_r": nan, "pearson_p": nan, "pearson_ci_low": nan, "pearson_ci_high": nan, "n": n}
    if n < 3:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        s = st.spearmanr(x, y)
        p = st.pearsonr(x, y) if np.ptp(x) > 0 and np.ptp(y) > 0 else None
    out["spearman_rho"], out["spearman_p"] = float(s.statistic), float(s.pvalue)
    if p is not None:
        out["pearson_r"], out["pearson_p"] = float(p.statistic), float(p.pvalue)
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, n, size=(n_boot, n))
        xb, yb = x[idx], y[idx]
        boot = {
            "spearman": _rowwise_pearson(st.rankdata(xb, axis=1), st.rankdata(yb, axis=1)),
            "pearson": _rowwise_pearson(xb, yb),
        }
        lo_q, hi_q = 100 * (1 - ci) / 2, 100 * (1 + ci) / 2
        for name, values in boot.items():
            values = values[np.isfinite(values)]
            if values.size:
                out[f"{name}_ci_low"] = float(np.percentile(values, lo_q))
                out[f"{name}_ci_high"] = float(np.percentile(values, hi_q))
    return out


# --------------------------------------------------------------------------- tables


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; has {list(df.columns)}")


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of ``score`` over seeds per (pretrain_set, task, task_region, method).

    Columns: the four keys, ``task_type`` (when present), ``score_mean``, ``score_std``
    (sample std, NaN with one seed) and ``n_seeds``. When ``results`` has a ``status``
    column, only rows with status ``ok`` count (skipped cells carry no score).
    """
    _require(results, GROUP_KEYS + ["score"], "results")
    if "status" in results.columns:
        results = results[results["status"] == "ok"]
    keys = GROUP_KEYS + (["task_type"] if "task_type" in results.columns else [])
    g = results.groupby(keys, dropna=False, sort=True)["score"]
    out = g.agg(score_mean="mean", score_std="std", n_seeds="count").reset_index()
    return out[keys + ["score_mean", "score_std", "n_seeds"]]


def _dense_rank_desc(values: pd.Series, decimals: int = 2) -> pd.Series:
    """0-based dense rank of values rounded to ``decimals`` (highest = 0; NaN stays NaN)."""
    return values.round(decimals).rank(method="dense", ascending=False) - 1


def main_table(results: pd.DataFrame, method: str = "linear", task_region: str = "global",
               decimals: int = 2) -> pd.DataFrame:
    """The paper's main table for one method on one task region.

    One row per pretraining set: ``pretrain_set``; per task ``<task>`` (mean score over
    seeds) and ``<task>_std``; ``mean_performance`` (mean of the task means, over the tasks
    the set has); ``rank`` (mean over tasks of the 0-based dense rank of the mean rounded to
    ``decimals``, see the module docstring). Sorted by rank, then mean performance.
    """
    summary = summarise(results)
    sel = summary[(summary["method"] == method) & (summary["task_region"] == task_region)]
    if sel.empty:
        raise ValueError(f"no results for method={method!r}, task_region={task_region!r}")
    tasks = sorted(sel["task"].unique())
    means = sel.pivot(index="pretrain_set", columns="task", values="score_mean")[tasks]
    stds = sel.pivot(index="pretrain_set", columns="task", values="score_std")[tasks]
    ranks = means.apply(_dense_rank_desc, decimals=decimals)
    table = pd.DataFrame(index=means.index)
    for t in tasks:
        table[t] = means[t]
        table[t + STD_SUFFIX] = stds[t]
    table["mean_performance"] = means.mean(axis=1)
    table["rank"] = ranks.mean(axis=1)
    table = table.reset_index()
    table = table.sort_values(["rank", "mean_performance", "pretrain_set"],
                              ascending=[True, False, True], kind="stable").reset_index(drop=True)
    table.columns.name = None
    return table


def region_table(summary: pd.DataFrame, task: str, method: str) -> pd.DataFrame:
    """Pretraining set × task region table of mean ± std for one task and method.

    Columns: ``pretrain_set``, then per task region ``<region>`` and ``<region>_std``;
    ``global`` first, then the other regions alphabetically.
    """
    sel = summary[(summary["task"] == task) & (summary["method"] == method)]
    if sel.empty:
        raise ValueError(f"no results for task={task!r}, method={method!r}")
    regions = sorted(sel["task_region"].unique(), key=lambda r: (r != "global", r))
    means = sel.pivot(index="pretrain_set", columns="task_region", values="score_mean")[regions]
    stds = sel.pivot(index="pretrain_set", columns="task_region", values="score_std")[regions]
    table = pd.DataFrame(index=means.index)
    for r in regions:
        table[r] = means[r]
        table[r + STD_SUFFIX] = stds[r]
    order = means.mean(axis=1).sort_values(ascending=False, kind="stable").index
    table = table.loc[order].reset_index()
    table.columns.name = None
    return table


def diversity_correlations(diversity_df: pd.DataFrame, perf: pd.Series, measures: Sequence[str] | None = None,
                           n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Correlate each diversity measure with per-set performance; one row per measure.

    ``diversity_df`` has ``pretrain_set`` and the measure columns; ``perf`` is indexed by
    pretrain_set (e.g. ``main_table(...).set_index("pretrain_set")["mean_performance"]``).
    Sets present in both are used (so the ``zero`` baseline drops out). ``measures``
    defaults to those of :data:`DIVERSITY_MEASURES` present in ``diversity_df``.
    """
    _require(diversity_df, ["pretrain_set"], "diversity table")
    if measures is None:
        measures = [m for m in DIVERSITY_MEASURES if m in diversity_df.columns]
    _require(diversity_df, list(measures), "diversity table")
    joined = diversity_df.set_index("pretrain_set").join(perf.rename("_perf"), how="inner")
    rows = []
    for m in measures:
        r = correlate(joined[m].to_numpy(), joined["_perf"].to_numpy(), n_boot=n_boot, seed=seed, ci=ci)
        rows.append({"measure": m, **r})
    cols = ["measure", "spearman_rho", "spearman_p", "spearman_ci_low", "spearman_ci_high",
            "pearson_r", "pearson_p", "pearson_ci_low", "pearson_ci_high", "n"]
    return pd.DataFrame(rows, columns=cols)


# --------------------------------------------------------------------------- formatting


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _fmt(v, digits: int) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (_is_number(v) and not math.isfinite(float(v))):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if _is_number(v):
        return f"{float(v):.{digits}f}"
    return str(v)


def format_cells(df: pd.DataFrame, bold_best: Mapping[str, str] | None = None,
                 digits: int | Mapping[str, int] = 2) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Shared cell formatting for Markdown and HTML tables.

    A column ``X`` with a companion ``X_std`` becomes one ``mean ± std`` column (``X_std``
    itself is not shown; a NaN std shows the mean alone). Numbers get ``digits`` decimals
    (an int for all columns or a per-column mapping). ``bold_best`` maps a column to
    ``"max"`` or ``"min"``: the cells whose *displayed* value equals the best are marked.
    A non-default index is shown as the first column. Returns (headers, rows, bold).
    """
    bold_best = dict(bold_best or {})
    if not isinstance(df.index, pd.RangeIndex) or df.index.name is not None:
        df = df.reset_index()
    for col, how in bold_best.items():
        if how not in ("max", "min"):
            raise ValueError(f"bold_best[{col!r}] must be 'max' or 'min', got {how!r}")
        if col not in df.columns:
            raise ValueError(f"bold_best names column {col!r}, which the table lacks")
    cols = [c for c in df.columns if not (str(c).endswith(STD_SUFFIX) and str(c)[: -len(STD_SUFFIX)] in df.columns)]

    def nd(col) -> int:
        return digits.get(col, 2) if isinstance(digits, Mapping) else int(digits)

    rows: list[list[str]] = []
    bold: list[list[bool]] = []
    best: dict = {}
    for col, how in bold_best.items():
        vals = pd.to_numeric(df[col], errors="coerce").round(nd(col))
        if vals.notna().any():
            best[col] = vals.max() if how == "max" else vals.min()
    for _, row in df.iterrows():
        cells, flags = [], []
        for col in cols:
            v = row[col]
            text = _fmt(v, nd(col))
            std_col = f"{col}{STD_SUFFIX}"
            if std_col in df.columns and _is_number(v) and math.isfinite(float(v)):
                s = row[std_col]
                if _is_number(s) and math.isfinite(float(s)):
                    text = f"{text} ± {_fmt(s, nd(col))}"
            flag = (col in best and _is_number(v) and math.isfinite(float(v))
                    and round(float(v), nd(col)) == best[col])
            cells.append(text)
            flags.append(bool(flag))
        rows.append(cells)
        bold.append(flags)
    return [str(c) for c in cols], rows, bold


def to_markdown(df: pd.DataFrame, bold_best: Mapping[str, str] | None = None,
                digits: int | Mapping[str, int] = 2) -> str:
    """A GitHub-flavoured Markdown table (see :func:`format_cells` for the cell rules)."""
    headers, rows, bold = format_cells(df, bold_best, digits)

    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |",
             "|" + "|".join("---" for _ in headers) + "|"]
    for cells, flags in zip(rows, bold):
        lines.append("| " + " | ".join(f"**{esc(c)}**" if f else esc(c) for c, f in zip(cells, flags)) + " |")
    return "\n".join(lines) + "\n"
