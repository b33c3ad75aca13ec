"""Where and when each scene is: place, UTM grid, time, platform, baseline, ids, decided from the seed.

:func:`plan_scenes` draws every scene before any pixel is painted; :func:`corners`,
:func:`polygon` and :func:`bbox` give a scene's footprint in lon/lat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from rasterio.warp import transform as warp_transform

from pw_ray.config import CONTINENTS, SyntheticArchive

# Scene centres (lon, lat), each well inland in its continent, with the biomes (codes of
# ``biomes.BIOME_NAMES``) of the scene's west and east halves.
_CENTRES: dict[str, tuple[tuple[float, float, str, str], ...]] = {
    "eu": ((2.35, 48.60, "tbm", "tbm"), (13.40, 52.40, "tbm", "tbm"), (21.00, 52.20, "tbm", "tbm"),
           (-3.70, 40.30, "med", "med"), (11.50, 48.20, "tbm", "tcf"), (19.10, 47.40, "tbm", "tmg"),
           (30.50, 50.40, "tbm", "tmg"), (37.60, 55.70, "tbm", "bor"), (14.40, 50.00, "tbm", "tbm"),
           (4.80, 45.70, "tbm", "med")),
    "af": ((2.50, 27.00, "des", "des"), (8.00, 17.00, "des", "des"), (19.00, 15.00, "des", "tgs"),
           (32.50, 15.60, "des", "tgs"), (23.00, -1.00, "tmb", "tmb"), (28.30, -15.40, "tgs", "tgs"),
           (23.50, -22.50, "des", "tgs"), (38.70, 9.00, "mon", "mon"), (-4.00, 14.00, "tgs", "des"),
           (35.70, -6.20, "tgs", "tgs")),
    "as": ((106.90, 47.90, "tmg", "mon"), (68.00, 48.00, "tmg", "des"), (77.20, 28.60, "des", "tdb"),
           (79.10, 21.10, "tdb", "tdb"), (108.90, 34.30, "tbm", "tbm"), (104.10, 30.70, "tmb", "tmb"),
           (82.90, 55.00, "bor", "tmg"), (91.10, 29.65, "mon", "mon"), (66.90, 39.65, "des", "des"),
           (51.70, 32.65, "des", "des")),
    "na": ((-98.00, 38.50, "tmg", "tmg"), (-93.50, 42.00, "tmg", "tbm"), (-83.00, 40.00, "tbm", "tbm"),
           (-104.90, 39.70, "tmg", "tcf"), (-112.00, 39.00, "des", "des"), (-106.60, 52.10, "tmg", "bor"),
           (-97.90, 55.70, "bor", "bor"), (-102.30, 21.90, "des", "tdb"), (-86.80, 36.20, "tbm", "tbm")),
    "oc": ((133.90, -23.70, "des", "des"), (131.00, -25.30, "des", "des"), (141.50, -32.00, "des", "des"),
           (134.20, -19.60, "tgs", "des"), (144.25, -23.40, "tgs", "tgs"), (148.60, -32.25, "tmg", "tbm"),
           (121.50, -30.75, "med", "des"), (139.50, -20.70, "tgs", "tgs"), (132.30, -14.50, "tgs", "tgs"),
           (147.40, -35.10, "tmg", "tbm")),
    "sa": ((-47.90, -15.80, "tgs", "tgs"), (-60.00, -3.10, "tmb", "tmb"), (-63.00, -10.00, "tmb", "tmb"),
           (-63.20, -17.80, "tdb", "tdb"), (-60.50, -22.00, "tdb", "tgs"), (-64.20, -31.40, "tmg", "tdb"),
           (-56.10, -15.60, "tgs", "flg"), (-45.00, -18.50, "tgs", "tgs"), (-68.60, -38.95, "tmg", "des"),
           (-67.50, 8.00, "tgs", "flg")),
}


@dataclass(frozen=True)
class Scene:
    """Everything decided about a scene before its pixels are painted."""

    index: int
    region: str
    item_id: str
    lon: float
    lat: float
    epsg: int
    mgrs_tile: str
    origin: tuple[float, float]  # (x, y) of the top-left corner, metres, multiple of 60
    sensed: datetime
    platform: str
    baseline: str
    orbit: int
    biomes: tuple[str, str]  # biome codes of the west half and the east half
    cloudy: bool
    nodata_strip: bool
    sun_azimuth: float
    sun_zenith: float


def plan_scenes(spec: SyntheticArchive) -> list[Scene]:
    """Decide every scene's place, time and kind from the seed alone (no pixels yet)."""
    rng = np.random.default_rng([spec.seed, 0])
    n = spec.scenes_per_region * len(CONTINENTS)
    cloudy = set(rng.permutation(n)[: round(spec.cloudy_fraction * n)].tolist())
    # About a quarter of the scenes sit at a swath edge and have a no-data strip.
    strips = set(rng.permutation(n)[: max(1, round(0.25 * n))].tolist())
    days = rng.permutation(365)
    # Half the scenes on baseline 05.09 (offset DNs), the rest on the older, offset-free ones.
    modern = set(rng.permutation(n)[: round(n / 2)].tolist())
    scenes, ids = [], set()
    for r, region in enumerate(CONTINENTS):
        centres = _CENTRES[region]
        first = int(rng.integers(len(centres)))
        for k in range(spec.scenes_per_region):
            i = r * spec.scenes_per_region + k
            lon0, lat0, west, east = centres[(first + k) % len(centres)]
            # The jitter (≤ 0.1°, ~10 km) keeps repeated centres apart without nearing a coast.
            lon = lon0 + float(rng.uniform(-0.1, 0.1))
            lat = lat0 + float(rng.uniform(-0.1, 0.1))
            zone = int((lon + 180) // 6) + 1
            epsg = (32600 if lat >= 0 else 32700) + zone
            (x,), (y,) = warp_transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
            half = spec.scene_px * 10 / 2
            origin = (math.floor((x - half) / 60) * 60.0, math.ceil((y + half) / 60) * 60.0)
            # Sentinel-2 crosses the equator at 10:30 local solar time.
            day = datetime(2023, 1, 1, tzinfo=timezone.utc) + timedelta(days=int(days[i % 365]))
            sensed = day + timedelta(hours=10.5 - lon / 15, seconds=int(rng.integers(0, 600)))
            platform = "sentinel-2a" if rng.random() < 0.5 else "sentinel-2b"
            baseline = "05.09" if i in modern else ("03.01" if rng.random() < 0.6 else "02.14")
            orbit = int(rng.integers(1, 144))
            tile = _mgrs_tile(zone, lat, x, y)
            processed = sensed.replace(hour=0, minute=0, second=0) + timedelta(days=1, hours=int(rng.integers(0, 24)))
            while True:
                item_id = (f"S2{platform[-1].upper()}_MSIL2A_{sensed:%Y%m%dT%H%M%S}_R{orbit:03d}_T{tile}"
                           f"_{processed:%Y%m%dT%H%M%S}")
                if item_id not in ids:
                    break
                sensed += timedelta(seconds=1)
            ids.add(item_id)
            scenes.append(Scene(
                index=i, region=region, item_id=item_id, lon=lon, lat=lat, epsg=epsg, mgrs_tile=tile,
                origin=origin, sensed=sensed, platform=platform, baseline=baseline, orbit=orbit,
                biomes=(west, east), cloudy=i in cloudy, nodata_strip=i in strips,
                sun_azimuth=float((150 if lat >= 0 else 40) + rng.uniform(-10, 10)),
                sun_zenith=_sun_zenith(lat, sensed) + float(rng.uniform(0, 5)),
            ))
    return scenes


def _sun_zenith(lat: float, when: datetime) -> float:
    """Rough solar zenith angle near local noon, degrees (latitude minus solar declination)."""
    declination = 23.44 * math.sin(2 * math.pi * (when.timetuple().tm_yday - 81) / 365)
    return min(75.0, abs(lat - declination))


def _mgrs_tile(zone: int, lat: float, easting: float, northing: float) -> str:
    """MGRS tile id (``31UDQ``) of a UTM position, in the lettering Sentinel-2 tiles use."""
    band = "CDEFGHJKLMNPQRSTUVWX"[min(19, max(0, int((lat + 80) // 8)))]
    column = ("ABCDEFGH", "JKLMNPQR", "STUVWXYZ")[(zone - 1) % 3][int(easting // 100_000) - 1]
    row = "ABCDEFGHJKLMNPQRSTUV"[(int(northing // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
    return f"{zone:02d}{band}{column}{row}"


def corners(scene: Scene, size: int) -> dict[str, tuple[float, float]]:
    """Lon/lat of the scene's corners and of the midpoints of its top and bottom edges."""
    x0, y0 = scene.origin
    x1, y1, xm = x0 + size * 10, y0 - size * 10, x0 + size * 5
    names = ("bl", "bm", "br", "tr", "tm", "tl")
    xs = [x0, xm, x1, x1, xm, x0]
    ys = [y1, y1, y1, y0, y0, y0]
    lons, lats = warp_transform(f"EPSG:{scene.epsg}", "EPSG:4326", xs, ys)
    return {n: (round(lo, 7), round(la, 7)) for n, lo, la in zip(names, lons, lats)}


def polygon(corners: dict, names: tuple[str, ...]) -> dict:
    ring = [list(corners[n]) for n in names]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def bbox(corners: dict) -> list[float]:
    lons = [c[0] for c in corners.values()]
    lats = [c[1] for c in corners.values()]
    return [min(lons), min(lats), max(lons), max(lats)]
