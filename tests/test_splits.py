"""pw_ray.splits: spatial (block) and random splits of task points, decided at plan time."""

import numpy as np
import pandas as pd
import pytest

from pw_ray.config import ConfigError, parse_config
from pw_ray.plan import haversine_m, sample_points
from pw_ray.splits import assign_splits, block_of, block_splits, block_uniform


def _points(n=3000, seed=0, region="eu"):
    return sample_points({region: 1.0}, n, seed=seed)


def test_spatial_split_puts_no_block_in_two_splits():
    pts = assign_splits(_points(), "spatial", (0.6, 0.2, 0.2), block_m=100_000, split_seed=3, seed=0)
    per_block = pts.groupby("block")["split"].nunique()
    assert len(per_block) > 50  # many blocks, so the check means something
    assert (per_block == 1).all()
    assert set(pts["split"]) == {"train", "val", "test"}


def test_random_split_does_put_blocks_in_two_splits():
    # The contrast that makes the spatial test meaningful: a random split straddles blocks.
    pts = assign_splits(_points(), "random", (0.6, 0.2, 0.2), block_m=100_000, split_seed=3, seed=0)
    assert (pts.groupby("block")["split"].nunique() > 1).sum() > 10
    assert pts["split"].value_counts().to_dict() == {"train": 1800, "val": 600, "test": 600}


def test_a_blocks_split_depends_on_the_block_alone():
    # Two different point sets (as two tasks would plan) agree wherever they share a block.
    a = assign_splits(_points(seed=1), "spatial", (0.6, 0.2, 0.2), block_m=150_000, split_seed=0, seed=5)
    b = assign_splits(_points(seed=2), "spatial", (0.6, 0.2, 0.2), block_m=150_000, split_seed=0, seed=99)
    both = a.groupby("block")["split"].first().to_frame("a").join(
        b.groupby("block")["split"].first().to_frame("b"), how="inner")
    assert len(both) > 30 and (both["a"] == both["b"]).all()
    # and a point's split is recomputable from its coordinates alone (what ingest does)
    again = block_splits(a["lon"], a["lat"], 150_000, (0.6, 0.2, 0.2), 0)
    assert (again == a["split"].to_numpy()).all()


def test_split_seed_changes_the_draw():
    pts = _points()
    s0 = block_splits(pts["lon"], pts["lat"], 100_000, (0.6, 0.2, 0.2), 0)
    s1 = block_splits(pts["lon"], pts["lat"], 100_000, (0.6, 0.2, 0.2), 1)
    assert (s0 != s1).mean() > 0.2


def test_blocks_are_about_block_m_wide_at_every_latitude():
    rng = np.random.default_rng(0)
    for lat0 in (0.0, 45.0, 70.0):
        lon = rng.uniform(10, 11, 20_000)
        lat = rng.uniform(lat0, lat0 + 1, 20_000)
        ids = block_of(lon, lat, 20_000)
        df = pd.DataFrame({"lon": lon, "lat": lat, "block": ids})
        extent = df.groupby("block").agg(w=("lon", "min"), e=("lon", "max"), s=("lat", "min"), n=("lat", "max"))
        inner = extent.iloc[len(extent) // 3: 2 * len(extent) // 3]  # blocks cut by the sample's edge aside
        widths = haversine_m(inner["w"], (inner["s"] + inner["n"]) / 2, inner["e"], (inner["s"] + inner["n"]) / 2)
        heights = haversine_m(inner["w"], inner["s"], inner["w"], inner["n"])
        assert np.median(heights) == pytest.approx(20_000, rel=0.05)
        assert np.median(widths) == pytest.approx(20_000, rel=0.1)


def test_block_draws_follow_the_fractions():
    # 4000 distinct blocks: their uniforms are flat and the cut keeps the shares.
    lat = np.repeat(np.linspace(-60, 60, 40), 100)
    lon = np.tile(np.linspace(-170, 170, 100), 40)
    u = block_uniform(lon, lat, 50_000, seed=7)
    assert len(np.unique(block_of(lon, lat, 50_000))) == 4000
    assert np.histogram(u, bins=4, range=(0, 1))[0] == pytest.approx([1000] * 4, abs=90)
    shares = pd.Series(block_splits(lon, lat, 50_000, (0.5, 0.25, 0.25), 7)).value_counts(normalize=True)
    assert shares.to_dict() == pytest.approx({"train": 0.5, "val": 0.25, "test": 0.25}, abs=0.03)


def test_random_split_is_stratified_by_known_labels():
    pts = _points(300)
    labels = np.array(["a", "b", "c"] * 100)
    out = assign_splits(pts, "random", (0.6, 0.2, 0.2), block_m=1e5, split_seed=0, seed=4, labels=labels)
    table = pd.crosstab(labels, out["split"])
    assert (table["test"] == 20).all() and (table["val"] == 20).all() and (table["train"] == 60).all()


# ----------------------------------------------------------------------------- config
_BASE = {"root": "/tmp/unused", "pretrain_sets": [{"name": "eu", "region": "eu", "size": 4}]}


def _task(**kw):
    return parse_config({**_BASE, "tasks": [{"name": "t", "kind": "synthetic-landcover", **kw}]}).tasks[0]


def test_task_split_defaults_to_spatial_and_old_fraction_lists_still_parse():
    assert (_task().split, _task().split_fractions) == ("spatial", (0.6, 0.2, 0.2))
    old = _task(split=[0.7, 0.1, 0.2])
    assert (old.split, old.split_fractions) == ("random", (0.7, 0.1, 0.2))
    new = _task(split="random", split_fractions=[0.5, 0.25, 0.25])
    assert (new.split, new.split_fractions) == ("random", (0.5, 0.25, 0.25))


def test_imported_tasks_keep_the_datasets_split():
    cfg = parse_config({**_BASE, "tasks": [{"name": "f", "kind": "fmow", "path": "/x", "split": [0.6, 0.3, 0.1]}]})
    assert (cfg.tasks[0].split, cfg.tasks[0].split_fractions) == ("dataset", (0.6, 0.3, 0.1))
    with pytest.raises(ConfigError, match=r"tasks\[0\].*keeps the dataset's own split"):
        parse_config({**_BASE, "tasks": [{"name": "f", "kind": "fmow", "path": "/x", "split": "spatial"}]})


def test_dumped_config_round_trips_the_split_fields():
    from pw_ray.config import dump_config

    import yaml

    cfg = parse_config({**_BASE, "tasks": [{"name": "t", "kind": "synthetic-landcover", "split": [0.7, 0.1, 0.2]}]})
    again = parse_config(yaml.safe_load(dump_config(cfg)))
    assert again.tasks[0] == cfg.tasks[0]


def test_plan_defaults_derive_from_the_chip_footprint():
    cfg = parse_config({**_BASE, "chips": {"size_px": 96, "resolution_m": 10}})
    assert cfg.exclusion_m == pytest.approx(960 * 2 ** 0.5 + 20)
    assert cfg.block_m == 9600
    off = parse_config({**_BASE, "plan": {"exclusion_m": 0, "block_m": 2000}})
    assert (off.exclusion_m, off.block_m) == (0.0, 2000.0)
    with pytest.raises(ConfigError, match=r"plan.exclude_splits: .*must include 'test'"):
        parse_config({**_BASE, "plan": {"exclude_splits": ["val"]}})
