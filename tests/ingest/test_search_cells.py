"""Search per cell: one paged search per cell and season, points assigned locally, same answer as per point."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from shapely.geometry import shape

from pw_ray.config import ChipSpec
from pw_ray.ingest import pipeline as P
from pw_ray.ingest.catalogs import PlanetaryComputer
from pw_ray.ingest.search import StaticSearch, candidates_in_cell, cell_bbox, search_cells
from pw_ray.synthetic import load_items

YEAR = "2023-01-01/2023-12-31"


def _square(x0, y0, side, iid, cc, when="2023-06-01T10:00:00Z"):
    ring = [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side], [x0, y0]]
    return {"id": iid, "geometry": {"type": "Polygon", "coordinates": [ring]},
            "properties": {"eo:cloud_cover": cc, "datetime": when}}


def _catalog(seed=0, n=40):
    """Squares scattered over six 1° cells and their borders, clouds 0–60 % (some tied), dates over 2023."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        x0, y0, side = rng.uniform(9.6, 11.2), rng.uniform(44.7, 45.6), rng.uniform(0.2, 0.6)
        cc = float(rng.choice([0.0, 5.0, 12.5])) if k % 4 == 0 else round(float(rng.uniform(0, 60)), 1)
        day = 1 + int(rng.integers(0, 364))
        when = pd.Timestamp("2023-01-01", tz="UTC") + pd.Timedelta(days=day - 1, hours=10)
        when = when.strftime("%Y-%m-%dT%H:%M:%SZ")
        items.append(_square(x0, y0, side, f"S{k:03d}", cc, when))
    return items


def _per_point(search, lons, lats, season=None):
    return [[it["id"] for it in search.candidates(lo, la, season)] for lo, la in zip(lons, lats)]


@pytest.mark.parametrize("page_size", [1, 3, 100])
@pytest.mark.parametrize("max_items", [1, 3])
def test_cell_search_gives_each_point_what_a_search_per_point_gives(page_size, max_items):
    items = _catalog()
    rng = np.random.default_rng(1)
    lons, lats = rng.uniform(9.7, 11.5, 300), rng.uniform(44.8, 45.9, 300)
    search = StaticSearch(items, None, YEAR, max_cloud_cover=50, max_items=max_items, seasons=2, page_size=page_size)
    cells = search_cells(lons, lats)
    assert len({tuple(c) for c in cells}) == 6  # the points straddle six cells
    for season in (0, 1):
        want = _per_point(search, lons, lats, season)
        got = [None] * len(lons)
        for c in {tuple(c) for c in cells}:
            idx = np.flatnonzero((cells == c).all(axis=1))
            found = search.cell_candidates(cell_bbox(c), lons[idx], lats[idx], season)
            for i, f in zip(idx, found):
                got[i] = [it["id"] for it in f]
        assert got == want
        assert sum(map(len, got)) > len(lons) // 2  # most points have a candidate


def _pages(items, size, read):
    """Pages of ``size`` items, counting in ``read`` how many were taken."""
    for k in range(0, len(items), size):
        read.append(k // size)
        yield items[k:k + size]


def test_cell_search_stops_reading_pages_once_no_later_item_can_count():
    # Twenty items over the whole cell, clouds 0, 1, 2, …: the best two of every point are on page 1.
    items = [_square(10.0, 45.0, 1.0, f"I{k:02d}", float(k)) for k in range(20)]
    lons, lats = np.array([10.2, 10.5, 10.9]), np.array([45.1, 45.5, 45.8])
    read: list[int] = []
    found, pages = candidates_in_cell(_pages(items, 3, read), lons, lats, max_items=2)
    assert [[it["id"] for it in f] for f in found] == [["I00", "I01"]] * 3
    assert pages == 1 and read == [0]
    # A tie with the worst candidate at the end of a page: the next page may hold a smaller id.
    tied = [_square(10.0, 45.0, 1.0, iid, cc) for iid, cc in [("B", 0.0), ("D", 1.0), ("C", 1.0), ("A", 1.0),
                                                              ("E", 2.0), ("F", 3.0)]]
    read = []
    found, pages = candidates_in_cell(_pages(tied, 2, read), lons, lats, max_items=2)
    assert [[it["id"] for it in f] for f in found] == [["B", "A"]] * 3
    assert read == [0, 1, 2]  # page 3 (cloud 2.0 > 1.0) shows no more ties can follow


def test_unsorted_pages_are_read_to_the_end_and_ranked_here():
    items = [_square(10.0, 45.0, 1.0, f"I{k:02d}", cc) for k, cc in enumerate([5.0, 1.0, 9.0, 0.5, 7.0, 0.1])]
    read: list[int] = []
    found, pages = candidates_in_cell(_pages(items, 2, read), np.array([10.5]), np.array([45.5]), max_items=2)
    assert [it["id"] for it in found[0]] == ["I05", "I03"] and pages == 3


def test_a_point_outside_every_item_gets_nothing_and_items_are_counted_once():
    items = [_square(10.0, 45.0, 0.5, "A", 1.0), _square(10.0, 45.0, 0.5, "A", 1.0), _square(10.6, 45.6, 0.3, "B", 2.0)]
    found, _ = candidates_in_cell([items[:2], items[2:]], np.array([10.2, 10.7, 10.55]),
                                  np.array([45.2, 45.7, 45.55]), max_items=5)
    assert [[it["id"] for it in f] for f in found] == [["A"], ["B"], []]


def test_search_cells_are_floor_cells_and_the_antimeridian_wraps():
    cells = search_cells([10.5, -0.1, 180.0, -180.0, 179.99], [45.2, -0.1, 0.5, 0.5, 90.0])
    assert cells.tolist() == [[45, 10], [-1, -1], [0, -180], [0, -180], [89, 179]]
    assert cell_bbox((45, 10)) == (10.0, 45.0, 11.0, 46.0)
    assert search_cells([10.3], [45.3], 0.5).tolist() == [[90, 20]]
    assert cell_bbox((90, 20), 0.5) == (10.0, 45.0, 10.5, 45.5)


class _PerPointOnly:
    """A searcher that answers per point only (what every search was before cells)."""

    def __init__(self, inner):
        self.inner, self.seasons, self.calls = inner, inner.seasons, 0

    def candidates(self, lon, lat, season=None):
        self.calls += 1
        return self.inner.candidates(lon, lat, season)


def _twins(items, seed=0):
    """Each scene three times: other ids, clouds and dates (so points have several candidates per season)."""
    rng = np.random.default_rng(seed)
    out = []
    for it in items:
        for k in range(3):
            tw = json.loads(json.dumps(it))
            tw["id"] = f"{it['id']}-t{k}"
            tw["properties"]["eo:cloud_cover"] = round(float(rng.uniform(0, 40)), 2)
            tw["properties"]["datetime"] = f"2023-{1 + 4 * k + int(rng.integers(0, 4)):02d}-15T10:00:00Z"
            out.append(tw)
    return items + out


def _points_in(items, per_item, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for k, it in enumerate(items):
        g = shape(it["geometry"])
        (x0, y0, x1, y1) = g.bounds
        for j in range(per_item):
            rows.append({"point_id": f"p{k}-{j:02d}", "set": "s", "lon": x0 + (x1 - x0) * rng.uniform(0.2, 0.8),
                         "lat": y0 + (y1 - y0) * rng.uniform(0.2, 0.8), "region": "af", "biome": "b",
                         "landcover": "l"})
    rows.append({"point_id": "sea", "set": "s", "lon": -30.0, "lat": 0.0, "region": "sa", "biome": "b",
                 "landcover": "l"})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seasons", [1, 2])
def test_index_by_cell_equals_index_by_point_on_the_synthetic_archive(stac_archive, seasons):
    base = load_items(stac_archive)
    items = _twins(base)
    points = _points_in(base, 6)
    spec = ChipSpec(size_px=32, max_cloud_fraction=0.3, max_nodata_fraction=0.1)
    searches = []

    class Counted(StaticSearch):
        def search_pages(self, bbox, season=None):
            searches.append((bbox, season))
            return super().search_pages(bbox, season)

    search = Counted(items, None, YEAR, max_cloud_cover=30, max_items=3, seasons=seasons, page_size=2)
    per_point = _PerPointOnly(search)
    want = P.index_points(points, per_point, PlanetaryComputer(), spec)
    got = P.index_points(points, search, PlanetaryComputer(), spec)
    assert per_point.calls == len(points) * seasons
    pd.testing.assert_frame_equal(got, want)
    assert set(got["status"]) >= {"ok", "skipped"}
    assert got["item_id"].str.contains("-t").any()  # twins were chosen too: the ranking mattered
    cells = {tuple(c) for c in search_cells(points["lon"], points["lat"])}
    assert len(searches) == len(set(searches)) == len(cells) * seasons  # one search per cell and season


def test_a_failed_cell_search_fails_only_that_cells_points(stac_archive):
    base = load_items(stac_archive)
    points = _points_in(base, 2)
    bad_cell = tuple(search_cells([points["lon"].iloc[0]], [points["lat"].iloc[0]])[0])

    class Flaky(StaticSearch):
        def search_pages(self, bbox, season=None):
            if bbox == cell_bbox(bad_cell):
                raise ConnectionError("HTTP 503 from the API")
            yield from super().search_pages(bbox, season)

    search = Flaky(base, None, YEAR, max_cloud_cover=100, max_items=3)
    spec = ChipSpec(size_px=32, max_cloud_fraction=1.0, max_nodata_fraction=1.0)
    index = P.index_points(points, search, PlanetaryComputer(), spec).set_index("point_id")
    in_bad = [tuple(c) == bad_cell for c in search_cells(points["lon"], points["lat"])]
    bad = index.loc[points["point_id"][in_bad]]
    assert (bad["status"] == "failed").all() and (bad["failure"] == "transient").all()
    assert bad["reason"].str.startswith("ConnectionError: HTTP 503").all()
    good = index.loc[points["point_id"][[not b for b in in_bad]]].drop("sea")
    assert (good["status"] == "ok").all()
