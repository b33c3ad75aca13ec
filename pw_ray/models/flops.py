"""FLOPs and state sizes of the SatMAE model a config builds, counted on the model itself.

The model is built on PyTorch's ``meta`` device (shapes, no memory, no arithmetic) and run once
under :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the matrix products
(linear layers, convolutions, attention; 2 FLOPs per multiply-add) of the real forward and
backward passes. Norms, softmax, GELU and the optimizer are not counted: they are a few percent
and are what MFU figures leave out too. ``bench/gpu_step.py``'s analytic formula agrees with the
forward count (tests/models/test_flops.py).

Sizes are what ``torch.save`` of the state dicts holds: parameters and buffers in float32, and
AdamW's two moment tensors per parameter (the ``step`` scalars are negligible).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class ModelCosts:
    """Per-sample FLOPs of one model at one input size, and its state sizes (bytes)."""

    #: One pretraining step on one sample: masked forward, decoder, loss and backward.
    train_flops: float
    #: The forward part of ``train_flops``.
    train_forward_flops: float
    #: Encoder forward on every token (no masking): one embedding for kNN / linear probes.
    embed_flops: float
    #: Encoder forward and backward on every token: one fine-tuning sample.
    finetune_flops: float
    parameters: int
    #: ``state.pt`` of a pretraining checkpoint: model state dict + AdamW moments.
    checkpoint_bytes: int
    #: The exported encoder (``export/encoder.pt``): encoder weights and fixed tables.
    encoder_bytes: int


def _count(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


@lru_cache(maxsize=16)
def model_costs(preset: str, bands: tuple[str, ...], groups: tuple[tuple[str, ...], ...], img_size: int,
                patch_size: int, mask_ratio: float) -> ModelCosts:
    """:class:`ModelCosts` of ``build_mae(preset, bands, groups, img_size, patch_size)`` (cached)."""
    from pw_ray.models.satmae import ENCODER_PREFIXES, build_mae, count_parameters

    with torch.device("meta"):
        model = build_mae(preset, list(bands), [list(g) for g in groups], img_size=img_size, patch_size=patch_size)
    x = torch.zeros(1, len(bands), img_size, img_size, device="meta")

    with FlopCounterMode(display=False) as counter:
        loss = model(x, mask_ratio)[0]
        forward = float(counter.get_total_flops())
        loss.backward()
    train = float(counter.get_total_flops())
    model.zero_grad(set_to_none=True)

    with torch.no_grad():
        embed = _count(lambda: model.embed(x))
    head = torch.nn.Linear(model.embed_dim, 1, device="meta")
    finetune = _count(lambda: head(model.embed(x)).sum().backward())

    params = [p for p in model.parameters() if p.requires_grad]
    n_params = count_parameters(model)
    state = sum(v.numel() * v.element_size() for v in model.state_dict().values())
    moments = 2 * sum(p.numel() * 4 for p in params)  # AdamW exp_avg, exp_avg_sq in float32
    encoder = sum(v.numel() * v.element_size() for k, v in model.state_dict().items()
                  if k.startswith(ENCODER_PREFIXES))
    return ModelCosts(train, forward, embed, finetune, n_params, state + moments, encoder)


def costs_for(cfg) -> ModelCosts:
    """:func:`model_costs` of an :class:`~pw_ray.config.ExperimentConfig`'s model and chips."""
    m = cfg.model
    return model_costs(m.preset, tuple(cfg.chips.bands), tuple(tuple(g) for g in m.groups), cfg.chips.size_px,
                       m.patch_size, m.mask_ratio)


__all__ = ["ModelCosts", "model_costs", "costs_for"]
