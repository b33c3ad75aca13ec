"""Imported task builders: fMoW-Sentinel and GEO-Bench folders (generated here, never downloaded)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pw_ray import storage
from pw_ray.config import ChipSpec, TaskSpec, parse_config
from pw_ray.evaluate import builders as BD
from tests.evaluate.data import (
    FMOW_CATEGORIES, REGION_LONLAT, band_value, export_random_encoder, make_fmow_dir, make_geobench_dir,
)

CHIPS = ChipSpec(size_px=16)  # the ten SatMAE bands


@pytest.fixture(scope="module")
def fmow_dir(tmp_path_factory):
    return make_fmow_dir(tmp_path_factory.mktemp("fmow"))


@pytest.fixture(scope="module")
def geobench_dir(tmp_path_factory):
    return make_geobench_dir(tmp_path_factory.mktemp("geobench"))


def _fmow(path, **kw) -> TaskSpec:
    return TaskSpec(name="fmow", kind="fmow", path=str(path), **kw)


# ----------------------------------------------------------------------------- fMoW-Sentinel
def test_fmow_plan_keeps_its_train_split_and_divides_val_by_whole_locations(fmow_dir):
    pts = BD.plan_fmow(_fmow(fmow_dir, seed=3))
    train = pd.read_csv(fmow_dir / "train.csv")
    val = pd.read_csv(fmow_dir / "val.csv")
    assert len(pts) == len(train) + len(val) == 36
    from_train = pts["image"].str.contains("/train/")
    assert (pts.loc[from_train, "split"] == "train").all()
    assert set(pts.loc[~from_train, "split"]) == {"val", "test"}  # fMoW's val never trains
    per_location = pts[~from_train].groupby(["label", pts["image"].str.rsplit("_", n=1).str[0]])["split"].nunique()
    assert (per_location == 1).all()  # a location's time series is never split between val and test
    assert set(pts["label"]) == set(FMOW_CATEGORIES)


def test_fmow_images_are_placed_by_their_geotiff_centre(fmow_dir):
    pts = BD.plan_fmow(_fmow(fmow_dir))
    assert set(pts["region"]) == {"eu", "af", "na"}
    for r in pts.itertuples(index=False):
        lon0, lat0 = REGION_LONLAT[r.region]
        assert abs(r.lon - lon0) < 1.5 and abs(r.lat - lat0) < 1.0
        assert r.epsg // 100 in (326, 327)


def test_fmow_uses_test_gt_csv_as_test_when_present(fmow_dir, tmp_path):
    import shutil

    d = tmp_path / "fmow-sentinel"
    shutil.copytree(fmow_dir, d)
    (d / "test_gt.csv").write_text((d / "val.csv").read_text())
    pts = BD.plan_fmow(_fmow(d))
    assert pts["split"].value_counts().to_dict() == {"train": 24, "val": 12, "test": 12}


def test_fmow_without_image_path_column_finds_the_documented_layout(tmp_path):
    d = make_fmow_dir(tmp_path, locations_per_category=2, with_image_path=False)
    assert "image_path" not in pd.read_csv(d / "train.csv").columns
    pts = BD.plan_fmow(_fmow(d))
    assert len(pts) == 3 * 2 * 2 + 3 * 2 * 2
    assert all(storage.exists(h) for h in pts["image"])


def test_fmow_bands_are_mapped_by_name_cropped_and_resampled(fmow_dir):
    pts = BD.plan_fmow(_fmow(fmow_dir))
    p = pts.iloc[0].to_dict()
    pixels, extra = BD.read_chip(p, "fmow", CHIPS)
    assert pixels.shape == (10, 16, 16) and pixels.dtype == np.uint16
    ci = FMOW_CATEGORIES.index(p["label"])
    for c, band in enumerate(CHIPS.bands):
        expected = band_value(BD.FMOW_BANDS.index(band), ci)  # B8A is file band 9, B11 band 12
        assert abs(float(pixels[c].mean()) - expected) < 3, band
    assert (extra["row_off"], extra["col_off"]) == (0, 3)  # 20×26 image: centre 20×20 square


def test_fmow_max_chips_samples_every_split(fmow_dir):
    pts = BD.plan_fmow(_fmow(fmow_dir, max_chips=18))
    assert pts["split"].value_counts().to_dict() == {"train": 12, "val": 3, "test": 3}
    assert (pts.groupby("split")["label"].nunique() == len(FMOW_CATEGORIES)).all()


def test_bands_are_looked_up_by_name_and_a_missing_one_is_named():
    assert BD.map_bands(list(BD.FMOW_BANDS), ["B8A", "B08"], "x.tif") == [8, 7]
    with pytest.raises(ValueError, match=r"x.tif has bands \['B02', 'B03'\].*missing \['B8A'\]"):
        BD.map_bands(["B02", "B03"], ["B02", "B8A"], "x.tif")


# ----------------------------------------------------------------------------- GEO-Bench
def test_geobench_band_names_map_to_canonical_names():
    assert BD.geobench_band("02 - Blue") == "B02"
    assert BD.geobench_band("08A - Vegetation Red Edge") == "B8A"
    assert BD.geobench_band("10 - SWIR - Cirrus") == "B10"
    assert BD.geobench_band("Red") is None and BD.geobench_band("01 - VH.Real") is None


def test_geobench_plan_keeps_its_partition_and_labels(geobench_dir):
    pts = BD.plan_geobench(TaskSpec(name="gb", kind="geobench", path=str(geobench_dir)))
    assert pts["split"].value_counts().to_dict() == {"train": 18, "val": 6, "test": 6}
    assert sorted(pts["label"].unique()) == ["0", "1", "2"]
    assert set(pts["region"]) == {"eu", "af"}
    part = json.loads((geobench_dir / "default_partition.json").read_text())
    assert sorted(pts.loc[pts["split"] == "val", "point_id"]) == sorted(f"gb-{n}" for n in part["valid"])


def test_geobench_bands_are_mapped_by_name(geobench_dir):
    pts = BD.plan_geobench(TaskSpec(name="gb", kind="geobench", path=str(geobench_dir)))
    p = pts.iloc[0].to_dict()
    pixels, _ = BD.read_chip(p, "geobench", CHIPS)
    assert pixels.shape == (10, 16, 16)
    for c, band in enumerate(CHIPS.bands):
        assert (pixels[c] == band_value(BD.FMOW_BANDS.index(band), int(p["label"]))).all(), band


def test_geobench_hdf5_samples_are_refused_with_the_reason(tmp_path):
    d = tmp_path / "m-eurosat"
    d.mkdir()
    (d / "default_partition.json").write_text(json.dumps({"train": ["id_0"], "valid": [], "test": []}))
    (d / "id_0.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n")
    with pytest.raises(NotImplementedError, match="h5py"):
        BD.plan_geobench(TaskSpec(name="gb", kind="geobench", path=str(d)))


def test_imported_task_kinds_need_a_path():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="needs a path"):
        TaskSpec(name="f", kind="fmow")


# ----------------------------------------------------------------------------- plan → ingest → a cell
def test_fmow_and_geobench_tasks_go_through_plan_and_ingest(ray_session, fmow_dir, geobench_dir, tmp_path):
    from pw_ray import experiment as E
    from pw_ray.evaluate import embeddings as EMB
    from pw_ray.evaluate import grid as G
    from pw_ray.evaluate import tasks as T
    from pw_ray.ingest import shards as S

    cfg = parse_config({
        "root": str(tmp_path / "root"), "pretrain_sets": [],
        "chips": {"size_px": 16, "chunk_size": 16},
        "tasks": [{"name": "fmow", "kind": "fmow", "path": str(fmow_dir)},
                  {"name": "gb", "kind": "geobench", "path": str(geobench_dir)}],
        "evaluation": {"task_regions": ["global", "eu"], "min_subset": 5, "knn_k": 3},
    })
    src = E.Source(None, None, None, None, None)  # imported tasks need no STAC source nor land cover
    E.plan(cfg, src=src)
    E.ingest(cfg, src=src)
    export_random_encoder(cfg, "zero", seed=0)
    for name, n in (("fmow", 36), ("gb", 30)):
        pts = storage.read_table(storage.join(cfg.root, "points", f"{name}.parquet")).to_pandas()
        task = T.read_task(cfg.root, name)
        assert len(task) == len(pts) == n
        assert task.set_index("chip_id")["split"].to_dict() == pts.set_index("point_id")["split"].to_dict()
        chips = S.read_set(cfg.root, name)
        assert S.shard_bands(chips) == list(cfg.chips.bands) and S.read_pixels(chips).shape[1:] == (10, 16, 16)
        manifest = storage.read_table(storage.join(cfg.root, "manifest", f"{name}.parquet")).to_pandas()
        assert (manifest["status"] == "ok").all()
        EMB.compute_embeddings(cfg.root, "zero", name)
        cell = {"pretrain_set": "zero", "task": name, "task_type": "classification", "task_region": "global",
                "method": "knn", "seed": 0}
        row = G.evaluate_cell(cfg.root, cell, cfg.evaluation.model_dump())
        assert row["status"] == "ok" and 0 <= row["accuracy"] <= 1
    # ingest again: every shard reused, nothing duplicated
    E.ingest(cfg, force=True, src=src)
    assert len(S.read_set(cfg.root, "fmow", columns=["chip_id"])) == 36
