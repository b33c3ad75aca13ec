"""Point planning knobs: chips.min_spacing_m, stac.seasons, stac.biome_path / stac.landcover."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin

from pw_ray import storage
from pw_ray.config import ChipSpec, parse_config
from pw_ray.ingest import shards as S
from pw_ray.ingest.search import StaticSearch, season_ranges
from tests.conftest import TINY_CONFIG


def _cfg(root, stac=None, chips=None, size=20):
    d = dict(TINY_CONFIG, root=str(root), tasks=[])
    d["pretrain_sets"] = [{"name": "pts", "region": "global", "size": size, "seed": 4}]
    d["stac"] = dict(TINY_CONFIG["stac"], **(stac or {}))
    d["chips"] = dict(TINY_CONFIG["chips"], **(chips or {}))
    return parse_config(d)


def _haversine_m(lon1, lat1, lon2, lat2):
    lon1, lat1, lon2, lat2 = map(np.radians, (lon1, lat1, lon2, lat2))
    a = np.sin((lat2 - lat1) / 2) ** 2 + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6_371_008.8 * np.arcsin(np.sqrt(a))


def test_min_spacing_from_the_config_reaches_the_plan(tmp_path):
    from pw_ray import experiment as E

    cfg = _cfg(tmp_path / "root", chips={"min_spacing_m": 300.0}, size=30)
    E.plan(cfg)
    pts = storage.read_table(storage.join(cfg.root, "points", "pts.parquet")).to_pandas()
    lon, lat = pts["lon"].to_numpy(), pts["lat"].to_numpy()
    d = _haversine_m(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 300.0 * (1 - 1e-6)
    # Without it, the tiny archive's six small scenes give points closer than that.
    cfg0 = _cfg(tmp_path / "root0", size=30)
    E.plan(cfg0)
    p0 = storage.read_table(storage.join(cfg0.root, "points", "pts.parquet")).to_pandas()
    d0 = _haversine_m(p0["lon"].to_numpy()[:, None], p0["lat"].to_numpy()[:, None],
                      p0["lon"].to_numpy()[None, :], p0["lat"].to_numpy()[None, :])
    np.fill_diagonal(d0, np.inf)
    assert d0.min() < 300.0


def test_biome_file_and_landcover_raster_are_configurable(tmp_path):
    from pw_ray import experiment as E
    from pw_ray.synthetic import WORLDCOVER_CODES

    biomes = tmp_path / "biomes.geojson"
    biomes.write_text(json.dumps({"type": "FeatureCollection", "features": [{
        "type": "Feature", "properties": {"biome": "Everywhere"},
        "geometry": {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]},
    }]}))
    lc = tmp_path / "worldcover.tif"
    with rasterio.open(lc, "w", driver="GTiff", width=360, height=180, count=1, dtype="uint8", crs="EPSG:4326",
                       transform=from_origin(-180, 90, 1, 1)) as ds:
        ds.write(np.full((1, 180, 360), WORLDCOVER_CODES["water"] if "water" in WORLDCOVER_CODES
                         else list(WORLDCOVER_CODES.values())[-3], dtype="uint8"))
    want = "water" if "water" in WORLDCOVER_CODES else list(WORLDCOVER_CODES)[-3]
    cfg = _cfg(tmp_path / "root", stac={"biome_path": str(biomes), "landcover": str(lc)})
    E.plan(cfg)
    pts = storage.read_table(storage.join(cfg.root, "points", "pts.parquet")).to_pandas()
    assert set(pts["biome"]) == {"Everywhere"}
    assert set(pts["landcover"]) == {want}
    # The synthetic archive's own layers without the overrides.
    cfg0 = _cfg(tmp_path / "root0")
    E.plan(cfg0)
    p0 = storage.read_table(storage.join(cfg0.root, "points", "pts.parquet")).to_pandas()
    assert "Everywhere" not in set(p0["biome"]) and len(set(p0["landcover"])) >= 1


def test_season_ranges_split_the_date_range():
    r = season_ranges("2023-01-01/2023-12-31", 4)
    assert len(r) == 4 and r[0].startswith("2023-01-01T00:00:00Z/") and r[-1].endswith("/2023-12-31T23:59:59Z")
    assert [a.split("/")[1] for a in r[:-1]] == [b.split("/")[0] for b in r[1:]]
    assert season_ranges("2023-01-01/2023-12-31", 1) == ["2023-01-01/2023-12-31"]
    with pytest.raises(ValueError):
        season_ranges("2023-01-01/..", 2)


def _item(i, dt, cc):
    return {"type": "Feature", "id": f"s{i}", "collection": "c", "properties": {"datetime": dt, "eo:cloud_cover": cc},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}, "assets": {}}


def test_static_search_takes_the_best_scene_per_season():
    items = [_item(0, "2023-02-01T00:00:00Z", 5), _item(1, "2023-03-01T00:00:00Z", 1),
             _item(2, "2023-08-01T00:00:00Z", 9), _item(3, "2023-11-01T00:00:00Z", 3)]
    s = StaticSearch(items, collection=None, datetime_range="2023-01-01/2023-12-31", max_cloud_cover=50,
                     max_items=5, seasons=2)
    assert [it["id"] for it in s.candidates(0.5, 0.5, season=0)] == ["s1", "s0"]
    assert [it["id"] for it in s.candidates(0.5, 0.5, season=1)] == ["s3", "s2"]
    assert [it["id"] for it in s.candidates(0.5, 0.5)] == ["s1", "s3", "s0", "s2"]


def test_several_seasons_give_one_chip_per_season_per_point(stac_archive, tmp_path):
    from shapely.geometry import shape

    from pw_ray.ingest.catalogs import PlanetaryComputer
    from pw_ray.ingest.pipeline import assign_chunks, index_points, write_chunk
    from pw_ray.synthetic import load_items

    items = load_items(stac_archive)
    base = items[0]
    # The same scene twice more, dated in other halves of the year (same pixels, other ids).
    twins = []
    for k, dt in enumerate(["2023-02-01T10:00:00Z", "2023-09-01T10:00:00Z"]):
        it = json.loads(json.dumps(base))
        it["id"] = f"{base['id']}-t{k}"
        it["properties"]["datetime"] = dt
        twins.append(it)
    c = shape(base["geometry"]).centroid
    points = pd.DataFrame({"point_id": ["p-000000"], "set": ["p"], "lon": [c.x], "lat": [c.y], "region": ["af"],
                           "biome": ["unknown"], "landcover": ["unknown"]})
    search = StaticSearch(twins, collection=None, datetime_range="2023-01-01/2023-12-31", max_cloud_cover=100,
                          max_items=3, seasons=2)
    spec = ChipSpec(size_px=32, max_cloud_fraction=1.0, max_nodata_fraction=1.0, chunk_size=8)
    index = index_points(points, search, PlanetaryComputer(), spec)
    assert index["chip_id"].tolist() == ["p-000000-s0", "p-000000-s1"]
    assert index["item_id"].tolist() == [twins[0]["id"], twins[1]["id"]]
    chunked = assign_chunks(index.drop(columns=["items_json"]), spec.chunk_size)
    res = write_chunk(chunked, {t["id"]: t for t in twins}, str(tmp_path / "root"), "p", "af", 0,
                      PlanetaryComputer(), spec)
    assert res["n"] == 2
    t = S.read_set(str(tmp_path / "root"), "p")
    assert t.column("chip_id").to_pylist() == ["p-000000-s0", "p-000000-s1"]
    assert t.column("point_id").to_pylist() == ["p-000000"] * 2
