"""Earth Search items in their real layouts (../shared/fixtures/stac/) ingest correctly.

Each fixture item's hrefs are rewritten to small local COGs made with the item's own
``proj:epsg``, ``proj:transform`` (same origin and pixel sizes, shape scaled down) and band set,
filled with known DNs. The offset rule per collection: ``sentinel-2-l2a`` with
``earthsearch:boa_offset_applied: true`` → 0; Collection 1 (``raster:bands`` offset −0.1,
scale 0.0001) → −1000.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform as warp

from pw_ray import bands as B
from pw_ray.config import ChipSpec
from pw_ray.ingest import shards as S
from pw_ray.ingest.catalogs import EarthSearch, _EARTH_SEARCH_KEYS
from pw_ray.ingest.pipeline import assign_chunks, index_points, write_chunk
from pw_ray.ingest.search import StaticSearch

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "stac"
SIDE_10M = 192  # scaled-down scene side at 10 m


def _dn(band: str) -> int:
    return 3000 + 100 * sorted(_EARTH_SEARCH_KEYS).index(band)


def _localise(item: dict, out: Path) -> dict:
    """A copy of ``item`` whose band assets are local COGs with the same grid origin and pixel size."""
    item = copy.deepcopy(item)
    epsg = item["properties"]["proj:epsg"]
    for band, key in _EARTH_SEARCH_KEYS.items():
        asset = item["assets"][key]
        tr = asset["proj:transform"]
        res = tr[0]
        side = int(SIDE_10M * 10 / res)
        path = out / f"{item['id']}-{key}.tif"
        dtype = "uint8" if band == B.SCL else "uint16"
        value = 4 if band == B.SCL else _dn(band)  # SCL 4: vegetation (clear)
        with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1, dtype=dtype,
                           crs=f"EPSG:{epsg}", transform=Affine(tr[0], tr[1], tr[2], tr[3], tr[4], tr[5]),
                           tiled=True, blockxsize=16, blockysize=16, compress="deflate") as ds:
            ds.write(np.full((1, side, side), value, dtype=dtype))
        asset["href"] = str(path)
        asset["proj:shape"] = [side, side]
    # The footprint shrinks with the grid: a square around the scaled-down scene.
    tr = item["assets"]["blue"]["proj:transform"]
    xs = [tr[2], tr[2] + SIDE_10M * 10]
    ys = [tr[5] - SIDE_10M * 10, tr[5]]
    lons, lats = warp(f"EPSG:{epsg}", "EPSG:4326", [xs[0], xs[1], xs[1], xs[0]], [ys[0], ys[0], ys[1], ys[1]])
    item["geometry"] = {"type": "Polygon", "coordinates": [[*zip(lons, lats), (lons[0], lats[0])]]}
    item["properties"]["eo:cloud_cover"] = 1.0
    return item


@pytest.mark.parametrize("fixture, expected_offset", [
    ("earthsearch-sentinel-2-l2a.json", 0),
    ("earthsearch-sentinel-2-c1-l2a.json", -1000),
])
def test_earth_search_items_ingest_with_the_offset_rule_of_their_collection(fixture, expected_offset, tmp_path):
    if not (FIXTURES / fixture).exists():
        pytest.skip(f"{FIXTURES / fixture} not present")
    raw = json.loads((FIXTURES / fixture).read_text())["features"][0]
    if fixture.endswith("-l2a.json") and "c1" not in fixture:
        assert raw["properties"]["earthsearch:boa_offset_applied"] is True
    item = _localise(raw, tmp_path)
    epsg = item["properties"]["proj:epsg"]
    tr = item["assets"]["blue"]["proj:transform"]
    lon, lat = warp(f"EPSG:{epsg}", "EPSG:4326", [tr[2] + 960], [tr[5] - 960])
    points = pd.DataFrame({"point_id": ["es-000000"], "set": ["es"], "lon": lon, "lat": lat, "region": ["sa"],
                           "biome": ["unknown"], "landcover": ["unknown"]})
    spec = ChipSpec(size_px=32, max_cloud_fraction=0.5, max_nodata_fraction=0.5, chunk_size=8)
    search = StaticSearch([item], collection=None, datetime_range="2025-01-01/2025-12-31",
                          max_cloud_cover=50, max_items=3)
    index = index_points(points, search, EarthSearch(), spec)
    assert index["status"].tolist() == ["ok"], index["reason"].tolist()
    items = {item["id"]: item}
    chunked = assign_chunks(index.drop(columns=["items_json"]), spec.chunk_size)
    res = write_chunk(chunked, items, str(tmp_path / "root"), "es", "sa", 0, EarthSearch(), spec)
    assert res["written"] and res["n"] == 1 and json.loads(res["failed"]) == []
    t = S.read_set(str(tmp_path / "root"), "es")
    px = S.read_pixels(t)
    assert px.shape == (1, len(spec.bands), 32, 32)
    for ci, band in enumerate(spec.bands):  # 10, 20 and 60 m bands, all on the 10 m grid
        assert (px[0, ci] == _dn(band) + expected_offset).all(), band
    row = t.drop_columns(["pixels"]).to_pylist()[0]
    assert row["offset_applied"] == expected_offset
    assert row["baseline"] == raw["properties"]["s2:processing_baseline"]
    assert row["epsg"] == epsg and row["collection"] == raw["collection"]
    assert row["cloud_fraction"] == 0.0 and row["nodata_fraction"] == 0.0
