"""Normalisation and augmentation of chip batches, on whatever device the batch lives on.

Chips arrive as ``(B, C, H, W)`` uint16 reflectance ×1e4 in the model's band order. SatMAE
normalises each band by clipping it to mean ± 2·std and scaling that range to [0, 1]; SatMAE
then quantises to uint8, which we skip (the model sees the unquantised float).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pw_ray import bands as B

_SOURCES = {"fmow": (B.FMOW_MEAN, B.FMOW_STD)}


def stats_for(bands: Sequence[str], source: str = "fmow") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-band (mean, std) as (C,) float32 tensors in the order of ``bands``.

    ``source="fmow"``: the fMoW-Sentinel statistics SatMAE normalises with.
    """
    if source not in _SOURCES:
        raise ValueError(f"unknown statistics source {source!r}; allowed: {', '.join(_SOURCES)}")
    means, stds = _SOURCES[source]
    names = [B.canonical(b) for b in bands]
    missing = [b for b in names if b not in means]
    if missing:
        raise ValueError(f"no {source} statistics for bands {missing}; known: {', '.join(means)}")
    return (torch.tensor([means[b] for b in names], dtype=torch.float32),
            torch.tensor([stds[b] for b in names], dtype=torch.float32))


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) uint16 or float → float32 in [0, 1]: clip to mean ± 2σ, map that range to [0, 1]."""
    x = torch.as_tensor(x)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device)[None, :, None, None]
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device)[None, :, None, None]
    lo, hi = mean - 2 * std, mean + 2 * std
    return (x.to(torch.float32).clamp(min=lo, max=hi) - lo) / (4 * std)


def pixel_moments(batch) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(pixels per channel, (C,) mean, (C,) sum of squared deviations) of one (B, C, H, W) batch, float64."""
    x = torch.as_tensor(np.asarray(batch) if not torch.is_tensor(batch) else batch)
    x = x.to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)  # (C, B·H·W)
    mean = x.mean(dim=1)
    return x.shape[1], mean, ((x - mean[:, None]) ** 2).sum(dim=1)


def merge_moments(a: tuple, b: tuple) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Combine two :func:`pixel_moments` results (Chan et al.'s parallel update: no cancellation)."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    if na == 0:
        return b
    if nb == 0:
        return a
    n = na + nb
    delta = mb - ma
    return n, ma + delta * (nb / n), m2a + m2b + delta**2 * (na * nb / n)


def compute_stats(batches: Iterable) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (mean, std) over all pixels of a stream of (B, C, H, W) batches.

    One pass, float64, batches merged with Chan et al.'s parallel update so large sums do not
    cancel. ``std`` is the population standard deviation (ddof = 0). Returns (C,) float64.
    Batches can also be :func:`pixel_moments` triples computed elsewhere (e.g. by Ray Data tasks).
    """
    total = None
    for batch in batches:
        m = batch if isinstance(batch, tuple) else pixel_moments(batch)
        if m[0] == 0:
            continue
        total = m if total is None else merge_moments(total, m)
    if total is None:
        raise ValueError("compute_stats got no pixels")
    n, mean, m2 = total
    return mean, torch.sqrt(m2 / n)


def _crop_boxes(b: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                generator: torch.Generator | None, device, attempts: int = 10) -> torch.Tensor:
    """(B, 4) boxes ``(top, left, h, w)`` in pixels, torchvision's RandomResizedCrop rule, batched.

    Up to ``attempts`` (area, aspect) draws per sample; the first that fits is used, otherwise a
    central crop of the clamped aspect. Boxes are continuous (sub-pixel) rather than rounded.
    """
    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=device, dtype=torch.float64)

    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    target = area * (scale[0] + (scale[1] - scale[0]) * rand(b, attempts))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * rand(b, attempts))
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    fits = (w <= width) & (h <= height)
    first = torch.argmax(fits.to(torch.int8), dim=1)  # first fitting attempt (0 if none)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]

    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, width / ratio[0]
    elif in_ratio > ratio[1]:
        fw, fh = height * ratio[1], height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    u = rand(b, 2)
    top = torch.where(ok, u[:, 0] * (height - h), (height - h) / 2)
    left = torch.where(ok, u[:, 1] * (width - w), (width - w) / 2)
    return torch.stack([top, left, h, w], dim=1)


def random_resized_crop_flip(x: torch.Tensor, size: int = 96, scale: tuple[float, float] = (0.2, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3),
                             generator: torch.Generator | None = None, flip_p: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) float → (B, C, size, size): a random box per sample, resized, maybe mirrored.

    One ``grid_sample`` call on the batch's device: each sample's box and horizontal flip become
    an affine map from output to input coordinates (bilinear, half-pixel centres, so values stay
    within the input's range). Random numbers come from ``generator`` (on its device) when
    given. Boxes never exceed the chip, so with ``size`` = chip size nothing is downsampled and
    no antialiasing is needed.
    """
    b, _, height, width = x.shape
    device = generator.device if generator is not None else x.device
    top, left, h, w = _crop_boxes(b, height, width, scale, ratio, generator, device).unbind(1)
    flip = torch.rand(b, generator=generator, device=device) < flip_p
    sign = torch.where(flip, -1.0, 1.0).to(torch.float64)

    # normalised coords: x_in = sx·x_out + cx with sx = w/W, cx the box centre in [-1, 1]
    theta = torch.zeros(b, 2, 3, dtype=torch.float64, device=device)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [b, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
