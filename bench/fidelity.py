"""How far each SatMAE-fidelity point moves the numbers, measured side by side on the same chips.

    python bench/fidelity.py [--preset base] [--batch 8] [--precision-preset small] [--precision-batch 4]

Chips: ``--batch`` 96 px chips of the synthetic archive's painted scenes (ten SatMAE bands,
20 m bands repeated onto the 10 m grid, the baseline offset removed), no clouds or no-data.
One model of ``--preset`` (random init, seed 0) and one mask draw are shared by every
comparison, so each figure isolates one point (docs/pretrain.md, "Fidelity to SatMAE"):

* ``loss_pairing``: SatMAE's loss vs the per-group loss on the same weights, mask and batch.
* ``mask_count``: the ratios (0.05 steps) at which ``int(N(1−r))`` and ``N − round(rN)`` differ.
* ``band_stats``: SatMAE's full-precision fMoW statistics vs pw-ray's 2-decimal table: largest
  change of a normalised value, and the share of uint8 levels that change (on the chips and on
  every DN value 0…20000 inside the clip range).
* ``quantization``: uint8 levels vs the unquantised float: mean/max input change, loss change.
* ``crop``: bicubic (SatMAE, now pw-ray's) vs bilinear (pw-ray's earlier kernel) on the same
  whole-pixel boxes: mean/max pixel change, loss change.
* ``precision``: fp32 vs bf16 autocast vs fp16 autocast (``--precision-preset``; CPU autocast
  when no GPU): relative loss change and the gradient's relative L2 error and cosine to fp32.

The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pw_ray import bands as B  # noqa: E402

log = logging.getLogger("bench.fidelity")

#: SatMAE's fMoW-Sentinel statistics at full precision (util/datasets.py,
#: SentinelIndividualImageDataset.mean/std), 13 bands B1…B12 with B8A after B8.
SATMAE_MEAN = (1370.19151926, 1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144, 1645.40315151,
               1846.87040806, 1762.59530783, 1972.62420416, 582.72633433, 14.77112979, 1732.16362238,
               1247.91870117)
SATMAE_STD = (633.15169573, 650.2842772, 712.12507725, 965.23119807, 948.9819932, 1108.06650639,
              1258.36394548, 1233.1492281, 1364.38688993, 472.37967789, 14.3114637, 1310.36996126,
              1087.6020813)
FMOW_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


def synthetic_chips(n: int, size: int, seed: int) -> torch.Tensor:
    """(n, 10, size, size) uint16 reflectance ×1e4 from the synthetic archive's painter (no files)."""
    from pw_ray.config import SyntheticArchive
    from pw_ray.synthetic.pixels import baseline_offset, paint_scene
    from pw_ray.synthetic.scenes import plan_scenes

    spec = SyntheticArchive(seed=seed, cloudy_fraction=0.0)
    scenes = [s for s in plan_scenes(spec) if not s.cloudy and not s.nodata_strip]
    rng = np.random.default_rng(seed)
    chips = []
    for i in range(n):
        scene = scenes[i % len(scenes)]
        arrays, _ = paint_scene(scene, spec)
        offset = 1000 if baseline_offset(scene.baseline) else 0
        bands = []
        for band in B.SATMAE_BANDS:
            a = arrays[band].astype(np.int32) - offset
            f = spec.scene_px // a.shape[0]
            bands.append(np.repeat(np.repeat(a, f, axis=0), f, axis=1))
        y, x = rng.integers(0, spec.scene_px - size, 2)
        chips.append(np.stack(bands)[:, y:y + size, x:x + size])
    return torch.from_numpy(np.clip(np.stack(chips), 0, 65535).astype(np.int32))


def _loss(model, x, noise) -> float:
    with torch.no_grad():
        return float(model(x, 0.75, noise=noise)[0])


def measure_model_points(args, chips: torch.Tensor) -> dict:
    from pw_ray.models.satmae import build_mae
    from pw_ray.pretrain.transforms import normalize, random_resized_crop_flip, stats_for

    mean, std = stats_for(B.SATMAE_BANDS)
    torch.manual_seed(0)
    official = build_mae(args.preset, B.SATMAE_BANDS, B.SATMAE_GROUPS).eval()
    per_group = build_mae(args.preset, B.SATMAE_BANDS, B.SATMAE_GROUPS, loss_pairing="per_group").eval()
    per_group.load_state_dict(official.state_dict())
    noise = torch.rand(len(chips), 432, generator=torch.Generator().manual_seed(1))

    levels = normalize(chips, mean, std, quantize="uint8")
    unquantised = normalize(chips, mean, std)

    def crop(x, interpolation="bicubic"):  # the same boxes and flips every time
        return random_resized_crop_flip(x, size=96, generator=torch.Generator().manual_seed(2),
                                        interpolation=interpolation)

    bicubic, bilinear = crop(levels), crop(levels, "bilinear")
    t0 = time.process_time()
    loss = {"official": _loss(official, bicubic, noise), "per_group": _loss(per_group, bicubic, noise),
            "official_unquantised": _loss(official, crop(unquantised), noise),
            "official_bilinear": _loss(official, bilinear, noise)}
    log.info("4 forward passes of %s at batch %d: %.1f CPU-s", args.preset, len(chips), time.process_time() - t0)
    return {
        "loss_pairing": {"official": round(loss["official"], 5), "per_group": round(loss["per_group"], 5),
                         "rel_diff": round((loss["per_group"] - loss["official"]) / loss["official"], 6)},
        "quantization": {"mean_abs_input_change": float((levels - unquantised).abs().mean()),
                         "max_abs_input_change": float((levels - unquantised).abs().max()),
                         "loss_unquantised": round(loss["official_unquantised"], 5),
                         "loss_rel_diff": round((loss["official_unquantised"] - loss["official"]) / loss["official"], 6)},
        "crop": {"mean_abs_pixel_change": float((bicubic - bilinear).abs().mean()),
                 "max_abs_pixel_change": float((bicubic - bilinear).abs().max()),
                 "bicubic_out_of_range_share": float(((bicubic < 0) | (bicubic > 1)).float().mean()),
                 "loss_bilinear": round(loss["official_bilinear"], 5),
                 "loss_rel_diff": round((loss["official_bilinear"] - loss["official"]) / loss["official"], 6)},
    }


def measure_band_stats(chips: torch.Tensor) -> dict:
    from pw_ray.pretrain.transforms import normalize, stats_for

    rounded_mean, rounded_std = stats_for(B.SATMAE_BANDS)
    idx = [FMOW_ORDER.index(b) for b in B.SATMAE_BANDS]
    exact_mean = torch.tensor([SATMAE_MEAN[i] for i in idx], dtype=torch.float64)
    exact_std = torch.tensor([SATMAE_STD[i] for i in idx], dtype=torch.float64)
    dn = torch.arange(0, 20001, dtype=torch.float64)[None, None, :].expand(1, 10, -1)[..., None]  # (1, C, N, 1)

    def compare(x):
        a = normalize(x, rounded_mean.double(), rounded_std.double())
        b = normalize(x, exact_mean, exact_std)
        qa = normalize(x, rounded_mean.double(), rounded_std.double(), quantize="uint8")
        qb = normalize(x, exact_mean, exact_std, quantize="uint8")
        inside = (b > 0) & (b < 1)
        return float((a - b).abs().max()), float((qa != qb)[inside].float().mean())

    chip_max, chip_share = compare(chips)
    all_max, all_share = compare(dn)
    return {"max_abs_change_chips": chip_max, "uint8_levels_changed_chips": chip_share,
            "max_abs_change_all_dn": all_max, "uint8_levels_changed_all_dn": all_share}


def mask_count_differences() -> dict:
    from pw_ray.models.satmae import kept_count

    out = {}
    for n in (432, 144):
        ratios = [round(0.05 * k, 2) for k in range(1, 20)]
        out[str(n)] = {str(r): [kept_count(n, r), n - round(r * n)] for r in ratios
                       if kept_count(n, r) != n - round(r * n)}
    return out


def measure_precision(args, chips: torch.Tensor) -> dict:
    from pw_ray.models.satmae import build_mae
    from pw_ray.pretrain.transforms import normalize, stats_for

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mean, std = stats_for(B.SATMAE_BANDS)
    x = normalize(chips[:args.precision_batch], mean, std, quantize="uint8").to(device)
    noise = torch.rand(len(x), 432, generator=torch.Generator().manual_seed(3)).to(device)
    torch.manual_seed(0)
    model = build_mae(args.precision_preset, B.SATMAE_BANDS, B.SATMAE_GROUPS).to(device)
    results, ref = {}, None
    for name, dtype in (("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
        model.zero_grad(set_to_none=True)
        t0 = time.process_time()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model(x, 0.75, noise=noise)[0]
        # fp16 gradients as SatMAE's scaler computes them: scale, backward, unscale
        scale = 2.0**16 if dtype == torch.float16 else 1.0
        (loss * scale).backward()
        grad = torch.cat([p.grad.flatten().double() / scale for p in model.parameters() if p.grad is not None])
        log.info("precision %s on %s: %.1f CPU-s", name, device.type, time.process_time() - t0)
        if ref is None:
            ref = (loss.item(), grad)
            results[name] = {"loss": round(loss.item(), 6)}
            continue
        results[name] = {
            "loss": round(loss.item(), 6),
            "loss_rel_diff": (loss.item() - ref[0]) / ref[0],
            "grad_rel_l2_error": float((grad - ref[1]).norm() / ref[1].norm()),
            "grad_cosine": float(torch.nn.functional.cosine_similarity(grad, ref[1], dim=0)),
            "grad_nonfinite": int((~torch.isfinite(grad)).sum()),
        }
    return {"device": device.type, "preset": args.precision_preset, "batch": len(x), **results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--precision-preset", default="small")
    ap.add_argument("--precision-batch", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    chips = synthetic_chips(args.batch, 96, args.seed)
    out = {"preset": args.preset, "batch": args.batch, "mask_count": mask_count_differences(),
           "band_stats": measure_band_stats(chips)}
    out.update(measure_model_points(args, chips))
    out["precision"] = measure_precision(args, chips)
    for key in ("loss_pairing", "quantization", "crop", "band_stats", "precision"):
        log.info("%-13s %s", key, out[key])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
