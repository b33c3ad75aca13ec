"""FLOPs and state sizes counted on the SatMAE model itself (pw_ray/models/flops.py).

The count on PyTorch's meta device agrees with bench/gpu_step.py's analytic formula for the
forward pass; a training step is ~3× the forward; a ViT-B checkpoint is its weights plus AdamW's
two moments, 1.25 GiB.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _bench_gpu_step():
    spec = importlib.util.spec_from_file_location("bench_gpu_step", REPO / "bench" / "gpu_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _meta_model(preset: str):
    import torch

    from pw_ray.bands import SATMAE_BANDS, SATMAE_GROUPS
    from pw_ray.models.satmae import build_mae

    with torch.device("meta"):
        return build_mae(preset, SATMAE_BANDS, SATMAE_GROUPS)


def _costs(preset: str):
    from pw_ray.bands import SATMAE_BANDS, SATMAE_GROUPS
    from pw_ray.models.flops import model_costs

    return model_costs(preset, tuple(SATMAE_BANDS), tuple(tuple(g) for g in SATMAE_GROUPS), 96, 8, 0.75)


@pytest.mark.parametrize("preset", ["tiny", "base"])
def test_flops_counted_on_the_model_agree_with_the_analytic_formula(preset):
    costs = _costs(preset)
    analytic = _bench_gpu_step().forward_flops(_meta_model(preset), 0.75)
    assert costs.train_forward_flops == pytest.approx(analytic, rel=1e-3)
    # backward ≈ twice the forward (the patch embedding needs no input gradient)
    assert 2.9 * costs.train_forward_flops < costs.train_flops <= 3.0 * costs.train_forward_flops
    assert 2.9 * costs.embed_flops < costs.finetune_flops <= 3.0 * costs.embed_flops + 1e6
    if preset == "base":
        assert costs.train_flops == pytest.approx(132.28e9, rel=1e-3)


def test_a_vit_b_checkpoint_is_its_weights_and_adamw_moments():
    costs = _costs("base")
    assert costs.parameters == 111_493_248  # SatMAE's own count (PAPER.md)
    fixed_tables = 145 * 512 + 3 * 256 + 145 * 384 + 4 * 128  # sin-cos buffers (PAPER.md)
    assert costs.checkpoint_bytes == 12 * costs.parameters + 4 * fixed_tables
    assert costs.checkpoint_bytes / 2**30 == pytest.approx(1.25, abs=0.01)
