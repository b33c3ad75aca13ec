"""The chip index: candidates screened in rounds, one SCL read per scene per batch of points."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
from shapely.geometry import shape

from pw_ray.config import ChipSpec
from pw_ray.ingest import chips as C
from pw_ray.ingest import pipeline as P
from pw_ray.ingest.catalogs import PlanetaryComputer
from pw_ray.ingest.search import StaticSearch
from pw_ray.synthetic import load_items


def _points(item, n, seed=0):
    """``n`` points inside an item's footprint (well inside: chips fit)."""
    g = shape(item["geometry"])
    (x0, y0, x1, y1), rng = g.bounds, np.random.default_rng(seed)
    lon = x0 + (x1 - x0) * (0.3 + 0.4 * rng.random(n))
    lat = y0 + (y1 - y0) * (0.3 + 0.4 * rng.random(n))
    return pd.DataFrame({"point_id": [f"p-{i:03d}" for i in range(n)], "set": "s", "lon": lon, "lat": lat,
                         "region": "af", "biome": "unknown", "landcover": "unknown"})


def _twin(item, suffix, cloud):
    it = json.loads(json.dumps(item))
    it["id"] = f"{item['id']}-{suffix}"
    it["properties"]["eo:cloud_cover"] = cloud
    return it


def _spy_scl(monkeypatch, fail_for=()):
    calls = []
    real = C.read_scl

    def spy(item, adapter, windows, size_px, res=10.0):
        calls.append((item["id"], len(windows)))
        if item["id"] in fail_for:
            raise OSError(f"cannot read SCL of {item['id']}")
        return real(item, adapter, windows, size_px, res)

    monkeypatch.setattr(C, "read_scl", spy)
    return calls


def test_one_scl_read_per_scene_for_all_points_of_a_batch(stac_archive, monkeypatch):
    item = load_items(stac_archive)[0]
    pts = _points(item, 12)
    calls = _spy_scl(monkeypatch)
    search = StaticSearch([item], collection=None, datetime_range="2023-01-01/2023-12-31",
                          max_cloud_cover=100, max_items=3)
    spec = ChipSpec(size_px=32, max_cloud_fraction=1.0, max_nodata_fraction=1.0, chunk_size=8)
    index = P.index_points(pts, search, PlanetaryComputer(), spec)
    assert (index["status"] == "ok").all()
    assert calls == [(item["id"], 12)]  # not 12 opens of the same SCL asset


def test_a_point_falls_back_to_its_next_scene_in_order(stac_archive, monkeypatch):
    item = load_items(stac_archive)[0]
    best, second = _twin(item, "a", 1.0), _twin(item, "b", 2.0)
    pts = _points(item, 5, seed=1)
    calls = _spy_scl(monkeypatch)
    # Every chip of the best scene is all cloud …
    real_read = C.read_scl  # the spy

    def cloudy_first(it, adapter, windows, size_px, res=10.0):
        scl = real_read(it, adapter, windows, size_px, res)
        return np.full_like(scl, 9) if it["id"] == best["id"] else scl  # SCL 9: cloud, high probability

    monkeypatch.setattr(C, "read_scl", cloudy_first)
    search = StaticSearch([second, best], collection=None, datetime_range="2023-01-01/2023-12-31",
                          max_cloud_cover=100, max_items=3)
    spec = ChipSpec(size_px=32, max_cloud_fraction=0.5, max_nodata_fraction=1.0, chunk_size=8)
    index = P.index_points(pts, search, PlanetaryComputer(), spec)
    assert (index["status"] == "ok").all()
    assert set(index["item_id"]) == {second["id"]}
    assert calls == [(best["id"], 5), (second["id"], 5)]  # round 0: the best scene for all, round 1: the next
    # … and with only the cloudy scene, every point is skipped with the reason.
    search1 = StaticSearch([best], collection=None, datetime_range="2023-01-01/2023-12-31",
                           max_cloud_cover=100, max_items=3)
    index1 = P.index_points(pts, search1, PlanetaryComputer(), spec)
    assert (index1["status"] == "skipped").all()
    assert index1["reason"].str.startswith("cloud 1.00 > 0.5").all()


def test_a_scene_that_cannot_be_read_fails_only_its_points(stac_archive, monkeypatch):
    items = load_items(stac_archive)
    bad, good = items[0], items[1]
    pts = pd.concat([_points(bad, 3), _points(good, 4, seed=2).assign(point_id=lambda d: "q" + d["point_id"])])
    _spy_scl(monkeypatch, fail_for={bad["id"]})
    search = StaticSearch([bad, good], collection=None, datetime_range="2023-01-01/2023-12-31",
                          max_cloud_cover=100, max_items=3)
    spec = ChipSpec(size_px=32, max_cloud_fraction=1.0, max_nodata_fraction=1.0, chunk_size=8)
    index = P.index_points(pts, search, PlanetaryComputer(), spec).set_index("point_id")
    assert (index.loc[[f"p-{i:03d}" for i in range(3)], "status"] == "failed").all()
    assert index.loc["p-000", "reason"].startswith("OSError: cannot read SCL of")
    assert (index.loc[[f"qp-{i:03d}" for i in range(4)], "status"] == "ok").all()


def test_index_parts_hold_whole_search_cells_and_are_deterministic():
    rng = np.random.default_rng(0)
    # 12 cells of 1°: 11 with 5–30 points, one dense cell of 150 (more than a part holds).
    centres = [(float(x) + 0.5, float(y) + 0.5) for x, y in zip(rng.integers(-20, 40, 11), rng.integers(-30, 60, 11))]
    sizes = rng.integers(5, 31, len(centres)).tolist()
    lon = np.concatenate([cx + rng.uniform(-0.49, 0.49, n) for (cx, _), n in zip(centres, sizes)] +
                         [rng.uniform(10.01, 10.99, 150)])
    lat = np.concatenate([cy + rng.uniform(-0.49, 0.49, n) for (_, cy), n in zip(centres, sizes)] +
                         [rng.uniform(45.01, 45.99, 150)])
    n = len(lon)
    pts = pd.DataFrame({"point_id": [f"p{i:04d}" for i in range(n)], "region": "eu", "lon": lon, "lat": lat})
    parts = P.spatial_batches(pts, 64)
    again = P.spatial_batches(pts.sample(frac=1, random_state=3), 64)
    assert [x["point_id"].tolist() for x in parts] == [x["point_id"].tolist() for x in again]
    assert sorted(pd.concat(parts)["point_id"]) == sorted(pts["point_id"])
    cell = {pid: (int(np.floor(la)), int(np.floor(lo))) for pid, lo, la in zip(pts["point_id"], lon, lat)}
    owners: dict = {}
    for k, part in enumerate(parts):
        assert len(part) <= 64
        for pid in part["point_id"]:
            owners.setdefault(cell[pid], set()).add(k)
    dense = (45, 10)
    # Every cell in one part (searched once), except the dense one: ceil(150 / 64) = 3 parts of its own.
    assert all(len(v) == 1 for c, v in owners.items() if c != dense)
    assert len(owners[dense]) == 3
    assert sorted(len(parts[k]) for k in owners[dense]) == [50, 50, 50]
    assert all({cell[p] for p in parts[k]["point_id"]} == {dense} for k in owners[dense])
    # Small cells are packed: fewer parts than cells.
    assert len(parts) - 3 < len(owners) - 1


def test_a_corrupt_asset_fails_its_scenes_chips_and_the_chunk_goes_on(stac_archive, tmp_path):
    """One scene's B05 is truncated: its chips fail with the error; the other scene's are written."""
    import shutil

    from pw_ray.ingest import shards as S
    from pw_ray.synthetic import rewrite_hrefs

    items = load_items(stac_archive)
    good, bad0 = items[0], items[1]
    src_dir = stac_archive.root / "cogs" / bad0["id"]
    dst_dir = tmp_path / "cogs" / bad0["id"]
    shutil.copytree(src_dir, dst_dir)
    b05 = dst_dir / "B05.tif"
    b05.write_bytes(b05.read_bytes()[:2000])  # header kept, tiles gone
    bad = rewrite_hrefs(bad0, str(stac_archive.root), str(tmp_path))
    pts = pd.concat([_points(good, 3), _points(bad, 2, seed=4).assign(point_id=lambda d: "b" + d["point_id"])])
    search = StaticSearch([good, bad], collection=None, datetime_range="2023-01-01/2023-12-31",
                          max_cloud_cover=100, max_items=3)
    spec = ChipSpec(size_px=32, max_cloud_fraction=1.0, max_nodata_fraction=1.0, chunk_size=8)
    index = P.index_points(pts, search, PlanetaryComputer(), spec)  # SCL is intact: all chips kept
    assert (index["status"] == "ok").all()
    chunked = P.assign_chunks(index.drop(columns=["items_json"]).assign(region="af"), spec.chunk_size)
    assert chunked["chunk"].nunique() == 1
    res = P.write_chunk(chunked, {good["id"]: good, bad["id"]: bad}, str(tmp_path / "root"), "s", "af", 0,
                        PlanetaryComputer(), spec)
    records = json.loads(res["failed"])
    failed = {cid: why for cid, why, _ in records}
    assert sorted(failed) == ["bp-000", "bp-001"]
    # Truncated tiles: GDAL's TIFFReadEncodedTile error (the cause) marks it permanent.
    assert {kind for _, _, kind in records} == {"permanent"}
    assert all("TIFFReadEncodedTile" in why for why in failed.values())
    assert all("RasterioIOError" in why or "B05" in why for why in failed.values())
    assert res["n"] == 3
    t = S.read_set(str(tmp_path / "root"), "s")
    assert sorted(t.column("chip_id").to_pylist()) == ["p-000", "p-001", "p-002"]
    # The surviving chips are exactly what a chunk of only them holds (no misplaced pixels).
    alone = chunked[chunked["item_id"] == good["id"]]
    P.write_chunk(alone, {good["id"]: good}, str(tmp_path / "alone"), "s", "af", 0, PlanetaryComputer(), spec)
    ref = S.read_set(str(tmp_path / "alone"), "s")
    assert t.column("chip_id").to_pylist() == ref.column("chip_id").to_pylist()
    np.testing.assert_array_equal(S.read_pixels(t), S.read_pixels(ref))


def test_chunks_keep_scenes_whole_unless_a_scene_is_larger_than_a_chunk():
    sizes = {"a": 3, "b": 4, "c": 2, "d": 9, "e": 1}  # scene -> chips, one region
    rows = [{"point_id": f"{s}{k}", "chip_id": f"{s}{k}", "region": "eu", "item_id": s, "row_off": k,
             "col_off": 0, "status": "ok"} for s, n in sizes.items() for k in range(n)]
    rows += [{"point_id": "z0", "chip_id": "z0", "region": "af", "item_id": "a", "row_off": 0, "col_off": 0,
              "status": "ok"},
             {"point_id": "x", "chip_id": "x", "region": "eu", "item_id": "a", "row_off": 0, "col_off": 0,
              "status": "skipped"}]
    out = P.assign_chunks(pd.DataFrame(rows), chunk_size=5)
    eu = out[out["region"] == "eu"]
    chunks = eu.groupby("chunk")["item_id"].apply(lambda s: "".join(s)).to_dict()
    assert chunks == {0: "aaa", 1: "bbbb", 2: "cc", 3: "ddddd", 4: "dddde"}
    assert (eu.groupby("chunk").size() <= 5).all()
    assert out.loc[out["region"] == "af", "chunk"].tolist() == [0] and "x" not in set(out["chip_id"])
    # Deterministic, and every kept chip in exactly one chunk.
    again = P.assign_chunks(pd.DataFrame(rows).sample(frac=1, random_state=1), chunk_size=5)
    assert again.set_index("chip_id")["chunk"].to_dict() == out.set_index("chip_id")["chunk"].to_dict()
    # Tasks carry only their chunk, and start largest first (scenes, then chips), so the last
    # wave of a job is the short chunks.
    tasks = P.chunk_tasks(out, {s: json.dumps({"id": s}) for s in sizes})
    assert [(t["region"], t["chunk"]) for t in tasks] == [("eu", 4), ("eu", 3), ("eu", 1), ("eu", 0), ("eu", 2),
                                                          ("af", 0)]
    first = tasks[0]
    assert sorted(json.loads(first["items"])) == ["d", "e"] and len(pickle.loads(first["rows"])) == 5
