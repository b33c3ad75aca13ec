"""The synthetic Sentinel-2 L2A archive: layout, STAC fields, pixels, determinism, signal."""

from __future__ import annotations

import json
import re

import numpy as np
import pystac
import pytest
import rasterio
from shapely.geometry import shape
from shapely.ops import unary_union

from pw_ray import bands as B
from pw_ray.config import CONTINENTS, SyntheticArchive
from pw_ray.synthetic import (
    LANDCOVER_CLASSES,
    WORLDCOVER_CODES,
    build_archive,
    load_archive,
    load_items,
    load_landcover_items,
    rewrite_hrefs,
)

SPEC = SyntheticArchive(seed=0, scenes_per_region=2, scene_px=192, cloudy_fraction=0.5)
TINY = SyntheticArchive(seed=3, scenes_per_region=1, scene_px=96, cloudy_fraction=0.5)


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    return build_archive(tmp_path_factory.mktemp("archive"), SPEC)


@pytest.fixture(scope="module")
def items(archive):
    return load_items(archive)


def _read(href: str) -> np.ndarray:
    with rasterio.open(href) as src:
        return src.read(1)


def _offset(item: dict) -> int:
    return 1000 if item["properties"]["s2:processing_baseline"] >= "04.00" else 0


def _clear_scenes(items: list[dict]) -> list[dict]:
    return [it for it in items
            if it["properties"]["eo:cloud_cover"] == 0 and it["properties"]["s2:cloud_shadow_percentage"] == 0]


def _landcover_by_scene(archive) -> dict[str, np.ndarray]:
    return {lc["properties"]["synthetic:scene"]: _read(lc["assets"]["map"]["href"])
            for lc in load_landcover_items(archive)}


def test_every_region_gets_the_requested_number_of_scenes(archive, items):
    regions = [it["properties"]["synthetic:region"] for it in items]
    assert archive.n_items == len(items) == 12
    assert {r: regions.count(r) for r in CONTINENTS} == {r: 2 for r in CONTINENTS}


def test_items_have_all_assets_with_native_grid_shapes(items):
    expected = {b: [192 * 10 // B.resolution(b)] * 2 for b in B.ALL_BANDS}
    for it in items:
        assert set(it["assets"]) == set(B.ALL_BANDS)
        assert len(it["assets"]) == 13
        assert {k: a["proj:shape"] for k, a in it["assets"].items()} == expected
        assert {k: a["gsd"] for k, a in it["assets"].items()} == {b: float(B.resolution(b)) for b in B.ALL_BANDS}


def test_grids_are_utm_and_aligned_on_60_m(items):
    for it in items:
        epsg = it["properties"]["proj:epsg"]
        lon = (it["bbox"][0] + it["bbox"][2]) / 2
        lat = (it["bbox"][1] + it["bbox"][3]) / 2
        assert epsg == (32600 if lat >= 0 else 32700) + int((lon + 180) // 6) + 1
        origins = {tuple(a["proj:transform"][i] for i in (2, 5)) for a in it["assets"].values()}
        assert len(origins) == 1
        x0, y0 = origins.pop()
        assert x0 % 60 == 0 and y0 % 60 == 0


def test_band_assets_describe_their_band(items):
    asset = items[0]["assets"]["B08"]
    assert asset["type"] == "image/tiff; application=geotiff; profile=cloud-optimized"
    assert asset["roles"] == ["data"]
    assert asset["eo:bands"] == [{"name": "B08", "common_name": "nir", "description": "NIR",
                                  "center_wavelength": 0.842, "full_width_half_max": 0.145}]
    assert "https://stac-extensions.github.io/projection/v1.1.0/schema.json" in items[0]["stac_extensions"]


def test_cogs_are_tiled_with_the_items_crs_and_dtype(items):
    for it in items[:3]:
        for key, asset in it["assets"].items():
            with rasterio.open(asset["href"]) as src:
                assert src.profile["tiled"] is True
                assert src.crs.to_epsg() == it["properties"]["proj:epsg"]
                assert src.dtypes[0] == ("uint8" if key == B.SCL else "uint16")
                assert src.nodata == 0
                assert [src.height, src.width] == asset["proj:shape"]
                assert list(src.transform)[:6] == asset["proj:transform"]


def test_cogs_carry_overviews_down_to_160_m_averaged_and_scl_nearest(items):
    it = items[0]
    for key, levels in (("B04", [2, 4, 8, 16]), ("B05", [2, 4, 8]), ("B01", [2]), (B.SCL, [2, 4, 8])):
        with rasterio.open(it["assets"][key]["href"]) as src:
            assert src.overviews(1) == levels, key
    with rasterio.open(it["assets"]["B04"]["href"]) as src:
        full = src.read(1).astype(np.float64)
    with rasterio.open(it["assets"]["B04"]["href"], overview_level=1) as src:  # factor 4: 40 m
        ov = src.read(1).astype(np.float64)
    block_means = full.reshape(48, 4, 48, 4).mean(axis=(1, 3))
    valid = (full.reshape(48, 4, 48, 4) > 0).all(axis=(1, 3))  # blocks without no-data pixels
    assert np.abs(ov - block_means)[valid].max() <= 1.0
    with rasterio.open(it["assets"][B.SCL]["href"]) as src:
        classes = set(np.unique(src.read(1)).tolist())
    with rasterio.open(it["assets"][B.SCL]["href"], overview_level=2) as src:
        assert set(np.unique(src.read(1)).tolist()) <= classes  # nearest: no averaged class codes


def test_item_ids_are_unique_and_shaped_like_planetary_computers(items):
    pattern = re.compile(r"^S2[AB]_MSIL2A_2023\d{4}T\d{6}_R\d{3}_T\d{2}[C-X][A-Z]{2}_\d{8}T\d{6}$")
    ids = [it["id"] for it in items]
    assert len(set(ids)) == len(ids)
    assert all(pattern.match(i) for i in ids)
    for it in items:
        assert f"_T{it['properties']['s2:mgrs_tile']}_" in it["id"]
        assert it["id"][:3] == "S2" + it["properties"]["platform"][-1].upper()


def test_both_processing_baseline_eras_are_present(items):
    baselines = {it["properties"]["s2:processing_baseline"] for it in items}
    assert "05.09" in baselines
    assert baselines & {"03.01", "02.14"}


def test_baseline_04_scenes_carry_the_1000_dn_offset(items):
    modern = [it for it in items if _offset(it)]
    assert modern
    for it in modern:
        for key in ("B02", "B08", "B12"):
            dn = _read(it["assets"][key]["href"])
            assert dn[dn > 0].min() >= 1000


def test_older_baseline_scenes_have_no_offset(items):
    # Dark targets (vegetation in the blue, water in the NIR) sit well below 1000 DN without it.
    older = [it for it in items if not _offset(it)]
    assert older
    for it in older:
        dn = _read(it["assets"]["B02"]["href"])
        assert dn[dn > 0].min() < 1000


def test_cloud_cover_agrees_with_the_scl(items):
    cloudy = 0
    for it in items:
        scl = _read(it["assets"][B.SCL]["href"])
        valid = scl != B.SCL_NODATA
        clouds = np.isin(scl, (B.SCL_CLOUD_MEDIUM, B.SCL_CLOUD_HIGH, B.SCL_CIRRUS)) & valid
        cover = 100 * clouds.sum() / valid.sum()
        assert it["properties"]["eo:cloud_cover"] == pytest.approx(cover, abs=1.0)
        cloudy += cover > 0
    assert cloudy == round(SPEC.cloudy_fraction * len(items))


def test_cloudy_scenes_have_shadows_and_bright_flat_clouds(items):
    it = max(items, key=lambda i: i["properties"]["s2:high_proba_clouds_percentage"])
    scl = _read(it["assets"][B.SCL]["href"])
    assert (scl == B.SCL_CLOUD_SHADOW).any()
    # Compare on the 20 m grid, where SCL lives.
    blue = _read(it["assets"]["B02"]["href"])[::2, ::2].astype(float) - _offset(it)
    swir = _read(it["assets"]["B11"]["href"]).astype(float) - _offset(it)
    core = scl == B.SCL_CLOUD_HIGH
    assert blue[core].mean() > 4000
    assert 0.6 < swir[core].mean() / blue[core].mean() < 1.0


def test_nodata_strip_is_zero_in_every_band_and_scl(items):
    strips = [it for it in items if it["properties"]["s2:nodata_pixel_percentage"] > 0]
    assert strips
    it = strips[0]
    scl_nodata = _read(it["assets"][B.SCL]["href"]) == B.SCL_NODATA
    assert 100 * scl_nodata.mean() == pytest.approx(it["properties"]["s2:nodata_pixel_percentage"], abs=0.01)
    for key in B.SPECTRAL_BANDS:
        f = B.resolution(key) / 20
        dn = _read(it["assets"][key]["href"])
        # Resample the band's zero mask to the 20 m grid to compare with SCL.
        idx = (np.arange(scl_nodata.shape[0]) / f).astype(int)
        assert np.array_equal(dn[np.ix_(idx, idx)] == 0, scl_nodata), key


def test_vegetation_spectra_rise_at_the_red_edge(archive, items):
    classes = _landcover_by_scene(archive)
    for name in ("tree", "grass", "crop"):
        nir, red = [], []
        for it in _clear_scenes(items):
            mask = (classes[it["id"]] == WORLDCOVER_CODES[name])
            b04, b08 = _read(it["assets"]["B04"]["href"]), _read(it["assets"]["B08"]["href"])
            mask &= b04 > 0
            red.append(b04[mask].astype(float) - _offset(it))
            nir.append(b08[mask].astype(float) - _offset(it))
        red, nir = np.concatenate(red), np.concatenate(nir)
        assert red.size > 100, name
        assert nir.mean() / red.mean() > 3, name


def test_water_is_darker_in_the_nir_than_in_the_red(archive, items):
    classes = _landcover_by_scene(archive)
    nir, red = [], []
    for it in _clear_scenes(items):
        mask = classes[it["id"]] == WORLDCOVER_CODES["water"]
        b04, b08 = _read(it["assets"]["B04"]["href"]), _read(it["assets"]["B08"]["href"])
        mask &= b04 > 0
        red.append(b04[mask].astype(float) - _offset(it))
        nir.append(b08[mask].astype(float) - _offset(it))
    red, nir = np.concatenate(red), np.concatenate(nir)
    assert red.size > 100
    assert nir.mean() < red.mean()


def test_europe_mixes_land_cover_more_evenly_than_africa(archive, items):
    classes = _landcover_by_scene(archive)
    region = {it["id"]: it["properties"]["synthetic:region"] for it in items}
    codes = np.array([WORLDCOVER_CODES[c] for c in LANDCOVER_CLASSES])

    def entropy(r: str) -> float:
        maps = [m for scene, m in classes.items() if region[scene] == r]
        counts = np.array([sum((m == c).sum() for m in maps) for c in codes], dtype=float)
        p = counts[counts > 0] / counts.sum()
        return float(-(p * np.log(p)).sum())

    assert entropy("eu") > entropy("af") + 0.3
    assert entropy("eu") > entropy("oc") + 0.3


def test_landcover_items_share_their_scene_grid(archive, items):
    by_scene = {lc["properties"]["synthetic:scene"]: lc for lc in load_landcover_items(archive)}
    assert set(by_scene) == {it["id"] for it in items}
    for it in items:
        lc = by_scene[it["id"]]
        assert lc["collection"] == "synthetic-landcover"
        assert lc["properties"]["proj:epsg"] == it["properties"]["proj:epsg"]
        assert lc["assets"]["map"]["proj:transform"] == it["assets"]["B04"]["proj:transform"]
        assert lc["assets"]["map"]["proj:shape"] == it["assets"]["B04"]["proj:shape"]
    codes = np.unique(_read(lc["assets"]["map"]["href"]))
    assert set(codes.tolist()) <= set(WORLDCOVER_CODES.values())


def test_biomes_cover_every_scene_footprint(archive, items):
    features = json.loads(archive.biomes_path.read_text())["features"]
    for it in items:
        halves = [shape(f["geometry"]) for f in features if f["properties"]["scene"] == it["id"]]
        assert len(halves) == 2
        footprint = shape(it["geometry"])
        assert footprint.difference(unary_union(halves)).area < 1e-9 * footprint.area
    assert all(f["properties"]["biome"] for f in features)


def test_static_catalog_reads_with_pystac(archive, items):
    catalog = pystac.Catalog.from_file(str(archive.catalog_path))
    collections = {c.id: c for c in catalog.get_children()}
    assert set(collections) == {"sentinel-2-l2a", "synthetic-landcover"}
    s2 = list(collections["sentinel-2-l2a"].get_items())
    assert sorted(i.id for i in s2) == sorted(it["id"] for it in items)
    assert s2[0].assets["B04"].get_absolute_href().startswith(str(archive.root))


def test_rewrite_hrefs_swaps_the_prefix_only(archive, items):
    moved = rewrite_hrefs(items[0], str(archive.root), "http://127.0.0.1:8000")
    assert moved["assets"]["B04"]["href"] == f"http://127.0.0.1:8000/cogs/{items[0]['id']}/B04.tif"
    assert items[0]["assets"]["B04"]["href"].startswith(str(archive.root))


def test_same_spec_gives_identical_items_and_pixels(tmp_path):
    a = build_archive(tmp_path / "a", TINY)
    b = build_archive(tmp_path / "b", TINY)
    text_a = a.items_path.read_text().replace(str(a.root), "<root>")
    text_b = b.items_path.read_text().replace(str(b.root), "<root>")
    assert text_a == text_b
    for it_a, it_b in zip(load_items(a), load_items(b)):
        assert np.array_equal(_read(it_a["assets"]["B04"]["href"]), _read(it_b["assets"]["B04"]["href"]))


def test_another_seed_gives_other_scenes(tmp_path):
    a = load_items(build_archive(tmp_path / "a", TINY))
    b = load_items(build_archive(tmp_path / "b", TINY.model_copy(update={"seed": TINY.seed + 1})))
    assert {it["id"] for it in a}.isdisjoint(it["id"] for it in b)


def test_second_build_with_same_spec_reuses_files(tmp_path, caplog):
    first = build_archive(tmp_path, TINY)
    files = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    mtimes = [p.stat().st_mtime_ns for p in files]
    with caplog.at_level("INFO", logger="pw_ray.synthetic"):
        second = build_archive(tmp_path, TINY)
    assert second == first
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert "reused" in caplog.text


def test_changed_spec_rebuilds_in_place(tmp_path):
    build_archive(tmp_path, TINY)
    bigger = TINY.model_copy(update={"scenes_per_region": 2})
    info = build_archive(tmp_path, bigger)
    assert info.n_items == len(load_items(info)) == 12
    assert len(list((tmp_path / "cogs").iterdir())) == 2 * 12  # S2 + land-cover folders
    assert load_archive(tmp_path) == info


def test_load_archive_names_the_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
        load_archive(tmp_path)


def test_default_scenes_are_placed_inside_their_continent():
    # Coarse continent boxes: a sanity net for the hard-coded centres (regions.py has the real shapes).
    from pw_ray.synthetic import _CENTRES

    boxes = {"af": (-18, -35, 52, 37), "as": (40, 0, 150, 75), "eu": (-10, 36, 60, 71),
             "na": (-170, 7, -52, 83), "oc": (110, -48, 180, 0), "sa": (-82, -56, -34, 13)}
    for region, centres in _CENTRES.items():
        assert len(centres) >= 8
        w, s, e, n = boxes[region]
        for lon, lat, *_ in centres:
            assert w < lon < e and s < lat < n, (region, lon, lat)
