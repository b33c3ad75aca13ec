"""Land cover from a raster or a STAC collection: points, chip fractions, mosaics, config.

Fixtures are made here: small GeoTIFFs in EPSG:4326 (WorldCover-like tiles of 0.0001° pixels)
and in UTM, and an ItemCollection of STAC items pointing at them.
"""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform as warp_transform

from pw_ray.config import ChipSpec, ConfigError, parse_config
from pw_ray.ingest import chips as C
from pw_ray.ingest.landcover import (
    WORLDCOVER_CLASSES,
    WORLDCOVER_CODES,
    RasterLandcover,
    StacLandcover,
    landcover_source,
)
from tests.conftest import TINY_CONFIG

TREE, WATER, CROP, BUILT = (WORLDCOVER_CODES[c] for c in ("tree", "water", "crop", "built"))
PX = 0.0001  # degrees per pixel of the 4326 tiles (WorldCover: 1/12000°)
UTM32 = 32632  # lon 6°–12° E
K = len(WORLDCOVER_CODES)


def _col(name: str) -> int:
    return WORLDCOVER_CLASSES.index(name)


def _tif(path, array, crs, transform, nodata=0):
    with rasterio.open(path, "w", driver="GTiff", width=array.shape[1], height=array.shape[0], count=1,
                       dtype="uint8", crs=crs, transform=transform, nodata=nodata, tiled=True,
                       blockxsize=128, blockysize=128) as ds:
        ds.write(array.astype(np.uint8), 1)
    return str(path)


def _tile(path, west, north, code, n=200):
    """A uniform ``n`` × ``n`` tile of ``code`` in EPSG:4326 from (west, north)."""
    return _tif(path, np.full((n, n), code), "EPSG:4326", from_origin(west, north, PX, PX))


def _item(iid, href, west, south, east, north, dt="2021-01-01T00:00:00Z", asset="map"):
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    return {"type": "Feature", "stac_version": "1.0.0", "id": iid, "collection": "worldcover",
            "bbox": [west, south, east, north], "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"datetime": dt}, "links": [], "assets": {asset: {"href": href}}}


def _grid_over(lon, lat, size_px=64, res=10.0) -> tuple[C.SceneGrid, tuple[int, int]]:
    """A UTM 32N grid with the chip window (0, 0) of ``size_px`` centred on (lon, lat)."""
    (x,), (y,) = warp_transform("EPSG:4326", f"EPSG:{UTM32}", [lon], [lat])
    half = size_px * res / 2
    return C.SceneGrid(UTM32, x - half, y + half, 4 * size_px, 4 * size_px, res), (0, 0)


def _centres_lonlat(grid: C.SceneGrid, win, size_px):
    r, c = np.mgrid[0:size_px, 0:size_px]
    xs = grid.x0 + (win[1] + c + 0.5) * grid.res
    ys = grid.y0 - (win[0] + r + 0.5) * grid.res
    lon, lat = warp_transform(f"EPSG:{grid.epsg}", "EPSG:4326", xs.ravel().tolist(), ys.ravel().tolist())
    return np.array(lon).reshape(size_px, size_px), np.array(lat).reshape(size_px, size_px)


@pytest.fixture
def two_tiles(tmp_path):
    """Tree west of 7.00° E, water east of it (45.00°–45.02° N), and an ItemCollection of both."""
    west = _tile(tmp_path / "W.tif", 6.98, 45.02, TREE)
    east = _tile(tmp_path / "E.tif", 7.00, 45.02, WATER)
    items = [_item("wc-E", east, 7.00, 45.00, 7.02, 45.02), _item("wc-W", west, 6.98, 45.00, 7.00, 45.02)]
    coll = tmp_path / "items.json"
    coll.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return {"west": west, "east": east, "items": items, "collection": str(coll)}


# --------------------------------------------------------------------------- points

def test_points_are_sampled_pixel_by_pixel_from_a_4326_raster(tmp_path, monkeypatch):
    codes = np.full((100, 100), CROP)
    codes[:50, :] = BUILT  # north half built-up
    codes[90:, 90:] = 0  # a no-data corner
    src = RasterLandcover(href=_tif(tmp_path / "lc.tif", codes, "EPSG:4326", from_origin(10.0, 50.0, PX, PX)))
    reads = []
    real_read = rasterio.io.DatasetReader.read
    monkeypatch.setattr(rasterio.io.DatasetReader, "read",
                        lambda self, *a, **kw: reads.append(kw.get("window")) or real_read(self, *a, **kw))
    lons = np.array([10.0025, 10.0025, 10.0095, 11.0, 9.9])
    lats = np.array([49.9975, 49.9925, 49.9905, 49.995, 49.995])
    got = src.classes_at(lons, lats)
    assert got.tolist() == ["built", "crop", None, None, None]  # no data, east of it, west of it
    assert len(reads) == 3 and all((w.height, w.width) == (1, 1) for w in reads)  # never the whole raster


def test_points_are_sampled_from_a_utm_raster(tmp_path):
    lon, lat = 9.0, 45.0
    (x,), (y,) = warp_transform("EPSG:4326", f"EPSG:{UTM32}", [lon], [lat])
    codes = np.full((40, 40), TREE)
    codes[:, 20:] = WATER  # east half
    href = _tif(tmp_path / "utm.tif", codes, f"EPSG:{UTM32}", from_origin(x - 200, y + 200, 10, 10))
    d = 150 / 111_000  # 150 m in degrees of latitude, ~ in longitude at 45° too
    got = RasterLandcover(href=href).classes_at(np.array([lon - d, lon + d, lon, 120.0]),
                                                np.array([lat, lat, lat + 1.0, -30.0]))
    assert got.tolist() == ["tree", "water", None, None]  # far away in another zone: no data, no error


def test_points_off_every_item_of_a_collection_are_unknown(two_tiles):
    src = StacLandcover(collection="worldcover", url=two_tiles["collection"], kind="static")
    got = src.classes_at(np.array([6.99, 7.01, 7.01, 20.0]), np.array([45.01, 45.01, 45.03, 0.0]))
    assert got.tolist() == ["tree", "water", None, None]


# --------------------------------------------------------------------------- chips

def test_a_chip_across_two_4326_tiles_mixes_both(two_tiles):
    grid, win = _grid_over(7.0, 45.01)
    src = StacLandcover(collection="worldcover", url=two_tiles["collection"], kind="static")
    frac = src.fractions(grid, [win], 64)
    lon, _ = _centres_lonlat(grid, win, 64)
    want_tree = (lon < 7.0).mean()  # each 10 m pixel takes the tile its centre falls in
    assert 0.3 < want_tree < 0.7
    assert frac.shape == (1, K) and frac.dtype == np.float32
    assert frac[0, _col("tree")] == pytest.approx(want_tree, abs=1 / 64**2)
    assert frac[0, _col("water")] == pytest.approx(1 - want_tree, abs=1 / 64**2)
    assert frac[0].sum() == pytest.approx(1.0)
    # One raster alone (a path, not a collection) gives only its side.
    only_west = RasterLandcover(href=two_tiles["west"]).fractions(grid, [win], 64)
    assert only_west[0, _col("tree")] == pytest.approx(want_tree, abs=1 / 64**2)
    assert only_west[0, _col("water")] == 0


def test_chips_off_every_raster_have_zero_fractions(two_tiles):
    grid, win = _grid_over(8.0, 46.0)
    src = StacLandcover(collection="worldcover", url=two_tiles["collection"], kind="static")
    assert not src.fractions(grid, [win], 32).any()
    assert not RasterLandcover(href=two_tiles["west"]).fractions(grid, [win], 32).any()


def test_overlapping_items_mosaic_newest_first(two_tiles, tmp_path):
    crop = _tile(tmp_path / "C.tif", 6.98, 45.02, CROP)  # over the west tile, a year later
    items = two_tiles["items"] + [_item("wc-C", crop, 6.98, 45.00, 7.00, 45.02, dt="2022-01-01T00:00:00Z")]
    path = tmp_path / "three.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    src = StacLandcover(collection="worldcover", url=str(path), kind="static")
    grid, win = _grid_over(7.0, 45.01)
    frac = src.fractions(grid, [win], 64)[0]
    assert frac[_col("crop")] > 0.3 and frac[_col("tree")] == 0 and frac[_col("water")] > 0.3
    assert src.classes_at(np.array([6.99]), np.array([45.01])).tolist() == ["crop"]
    assert [it["id"] for it in src.items_for((6.99, 45.0, 7.01, 45.02))] == ["wc-C", "wc-E", "wc-W"]


def test_on_the_scene_grid_fractions_equal_the_windowed_read(stac_archive):
    """The synthetic land cover shares its scene's grid: warping onto it must change nothing."""
    from pw_ray.ingest.catalogs import PlanetaryComputer
    from pw_ray.synthetic import LC_COLLECTION, load_items, load_landcover_items

    scenes = {it["id"]: it for it in load_items(stac_archive)}
    src = StacLandcover(collection=LC_COLLECTION, url=str(stac_archive.landcover_items_path), kind="static")
    rng = np.random.default_rng(0)
    for lc in load_landcover_items(stac_archive):
        scene = scenes[lc["properties"]["synthetic:scene"]]
        grid = C.scene_grid(scene, PlanetaryComputer())
        wins = [(0, 0), (grid.height - 32, grid.width - 32)] + [
            (int(r), int(c)) for r, c in rng.integers(0, grid.height - 32, size=(10, 2))]
        got = src.fractions(grid, wins, 32)
        with rasterio.open(lc["assets"]["map"]["href"]) as ds:  # the plain pixel count
            full = ds.read(1)
        for k, (r, c) in enumerate(wins):
            chip = full[r:r + 32, c:c + 32]
            np.testing.assert_array_equal(got[k], [(chip == code).mean() for code in src.codes])


def test_synthetic_points_get_their_scene_pixel(stac_archive):
    from pw_ray.synthetic import LC_COLLECTION, load_landcover_items

    src = StacLandcover(collection=LC_COLLECTION, url=str(stac_archive.landcover_items_path), kind="static")
    lons, lats, want = [], [], []
    for lc in load_landcover_items(stac_archive):
        with rasterio.open(lc["assets"]["map"]["href"]) as ds:
            band = ds.read(1)
            for r, c in [(5, 7), (100, 150), (180, 20)]:
                x, y = ds.xy(r, c)
                (lon,), (lat,) = warp_transform(ds.crs, "EPSG:4326", [x], [y])
                lons.append(lon)
                lats.append(lat)
                want.append(WORLDCOVER_CLASSES[list(src.codes).index(int(band[r, c]))])
    assert src.classes_at(np.array(lons), np.array(lats)).tolist() == want


# --------------------------------------------------------------------------- STAC collection mechanics

def test_item_lookups_are_cached_per_cell(two_tiles, monkeypatch):
    """An API source searches once per cell, not once per chip or point."""
    items = two_tiles["items"]
    searched = []

    def fake_search(self, box):
        searched.append(box)
        return [it for it in items if it["bbox"][0] <= box[2] and box[0] <= it["bbox"][2]
                and it["bbox"][1] <= box[3] and box[1] <= it["bbox"][3]]

    monkeypatch.setattr(StacLandcover, "_api_items", fake_search)
    src = StacLandcover(collection="worldcover", url="http://127.0.0.1:1/stac", kind="api")
    grid, _ = _grid_over(7.0, 45.01)
    wins = [(r, c) for r in range(0, 96, 16) for c in range(0, 96, 16)]
    src.fractions(grid, wins, 32)
    src.classes_at(np.full(20, 6.995), np.linspace(45.001, 45.019, 20))
    assert searched == [(6.0, 45.0, 7.0, 46.0), (7.0, 45.0, 8.0, 46.0)]


def test_the_source_pickles_without_its_caches(two_tiles):
    src = StacLandcover(collection="worldcover", url=two_tiles["collection"], kind="static")
    grid, win = _grid_over(7.0, 45.01)
    before = src.fractions(grid, [win], 32)
    assert src._cells and src._static
    clone = pickle.loads(pickle.dumps(src))
    assert clone._cells == {} and clone._static is None and clone == src
    np.testing.assert_array_equal(clone.fractions(grid, [win], 32), before)


def test_hrefs_are_signed_just_before_each_read(two_tiles, tmp_path, monkeypatch):
    import planetary_computer

    blob = {"https://acct.blob.core.windows.net/wc/W.tif": two_tiles["west"],
            "https://acct.blob.core.windows.net/wc/E.tif": two_tiles["east"]}
    items = [_item("wc-W", "https://acct.blob.core.windows.net/wc/W.tif", 6.98, 45.00, 7.00, 45.02),
             _item("wc-E", "https://acct.blob.core.windows.net/wc/E.tif", 7.00, 45.00, 7.02, 45.02)]
    path = tmp_path / "blob.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    signed = []
    monkeypatch.setattr(planetary_computer, "sign_url", lambda href: signed.append(href) or blob[href])
    src = StacLandcover(collection="worldcover", url=str(path), kind="static", catalog="planetary-computer")
    grid, win = _grid_over(7.0, 45.01)
    assert src.fractions(grid, [win], 32)[0].sum() == pytest.approx(1.0)
    src.fractions(grid, [win], 32)
    assert sorted(signed) == sorted(list(blob) * 2)  # every read signs again: tokens expire


def test_an_item_without_the_asset_names_it(two_tiles, tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [_item("wc-X", two_tiles["west"], 6.98, 45.0, 7.0, 45.02, asset="data")]}))
    src = StacLandcover(collection="worldcover", url=str(path), kind="static", asset="map")
    with pytest.raises(KeyError, match="'wc-X'.*no asset 'map'.*data"):
        src.classes_at(np.array([6.99]), np.array([45.01]))


def test_chips_of_a_scene_get_fractions_from_a_user_raster(stac_archive, tmp_path):
    """A raster off the scene's grid (EPSG:4326) labels chips too (it used to leave them empty)."""
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.catalogs import PlanetaryComputer
    from pw_ray.ingest.pipeline import write_chunk
    from pw_ray.synthetic import load_items

    item = load_items(stac_archive)[0]
    w, s, e, n = item["bbox"]
    href = _tif(tmp_path / "wc.tif", np.full((200, 200), BUILT), "EPSG:4326",
                from_origin(w - 0.01, n + 0.01, (e - w + 0.02) / 200, (n - s + 0.02) / 200))
    rows = pd.DataFrame([dict(point_id=f"p{k}", chip_id=f"p{k}", set="u", lon=0.0, lat=0.0, region="eu",
                              biome="unknown", landcover="unknown", item_id=item["id"], collection="c",
                              datetime="", epsg=0, row_off=r, col_off=c, baseline="")
                         for k, (r, c) in enumerate([(0, 0), (64, 96)])])
    spec = ChipSpec(size_px=32, chunk_size=8, webdataset=False)
    res = write_chunk(rows, {item["id"]: item}, str(tmp_path / "root"), "u", "eu", 0, PlanetaryComputer(), spec,
                      RasterLandcover(href=href))
    assert res["n"] == 2
    t = S.read_set(str(tmp_path / "root"), "u", columns=["landcover", "lc_fractions"]).to_pandas()
    assert t["landcover"].tolist() == ["built", "built"]
    want = np.zeros(K, np.float32)
    want[_col("built")] = 1.0
    np.testing.assert_array_equal(np.stack(t["lc_fractions"]), [want, want])


# --------------------------------------------------------------------------- config

def _stac(**stac):
    d = dict(TINY_CONFIG, root="/tmp/unused")
    d["stac"] = dict(TINY_CONFIG["stac"], **stac)
    return parse_config(d).stac


def test_config_takes_a_raster_or_a_collection():
    assert _stac(landcover="s3://bucket/worldcover.vrt").landcover == "s3://bucket/worldcover.vrt"
    api = _stac(kind="api", url="https://planetarycomputer.microsoft.com/api/stac/v1",
                landcover={"collection": "esa-worldcover", "datetime": "2021-01-01/2021-12-31"})
    src = landcover_source(api)
    assert isinstance(src, StacLandcover)
    assert (src.collection, src.asset, src.url, src.kind, src.catalog, src.datetime) == (
        "esa-worldcover", "map", "https://planetarycomputer.microsoft.com/api/stac/v1", "api", "planetary-computer",
        "2021-01-01/2021-12-31")
    other = landcover_source(_stac(kind="api", url="https://earth-search.aws.element84.com/v1", catalog="earth-search",
                                   landcover={"collection": "wc", "url": "/data/wc/items.ndjson"}))
    assert (other.url, other.kind, other.catalog) == ("/data/wc/items.ndjson", "static", "earth-search")
    assert isinstance(landcover_source(_stac(landcover="/data/wc.tif")), RasterLandcover)
    assert landcover_source(_stac(kind="static", url="/data/items.json")) is None


def test_synthetic_default_is_the_archive_collection():
    from pw_ray.synthetic import LC_COLLECTION

    src = landcover_source(_stac(), synthetic_items="/archive/synthetic-landcover/items.ndjson")
    assert isinstance(src, StacLandcover)
    assert (src.collection, src.asset, src.kind, src.url) == (
        LC_COLLECTION, "map", "static", "/archive/synthetic-landcover/items.ndjson")


@pytest.mark.parametrize("value, message", [
    ({"colection": "esa-worldcover"}, r"stac\.landcover: 'collection' is required; 'colection' is not a field"),
    ({"collection": "esa-worldcover", "kind": "ftp"}, r"stac\.landcover: 'kind': Input should be 'api' or 'static'"),
    ({"collection": ""}, r"stac\.landcover: 'collection': String should have at least 1 character"),
    ("esa-worldcover", r"stac\.landcover: 'esa-worldcover' is neither a raster path nor a URI; .*"
                       r"landcover: \{collection: esa-worldcover\}"),
    ("", r"stac\.landcover: empty"),
    (42, r"stac\.landcover: must be a raster path/URI or a mapping"),
])
def test_config_errors_name_the_landcover_field(value, message):
    with pytest.raises(ConfigError, match=message):
        _stac(landcover=value)


def _utm_raster(tmp_path, name, grid: C.SceneGrid, d_row: float, d_col: float, shape, nodata=255, res=None,
                seed=0):
    """A UTM 32N raster of random classes (and some ``nodata``) whose origin is ``d_row``, ``d_col``
    pixels of ``grid`` from the grid's origin."""
    res = res or grid.res
    rng = np.random.default_rng(seed)
    classes = np.array([TREE, WATER, CROP, BUILT, nodata])
    arr = classes[rng.integers(0, len(classes), size=shape)]
    arr[: shape[0] // 3, : shape[1] // 3] = CROP  # a block, so nearby chips differ
    t = from_origin(grid.x0 + d_col * grid.res, grid.y0 - d_row * grid.res, res, res)
    return _tif(tmp_path / name, arr, f"EPSG:{UTM32}", t, nodata=nodata)


def test_grid_offset_only_for_rasters_on_the_grid(tmp_path):
    from rasterio.transform import Affine

    from pw_ray.ingest.landcover import grid_offset

    grid, _ = _grid_over(7.0, 45.0, 32)
    tr = Affine(grid.res, 0, grid.x0, 0, -grid.res, grid.y0)
    crs = rasterio.crs.CRS.from_epsg(grid.epsg)
    cases = {
        "whole": (_utm_raster(tmp_path, "a.tif", grid, -3, 5, (40, 40)), (3, -5)),
        "half": (_utm_raster(tmp_path, "b.tif", grid, 0.5, 0, (40, 40)), None),
        "20m": (_utm_raster(tmp_path, "c.tif", grid, 0, 0, (40, 40), res=20.0), None),
        "4326": (_tile(tmp_path / "d.tif", 6.99, 45.01, TREE), None),
    }
    for what, (path, want) in cases.items():
        with rasterio.open(path) as ds:
            assert grid_offset(ds, crs, tr) == want, what


def test_a_raster_on_the_scene_grid_gives_the_warped_fractions_without_warping(tmp_path, monkeypatch):
    """A land-cover raster in the scene's CRS and pixel grid (whole-pixel offset, partly off the
    chips, with a no-data value that is not 0) is read with plain windows; the fractions are
    exactly those of warping it."""
    from pw_ray.ingest import landcover as L

    grid, _ = _grid_over(7.0, 45.0, 32)
    path = _utm_raster(tmp_path, "lc.tif", grid, 7, -5, (100, 90))
    rng = np.random.default_rng(1)
    wins = [(0, 0), (90, 80), (96, 96), (5, 40), (5, 60)] + [
        (int(r), int(c)) for r, c in rng.integers(0, grid.height - 32, size=(12, 2))]
    src = RasterLandcover(href=path)
    calls = []
    real = L.grid_offset
    monkeypatch.setattr(L, "grid_offset", lambda *a: calls.append(real(*a)) or calls[-1])
    direct = src.fractions(grid, wins, 32)
    assert calls and calls[0] == (-7, 5)
    monkeypatch.setattr(L, "grid_offset", lambda *a: None)  # force GDAL's warper
    warped = src.fractions(grid, wins, 32)
    np.testing.assert_array_equal(direct, warped)
    assert direct[0].sum() < 1 and direct[2].sum() == 0  # partly off the raster; wholly off it
    assert direct[3, _col("crop")] > direct[4, _col("crop")]


def test_reads_on_the_grid_give_zero_off_the_raster_and_at_its_nodata(tmp_path):
    """As the warper does (destination no-data 0), so a mosaic fills those pixels from the next tile."""
    from pw_ray.ingest.landcover import _read_on_grid

    grid, _ = _grid_over(7.0, 45.0, 32)
    with rasterio.open(_utm_raster(tmp_path, "lc.tif", grid, 0, 0, (20, 30))) as ds:
        full = ds.read(1)
        got = _read_on_grid(ds, -4, 25, 10, 10)
    assert (full == 255).any() and got.dtype == np.uint8
    want = np.zeros((10, 10), np.uint8)
    want[4:, :5] = np.where(full[0:6, 25:30] == 255, 0, full[0:6, 25:30])
    np.testing.assert_array_equal(got, want)
