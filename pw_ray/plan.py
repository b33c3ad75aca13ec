"""The plan stage: where the points of a pretraining set (or task) lie, sampled on land per continent.

A set's points are drawn uniformly on land (area-correct on the sphere) inside each
continent's geometry (``pw_ray.regions``), optionally restricted to the footprints of the
scenes an archive has, optionally at a minimum great-circle spacing. Counts per continent
come from the set's weights by largest-remainder rounding, so ``global`` with 60 points gives
exactly 10 per continent.

Determinism: each continent draws from its own generator,
``np.random.default_rng([seed, CONTINENTS.index(region)])``, and its candidates form a fixed
stream, so the same arguments give the same frame, a larger ``n`` extends a smaller one's
points per continent, and adding a continent to a mix does not move the others' points
(with ``min_spacing_m`` > 0 this holds except where points of two continents would fall
within the spacing of each other near a shared border).

Exclusion (:func:`sample_away`): candidates within a distance of held-out places (downstream
test points, :mod:`pw_ray.leakage`) are skipped and the stream goes on, so counts per continent
stay as the weights say and the points not near a held-out place are the same as without it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from pw_ray import storage
from pw_ray.config import CONTINENTS, GLOBAL, PretrainSet
from pw_ray.regions import region_geometry, wrap_lon

log = logging.getLogger(__name__)

#: Mean Earth radius (IUGG), metres; used for every distance in this module.
EARTH_RADIUS_M = 6_371_008.8
UNKNOWN = "unknown"
#: Column order of a points table (docs/CONTRACTS.md); extra columns follow.
POINT_COLUMNS = ["point_id", "set", "lon", "lat", "region", "biome", "landcover", "seed"]

# Raw bounding-box draws per rejection round. Fixed (not sized to what is still needed) so a
# continent's candidate stream depends only on its generator and geometry.
_ROUND_DRAWS = 4096
# Give up on a continent after this many candidates inside its geometry per requested point
# (plus a floor), or after this many rounds, whichever comes first.
_CANDIDATES_PER_POINT = 50
_MIN_CANDIDATES = 10_000
_MAX_ROUNDS = 5_000


def haversine_m(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distance in metres between points given in degrees (broadcasting)."""
    lon1, lat1, lon2, lat2 = (np.radians(np.asarray(a, dtype=np.float64)) for a in (lon1, lat1, lon2, lat2))
    h = (np.sin((lat2 - lat1) / 2) ** 2
         + np.cos(lat1) * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_RADIUS_M * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def continent_counts(weights: dict[str, float], n: int) -> dict[str, int]:
    """Points per continent: largest-remainder rounding of normalised weights × ``n``.

    ``weights`` may name continents and ``global`` (spread equally over the six); keys with
    zero weight get no entry. Ties in the remainder go to the earlier continent in
    ``CONTINENTS``. The counts sum to ``n``.
    """
    if n < 0:
        raise ValueError(f"number of points must be ≥ 0, got {n}")
    shares = _continent_shares(weights)
    quotas = {c: shares[c] * n for c in CONTINENTS if shares.get(c, 0) > 0}
    # The epsilon keeps 1/6 × 60 = 9.999… from flooring to 9.
    counts = {c: int(math.floor(q + 1e-9)) for c, q in quotas.items()}
    left = n - sum(counts.values())
    by_remainder = sorted(quotas, key=lambda c: -(quotas[c] - counts[c]))  # stable: ties by order
    for c in by_remainder[:left]:
        counts[c] += 1
    return counts


def _continent_shares(weights: dict[str, float]) -> dict[str, float]:
    if not weights:
        raise ValueError("weights are empty; give at least one continent, e.g. {'eu': 1.0}")
    raw = {c: 0.0 for c in CONTINENTS}
    for key, w in weights.items():
        if not np.isfinite(w) or w < 0:
            raise ValueError(f"weight of {key!r} must be a finite number ≥ 0, got {w}")
        if key == GLOBAL:
            for c in CONTINENTS:
                raw[c] += w / len(CONTINENTS)
        elif key in raw:
            raw[key] += w
        else:
            raise ValueError(f"unknown region {key!r} in weights; allowed: {', '.join(CONTINENTS + (GLOBAL,))}")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError(f"weights must sum to > 0, got {weights}")
    return {c: w / total for c, w in raw.items()}


def _sampling_polygons(region: str, coverage: dict[str, list] | None) -> list[BaseGeometry]:
    """The disjoint land polygons of ``region`` to sample, restricted to its coverage."""
    land = region_geometry(region)
    if coverage is not None:
        footprints = coverage.get(region) or []
        if not footprints:
            raise ValueError(f"region {region!r} needs points but coverage has no polygons for it "
                             f"(coverage regions: {sorted(k for k, v in coverage.items() if v)})")
        # Union first: overlapping footprints must not make their overlap denser.
        land = shapely.intersection(shapely.union_all(footprints), land)
        if land.is_empty or land.area == 0:
            raise ValueError(f"coverage polygons of region {region!r} do not overlap its land; "
                             "check that footprints are lon/lat degrees on that continent")
    return [p for p in _polygons(land) if p.area > 0]


def _polygons(geom: BaseGeometry) -> list[BaseGeometry]:
    """Polygons of a geometry; an intersection can nest them in collections and add the
    lines and points where shapes only touch, which carry no area and are dropped."""
    if geom.geom_type == "Polygon":
        return [geom]
    if geom.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [p for part in shapely.get_parts(geom) for p in _polygons(part)]
    return []


def _candidates(polygons: list[BaseGeometry], rng: np.random.Generator) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless stream of batches of (lon, lat) degrees, uniform on the sphere within ``polygons``.

    Each round picks a polygon per draw with probability ∝ the spherical area of its bounding
    box, draws uniformly in that box (longitude uniform, sin(latitude) uniform) and keeps the
    draw if it lies in that same polygon: with disjoint polygons the kept points are uniform
    over their union, and the boxes keep the acceptance rate high for scattered islands.
    """
    parts = np.array(polygons, dtype=object)
    shapely.prepare(parts)
    bounds = shapely.bounds(parts)
    west, east = bounds[:, 0], bounds[:, 2]
    sin_south, sin_north = np.sin(np.radians(bounds[:, 1])), np.sin(np.radians(bounds[:, 3]))
    box_area = (east - west) * (sin_north - sin_south)
    prob = box_area / box_area.sum()
    while True:
        idx = rng.choice(len(parts), size=_ROUND_DRAWS, p=prob)
        u, v = rng.random(_ROUND_DRAWS), rng.random(_ROUND_DRAWS)
        lon = west[idx] + u * (east - west)[idx]
        lat = np.degrees(np.arcsin(sin_south[idx] + v * (sin_north - sin_south)[idx]))
        inside = shapely.contains_xy(parts[idx], lon, lat)
        yield lon[inside], lat[inside]


def unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """(N, 3) points on the unit sphere for lon/lat degrees (N,): chord distance between them is
    monotone in great-circle distance, so a k-d tree on them answers great-circle queries."""
    lon, lat = np.radians(lon), np.radians(lat)
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


def _chord_for(distance_m: float) -> float:
    """Straight-line distance on the unit sphere matching a great-circle distance in metres."""
    angle = min(distance_m / EARTH_RADIUS_M, math.pi)
    return 2.0 * math.sin(angle / 2.0)


class _KeepOut:
    """Places candidates must stay away from: a k-d tree of unit vectors and a chord radius."""

    def __init__(self, lon: np.ndarray, lat: np.ndarray, distance_m: float):
        self.tree = cKDTree(unit_vectors(np.asarray(lon, np.float64), np.asarray(lat, np.float64)))
        self.distance_m = float(distance_m)
        # The margin keeps float error from letting a candidate land a hair inside the distance.
        self.radius = _chord_for(distance_m) * (1 + 1e-9)

    def near(self, xyz: np.ndarray) -> np.ndarray:
        """(N,) bool: which of the (N, 3) unit vectors lie within the distance of a kept-out point."""
        if not len(xyz):
            return np.zeros(0, dtype=bool)
        dist, _ = self.tree.query(xyz, k=1, distance_upper_bound=self.radius)
        return np.isfinite(dist)


def _draw_region(region: str, n: int, polygons: list[BaseGeometry], rng: np.random.Generator,
                 min_spacing_m: float, taken: np.ndarray,
                 keep_out: _KeepOut | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """First ``n`` acceptable candidates of the region's stream, as (lon, lat) degrees, and the
    number of candidates ``keep_out`` replaced.

    ``taken``: (M, 3) unit vectors of points already accepted (other continents), which
    new points must also keep ``min_spacing_m`` from. ``keep_out``: places no point may lie
    near (held-out task points); a candidate near one is dropped and counted as replaced when
    it came before the last point taken (the set would otherwise have held it).
    """
    budget = _CANDIDATES_PER_POINT * n + _MIN_CANDIDATES
    # The margin keeps float error from letting a pair land a hair under the spacing.
    radius = _chord_for(min_spacing_m) * (1 + 1e-9)
    lons, lats, xyz = [], [], [taken]
    got = tried = replaced = 0
    stream = _candidates(polygons, rng)
    for _ in range(_MAX_ROUNDS):
        lon, lat = next(stream)
        tried += lon.size
        usable = np.ones(lon.size, dtype=bool)
        batch_xyz = unit_vectors(lon, lat) if lon.size else np.empty((0, 3))
        near = keep_out.near(batch_xyz) if keep_out is not None else None
        if near is not None:
            usable &= ~near
        if min_spacing_m > 0 and usable.any():
            idx = np.flatnonzero(usable)
            spaced = _spaced(batch_xyz[idx], np.concatenate(xyz), radius)
            usable[idx[~spaced]] = False
            xyz.append(batch_xyz[idx[spaced]])
        accepted = np.flatnonzero(usable)
        take = min(n - got, accepted.size)
        # Candidates of this batch up to the last one taken (all of them while the set is short).
        used = accepted[take - 1] + 1 if take == n - got and take > 0 else lon.size
        if near is not None:
            replaced += int(near[:used].sum())
        lons.append(lon[accepted[:take]])
        lats.append(lat[accepted[:take]])
        got += take
        if got >= n:
            break
        if tried >= budget:
            break
    if got < n:
        spacing = f" at least {min_spacing_m:.0f} m apart" if min_spacing_m > 0 else ""
        away = (f" and {keep_out.distance_m:.0f} m from {len(keep_out.tree.data)} held-out task points"
                if keep_out is not None else "")
        raise ValueError(
            f"region {region!r}: placed only {got} of {n} points{spacing}{away} after {tried} "
            f"candidates on its land; lower min_spacing_m, plan.exclusion_m or the number of points, "
            f"or widen the coverage"
        )
    return np.concatenate(lons), np.concatenate(lats), replaced


def _spaced(xyz: np.ndarray, taken: np.ndarray, radius: float) -> np.ndarray:
    """Greedy in stream order: keep a candidate (row of the (N, 3) unit vectors ``xyz``) unless it
    lies within ``radius`` (unit-sphere chord) of a taken point or of an earlier kept candidate
    of this batch. Returns the (N,) keep mask."""
    keep = np.ones(len(xyz), dtype=bool)
    if len(taken):
        keep &= cKDTree(taken).query_ball_point(xyz, radius, return_length=True) == 0
    idx = np.flatnonzero(keep)
    if idx.size > 1:
        pairs = cKDTree(xyz[idx]).query_pairs(radius, output_type="ndarray")
        earlier_neighbours: dict[int, list[int]] = {}
        for a, b in pairs:
            lo, hi = (a, b) if a < b else (b, a)
            earlier_neighbours.setdefault(int(hi), []).append(int(lo))
        kept_local = np.ones(idx.size, dtype=bool)
        for j in range(idx.size):
            if any(kept_local[i] for i in earlier_neighbours.get(j, ())):
                kept_local[j] = False
        keep[idx[~kept_local]] = False
    return keep


class Sampled(NamedTuple):
    """Points of a set and how many of its candidates the exclusion replaced, per continent."""

    points: pd.DataFrame
    replaced: dict[str, int]


def sample_points(weights: dict[str, float], n: int, seed: int,
                  coverage: dict[str, list[BaseGeometry]] | None = None,
                  min_spacing_m: float = 0.0, set_name: str = "set", *,
                  held_out: pd.DataFrame | None = None, exclusion_m: float = 0.0) -> pd.DataFrame:
    """Sample ``n`` land points spread over continents by ``weights`` (see :func:`sample_away`)."""
    return sample_away(weights, n, seed, coverage, min_spacing_m, set_name,
                       held_out=held_out, exclusion_m=exclusion_m).points


def sample_away(weights: dict[str, float], n: int, seed: int,
                coverage: dict[str, list[BaseGeometry]] | None = None,
                min_spacing_m: float = 0.0, set_name: str = "set", *,
                held_out: pd.DataFrame | None = None, exclusion_m: float = 0.0) -> Sampled:
    """Sample ``n`` land points spread over continents by ``weights``, away from ``held_out``.

    weights: continent code (or ``global``) → weight ≥ 0; normalised here.
    n: total number of points; per-continent counts by largest-remainder rounding.
    seed: int ≥ 0; continent ``c`` uses ``np.random.default_rng([seed, CONTINENTS.index(c)])``.
    coverage: continent code → polygons (lon/lat degrees, e.g. scene footprints); when given,
        points lie in the union of a continent's polygons ∩ its land, uniformly.
    min_spacing_m: minimum great-circle distance in metres between any two points of the set
        (also across continents); ``ValueError`` naming the continent if it cannot be met.
    set_name: prefix of ``point_id`` and value of the ``set`` column.
    held_out: frame with ``lon``, ``lat`` (degrees) of places no point may come near (the
        held-out task points); with ``exclusion_m`` > 0, every point lies more than
        ``exclusion_m`` metres (great circle) from each of them. A candidate closer is skipped
        and the continent's stream goes on, so counts per continent stay as ``weights`` say
        and points not near a held-out place are the same as without it.

    Returns the points — columns ``point_id`` (``f"{set_name}-{i:06d}"``), ``set``, ``lon``,
    ``lat`` (float64 degrees), ``region`` and ``seed``, continents in ``CONTINENTS`` order — and
    the number of candidates replaced per continent.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer ≥ 0 (it seeds numpy's SeedSequence), got {seed!r}")
    if not min_spacing_m >= 0:
        raise ValueError(f"min_spacing_m must be ≥ 0 metres, got {min_spacing_m}")
    if not exclusion_m >= 0:
        raise ValueError(f"exclusion_m must be ≥ 0 metres, got {exclusion_m}")
    keep_out = None
    if held_out is not None and len(held_out) and exclusion_m > 0:
        keep_out = _KeepOut(held_out["lon"].to_numpy(), held_out["lat"].to_numpy(), exclusion_m)
    counts = continent_counts(weights, n)
    taken = np.empty((0, 3))
    lons, lats, regions = [], [], []
    replaced: dict[str, int] = {}
    for region, count in counts.items():
        if count == 0:
            continue
        rng = np.random.default_rng([int(seed), CONTINENTS.index(region)])
        lon, lat, replaced[region] = _draw_region(region, count, _sampling_polygons(region, coverage), rng,
                                                  min_spacing_m, taken, keep_out)
        if min_spacing_m > 0:
            taken = np.concatenate([taken, unit_vectors(lon, lat)])
        lons.append(lon)
        lats.append(lat)
        regions.extend([region] * count)
        log.debug("set %s: %d points in %s", set_name, count, region)
    lon = np.concatenate(lons) if lons else np.empty(0)
    lat = np.concatenate(lats) if lats else np.empty(0)
    return Sampled(pd.DataFrame({
        "point_id": [f"{set_name}-{i:06d}" for i in range(len(lon))],
        "set": [set_name] * len(lon),
        "lon": wrap_lon(lon).astype(np.float64),
        "lat": lat.astype(np.float64),
        "region": regions,
        "seed": np.full(len(lon), int(seed), dtype=np.int64),
    }), replaced)


def _biomes(biome_path: str | None, lons: np.ndarray, lats: np.ndarray) -> np.ndarray:
    """Biome name of each point from a GeoJSON of polygons with property ``biome``.

    ``biome_path``: local path or URI (see ``pw_ray.storage``). Points in no polygon are
    ``"unknown"``; where polygons overlap, the first feature in the file wins.
    """
    out = np.full(lons.shape, UNKNOWN, dtype=object)
    if biome_path is None or lons.size == 0:
        return out
    import json

    collection = json.loads(storage.read_text(biome_path))
    if collection.get("type") != "FeatureCollection":
        raise ValueError(f"{biome_path} must be a GeoJSON FeatureCollection, got type {collection.get('type')!r}")
    geoms, names = [], []
    for i, feature in enumerate(collection["features"]):
        if not feature.get("geometry"):
            continue
        name = (feature.get("properties") or {}).get("biome")
        if name is None:
            raise ValueError(f"{biome_path}: feature {i} has no 'biome' property")
        geoms.append(shape(feature["geometry"]))
        names.append(str(name))
    if not geoms:
        log.warning("%s holds no polygons; every biome is %r", biome_path, UNKNOWN)
        return out
    tree = shapely.STRtree(geoms)
    point_idx, geom_idx = tree.query(shapely.points(lons, lats), predicate="intersects")
    first = np.full(lons.shape, len(geoms), dtype=np.int64)
    np.minimum.at(first, point_idx, geom_idx)
    hit = first < len(geoms)
    out[hit] = np.array(names, dtype=object)[first[hit]]
    return out


def label_points(df: pd.DataFrame, biome_path: str | None = None,
                 landcover: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> pd.DataFrame:
    """A copy of ``df`` with ``biome`` and ``landcover`` columns (``"unknown"`` where not known).

    biome_path: GeoJSON FeatureCollection of polygons with property ``biome`` (path or URI),
        or None.
    landcover: callable ``(lons, lats) -> class names`` taking float64 degree arrays of shape
        (N,) and returning N labels (None/empty → ``"unknown"``), or None.
    """
    out = df.copy()
    lons = out["lon"].to_numpy(dtype=np.float64)
    lats = out["lat"].to_numpy(dtype=np.float64)
    out["biome"] = _biomes(biome_path, lons, lats)
    if landcover is None:
        classes = np.full(len(out), UNKNOWN, dtype=object)
    else:
        classes = np.asarray(landcover(lons, lats), dtype=object)
        if classes.shape != (len(out),):
            raise ValueError(f"landcover callable returned shape {classes.shape}; expected ({len(out)},)")
        classes = np.array([UNKNOWN if c is None or c == "" else str(c) for c in classes], dtype=object)
    out["landcover"] = classes
    ordered = [c for c in POINT_COLUMNS if c in out.columns]
    return out[ordered + [c for c in out.columns if c not in ordered]]


def plan_set(pset: PretrainSet, coverage: dict[str, list[BaseGeometry]] | None = None,
             min_spacing_m: float = 0.0, *, biome_path: str | None = None,
             landcover: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> pd.DataFrame:
    """The points table of a pretraining set (docs/CONTRACTS.md ``points/<set>.parquet``).

    ``pset.size`` points from ``pset.weights()`` with ``pset.seed``, labelled by
    ``label_points`` (``biome``/``landcover`` are ``"unknown"`` without sources).
    """
    return plan_set_away(pset, coverage, min_spacing_m, biome_path=biome_path, landcover=landcover).points


def plan_set_away(pset: PretrainSet, coverage: dict[str, list[BaseGeometry]] | None = None,
                  min_spacing_m: float = 0.0, *, biome_path: str | None = None,
                  landcover: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                  held_out: pd.DataFrame | None = None, exclusion_m: float = 0.0) -> Sampled:
    """:func:`plan_set` keeping every point more than ``exclusion_m`` metres from ``held_out``
    (lon, lat degrees); returns the points and the candidates replaced per continent."""
    sampled = sample_away(pset.weights(), pset.size, pset.seed, coverage=coverage,
                          min_spacing_m=min_spacing_m, set_name=pset.name,
                          held_out=held_out, exclusion_m=exclusion_m)
    points = label_points(sampled.points, biome_path, landcover)
    log.info("planned set %s: %d points (%s)%s", pset.name, len(points),
             ", ".join(f"{r}={c}" for r, c in points["region"].value_counts(sort=False).items()),
             f"; {sum(sampled.replaced.values())} candidates within {exclusion_m:.0f} m of held-out task "
             f"points replaced" if held_out is not None and exclusion_m > 0 else "")
    return Sampled(points, sampled.replaced)
