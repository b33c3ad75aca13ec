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


def test_bilinear_crop_returns_the_requested_size_within_the_input_range():
    x = torch.rand(6, 4, 40, 40, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(x, size=32, generator=torch.Generator().manual_seed(1), interpolation="bilinear")
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


# ------------------------------------------------------------------------------------------------
# Fidelity to SatMAE's util/datasets.py (SentinelNormalize → ToTensor → RandomResizedCrop → flip)


def test_uint8_quantisation_is_satmaes_sentinel_normalize_then_to_tensor():
    from torchvision.transforms import ToTensor

    rng = np.random.default_rng(0)
    chips = rng.integers(0, 6000, size=(2, 10, 12, 12)).astype(np.uint16)
    mean, std = stats_for(B.SATMAE_BANDS)
    # SentinelNormalize on an (h, w, c) float32 image with float64 statistics, then ToTensor
    lo, hi = np.array(mean.tolist()) - 2 * np.array(std.tolist()), np.array(mean.tolist()) + 2 * np.array(std.tolist())
    official = []
    for chip in chips:
        img = chip.transpose(1, 2, 0).astype(np.float32)
        img = np.clip((img - lo) / (hi - lo) * 255.0, 0, 255).astype(np.uint8)
        official.append(ToTensor()(img))
    out = normalize(torch.from_numpy(chips.astype(np.int32)), mean, std, quantize="uint8")
    assert torch.equal(out, torch.stack(official))
    unquantised = normalize(torch.from_numpy(chips.astype(np.int32)), mean, std)
    assert 0 < (unquantised - out).max() < 1 / 255 and (unquantised - out).min() >= 0


def test_unknown_quantisation_names_the_allowed_ones():
    with pytest.raises(ValueError, match="uint8, none"):
        normalize(torch.zeros(1, 2, 1, 1), MEAN, STD, quantize="int8")


def test_crop_is_torchvisions_bicubic_resized_crop_of_the_drawn_box_then_the_flip():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    from pw_ray.pretrain.transforms import _crop_boxes

    x = torch.rand(8, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(x, size=24, generator=torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)  # replay the same draws: boxes, then flips
    boxes = _crop_boxes(8, 24, 24, (0.2, 1.0), (3 / 4, 4 / 3), gen, "cpu")
    flips = torch.rand(8, generator=gen) < 0.5
    assert flips.any() and not flips.all() and (boxes[:, 2:] < 24).any()
    for i, (top, left, h, w) in enumerate(boxes.tolist()):
        expected = TF.resized_crop(x[i], top, left, h, w, [24, 24], InterpolationMode.BICUBIC, antialias=False)
        expected = TF.hflip(expected) if flips[i] else expected
        torch.testing.assert_close(out[i], expected, atol=2e-6, rtol=0)


def test_bilinear_crop_is_torchvisions_bilinear_resized_crop():
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = torch.rand(1, 2, 20, 20, generator=torch.Generator().manual_seed(1))
    top, left, h, w = torch.tensor([3]), torch.tensor([5]), torch.tensor([9]), torch.tensor([13])
    from pw_ray.pretrain.transforms import resize_matrix

    rows = resize_matrix(top, h, 20, 20, "bilinear").float()
    cols = resize_matrix(left, w, 20, 20, "bilinear").float()
    out = torch.einsum("bih,bchw,bjw->bcij", rows, x, cols)[0]
    expected = TF.resized_crop(x[0], 3, 5, 9, 13, [20, 20], InterpolationMode.BILINEAR, antialias=False)
    torch.testing.assert_close(out, expected, atol=2e-6, rtol=0)


def test_crop_boxes_follow_torchvisions_rule():
    from torchvision.transforms import RandomResizedCrop

    from pw_ray.pretrain.transforms import _crop_boxes

    n = 4000
    ours = _crop_boxes(n, 96, 96, (0.2, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0), "cpu").double()
    torch.manual_seed(0)
    img = torch.zeros(1, 96, 96)
    theirs = torch.tensor([RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(n)]).double()
    assert ours.dtype == torch.float64 and torch.equal(ours, ours.round())  # whole pixels
    assert (ours[:, 0] + ours[:, 2] <= 96).all() and (ours[:, 1] + ours[:, 3] <= 96).all()
    for k in range(4):  # top, left, h, w: the same distribution (means within 3 standard errors)
        se = (ours[:, k].var() / n + theirs[:, k].var() / n).sqrt()
        assert abs(ours[:, k].mean() - theirs[:, k].mean()) < 3 * se, k
    # an aspect range the square chip cannot meet: torchvision's central fallback box
    fallback = _crop_boxes(3, 16, 16, (1.0, 1.0), (2.0, 3.0), None, "cpu")
    assert fallback.tolist() == [list(RandomResizedCrop.get_params(torch.zeros(1, 16, 16), [1.0, 1.0], [2.0, 3.0]))] * 3
