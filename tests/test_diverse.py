"""pw_ray.diverse: choosing the set of highest spectral entropy from a candidate pool (pure, no Ray)."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import pandas as pd
import pytest

from pw_ray.config import CONTINENTS, PretrainSet
from pw_ray.diverse import candidate_pool, plan_diverse_set, points_from_candidates, select_diverse
from pw_ray.plan import continent_counts, haversine_m


def _pool(lons, lats, regions) -> pd.DataFrame:
    return pd.DataFrame({"point_id": [f"c-{i}" for i in range(len(lons))], "lon": np.asarray(lons, float),
                         "lat": np.asarray(lats, float), "region": list(regions)})


def _brute_force(pool: pd.DataFrame, scores: np.ndarray, counts: dict[str, int], spacing_m: float = 0.0) -> float:
    """The best summed score over every subset with exactly ``counts`` per continent, ``spacing_m`` apart."""
    per_region = [list(itertools.combinations(np.flatnonzero(pool["region"].to_numpy() == r), c))
                  for r, c in counts.items()]
    best = -np.inf
    for combo in itertools.product(*per_region):
        idx = np.array([i for part in combo for i in part])
        if spacing_m > 0 and len(idx) > 1:
            a, b = np.triu_indices(len(idx), 1)
            d = haversine_m(pool["lon"].to_numpy()[idx[a]], pool["lat"].to_numpy()[idx[a]],
                            pool["lon"].to_numpy()[idx[b]], pool["lat"].to_numpy()[idx[b]])
            if (d < spacing_m).any():
                continue
        best = max(best, scores[idx].sum())
    return best


@pytest.mark.parametrize("seed", range(6))
def test_without_spacing_the_choice_is_the_optimum_found_by_brute_force(seed):
    rng = np.random.default_rng(seed)
    regions = rng.choice(["eu", "af", "sa"], size=11)
    regions[:3] = ["eu", "af", "sa"]  # every continent has candidates
    pool = _pool(rng.uniform(-10, 10, 11), rng.uniform(-10, 10, 11), regions)
    scores = rng.uniform(0, 2, 11)
    counts = {r: min(2, int((regions == r).sum())) for r in ("eu", "af", "sa")}
    picked = select_diverse(pool, scores, counts)
    assert scores[picked].sum() == pytest.approx(_brute_force(pool, scores, counts))
    # ... which is the top scores of each continent.
    for r, c in counts.items():
        mine = np.flatnonzero(regions == r)
        assert sorted(picked[regions[picked] == r]) == sorted(mine[np.argsort(-scores[mine])][:c])


def test_with_spacing_each_cluster_gives_its_best_candidate_which_is_optimal():
    # Four clusters 1° apart; inside one, candidates ~100 m apart. With a 1 km spacing at most one per
    # cluster can be taken, so the optimum is the best candidate of each of the three best clusters.
    centres = [(0.0, 45.0), (1.0, 45.0), (2.0, 45.0), (3.0, 45.0)]
    scores_by_cluster = [[1.0, 1.9, 1.2], [1.5, 1.4, 0.2], [0.9, 0.3, 0.1], [1.8, 1.7, 1.6]]
    lons, lats, scores = [], [], []
    for (lon, lat), s in zip(centres, scores_by_cluster):
        for k, v in enumerate(s):
            lons.append(lon + 0.001 * k)
            lats.append(lat)
            scores.append(v)
    pool, scores = _pool(lons, lats, ["eu"] * len(lons)), np.array(scores)
    picked = select_diverse(pool, scores, {"eu": 3}, min_spacing_m=1000)
    assert sorted(picked.tolist()) == [1, 3, 9]  # 1.9 (cluster 0), 1.5 (cluster 1), 1.8 (cluster 3)
    assert scores[picked].sum() == pytest.approx(_brute_force(pool, scores, {"eu": 3}, spacing_m=1000))
    # Without the spacing the same pool gives the three highest scores, two of one cluster.
    assert sorted(select_diverse(pool, scores, {"eu": 3}).tolist()) == [1, 9, 10]


def test_chosen_points_keep_the_minimum_spacing_and_the_counts():
    rng = np.random.default_rng(3)
    n = 400  # dense: many candidates within 5 km of each other
    regions = np.where(rng.random(n) < 0.5, "eu", "af")
    pool = _pool(rng.uniform(10, 10.5, n), rng.uniform(45, 45.5, n), regions)
    scores = rng.uniform(0, 2, n)
    picked = select_diverse(pool, scores, {"eu": 12, "af": 8}, min_spacing_m=5000)
    assert {r: int((regions[picked] == r).sum()) for r in ("eu", "af")} == {"eu": 12, "af": 8}
    lon, lat = pool["lon"].to_numpy()[picked], pool["lat"].to_numpy()[picked]
    a, b = np.triu_indices(len(picked), 1)
    assert haversine_m(lon[a], lat[a], lon[b], lat[b]).min() >= 5000
    # The spacing cost something: without it the best scores of each continent are closer than 5 km.
    free = select_diverse(pool, scores, {"eu": 12, "af": 8})
    assert scores[free].sum() > scores[picked].sum()


def test_region_counts_hold_even_when_another_continent_scores_higher():
    pool = _pool([0, 1, 2, 3, 4, 5], [0] * 6, ["af", "af", "af", "eu", "eu", "eu"])
    scores = np.array([2.0, 1.9, 1.8, 0.1, 0.3, 0.2])
    picked = select_diverse(pool, scores, {"af": 1, "eu": 2})
    # Continents in CONTINENTS order (af before eu), best first within each.
    assert picked.tolist() == [0, 4, 5]


def test_ties_go_to_the_earlier_candidate_and_the_choice_is_repeatable():
    pool = _pool([0, 1, 2, 3], [0] * 4, ["eu"] * 4)
    scores = np.array([1.0, 1.5, 1.5, 1.5])
    assert select_diverse(pool, scores, {"eu": 2}).tolist() == [1, 2]
    assert select_diverse(pool, scores, {"eu": 2}).tolist() == [1, 2]


def test_candidates_without_a_signature_only_fill_what_is_left(caplog):
    pool = _pool([0, 1, 2, 3], [0] * 4, ["eu"] * 4)
    scores = np.array([np.nan, 0.2, np.nan, 0.1])
    with caplog.at_level(logging.WARNING, logger="pw_ray.diverse"):
        picked = select_diverse(pool, scores, {"eu": 3})
    assert picked.tolist() == [1, 3, 0]  # scored best first, then the first unscored in pool order
    assert "only 2 of its 3 points have a usable scene" in caplog.text


def test_a_pool_too_small_for_the_spacing_names_the_region():
    pool = _pool([0.0, 0.0001, 5.0], [0.0, 0.0, 0.0], ["af", "af", "eu"])
    with pytest.raises(ValueError, match=r"region 'af' \(1 of 2 placed from 2 candidates\) at least 1000 m apart"):
        select_diverse(pool, np.array([1.0, 2.0, 3.0]), {"af": 2, "eu": 1}, min_spacing_m=1000)


def test_scores_must_match_the_candidates():
    with pytest.raises(ValueError, match=r"expected \(2,\)"):
        select_diverse(_pool([0, 1], [0, 0], ["eu", "eu"]), np.array([1.0]), {"eu": 1})


def _fake_signatures(pool: pd.DataFrame) -> pd.DataFrame:
    """A score that depends on where the candidate is (stands in for the COG reads)."""
    return pd.DataFrame({"point_id": pool["point_id"], "status": "ok",
                         "score": np.sin(pool["lon"].to_numpy() * 3.0) + np.cos(pool["lat"].to_numpy() * 5.0)})


def _diverse_set(seed: int = 4, **kw) -> PretrainSet:
    return PretrainSet(name="div", region="global", size=30, seed=seed, strategy="spectral-diverse", **kw)


def test_the_pool_is_the_random_set_of_candidates_times_the_size():
    pset = _diverse_set(candidates=5)
    pool = candidate_pool(pset).points
    assert len(pool) == 150
    assert pool["region"].value_counts().to_dict() == {c: 25 for c in CONTINENTS}
    assert pool["point_id"].iloc[0] == "div-candidate-000000"


def test_the_builder_keeps_the_best_of_each_continent_with_a_random_sets_counts():
    pset = _diverse_set()
    points, table, _ = plan_diverse_set(pset, _fake_signatures)
    assert len(points) == 30 and len(table) == 240
    assert points["point_id"].tolist() == [f"div-{i:06d}" for i in range(30)]
    assert set(points["set"]) == {"div"}
    assert points["region"].value_counts().to_dict() == continent_counts(pset.weights(), 30)
    for r in CONTINENTS:  # the five chosen in each continent are its five best candidates
        mine = table[table["region"] == r]
        assert set(mine[mine["chosen"]]["point_id"]) == set(mine.nlargest(5, "score")["point_id"])
    assert table.loc[table["chosen"], "score"].mean() > table["score"].mean() + 0.5
    # The stored candidates table gives the same points back.
    pd.testing.assert_frame_equal(points_from_candidates(table, "div"), points)


def test_the_builder_is_deterministic_for_a_seed():
    a = plan_diverse_set(_diverse_set(seed=4), _fake_signatures).points
    b = plan_diverse_set(_diverse_set(seed=4), _fake_signatures).points
    c = plan_diverse_set(_diverse_set(seed=5), _fake_signatures).points
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["lon"].to_numpy(), c["lon"].to_numpy())


def test_the_builder_respects_spacing_and_weights():
    pset = PretrainSet(name="mix", region={"eu": 3, "af": 1}, size=20, seed=2, strategy="spectral-diverse")
    points, table, _ = plan_diverse_set(pset, _fake_signatures, min_spacing_m=20_000)
    assert points["region"].value_counts().to_dict() == {"eu": 15, "af": 5}
    a, b = np.triu_indices(len(points), 1)
    lon, lat = points["lon"].to_numpy(), points["lat"].to_numpy()
    assert haversine_m(lon[a], lat[a], lon[b], lat[b]).min() >= 20_000


def test_the_pool_keeps_away_from_held_out_points_before_selection():
    pset = _diverse_set()
    free = plan_diverse_set(pset, _fake_signatures)
    # Hold out the best chosen point of each continent: a random set planned the same way would
    # also have to keep 50 km from them.
    best = free.candidates[free.candidates["chosen"]].sort_values("score").groupby("region").tail(1)
    seen = []

    def signatures(pool):
        seen.append(pool)
        return _fake_signatures(pool)

    away = plan_diverse_set(pset, signatures, held_out=best[["lon", "lat"]], exclusion_m=50_000)
    pool = seen[0]
    for lon, lat in zip(best["lon"], best["lat"]):  # no candidate near them was ever scored
        assert haversine_m(pool["lon"], pool["lat"], lon, lat).min() > 50_000
    assert sum(away.replaced.values()) >= len(best)
    assert len(away.points) == 30
    assert away.points["region"].value_counts().to_dict() == continent_counts(pset.weights(), 30)


def test_plan_diverse_set_refuses_a_random_set():
    with pytest.raises(ValueError, match="strategy 'random'"):
        plan_diverse_set(PretrainSet(name="r", region="eu", size=3), _fake_signatures)
