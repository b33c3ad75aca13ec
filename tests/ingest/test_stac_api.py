"""Ingest against a real STAC API (stac-fastapi-pgstac + pgstac) and COGs over HTTP, with faults.

The servers run on 127.0.0.1 (see ``tests/servers.py`` and ``conftest.py``). The synthetic
archive has one scene per continent, so the results are known from its items.
"""

from __future__ import annotations

import logging
import urllib.request

import numpy as np
import pandas as pd
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import shape

from pw_ray.config import ChipSpec
from pw_ray.ingest import shards as S
from pw_ray.ingest.catalogs import adapter_for
from pw_ray.ingest.landcover import StacLandcover
from pw_ray.ingest.search import ApiSearch, StaticSearch
from pw_ray.synthetic import LC_COLLECTION, S2_COLLECTION, load_items
from tests.ingest.conftest import API_TIMEOUT_S
from tests.servers import FAULT_KINDS, FaultPlan, FaultProxy

pytestmark = pytest.mark.slow
log = logging.getLogger(__name__)

YEAR = "2023-01-01/2023-12-31"


def _cc(item: dict) -> float:
    return item["properties"]["eo:cloud_cover"]


def _centre(item: dict) -> tuple[float, float]:
    c = shape(item["geometry"]).centroid
    return c.x, c.y


def _points(items: list[dict], per_scene: int = 3) -> pd.DataFrame:
    """A few points inside each scene, and one point in the sea (no scene)."""
    offsets = [(0.0, 0.0), (0.004, 0.003), (-0.004, -0.003), (0.003, -0.004)][:per_scene]
    rows = []
    for it in sorted(items, key=lambda it: it["id"]):
        lon, lat = _centre(it)
        region = it["properties"]["synthetic:region"]
        for k, (dx, dy) in enumerate(offsets):
            rows.append(dict(point_id=f"{region}-{k}", set="stacapi", lon=lon + dx, lat=lat + dy, region=region,
                             biome="", landcover=""))
    rows.append(dict(point_id="sea-0", set="stacapi", lon=-30.0, lat=0.0, region="sa", biome="", landcover=""))
    return pd.DataFrame(rows)


def _static(items, max_cloud=100.0, max_items=5, datetime_range=YEAR):
    return StaticSearch(items, collection=S2_COLLECTION, datetime_range=datetime_range, max_cloud_cover=max_cloud,
                        max_items=max_items)


def _api(url, max_cloud=100.0, max_items=5, datetime_range=YEAR, **kw):
    return ApiSearch(url, collection=S2_COLLECTION, datetime_range=datetime_range, max_cloud_cover=max_cloud,
                     max_items=max_items, **kw)


# --------------------------------------------------------------------------- the API itself

def _client(url: str):
    """pystac-client on the server; SORT declared by hand, as ApiSearch does.

    stac-fastapi-pgstac 7 advertises ``https://api.stacspec.org/v1.1.0/item-search#sort``,
    which pystac-client 0.9 does not recognise (it looks for v1.0.x).
    """
    from pystac_client import Client

    client = Client.open(url)
    assert any(c.endswith("/item-search#sort") for c in client.get_conforms_to())
    client.add_conforms_to("SORT")
    return client


def test_point_search_with_datetime_query_and_sortby(stac_api):
    client = _client(stac_api.api_url)
    assert client.conforms_to("ITEM_SEARCH") and client.conforms_to("QUERY")
    for item in stac_api.items:
        lon, lat = _centre(item)
        day = item["properties"]["datetime"][:10]
        kw = dict(collections=[S2_COLLECTION], intersects={"type": "Point", "coordinates": [lon, lat]},
                  sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"}])
        search = client.search(datetime=f"{day}/{day}", query={"eo:cloud_cover": {"lte": _cc(item)}}, **kw)
        assert [it["id"] for it in search.items_as_dicts()] == [item["id"]]
        assert search.matched() == 1
        # The date, then the cloud limit, exclude it.
        other = "2022-01-01/2022-12-31"
        assert list(client.search(datetime=other, **kw).items_as_dicts()) == []
        if _cc(item) > 0:
            strict = client.search(datetime=YEAR, query={"eo:cloud_cover": {"lt": _cc(item)}}, **kw)
            assert list(strict.items_as_dicts()) == [] and strict.matched() == 0


def test_search_sorted_best_first_and_matched_counts(stac_api):
    items = stac_api.items
    ccs = sorted({_cc(it) for it in items})
    assert len(ccs) >= 2, "the archive should have clear and cloudy scenes"
    limit = ccs[-1]  # strictly below the cloudiest scene
    days = sorted(it["properties"]["datetime"] for it in items)
    end = days[-2][:10]  # excludes the latest scene (unless it shares the day)
    expected = sorted((it for it in items if _cc(it) < limit and it["properties"]["datetime"][:10] <= end),
                      key=lambda it: (_cc(it), it["id"]))
    assert 0 < len(expected) < len(items)

    client = _client(stac_api.api_url)
    world = {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]}
    search = client.search(collections=[S2_COLLECTION], intersects=world, datetime=f"2023-01-01/{end}",
                           query={"eo:cloud_cover": {"lt": limit}},
                           sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"},
                                   {"field": "id", "direction": "asc"}], limit=2)  # paging too
    got = list(search.items_as_dicts())
    assert [it["id"] for it in got] == [it["id"] for it in expected]
    assert search.matched() == len(expected)
    # Descending works too (the server sorts; the client does not).
    desc = client.search(collections=[S2_COLLECTION], datetime=YEAR,
                         sortby=[{"field": "properties.eo:cloud_cover", "direction": "desc"},
                                 {"field": "id", "direction": "desc"}])
    assert [it["id"] for it in desc.items_as_dicts()] == [it["id"] for it in
                                                         sorted(items, key=lambda it: (_cc(it), it["id"]),
                                                                reverse=True)]
    assert desc.matched() == len(items)


@pytest.mark.parametrize("max_cloud", [100.0, 1.0])
def test_api_search_matches_static_search(stac_api, max_cloud):
    items = stac_api.items
    static, api = _static(items, max_cloud), _api(stac_api.api_url, max_cloud)
    points = _points(items, per_scene=2)
    found = 0
    for p in points.itertuples():
        want = static.candidates(p.lon, p.lat)
        got = api.candidates(p.lon, p.lat)
        assert [it["id"] for it in got] == [it["id"] for it in want], p.point_id
        assert [it["assets"]["B04"]["href"] for it in got] == [it["assets"]["B04"]["href"] for it in want]
        found += len(got)
    assert found > 0


def test_api_search_times_out_a_stalled_request_and_retries(stac_api):
    """ApiSearch's timeout reaches the HTTP requests (Client.open used to reset it to None)."""
    import time

    item = stac_api.items[2]
    lon, lat = _centre(item)
    plan = FaultPlan(rate=1.0, kinds=("stall",), max_per_key=1, stall_s=20.0)
    with FaultProxy(stac_api.api_url, plan, name="stall-once") as px:
        t = time.monotonic()
        got = _api(px.url, timeout_s=1.0, retries=3, backoff_s=0.05).candidates(lon, lat)
        elapsed = time.monotonic() - t
        stats = dict(px.stats)
    assert [it["id"] for it in got] == [item["id"]]
    assert stats["stall"] >= 2 and stats["stall_abandoned"] == stats["stall"], stats  # landing page + search
    assert elapsed < 10, elapsed


def test_cog_window_over_vsicurl_equals_local_read(stac_api, stac_archive):
    local = {it["id"]: it for it in load_items(stac_archive)}
    item = stac_api.items[0]
    href = item["assets"]["B8A"]["href"]
    assert href.startswith(stac_api.cog_url)
    # A Range request gets 206 and exactly the bytes asked for.
    req = urllib.request.Request(href, headers={"Range": "bytes=100-199"})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 206 and len(r.read()) == 100
    win = Window(7, 11, 40, 33)
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open("/vsicurl/" + href) as ds:
        remote = ds.read(1, window=win)
    with rasterio.open(local[item["id"]]["assets"]["B8A"]["href"]) as ds:
        assert np.array_equal(remote, ds.read(1, window=win))
    assert remote.any()


# --------------------------------------------------------------------------- ingest end to end

SPEC = ChipSpec(size_px=32, max_cloud_fraction=0.5, max_nodata_fraction=0.5, chunk_size=8, webdataset=False)


def _ingest(root, searcher, points, landcover=None):
    from pw_ray.ingest.pipeline import run_ingest

    summary = run_ingest(str(root), "stacapi", points, searcher, adapter_for("planetary-computer"), SPEC, landcover)
    log.info("ingest into %s: %s", root, summary.line())
    table = S.read_set(str(root), "stacapi")
    order = np.argsort(np.array(table.column("chip_id").to_pylist()))
    meta = table.drop_columns(["pixels"]).to_pandas().iloc[order].reset_index(drop=True)
    return summary, meta, S.read_pixels(table)[order]


@pytest.fixture(scope="module")
def static_chips(stac_archive, ray_session, tmp_path_factory):
    """The reference: the same points ingested from local files with StaticSearch (land cover too)."""
    local = load_items(stac_archive)
    return _ingest(tmp_path_factory.mktemp("ingest-static"), _static(local, max_cloud=60.0), _points(local),
                   _local_landcover(stac_archive))


def _local_landcover(info) -> StacLandcover:
    return StacLandcover(collection=LC_COLLECTION, url=str(info.landcover_items_path), kind="static")


def _assert_same_chips(got, want, api_items):
    (s1, m1, p1), (s0, m0, p0) = got, want
    assert (s1.ok, s1.skipped, s1.failed) == (s0.ok, s0.skipped, s0.failed)
    assert s0.ok >= 12 and s0.failed == 0
    assert m1["chip_id"].tolist() == m0["chip_id"].tolist()
    cols = ["item_id", "row_off", "col_off", "epsg", "baseline", "offset_applied", "cloud_fraction", "nodata_fraction"]
    pd.testing.assert_frame_equal(m1[cols], m0[cols])
    assert p1.dtype == p0.dtype == np.uint16 and p1.shape == p0.shape
    assert np.array_equal(p1, p0)
    assert set(m1["item_id"]) <= {it["id"] for it in api_items}


def test_ingest_through_the_api_equals_local_ingest(stac_api, static_chips, ray_session, tmp_path):
    searcher = _api(stac_api.api_url, max_cloud=60.0)
    got = _ingest(tmp_path / "root", searcher, _points(stac_api.items))
    _assert_same_chips(got, static_chips, stac_api.items)


def test_land_cover_through_the_api_equals_local_land_cover(stac_api, stac_archive, static_chips, ray_session,
                                                           tmp_path):
    """The synthetic-landcover collection searched in pgstac and read over HTTP labels like local files."""
    lc = StacLandcover(collection=stac_api.landcover_collection, url=stac_api.api_url, kind="api", timeout_s=10)
    assert all(it["assets"]["map"]["href"].startswith(stac_api.cog_url) for it in stac_api.landcover_items)
    points = _points(stac_api.items)
    labels = lc.classes_at(points["lon"].to_numpy(), points["lat"].to_numpy())
    local = _local_landcover(stac_archive).classes_at(points["lon"].to_numpy(), points["lat"].to_numpy())
    assert labels.tolist() == local.tolist() and sum(v is not None for v in labels) == len(points) - 1  # sea: None
    got = _ingest(tmp_path / "root", _api(stac_api.api_url, max_cloud=60.0), points, lc)
    _assert_same_chips(got, static_chips, stac_api.items)
    (_, m1, _), (_, m0, _) = got, static_chips
    want = np.stack(m0["lc_fractions"])
    assert want.shape == (len(m0), len(lc.codes)) and (want.sum(axis=1) > 0.99).all()
    np.testing.assert_array_equal(np.stack(m1["lc_fractions"]), want)
    assert m1["landcover"].tolist() == m0["landcover"].tolist()


def test_ingest_survives_a_flaky_api_and_cog_server(flaky_stac_api, static_chips, ray_session, tmp_path):
    searcher = _api(flaky_stac_api.api_url, max_cloud=60.0, timeout_s=API_TIMEOUT_S, retries=6, backoff_s=0.1)
    got = _ingest(tmp_path / "root", searcher, _points(flaky_stac_api.items))
    stats = flaky_stac_api.fault_stats()
    log.info("faults injected: %s", stats)
    _assert_same_chips(got, static_chips, flaky_stac_api.items)
    # The proxies really did fail requests, of every kind, on both servers, and every stalled
    # request was abandoned by its client (timeout) before the proxy would have hung up.
    api, cogs = flaky_stac_api.api_proxy, flaky_stac_api.cog_proxy
    assert api.faults() >= 5 and cogs.faults() >= 5, stats
    assert {k for p in (api, cogs) for k in p.stats if k in FAULT_KINDS} == set(FAULT_KINDS), stats
    for p in (api, cogs):
        assert p.stats.get("stall_abandoned", 0) == p.stats.get("stall", 0) > 0, stats


def test_read_retries_reach_the_server_after_a_dropped_open(cog_server, stac_archive):
    """A connection dropped while GDAL opens a COG must not poison the retries.

    GDAL does not retry an empty reply itself and caches the failed open ("does not exist"),
    so chips.retrying has to bypass /vsicurl/'s cache for its retries.
    """
    from rasterio.enums import Resampling

    from pw_ray.ingest import chips as C

    item = load_items(stac_archive)[1]
    rel = item["assets"]["B11"]["href"][len(str(stac_archive.root)):]
    wins = [(0, 0), (40, 72)]
    with C.gdal_env():
        want = C.read_band_windows(item["assets"]["B11"]["href"], wins, 32, 10.0, Resampling.bilinear)
    # Every distinct request is dropped once: the HEAD of the open, then each range read.
    with FaultProxy(cog_server.url, FaultPlan(rate=1.0, kinds=("drop",), max_per_key=1), name="drop-once") as px:
        with C.gdal_env():
            got = C.read_band_windows(px.url + rel, wins, 32, 10.0, Resampling.bilinear, retries=3)
        assert px.stats["drop"] >= 2 and px.log[0] == (px.log[0][0], "drop"), px.log
        assert px.log[0][0].startswith("HEAD ")
    assert np.array_equal(got, want)
