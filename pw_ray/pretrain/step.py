"""One SatMAE pretraining step in plain PyTorch, and the schedule around it.

Read top to bottom: optimizer groups → learning-rate rule → ``train_step`` → ``train_plain``.
Nothing here knows about Ray; ``pw_ray.pretrain.trainer`` calls ``train_step`` from inside a
Ray Train worker, the benchmarks call ``train_plain`` directly.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn

from pw_ray.pretrain.transforms import normalize, random_resized_crop_flip

log = logging.getLogger(__name__)

#: Mixed precision on CUDA: ``bf16`` autocast; ``fp16`` autocast with a gradient scaler (SatMAE's
#: ``torch.cuda.amp.autocast()`` + ``NativeScaler``); ``fp32`` none. CPU always runs fp32.
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, SatMAE's rule (timm 0.3.2 ``add_weight_decay``): decayed, and undecayed.

    Undecayed: 1-D parameters (norm weights) and names ending in ``.bias``. Everything else is
    decayed, ``cls_token`` and ``mask_token`` (1×1×D) included; the fixed sin-cos tables are
    buffers and never reach the optimizer.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with MAE's betas (0.9, 0.95); fused kernels when the model is on CUDA."""
    on_cuda = all(p.is_cuda for p in model.parameters())
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95),
                             fused=True if on_cuda else None)


def mixed_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """(autocast dtype, gradient scaler) for ``precision`` (see :data:`PRECISIONS`) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if torch.device(device).type != "cuda" or precision == "fp32":
        return None, None
    if precision == "bf16":
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def recipe_variants(config: dict) -> dict:
    """Which variant of each SatMAE-fidelity point a run uses, from its loop config.

    Logged when a run starts and recorded in the export's ``config.json``; docs/pretrain.md
    ("Fidelity to SatMAE") explains each. The fixed points are listed too, so the record is whole.
    """
    return {
        "loss_pairing": config["loss_pairing"],
        "norm_pix_loss": bool(config["norm_pix_loss"]),
        "mask": "spatial" if config["spatial_mask"] else "independent",
        "mask_ratio": config["mask_ratio"],
        "kept_tokens": "int(N*(1-mask_ratio))",
        "weight_decay_exempt": "1-D params and *.bias (timm 0.3.2 add_weight_decay)",
        "patch_embed_bias_init": "Conv2d default",
        "input_quantization": config["input_quantization"],
        "crop": "RandomResizedCrop(scale=(0.2, 1.0), bicubic) + horizontal flip",
        "precision": config["precision"] if config["use_gpu"] else "fp32 (CPU workers)",
        "warmup_steps": config["warmup_steps"],
    }


def effective_lr(blr: float, batch_size: int, accum_steps: int, world_size: int) -> float:
    """MAE's linear scaling: ``blr × (batch per worker × accumulation × workers) / 256``."""
    return blr * batch_size * accum_steps * world_size / 256


def lr_at(step: float, total_steps: int, warmup_steps: float, base_lr: float, min_lr: float = 0.0) -> float:
    """Linear warm-up from 0 to ``base_lr`` over ``warmup_steps``, then a half-cycle cosine to ``min_lr``.

    ``step`` counts optimizer steps from 0; the value at ``total_steps`` is ``min_lr``.
    """
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1.0, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_step(
    model: nn.Module,
    batch: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    step: int,
    lr: float,
    mean: torch.Tensor,
    std: torch.Tensor,
    mask_ratio: float,
    accum_steps: int = 1,
    micro_step: int = 0,
    grad_clip: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    augment: bool = True,
    input_quantization: str = "uint8",
    generator: torch.Generator | None = None,
    mask_noise: torch.Tensor | None = None,
) -> dict[str, float]:
    """Forward and backward one micro-batch; on the last micro-step, update the weights.

    batch: (B, C, H, W) uint16 reflectance (or float in the same units), model band order. It is
    normalised (``input_quantization``: SatMAE's ``uint8`` levels or ``none``), then cropped and
    flipped as SatMAE does. ``scaler`` scales the loss for fp16 autocast (SatMAE's NativeScaler).
    ``step`` is the optimizer step this micro-batch belongs to (for logging). ``generator``
    drives the augmentation, ``mask_noise`` fixes the mask; both are for reproducibility.
    Returns the micro-batch's unscaled loss and the lr used.
    """
    bare = unwrap(model)
    device = next(bare.parameters()).device
    last = micro_step == accum_steps - 1

    x = normalize(torch.as_tensor(batch).to(device, non_blocking=True), mean, std, quantize=input_quantization)
    if augment:
        x = random_resized_crop_flip(x, size=bare.img_size, generator=generator)

    # under DDP, only the last micro-step needs to all-reduce gradients
    sync = contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync()
    with sync:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss, _, _ = model(x, mask_ratio=mask_ratio, noise=mask_noise)
        scaled = loss / accum_steps
        (scaler.scale(scaled) if scaler is not None else scaled).backward()

    if last:
        for group in optimizer.param_groups:
            group["lr"] = lr
        if grad_clip is not None:
            if scaler is not None:
                scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if scaler is not None:
            scaler.step(optimizer)  # skipped when a gradient overflowed
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "lr": lr}


def train_plain(
    model: nn.Module,
    tensors: torch.Tensor,
    steps: int,
    batch_size: int,
    *,
    mean: torch.Tensor,
    std: torch.Tensor,
    lr: float | None = None,
    blr: float = 1e-4,
    weight_decay: float = 0.05,
    warmup_steps: int = 0,
    accum_steps: int = 1,
    mask_ratio: float = 0.75,
    grad_clip: float | None = None,
    autocast_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    augment: bool = True,
    input_quantization: str = "uint8",
    optimizer: torch.optim.Optimizer | None = None,
    seed: int = 0,
    log_every: int = 0,
) -> list[float]:
    """Pretrain on in-memory chips (N, C, H, W) for ``steps`` optimizer steps; return each step's loss.

    Batches are drawn without replacement from a reshuffled order each pass, on the model's
    device. ``lr`` defaults to :func:`effective_lr` of ``blr`` for one worker.
    """
    device = next(unwrap(model).parameters()).device
    data = torch.as_tensor(tensors).to(device)
    if not 0 < batch_size <= len(data):
        raise ValueError(f"batch_size must be in [1, {len(data)}] for {len(data)} chips, got {batch_size}")
    base_lr = lr if lr is not None else effective_lr(blr, batch_size, accum_steps, 1)
    optimizer = optimizer or make_optimizer(model, base_lr, weight_decay)
    cpu_gen = torch.Generator().manual_seed(seed)
    aug_gen = torch.Generator(device=device).manual_seed(seed + 1)
    torch.manual_seed(seed)  # the mask draw
    mean, std = torch.as_tensor(mean).to(device), torch.as_tensor(std).to(device)

    model.train()
    order, cursor, losses = torch.randperm(len(data), generator=cpu_gen), 0, []
    for step in range(steps):
        step_lr = lr_at(step, steps, warmup_steps, base_lr)
        total = 0.0
        for micro in range(accum_steps):
            if cursor + batch_size > len(order):
                order, cursor = torch.randperm(len(data), generator=cpu_gen), 0
            idx = order[cursor:cursor + batch_size].to(device)
            cursor += batch_size
            out = train_step(model, data[idx], optimizer, step=step, lr=step_lr, mean=mean, std=std,
                             mask_ratio=mask_ratio, accum_steps=accum_steps, micro_step=micro,
                             grad_clip=grad_clip, autocast_dtype=autocast_dtype, scaler=scaler,
                             augment=augment, input_quantization=input_quantization, generator=aug_gen)
            total += out["loss"] / accum_steps
        losses.append(total)
        if log_every and (step % log_every == 0 or step == steps - 1):
            log.info("step %d/%d loss %.4f lr %.2e", step + 1, steps, total, step_lr)
    return losses
