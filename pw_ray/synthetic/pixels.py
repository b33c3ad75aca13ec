"""A scene's pixels: per-class 12-band spectra, clouds and their shadows, no-data strips, SCL, DNs.

Every class has its own spectrum, so a pretraining set's region changes what an encoder can learn.
"""

from __future__ import annotations

import math

import numpy as np

from pw_ray import bands as B
from pw_ray.config import SyntheticArchive
from pw_ray.synthetic.landcover import paint_landcover, smooth_field
from pw_ray.synthetic.scenes import Scene

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


def _paint_clouds(rng: np.random.Generator, size: int, sun_azimuth: float) -> tuple[np.ndarray, np.ndarray]:
    """Cloud opacity and shadow strength, both (size, size) float32 in [0, 1] at 10 m."""
    field = smooth_field(rng, (size, size), int(rng.integers(40, 100)))
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


def paint_scene(scene: Scene, spec: SyntheticArchive) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Pixels of one scene: ({asset key: (H, W) array at its native grid}, land-cover classes).

    Bands are uint16 DN = reflectance ×1e4 (+1000 from baseline 04.00, 0 = no data); SCL is
    uint8 at 20 m; the class map is (scene_px, scene_px) uint8 indices into LANDCOVER_CLASSES.
    """
    size = spec.scene_px
    rng = np.random.default_rng([spec.seed, 1, scene.index])
    lc, patch = paint_landcover(rng, scene.region, scene.lat, size)
    n_patches = int(patch.max()) + 1
    # Within-class variation: per-patch brightness and spectral tilt, smooth texture, noise.
    brightness = rng.uniform(0.85, 1.15, n_patches).astype(np.float32) * np.float32(rng.uniform(0.92, 1.08))
    tilt = np.clip(rng.normal(0, 0.12, n_patches), -0.3, 0.3).astype(np.float32)
    texture = 1 + 0.06 * smooth_field(rng, (size, size), int(rng.integers(3, 9)))
    gain = brightness[patch] * texture
    tilt_px = tilt[patch]
    if scene.cloudy:
        alpha, shadow = _paint_clouds(rng, size, scene.sun_azimuth)
    else:
        alpha = shadow = np.zeros((size, size), dtype=np.float32)
    nodata10 = _nodata_strip(rng, size) if scene.nodata_strip else np.zeros((size, size), dtype=bool)
    offset = 1000 if baseline_offset(scene.baseline) else 0

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


def baseline_offset(baseline: str) -> bool:
    """Whether ESA's BOA_ADD_OFFSET (+1000 DN) applies: processing baseline 04.00 and later."""
    return tuple(int(p) for p in baseline.split(".")) >= (4, 0)
