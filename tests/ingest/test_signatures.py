"""pw_ray.ingest.signatures: a candidate's chip read cheaply from the COGs' overviews.

The archive is the session's small one (one 192 px scene per continent, ``tests/ingest/conftest.py``);
the API test serves it through stac-fastapi-pgstac and nginx on loopback.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import rasterio
from scipy.stats import spearmanr
from shapely.geometry import shape

from pw_ray.analyze.diversity import hist_entropy, spectral_entropy_hist_batch
from pw_ray.config import ChipSpec
from pw_ray.ingest import chips as C
from pw_ray.ingest.catalogs import PlanetaryComputer, adapter_for
from pw_ray.ingest.pipeline import index_points
from pw_ray.ingest.search import ApiSearch, StaticSearch
from pw_ray.ingest.signatures import (SIGNATURE_COLUMNS, candidate_signatures, scene_signature_pixels,
                                      signature_table, signature_windows)
from pw_ray.synthetic import S2_COLLECTION, load_items

SPEC = ChipSpec(size_px=32, max_cloud_fraction=0.5, max_nodata_fraction=0.5, chunk_size=8, webdataset=False)
SIG_PX = 8  # a 32 px chip at 40 m: the COGs' second overview level of the 10 m bands
YEAR = "2023-01-01/2023-12-31"
PC = adapter_for("planetary-computer")


def _static(items):
    return StaticSearch(items, collection=S2_COLLECTION, datetime_range=YEAR, max_cloud_cover=100.0, max_items=5)


def _points(items: list[dict], per_scene: int, seed: int = 0) -> pd.DataFrame:
    """``per_scene`` random points inside each scene (a chip's width from its edges), one in the sea."""
    rng = np.random.default_rng(seed)
    rows = []
    for it in sorted(items, key=lambda it: it["id"]):
        inner = shape(it["geometry"]).buffer(-0.004)
        x0, y0, x1, y1 = inner.bounds
        region = it["properties"]["synthetic:region"]
        k = 0
        while k < per_scene:
            lon, lat = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if inner.contains(shape({"type": "Point", "coordinates": [lon, lat]})):
                rows.append(dict(point_id=f"{region}-{k:02d}", set="sig", lon=lon, lat=lat, region=region))
                k += 1
    rows.append(dict(point_id="sea-00", set="sig", lon=-30.0, lat=0.0, region="sa"))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def local_items(stac_archive):
    return load_items(stac_archive)


def test_signature_windows_snap_to_the_coarse_grid_and_stay_inside_the_scene():
    # 32 px chips at 8 px: cells of 4 × 4 ten-metre pixels; a 192 px scene is 48 cells wide.
    assert signature_windows([(0, 0), (64, 96), (65, 98), (190, 190)], 32, 8, 192, 192) == [
        (0, 0), (16, 24), (16, 24), (40, 40)]


def test_signature_pixels_are_the_chips_footprint_averaged(local_items):
    item = next(it for it in local_items if it["properties"]["eo:cloud_cover"] == 0)
    windows = [(64, 96), (16, 128)]  # on the 4 × 4 grid of the signature: exact footprints
    sig = scene_signature_pixels(item, PC, windows, SPEC, SIG_PX)
    assert sig.shape == (2, len(SPEC.bands), SIG_PX, SIG_PX) and sig.dtype == np.uint16
    for ci, band in enumerate(SPEC.bands):
        with rasterio.open(item["assets"][band]["href"]) as ds:
            native = ds.read(1).astype(np.float64)
            per = int(round(abs(ds.transform.a) / 10))  # 10 m pixels per native pixel
        k = 4 // per  # native pixels per signature pixel along a side
        for w, (r, c) in enumerate(windows):
            block = native[r // per:(r + 32) // per, c // per:(c + 32) // per]
            expected = block.reshape(SIG_PX, k, SIG_PX, k).mean(axis=(1, 3)) + PC.offset(item, band)
            # GDAL averages level by level (20 m, then 40 m), rounding at each: within one DN.
            assert np.abs(sig[w, ci] - expected).max() <= 1.0, band


def test_candidate_signatures_follow_the_index_and_score_like_analyze(local_items):
    points = _points(local_items, per_scene=4)
    sig = candidate_signatures(points, _static(local_items), PC, SPEC, SIG_PX, bins=16)
    index = index_points(points, _static(local_items), PC, SPEC).set_index("point_id").loc[points["point_id"]]
    assert list(sig.columns) == SIGNATURE_COLUMNS
    assert sig["point_id"].tolist() == points["point_id"].tolist()
    assert sig["status"].tolist() == index["status"].tolist()
    assert sig.set_index("point_id").loc["sea-00", "status"] == "skipped"
    ok = sig["status"] == "ok"
    assert ok.sum() >= 12
    assert sig.loc[ok, "item_id"].tolist() == index.loc[ok.to_numpy(), "item_id"].tolist()
    assert sig.loc[~ok, "score"].isna().all() and (sig.loc[~ok, "band_hist"].map(len) == 0).all()
    # score = analyze's "hist" entropy of the histograms = of the signature pixels.
    hists = np.stack(sig.loc[ok, "band_hist"].to_list()).reshape(-1, len(SPEC.bands), 16)
    assert (hists.sum(axis=2) == SIG_PX * SIG_PX).all()
    np.testing.assert_allclose(sig.loc[ok, "score"].to_numpy(), hist_entropy(hists))
    first = sig[ok].iloc[0]
    row = index.loc[first["point_id"]]
    item = next(it for it in local_items if it["id"] == first["item_id"])
    px = scene_signature_pixels(item, PC, [(int(row["row_off"]), int(row["col_off"]))], SPEC, SIG_PX)
    assert first["score"] == pytest.approx(spectral_entropy_hist_batch(px, 16)[0])


def test_with_seasons_the_best_scene_of_the_year_stands_for_the_point(local_items):
    points = _points(local_items, per_scene=2, seed=4)
    seasonal = StaticSearch(local_items, collection=S2_COLLECTION, datetime_range=YEAR, max_cloud_cover=100.0,
                            max_items=5, seasons=3)
    got = candidate_signatures(points, seasonal, PC, SPEC, SIG_PX, bins=16)
    assert seasonal.seasons == 3  # the caller's searcher is left as it was
    want = candidate_signatures(points, _static(local_items), PC, SPEC, SIG_PX, bins=16)
    pd.testing.assert_frame_equal(got.drop(columns=["band_hist"]), want.drop(columns=["band_hist"]))


def test_signatures_rank_candidates_like_their_full_resolution_chips(local_items):
    points = _points(local_items, per_scene=12, seed=1)
    sig = candidate_signatures(points, _static(local_items), PC, SPEC, SIG_PX, bins=16)
    index = index_points(points, _static(local_items), PC, SPEC).set_index("point_id").loc[points["point_id"]]
    ok = (sig["status"] == "ok").to_numpy()
    items = {it["id"]: it for it in local_items}
    full = np.full(len(points), np.nan)
    rows = index.reset_index()
    for item_id, grp in rows[ok].groupby("item_id"):
        wins = list(zip(grp["row_off"].astype(int), grp["col_off"].astype(int)))
        with C.gdal_env():
            chips = C.read_scene_chips(items[item_id], PC, wins, SPEC.bands, SPEC.size_px)
        full[grp.index.to_numpy()] = spectral_entropy_hist_batch(chips.pixels, 16)
    rho = spearmanr(sig.loc[ok, "score"], full[ok])[0]
    assert rho > 0.9, rho


def test_signature_table_on_ray_data_equals_the_pure_function(local_items, ray_session, monkeypatch):
    from pw_ray.ingest import signatures as SG

    monkeypatch.setattr(SG, "SIGNATURE_BATCH", 10)  # several tasks
    points = _points(local_items, per_scene=4, seed=2)
    got = signature_table(points, _static(local_items), PC, SPEC, SIG_PX, bins=16)
    want = candidate_signatures(points, _static(local_items), PC, SPEC, SIG_PX, bins=16)
    assert got["point_id"].tolist() == points["point_id"].tolist()
    pd.testing.assert_frame_equal(got.drop(columns=["band_hist"]), want.drop(columns=["band_hist"]))
    assert all(np.array_equal(a, b) for a, b in zip(got["band_hist"], want["band_hist"]))


@pytest.mark.slow
def test_signatures_through_the_stac_api_equal_those_from_local_files(stac_api, local_items):
    signed: list[str] = []

    def signer(href: str) -> str:  # a token in the query, as Planetary Computer's; nginx ignores it
        signed.append(href)
        return href + "?st=2030-01-01&sig=abc"

    adapter = PlanetaryComputer(sign_hosts=("127.0.0.1",), signer=signer)
    api = ApiSearch(stac_api.api_url, collection=S2_COLLECTION, datetime_range=YEAR, max_cloud_cover=100.0,
                    max_items=5)
    points = _points(local_items, per_scene=3, seed=3)
    remote = candidate_signatures(points, api, adapter, SPEC, SIG_PX, bins=16)
    local = candidate_signatures(points, _static(local_items), PC, SPEC, SIG_PX, bins=16)
    assert (remote["status"] == "ok").sum() >= 12
    pd.testing.assert_frame_equal(remote.drop(columns=["band_hist"]), local.drop(columns=["band_hist"]))
    assert all(np.array_equal(a, b) for a, b in zip(remote["band_hist"], local["band_hist"]))
    # Every band of every scene was signed just before its read, over HTTP.
    scenes = remote.loc[remote["status"] == "ok", "item_id"].nunique()
    band_reads = [h for h in signed if not h.endswith("/SCL.tif")]
    assert len(band_reads) == scenes * len(SPEC.bands)
    assert all(h.startswith(stac_api.cog_url) for h in signed)
