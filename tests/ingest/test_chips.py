"""pw_ray.ingest.chips: DN harmonisation."""

from __future__ import annotations

import numpy as np
import pytest

from pw_ray.ingest.chips import harmonise


def _widened(dn: np.ndarray, offset: int) -> np.ndarray:
    out = np.clip(dn.astype(np.int64) + offset, 1, 65535)
    out[dn == 0] = 0
    return out.astype(np.uint16)


@pytest.mark.parametrize("offset", [-1000, 1000, -1, 1, -65534, 65534])
def test_harmonise_saturates_keeps_no_data_and_stays_uint16(offset):
    rng = np.random.default_rng(0)
    dn = rng.integers(0, 65536, size=(4, 3, 16, 16)).astype(np.uint16)
    dn.flat[:9] = [0, 1, 999, 1000, 1001, 64535, 64536, 65534, 65535]
    got = harmonise(dn, offset)
    assert got.dtype == np.uint16 and got.shape == dn.shape
    np.testing.assert_array_equal(got, _widened(dn, offset))
    assert (got[dn == 0] == 0).all() and (got[dn != 0] >= 1).all()


def test_harmonise_without_offset_returns_the_input_and_rejects_impossible_offsets():
    dn = np.arange(10, dtype=np.uint16)
    assert harmonise(dn, 0) is dn
    with pytest.raises(ValueError, match="uint16"):
        harmonise(dn, -70000)


# ----------------------------------------------------------------------------- no data at a strip edge
def _strip_cog(path, declare_nodata: bool) -> np.ndarray:
    """A 20 m COG of 96×96 px with a slanted no-data strip (DN 0) on its left side, like a swath
    edge; valid DNs vary smoothly in 1000..3000. Returns the array."""
    import rasterio
    from rasterio.transform import Affine

    r, c = np.mgrid[0:96, 0:96]
    dn = (1000 + 10 * r + 13 * c + 200 * np.sin(c / 5.0)).astype(np.uint16)
    dn[c < 30 + (r - 48) * 0.4] = 0
    with rasterio.open(path, "w", driver="COG", width=96, height=96, count=1, dtype="uint16", crs="EPSG:32631",
                       transform=Affine(20, 0, 500000, 0, -20, 5000000), nodata=0 if declare_nodata else None,
                       blocksize=128, overviews="NONE") as dst:
        dst.write(dn, 1)
    return dn


def _bilinear_of_valid(src: np.ndarray, r0: int, c0: int, size: int, f: int) -> np.ndarray:
    """Bilinear upsampling by ``f`` of a 10 m window (r0, c0, size), pixel centres aligned, from
    valid (≠ 0) source pixels only, as float: along rows first, then along columns, each pass
    weighting only the valid neighbours (GDAL's separable kernel does the same)."""
    def along(a: np.ndarray, ok: np.ndarray, off: int, axis: int):
        pos = (off + np.arange(size) + 0.5) / f - 0.5
        i0 = np.floor(pos).astype(int)
        w1 = pos - i0
        a, ok = np.moveaxis(a, axis, -1), np.moveaxis(ok, axis, -1)
        num = (1 - w1) * a[..., i0] * ok[..., i0] + w1 * a[..., i0 + 1] * ok[..., i0 + 1]
        den = (1 - w1) * ok[..., i0] + w1 * ok[..., i0 + 1]
        return (np.moveaxis(num / np.where(den > 0, den, 1), -1, axis),
                np.moveaxis(den > 0, -1, axis))

    a, ok = along(src.astype(float), src > 0, c0, axis=1)
    return along(a, ok, r0, axis=0)[0]


@pytest.mark.parametrize("declared", [True, False], ids=["nodata-declared", "nodata-undeclared"])
def test_no_data_does_not_leak_across_a_strip_edge(tmp_path, declared):
    from rasterio.enums import Resampling

    from pw_ray.ingest.chips import read_band_windows

    src = _strip_cog(tmp_path / "B11.tif", declared)
    size = 48
    windows = [(40, 30), (41, 51), (97, 33), (2, 2)]  # 10 m offsets, odd ones off the 20 m grid; all cross the edge
    got = read_band_windows(str(tmp_path / "B11.tif"), windows, size, 10.0, Resampling.bilinear)
    for (r0, c0), chip in zip(windows, got):
        rows, cols = np.mgrid[r0:r0 + size, c0:c0 + size]
        under = src[rows // 2, cols // 2]  # the 20 m pixel under each 10 m pixel's centre
        assert (under == 0).any() and (under > 0).any(), "the window must cross the strip edge"
        # 0 exactly where the source is no data: no valid value spread into the strip, no 0 into the data.
        np.testing.assert_array_equal(chip == 0, under == 0)
        # Valid pixels are the bilinear of their valid neighbours (the strip is not averaged in).
        ok = under > 0
        inner = ok & (rows >= 2) & (cols >= 2) & (rows < 190) & (cols < 190)  # away from the raster's edges
        want = _bilinear_of_valid(src, r0, c0, size, 2)
        assert np.abs(chip[inner].astype(float) - want[inner]).max() <= 1.0
        edge = inner & (np.abs(want - _bilinear_of_valid(np.where(src > 0, src, 1), r0, c0, size, 2)) > 50)
        assert edge.sum() > 20, "the check must cover pixels next to the strip"
