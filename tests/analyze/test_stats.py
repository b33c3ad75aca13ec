"""Statistics: correlations with bootstrap CIs, summaries, the main table, Markdown."""

import math
from pathlib import Path

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


PAPER_MAIN_TABLE = {  # the paper's main table (linear probing): FMoW, MOSAIKS, ForTy, GEO-Bench → rank
    "Europe": ((0.33, 0.23, 0.37, 0.51), 0.00),
    "North America": ((0.32, 0.22, 0.36, 0.49), 1.00),
    "South America": ((0.27, 0.20, 0.36, 0.49), 1.50),
    "Asia": ((0.27, 0.20, 0.35, 0.47), 2.00),
    "Global": ((0.23, 0.17, 0.35, 0.46), 2.75),
    "Oceania": ((0.23, 0.14, 0.33, 0.45), 3.50),
    "Africa": ((0.15, 0.08, 0.31, 0.41), 4.50),
    "Zero pretraining": ((0.12, 0.03, 0.30, 0.46), 5.25),
}


def _paper_table():
    rows = [(s, t, "global", "linear", 0, v) for s, (vals, _) in PAPER_MAIN_TABLE.items()
            for t, v in zip(["fmow", "mosaiks", "forty", "geobench"], vals)]
    return S.main_table(_results(rows)).set_index("pretrain_set")


def test_rank_rule_matches_the_paper_for_the_seven_sets_but_not_for_zero_pretraining():
    """What the docstring and the docs claim: 4.75 for zero pretraining, the paper prints 5.25."""
    table = _paper_table()
    for s, (_, rank) in PAPER_MAIN_TABLE.items():
        if s != "Zero pretraining":
            assert table.loc[s, "rank"] == pytest.approx(rank), s
    assert table.loc["Zero pretraining", "rank"] == pytest.approx((5 + 6 + 5 + 3) / 4) == pytest.approx(4.75)
    # Competition ranking ("1224") neither gives 5.25 nor keeps the seven.
    means = table[["fmow", "mosaiks", "forty", "geobench"]].round(2)
    competition = (means.rank(method="min", ascending=False) - 1).mean(axis=1)
    assert competition["Asia"] == pytest.approx(2.5) and competition["Zero pretraining"] != pytest.approx(5.25)


def test_paper_main_table_above_is_the_one_in_paper_md():
    paper_md = Path(__file__).resolve().parents[3] / "shared" / "PAPER.md"
    if not paper_md.exists():
        pytest.skip(f"{paper_md} not present")
    rows = {}
    for line in paper_md.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[0] in PAPER_MAIN_TABLE:
            rows[cells[0]] = (tuple(float(c.split("±")[0]) for c in cells[1:5]), float(cells[5]))
    assert rows == PAPER_MAIN_TABLE


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


# --------------------------------------------------------------------------- worked by hand


def test_correlation_and_p_value_worked_by_hand():
    # ranks of y: 2 1 4 3 5 → d = −1 1 −1 1 0, Σd² = 4 → ρ = 1 − 6·4 / (5·24) = 0.8; the values
    # are their own ranks, so Pearson r = 0.8 too. p: t = r·√(n−2)/√(1−r²) = 0.8·√3/0.6 on 3
    # degrees of freedom, whose two-sided tail is 1 − (2/π)·(t/√3 / (1 + t²/3) + atan(t/√3))
    # with t/√3 = 4/3: 1 − (2/π)·(0.48 + atan(4/3)) ≈ 0.1041.
    r = S.correlate([1, 2, 3, 4, 5], [2, 1, 4, 3, 5], n_boot=0)
    p = 1 - 2 / math.pi * (0.48 + math.atan(4 / 3))
    assert r["spearman_rho"] == pytest.approx(0.8) and r["pearson_r"] == pytest.approx(0.8)
    assert r["spearman_p"] == pytest.approx(p) and r["pearson_p"] == pytest.approx(p)
    assert p == pytest.approx(0.1041, abs=1e-4)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution_of_three_points():
    # x = 1 2 3, y = 1 3 2. Of the 3³ = 27 resamples of the pairs, 3 repeat one pair (no
    # correlation: left out); 6 are permutations of all three (ρ = r = 0.5); the other 18
    # hold two distinct pairs, 6 for each: {1,2} and {1,3} rise (+1), {2,3} falls (−1).
    # So over the 24 kept resamples P(−1) = 1/4, P(0.5) = 1/4, P(+1) = 1/2:
    # the 95 % interval is [−1, 1]; the 40 % interval (30th, 70th percentiles) is [0.5, 1].
    x, y = [1, 2, 3], [1, 3, 2]
    wide = S.correlate(x, y, n_boot=4000, seed=0, ci=0.95)
    narrow = S.correlate(x, y, n_boot=4000, seed=0, ci=0.40)
    for name in ("spearman", "pearson"):
        assert (wide[f"{name}_ci_low"], wide[f"{name}_ci_high"]) == pytest.approx((-1.0, 1.0))
        assert (narrow[f"{name}_ci_low"], narrow[f"{name}_ci_high"]) == pytest.approx((0.5, 1.0))
    assert wide["spearman_rho"] == pytest.approx(0.5) and wide["pearson_r"] == pytest.approx(0.5)


def test_region_ranks_give_the_rank_column_per_task_region():
    # global: A beats B on both tasks → A 0, B 1; eu: B beats A on task a, ties (rounded) on b → A 0.5, B 0
    rows = [("A", "a", "global", "linear", 0, 0.9), ("B", "a", "global", "linear", 0, 0.5),
            ("A", "b", "global", "linear", 0, 0.8), ("B", "b", "global", "linear", 0, 0.4),
            ("A", "a", "eu", "linear", 0, 0.3), ("B", "a", "eu", "linear", 0, 0.6),
            ("A", "b", "eu", "linear", 0, 0.501), ("B", "b", "eu", "linear", 0, 0.499)]
    ranks = S.region_ranks(S.summarise(_results(rows)), "linear").set_index("pretrain_set")
    assert list(ranks.columns) == ["global", "eu"]
    assert ranks.loc["A"].tolist() == [0.0, 0.5] and ranks.loc["B"].tolist() == [1.0, 0.0]
    assert list(ranks.index) == ["A", "B"]  # mean over regions 0.25 vs 0.5


def test_diversity_correlations_record_the_bootstrap_settings():
    div = pd.DataFrame({"pretrain_set": list("abcd"), "continent_entropy": [0.0, 0.5, 1.0, 1.5]})
    c = S.diversity_correlations(div, pd.Series([0.1, 0.3, 0.2, 0.4], index=list("abcd")), n_boot=30, ci=0.9)
    assert c.loc[0, "n_boot"] == 30 and c.loc[0, "ci_level"] == 0.9


def test_p_values_and_intervals_are_formatted_for_tables():
    assert S.fmt_p(0.0004) == "< 0.001" and S.fmt_p(0.0416) == "0.042" and S.fmt_p(float("nan")) == "–"
    assert S.fmt_ci(-0.123, 0.987) == "[-0.12, 0.99]" and S.fmt_ci(np.nan, 1) == "[–, 1.00]"
    assert S.fmt_num(-0.0001) == "0.00" and S.fmt_num(-0.01) == "-0.01"  # no "-0.00"


def test_permutation_p_value_worked_by_hand():
    # x = 1..5, y = 2 1 4 3 5: ρ = 0.8. |ρ| ≥ 0.8 needs Σd² ≤ 4 or ≥ 36 (ρ = 1 − Σd²/20):
    # Σd² = 0 (1 pairing), 2 (the 4 adjacent swaps), 4 (the 3 pairs of disjoint adjacent
    # swaps), and the mirror images of these 8 (ρ ≤ −0.8) → 16 of the 120 pairings.
    assert S.spearman_permutation_p([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(16 / 120)
    # three points in reverse order: only the identity and the reversal reach |ρ| = 1 → 2/6,
    # where the t approximation claims p ≈ 0
    r = S.correlate([1, 2, 3], [3, 2, 1], n_boot=0)
    assert r["spearman_p_perm"] == pytest.approx(1 / 3) and r["spearman_p"] < 1e-6


def test_permutation_p_value_beyond_the_exact_range_is_a_seeded_monte_carlo_estimate():
    x = np.arange(12.0)
    y = x + np.random.default_rng(0).normal(0, 3, 12)
    p = S.spearman_permutation_p(x, y, n_perm=4000, seed=1)
    assert p == S.spearman_permutation_p(x, y, n_perm=4000, seed=1)
    assert p == pytest.approx(S.correlate(x, y, n_boot=0)["spearman_p"], abs=0.02)  # t is fine at n = 12
    assert S.spearman_permutation_p(x, x, n_perm=999) == pytest.approx(1 / 1000)  # nothing beats ρ = 1
