"""Normalisation and augmentation of chip batches, on whatever device the batch lives on.

Chips arrive as ``(B, C, H, W)`` uint16 reflectance ×1e4 in the model's band order. SatMAE
(``util/datasets.py``: ``SentinelNormalize``, then ``ToTensor``) scales each band's
mean ± 2·std range to [0, 255], clips, truncates to uint8 and divides by 255;
``quantize="uint8"`` does the same, ``"none"`` keeps the unquantised float in [0, 1].

Augmentation is SatMAE's ``RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=BICUBIC)``
then ``RandomHorizontalFlip()``, batched: torchvision's box rule (integer boxes) and PyTorch's
bicubic resize of the cropped box, written as two small resampling matrices per sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch

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


#: ``uint8``: SatMAE's 256 levels (the official pipeline); ``none``: the unquantised float.
QUANTIZATIONS: tuple[str, ...] = ("uint8", "none")


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, quantize: str = "none") -> torch.Tensor:
    """(B, C, H, W) uint16 or float → float32 in [0, 1]: clip to mean ± 2σ, map that range to [0, 1].

    ``quantize="uint8"``: SatMAE's ``floor(clip(255·(x − lo)/(hi − lo), 0, 255)) / 255`` with
    ``lo, hi = mean ∓ 2σ``, computed in float64 as numpy does there (so the levels match).
    """
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"unknown quantize {quantize!r}; allowed: {', '.join(QUANTIZATIONS)}")
    x = torch.as_tensor(x)
    if quantize == "uint8":
        mean = torch.as_tensor(mean, dtype=torch.float64, device=x.device)[None, :, None, None]
        std = torch.as_tensor(std, dtype=torch.float64, device=x.device)[None, :, None, None]
        lo, hi = mean - 2 * std, mean + 2 * std
        level = ((x.to(torch.float64) - lo) / (hi - lo) * 255.0).clamp(0, 255).floor()
        return level.to(torch.float32) / 255
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
    """(B, 4) int64 boxes ``(top, left, h, w)``: torchvision's ``RandomResizedCrop.get_params``, batched.

    Up to ``attempts`` (area, aspect) draws per sample, sides rounded to whole pixels; the first
    that fits is used, its corner drawn uniformly among the whole-pixel positions; otherwise a
    central crop of the clamped aspect.
    """
    def rand(*shape):
        return torch.rand(*shape, generator=generator, device=device, dtype=torch.float64)

    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    target = area * (scale[0] + (scale[1] - scale[0]) * rand(b, attempts))
    aspect = torch.exp(log_r[0] + (log_r[1] - log_r[0]) * rand(b, attempts))
    w = torch.round(torch.sqrt(target * aspect))  # half to even, as Python's round
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(fits.to(torch.int8), dim=1)  # first fitting attempt (0 if none)
    w = w.gather(1, first[:, None])[:, 0]
    h = h.gather(1, first[:, None])[:, 0]

    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    u = rand(b, 2)
    top = torch.where(ok, torch.floor(u[:, 0] * (height - h + 1)), torch.full_like(h, (height - fh) // 2))
    left = torch.where(ok, torch.floor(u[:, 1] * (width - w + 1)), torch.full_like(w, (width - fw) // 2))
    return torch.stack([top, left, h, w], dim=1).to(torch.int64)


def _cubic(t: torch.Tensor, a: float = -0.75) -> torch.Tensor:
    """(…,) fractional offsets → (…, 4) weights of the taps at −1, 0, +1, +2 (PyTorch's bicubic, A = −0.75)."""
    def near(x):  # |x| ≤ 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return torch.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], dim=-1)


def resize_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                  interpolation: str = "bicubic") -> torch.Tensor:
    """(B, out_size, in_size) float64 weights resizing each sample's ``[start, start + length)`` to ``out_size``.

    Row ``o`` samples the crop at ``(o + 0.5)·length/out_size − 0.5`` with PyTorch's
    ``interpolate(…, align_corners=False)`` kernels (bicubic A = −0.75, or bilinear), taps past
    the crop's edge clamped to it, as when the crop is cut out first and then resized.
    """
    start = start.to(torch.float64)[:, None]
    length = length.to(torch.float64)[:, None]
    real = (torch.arange(out_size, dtype=torch.float64, device=start.device)[None] + 0.5) * (length / out_size) - 0.5
    if interpolation == "bicubic":
        x0 = torch.floor(real)
        taps = x0[..., None] + torch.arange(-1, 3, dtype=torch.float64, device=start.device)
        weights = _cubic(real - x0)
    elif interpolation == "bilinear":
        real = real.clamp(min=0)
        x0 = torch.minimum(torch.floor(real), length - 1)
        lam = (real - x0).clamp(0, 1)
        taps = torch.stack([x0, torch.minimum(x0 + 1, length - 1)], dim=-1)
        weights = torch.stack([1 - lam, lam], dim=-1)
    else:
        raise ValueError(f"unknown interpolation {interpolation!r}; allowed: bicubic, bilinear")
    taps = torch.minimum(taps.clamp(min=0), (length - 1)[..., None]) + start[..., None]
    out = torch.zeros(*real.shape, in_size, dtype=torch.float64, device=start.device)
    return out.scatter_add_(2, taps.to(torch.int64), weights)


def random_resized_crop_flip(x: torch.Tensor, size: int = 96, scale: tuple[float, float] = (0.2, 1.0),
                             ratio: tuple[float, float] = (3 / 4, 4 / 3),
                             generator: torch.Generator | None = None, flip_p: float = 0.5,
                             interpolation: str = "bicubic") -> torch.Tensor:
    """(B, C, H, W) float → (B, C, size, size): SatMAE's RandomResizedCrop then RandomHorizontalFlip.

    Each sample gets torchvision's box (see :func:`_crop_boxes`), resized as
    ``interpolate(crop, size, mode=interpolation, align_corners=False)`` would (no antialiasing,
    as torchvision 0.12 on tensors in SatMAE's environment), and is mirrored with probability
    ``flip_p``; all on the batch's device as two batched matrix products. Bicubic can overshoot
    the input's range, as it does in SatMAE. Random numbers come from ``generator`` (on its
    device) when given.
    """
    b, _, height, width = x.shape
    device = generator.device if generator is not None else x.device
    top, left, h, w = _crop_boxes(b, height, width, scale, ratio, generator, device).unbind(1)
    flip = torch.rand(b, generator=generator, device=device) < flip_p
    rows = resize_matrix(top, h, height, size, interpolation)
    cols = resize_matrix(left, w, width, size, interpolation)
    cols = torch.where(flip[:, None, None], cols.flip(1), cols)  # output column j ← size − 1 − j
    rows, cols = rows.to(device=x.device, dtype=x.dtype), cols.to(device=x.device, dtype=x.dtype)
    return torch.einsum("bih,bchw,bjw->bcij", rows, x, cols)
