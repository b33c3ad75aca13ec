"""Pixels: chip windows in a scene's 10 m grid, and multi-band chip reading with rasterio.

All reads of one scene go through :func:`read_scene_chips`, which opens each asset once and
reads every chip window of that scene from it, so GDAL's block cache decodes each COG block
once for all the chips that need it. 20 m and 60 m bands are resampled onto the 10 m chip grid
(bilinear by default, nearest for SCL), no data kept apart from data (:data:`NODATA_RULE`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from pw_ray import bands as B
from pw_ray.ingest.catalogs import CatalogAdapter, redact
from pw_ray.ingest.failures import PERMANENT, failure_kind

log = logging.getLogger(__name__)

#: GDAL settings for cloud reads, used by every reader (see odc-stac / stackstac).
GDAL_CLOUD_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",  # no directory listing per open
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "GDAL_HTTP_MAX_RETRY": "5",
    "GDAL_HTTP_RETRY_DELAY": "0.5",
    "GDAL_HTTP_TIMEOUT": "30",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff",
    "CPL_VSIL_CURL_CACHE_SIZE": str(128 * 1024 * 1024),
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 1024 * 1024),
    # Decoded-block cache, a scene's chips share it. In BYTES: rasterio passes an integer
    # GDAL_CACHEMAX to GDALSetCacheMax64 (bytes), so the GDAL habit of writing "256" (MB) in an
    # Env would leave a 256-byte cache and every window read would decode its blocks again.
    "GDAL_CACHEMAX": 256 * 2**20,
    "GDAL_NUM_THREADS": "1",  # Ray runs one reader per core
}


def cachemax_bytes(value) -> int:
    """``GDAL_CACHEMAX`` as bytes, from GDAL's own spellings.

    GDAL reads the option as megabytes below 100,000, as bytes above, or as ``"N%"`` of the
    physical memory; rasterio's ``Env`` takes an integer and hands it to ``GDALSetCacheMax64``,
    which counts bytes. This converts an operator's ``GDAL_CACHEMAX=512`` (MB) correctly.
    """
    text = str(value).strip()
    try:
        if text.endswith("%"):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            return int(total * float(text[:-1]) / 100)
        n = int(float(text))
    except ValueError as err:
        raise ValueError(f"GDAL_CACHEMAX: cannot read {value!r} as MB, bytes or a percentage") from err
    return n * 2**20 if n < 100_000 else n


@contextmanager
def gdal_env(**overrides):
    """The one GDAL environment every reader uses.

    Precedence: ``overrides`` > the process environment (e.g. ``GDAL_HTTP_TIMEOUT`` set in a Ray
    ``runtime_env``) > :data:`GDAL_CLOUD_OPTIONS`. ``rasterio.Env`` options beat environment
    variables inside GDAL, so without this an operator could not tune a default at all.
    """
    opts = {k: os.environ.get(k, v) for k, v in GDAL_CLOUD_OPTIONS.items()}
    opts.update(overrides)
    opts["GDAL_CACHEMAX"] = cachemax_bytes(opts["GDAL_CACHEMAX"])
    with rasterio.Env(**opts):
        yield


@dataclass(frozen=True)
class SceneGrid:
    """A scene's 10 m grid: CRS, affine origin and shape."""

    epsg: int
    x0: float
    y0: float
    height: int
    width: int
    res: float = 10.0


def scene_grid(item: dict, adapter: CatalogAdapter, res: float = 10.0) -> SceneGrid:
    """The 10 m grid of an item, from the proj fields of its 10 m asset (B02)."""
    props = item["properties"]
    asset = item["assets"][adapter.asset_key(item, "B02")]
    epsg = asset.get("proj:epsg") or props.get("proj:epsg")
    if epsg is None and str(props.get("proj:code", "")).startswith("EPSG:"):
        epsg = int(props["proj:code"].split(":")[1])
    tr = asset.get("proj:transform") or props.get("proj:transform")
    shp = asset.get("proj:shape") or props.get("proj:shape")
    if epsg is None or tr is None or shp is None:
        raise ValueError(f"item {item.get('id')!r} lacks proj:epsg/proj:transform/proj:shape on its B02 asset")
    asset_res = float(tr[0])
    scale = asset_res / res
    return SceneGrid(int(epsg), float(tr[2]), float(tr[5]), int(round(shp[0] * scale)),
                     int(round(shp[1] * scale)), res)


def chip_window(grid: SceneGrid, lon: float, lat: float, size_px: int) -> tuple[int, int] | None:
    """(row_off, col_off) of a ``size_px`` chip centred on a point, in the 10 m grid.

    The chip is shifted inside the scene when the point is near an edge; ``None`` when the
    point is outside the scene or the scene is smaller than a chip.
    """
    return chip_windows(grid, [lon], [lat], size_px)[0]


def chip_windows(grid: SceneGrid, lons, lats, size_px: int) -> list[tuple[int, int] | None]:
    """:func:`chip_window` of many points of one scene, with one coordinate transformation."""
    lons = np.asarray(lons, dtype=np.float64)
    if not lons.size:
        return []
    xs, ys = warp_transform("EPSG:4326", f"EPSG:{grid.epsg}", lons.tolist(), np.asarray(lats, np.float64).tolist())
    col = (np.asarray(xs) - grid.x0) / grid.res
    row = (grid.y0 - np.asarray(ys)) / grid.res
    if grid.height < size_px or grid.width < size_px:
        return [None] * lons.size
    inside = (0 <= row) & (row < grid.height) & (0 <= col) & (col < grid.width)
    r = np.clip(np.round(row - size_px / 2), 0, grid.height - size_px).astype(np.int64)
    c = np.clip(np.round(col - size_px / 2), 0, grid.width - size_px).astype(np.int64)
    return [(int(a), int(b)) if ok else None for a, b, ok in zip(r, c, inside)]


def _vsi_path(href: str) -> str | None:
    """The GDAL virtual path of a network href (``None`` for local files)."""
    if href.startswith(("http://", "https://")):
        return "/vsicurl/" + href
    if href.startswith("s3://"):
        return "/vsis3/" + href[5:]
    if href.startswith(("gs://", "gcs://")):
        return "/vsigs/" + href.split("://", 1)[1]
    return None


def retrying(fn, what: str, retries: int = 3, backoff_s: float = 0.5):
    """Run ``fn``, retrying I/O errors with exponential backoff and jitter (not the permanent
    ones, :func:`pw_ray.ingest.failures.failure_kind`: a corrupt or missing file).

    GDAL's network file systems cache what they learnt about a URL, failures included: after
    an open that failed (a dropped connection, a timeout once GDAL's own retries are spent) the
    URL "does not exist" until the process ends, so a plain retry never reaches the server.
    Retries therefore run with ``CPL_VSIL_CURL_NON_CACHED`` set to that URL, which bypasses and
    refreshes its cache entries.
    """
    vsi = _vsi_path(what)
    for attempt in range(retries + 1):
        try:
            if attempt and vsi:
                with rasterio.Env(CPL_VSIL_CURL_NON_CACHED=vsi):
                    return fn()
            return fn()
        except (rasterio.errors.RasterioIOError, OSError) as err:
            if failure_kind(err) == PERMANENT:  # a corrupt or missing file stays so: say which, no retry
                log.warning("read of %s failed, not retried (%s)", redact(what), redact(err))
                raise
            if attempt == retries:
                raise
            delay = backoff_s * (2 ** attempt) * (1 + random.random())
            log.warning("read of %s failed (%s); retry %d/%d in %.1fs", redact(what), redact(err), attempt + 1,
                        retries, delay)
            time.sleep(delay)


def open_raster(href: str):
    """``rasterio.open`` for a path, ``file://``, ``http(s)://`` (``/vsicurl/``), ``s3://`` or ``gs://`` href."""
    vsi = _vsi_path(href)
    if vsi:
        href = vsi
    elif href.startswith("file://"):
        href = href[7:]
    return rasterio.open(href)


#: A group of chip windows is read as one rectangle when that rectangle is at most this many
#: times the area of the chips in it. 1.0: only overlapping or adjacent chips, so no pixel that
#: no chip needs is copied or resampled (the block cache already decodes each block once; a
#: looser 4.0 made reads of 80 chips on 1024 px tiles 20-75 % slower, bench/ingest.py layout).
MAX_UNION_RATIO = 1.0
#: ... and at most this many 10 m pixels on a side (bounded memory per read).
MAX_UNION_PX = 2048


def _read_groups(windows: list[tuple[int, int]], size_px: int, max_union_ratio: float) -> list[list[int]]:
    """Windows grouped into rectangles worth one read: greedy over windows sorted by position.

    A window joins the current group when the group's bounding box, with it, stays within
    ``max_union_ratio`` × the summed chip area and :data:`MAX_UNION_PX` on a side.
    """
    order = sorted(range(len(windows)), key=lambda i: windows[i])
    groups: list[list[int]] = []
    box = None
    for i in order:
        r, c = windows[i]
        if box is not None:
            r0, c0, r1, c1 = min(box[0], r), min(box[1], c), max(box[2], r + size_px), max(box[3], c + size_px)
            n = len(groups[-1]) + 1
            if (max(r1 - r0, c1 - c0) <= MAX_UNION_PX
                    and (r1 - r0) * (c1 - c0) <= max_union_ratio * n * size_px * size_px):
                groups[-1].append(i)
                box = (r0, c0, r1, c1)
                continue
        groups.append([i])
        box = (r, c, r + size_px, c + size_px)
    return groups


def read_grouped(windows: list[tuple[int, int]], size_px: int, read,
                 max_union_ratio: float = MAX_UNION_RATIO) -> list[np.ndarray]:
    """Each window's ``size_px`` square, in window order, from one ``read(r0, c0, h, w)`` per
    group of nearby windows (:func:`_read_groups`): chips are slices of their group's block."""
    out: list[np.ndarray | None] = [None] * len(windows)
    for group in _read_groups(windows, size_px, max_union_ratio):
        rows = [windows[i][0] for i in group]
        cols = [windows[i][1] for i in group]
        r0, c0 = min(rows), min(cols)
        block = read(r0, c0, max(rows) + size_px - r0, max(cols) + size_px - c0)
        for i in group:
            r, c = windows[i][0] - r0, windows[i][1] - c0
            out[i] = block[r:r + size_px, c:c + size_px]
    return out


#: How no data is read (part of a chunk's lineage: stored chunks read by another rule are rewritten).
NODATA_RULE = "0 where the nearest source pixel is no data; resampled from valid source pixels only"

#: GDAL type names of the raster types read here (for :func:`declare_nodata`'s VRT).
_GDAL_TYPES = {"uint8": "Byte", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32", "int32": "Int32",
               "float32": "Float32", "float64": "Float64"}


def declare_nodata(ds, nodata: float):
    """``ds`` (band 1) seen through a VRT that declares ``nodata``: for a raster that declares
    none, so that GDAL's resampling leaves its no-data pixels out as it does for one that does.
    """
    from xml.sax.saxutils import escape

    dtype = _GDAL_TYPES[ds.dtypes[0]]
    bh, bw = ds.block_shapes[0]
    size = f'xOff="0" yOff="0" xSize="{ds.width}" ySize="{ds.height}"'
    xml = (f'<VRTDataset rasterXSize="{ds.width}" rasterYSize="{ds.height}">'
           f'<GeoTransform>{", ".join(repr(v) for v in ds.transform.to_gdal())}</GeoTransform>'
           f'<VRTRasterBand dataType="{dtype}" band="1"><NoDataValue>{nodata!r}</NoDataValue><SimpleSource>'
           f'<SourceFilename relativeToVRT="0">{escape(ds.name)}</SourceFilename><SourceBand>1</SourceBand>'
           f'<SourceProperties RasterXSize="{ds.width}" RasterYSize="{ds.height}" DataType="{dtype}" '
           f'BlockXSize="{bw}" BlockYSize="{bh}"/><SrcRect {size}/><DstRect {size}/>'
           f'</SimpleSource></VRTRasterBand></VRTDataset>')
    return rasterio.open(xml)


def read_band_windows(href: str, windows: list[tuple[int, int]], size_px: int, res: float,
                      resampling: Resampling, dtype=np.uint16, retries: int = 3,
                      max_union_ratio: float = MAX_UNION_RATIO, nodata: float | None = 0) -> np.ndarray:
    """Read one asset at several 10 m chip windows → (N, size, size) resampled to 10 m, 0 = no data.

    Windows close together (overlapping or adjacent chips of one scene) are read as one
    rectangle, so each COG block is decoded and resampled once for all of them.

    No data never mixes with data. A 10 m pixel is 0 exactly where the source pixel under its
    centre (nearest) is no data, and a valid 10 m pixel is resampled from valid source pixels
    only (GDAL's resampling leaves out the pixels the raster declares no data; a raster that
    declares none is read with ``nodata``, DN 0 by default, declared through a VRT). Without
    this, bilinear gives the no-data side of a strip edge its valid neighbour's value, and the
    valid side a mix with 0. ``nodata=None``: the raster's own declaration only.
    """

    def run():
        out = np.zeros((len(windows), size_px, size_px), dtype=dtype)
        with contextlib.ExitStack() as stack:
            ds = stack.enter_context(open_raster(href))
            factor = abs(ds.transform.a) / res
            resampled = factor != 1 and resampling != Resampling.nearest
            if resampled and ds.nodata is None and nodata is not None:
                ds = stack.enter_context(declare_nodata(ds, nodata))
            nd = ds.nodata

            def read(r0, c0, h, w):  # one GDAL read (and resampling) for a whole group
                win = Window(c0 / factor, r0 / factor, w / factor, h / factor)
                px = ds.read(1, window=win, out_shape=(h, w), resampling=resampling, boundless=False)
                if nd is None:
                    return px
                if resampled:  # no data where the source pixel under the output pixel is no data
                    px[ds.read(1, window=win, out_shape=(h, w), resampling=Resampling.nearest) == nd] = 0
                elif nd != 0:
                    px[px == nd] = 0
                return px

            for i, chip in enumerate(read_grouped(windows, size_px, read, max_union_ratio)):
                out[i] = chip
        return out

    return retrying(run, href, retries=retries)


@dataclass
class SceneChips:
    """Chips read from one scene: pixels (N, C, H, W) uint16 harmonised, SCL (N, H, W) uint8."""

    pixels: np.ndarray
    scl: np.ndarray
    offsets: dict[str, int]

    @property
    def cloud_fraction(self) -> np.ndarray:
        """(N,) float32: share of each chip's pixels that SCL calls cloud, cirrus or shadow
        (computed on each access: read it once per scene)."""
        return SCL_CLOUDY_LUT[self.scl].mean(axis=(1, 2), dtype=np.float32)

    @property
    def nodata_fraction(self) -> np.ndarray:
        """(N,) float32: share of each chip's pixels that are no data in SCL or in any band."""
        nodata = (self.scl == B.SCL_NODATA) | (self.pixels == 0).any(axis=1)
        return nodata.mean(axis=(1, 2), dtype=np.float32)


#: SCL class → cloudy? / no data? (lookup tables: one gather instead of a set membership test per pixel).
SCL_CLOUDY_LUT = np.zeros(256, dtype=bool)
SCL_CLOUDY_LUT[list(B.SCL_CLOUDY)] = True
SCL_NODATA_LUT = np.arange(256) == B.SCL_NODATA


def harmonise(dn: np.ndarray, offset: int) -> np.ndarray:
    """Add a DN offset, keeping 0 as no data and valid pixels ≥ 1 (uint16, saturating).

    In uint16 without widening: ``max(dn, 1 - offset) + offset`` for a negative offset (the
    usual −1000 of baseline ≥ 04.00), ``min(dn, 65535 - offset) + offset`` for a positive one.
    """
    offset = int(offset)
    if offset == 0:
        return dn
    if not -65535 < offset < 65535:
        raise ValueError(f"DN offset {offset} is outside the uint16 range")
    dn = np.asarray(dn, dtype=np.uint16)
    if offset < 0:
        out = np.maximum(dn, np.uint16(1 - offset))
        out -= np.uint16(-offset)
    else:
        out = np.minimum(dn, np.uint16(65535 - offset))
        out += np.uint16(offset)
    out[dn == 0] = 0
    return out


def read_scl(item: dict, adapter: CatalogAdapter, windows: list[tuple[int, int]], size_px: int,
             res: float = 10.0) -> np.ndarray:
    href = adapter.sign(adapter.href(item, B.SCL))
    return read_band_windows(href, windows, size_px, res, Resampling.nearest, dtype=np.uint8)


def read_scene_chips(item: dict, adapter: CatalogAdapter, windows: list[tuple[int, int]],
                     bands: list[str], size_px: int, resampling: str = "bilinear",
                     res: float = 10.0) -> SceneChips:
    """Read every chip window of one scene, band by band (each asset opened once)."""
    rs = Resampling[resampling]
    pixels = np.zeros((len(windows), len(bands), size_px, size_px), dtype=np.uint16)
    offsets = {}
    for ci, band in enumerate(bands):
        href = adapter.sign(adapter.href(item, band))
        band_rs = rs if B.resolution(band) != res else Resampling.nearest
        dn = read_band_windows(href, windows, size_px, res, band_rs)
        offsets[band] = adapter.offset(item, band)
        pixels[:, ci] = harmonise(dn, offsets[band])
    scl = read_scl(item, adapter, windows, size_px, res)
    return SceneChips(pixels, scl, offsets)


__all__ = [
    "GDAL_CLOUD_OPTIONS", "gdal_env", "cachemax_bytes", "SceneGrid", "scene_grid", "chip_window",
    "open_raster", "retrying", "read_grouped", "declare_nodata", "read_band_windows", "SceneChips", "harmonise",
    "read_scl", "read_scene_chips", "NODATA_RULE",
]
