"""Samples/s of pretraining through Ray Train against a plain PyTorch loop, side by side.

    python bench/pretrain.py [--chips 2048] [--batch 16] [--steps 100] [--warmup 10] [--threads 1]

Builds a synthetic set with the real pipeline (plan + ingest into a temporary root), then
trains the same model (tiny preset, 32 px chips by default) with the same batch and number of
steps three times: the plain loop (:func:`pw_ray.pretrain.step.train_plain`) over the chips
held in memory, the pretraining stage (:func:`pw_ray.pretrain.trainer.pretrain_set`: a
TorchTrainer whose worker streams the shards with :mod:`pw_ray.pretrain.loader`), and the plain
loop again, so that drift in a shared machine's load shows.

Only steady-state steps are timed. Plain: ``--steps`` steps after ``--warmup`` untimed ones.
Ray: the TensorBoard events rank 0 writes every ``--log-every`` steps carry wall times; the
window runs from the event of step ``--warmup`` to that of the last step, so Ray's start-up,
the worker group's creation, the first blocks of the stream and the final checkpoint are
outside it, while the reports and the streaming inside the window are in. The set holds
enough chips for one epoch, as a real set (700k chips) does. Both sides use ``--threads``
torch threads (Ray's worker via ``OMP_NUM_THREADS``) and the same CPU priority (Ray's workers
default to nice 15, which on a shared machine hands their CPU to any neighbour at nice 0).

The last line printed is one JSON object with ``ray_samples_per_s``, ``plain_samples_per_s``
(mean of the two plain runs) and ``ray_vs_plain``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

log = logging.getLogger("bench.pretrain")


def build_config(root: str, args) -> dict:
    return {
        "name": "bench-pretrain", "root": root,
        "pretrain_sets": [{"name": "bench", "region": "eu", "size": args.chips, "seed": 1}],
        "stac": {"kind": "synthetic", "max_cloud_cover": 100,
                 "synthetic": {"seed": 0, "scenes_per_region": args.scenes, "scene_px": 480, "cloudy_fraction": 0.0}},
        "chips": {"size_px": args.size, "max_cloud_fraction": 1.0, "max_nodata_fraction": 1.0,
                  "chunk_size": 128, "webdataset": False},
        "model": {"preset": args.preset, "patch_size": 8},
        "train": {"epochs": 1, "max_steps": args.warmup + args.steps, "batch_size": args.batch,
                  "num_workers": args.workers, "cpus_per_worker": args.threads, "blr": 1.5e-3,
                  "checkpoint_every": args.warmup + args.steps, "log_every": args.log_every,
                  "shuffle_buffer": args.shuffle_buffer},
        "evaluation": {"include_zero": False},
    }


def plain_samples_per_s(pixels, cfg, args) -> tuple[float, list[float]]:
    """Steady-state samples/s of the plain loop, and samples/s of each ``--log-every``-step window."""
    import torch

    from pw_ray.models.satmae import build_mae
    from pw_ray.pretrain.step import effective_lr, make_optimizer, train_plain
    from pw_ray.pretrain.transforms import stats_for

    torch.manual_seed(0)
    model = build_mae(args.preset, cfg.chips.bands, cfg.model.groups, img_size=args.size, patch_size=8)
    mean, std = stats_for(cfg.chips.bands)
    opt = make_optimizer(model, effective_lr(1.5e-3, args.batch, 1, 1), 0.05)
    kw = dict(batch_size=args.batch, mean=mean, std=std, optimizer=opt)
    train_plain(model, pixels, args.warmup, **kw)
    windows, total = [], 0.0
    for w in range(args.steps // args.log_every):  # the same windows as Ray's reports
        t0 = time.perf_counter()
        train_plain(model, pixels, args.log_every, seed=1 + w, **kw)
        dt = time.perf_counter() - t0
        windows.append(args.log_every * args.batch / dt)
        total += dt
    return args.steps * args.batch / total, windows


def ray_samples_per_s(cfg, args) -> tuple[float, float, float, list[float]]:
    """Steady-state samples/s, wall seconds of the whole stage, share of the timed window spent
    waiting for data, and samples/s of each reporting window in it."""
    from pw_ray.pretrain.metrics import read_scalars
    from pw_ray.pretrain.trainer import pretrain_set, tensorboard_dir

    t0 = time.perf_counter()
    summary = pretrain_set(cfg, "bench")
    wall = time.perf_counter() - t0
    scalars = read_scalars(tensorboard_dir(cfg.root, "bench", summary["run"]))
    points = {s.step: s.wall_time for s in scalars if s.tag == "loss"}
    waits = [s.value for s in scalars if s.tag == "data_wait_frac" and s.step > args.warmup]
    windows = [s.value for s in scalars if s.tag == "samples_per_s" and s.step > args.warmup]
    first, last = args.warmup, max(points)
    if first not in points or last != summary["steps"]:
        raise RuntimeError(f"need events at steps {first} and {summary['steps']}, got {sorted(points)}")
    sps = (last - first) * args.batch * args.workers / (points[last] - points[first])
    return sps, wall, sum(waits) / max(len(waits), 1), windows


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chips", type=int, default=2048,
                   help="chips in the synthetic set (≥ (warmup+steps)·batch·workers)")
    p.add_argument("--scenes", type=int, default=3, help="synthetic scenes per continent (480 px each)")
    p.add_argument("--size", type=int, default=32, help="chip side, px")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--batch", type=int, default=16, help="per worker")
    p.add_argument("--steps", type=int, default=100, help="timed steps")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first")
    p.add_argument("--log-every", type=int, default=10, help="Ray: report every N steps (divides --warmup and --steps)")
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers (the plain loop is one process)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each training process")
    p.add_argument("--shuffle-buffer", type=int, default=256, help="Ray: chips in each worker's local shuffle buffer")
    p.add_argument("--worker-niceness", type=int, default=0,
                   help="nice value of Ray's worker processes (Ray's default is 15; 0 = the plain loop's)")
    p.add_argument("--root", default=None, help="keep the shards and the run here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.warmup % args.log_every or args.steps % args.log_every:
        p.error("--log-every must divide --warmup and --steps")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("ray", "ray.data", "ray.train"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Ray starts its workers at nice 15, the plain loop runs at the shell's 0: on a shared machine
    # the comparison would then measure the neighbours' load, not the pipeline. Same priority for both.
    os.environ["RAY_worker_niceness"] = str(args.worker_niceness)

    import ray
    import torch

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from pw_ray.ingest import shards as S

    torch.set_num_threads(args.threads)
    root = args.root or tempfile.mkdtemp(prefix="pwray-bench-")
    cfg = parse_config(build_config(root, args))
    ray.init(include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="pwb-"), logging_level="WARNING",
             runtime_env={"env_vars": {"OMP_NUM_THREADS": str(args.threads), "RAY_USAGE_STATS_ENABLED": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        t0 = time.perf_counter()
        src = E.source(cfg)
        E.plan(cfg, src=src)
        E.ingest(cfg, src=src)
        build_s = time.perf_counter() - t0
        pixels = torch.from_numpy(S.read_pixels(S.read_set(root, "bench", columns=["pixels"])).astype("int32"))
        need = (args.warmup + args.steps) * args.batch * args.workers
        if len(pixels) < need:
            raise SystemExit(f"{len(pixels)} chips ingested, one epoch of this run needs {need}: "
                             "raise --chips/--scenes")
        plain, plain_windows = plain_samples_per_s(pixels, cfg, args)
        ray_sps, ray_wall, ray_wait, ray_windows = ray_samples_per_s(cfg, args)
        plain_after, plain_windows_after = plain_samples_per_s(pixels, cfg, args)
        plain = [plain, plain_after]
    finally:
        ray.shutdown()
        if not args.root:
            shutil.rmtree(root, ignore_errors=True)
    plain_sps = sum(plain) / len(plain)
    # Medians of the windows: less sensitive to bursts of a shared machine's other load.
    ray_med, plain_med = statistics.median(ray_windows), statistics.median(plain_windows + plain_windows_after)
    out = {
        "ray_samples_per_s": round(ray_sps, 2), "plain_samples_per_s": round(plain_sps, 2),
        "ray_vs_plain": round(ray_sps / plain_sps, 3), "ray_vs_plain_median_window": round(ray_med / plain_med, 3),
        "plain_runs_samples_per_s": [round(v, 2) for v in plain],
        "ray_data_wait_frac": round(ray_wait, 3), "ray_window_samples_per_s": [round(v, 1) for v in ray_windows],
        "plain_window_samples_per_s": [[round(v, 1) for v in ws] for ws in (plain_windows, plain_windows_after)],
        "ray_stage_wall_s": round(ray_wall, 1),
        "ray_startup_and_teardown_s": round(ray_wall - args.steps * args.batch * args.workers / ray_sps, 1),
        "preset": args.preset, "img_size": args.size, "batch": args.batch, "timed_steps": args.steps,
        "warmup_steps": args.warmup, "workers": args.workers, "threads": args.threads,
        "shuffle_buffer": args.shuffle_buffer, "ray_worker_niceness": args.worker_niceness, "chips": len(pixels),
        "build_shards_s": round(build_s, 1), "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 1),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }
    rows = [("plain PyTorch, in-memory tensors (before)", plain[0]), ("Ray Train, streaming the shards", ray_sps),
            ("plain PyTorch, in-memory tensors (after)", plain[1])]
    print(f"\nSatMAE {args.preset}, {args.size} px, batch {args.batch}, {args.steps} timed steps after {args.warmup}, "
          f"{args.threads} thread(s), {os.cpu_count()} CPUs (load {out['load_avg_1m']})")
    print(f"{'pipeline':<44}{'samples/s':>12}")
    for name, v in rows:
        print(f"{name:<44}{v:>12.1f}")
    print(f"{'ray / plain (plain = mean of both runs)':<44}{out['ray_vs_plain']:>12.3f}")
    print(f"{f'ray / plain, median {args.log_every}-step windows':<44}{out['ray_vs_plain_median_window']:>12.3f}")
    print(f"Ray worker blocked on the data stream for {100 * ray_wait:.1f} % of the timed window")
    for name, ws in (("plain (before)", plain_windows), ("Ray", ray_windows), ("plain (after)", plain_windows_after)):
        print(f"  samples/s per {args.log_every}-step window, {name:<15}{' '.join(f'{v:5.0f}' for v in ws)}")
    print(f"Ray stage wall time {ray_wall:.1f} s, of which {out['ray_startup_and_teardown_s']:.1f} s outside the "
          f"timed window (start-up, warm-up steps, stream start, final checkpoint, export)")
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
