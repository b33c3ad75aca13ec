"""Statistics for the analysis: correlations with bootstrap CIs, result tables, Markdown.

Conventions:

- ``summarise`` gives mean and sample standard deviation (``ddof=1``; NaN with one seed)
  of ``score`` over seeds per (pretrain_set, task, task_region, method).
- ``main_table`` ranks the pretraining sets as the paper does: per task, each set gets the
  0-based *dense* rank of its mean score **rounded to 2 decimals** (best = 0, equal
  displayed values share a rank, the next value gets the next integer), and ``rank`` is the
  mean of these over tasks. Rounding first reproduces the paper's rank column from its
  displayed numbers for the seven pretraining sets (e.g. North America, 0.32 / 0.22 / 0.36 /
  0.49, is second on every task → 1.00; South America, 2 + 2 + 1 + 1 → 1.50), but not for
  zero pretraining: its 0.12 / 0.03 / 0.30 / 0.46 rank 5 + 6 + 5 + 3 → 4.75, where the paper
  prints 5.25 (= 21 / 4; its GEO-Bench 0.46 ties Global's for rank 3). Competition ranking
  ("1224") does not give 5.25 either and breaks the seven (Asia 2.50 instead of 2.00).
  All scores are higher-is-better.
  ``region_ranks`` gives the same rank column for every task region.
- External sets enter as ``extra`` rows shaped like ``summarise``'s output; they are ranked
  with the measured sets. ``correlation_table`` correlates over all sets and, when some are
  external, again over the measured ones only.
- p-values are scipy's two-sided ones (Student's t with n − 2 degrees of freedom, for
  Spearman's ρ as for Pearson's r), plus a permutation p-value for ρ that stays honest with
  a handful of sets; CIs are percentile-bootstrap intervals over resampled sets (see
  :func:`correlate`).
- Tables put a task's mean in column ``<task>`` and its std in ``<task>_std``;
  :func:`to_markdown` renders such pairs as ``0.33 ± 0.02`` cells.
"""

from __future__ import annotations

import itertools
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


#: Up to this many points the permutation test enumerates every permutation (8! = 40320).
EXACT_PERMUTATION_MAX_N = 8


def spearman_permutation_p(x, y, n_perm: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ: the share of pairings of x with
    permuted y whose |ρ| is at least the observed |ρ|.

    Exact (every one of the n! permutations, the observed pairing included) for n ≤
    :data:`EXACT_PERMUTATION_MAX_N`; otherwise ``n_perm`` random permutations and the
    usual ``(1 + count) / (1 + n_perm)``. Unlike the t approximation it stays honest for
    a handful of points: with 3 points no p-value can fall below 1/3. NaN with fewer
    than 3 points or a constant variable.
    """
    rx = st.rankdata(np.asarray(x, dtype=np.float64))
    ry = st.rankdata(np.asarray(y, dtype=np.float64))
    n = rx.size
    if n < 3 or np.ptp(rx) == 0 or np.ptp(ry) == 0:
        return float("nan")
    observed = abs(float(_rowwise_pearson(rx[None], ry[None])[0]))
    tol = 1e-12  # equal |ρ| computed along different paths must count as "at least"
    if n <= EXACT_PERMUTATION_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))), dtype=np.int64)
        rho = _rowwise_pearson(np.broadcast_to(rx, perms.shape), ry[perms])
        return float(np.mean(np.abs(rho) >= observed - tol))
    rng = np.random.default_rng(seed)
    perms = rng.permuted(np.broadcast_to(np.arange(n), (n_perm, n)), axis=1)
    rho = _rowwise_pearson(np.broadcast_to(rx, perms.shape), ry[perms])
    return float((1 + np.sum(np.abs(rho) >= observed - tol)) / (1 + n_perm))


def correlate(x, y, n_boot: int = 1000, seed: int = 0, ci: float = 0.95, n_perm: int = 9999) -> dict[str, float]:
    """Spearman and Pearson correlation of paired values with p-values and percentile-bootstrap CIs.

    NaN pairs are dropped. ``spearman_p`` and ``pearson_p`` are scipy's two-sided p-values
    (Student's t with n − 2 degrees of freedom); ``spearman_p_perm`` is the permutation
    p-value of :func:`spearman_permutation_p`. The CIs resample the *pairs* with replacement
    ``n_boot`` times and take the ``(1 − ci)/2`` and ``(1 + ci)/2`` percentiles of the
    resampled coefficients; resamples in which x or y is constant (no defined correlation)
    are left out. With fewer than 3 pairs, or ``n_boot = 0`` for the CIs, the values are NaN.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlate: x has {x.size} values but y has {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    nan = float("nan")
    out = {"spearman_rho": nan, "spearman_p": nan, "spearman_p_perm": nan, "spearman_ci_low": nan,
           "spearman_ci_high": nan,
           "pearson_r": nan, "pearson_p": nan, "pearson_ci_low": nan, "pearson_ci_high": nan, "n": n}
    if n < 3:
        return out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: scipy warns and returns NaN
        s = st.spearmanr(x, y)
        p = st.pearsonr(x, y) if np.ptp(x) > 0 and np.ptp(y) > 0 else None
    out["spearman_rho"], out["spearman_p"] = float(s.statistic), float(s.pvalue)
    out["spearman_p_perm"] = spearman_permutation_p(x, y, n_perm=n_perm, seed=seed)
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


def no_scores_reason(results: pd.DataFrame | None) -> str:
    """Why ``results`` (results.parquet rows, or None when it is missing) hold no scored cell; ''
    when some cell is scored. Said by analyze and by the report in place of the tables."""
    if results is None:
        return "results/results.parquet does not exist: run `pw-ray evaluate`"
    if len(results) == 0:
        return ("the evaluation grid has no cells: the config has no tasks (or no evaluation.methods "
                "or task_regions)")
    status = results["status"] if "status" in results.columns else pd.Series(["ok"] * len(results))
    if (status == "ok").any():
        return ""
    reasons = results.get("reason", pd.Series([""] * len(results))).fillna("").astype(str)
    common = reasons[reasons != ""].value_counts()
    first = f"; most often: {common.index[0]}" if len(common) else ""
    return f"all {len(results)} cells were skipped{first}"


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
               decimals: int = 2, extra: pd.DataFrame | None = None) -> pd.DataFrame:
    """The paper's main table for one method on one task region.

    One row per pretraining set: ``pretrain_set``; per task ``<task>`` (mean score over
    seeds) and ``<task>_std``; ``mean_performance`` (mean of the task means, over the tasks
    the set has); ``rank`` (mean over tasks of the 0-based dense rank of the mean rounded to
    ``decimals``, see the module docstring). Sorted by rank, then mean performance.
    ``extra``: rows shaped like :func:`summarise`'s (e.g. external sets' published scores)
    that join the table and its ranking as further sets.
    """
    return _main_table_from_summary(with_extra(summarise(results), extra), method, task_region, decimals)


def with_extra(summary: pd.DataFrame, extra: pd.DataFrame | None) -> pd.DataFrame:
    """``summary`` with ``extra`` summary-shaped rows appended (sets in both: refused)."""
    if extra is None or extra.empty:
        return summary
    _require(extra, GROUP_KEYS + ["score_mean", "score_std"], "extra summary rows")
    both = sorted(set(summary["pretrain_set"]) & set(extra["pretrain_set"]))
    if both:
        raise ValueError(f"sets {both} are both measured and given as extra rows; rename the extra ones")
    return pd.concat([summary, extra[[c for c in summary.columns if c in extra.columns]]], ignore_index=True)


def _main_table_from_summary(summary: pd.DataFrame, method: str, task_region: str, decimals: int) -> pd.DataFrame:
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


def region_ranks(summary: pd.DataFrame, method: str, decimals: int = 2) -> pd.DataFrame:
    """The main table's rank column for every task region of one method.

    Columns: ``pretrain_set``, then per task region (``global`` first) the mean over tasks
    of the set's 0-based dense rank within (task, task region), as in :func:`main_table`.
    Rows sorted by the mean of these over regions (best first).
    """
    sel = summary[summary["method"] == method]
    if sel.empty:
        raise ValueError(f"no results for method={method!r}")
    regions = sorted(sel["task_region"].unique(), key=lambda r: (r != "global", r))
    cols = {r: _main_table_from_summary(sel, method, r, decimals).set_index("pretrain_set")["rank"] for r in regions}
    table = pd.DataFrame(cols)[regions]
    order = table.mean(axis=1).sort_values(kind="stable").index
    table = table.loc[order].rename_axis("pretrain_set").reset_index()
    table.columns.name = None
    return table


def region_table(summary: pd.DataFrame, task: str, method: str) -> pd.DataFrame:
    """Pretraining set × task region table of mean ± std for one task and method.

    Columns: ``pretrain_set``, then per task region ``<region>`` and ``<region>_std``;
    ``global`` first, then the other regions alphabetically. Rows: best first on the first
    region, ties broken by the mean over regions.
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
    # Best first on the first region (global when present), then on the mean over regions.
    key = pd.DataFrame({"first": means[regions[0]], "mean": means.mean(axis=1)})
    order = key.sort_values(["first", "mean"], ascending=False, kind="stable", na_position="last").index
    table = table.loc[order].reset_index()
    table.columns.name = None
    return table


def diversity_correlations(diversity_df: pd.DataFrame, perf: pd.Series, measures: Sequence[str] | None = None,
                           n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Correlate each diversity measure with per-set performance; one row per measure.

    ``diversity_df`` has ``pretrain_set`` and the measure columns; ``perf`` is indexed by
    pretrain_set (e.g. ``main_table(...).set_index("pretrain_set")["mean_performance"]``).
    Sets present in both are used (so the ``zero`` baseline drops out). ``measures``
    defaults to those of :data:`DIVERSITY_MEASURES` present in ``diversity_df``. Besides
    :func:`correlate`'s fields, each row records ``n_boot`` and ``ci_level``.
    """
    _require(diversity_df, ["pretrain_set"], "diversity table")
    if measures is None:
        measures = [m for m in DIVERSITY_MEASURES if m in diversity_df.columns]
    _require(diversity_df, list(measures), "diversity table")
    joined = diversity_df.set_index("pretrain_set").join(perf.rename("_perf"), how="inner")
    rows = []
    for m in measures:
        r = correlate(joined[m].to_numpy(), joined["_perf"].to_numpy(), n_boot=n_boot, seed=seed, ci=ci)
        rows.append({"measure": m, **r, "n_boot": int(n_boot), "ci_level": float(ci)})
    cols = ["measure", "spearman_rho", "spearman_p", "spearman_p_perm", "spearman_ci_low", "spearman_ci_high",
            "pearson_r", "pearson_p", "pearson_ci_low", "pearson_ci_high", "n", "n_boot", "ci_level"]
    return pd.DataFrame(rows, columns=cols)


def correlation_table(diversity_df: pd.DataFrame, perf: pd.Series, external: Sequence[str] = (),
                      n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """:func:`diversity_correlations` with a ``sets`` column and a count of external sets.

    Rows with ``sets = "all"`` use every set of ``diversity_df`` (measured and external);
    when ``external`` names any set of it, rows with ``sets = "measured"`` repeat the
    correlations without the external sets, so the report shows how much they weigh.
    ``n_external`` is the number of external sets among a row's ``n`` points.
    """
    external = set(external)
    blocks = [("all", diversity_df)]
    if external & set(diversity_df["pretrain_set"]):
        blocks.append(("measured", diversity_df[~diversity_df["pretrain_set"].isin(external)]))
    out = []
    for label, div in blocks:
        c = diversity_correlations(div, perf, n_boot=n_boot, seed=seed, ci=ci)
        joined = div.set_index("pretrain_set").join(perf.rename("_perf"), how="inner")
        used = {m: joined.index[joined[m].notna() & joined["_perf"].notna()] for m in c["measure"]}
        c.insert(0, "sets", label)
        c["n_external"] = [int(sum(s in external for s in used[m])) for m in c["measure"]]
        out.append(c)
    return pd.concat(out, ignore_index=True)


# --------------------------------------------------------------------------- formatting


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _fmt(v, digits: int) -> str:
    if v is None or v is pd.NA or v is pd.NaT or (_is_number(v) and not math.isfinite(float(v))):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if _is_number(v):
        text = f"{float(v):.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.") else text  # no "-0.00"
    return str(v)


def fmt_num(v, digits: int = 2) -> str:
    """A number with ``digits`` decimals; ``–`` for NaN, None or non-numbers."""
    try:
        v = float(v)
    except (TypeError, ValueError):
        return "–"
    return _fmt(v, digits)


def fmt_p(v) -> str:
    """A p-value: three decimals, ``< 0.001`` below that, ``–`` when undefined."""
    text = fmt_num(v, 3)
    return "< 0.001" if text != "–" and float(v) < 0.001 else text


def fmt_ci(low, high, digits: int = 2) -> str:
    """A confidence interval as ``[low, high]``."""
    return f"[{fmt_num(low, digits)}, {fmt_num(high, digits)}]"


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
