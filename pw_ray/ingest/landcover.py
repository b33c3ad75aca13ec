"""Land cover at points and over chips, from one raster or from a STAC collection of tiles.

Two kinds of source, one interface (:class:`LandcoverSource`):

* :class:`RasterLandcover` — one raster, path or URI (local, ``http(s)://`` through
  ``/vsicurl/``, ``s3://``, ``gs://``), e.g. a WorldCover mosaic or VRT.
* :class:`StacLandcover` — the items of a STAC collection (e.g. ``esa-worldcover`` on Planetary
  Computer, asset ``map``), found by bbox search in a STAC API (pystac-client) or in a local
  static catalog / ItemCollection / ``.ndjson``; the synthetic archive's ``synthetic-landcover``
  collection goes this way too. Lookups are cached per :attr:`StacLandcover.cell_deg` cell, so a
  chunk of chips searches once per cell, not once per chip; hrefs are signed with the catalog
  adapter just before each read (Planetary Computer tokens expire).

Reading never loads a whole raster: points are sampled one pixel each, chips are warped onto
their footprint in the scene's grid (its CRS, 10 m) with nearest resampling, whatever the
raster's own CRS (WorldCover tiles are EPSG:4326, 3° × 3°, 1/12000° pixels). A raster that
already lies on the scene's grid (same CRS and pixel size, a whole-pixel offset: the synthetic
archive's land cover, or a product gridded in the scenes' UTM zones) is read with plain windows
instead: the same pixels without GDAL's warper (land cover of 767 chips: 1.06 → 0.38 s). Where several
tiles cover a chip they are mosaicked: the newest item first, then by id; a pixel takes the
first tile with data there (code 0 is no data).

The sources are plain dataclasses of strings and numbers: they pickle into Ray tasks, and each
process opens its own STAC client and caches on first use.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.transform import Affine, rowcol
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform as warp_transform
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from pw_ray.ingest import chips as C
from pw_ray.ingest.catalogs import adapter_for

log = logging.getLogger(__name__)

#: ESA WorldCover v100/v200 classes (short names), in the column order of ``lc_fractions``.
WORLDCOVER_CLASSES: tuple[str, ...] = (
    "tree", "shrub", "grass", "crop", "built", "bare", "snow", "water", "wetland", "mangrove", "moss",
)
#: Their WorldCover codes: tree cover 10, shrubland 20, grassland 30, cropland 40, built-up 50,
#: bare / sparse vegetation 60, snow and ice 70, permanent water 80, herbaceous wetland 90,
#: mangroves 95, moss and lichen 100; 0 is no data.
WORLDCOVER_CODES: dict[str, int] = dict(zip(WORLDCOVER_CLASSES, (10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)))

#: The embedded synthetic archive's land-cover collection (``pw_ray.synthetic`` writes it under
#: this id); the default land cover of ``stac.kind: synthetic``.
SYNTHETIC_LANDCOVER_COLLECTION = "synthetic-landcover"

#: Error allowed to GDAL's approximate coordinate transformer when warping land cover, in source pixels.
WARP_TOLERANCE_PX = 0.01

BBox = tuple[float, float, float, float]  # west, south, east, north in degrees


def _bbox_intersects(a: BBox, b: BBox) -> bool:
    """Whether two lon/lat boxes overlap; a box with west > east crosses the antimeridian."""

    def parts(box):
        w, s, e, n = box
        return [(w, s, 180.0, n), (-180.0, s, e, n)] if w > e else [box]

    return any(p[0] <= q[2] and q[0] <= p[2] and p[1] <= q[3] and q[1] <= p[3]
               for p in parts(a) for q in parts(b))


@dataclass
class LandcoverSource:
    """Land-cover classes at points and class fractions over chips, in the order of :attr:`names`.

    Subclasses say which rasters may cover a lon/lat box (:meth:`_rasters`); reading is shared.
    """

    codes: tuple[int, ...] = tuple(WORLDCOVER_CODES.values())
    names: tuple[str, ...] = WORLDCOVER_CLASSES
    retries: int = 3
    backoff_s: float = 0.5

    def __post_init__(self):
        self.codes, self.names = tuple(int(c) for c in self.codes), tuple(self.names)
        if len(self.codes) != len(self.names):
            raise ValueError(f"land cover: {len(self.codes)} codes but {len(self.names)} class names")

    # ------------------------------------------------------------------ what subclasses provide
    def _rasters(self, boxes: list[BBox]) -> list[tuple[str, list[int]]]:
        """(href to open, indices of the boxes it may cover) in mosaic priority order."""
        raise NotImplementedError

    def _sign(self, href: str) -> str:
        return href

    def describe(self) -> str:
        raise NotImplementedError

    # ------------------------------------------------------------------ reading
    def _read(self, href: str, fn):
        """``fn(dataset)`` on the raster at ``href``, signed now, I/O errors retried."""
        signed = self._sign(href)

        def run():
            with C.open_raster(signed) as ds:
                return fn(ds)

        return C.retrying(run, signed, retries=self.retries, backoff_s=self.backoff_s)

    def classes_at(self, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
        """Class name at each point → (N,) object array; ``None`` where no raster has data.

        ``lons``, ``lats``: (N,) degrees. Each point costs one pixel read; points are grouped by
        raster so each raster is opened once.
        """
        lons, lats = np.asarray(lons, dtype=np.float64), np.asarray(lats, dtype=np.float64)
        out = np.full(len(lons), None, dtype=object)
        if not len(lons):
            return out
        name_of = dict(zip(self.codes, self.names))
        boxes = [(float(x), float(y), float(x), float(y)) for x, y in zip(lons, lats)]

        def sample(ds, idx: np.ndarray) -> np.ndarray:
            codes = np.zeros(len(idx), dtype=np.int64)
            w, s, e, n = transform_bounds(ds.crs, "EPSG:4326", *ds.bounds) if ds.crs else ds.bounds
            near = idx[(lons[idx] >= w) & (lons[idx] <= e) & (lats[idx] >= s) & (lats[idx] <= n)]
            if not len(near):  # only project points near the raster: far ones fail in UTM
                return codes
            xs, ys = warp_transform("EPSG:4326", ds.crs, lons[near].tolist(), lats[near].tolist())
            rows, cols = (np.atleast_1d(np.asarray(v)) for v in rowcol(ds.transform, xs, ys))
            pos = {int(i): k for k, i in enumerate(idx)}
            for i, r, c in zip(near, rows, cols):
                if 0 <= r < ds.height and 0 <= c < ds.width:
                    codes[pos[int(i)]] = int(ds.read(1, window=Window(int(c), int(r), 1, 1))[0, 0])
            return codes

        with C.gdal_env():
            for href, which in self._rasters(boxes):
                todo = np.array([i for i in which if out[i] is None], dtype=np.int64)
                if not len(todo):
                    continue
                codes = self._read(href, lambda ds: sample(ds, todo))
                for i, code in zip(todo, codes):
                    out[i] = name_of.get(int(code))
        return out

    def __call__(self, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
        """``plan.label_points`` calls a land-cover source like a function: see :meth:`classes_at`."""
        return self.classes_at(lons, lats)

    def fractions(self, grid: C.SceneGrid, windows: list[tuple[int, int]], size_px: int) -> np.ndarray:
        """Share of each class in each chip → (N, K) float32, K = ``len(self.codes)``.

        ``grid``: the scene's grid (CRS, origin, resolution, usually 10 m); ``windows``:
        (row_off, col_off) of each ``size_px`` chip in it. The land cover is warped onto each chip's
        pixels (nearest), or read with plain windows where it lies on the scene's grid
        (:func:`grid_offset`); shares are of all ``size_px²`` pixels, so no-data lowers them.
        """
        out = np.zeros((len(windows), len(self.codes)), dtype=np.float32)
        if not windows:
            return out
        crs = CRS.from_epsg(grid.epsg)
        transform = Affine(grid.res, 0.0, grid.x0, 0.0, -grid.res, grid.y0)
        boxes = []
        for r, c in windows:
            x0, y1 = grid.x0 + c * grid.res, grid.y0 - r * grid.res
            x1, y0 = x0 + size_px * grid.res, y1 - size_px * grid.res
            boxes.append(tuple(transform_bounds(crs, "EPSG:4326", x0, y0, x1, y1, densify_pts=8)))
        mosaic = np.zeros((len(windows), size_px, size_px), dtype=np.int64)

        def read(ds, which: list[int]) -> list[np.ndarray]:
            wins = [windows[i] for i in which]
            shift = grid_offset(ds, crs, transform)
            if shift is not None:  # the raster is on the scene's grid: plain window reads
                return C.read_grouped(wins, size_px, lambda r0, c0, h, w: _read_on_grid(
                    ds, r0 + shift[0], c0 + shift[1], h, w))
            # The raster as it would be on the scene's grid; only the chips' pixels are warped.
            # GDAL's approximate transformer within 1/100 source pixel (its default 1/8 could
            # move a class edge; 0, "exact", fails to build the VRT in rasterio 1.4).
            with WarpedVRT(ds, crs=crs, transform=transform, width=grid.width, height=grid.height,
                           resampling=Resampling.nearest, nodata=0, tolerance=WARP_TOLERANCE_PX) as vrt:
                return C.read_grouped(wins, size_px, lambda r0, c0, h, w: vrt.read(1, window=Window(c0, r0, w, h)))

        with C.gdal_env():
            for href, which in self._rasters(boxes):
                which = [i for i in which if (mosaic[i] == 0).any()]
                if not which:
                    continue
                for i, block in zip(which, self._read(href, lambda ds: read(ds, which))):
                    empty = mosaic[i] == 0
                    mosaic[i][empty] = block[empty]
        flat = mosaic.reshape(len(windows), -1)
        codes = np.asarray(self.codes)
        if flat.min(initial=0) >= 0 and codes.min() >= 0:  # one histogram per chip
            top = max(int(codes.max()), int(flat.max(initial=0))) + 1
            for i, row in enumerate(flat):
                out[i] = np.bincount(row, minlength=top)[codes] / float(row.size)
        else:
            for j, code in enumerate(self.codes):
                out[:, j] = (mosaic == code).mean(axis=(1, 2))
        return out


def grid_offset(ds, crs: CRS, transform: Affine) -> tuple[int, int] | None:
    """(row, col) of the grid ``(crs, transform)``'s origin in ``ds``'s pixels when ``ds`` lies on
    that grid: same CRS, same north-up pixel size, origins a whole number of pixels apart. Then a
    window read gives what warping with nearest resampling would, without the warper; else ``None``.
    """
    t = ds.transform
    if ds.crs is None or t.b or t.d or transform.b or transform.d:
        return None
    if not (math.isclose(t.a, transform.a, rel_tol=1e-9) and math.isclose(t.e, transform.e, rel_tol=1e-9)):
        return None
    col, row = (transform.c - t.c) / t.a, (transform.f - t.f) / t.e
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    if ds.crs != crs:  # last: comparing CRSs costs the most
        return None
    return int(round(row)), int(round(col))


def _read_on_grid(ds, r0: int, c0: int, h: int, w: int) -> np.ndarray:
    """Band 1 at rows ``r0:r0+h``, cols ``c0:c0+w`` of ``ds``; 0 off the raster and where ``ds``
    has its no-data value (as the warper leaves such pixels)."""
    out = np.zeros((h, w), dtype=ds.dtypes[0])
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r0 + h, ds.height), min(c0 + w, ds.width)
    if rr1 > rr0 and cc1 > cc0:
        part = ds.read(1, window=Window(cc0, rr0, cc1 - cc0, rr1 - rr0))
        if ds.nodata is not None:
            part[part == ds.nodata] = 0
        out[rr0 - r0:rr1 - r0, cc0 - c0:cc1 - c0] = part
    return out

@dataclass
class RasterLandcover(LandcoverSource):
    """One land-cover raster (path or URI) in any CRS; points and chips off it have no data."""

    href: str = ""

    def __post_init__(self):
        super().__post_init__()
        if not self.href:
            raise ValueError("RasterLandcover needs the raster's path or URI (href)")

    def _rasters(self, boxes):
        return [(self.href, list(range(len(boxes))))]

    def describe(self) -> str:
        return f"land-cover raster {self.href}"


@dataclass
class StacLandcover(LandcoverSource):
    """The items of a STAC collection (asset :attr:`asset`), searched by bbox and mosaicked.

    ``kind`` ``api``: ``url`` is a STAC API searched with pystac-client (retries as
    ``search.ApiSearch``); ``static``: ``url`` is a ``catalog.json``, ItemCollection or
    ``.ndjson`` read once per process. ``catalog`` names the adapter that signs hrefs.
    """

    collection: str = ""
    url: str = ""
    kind: str = "api"
    asset: str = "map"
    datetime: str | None = None
    catalog: str = "planetary-computer"
    timeout_s: float = 30.0
    #: Side of the lon/lat cells whose item lookups are cached, degrees.
    cell_deg: float = 1.0
    _cells: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _static: list | None = field(default=None, init=False, repr=False, compare=False)
    _search: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        super().__post_init__()
        if not self.collection or not self.url:
            raise ValueError("StacLandcover needs a collection id and a STAC API URL or catalog path (url)")
        if self.kind not in ("api", "static"):
            raise ValueError(f"StacLandcover kind must be 'api' or 'static', got {self.kind!r}")
        adapter_for(self.catalog)  # fail now on an unknown catalog name

    def __getstate__(self):  # caches and clients stay in the process that made them
        state = dict(self.__dict__)
        state.update(_cells={}, _static=None, _search=None)
        return state

    def describe(self) -> str:
        return f"STAC collection {self.collection!r} (asset {self.asset!r}) at {self.url}"

    def _sign(self, href: str) -> str:
        return adapter_for(self.catalog).sign(href)

    # ------------------------------------------------------------------ item lookup
    def _static_items(self) -> list[dict]:
        if self._static is None:
            from pw_ray.ingest.search import load_items

            self._static = [it for it in load_items(self.url) if it.get("collection") in (None, self.collection)]
            log.info("land cover: %d items of %s in %s", len(self._static), self.collection, self.url)
        return self._static

    def _api_items(self, box: BBox) -> list[dict]:
        if self._search is None:
            from pw_ray.ingest.search import ApiSearch

            # ApiSearch's client: the same retries (429/5xx, Retry-After) and timeout as scene search.
            self._search = ApiSearch(self.url, self.collection, "..", 100.0, 1, retries=self.retries,
                                     backoff_s=self.backoff_s, timeout_s=self.timeout_s)
        kw = {"datetime": self.datetime} if self.datetime else {}
        search = self._search.client.search(collections=[self.collection], bbox=list(box), **kw)
        return list(search.items_as_dicts())

    def _cell_items(self, cell: tuple[int, int]) -> list[dict]:
        if cell not in self._cells:
            d = self.cell_deg
            box = (cell[0] * d, cell[1] * d, min(180.0, (cell[0] + 1) * d), min(90.0, (cell[1] + 1) * d))
            if self.kind == "static":
                found = [it for it in self._static_items() if _bbox_intersects(_item_bbox(it), box)]
            else:
                found = self._api_items(box)
            self._cells[cell] = found
        return self._cells[cell]

    def items_for(self, box: BBox) -> list[dict]:
        """Items whose bbox meets ``box`` (lon/lat degrees), in mosaic priority order."""
        w, s, e, n = box
        d = self.cell_deg
        spans = [(w, e)] if w <= e else [(w, 180.0), (-180.0, e)]
        found: dict[str, dict] = {}
        for lo, hi in spans:
            for i in range(math.floor(lo / d), math.floor(min(hi, 180.0 - 1e-9) / d) + 1):
                for j in range(math.floor(s / d), math.floor(min(n, 90.0 - 1e-9) / d) + 1):
                    for it in self._cell_items((i, j)):
                        if it["id"] not in found and _bbox_intersects(_item_bbox(it), box):
                            found[it["id"]] = it
        return _priority(list(found.values()))

    def _rasters(self, boxes):
        per_item: dict[str, list[int]] = {}
        items: dict[str, dict] = {}
        for k, box in enumerate(boxes):
            for it in self.items_for(box):
                per_item.setdefault(it["id"], []).append(k)
                items[it["id"]] = it
        out = []
        for it in _priority(list(items.values())):
            asset = it.get("assets", {}).get(self.asset)
            if asset is None:
                raise KeyError(f"land-cover item {it['id']!r} of {self.collection!r} has no asset {self.asset!r} "
                               f"(assets: {sorted(it.get('assets', {}))}); set stac.landcover.asset")
            out.append((asset["href"], per_item[it["id"]]))
        return out


def _item_bbox(item: dict) -> BBox:
    if item.get("bbox"):
        b = item["bbox"]
        return (b[0], b[1], b[3], b[4]) if len(b) == 6 else tuple(b)
    from shapely.geometry import shape

    return shape(item["geometry"]).bounds


def _priority(items: list[dict]) -> list[dict]:
    """Mosaic order: newest item first, then by id (deterministic whatever the search order)."""
    def when(it):
        p = it.get("properties", {})
        return p.get("datetime") or p.get("end_datetime") or p.get("start_datetime") or ""

    return sorted(sorted(items, key=lambda it: it["id"]), key=when, reverse=True)


def landcover_source(stac, synthetic_items: str | None = None) -> LandcoverSource | None:
    """The land-cover source a config's ``stac`` section asks for (``None``: no land cover).

    ``stac.landcover`` a string: one raster. An object: a STAC collection, searched at its
    ``url`` (default ``stac.url``; for ``stac.kind: synthetic`` the archive's items,
    ``synthetic_items``). Unset: the synthetic archive's ``synthetic-landcover`` collection when
    ``stac.kind`` is ``synthetic``, no land cover otherwise.
    """
    lc = stac.landcover
    common = dict(retries=stac.retries, backoff_s=stac.backoff_s)
    if lc is None and stac.kind == "synthetic":
        from pw_ray.config import LandcoverCollection

        lc = LandcoverCollection(collection=SYNTHETIC_LANDCOVER_COLLECTION)
    if lc is None:
        return None
    if isinstance(lc, str):
        src = RasterLandcover(href=lc, **common)
        src.lineage = _lineage(stac)
        return src
    if lc.url:
        url, kind = lc.url, lc.kind or _kind_of_url(lc.url)
    elif stac.kind == "synthetic":
        if synthetic_items is None:
            raise ValueError("the synthetic land cover needs the archive's land-cover items file")
        url, kind = synthetic_items, "static"
    else:
        url, kind = stac.url, lc.kind or stac.kind
    src = StacLandcover(collection=lc.collection, url=str(url), kind=kind, asset=lc.asset, datetime=lc.datetime,
                        catalog=lc.catalog or stac.catalog, timeout_s=stac.timeout_s, **common)
    src.lineage = _lineage(stac)
    return src


def _lineage(stac):
    """What of the config decides a source's classes (``stac.landcover``; the archive for synthetic)."""
    return stac.landcover.model_dump(mode="json") if hasattr(stac.landcover, "model_dump") else stac.landcover


def _kind_of_url(url: str) -> str:
    """``static`` for a JSON / NDJSON file, ``api`` for anything else (a STAC API root)."""
    return "static" if url.split("?")[0].endswith((".json", ".geojson", ".ndjson")) else "api"


__all__ = ["SYNTHETIC_LANDCOVER_COLLECTION", "WORLDCOVER_CLASSES", "WORLDCOVER_CODES", "LandcoverSource",
           "RasterLandcover", "StacLandcover", "landcover_source"]
