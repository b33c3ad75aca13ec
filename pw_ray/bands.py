"""Canonical Sentinel-2 band names, their grids, and SatMAE's normalisation statistics.

Every module speaks canonical names: ``B01`` … ``B12``, ``B8A`` and ``SCL``. Short
aliases (``B2``, ``B8a``) are accepted on input and normalised by :func:`canonical`.
"""

from __future__ import annotations

from dataclasses import dataclass

#: All Sentinel-2 L2A spectral bands in ESA order (B10 is absent from L2A products).
SPECTRAL_BANDS: tuple[str, ...] = (
    "B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12",
)
#: Scene classification layer (L2A), an integer class per 20 m pixel.
SCL = "SCL"
ALL_BANDS: tuple[str, ...] = SPECTRAL_BANDS + (SCL,)

#: The ten bands of SatMAE's group-channel model, in model order.
SATMAE_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
#: SatMAE's default band groups: RGB+NIR, red edge, SWIR.
SATMAE_GROUPS: tuple[tuple[str, ...], ...] = (
    ("B02", "B03", "B04", "B08"),
    ("B05", "B06", "B07", "B8A"),
    ("B11", "B12"),
)


@dataclass(frozen=True)
class BandInfo:
    name: str
    common_name: str
    resolution_m: int
    center_wavelength_um: float
    full_width_half_max_um: float


BAND_INFO: dict[str, BandInfo] = {
    b.name: b
    for b in (
        BandInfo("B01", "coastal", 60, 0.443, 0.027),
        BandInfo("B02", "blue", 10, 0.490, 0.098),
        BandInfo("B03", "green", 10, 0.560, 0.045),
        BandInfo("B04", "red", 10, 0.665, 0.038),
        BandInfo("B05", "rededge", 20, 0.704, 0.019),
        BandInfo("B06", "rededge", 20, 0.740, 0.018),
        BandInfo("B07", "rededge", 20, 0.783, 0.028),
        BandInfo("B08", "nir", 10, 0.842, 0.145),
        BandInfo("B8A", "nir08", 20, 0.865, 0.033),
        BandInfo("B09", "nir09", 60, 0.945, 0.026),
        BandInfo("B11", "swir16", 20, 1.610, 0.143),
        BandInfo("B12", "swir22", 20, 2.190, 0.242),
    )
}

#: SCL classes (ESA Sen2Cor).
SCL_NODATA = 0
SCL_SATURATED = 1
SCL_DARK = 2
SCL_CLOUD_SHADOW = 3
SCL_VEGETATION = 4
SCL_NOT_VEGETATED = 5
SCL_WATER = 6
SCL_UNCLASSIFIED = 7
SCL_CLOUD_MEDIUM = 8
SCL_CLOUD_HIGH = 9
SCL_CIRRUS = 10
SCL_SNOW = 11
#: SCL classes counted as cloud (shadows included: they spoil the pixel as much).
SCL_CLOUDY: tuple[int, ...] = (SCL_CLOUD_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS)

#: fMoW-Sentinel statistics SatMAE normalises with, 13 bands B01…B12 incl. B10 (PAPER.md).
_FMOW_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
_FMOW_MEAN = (1370.19, 1184.38, 1120.77, 1136.26, 1263.74, 1645.40, 1846.87, 1762.60, 1972.62,
              582.73, 14.77, 1732.16, 1247.92)
_FMOW_STD = (633.15, 650.28, 712.13, 965.23, 948.98, 1108.07, 1258.36, 1233.15, 1364.39,
             472.38, 14.31, 1310.37, 1087.60)
FMOW_MEAN: dict[str, float] = dict(zip(_FMOW_ORDER, _FMOW_MEAN))
FMOW_STD: dict[str, float] = dict(zip(_FMOW_ORDER, _FMOW_STD))


class UnknownBandError(ValueError):
    pass


def canonical(name: str) -> str:
    """Return the canonical name of a band: ``"b2"`` → ``"B02"``, ``"B8a"`` → ``"B8A"``.

    Raises :class:`UnknownBandError` naming the allowed values for anything else.
    """
    raw = str(name).strip().upper()
    if raw == SCL:
        return SCL
    if raw.startswith("B") and raw[1:].isdigit() and len(raw) <= 3:
        raw = f"B{int(raw[1:]):02d}"
    if raw not in BAND_INFO and raw != "B10":
        raise UnknownBandError(
            f"unknown band {name!r}; allowed: {', '.join(ALL_BANDS)} (aliases like 'B2' accepted)"
        )
    return raw


def canonical_list(names) -> list[str]:
    return [canonical(n) for n in names]


def resolution(band: str) -> int:
    """Native ground sampling distance of a band in metres (SCL: 20)."""
    band = canonical(band)
    return 20 if band == SCL else BAND_INFO[band].resolution_m
