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
