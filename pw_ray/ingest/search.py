"""Scene search: the best Sentinel-2 items over points, from a STAC API or a local catalog.

Searches go **per cell, not per point**: the points of a set are grouped into a fixed grid of
lon/lat cells (``stac.search_cell_deg``, 1° by default: about the size of a Sentinel-2 tile,
110 km), each cell × season is one paged search (the cell's bbox, the date window, the cloud
limit, sorted by ``eo:cloud_cover``), and each point of the cell takes, locally, the best
``stac.max_items`` items whose footprint covers it (:func:`candidates_in_cell`). Requests then
grow with cells (where scenes are), not with points. Both searchers, :class:`StaticSearch` (a
catalog in memory: static catalogs, the synthetic archive) and :class:`ApiSearch` (a STAC API),
go through the same assignment; each also keeps a per-point :meth:`candidates`.

Ranking, everywhere: ``eo:cloud_cover`` ascending, then item id; items at or above the cloud
limit, or outside the date window, never count.

Why a 1° lon/lat grid and not the MGRS tiles themselves: a point's cell is a floor of its
coordinates (no tile geometry to look up, no dependency, no overlaps to resolve: a point lies in
one cell, while tiles overlap by 10 km), the cells are as large as a tile at mid latitudes, and
the answer does not depend on the grid at all (every item covering a point intersects its cell's
bbox), only the number of requests does.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from typing import Protocol

import numpy as np
import shapely
from shapely.geometry import Point, box, shape

from pw_ray import storage
from pw_ray.ingest.budget import BudgetedAdapter, BudgetLimits, LocalBudget, RayBudget, mount, shared_budget

log = logging.getLogger(__name__)


#: Side of the search cells, degrees (``stac.search_cell_deg``'s default).
CELL_DEG = 1.0
#: Items per page of a cell search (``stac.page_size``'s default; the API's ``limit``).
PAGE_SIZE = 100
#: Cell searches one index task runs at once against a STAC API (threads: they wait on the
#: network). The job's request budget bounds all of them together.
SEARCH_THREADS = 4


class SceneSearch(Protocol):
    #: Date windows per point (``stac.seasons``): the date range split into this many equal parts.
    seasons: int
    #: Side of the search cells, degrees.
    cell_deg: float

    def candidates(self, lon: float, lat: float, season: int | None = None) -> list[dict]: ...

    def cell_candidates(self, bbox: tuple[float, float, float, float], lons: np.ndarray, lats: np.ndarray,
                        season: int | None = None) -> list[list[dict]]: ...


def cloud_cover(item: dict) -> float:
    return float(item["properties"].get("eo:cloud_cover", 0.0))


def rank_key(item: dict) -> tuple[float, str]:
    """The order of candidates: cloud cover ascending, then id."""
    return cloud_cover(item), item["id"]


# ----------------------------------------------------------------------------- cells
def search_cells(lons, lats, cell_deg: float = CELL_DEG) -> np.ndarray:
    """``(N, 2)`` int64 cell of each point: ``(row, col)`` = floor(lat / d), floor(lon / d).

    Longitude 180 belongs to the cell of -180 (the same meridian), latitude 90 to the top row.
    """
    lons = np.asarray(lons, dtype=np.float64)
    lats = np.asarray(lats, dtype=np.float64)
    lons = np.where(lons >= 180.0, lons - 360.0, lons)
    col = np.floor(lons / cell_deg)
    row = np.floor(np.minimum(lats, 90.0 - 1e-9) / cell_deg)
    return np.column_stack([row, col]).astype(np.int64)


def cell_bbox(cell, cell_deg: float = CELL_DEG) -> tuple[float, float, float, float]:
    """``(west, south, east, north)`` degrees of a cell of :func:`search_cells`."""
    row, col = int(cell[0]), int(cell[1])
    return (max(-180.0, col * cell_deg), max(-90.0, row * cell_deg),
            min(180.0, (col + 1) * cell_deg), min(90.0, (row + 1) * cell_deg))


def candidates_in_cell(pages: Iterable[list[dict]], lons, lats, max_items: int) -> tuple[list[list[dict]], int]:
    """The best ``max_items`` items covering each point, from the pages of one cell's search.

    pages: lists of item dicts, as a search returns them (best cloud cover first when the
        server sorts; any order works, it then reads every page).
    lons, lats: the cell's points, degrees, shape (P,).

    Returns (per point its candidates in :func:`rank_key` order, pages read). Pages are read
    lazily and the reading stops as soon as no later item can enter any point's list: every
    point has ``max_items`` candidates and the pages so far came sorted with the last cloud
    cover above every point's worst candidate (a tie could still be a better id). The answer
    equals a search per point: every item covering a point intersects the cell's bbox.
    """
    lons = np.asarray(lons, dtype=np.float64)
    lats = np.asarray(lats, dtype=np.float64)
    n_points, k = len(lons), int(max_items)
    tree = shapely.STRtree(shapely.points(lons, lats))
    items: list[dict] = []
    ccs: list[float] = []
    seen: set[str] = set()
    kept_item = np.empty(0, dtype=np.int64)  # (item, point) pairs: each point's best k so far
    kept_point = np.empty(0, dtype=np.int64)
    ordered, last_cc, n_pages = True, float("-inf"), 0
    for page in pages:
        n_pages += 1
        new = []
        for it in page:  # a server may repeat an item across (or within) pages
            if it["id"] not in seen:
                seen.add(it["id"])
                new.append(it)
        page_cc = [cloud_cover(it) for it in page]
        if page_cc:  # did the server sort? (one item out of order and every page must be read)
            ordered = ordered and page_cc[0] >= last_cc and all(a <= b for a, b in zip(page_cc, page_cc[1:]))
            last_cc = max(last_cc, max(page_cc))
        if not new:
            continue
        base = len(items)
        items.extend(new)
        ccs.extend(cloud_cover(it) for it in new)
        geoms = [shape(it["geometry"]) for it in new]
        hit_item, hit_point = tree.query(geoms, predicate="intersects")
        order = sorted(range(len(items)), key=lambda i: (ccs[i], items[i]["id"]))
        rank = np.empty(len(items), dtype=np.int64)
        rank[order] = np.arange(len(items))
        kept_item, kept_point = _first_k(np.concatenate([kept_item, hit_item.astype(np.int64) + base]),
                                         np.concatenate([kept_point, hit_point.astype(np.int64)]), rank, k)
        if ordered and n_points:
            counts = np.bincount(kept_point, minlength=n_points)
            if counts.min() >= k:
                worst = np.full(n_points, -np.inf)
                np.maximum.at(worst, kept_point, np.asarray(ccs)[kept_item])
                if worst.max() < last_cc:
                    break
    out: list[list[dict]] = [[] for _ in range(n_points)]
    if len(kept_item):
        rank = np.empty(len(items), dtype=np.int64)
        rank[sorted(range(len(items)), key=lambda i: (ccs[i], items[i]["id"]))] = np.arange(len(items))
        for i in np.lexsort((rank[kept_item], kept_point)):
            out[kept_point[i]].append(items[kept_item[i]])
    return out, n_pages


def _first_k(item: np.ndarray, point: np.ndarray, rank: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Of (item, point) pairs, each point's ``k`` pairs of lowest item ``rank``."""
    if not len(item):
        return item, point
    o = np.lexsort((rank[item], point))
    item, point = item[o], point[o]
    starts = np.flatnonzero(np.r_[True, point[1:] != point[:-1]])
    pos = np.arange(len(point)) - np.repeat(starts, np.diff(np.r_[starts, len(point)]))
    keep = pos < k
    return item[keep], point[keep]


class _CellSearch:
    """Cell search for both searchers: their pages go through :func:`candidates_in_cell`."""

    max_items: int

    def search_pages(self, bbox, season: int | None = None) -> Iterator[list[dict]]:  # pragma: no cover
        raise NotImplementedError

    def cell_candidates(self, bbox, lons, lats, season: int | None = None) -> list[list[dict]]:
        """Per point of one cell (``bbox``: the cell's west, south, east, north), its best items."""
        found, _ = candidates_in_cell(self.search_pages(bbox, season), lons, lats, self.max_items)
        return found


def season_ranges(dt: str, n: int) -> list[str]:
    """``dt`` (``start/end``) split into ``n`` equal, consecutive windows as STAC datetime strings."""
    if n <= 1:
        return [dt]
    start, end = _parse_range(dt)
    if start is None or end is None or end <= start:
        raise ValueError(f"stac.seasons = {n} needs a bounded date range (start/end), got {dt!r}")
    step = (end - start) / n
    fmt = lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")  # noqa: E731
    edges = [start + step * k for k in range(n)] + [end]
    return [f"{fmt(edges[k])}/{fmt(edges[k + 1])}" for k in range(n)]


def _parse_range(dt: str) -> tuple[datetime | None, datetime | None]:
    def one(s: str) -> datetime | None:
        s = s.strip()
        if s in ("", ".."):
            return None
        if len(s) == 10:
            s += "T00:00:00Z"
        return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)

    if "/" in dt:
        a, b = dt.split("/", 1)
        start, end = one(a), one(b)
        if end is not None and len(b.strip()) == 10:
            end = end.replace(hour=23, minute=59, second=59)
        return start, end
    d = one(dt)
    return d, d


def _item_time(item: dict) -> datetime:
    props = item["properties"]
    raw = props.get("datetime") or props.get("start_datetime")
    return datetime.fromisoformat(raw.replace("Z", "+00:00")).astimezone(timezone.utc)


def load_items(uri: str) -> list[dict]:
    """Items from a static catalog (``catalog.json``), an ItemCollection or an ``.ndjson`` file."""
    uri = str(uri)
    if uri.endswith(".ndjson"):
        return [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    doc = json.loads(storage.read_text(uri))
    if doc.get("type") == "FeatureCollection":
        return list(doc["features"])
    if doc.get("type") == "Feature":
        return [doc]
    # A static catalog: walk it with pystac (local paths).
    import pystac

    cat = pystac.Catalog.from_file(storage.local_path(uri) if not storage.is_remote(uri) else uri)
    return [it.to_dict(transform_hrefs=True) for it in cat.get_items(recursive=True)]


class StaticSearch(_CellSearch):
    """Search a list of items in memory (static catalogs, ItemCollections, the synthetic archive)."""

    def __init__(self, items: list[dict], collection: str | None, datetime_range: str,
                 max_cloud_cover: float, max_items: int, seasons: int = 1, cell_deg: float = CELL_DEG,
                 page_size: int = PAGE_SIZE):
        self.items = [it for it in items if collection is None or it.get("collection") in (None, collection)]
        self.start, self.end = _parse_range(datetime_range)
        self.seasons = int(seasons)
        self._season_bounds = [_parse_range(r) for r in season_ranges(datetime_range, self.seasons)]
        self.max_cloud = max_cloud_cover
        self.max_items = max_items
        self.cell_deg, self.page_size = float(cell_deg), int(page_size)
        self._shapes = [shape(it["geometry"]) for it in self.items]
        self._tree = None

    def __getstate__(self):  # the tree is rebuilt where it is used
        state = dict(self.__dict__)
        state["_tree"] = None
        return state

    @classmethod
    def from_uri(cls, uri: str, **kw) -> "StaticSearch":
        return cls(load_items(uri), **kw)

    def _usable(self, it: dict, season: int | None) -> bool:
        """Below the cloud limit and inside the date range (or the season's window)."""
        if cloud_cover(it) >= self.max_cloud:
            return False
        start, end = (self.start, self.end) if season is None else self._season_bounds[season]
        t = _item_time(it)
        return not ((start and t < start) or (end and t > end) or (season is not None and end and t == end
                                                                     and season < self.seasons - 1))

    def candidates(self, lon: float, lat: float, season: int | None = None) -> list[dict]:
        p = Point(lon, lat)
        out = [it for it, geom in zip(self.items, self._shapes) if geom.intersects(p) and self._usable(it, season)]
        out.sort(key=rank_key)
        return out[: self.max_items]

    def search_pages(self, bbox, season: int | None = None) -> Iterator[list[dict]]:
        """The usable items intersecting ``bbox``, best first, in pages of ``page_size``."""
        if self._tree is None:
            self._tree = shapely.STRtree(self._shapes)
        hits = self._tree.query(box(*bbox), predicate="intersects")
        found = sorted((self.items[i] for i in hits if self._usable(self.items[i], season)), key=rank_key)
        for k in range(0, len(found), self.page_size):
            yield found[k:k + self.page_size]


class ApiSearch(_CellSearch):
    """Search a STAC API with pystac-client; every request within the job's request budget.

    ``max_concurrent_requests`` / ``max_requests_per_s`` (``None``: no limit) bound the requests
    of everything sharing the budget: this process's threads, or with :meth:`share_budget` on
    the driver of a Ray job, every task the searcher is handed to (:mod:`pw_ray.ingest.budget`).
    Errors are retried ``retries`` times with backoff; 429s wait as the server asks.
    """

    def __init__(self, url: str, collection: str, datetime_range: str, max_cloud_cover: float,
                 max_items: int, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 30.0,
                 sign: bool = False, seasons: int = 1, cell_deg: float = CELL_DEG, page_size: int = PAGE_SIZE,
                 max_concurrent_requests: int | None = None, max_requests_per_s: float | None = None):
        self.url = url
        self.seasons = int(seasons)
        self.season_datetimes = season_ranges(datetime_range, self.seasons)
        self.collection = collection
        self.datetime = datetime_range
        self.max_cloud = max_cloud_cover
        self.max_items = max_items
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.cell_deg, self.page_size = float(cell_deg), int(page_size)
        # A lease outlives any request that is still on the wire (connect + read timeouts).
        self.limits = BudgetLimits(max_concurrent_requests, max_requests_per_s, lease_s=max(60.0, 4 * timeout_s))
        #: Cell searches one task runs at once (they wait on the network); never more than the
        #: budget's concurrency, which bounds them all.
        self.search_threads = min(SEARCH_THREADS, max_concurrent_requests or SEARCH_THREADS)
        self._client = None
        self._lock = threading.RLock()
        self._local = threading.local()  # one HTTP session per thread: sessions are not shared
        self._adapters: list[BudgetedAdapter] = []
        self._budget = None

    @property
    def max_concurrent_requests(self) -> int | None:
        return self.limits.max_concurrent

    def __getstate__(self):  # clients hold sessions: rebuild them in each Ray worker
        state = dict(self.__dict__)
        state.update(_client=None, _lock=None, _local=None, _adapters=[])
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock, self._local = threading.RLock(), threading.local()

    @property
    def budget(self):
        """The request budget: the job's (after :meth:`share_budget`) or this process's own."""
        with self._lock:
            if self._budget is None:
                self._budget = LocalBudget(self.limits)
            return self._budget

    def share_budget(self):
        """One budget for every copy of this searcher in the Ray job (a named actor; a process-
        local budget without Ray). Call on the driver before handing the searcher to tasks."""
        if isinstance(self._budget, RayBudget):  # shared already (an earlier set of this job)
            return self._budget
        self._budget = shared_budget(self.url, self.limits)
        self._client, self._local, self._adapters = None, threading.local(), []
        return self._budget

    @property
    def requests_sent(self) -> int:
        """HTTP requests this process sent through the budget (retries included)."""
        return sum(a.counts["sent"] for a in self._adapters)

    def _io(self):
        """This thread's ``StacApiIO``: its own session, every request through the budget."""
        io = getattr(self._local, "io", None)
        if io is None:
            from pystac_client.stac_api_io import StacApiIO

            io = StacApiIO(max_retries=None, timeout=self.timeout_s)
            adapter = BudgetedAdapter(self.budget, retries=self.retries, backoff_s=self.backoff_s)
            mount(io.session, adapter)
            with self._lock:
                self._adapters.append(adapter)
            self._local.io = io
        return io

    @property
    def client(self):
        """The process's pystac-client ``Client`` (opened once: one landing-page request)."""
        with self._lock:
            if self._client is None:
                from pystac_client import Client

                # Client.open calls stac_io.update(timeout=...), which resets the timeout to its
                # own argument (None: wait forever): pass it here too.
                client = Client.open(self.url, stac_io=self._io(), timeout=self.timeout_s)
                client.add_conforms_to("SORT")
                client.add_conforms_to("QUERY")
                client.add_conforms_to("ITEM_SEARCH")
                self._client = client
            return self._client

    def _search(self, **params):
        """An ``ItemSearch`` at the landing page's search link. The link's own (absolute) href is
        used as it stands: ``Client.search`` resolves it through the root link, which costs a
        second GET of the landing page in every process when the two URLs differ by a slash."""
        from pystac_client import ItemSearch

        client = self.client
        link = client.get_search_link()
        target = getattr(link, "target", None)
        url = target if isinstance(target, str) and "://" in target else client._search_href()
        return ItemSearch(url, method="POST", client=client, stac_io=self._io(), modifier=client.modifier, **params)

    def candidates(self, lon: float, lat: float, season: int | None = None) -> list[dict]:
        search = self._search(
            collections=[self.collection],
            intersects={"type": "Point", "coordinates": [lon, lat]},
            datetime=self.datetime if season is None else self.season_datetimes[season],
            query={"eo:cloud_cover": {"lt": self.max_cloud}},
            sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"}],
            max_items=self.max_items,
        )
        items = list(search.items_as_dicts())
        # Servers without the query/sort extensions ignore them: enforce both here too.
        items = [it for it in items if cloud_cover(it) < self.max_cloud]
        items.sort(key=rank_key)
        return items[: self.max_items]

    def search_pages(self, bbox, season: int | None = None) -> Iterator[list[dict]]:
        """One paged search of ``bbox``: each page read (one request) only when asked for."""
        search = self._search(
            collections=[self.collection],
            bbox=[float(v) for v in bbox],
            datetime=self.datetime if season is None else self.season_datetimes[season],
            query={"eo:cloud_cover": {"lt": self.max_cloud}},
            sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"}],
            limit=self.page_size,
        )
        for page in search.pages_as_dicts():
            # Servers without the query extension ignore it: the limit holds here too.
            yield [it for it in page.get("features", []) if cloud_cover(it) < self.max_cloud]


def stac_lineage(stac) -> dict:
    """What in a config's ``stac`` section decides the scenes a search returns, in the config's
    names (``{"datetime": …, "max_cloud_cover": …}``; the synthetic archive's spec for ``synthetic``).
    Ingest records it in the index's lineage, so a rerun can say ``stac.datetime changed``."""
    keys = ("kind", "url", "catalog", "collection", "datetime", "max_cloud_cover", "max_items", "seasons")
    out = {k: getattr(stac, k) for k in keys}
    if stac.kind == "synthetic":  # the archive is a function of its spec
        out["synthetic"] = stac.synthetic.model_dump(mode="json")
    return out


def searcher_for(stac, archive_items_uri: str | None = None) -> SceneSearch:
    """The searcher a config's ``stac`` section asks for (its ``lineage``: :func:`stac_lineage`)."""
    kw = dict(collection=stac.collection, datetime_range=stac.datetime,
              max_cloud_cover=stac.max_cloud_cover, max_items=stac.max_items, seasons=stac.seasons,
              cell_deg=stac.search_cell_deg, page_size=stac.page_size)
    if stac.kind == "synthetic":
        if archive_items_uri is None:
            raise ValueError("the synthetic source needs the archive's items file")
        searcher = StaticSearch.from_uri(archive_items_uri, **kw)
    elif stac.kind == "static":
        searcher = StaticSearch.from_uri(stac.url, **kw)
    else:
        searcher = ApiSearch(stac.url, retries=stac.retries, backoff_s=stac.backoff_s, timeout_s=stac.timeout_s,
                             max_concurrent_requests=stac.max_concurrent_requests,
                             max_requests_per_s=stac.max_requests_per_s, **kw)
    searcher.lineage = stac_lineage(stac)
    return searcher


def footprints(items: list[dict]) -> list:
    return [shape(it["geometry"]) for it in items]


__all__ = ["ApiSearch", "CELL_DEG", "PAGE_SIZE", "StaticSearch", "SceneSearch", "candidates_in_cell", "cell_bbox",
           "footprints", "load_items", "rank_key", "search_cells", "season_ranges", "searcher_for"]
