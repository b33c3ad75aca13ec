"""What ingesting a set of points costs before any of it runs: STAC requests, scenes, bytes.

A model, each step stated, so that a printed figure can be checked and argued with:

* **Cells.** The per-tile search groups a set's points by cells the size of a Sentinel-2 tile
  (``estimate.search_cell_km``, default 109.8 km) and searches once per cell and season. With
  ``n`` points uniform on a continent of ``M`` cells, ``M·(1 − e^(−n/M))`` cells hold at least
  one (the expected occupancy); continents' land areas come from pw-ray's own geometry.
* **Requests** = occupied cells × seasons × pages; a page holds ``estimate.stac_page_size``
  items (default 100) of the items a cell-season meets: the tiles a cell overlaps,
  ``(1 + cell / tile)²`` ≈ 4, times one acquisition every 5 days. The server's cloud filter
  removes some of them: not modelled, so an upper bound.
* **Scenes** read = occupied cells × seasons × the tiles a cell overlaps (each point's chip comes
  from the least-cloudy usable acquisition of a tile covering it), at most one per chip.
* **Bytes read**: per scene, the COG blocks its chips touch, once each (a scene's chips share a
  chunk): a chip window of ``w`` px on ``b`` px blocks touches ``(1 + w/b)²`` blocks, so ``k``
  chips touch ``N·(1 − (1 − t/N)^k)`` of a band's ``N`` blocks; SCL is read twice (index
  screening and the shard phase). Compressed bytes per pixel are an assumption.
* **Bytes written** per chip: the WebDataset tar exactly (``.npy`` + ``.json`` members, 512-byte
  tar blocks); the zstd Parquet row as raw pixels × a compression ratio (an assumption, or a
  ``bench/ingest.py`` calibration).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

#: A Sentinel-2 MGRS tile: 109.8 km, 10,980 px at 10 m.
S2_TILE_KM = 109.8
S2_TILE_PX_10M = 10_980
#: Sentinel-2 bands by native resolution (m); SCL at 20 m.
BAND_RESOLUTION_M = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B06": 20, "B07": 20, "B08": 10,
                     "B8A": 20, "B09": 60, "B11": 20, "B12": 20, "SCL": 20}

ASSUMPTIONS = {
    "revisit_days": (5.0, "one acquisition per tile every 5 days (Sentinel-2A + 2B at the equator; more "
                          "overlap near the poles, fewer with one satellite)"),
    "page_size": (100, "100 items per search page (set estimate.stac_page_size to what the search asks for)"),
    "cog_block_px": (1024, "COG internal tiles of 1024 px (Planetary Computer's and Earth Search's Sentinel-2 "
                           "L2A COGs)"),
    "cog_bytes_per_px": (1.2, "1.2 compressed bytes per pixel of a uint16 band (a full 10 m band of a tile ≈ "
                              "145 MB)"),
    "scl_bytes_per_px": (0.2, "0.2 compressed bytes per pixel of the SCL class raster"),
    "parquet_ratio": (0.7, "zstd Parquet holds 0.7 of the raw uint16 pixels of a real Sentinel-2 chip"),
    "json_bytes": (1024, "a chip's .json (ids, place, scene, cloud and land-cover fractions, band names) fills "
                         "two 512-byte tar blocks"),
}


def assumption(name: str):
    return ASSUMPTIONS[name][0]


# ----------------------------------------------------------------------------- cells and requests
@lru_cache(maxsize=None)
def land_area_km2(region: str) -> float:
    """Land area of a continent code (or ``global``) from pw-ray's continent geometry, km²
    (Lambert cylindrical equal-area projection of the lon/lat polygons)."""
    import numpy as np
    import shapely

    from pw_ray.plan import EARTH_RADIUS_M
    from pw_ray.regions import region_geometry

    r_km = EARTH_RADIUS_M / 1000

    def project(coords):
        lon, lat = np.radians(coords[:, 0]), np.radians(coords[:, 1])
        return np.column_stack([r_km * lon, r_km * np.sin(lat)])

    return float(shapely.transform(region_geometry(region), project).area)


def occupied_cells(points_per_region: dict[str, int], cell_km: float) -> float:
    """Expected cells of side ``cell_km`` holding at least one of the points (uniform on land)."""
    total = 0.0
    for region, n in points_per_region.items():
        if n <= 0:
            continue
        cells = max(land_area_km2(region) / cell_km**2, 1.0)
        total += cells * (1.0 - math.exp(-n / cells))
    return total


def tiles_per_cell(cell_km: float) -> float:
    """Sentinel-2 tiles a cell of side ``cell_km`` overlaps, on average: ``(1 + cell/tile)²``."""
    return (1.0 + cell_km / S2_TILE_KM) ** 2


def window_days(datetime_range: str, seasons: int) -> float:
    """Days of each season's window of ``stac.datetime`` (365 when the range is open)."""
    from pw_ray.ingest.search import _parse_range

    start, end = _parse_range(datetime_range)
    days = (end - start).total_seconds() / 86400 if start and end and end > start else 365.0
    return days / max(seasons, 1)


@dataclass(frozen=True)
class SearchEstimate:
    cells: float
    tiles_per_cell: float
    items_per_cell_season: float
    pages: int
    requests: float
    scenes: float


def search_estimate(points_per_region: dict[str, int], chips: int, seasons: int, datetime_range: str,
                    cell_km: float, page_size: int) -> SearchEstimate:
    cells = occupied_cells(points_per_region, cell_km)
    tiles = tiles_per_cell(cell_km)
    items = tiles * window_days(datetime_range, seasons) / assumption("revisit_days")
    pages = max(1, math.ceil(items / page_size))
    scenes = min(float(chips), cells * seasons * tiles)
    return SearchEstimate(cells, tiles, items, pages, cells * seasons * pages, scenes)


# ----------------------------------------------------------------------------- bytes
def bytes_read_per_scene(bands: list[str], chip_px: int, resolution_m: float, chips_per_scene: float) -> float:
    """Compressed COG bytes one scene gives its ``chips_per_scene`` chips (each block once), SCL twice."""
    block = assumption("cog_block_px")
    total = 0.0
    for band, times in [(b, 1) for b in bands] + [("SCL", 2)]:
        res = BAND_RESOLUTION_M.get(band, 10)
        grid = S2_TILE_PX_10M * 10 / res
        n_blocks = math.ceil(grid / block) ** 2
        window = chip_px * resolution_m / res
        per_chip = min((1.0 + window / block) ** 2, n_blocks)
        touched = n_blocks * (1.0 - (1.0 - per_chip / n_blocks) ** max(chips_per_scene, 0.0))
        per_px = assumption("scl_bytes_per_px") if band == "SCL" else assumption("cog_bytes_per_px")
        total += times * touched * block * block * per_px
    return total


def _tar_member(n_bytes: int) -> int:
    return 512 + 512 * math.ceil(n_bytes / 512)


def npy_bytes(bands: int, size_px: int) -> int:
    """Bytes of ``np.save`` of a (C, H, W) uint16 array (its header and the data), as the tars hold it."""
    import io

    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.zeros((bands, size_px, size_px), dtype=np.uint16))
    return len(buf.getvalue())


def wds_bytes_per_chip(bands: int, size_px: int) -> int:
    """A chip's share of a WebDataset tar: its ``.npy`` and ``.json`` members with headers."""
    return _tar_member(npy_bytes(bands, size_px)) + _tar_member(assumption("json_bytes"))


__all__ = ["ASSUMPTIONS", "SearchEstimate", "search_estimate", "land_area_km2", "occupied_cells", "tiles_per_cell",
           "bytes_read_per_scene", "wds_bytes_per_chip", "npy_bytes", "S2_TILE_KM"]
