"""The embedded Sentinel-2 L2A-like archive: COGs, STAC items, land cover and biomes.

:func:`build_archive` writes, under one folder, a small archive shaped like Planetary
Computer's ``sentinel-2-l2a`` collection (asset keys ``B01`` … ``B12``, ``B8A``, ``SCL``;
10/20/60 m grids in the scene's UTM zone; uint16 reflectance ×1e4 with ESA's +1000
offset from processing baseline 04.00; SCL with clouds, shadows and no-data strips), plus
the layers the diversity measures need: a ``synthetic-landcover`` collection (WorldCover
codes on the scene's 10 m grid) and a biome GeoJSON. Demo and tests run on it; production
runs on real catalogs.

Regions differ on purpose: each continent mixes its own land-cover classes, some many and
evenly (``eu``, ``na``), some few and unevenly (``af``, ``oc``), and every class has its own
12-band spectrum, so a pretraining set's region changes what an encoder can learn.

Layout under ``out_dir``::

    archive.json                         spec, format version, root, item count (written last)
    catalog.json                         static STAC catalog (relative links, absolute asset hrefs)
    biomes.geojson                       biome polygons, EPSG:4326, property ``biome``
    sentinel-2-l2a/collection.json
    sentinel-2-l2a/items.ndjson          one item per line, for pgstac
    sentinel-2-l2a/<id>/<id>.json        the same items inside the static catalog
    synthetic-landcover/…                the same three for the land-cover collection
    cogs/<item_id>/<KEY>.tif             one COG per asset
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine
from rasterio.warp import transform as warp_transform
from scipy import ndimage

from pw_ray import bands as B
from pw_ray import storage
from pw_ray.config import CONTINENTS, SyntheticArchive
from pw_ray.ingest.landcover import WORLDCOVER_CLASSES, WORLDCOVER_CODES  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes, so old archives are rebuilt.
FORMAT_VERSION = 1
S2_COLLECTION = "sentinel-2-l2a"
LC_COLLECTION = "synthetic-landcover"
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
]
LC_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
]

# --------------------------------------------------------------------------- land cover

#: ESA WorldCover's classes and codes, in the order used by ``lc_fractions`` everywhere.
LANDCOVER_CLASSES: tuple[str, ...] = WORLDCOVER_CLASSES

# Surface reflectance (0–1) per class in SPECTRAL_BANDS order
# B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B11 B12. Shapes follow the textbook curves:
# vegetation's red-edge rise to a high NIR plateau, water absorbing NIR/SWIR, snow bright
# in the visible and dark in the SWIR, bare soil brightening towards the SWIR.
_SPECTRA = np.array([
    [.030, .035, .060, .035, .090, .250, .310, .330, .340, .320, .160, .080],  # tree
    [.050, .060, .085, .080, .140, .230, .270, .290, .300, .280, .260, .170],  # shrub
    [.040, .050, .085, .060, .130, .280, .340, .360, .370, .350, .240, .130],  # grass
    [.040, .045, .090, .050, .140, .330, .410, .440, .450, .430, .230, .110],  # crop
    [.100, .110, .120, .130, .140, .150, .160, .170, .170, .160, .190, .170],  # built
    [.100, .120, .170, .230, .260, .280, .300, .310, .320, .300, .380, .330],  # bare
    [.800, .820, .800, .770, .750, .720, .700, .660, .640, .550, .080, .060],  # snow
    [.060, .060, .050, .030, .025, .015, .012, .010, .009, .007, .004, .003],  # water
    [.040, .045, .070, .050, .100, .180, .210, .220, .220, .200, .120, .060],  # wetland
    [.030, .030, .055, .030, .080, .220, .270, .290, .300, .280, .120, .050],  # mangrove
    [.060, .070, .090, .100, .140, .190, .210, .220, .230, .210, .200, .130],  # moss
], dtype=np.float32)
# Clouds: bright and nearly flat, a little darker in the SWIR.
_CLOUD_SPECTRUM = np.array([.62, .61, .60, .60, .60, .60, .60, .60, .59, .55, .45, .35], dtype=np.float32)
_WAVELENGTH_UM = np.array([B.BAND_INFO[b].center_wavelength_um for b in B.SPECTRAL_BANDS], dtype=np.float32)

_SCL_OF_CLASS = np.array([
    B.SCL_VEGETATION, B.SCL_VEGETATION, B.SCL_VEGETATION, B.SCL_VEGETATION, B.SCL_NOT_VEGETATED,
    B.SCL_NOT_VEGETATED, B.SCL_SNOW, B.SCL_WATER, B.SCL_VEGETATION, B.SCL_VEGETATION, B.SCL_VEGETATION,
], dtype=np.uint8)
_CODE_OF_CLASS = np.array([WORLDCOVER_CODES[c] for c in LANDCOVER_CLASSES], dtype=np.uint8)

# Class weights per continent (tree shrub grass crop built bare snow water wetland mangrove moss).
# eu/na: many classes, even; as/sa: in between; af: bare/shrub/grass; oc: bare/shrub.
_REGION_MIX: dict[str, tuple[float, ...]] = {
    "eu": (.22, .06, .18, .24, .10, .04, .03, .07, .04, .00, .02),
    "na": (.22, .10, .16, .18, .08, .06, .05, .08, .05, .01, .01),
    "as": (.15, .08, .20, .25, .06, .18, .02, .04, .02, .00, .00),
    "sa": (.45, .10, .15, .12, .03, .03, .00, .06, .04, .02, .00),
    "af": (.04, .28, .20, .03, .00, .45, .00, .00, .00, .00, .00),
    "oc": (.02, .35, .07, .00, .00, .55, .00, .01, .00, .00, .00),
}
# Mean patch spacing range in 10 m pixels: fragmented landscapes in eu, broad ones in oc.
_REGION_PATCH_PX: dict[str, tuple[int, int]] = {
    "eu": (10, 24), "na": (14, 32), "as": (14, 32), "sa": (18, 40), "af": (24, 48), "oc": (28, 50),
}

# --------------------------------------------------------------------------- places, biomes

_BIOME_NAMES = {
    "tmb": "Tropical & Subtropical Moist Broadleaf Forests",
    "tdb": "Tropical & Subtropical Dry Broadleaf Forests",
    "tbm": "Temperate Broadleaf & Mixed Forests",
    "tcf": "Temperate Conifer Forests",
    "bor": "Boreal Forests/Taiga",
    "tgs": "Tropical & Subtropical Grasslands, Savannas & Shrublands",
    "tmg": "Temperate Grasslands, Savannas & Shrublands",
    "flg": "Flooded Grasslands & Savannas",
    "mon": "Montane Grasslands & Shrublands",
    "med": "Mediterranean Forests, Woodlands & Scrub",
    "des": "Deserts & Xeric Shrublands",
}
#: RESOLVE-like biome names used in ``biomes.geojson``.
BIOMES: tuple[str, ...] = tuple(_BIOME_NAMES.values())

# Scene centres (lon, lat), each well inland in its continent, with the biomes of the
# scene's west and east halves.
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
class ArchiveInfo:
    """Where a built archive's files are (all absolute paths)."""

    root: Path
    catalog_path: Path
    items_path: Path
    collection_path: Path
    landcover_items_path: Path
    landcover_collection_path: Path
    biomes_path: Path
    n_items: int


@dataclass(frozen=True)
class _Scene:
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
    biomes: tuple[str, str]  # west half, east half
    cloudy: bool
    nodata_strip: bool
    sun_azimuth: float
    sun_zenith: float


# --------------------------------------------------------------------------- public API

def build_archive(out_dir: str | Path, spec: SyntheticArchive, progress: bool = False) -> ArchiveInfo:
    """Write the synthetic archive into ``out_dir`` (a local folder) and describe it.

    Deterministic: the same ``spec`` gives identical items (up to the ``out_dir`` prefix of
    hrefs) and identical pixels. When ``out_dir`` already holds a complete archive built from
    the same spec, it is reused untouched; a different spec rebuilds it.
    """
    root = storage.to_local_dir(str(out_dir))
    marker = root / "archive.json"
    wanted = {"format_version": FORMAT_VERSION, "root": str(root), "spec": spec.model_dump(mode="json")}
    if marker.exists():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = {}
        if {k: found.get(k) for k in wanted} == wanted:
            log.info("synthetic archive in %s reused (same spec)", root)
            return load_archive(root)
        log.info("synthetic archive in %s was built from another spec; rebuilding", root)
    _clear(root)

    start = time.perf_counter()
    scenes = _plan_scenes(spec)
    log.info("building synthetic archive: %d scenes of %d px in %s", len(scenes), spec.scene_px, root)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _build_scene(root, s, spec), scenes)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(scenes), desc="synthetic scenes", unit="scene")
        built = list(results)

    s2_items = [b[0] for b in built]
    lc_items = [b[1] for b in built]
    biomes = [f for b in built for f in b[2]]
    info = _write_catalog(root, s2_items, lc_items, biomes)
    storage.write_text(str(marker), json.dumps({**wanted, "n_items": len(s2_items)}, indent=2))
    log.info("synthetic archive built in %.1f s: %d items in %s", time.perf_counter() - start, len(s2_items), root)
    return info


def load_archive(out_dir: str | Path) -> ArchiveInfo:
    """Describe an archive that :func:`build_archive` wrote into ``out_dir``."""
    root = storage.to_local_dir(str(out_dir))
    marker = root / "archive.json"
    if not marker.exists():
        raise FileNotFoundError(f"no synthetic archive in {root} (missing archive.json); run build_archive first")
    meta = json.loads(marker.read_text())
    return _info(root, int(meta["n_items"]))


def load_items(info: ArchiveInfo) -> list[dict]:
    """The archive's ``sentinel-2-l2a`` items as STAC item dicts, in build order."""
    return _read_ndjson(info.items_path)


def load_landcover_items(info: ArchiveInfo) -> list[dict]:
    """The archive's ``synthetic-landcover`` items (asset ``map``), one per scene."""
    return _read_ndjson(info.landcover_items_path)


def rewrite_hrefs(item: dict, prefix_from: str, prefix_to: str) -> dict:
    """A copy of ``item`` whose asset and link hrefs starting with ``prefix_from`` start with ``prefix_to``.

    E.g. ``rewrite_hrefs(item, str(info.root), "http://127.0.0.1:8000")`` to read the COGs over HTTP.
    """
    prefix_from, prefix_to = str(prefix_from), str(prefix_to)
    out = copy.deepcopy(item)
    for obj in list(out.get("assets", {}).values()) + list(out.get("links", [])):
        href = obj.get("href", "")
        if href.startswith(prefix_from):
            obj["href"] = prefix_to + href[len(prefix_from):]
    return out


# --------------------------------------------------------------------------- planning

def _plan_scenes(spec: SyntheticArchive) -> list[_Scene]:
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
            scenes.append(_Scene(
                index=i, region=region, item_id=item_id, lon=lon, lat=lat, epsg=epsg, mgrs_tile=tile,
                origin=origin, sensed=sensed, platform=platform, baseline=baseline, orbit=orbit,
                biomes=(_BIOME_NAMES[west], _BIOME_NAMES[east]), cloudy=i in cloudy, nodata_strip=i in strips,
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


# --------------------------------------------------------------------------- painting

def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
    """Smooth random field, (H, W) float32 with mean ≈ 0 and std 1, features ~``scale`` px wide."""
    scale = max(1, int(scale))
    low = rng.standard_normal((shape[0] // scale + 4, shape[1] // scale + 4)).astype(np.float32)
    field = ndimage.zoom(low, scale, order=3)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _nearest_seed(y: np.ndarray, x: np.ndarray, seeds: np.ndarray, cell: float) -> np.ndarray:
    """Index (into the flattened seed grid) of the nearest seed to each position.

    ``seeds`` is (ny, nx, 2) jittered-grid seed positions with seed (i, j) in the cell whose
    corner is ((i - 1) · cell, (j - 1) · cell), so the nearest seed is among the 3 × 3 cells around.
    """
    ny, nx = seeds.shape[:2]
    ci = np.clip(np.floor(y / cell).astype(np.int32) + 1, 1, ny - 2)
    cj = np.clip(np.floor(x / cell).astype(np.int32) + 1, 1, nx - 2)
    best = np.full(y.shape, np.inf, dtype=np.float32)
    out = np.zeros(y.shape, dtype=np.int32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            i, j = ci + di, cj + dj
            d = (seeds[i, j, 0] - y) ** 2 + (seeds[i, j, 1] - x) ** 2
            closer = d < best
            best = np.where(closer, d, best)
            out = np.where(closer, i * nx + j, out)
    return out


def _seed_grid(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    n = int(math.ceil(size / cell)) + 2
    corner = (np.arange(n, dtype=np.float32) - 1) * cell
    jitter = rng.uniform(0.1, 0.9, size=(n, n, 2)).astype(np.float32) * cell
    return np.stack(np.meshgrid(corner, corner, indexing="ij"), axis=-1) + jitter


def _scene_mix(region: str, lat: float) -> np.ndarray:
    """The region's class weights, less the classes the scene's latitude rules out."""
    mix = np.asarray(_REGION_MIX[region], dtype=np.float64).copy()
    idx = {c: i for i, c in enumerate(LANDCOVER_CLASSES)}
    if abs(lat) < 35:  # no lasting lowland snow in the (sub)tropics
        mix[idx["grass"]] += mix[idx["snow"]]
        mix[idx["snow"]] = 0
    if abs(lat) > 25:  # mangroves are tropical
        mix[idx["wetland"]] += mix[idx["mangrove"]]
        mix[idx["mangrove"]] = 0
    return mix / mix.sum()


def _paint_landcover(rng: np.random.Generator, region: str, lat: float,
                     size: int) -> tuple[np.ndarray, np.ndarray]:
    """Patchwork of land-cover classes: (class index map, patch id map), both (size, size) at 10 m.

    Patches are Voronoi cells with warped edges; each patch draws its class from the mix of
    the ~1.5 km zone it lies in, and zone mixes scatter around the region's mix so that
    chips of one scene differ in what dominates them.
    """
    lo, hi = _REGION_PATCH_PX[region]
    cell = float(rng.integers(lo, hi + 1))
    seeds = _seed_grid(rng, size, cell)
    zone_cell = float(rng.integers(120, 200))
    zone_seeds = _seed_grid(rng, size, zone_cell)
    mix = _scene_mix(region, lat)
    present = mix > 0
    zone_mix = np.zeros((zone_seeds.shape[0] * zone_seeds.shape[1], mix.size))
    zone_mix[:, present] = rng.dirichlet(8 * mix[present], size=len(zone_mix))
    seed_zone = _nearest_seed(seeds[..., 0].ravel(), seeds[..., 1].ravel(), zone_seeds, zone_cell)
    # Inverse-CDF draw of one class per patch from its zone's mix.
    cdf = np.cumsum(zone_mix[seed_zone], axis=1)
    u = rng.random(len(seed_zone))[:, None] * cdf[:, -1:]
    patch_class = np.minimum((u > cdf).sum(axis=1), mix.size - 1).astype(np.uint8)

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    warp = 0.4 * cell
    yy += warp * _smooth_field(rng, (size, size), int(cell))
    xx += warp * _smooth_field(rng, (size, size), int(cell))
    patch = _nearest_seed(yy, xx, seeds, cell)
    return patch_class[patch], patch


def _paint_clouds(rng: np.random.Generator, size: int, sun_azimuth: float) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity and shadow strength, both (size, size) float32 in [0, 1] at 10 m."""
    field = _smooth_field(rng, (size, size), int(rng.integers(40, 100)))
    cover = float(rng.uniform(0.03, 0.4))
    threshold = float(np.quantile(field, 1 - cover))
    # Opacity ≥ 0.3 inside the blob and a thin halo (cirrus-like) just outside it.
    alpha = np.clip(0.3 + (field - threshold) / 0.5, 0, 1)
    alpha = np.where(field >= threshold, alpha, np.clip(0.3 + (field - threshold) / 0.8, 0, 0.3))
    alpha = alpha.astype(np.float32)
    # Shadows fall away from the sun, a cloud height's worth of pixels away.
    dist = float(rng.uniform(15, 40))
    away = math.radians(sun_azimuth + 180)
    dx, dy = int(round(dist * math.sin(away))), int(round(-dist * math.cos(away)))
    shadow = np.zeros_like(alpha)
    src = alpha[max(0, -dy): size - max(0, dy), max(0, -dx): size - max(0, dx)]
    shadow[max(0, dy): max(0, dy) + src.shape[0], max(0, dx): max(0, dx) + src.shape[1]] = src
    return alpha, shadow * (1 - alpha)


def _nodata_strip(rng: np.random.Generator, size: int) -> np.ndarray:
    """Slanted no-data band along the left or right edge (a swath edge), (size, size) bool at 10 m.

    Drawn on the 60 m grid and repeated, so the strip is identical in every band's grid.
    """
    n60 = size // 6
    r, c = np.mgrid[0:n60, 0:n60].astype(np.float32)
    width = rng.uniform(0.1, 0.35) * n60
    slope = rng.uniform(-0.3, 0.3)
    mask = c < width + slope * (r - n60 / 2)
    if rng.random() < 0.5:
        mask = mask[:, ::-1]
    return np.repeat(np.repeat(mask, 6, axis=0), 6, axis=1)


def _block_mean(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    return a.reshape(a.shape[0] // f, f, a.shape[1] // f, f).mean(axis=(1, 3))


def _paint_scene(scene: _Scene, spec: SyntheticArchive) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pixels of one scene: ({asset key: (H, W) array at its native grid}, land-cover classes).

    Bands are uint16 DN = reflectance ×1e4 (+1000 from baseline 04.00, 0 = no data); SCL is
    uint8 at 20 m; the class map is (scene_px, scene_px) uint8 indices into LANDCOVER_CLASSES.
    """
    size = spec.scene_px
    rng = np.random.default_rng([spec.seed, 1, scene.index])
    lc, patch = _paint_landcover(rng, scene.region, scene.lat, size)
    n_patches = int(patch.max()) + 1
    # Within-class variation: per-patch brightness and spectral tilt, smooth texture, noise.
    brightness = rng.uniform(0.85, 1.15, n_patches).astype(np.float32) * np.float32(rng.uniform(0.92, 1.08))
    tilt = np.clip(rng.normal(0, 0.12, n_patches), -0.3, 0.3).astype(np.float32)
    texture = 1 + 0.06 * _smooth_field(rng, (size, size), int(rng.integers(3, 9)))
    gain = brightness[patch] * texture
    tilt_px = tilt[patch]
    if scene.cloudy:
        alpha, shadow = _paint_clouds(rng, size, scene.sun_azimuth)
    else:
        alpha = shadow = np.zeros((size, size), dtype=np.float32)
    nodata10 = _nodata_strip(rng, size) if scene.nodata_strip else np.zeros((size, size), dtype=bool)
    offset = 1000 if _baseline_offset(scene.baseline) else 0

    arrays: dict[str, np.ndarray] = {}
    for b, band in enumerate(B.SPECTRAL_BANDS):
        surface = _SPECTRA[lc, b] * gain * (1 + tilt_px * (_WAVELENGTH_UM[b] - 0.9)) * (1 - 0.6 * shadow)
        refl = surface * (1 - alpha) + _CLOUD_SPECTRUM[b] * alpha
        f = B.BAND_INFO[band].resolution_m // 10
        refl = _block_mean(refl, f)
        refl = refl * (1 + rng.normal(0, 0.015, refl.shape)) + rng.normal(0, 0.003, refl.shape)
        # DN ≥ 1 keeps 0 free for no data; the ceiling leaves room for the baseline offset.
        dn = np.clip(np.rint(refl * 1e4), 1, 65535 - offset).astype(np.uint16) + np.uint16(offset)
        dn[nodata10[::f, ::f]] = 0
        arrays[band] = dn

    scl = _SCL_OF_CLASS[lc[::2, ::2]]
    a20, s20 = alpha[::2, ::2], shadow[::2, ::2]
    scl[(s20 > 0.3) & (a20 < 0.1)] = B.SCL_CLOUD_SHADOW
    scl[(a20 >= 0.1) & (a20 < 0.3)] = B.SCL_CIRRUS
    scl[(a20 >= 0.3) & (a20 < 0.65)] = B.SCL_CLOUD_MEDIUM
    scl[a20 >= 0.65] = B.SCL_CLOUD_HIGH
    scl[nodata10[::2, ::2]] = B.SCL_NODATA
    arrays[B.SCL] = scl
    return arrays, lc


def _baseline_offset(baseline: str) -> bool:
    """Whether ESA's BOA_ADD_OFFSET (+1000 DN) applies: processing baseline 04.00 and later."""
    return tuple(int(p) for p in baseline.split(".")) >= (4, 0)


# --------------------------------------------------------------------------- writing

def _write_cog(path: Path, array: np.ndarray, epsg: int, transform: Affine, block_px: int = 256) -> None:
    """Write a one-band COG atomically: deflate, no overviews, ``block_px`` tiles for grids at
    least that large, else 256 px (128 for grids of 256 px or less)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    side = max(array.shape)
    block = block_px if side >= block_px else (256 if side > 256 else 128)
    with rasterio.open(
        tmp, "w", driver="COG", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype.name,
        crs=f"EPSG:{epsg}", transform=transform, nodata=0, compress="DEFLATE", predictor=2, blocksize=block,
        overviews="NONE",
    ) as dst:
        dst.write(array, 1)
    os.replace(tmp, path)


def _build_scene(root: Path, scene: _Scene, spec: SyntheticArchive) -> tuple[dict, dict, list[dict]]:
    """Paint one scene and write its COGs; return (S2 item, land-cover item, biome features)."""
    arrays, lc = _paint_scene(scene, spec)
    x0, y0 = scene.origin
    size = spec.scene_px
    assets = {}
    for key in B.ALL_BANDS:
        res = B.resolution(key)
        transform = Affine(res, 0, x0, 0, -res, y0)
        href = root / "cogs" / scene.item_id / f"{key}.tif"
        _write_cog(href, arrays[key], scene.epsg, transform, spec.block_px)
        assets[key] = _asset(key, href, arrays[key].shape, transform, scene.baseline)

    lc_id = f"lc-{scene.item_id}"
    lc_href = root / "cogs" / lc_id / "map.tif"
    transform10 = Affine(10, 0, x0, 0, -10, y0)
    _write_cog(lc_href, _CODE_OF_CLASS[lc], scene.epsg, transform10, spec.block_px)

    corners = _corners(scene, size)
    scl = arrays[B.SCL]
    s2_item = _s2_item(scene, corners, assets, scl)
    lc_item = _lc_item(scene, lc_id, corners, lc_href, lc.shape, transform10)
    biomes = _biome_features(scene, corners)
    return s2_item, lc_item, biomes


def _corners(scene: _Scene, size: int) -> dict[str, tuple[float, float]]:
    """Lon/lat of the scene's corners and of the midpoints of its top and bottom edges."""
    x0, y0 = scene.origin
    x1, y1, xm = x0 + size * 10, y0 - size * 10, x0 + size * 5
    names = ("bl", "bm", "br", "tr", "tm", "tl")
    xs = [x0, xm, x1, x1, xm, x0]
    ys = [y1, y1, y1, y0, y0, y0]
    lons, lats = warp_transform(f"EPSG:{scene.epsg}", "EPSG:4326", xs, ys)
    return {n: (round(lo, 7), round(la, 7)) for n, lo, la in zip(names, lons, lats)}


def _polygon(corners: dict, names: tuple[str, ...]) -> dict:
    ring = [list(corners[n]) for n in names]
    return {"type": "Polygon", "coordinates": [ring + [ring[0]]]}


def _bbox(corners: dict) -> list[float]:
    lons = [c[0] for c in corners.values()]
    lats = [c[1] for c in corners.values()]
    return [min(lons), min(lats), max(lons), max(lats)]


def _asset(key: str, href: Path, shape: tuple[int, int], transform: Affine, baseline: str) -> dict:
    res = B.resolution(key)
    asset = {"href": str(href), "type": COG_TYPE, "title": _TITLES[key], "roles": ["data"], "gsd": float(res),
             "proj:shape": [int(shape[0]), int(shape[1])], "proj:transform": [float(v) for v in transform[:6]]}
    if key == B.SCL:
        asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": float(res)}]
        return asset
    info = B.BAND_INFO[key]
    asset["eo:bands"] = [{"name": key, "common_name": info.common_name, "description": _TITLES[key].split(" - ")[1],
                          "center_wavelength": info.center_wavelength_um,
                          "full_width_half_max": info.full_width_half_max_um}]
    # The physical rule, also for readers that honour raster:bands: reflectance = DN·1e-4 + offset.
    asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": float(res), "scale": 0.0001,
                              "offset": -0.1 if _baseline_offset(baseline) else 0.0}]
    return asset


_TITLES = {
    "B01": "Band 1 - Coastal aerosol - 60m", "B02": "Band 2 - Blue - 10m", "B03": "Band 3 - Green - 10m",
    "B04": "Band 4 - Red - 10m", "B05": "Band 5 - Vegetation red edge 1 - 20m",
    "B06": "Band 6 - Vegetation red edge 2 - 20m", "B07": "Band 7 - Vegetation red edge 3 - 20m",
    "B08": "Band 8 - NIR - 10m", "B8A": "Band 8A - Vegetation red edge 4 - 20m",
    "B09": "Band 9 - Water vapor - 60m", "B11": "Band 11 - SWIR (1.6) - 20m", "B12": "Band 12 - SWIR (2.2) - 20m",
    "SCL": "Scene classification map (SCL)",
}


def _scl_percentages(scl: np.ndarray) -> dict[str, float]:
    """Sen2Cor-style percentages: no data over all pixels, every class over valid pixels."""
    counts = np.bincount(scl.ravel(), minlength=12).astype(np.float64)
    valid = max(1.0, counts.sum() - counts[B.SCL_NODATA])

    def pct(*classes: int) -> float:
        return round(100 * float(sum(counts[c] for c in classes)) / valid, 4)

    return {
        # ESA's CLOUDY_PIXEL_PERCENTAGE: medium + high probability clouds + thin cirrus (no shadows).
        "eo:cloud_cover": pct(B.SCL_CLOUD_MEDIUM, B.SCL_CLOUD_HIGH, B.SCL_CIRRUS),
        "s2:nodata_pixel_percentage": round(100 * float(counts[B.SCL_NODATA]) / counts.sum(), 4),
        "s2:high_proba_clouds_percentage": pct(B.SCL_CLOUD_HIGH),
        "s2:medium_proba_clouds_percentage": pct(B.SCL_CLOUD_MEDIUM),
        "s2:thin_cirrus_percentage": pct(B.SCL_CIRRUS),
        "s2:cloud_shadow_percentage": pct(B.SCL_CLOUD_SHADOW),
        "s2:vegetation_percentage": pct(B.SCL_VEGETATION),
        "s2:not_vegetated_percentage": pct(B.SCL_NOT_VEGETATED),
        "s2:water_percentage": pct(B.SCL_WATER),
        "s2:snow_ice_percentage": pct(B.SCL_SNOW),
    }


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _s2_item(scene: _Scene, corners: dict, assets: dict, scl: np.ndarray) -> dict:
    props = {
        "datetime": _iso(scene.sensed),
        "platform": scene.platform,
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        **_scl_percentages(scl),
        "proj:epsg": scene.epsg,
        "sat:orbit_state": "descending",
        "sat:relative_orbit": scene.orbit,
        "s2:mgrs_tile": scene.mgrs_tile,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.baseline,
        "s2:product_uri": f"{scene.item_id}.SAFE",
        "s2:mean_solar_azimuth": round(scene.sun_azimuth, 4),
        "s2:mean_solar_zenith": round(scene.sun_zenith, 4),
        "synthetic:region": scene.region,
    }
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": STAC_EXTENSIONS,
        "id": scene.item_id, "collection": S2_COLLECTION,
        "geometry": _polygon(corners, ("bl", "bm", "br", "tr", "tm", "tl")), "bbox": _bbox(corners),
        "properties": props, "links": [], "assets": assets,
    }


def _lc_item(scene: _Scene, lc_id: str, corners: dict, href: Path, shape, transform: Affine) -> dict:
    classes = [{"value": WORLDCOVER_CODES[c], "name": c, "description": c} for c in LANDCOVER_CLASSES]
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": LC_EXTENSIONS,
        "id": lc_id, "collection": LC_COLLECTION,
        "geometry": _polygon(corners, ("bl", "bm", "br", "tr", "tm", "tl")), "bbox": _bbox(corners),
        "properties": {"datetime": _iso(scene.sensed), "proj:epsg": scene.epsg,
                       "synthetic:region": scene.region, "synthetic:scene": scene.item_id},
        "links": [],
        "assets": {"map": {
            "href": str(href), "type": COG_TYPE, "title": "Land cover (WorldCover codes)", "roles": ["data"],
            "gsd": 10.0, "proj:shape": [int(shape[0]), int(shape[1])],
            "proj:transform": [float(v) for v in transform[:6]],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 10.0}],
            "classification:classes": classes,
        }},
    }


def _biome_features(scene: _Scene, corners: dict) -> list[dict]:
    """The scene's west and east halves, each with its biome (together they tile the footprint)."""
    halves = (("bl", "bm", "tm", "tl"), ("bm", "br", "tr", "tm"))
    return [{"type": "Feature", "geometry": _polygon(corners, names),
             "properties": {"biome": biome, "region": scene.region, "scene": scene.item_id}}
            for names, biome in zip(halves, scene.biomes)]


def _collection(cid: str, description: str, license_: str, extensions: list[str], items: list[dict],
                summaries: dict) -> dict:
    boxes = np.array([it["bbox"] for it in items])
    times = sorted(it["properties"]["datetime"] for it in items)
    return {
        "type": "Collection", "stac_version": "1.0.0", "stac_extensions": extensions, "id": cid,
        "description": description, "license": license_,
        "extent": {"spatial": {"bbox": [[*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]]},
                   "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": summaries, "links": [],
    }


def _write_catalog(root: Path, s2_items: list[dict], lc_items: list[dict], biomes: list[dict]) -> ArchiveInfo:
    s2_summaries = {"gsd": [10.0, 20.0, 60.0], "platform": ["sentinel-2a", "sentinel-2b"],
                    "instruments": ["msi"], "constellation": ["Sentinel 2"],
                    "eo:bands": [s2_items[0]["assets"][b]["eo:bands"][0] for b in B.SPECTRAL_BANDS]}
    collections = {
        S2_COLLECTION: (_collection(S2_COLLECTION, "Synthetic Sentinel-2 Level-2A scenes (pw-ray test archive)",
                                    "proprietary", STAC_EXTENSIONS, s2_items, s2_summaries), s2_items),
        LC_COLLECTION: (_collection(LC_COLLECTION, "Synthetic land cover (WorldCover codes) on the scenes' grids",
                                    "CC-BY-4.0", LC_EXTENSIONS, lc_items, {"gsd": [10.0]}), lc_items),
    }
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "pw-ray-synthetic",
               "description": "pw-ray's synthetic Sentinel-2 L2A archive with land cover",
               "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]}
    for cid, (coll, items) in collections.items():
        catalog["links"].append({"rel": "child", "href": f"./{cid}/collection.json", "type": "application/json"})
        folder = root / cid
        lines = "".join(json.dumps(it, separators=(",", ":")) + "\n" for it in items)
        storage.write_text(str(folder / "items.ndjson"), lines)
        links = [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                 {"rel": "parent", "href": "../catalog.json", "type": "application/json"}]
        for it in items:
            links.append({"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/geo+json"})
            static = dict(it, links=[
                {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            ])
            storage.write_text(str(folder / it["id"] / f"{it['id']}.json"), json.dumps(static, indent=1))
        storage.write_text(str(folder / "collection.json"), json.dumps(dict(coll, links=links), indent=1))
    storage.write_text(str(root / "catalog.json"), json.dumps(catalog, indent=1))
    storage.write_text(str(root / "biomes.geojson"),
                       json.dumps({"type": "FeatureCollection", "features": biomes}, separators=(",", ":")))
    return _info(root, len(s2_items))


def _info(root: Path, n_items: int) -> ArchiveInfo:
    return ArchiveInfo(
        root=root, catalog_path=root / "catalog.json",
        items_path=root / S2_COLLECTION / "items.ndjson", collection_path=root / S2_COLLECTION / "collection.json",
        landcover_items_path=root / LC_COLLECTION / "items.ndjson",
        landcover_collection_path=root / LC_COLLECTION / "collection.json",
        biomes_path=root / "biomes.geojson", n_items=n_items,
    )


def _clear(root: Path) -> None:
    """Remove what an earlier (other-spec or unfinished) build left; touch nothing else in ``root``."""
    (root / "archive.json").unlink(missing_ok=True)
    for name in ("cogs", S2_COLLECTION, LC_COLLECTION):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("catalog.json", "biomes.geojson"):
        (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)


def _read_ndjson(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
