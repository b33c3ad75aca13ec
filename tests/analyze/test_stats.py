"""Statistics: correlations with bootstrap CIs, summaries, the main table, Markdown."""

import math

import numpy as np
import pandas as pd
import pytest

from pw_ray.analyze import stats as S


def _results(rows):
    """results.parquet-like rows from (pretrain_set, task, task_region, method, seed, score)."""
    df = pd.DataFrame(rows, columns=["pretrain_set", "task", "task_region", "method", "seed", "score"])
    df["task_type"] = "classification"
    return df


# --------------------------------------------------------------------------- correlate


def test_perfect_monotone_relation_has_rho_one_and_a_ci_within_bounds():
    x = np.arange(10.0)
    r = S.correlate(x, np.exp(x), n_boot=500, seed=0)
    assert r["spearman_rho"] == pytest.approx(1.0)
    # every resample is perfectly monotone, so the CI is [1, 1] (up to rounding)
    assert r["spearman_ci_low"] == pytest.approx(1.0) and r["spearman_ci_high"] == pytest.approx(1.0)
    assert -1 <= r["pearson_ci_low"] < r["pearson_r"] < r["pearson_ci_high"] <= 1
    assert r["n"] == 10


def test_correlate_is_deterministic_in_the_seed():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=12), rng.normal(size=12)
    assert S.correlate(x, y, seed=3) == S.correlate(x, y, seed=3)


def test_correlate_is_nan_safe_for_constant_input():
    r = S.correlate([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0], n_boot=50)
    assert math.isnan(r["spearman_rho"]) and math.isnan(r["pearson_r"]) and math.isnan(r["spearman_ci_low"])


def test_correlate_drops_nan_pairs():
    r = S.correlate([1, 2, np.nan, 4, 5], [2, 4, 6, np.nan, 10], n_boot=0)
    assert r["n"] == 3 and r["pearson_r"] == pytest.approx(1.0)


# --------------------------------------------------------------------------- tables


def test_summarise_gives_mean_and_sample_std_over_seeds():
    df = _results([("eu", "fmow", "global", "linear", 0, 0.30), ("eu", "fmow", "global", "linear", 1, 0.34)])
    s = S.summarise(df)
    assert len(s) == 1
    assert s.loc[0, "score_mean"] == pytest.approx(0.32)
    assert s.loc[0, "score_std"] == pytest.approx(np.std([0.30, 0.34], ddof=1))
    assert s.loc[0, "n_seeds"] == 2


def test_dense_rank_worked_by_hand():
    # task a: A 0.50, B 0.50, C 0.40 → dense ranks 0, 0, 1
    # task b: A 0.304, B 0.296, C 0.20 → rounded 0.30, 0.30, 0.20 → ranks 0, 0, 1
    # task c: A 0.10, B 0.90, C 0.50 → ranks 2, 0, 1
    # mean rank: A 2/3, B 0, C 1
    rows = []
    for s, scores in {"A": (0.50, 0.304, 0.10), "B": (0.50, 0.296, 0.90), "C": (0.40, 0.20, 0.50)}.items():
        for task, v in zip("abc", scores):
            rows.append((s, task, "global", "linear", 0, v))
    table = S.main_table(_results(rows))
    assert table["pretrain_set"].tolist() == ["B", "A", "C"]
    assert table["rank"].tolist() == pytest.approx([0.0, 2 / 3, 1.0])
    assert table.set_index("pretrain_set").loc["A", "mean_performance"] == pytest.approx((0.5 + 0.304 + 0.1) / 3)


def test_main_table_reproduces_the_papers_rank_column():
    paper = {  # FMoW, MOSAIKS, ForTy, GEO-Bench → paper's rank
        "Europe": ((0.33, 0.23, 0.37, 0.51), 0.00),
        "North America": ((0.32, 0.22, 0.36, 0.49), 1.00),
        "South America": ((0.27, 0.20, 0.36, 0.49), 1.50),
        "Asia": ((0.27, 0.20, 0.35, 0.47), 2.00),
        "Global": ((0.23, 0.17, 0.35, 0.46), 2.75),
        "Oceania": ((0.23, 0.14, 0.33, 0.45), 3.50),
        "Africa": ((0.15, 0.08, 0.31, 0.41), 4.50),
    }
    rows = [(s, t, "global", "linear", 0, v) for s, (vals, _) in paper.items()
            for t, v in zip(["fmow", "mosaiks", "forty", "geobench"], vals)]
    table = S.main_table(_results(rows)).set_index("pretrain_set")
    for s, (_, rank) in paper.items():
        assert table.loc[s, "rank"] == pytest.approx(rank), s


def test_markdown_shows_mean_plus_minus_std_and_bolds_the_max():
    df = pd.DataFrame({"pretrain_set": ["eu", "af"], "fmow": [0.331, 0.15], "fmow_std": [0.02, 0.001],
                       "rank": [0.0, 1.0]})
    md = S.to_markdown(df, {"fmow": "max", "rank": "min"})
    lines = md.strip().splitlines()
    assert lines[0] == "| pretrain_set | fmow | rank |"
    assert lines[2] == "| eu | **0.33 ± 0.02** | **0.00** |"
    assert lines[3] == "| af | 0.15 ± 0.00 | 1.00 |"


def test_diversity_correlations_has_one_row_per_measure_over_shared_sets():
    div = pd.DataFrame({"pretrain_set": ["a", "b", "c", "d"], "continent_entropy": [0.0, 0.5, 1.0, 1.5],
                        "spectral_entropy_hist": [1.0, 0.8, 0.6, 0.4]})
    perf = pd.Series([0.1, 0.2, 0.3, 0.4, 0.9], index=["a", "b", "c", "d", "zero"])
    c = S.diversity_correlations(div, perf, n_boot=100)
    assert c["measure"].tolist() == ["continent_entropy", "spectral_entropy_hist"]
    assert c["spearman_rho"].tolist() == pytest.approx([1.0, -1.0])
    assert c["n"].tolist() == [4, 4]


def test_summarise_ignores_cells_that_were_not_scored():
    df = _results([("eu", "fmow", "global", "linear", 0, 0.30), ("eu", "fmow", "global", "linear", 1, np.nan)])
    df["status"] = ["ok", "skipped"]
    s = S.summarise(df)
    assert s.loc[0, "score_mean"] == pytest.approx(0.30) and s.loc[0, "n_seeds"] == 1
