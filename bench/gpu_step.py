"""Throughput and MFU of one SatMAE pretraining step (plain PyTorch, no Ray).

    python bench/gpu_step.py --batch 256 --steps 20 [--compile]

On CUDA: the paper's ViT-B group-channel MAE, bf16 autocast. On CPU: the tiny preset in
float32, so the script still runs anywhere (its MFU is not meaningful and is reported as null).
The last line printed is one JSON object.

FLOPs are counted analytically from the model actually built (matmuls only, 2 FLOPs per
multiply-add; norms, softmax, GELU and the optimizer ignored): per-group patch embeddings on
all patches, the encoder on the visible tokens plus cls, the decoder on all tokens plus cls,
the prediction heads. A training step counts as 3× the forward pass. MFU = achieved FLOP/s ÷
the accelerator's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import torch  # noqa: E402

from pw_ray.bands import SATMAE_BANDS, SATMAE_GROUPS  # noqa: E402
from pw_ray.models.satmae import GroupChannelMAE, build_mae, parameter_counts  # noqa: E402
from pw_ray.pretrain.step import make_optimizer, train_step  # noqa: E402
from pw_ray.pretrain.transforms import stats_for  # noqa: E402

log = logging.getLogger("bench.gpu_step")

#: Dense bf16 tensor-core peaks, FLOP/s (NVIDIA data sheets, without sparsity).
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16.items():  # more specific names first
        if key in device_name:
            return value
    return None


def _block_flops(tokens: int, dim: int, mlp_ratio: float) -> float:
    """Forward FLOPs of one transformer block on ``tokens`` tokens."""
    linear = tokens * dim * dim * (3 + 1 + 2 * mlp_ratio)  # qkv, proj, fc1 + fc2 (MACs)
    attention = 2 * tokens * tokens * dim                 # q·kᵀ and attn·v (MACs)
    return 2 * (linear + attention)


def forward_flops(model: GroupChannelMAE, mask_ratio: float) -> float:
    """Matmul FLOPs of one forward pass for one sample."""
    G, L, p2 = len(model.groups), model.num_patches, model.patch_size**2
    c = sum(len(g) for g in model.groups)
    D = model.embed_dim
    Dd = model.decoder_embed.out_features
    n_tokens = G * L
    n_visible = n_tokens - round(mask_ratio * n_tokens) + 1  # + cls
    n_all = n_tokens + 1

    flops = 2 * L * c * p2 * D                                       # patch embeddings
    flops += len(model.blocks) * _block_flops(n_visible, D, model.mlp_ratio)
    flops += 2 * n_visible * D * Dd                                  # decoder_embed
    flops += len(model.decoder_blocks) * _block_flops(n_all, Dd, model.mlp_ratio)
    flops += 2 * L * Dd * c * p2                                     # per-group heads
    return float(flops)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=None, help="per step (default: 256 on GPU, 8 on CPU)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    ap.add_argument("--preset", default=None, help="model size (default: base on GPU, tiny on CPU)")
    ap.add_argument("--mask-ratio", type=float, default=0.75)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=None, help="override the device peak")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    preset = args.preset or ("base" if cuda else "tiny")
    batch = args.batch or (256 if cuda else 8)
    dtype = torch.bfloat16 if cuda else None
    if cuda:
        name = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        name = "cpu"
        log.info("no CUDA device: running the %r preset in float32 on CPU (MFU not reported)", preset)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (peak_flops(name) if cuda else None)

    model = build_mae(preset, SATMAE_BANDS, SATMAE_GROUPS).to(device)
    counts = parameter_counts(model)
    fwd = forward_flops(model, args.mask_ratio)
    flops_per_sample = 3 * fwd
    net = torch.compile(model) if args.compile else model
    optimizer = make_optimizer(model, lr=1e-4, weight_decay=0.05)
    mean, std = (t.to(device) for t in stats_for(SATMAE_BANDS))
    gen = torch.Generator(device=device).manual_seed(0)
    data = torch.randint(0, 10000, (batch, len(SATMAE_BANDS), model.img_size, model.img_size),
                         generator=gen, device=device, dtype=torch.int32).to(torch.uint16)
    log.info("device %s, preset %s (%.1fM params: encoder %.1fM, decoder %.1fM), batch %d, compile %s",
             name, preset, counts["total"] / 1e6, counts["encoder"] / 1e6, counts["decoder"] / 1e6,
             batch, args.compile)

    def step(i: int) -> float:
        return train_step(net, data, optimizer, step=i, lr=1e-4, mean=mean, std=std,
                          mask_ratio=args.mask_ratio, autocast_dtype=dtype,
                          augment=not args.no_augment, generator=gen)["loss"]

    t0 = time.perf_counter()
    for i in range(args.warmup):
        loss = step(i)
    if cuda:
        torch.cuda.synchronize()
    log.info("warm-up: %d steps in %.1f s, loss %.4f", args.warmup, time.perf_counter() - t0, loss)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    t0 = time.perf_counter()
    for i in range(args.steps):
        loss = step(args.warmup + i)  # .item() inside syncs every step, as a real loop would
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0

    samples_per_s = batch * args.steps / elapsed
    achieved = samples_per_s * flops_per_sample
    mfu = achieved / peak if peak else None
    log.info("%.1f samples/s, %.1f ms/step, %.2f GFLOP/sample (fwd %.2f), %.1f TFLOP/s achieved",
             samples_per_s, 1e3 * elapsed / args.steps, flops_per_sample / 1e9, fwd / 1e9, achieved / 1e12)
    if peak:
        log.info("MFU %.3f of %.0f TFLOP/s dense bf16 peak (%s)", mfu, peak / 1e12, name)
    if cuda:
        log.info("peak memory %.1f GiB", torch.cuda.max_memory_allocated() / 2**30)
    result = {
        "samples_per_s": round(samples_per_s, 2),
        "mfu": round(mfu, 4) if mfu is not None else None,
        "flops_per_sample": flops_per_sample,
        "device": name,
        "preset": preset,
        "batch": batch,
        "compile": args.compile,
        "peak_flops": peak,
        "final_loss": round(loss, 5),
    }
    sys.stdout.write(json.dumps(result) + "\n")
    return result


if __name__ == "__main__":
    main()
