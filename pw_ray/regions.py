"""Continent geometry and point → region.

The six continents (``af as eu na oc sa``) are dissolved Natural Earth 1:110m countries,
shipped as ``pw_ray/data/continents.geojson`` and made by ``scripts/make_continents.py``
(Russia cut at the Urals, overseas parts assigned by location, Antarctica dropped).
Coordinates are WGS84 longitude/latitude in degrees, longitudes in [-180, 180].

The 1:110m coastlines are coarse (~1 km and worse on ragged coasts), so a point on a real
beach can fall just outside its continent; ``regions_of`` gives points within a tolerance of a
coast the nearest continent rather than calling them ocean.
"""

from __future__ import annotations

import functools
import json
import logging
from importlib import resources

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pw_ray.config import CONTINENTS, GLOBAL, REGIONS

log = logging.getLogger(__name__)

_DATA_FILE = "continents.geojson"


@functools.lru_cache(maxsize=1)
def _continents() -> dict[str, BaseGeometry]:
    """Continent code → (prepared) MultiPolygon, read once from the packaged GeoJSON."""
    text = resources.files("pw_ray").joinpath("data", _DATA_FILE).read_text(encoding="utf-8")
    geoms: dict[str, BaseGeometry] = {}
    for feature in json.loads(text)["features"]:
        geom = shape(feature["geometry"])
        shapely.prepare(geom)
        geoms[feature["properties"]["region"]] = geom
    missing = [c for c in CONTINENTS if c not in geoms]
    if missing:
        raise RuntimeError(f"packaged {_DATA_FILE} lacks continents {missing}; "
                           "regenerate it with scripts/make_continents.py")
    return {c: geoms[c] for c in CONTINENTS}


@functools.lru_cache(maxsize=1)
def _global() -> BaseGeometry:
    geom = shapely.union_all(list(_continents().values()))
    shapely.prepare(geom)
    return geom


@functools.lru_cache(maxsize=1)
def _part_index() -> tuple[shapely.STRtree, np.ndarray]:
    """STRtree over every continent's polygons, and the continent code of each polygon."""
    polygons, codes = [], []
    for code, geom in _continents().items():
        for polygon in shapely.get_parts(geom):
            polygons.append(polygon)
            codes.append(code)
    return shapely.STRtree(polygons), np.array(codes, dtype=object)


def region_geometry(code: str) -> BaseGeometry:
    """The land MultiPolygon of a continent code, or of ``global`` (the union of the six).

    Lon/lat degrees (EPSG:4326). The returned geometry is shared and prepared: do not mutate.
    """
    if code == GLOBAL:
        return _global()
    try:
        return _continents()[code]
    except KeyError:
        raise ValueError(f"unknown region {code!r}; allowed: {', '.join(REGIONS)}") from None


def wrap_lon(lons) -> np.ndarray:
    """Longitudes (degrees) wrapped into [-180, 180); 180 itself maps to -180."""
    return (np.asarray(lons, dtype=np.float64) + 180.0) % 360.0 - 180.0


def regions_of(lons, lats, tolerance_deg: float = 0.1) -> np.ndarray:
    """Continent code of each point, or ``None`` for ocean (and for NaN coordinates).

    ``lons``/``lats``: array-likes of the same shape, degrees (longitudes are wrapped).
    A point inside no continent but within ``tolerance_deg`` degrees (planar distance in
    lon/lat; 0.1° ≈ 11 km of latitude) of one gets the nearest; ``tolerance_deg=0`` turns
    that off. Returns an object array of the input's shape.
    """
    lons = wrap_lon(lons)
    lats = np.asarray(lats, dtype=np.float64)
    if lons.shape != lats.shape:
        raise ValueError(f"lons and lats differ in shape: {lons.shape} vs {lats.shape}")
    if tolerance_deg < 0:
        raise ValueError(f"tolerance_deg must be ≥ 0, got {tolerance_deg}")
    flat_lon, flat_lat = lons.ravel(), lats.ravel()
    out = np.full(flat_lon.shape, None, dtype=object)
    found = np.zeros(flat_lon.shape, dtype=bool)
    for code, geom in _continents().items():
        # Continents do not overlap, so the first match is the only one.
        inside = ~found & shapely.contains_xy(geom, flat_lon, flat_lat)
        out[inside] = code
        found |= inside

    todo = np.flatnonzero(~found & np.isfinite(flat_lon) & np.isfinite(flat_lat))
    if tolerance_deg > 0 and todo.size:
        tree, codes = _part_index()
        points = shapely.points(flat_lon[todo], flat_lat[todo])
        # all_matches=False: one nearest polygon per point, so equidistant ties resolve the
        # same way on every call.
        point_idx, polygon_idx = tree.query_nearest(points, max_distance=tolerance_deg,
                                                    all_matches=False)
        out[todo[point_idx]] = codes[polygon_idx]
    return out.reshape(lons.shape)


def region_of(lon: float, lat: float, tolerance_deg: float = 0.1) -> str | None:
    """Continent code of one point (degrees), or ``None`` for ocean; see ``regions_of``."""
    return regions_of([lon], [lat], tolerance_deg)[0]
