"""Search per cell and the job's request budget against a real STAC API (stac-fastapi-pgstac on loopback).

Requests are counted on the server side, by a proxy in front of the API (``tests/servers.py``
``FaultProxy``: with no faults it only forwards and counts, with arrival times and the most
requests in flight at once).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import shape

from pw_ray.config import ChipSpec
from pw_ray.ingest import pipeline as P
from pw_ray.ingest.catalogs import PlanetaryComputer
from pw_ray.ingest.search import ApiSearch, cloud_cover, rank_key, search_cells
from pw_ray.synthetic import S2_COLLECTION
from tests.servers import FaultPlan, FaultProxy

pytestmark = pytest.mark.slow

YEAR = "2023-01-01/2023-12-31"
SPEC = ChipSpec(size_px=32, max_cloud_fraction=0.5, max_nodata_fraction=0.5)
COUNT_ONLY = FaultPlan(rate=0.0)


def _dense_points(items, per_scene: int) -> pd.DataFrame:
    """``per_scene`` points inside each scene (a dense set: many points per cell)."""
    rows = []
    for it in sorted(items, key=lambda it: it["id"]):
        g = shape(it["geometry"])
        x0, y0, x1, y1 = g.bounds
        region = it["properties"]["synthetic:region"]
        for k in range(per_scene):
            fx, fy = 0.25 + 0.5 * ((k * 7) % per_scene) / per_scene, 0.25 + 0.5 * k / per_scene
            rows.append(dict(point_id=f"{region}-{k:02d}", set="dense", lon=x0 + (x1 - x0) * fx,
                             lat=y0 + (y1 - y0) * fy, region=region, biome="", landcover=""))
    return pd.DataFrame(rows)


def _same_index(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal indexes (the items' own links name the proxy they came through: not compared)."""
    pd.testing.assert_frame_equal(got.drop(columns=["items_json"]), want.drop(columns=["items_json"]))
    assert got["items_json"].isna().tolist() == want["items_json"].isna().tolist()


class _PerPointOnly:
    def __init__(self, inner):
        self.inner, self.seasons = inner, inner.seasons

    def candidates(self, lon, lat, season=None):
        return self.inner.candidates(lon, lat, season)


def _api(url, max_cloud=60.0, max_items=5, **kw):
    return ApiSearch(url, collection=S2_COLLECTION, datetime_range=YEAR, max_cloud_cover=max_cloud,
                     max_items=max_items, **kw)


def test_search_requests_are_counted_per_cell_not_per_point(stac_api):
    """60 points in 6 cells, 2 seasons: 12 searches of one page each, where a search per point made 120."""
    points = _dense_points(stac_api.items, 10)
    cells = {tuple(c) for c in search_cells(points["lon"], points["lat"])}
    seasons, pages = 2, 1  # a page holds 100 items, a cell has one scene
    with FaultProxy(stac_api.api_url, COUNT_ONLY, name="count-per-point") as px:
        want = P.index_points(points, _PerPointOnly(_api(px.url, seasons=seasons)), PlanetaryComputer(), SPEC)
        per_point = px.requests("POST", "/search")
    with FaultProxy(stac_api.api_url, COUNT_ONLY, name="count-per-cell") as px:
        search = _api(px.url, seasons=seasons)
        got = P.index_points(points, search, PlanetaryComputer(), SPEC)
        per_cell = px.requests("POST", "/search")
        landing = px.requests("GET", "/")
    assert len(cells) == 6 and per_point == len(points) * seasons == 120
    assert per_cell <= len(cells) * seasons * pages and per_cell == 12
    # One landing page per process (the client is shared; each search thread has its own session).
    assert landing == 1 and search.requests_sent == per_cell + landing
    assert per_cell / (len(points) * seasons) == pytest.approx(0.1)
    _same_index(got, want)
    assert (got["status"] == "ok").sum() >= 40


def test_pages_are_followed_and_reading_stops_once_no_later_item_counts(stac_api):
    """One search over the world, one item per page: the server's next links are followed while a
    point may still gain a candidate (ties included), and no further."""
    items = sorted(stac_api.items, key=rank_key)
    clearest = [it for it in items if cloud_cover(it) == cloud_cover(items[0])]
    assert 1 < len(clearest) < len(items)  # tied cloud covers: only the id decides among them
    centres = [shape(it["geometry"]).centroid for it in items]
    lons, lats = np.array([c.x for c in centres]), np.array([c.y for c in centres])
    world = (-180.0, -90.0, 180.0, 90.0)
    with FaultProxy(stac_api.api_url, COUNT_ONLY, name="count-paged") as px:
        search = _api(px.url, page_size=1, max_cloud=100.0, max_items=1)
        found = search.cell_candidates(world, lons, lats)
        every_page = px.requests("POST", "/search")
        # Points only in the clearest scenes: once a cloudier item shows, no later page can matter.
        n = len(clearest)
        found_clear = search.cell_candidates(world, lons[:n], lats[:n])
        clear_pages = px.requests("POST", "/search") - every_page
    assert [[it["id"] for it in f] for f in found] == [[it["id"]] for it in items]
    assert [[it["id"] for it in f] for f in found_clear] == [[it["id"]] for it in clearest]
    assert every_page == len(items) and clear_pages == n + 1


def _search_cells_in_task(searcher, cells):
    """In a Ray task: one cell search per ``(bbox, lon, lat)``; the ids found at each point."""
    return [[it["id"] for it in searcher.cell_candidates(bbox, np.array([lon]), np.array([lat]))[0]]
            for bbox, lon, lat in cells]


def _cell_boxes(items):
    """``(cell bbox, lon, lat)`` of each scene's centre, in cell order."""
    from pw_ray.ingest.search import cell_bbox

    centres = [shape(it["geometry"]).centroid for it in items]
    out = [(cell_bbox(c), p.x, p.y) for c, p in zip(search_cells([p.x for p in centres], [p.y for p in centres]),
                                                       centres)]
    return sorted(out)


def test_one_budget_bounds_requests_in_flight_across_ray_tasks(stac_api, ray_session):
    ray = ray_session
    boxes = _cell_boxes(stac_api.items)
    slow = FaultPlan(rate=0.0, delay_s=0.3)  # each request takes 0.3 s: unbounded tasks would overlap
    with FaultProxy(stac_api.api_url, slow, name="slow-api") as px:
        search = _api(px.url, max_concurrent_requests=1)
        search.share_budget()
        task = ray.remote(num_cpus=0)(_search_cells_in_task)
        got = ray.get([task.remote(search, boxes[:3]), task.remote(search, boxes[3:]),
                       task.remote(search, boxes[:3])])
        in_flight = px.max_in_flight
        n = len(px.log)
    stats = search.budget.stats()
    assert in_flight == 1 and stats["max_in_flight"] == 1
    assert n == stats["granted"] == 9 + 3  # 9 searches and one landing page per task
    assert got[0] == got[2] and all(len(ids) == 1 for ids in got[0] + got[1])


def test_a_429_with_retry_after_pauses_every_task(stac_api, ray_session):
    """Each distinct request is answered 429 with Retry-After: 1 once: after each, nobody's request
    reaches the server for a second (a pause per task would let the other task's requests in)."""
    ray = ray_session
    boxes = _cell_boxes(stac_api.items)
    plan = FaultPlan(rate=1.0, kinds=("429",), max_per_key=1, retry_after_s=1)
    with FaultProxy(stac_api.api_url, plan, name="throttling-api") as px:
        search = _api(px.url, max_concurrent_requests=2, retries=0)
        search.share_budget()
        task = ray.remote(num_cpus=0)(_search_cells_in_task)
        got = ray.get([task.remote(search, boxes[:2]), task.remote(search, boxes[2:4])])
        log, times = px.log, px.times
    assert all(len(ids) == 1 for ids in got[0] + got[1])  # nothing failed: the job slowed down
    throttled = [t for (key, outcome), t in zip(log, times) if outcome == "429"]
    assert len(throttled) == 5  # one landing page (same key for both tasks) and four searches
    for t in throttled:
        # Requests already on the wire when the 429 came (at most max_concurrent - 1) may land
        # within the pause; none is sent during it.
        inside = [u for u in times if t < u < t + 0.95]
        assert len(inside) <= 1, (t, inside)
    assert search.budget.stats()["pauses"] >= 4


def test_request_rate_holds_across_tasks(stac_api, ray_session):
    ray = ray_session
    boxes = _cell_boxes(stac_api.items)
    with FaultProxy(stac_api.api_url, COUNT_ONLY, name="rated-api") as px:
        search = _api(px.url, max_requests_per_s=5)
        search.share_budget()
        task = ray.remote(num_cpus=0)(_search_cells_in_task)
        ray.get([task.remote(search, boxes), task.remote(search, boxes)])
        times = sorted(px.times)
    assert len(times) == 2 * (len(boxes) + 1)
    # 14 starts at most 5 per second take at least 13 / 5 s (a request delayed on its way in
    # may arrive late, never early: the bound holds on a loaded machine too).
    assert times[-1] - times[0] >= (len(times) - 1) / 5 - 0.3
