"""pw_ray.leakage and the exclusion in pw_ray.plan: pretraining kept away from held-out task points."""

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import box

from pw_ray import leakage as L
from pw_ray import storage
from pw_ray.plan import haversine_m, sample_away, sample_points
from pw_ray.splits import block_splits, read_splits

# A 0.2° × 0.2° patch of France (~22 × 15 km) as the only place points may go.
PATCH = {"eu": [box(2.0, 47.0, 2.2, 47.2)]}
CENTRE = pd.DataFrame({"lon": [2.1], "lat": [47.1]})


def _dist_to(points, held):
    return haversine_m(points["lon"].to_numpy()[:, None], points["lat"].to_numpy()[:, None],
                       held["lon"].to_numpy()[None], held["lat"].to_numpy()[None]).min(axis=1)


def test_a_task_point_inside_the_sets_area_pushes_candidates_out():
    free = sample_points({"eu": 1}, 200, seed=4, coverage=PATCH)
    assert (_dist_to(free, CENTRE) < 3000).sum() > 5  # without exclusion, points sit on the task point
    got = sample_away({"eu": 1}, 200, seed=4, coverage=PATCH, held_out=CENTRE, exclusion_m=3000)
    assert len(got.points) == 200 and (got.points["region"] == "eu").all()
    assert _dist_to(got.points, CENTRE).min() > 3000
    assert got.replaced["eu"] > 5


def test_exclusion_replaces_near_candidates_by_the_next_ones_of_the_stream():
    got = sample_away({"eu": 1}, 150, seed=9, coverage=PATCH, held_out=CENTRE, exclusion_m=2500)
    k = got.replaced["eu"]
    # The stream without exclusion, as long as the candidates the excluded run went through:
    stream = sample_points({"eu": 1}, 150 + k, seed=9, coverage=PATCH)
    far = stream[_dist_to(stream, CENTRE) > 2500]
    assert len(far) == 150  # exactly k of them were near, so `replaced` counts what was dropped
    assert np.array_equal(far[["lon", "lat"]].to_numpy(), got.points[["lon", "lat"]].to_numpy())


def test_region_weights_are_kept_under_exclusion():
    held = pd.DataFrame({"lon": [10.0, 20.0], "lat": [50.0, 5.0]})
    got = sample_away({"eu": 3, "af": 1}, 80, seed=1, held_out=held, exclusion_m=400_000)
    assert got.points["region"].value_counts().to_dict() == {"eu": 60, "af": 20}
    assert _dist_to(got.points, held).min() > 400_000
    assert got.replaced["eu"] > 0 and got.replaced["af"] > 0


def test_exclusion_that_cannot_be_met_names_the_region_and_the_setting():
    held = pd.DataFrame({"lon": [2.1], "lat": [47.1]})
    with pytest.raises(ValueError, match=r"region 'eu'.*held-out task points.*plan.exclusion_m"):
        sample_away({"eu": 1}, 10, seed=0, coverage=PATCH, held_out=held, exclusion_m=50_000)


# ----------------------------------------------------------------------------- audit
def test_audit_pair_measures_distances_to_the_nearest_pretraining_chip():
    # Pretraining chips on the equator at 0°, 1°; held-out chips 0.001°, 0.5° and 2° east of 0°.
    deg = 2 * np.pi * 6_371_008.8 / 360  # metres per degree on the equator
    pretrain = pd.DataFrame({"lon": [0.0, 1.0], "lat": [0.0, 0.0]})
    held = pd.DataFrame({"lon": [0.001, 0.5, 2.0], "lat": [0.0, 0.0, 0.0]})
    a = L.audit_pair(pretrain, held, distance_m=200.0)
    assert a["n_pretrain"] == 2 and a["n_held_out"] == 3
    assert a["min_distance_m"] == pytest.approx(0.001 * deg, rel=1e-6)
    assert a["median_distance_m"] == pytest.approx(0.5 * deg, rel=1e-6)
    assert a["p01_distance_m"] == pytest.approx(0.001 * deg + 0.02 * (0.499 * deg), rel=1e-6)
    assert (a["n_held_out_within"], a["n_pretrain_within"]) == (1, 1)
    far = L.audit_pair(pretrain, held, distance_m=100.0)
    assert (far["n_held_out_within"], far["n_pretrain_within"]) == (0, 0)


def test_audit_pair_counts_each_side_separately():
    # Three pretraining chips around one held-out chip: 1 held-out chip, 3 pretraining chips within.
    pretrain = pd.DataFrame({"lon": [0.0, 0.001, -0.001], "lat": [0.001, 0.0, 0.0]})
    held = pd.DataFrame({"lon": [0.0], "lat": [0.0]})
    a = L.audit_pair(pretrain, held, distance_m=500.0)
    assert (a["n_held_out_within"], a["n_pretrain_within"]) == (1, 3)


def test_audit_pair_without_chips_gives_nan_distances_and_zero_counts():
    a = L.audit_pair(pd.DataFrame({"lon": [0.0], "lat": [0.0]}), pd.DataFrame({"lon": [], "lat": []}), 100.0)
    assert np.isnan(a["min_distance_m"]) and a["n_held_out_within"] == 0 and a["n_pretrain_within"] == 0


def test_nearest_matches_brute_force_haversine():
    rng = np.random.default_rng(0)
    ref = pd.DataFrame({"lon": rng.uniform(-180, 180, 3000), "lat": np.degrees(np.arcsin(rng.uniform(-1, 1, 3000)))})
    q = pd.DataFrame({"lon": rng.uniform(-180, 180, 200), "lat": rng.uniform(-80, 80, 200)})
    assert L.nearest_m(q["lon"], q["lat"], ref["lon"], ref["lat"]) == pytest.approx(_dist_to(q, ref), rel=1e-7)


# ----------------------------------------------------------------------------- the plan stage
@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    """The tiny config planned (tasks with spatial splits, then pretraining sets with exclusion)."""
    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from tests.conftest import TINY_CONFIG

    cfg = parse_config(dict(TINY_CONFIG, root=str(tmp_path_factory.mktemp("plan") / "root")))
    E.plan(cfg)
    return cfg, _read_points(cfg)


def _read_points(cfg):
    """Points of every set and task; a task's with its planned split and block."""
    read = lambda n: storage.read_table(storage.join(cfg.root, "points", f"{n}.parquet")).to_pandas()  # noqa: E731
    out = {s.name: read(s.name) for s in cfg.pretrain_sets}
    for t in cfg.tasks:
        out[t.name] = read(t.name).merge(read_splits(cfg.root, t.name), on="point_id", validate="1:1")
        assert len(out[t.name]) == t.size
    return out


def test_plan_keeps_every_pretraining_point_away_from_every_test_point(planned):
    cfg, points = planned
    test = pd.concat([points[t.name][points[t.name]["split"] == "test"] for t in cfg.tasks])
    assert len(test) > 10
    for s in cfg.pretrain_sets:
        assert _dist_to(points[s.name], test).min() > cfg.exclusion_m
        assert len(points[s.name]) == s.size


def test_plan_records_what_the_exclusion_replaced(planned):
    cfg, points = planned
    record = L.read_record(cfg.root)["sets"]
    test = pd.concat([points[t.name][points[t.name]["split"] == "test"] for t in cfg.tasks])
    for s in cfg.pretrain_sets:
        r = record[s.name]
        assert r["exclusion_m"] == pytest.approx(cfg.exclusion_m) and r["exclude_splits"] == ["test"]
        assert r["held_out_points"] == len(test)
        assert r["replaced"] == sum(r["replaced_by_region"].values())
    assert sum(r["replaced"] for r in record.values()) > 0  # tasks and sets share scenes: some were replaced


def test_task_points_carry_a_spatial_split_with_no_block_in_two_splits(planned):
    cfg, points = planned
    for t in cfg.tasks:
        assert (points[t.name].groupby("block")["split"].nunique() == 1).all()
        assert set(points[t.name]["split"]) == {"train", "val", "test"}


def test_replanning_with_other_held_out_points_redraws_the_sets(planned, tmp_path):
    import shutil

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from tests.conftest import TINY_CONFIG

    cfg, points = planned
    root = tmp_path / "root"
    shutil.copytree(cfg.root, root, ignore=shutil.ignore_patterns("_stages"))
    moved = parse_config(dict(TINY_CONFIG, root=str(root), plan={"block_m": 500, "split_seed": 1}))
    E.plan(moved)
    points = _read_points(moved)
    again = points["europe"]
    tasks = {t.name: points[t.name] for t in moved.tasks}
    for p in tasks.values():  # the tasks were split again with the new seed…
        assert (p["split"].to_numpy() == block_splits(p["lon"], p["lat"], 500, (0.6, 0.2, 0.2), 1)).all()
    test = pd.concat([p[p["split"] == "test"] for p in tasks.values()])
    assert _dist_to(again, test).min() > moved.exclusion_m  # …and the set re-planned away from their test points
