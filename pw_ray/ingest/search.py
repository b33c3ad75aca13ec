"""Scene search: the best Sentinel-2 items over a point, from a STAC API or a local catalog.

Both searchers return item dicts sorted by ``eo:cloud_cover`` ascending (best first),
filtered by the date range and the cloud limit of the config's ``stac`` section.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Protocol

from shapely.geometry import Point, shape

from pw_ray import storage

log = logging.getLogger(__name__)


class SceneSearch(Protocol):
    #: Date windows per point (``stac.seasons``): the date range split into this many equal parts.
    seasons: int

    def candidates(self, lon: float, lat: float, season: int | None = None) -> list[dict]: ...


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


class StaticSearch:
    """Search a list of items in memory (static catalogs, ItemCollections, the synthetic archive)."""

    def __init__(self, items: list[dict], collection: str | None, datetime_range: str,
                 max_cloud_cover: float, max_items: int, seasons: int = 1):
        self.items = [it for it in items if collection is None or it.get("collection") in (None, collection)]
        self.start, self.end = _parse_range(datetime_range)
        self.seasons = int(seasons)
        self._season_bounds = [_parse_range(r) for r in season_ranges(datetime_range, self.seasons)]
        self.max_cloud = max_cloud_cover
        self.max_items = max_items
        self._shapes = [shape(it["geometry"]) for it in self.items]

    @classmethod
    def from_uri(cls, uri: str, **kw) -> "StaticSearch":
        return cls(load_items(uri), **kw)

    def candidates(self, lon: float, lat: float, season: int | None = None) -> list[dict]:
        p = Point(lon, lat)
        out = []
        start, end = (self.start, self.end) if season is None else self._season_bounds[season]
        for it, geom in zip(self.items, self._shapes):
            if not geom.contains(p):
                continue
            cc = it["properties"].get("eo:cloud_cover", 0.0)
            if cc >= self.max_cloud:
                continue
            t = _item_time(it)
            if (start and t < start) or (end and t > end) or (season is not None and end and t == end
                                                                and season < self.seasons - 1):
                continue
            out.append(it)
        out.sort(key=lambda it: (it["properties"].get("eo:cloud_cover", 0.0), it["id"]))
        return out[: self.max_items]


class ApiSearch:
    """Search a STAC API with pystac-client (retries 429/5xx with backoff)."""

    def __init__(self, url: str, collection: str, datetime_range: str, max_cloud_cover: float,
                 max_items: int, retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 30.0,
                 sign: bool = False, seasons: int = 1):
        self.url = url
        self.seasons = int(seasons)
        self.season_datetimes = season_ranges(datetime_range, self.seasons)
        self.collection = collection
        self.datetime = datetime_range
        self.max_cloud = max_cloud_cover
        self.max_items = max_items
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self._client = None

    def __getstate__(self):  # clients hold sessions: rebuild them in each Ray worker
        state = dict(self.__dict__)
        state["_client"] = None
        return state

    @property
    def client(self):
        if self._client is None:
            from pystac_client import Client
            from pystac_client.stac_api_io import StacApiIO
            from urllib3 import Retry

            retry = Retry(total=self.retries, backoff_factor=self.backoff_s, backoff_jitter=self.backoff_s,
                          status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
                          respect_retry_after_header=True)
            io = StacApiIO(max_retries=retry, timeout=self.timeout_s)
            # Client.open calls stac_io.update(timeout=...), which resets the timeout to its own
            # argument (None: wait forever): pass it here too.
            self._client = Client.open(self.url, stac_io=io, timeout=self.timeout_s)
            self._client.add_conforms_to("SORT")
            self._client.add_conforms_to("QUERY")
            self._client.add_conforms_to("ITEM_SEARCH")
        return self._client

    def candidates(self, lon: float, lat: float, season: int | None = None) -> list[dict]:
        search = self.client.search(
            collections=[self.collection],
            intersects={"type": "Point", "coordinates": [lon, lat]},
            datetime=self.datetime if season is None else self.season_datetimes[season],
            query={"eo:cloud_cover": {"lt": self.max_cloud}},
            sortby=[{"field": "properties.eo:cloud_cover", "direction": "asc"}],
            max_items=self.max_items,
        )
        items = list(search.items_as_dicts())
        # Servers without the query/sort extensions ignore them: enforce both here too.
        items = [it for it in items if it["properties"].get("eo:cloud_cover", 0.0) < self.max_cloud]
        items.sort(key=lambda it: (it["properties"].get("eo:cloud_cover", 0.0), it["id"]))
        return items[: self.max_items]


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
              max_cloud_cover=stac.max_cloud_cover, max_items=stac.max_items, seasons=stac.seasons)
    if stac.kind == "synthetic":
        if archive_items_uri is None:
            raise ValueError("the synthetic source needs the archive's items file")
        searcher = StaticSearch.from_uri(archive_items_uri, **kw)
    elif stac.kind == "static":
        searcher = StaticSearch.from_uri(stac.url, **kw)
    else:
        searcher = ApiSearch(stac.url, retries=stac.retries, backoff_s=stac.backoff_s, timeout_s=stac.timeout_s, **kw)
    searcher.lineage = stac_lineage(stac)
    return searcher


def footprints(items: list[dict]) -> list:
    return [shape(it["geometry"]) for it in items]


__all__ = ["ApiSearch", "StaticSearch", "SceneSearch", "load_items", "season_ranges", "searcher_for", "footprints"]
