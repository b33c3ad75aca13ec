"""The synthetic land cover: WorldCover classes mixed per continent, painted as warped Voronoi patches.

Regions differ on purpose: each continent mixes its own classes, some many and evenly (``eu``,
``na``), some few and unevenly (``af``, ``oc``). :func:`smooth_field` is the smooth noise the
patch edges, textures and clouds are all drawn from.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from pw_ray.ingest.landcover import WORLDCOVER_CLASSES, WORLDCOVER_CODES

#: ESA WorldCover's classes and codes, in the order used by ``lc_fractions`` everywhere.
LANDCOVER_CLASSES: tuple[str, ...] = WORLDCOVER_CLASSES
#: The WorldCover code of each class index (the land-cover COGs hold codes, the painter indices).
CODE_OF_CLASS = np.array([WORLDCOVER_CODES[c] for c in LANDCOVER_CLASSES], dtype=np.uint8)

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


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale: int) -> np.ndarray:
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


def paint_landcover(rng: np.random.Generator, region: str, lat: float,
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
    yy += warp * smooth_field(rng, (size, size), int(cell))
    xx += warp * smooth_field(rng, (size, size), int(cell))
    patch = _nearest_seed(yy, xx, seeds, cell)
    return patch_class[patch], patch
