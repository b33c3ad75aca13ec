"""The plain-PyTorch pretraining step: optimizer groups, schedule, accumulation, learning."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from pw_ray import bands as B
from pw_ray.models.satmae import build_mae
from pw_ray.pretrain.step import (effective_lr, lr_at, make_optimizer, mixed_precision, param_groups, train_plain,
                                  train_step)
from pw_ray.pretrain.transforms import stats_for

MEAN, STD = stats_for(B.SATMAE_BANDS)


def _tiny(seed: int = 0, img_size: int = 32):
    torch.manual_seed(seed)
    return build_mae("tiny", B.SATMAE_BANDS, B.SATMAE_GROUPS, img_size=img_size)


def _smooth_chips(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """(n, 10, size, size) uint16 chips: low-frequency random patterns around the fMoW means."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 10, 4, 4, generator=g)
    smooth = torch.nn.functional.interpolate(coarse, size=size, mode="bicubic", align_corners=False)
    values = MEAN[None, :, None, None] + STD[None, :, None, None] * smooth
    return values.clamp(0, 65535).round().to(torch.int32).to(torch.uint16)


def test_lr_warms_up_linearly_then_follows_a_half_cosine():
    assert lr_at(0, 100, 10, 1e-3) == 0.0
    assert lr_at(5, 100, 10, 1e-3) == pytest.approx(5e-4)
    assert lr_at(10, 100, 10, 1e-3) == pytest.approx(1e-3)
    assert lr_at(55, 100, 10, 1e-3) == pytest.approx(5e-4)
    assert lr_at(100, 100, 10, 1e-3, min_lr=1e-5) == pytest.approx(1e-5)


def test_effective_lr_scales_blr_by_global_batch_over_256():
    assert effective_lr(1e-4, 256, 16, 1) == pytest.approx(1.6e-3)  # the paper: 4096 effective
    assert effective_lr(1e-4, 32, 2, 4) == pytest.approx(1e-4)


def test_no_weight_decay_on_norms_and_biases_but_on_tokens_as_in_satmae():
    model = _tiny()
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    decayed = {names[id(p)] for p in decay["params"]}
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    assert {"norm.weight", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias",
            "patch_embed.0.proj.bias"} <= undecayed
    assert {"cls_token", "mask_token", "blocks.0.attn.qkv.weight", "patch_embed.0.proj.weight",
            "decoder_pred.2.weight"} <= decayed
    assert len(decayed) + len(undecayed) == len(names)


def _timm_0_3_2_add_weight_decay(model, weight_decay=1e-5, skip_list=()):
    """timm 0.3.2's ``optim_factory.add_weight_decay``, which SatMAE's main_pretrain.py calls."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue  # frozen weights
        if len(param.shape) == 1 or name.endswith(".bias") or name in skip_list:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def test_weight_decay_groups_are_satmaes():
    model = _tiny()
    official_no_decay, official_decay = _timm_0_3_2_add_weight_decay(model, 0.05)
    decay, no_decay = param_groups(model, 0.05)
    assert [id(p) for p in decay["params"]] == [id(p) for p in official_decay["params"]]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in official_no_decay["params"]]


def _satmae_adjust_learning_rate(epoch: float, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """MAE's util/lr_sched.adjust_learning_rate (SatMAE imports it), ``epoch`` fractional."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))


def test_lr_per_optimizer_step_is_satmaes_per_iteration_schedule():
    # SatMAE sets the lr at every accum_iter-th micro-batch to f(data_iter_step / len(loader) + epoch)
    epochs, warmup, steps_per_epoch, accum, lr = 50, 5, 7, 16, 1.6e-3
    len_loader = steps_per_epoch * accum
    for step in (0, 3, 34, 35, 36, 200, 349):
        official = _satmae_adjust_learning_rate(step * accum / len_loader, lr, 0.0, warmup, epochs)
        ours = lr_at(step, epochs * steps_per_epoch, warmup * steps_per_epoch, lr)
        assert ours == pytest.approx(official, rel=1e-12, abs=1e-18), step


def test_mixed_precision_is_bf16_autocast_or_satmaes_fp16_with_a_scaler():
    assert mixed_precision("bf16", torch.device("cuda")) == (torch.bfloat16, None)
    dtype, scaler = mixed_precision("fp16", torch.device("cuda"))
    assert dtype == torch.float16 and isinstance(scaler, torch.amp.GradScaler)
    assert mixed_precision("fp32", torch.device("cuda")) == (None, None)
    assert mixed_precision("fp16", torch.device("cpu")) == (None, None)  # CPU trains in fp32
    with pytest.raises(ValueError, match="bf16, fp16, fp32"):
        mixed_precision("fp8", torch.device("cuda"))


def test_optimizer_is_adamw_with_mae_betas():
    opt = make_optimizer(_tiny(), lr=1e-3, weight_decay=0.05)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.95)


def test_loss_falls_on_a_small_fixed_set():
    chips = _smooth_chips(64, 32)
    losses = train_plain(_tiny(), chips, steps=30, batch_size=8, mean=MEAN, std=STD, lr=2e-3, warmup_steps=3)
    assert len(losses) == 30 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5


def _step_kwargs(**kw):
    return dict(step=0, lr=0.5, mean=MEAN, std=STD, mask_ratio=0.75, augment=False, **kw)


def test_two_micro_steps_of_4_update_like_one_step_of_8():
    chips = _smooth_chips(8, 32, seed=1)
    noise = torch.rand(8, 3 * 16, generator=torch.Generator().manual_seed(0))
    one, two = _tiny(), _tiny()
    opt_one = torch.optim.SGD(one.parameters(), lr=0.5)
    opt_two = torch.optim.SGD(two.parameters(), lr=0.5)

    train_step(one, chips, opt_one, **_step_kwargs(mask_noise=noise))
    train_step(two, chips[:4], opt_two, **_step_kwargs(mask_noise=noise[:4], accum_steps=2, micro_step=0))
    train_step(two, chips[4:], opt_two, **_step_kwargs(mask_noise=noise[4:], accum_steps=2, micro_step=1))

    assert not torch.equal(one.blocks[0].attn.qkv.weight, _tiny().blocks[0].attn.qkv.weight)
    for (name, a), b in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_weights_change_only_on_the_last_micro_step():
    model, chips = _tiny(), _smooth_chips(4, 32)
    before = copy.deepcopy(model.state_dict())
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05)
    out = train_step(model, chips, opt, **_step_kwargs(accum_steps=2, micro_step=0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert out["lr"] == 0.5 and math.isfinite(out["loss"])
    train_step(model, chips, opt, **_step_kwargs(accum_steps=2, micro_step=1))
    assert not torch.equal(before["blocks.0.attn.qkv.weight"], model.state_dict()["blocks.0.attn.qkv.weight"])
    assert all(p.grad is None for p in model.parameters())


def test_step_sets_the_given_lr_on_every_group():
    model, chips = _tiny(), _smooth_chips(2, 32)
    opt = make_optimizer(model, lr=1.0, weight_decay=0.05)
    train_step(model, chips, opt, **_step_kwargs(grad_clip=1.0))
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]


def test_train_step_runs_a_compiled_model_and_updates_the_bare_weights():
    """``train.compile``: the step sees through ``torch.compile``'s wrapper (eager backend: no codegen in CI)."""
    model, chips = _tiny(), _smooth_chips(2, 32)
    before = model.blocks[0].attn.qkv.weight.detach().clone()
    compiled = torch.compile(model, backend="eager")
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.05)
    out = train_step(compiled, chips, opt, **_step_kwargs())
    assert math.isfinite(out["loss"]) and not torch.equal(before, model.blocks[0].attn.qkv.weight)


def test_a_loss_scaler_changes_nothing_but_the_scale_of_the_gradients():
    """fp16's GradScaler path (SatMAE's NativeScaler): scaled backward, unscaled step."""
    chips = _smooth_chips(4, 32, seed=2)
    noise = torch.rand(4, 3 * 16, generator=torch.Generator().manual_seed(1))
    plain, scaled = _tiny(), _tiny()
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.5)
    opt_scaled = torch.optim.SGD(scaled.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    train_step(plain, chips, opt_plain, **_step_kwargs(mask_noise=noise, grad_clip=1.0))
    train_step(scaled, chips, opt_scaled, **_step_kwargs(mask_noise=noise, grad_clip=1.0, scaler=scaler))
    assert scaler.get_scale() == 2.0**12  # no overflow, no growth after one step
    for (name, a), b in zip(plain.named_parameters(), scaled.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


class _Recorder(torch.nn.Module):
    """Stands in for the MAE: records the input the step feeds it."""

    img_size = 32

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = None

    def forward(self, x, mask_ratio, noise):
        self.seen = x.detach()
        return (x.mean() * self.w, None, None)


def test_step_feeds_the_model_satmaes_uint8_levels_by_default():
    chips = _smooth_chips(2, 32, seed=3)
    for quantization, on_levels in (("uint8", True), ("none", False)):
        model = _Recorder()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        train_step(model, chips, opt, **_step_kwargs(**({} if quantization == "uint8" else
                                                        {"input_quantization": quantization})))
        levels = model.seen * 255
        assert torch.equal(levels, levels.round()) is on_levels, quantization
