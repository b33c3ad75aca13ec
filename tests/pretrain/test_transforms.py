"""SatMAE normalisation, streaming statistics and the batched crop-and-flip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pw_ray import bands as B
from pw_ray.pretrain.transforms import (compute_stats, merge_moments, normalize, pixel_moments,
                                       random_resized_crop_flip, stats_for)

MEAN = torch.tensor([1000.0, 2000.0])
STD = torch.tensor([100.0, 400.0])


def _chip(values_per_band) -> torch.Tensor:
    return torch.as_tensor(values_per_band, dtype=torch.float32)[None, :, None, None].expand(1, -1, 2, 2)


def test_normalize_maps_mean_minus_2std_to_0_mean_to_half_mean_plus_2std_to_1():
    for offset, expected in ((-2, 0.0), (0, 0.5), (2, 1.0), (1, 0.75)):
        out = normalize(_chip(MEAN + offset * STD), MEAN, STD)
        assert out.dtype == torch.float32
        assert out.flatten().tolist() == pytest.approx([expected] * 8)


def test_normalize_clips_outside_two_std():
    out = normalize(_chip([0.0, 9000.0]), MEAN, STD)
    assert out[0, 0].flatten().tolist() == [0.0] * 4
    assert out[0, 1].flatten().tolist() == [1.0] * 4


def test_normalize_accepts_uint16_reflectance():
    x = torch.tensor([[800, 2400]], dtype=torch.int32).to(torch.uint16)[:, :, None, None]
    assert normalize(x, MEAN, STD).flatten().tolist() == pytest.approx([0.0, 0.75])


def test_stats_for_follows_the_band_order_and_aliases():
    mean, std = stats_for(["B12", "b2"])
    assert mean.tolist() == pytest.approx([B.FMOW_MEAN["B12"], B.FMOW_MEAN["B02"]])
    assert std.tolist() == pytest.approx([B.FMOW_STD["B12"], B.FMOW_STD["B02"]])


def test_stats_for_an_unknown_source_names_the_allowed_ones():
    with pytest.raises(ValueError, match="fmow"):
        stats_for(["B02"], source="ssl4eo")


def test_compute_stats_matches_numpy_over_uneven_batches():
    rng = np.random.default_rng(0)
    data = rng.integers(0, 12000, size=(13, 3, 8, 8)).astype(np.uint16)
    batches = [torch.from_numpy(data[:5]), data[5:6], torch.from_numpy(data[6:])]
    mean, std = compute_stats(batches)
    assert mean.dtype == torch.float64
    np.testing.assert_allclose(mean.numpy(), data.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), data.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-10)


def test_moments_computed_apart_merge_to_the_stats_of_the_whole():
    rng = np.random.default_rng(1)
    data = rng.integers(1, 12000, size=(9, 2, 4, 4)).astype(np.uint16)
    parts = [pixel_moments(data[:2]), pixel_moments(data[2:2]), pixel_moments(data[2:])]  # one empty block
    mean, std = compute_stats(parts)
    np.testing.assert_allclose(mean.numpy(), data.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std.numpy(), data.astype(np.float64).std(axis=(0, 2, 3)), rtol=1e-10)
    n, m, _ = merge_moments(parts[0], parts[2])
    assert n == 9 * 4 * 4 and torch.allclose(m, mean)


def test_crop_returns_the_requested_size_within_the_input_range():
    x = torch.rand(6, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(x, size=32, generator=torch.Generator().manual_seed(1))
    assert out.shape == (6, 4, 32, 32)
    assert out.min() >= x.min() - 1e-6 and out.max() <= x.max() + 1e-6


def test_crop_of_the_whole_chip_without_flip_is_the_identity():
    x = torch.rand(2, 3, 16, 16)
    out = random_resized_crop_flip(x, size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)
    torch.testing.assert_close(out, x, atol=1e-4, rtol=0)


def test_flip_mirrors_columns():
    x = torch.rand(2, 3, 16, 16)
    out = random_resized_crop_flip(x, size=16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=1.0)
    torch.testing.assert_close(out, x.flip(-1), atol=1e-4, rtol=0)


def test_crop_draws_a_box_per_sample_reproducibly():
    x = torch.rand(1, 2, 32, 32).expand(4, -1, -1, -1)
    a = random_resized_crop_flip(x, size=32, generator=torch.Generator().manual_seed(3))
    b = random_resized_crop_flip(x, size=32, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a[0], a[1])
