"""Diversity measures: the spectral math per core, and the Ray Data path over shards, side by side.

    python bench/analyze.py                       # 1024 chips of 10×96×96 in 2 sets, 2 cores
    python bench/analyze.py --chips 4096 --cores 2

Writes ``--chips`` generated chips (10 bands, 96 px: the paper's chips; pixels drawn from a
few land-cover spectra in blocky patches plus noise) as shards of two sets, 256 chips per file
in row groups of 128, like ingest. Then, in one run:

* **pure, per core** — :func:`diversity.spectral_entropy_hist_batch` and
  :func:`diversity.spectral_entropy_codebook_batch` (k = 32) on the decoded chips in this
  process with BLAS limited to one thread, timed in CPU seconds: ``spectral_chips_per_s_per_core``
  (goal ≥ 500). Beside it the same math as it was before the speed-up (the float binning and the
  ``||c||² − 2 x·c`` table over 32-chip chunks, kept here), checked bit for bit against the new.
* **one process, read + measures** — the shards read and decoded with pyarrow and every measure
  accumulated, serially (CPU seconds): what one core does per chip end to end.
* **read_parquet then map** — the other design: Ray's Parquet reader makes blocks and
  ``map_batches`` reduces them (wall and CPU seconds).
* **driver loop** — the analyze of before: Ray Data reads, the driver iterates the batches and
  computes (wall seconds).
* **Ray Data** — :func:`diversity_job.accumulate_sets`: one row per shard file, ``map_batches``
  tasks read and reduce their file, the driver adds per-file states (wall seconds; the codebook is fitted once, beforehand). Its
  result is checked against the one-process pass.

Wall-clock figures move with the machine's load (printed as ``load_avg``), so the Ray
passes also report chips per CPU second of the whole local Ray (driver, GCS, raylet, workers:
``*_chips_per_cpu_s``), comparable with the one-process figure. The per-core goal figure is
CPU time. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.proctree import tree_cpu_s  # noqa: E402

log = logging.getLogger("pw_ray.bench")

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]
#: Reflectance ×1e4 of a few surfaces over BANDS (vegetation, soil, water, built-up, snow).
SPECTRA = np.array([
    [400, 700, 450, 1200, 2800, 3300, 3500, 3600, 2000, 1000],
    [1200, 1600, 2000, 2200, 2400, 2500, 2600, 2700, 3200, 2800],
    [600, 500, 300, 250, 200, 180, 150, 140, 80, 60],
    [1500, 1600, 1700, 1800, 1900, 1950, 2000, 2050, 2300, 2200],
    [8500, 8400, 8300, 8200, 8100, 8000, 7800, 7600, 1200, 900],
], dtype=np.float64)


def make_chips(n: int, size: int, seed: int) -> np.ndarray:
    """``(n, 10, size, size)`` uint16: per chip a blocky patchwork of SPECTRA, scaled and noisy."""
    rng = np.random.default_rng(seed)
    block = max(1, size // 8)
    out = np.empty((n, len(BANDS), size, size), dtype=np.uint16)
    for i in range(n):
        labels = rng.integers(0, len(SPECTRA), (size // block, size // block)).repeat(block, 0).repeat(block, 1)
        px = SPECTRA[labels] * rng.uniform(0.8, 1.2) + rng.normal(0, 60, (size, size, len(BANDS)))
        out[i] = np.clip(px, 0, 65535).astype(np.uint16).transpose(2, 0, 1)
    return out


def write_sets(root: str, chips: np.ndarray, n_sets: int, chunk: int = 256) -> dict[str, list[str]]:
    from pw_ray.ingest import shards as S

    rng = np.random.default_rng(1)
    regions = ["af", "as", "eu", "na", "oc", "sa"]
    for k, part in enumerate(np.array_split(np.arange(len(chips)), n_sets)):
        name = f"set{k}"
        for c, start in enumerate(range(0, len(part), chunk)):
            idx = part[start:start + chunk]
            region = regions[(k + c) % 6]
            meta = [{"chip_id": f"{name}-{i}", "set": name, "region": region, "biome": f"b{rng.integers(5)}",
                     "landcover": f"lc{rng.integers(8)}"} for i in idx]
            S.write_parquet_shard(S.chips_table(meta, chips[idx], BANDS), S.parquet_uri(root, name, region, c), 128)
    return {f"set{k}": S.shard_files(root, f"set{k}") for k in range(n_sets)}


# The math before the speed-up (2026-11-29), kept for the side-by-side and the identity check.
def reference_hist(chips, bins=16, lo=0.0, hi=10000.0):
    from pw_ray.analyze.diversity import _entropy_rows

    n, c = chips.shape[:2]
    out = np.empty(n)
    for start in range(0, n, 32):
        x = chips[start:start + 32].reshape(-1, c, chips.shape[2] * chips.shape[3]).astype(np.float64)
        idx = np.floor((np.clip(x, lo, hi) - lo) * (bins / (hi - lo))).astype(np.int64)
        np.minimum(idx, bins - 1, out=idx)
        b = x.shape[0]
        idx += (np.arange(b * c, dtype=np.int64) * bins).reshape(b, c, 1)
        out[start:start + b] = _entropy_rows(np.bincount(idx.ravel(), minlength=b * c * bins)
                                             .reshape(b, c, bins)).mean(axis=1)
    return out


def reference_codebook(chips, codebook):
    from pw_ray.analyze.diversity import _entropy_rows

    n, c = chips.shape[:2]
    k = codebook.shape[0]
    cb_sq = (codebook ** 2).sum(axis=1)
    out = np.empty(n)
    for start in range(0, n, 32):
        x = chips[start:start + 32].reshape(-1, c, chips.shape[2] * chips.shape[3])
        x = x.transpose(0, 2, 1).astype(np.float64) / 10000.0
        nearest = np.argmin(cb_sq - 2.0 * (x @ codebook.T), axis=2)
        b = x.shape[0]
        nearest += (np.arange(b) * k)[:, None]
        out[start:start + b] = _entropy_rows(np.bincount(nearest.ravel(), minlength=b * k).reshape(b, k))
    return out


def _batch_state(batch, shape, codebook):
    from pw_ray.analyze import diversity as D
    from pw_ray.ingest import shards as S

    acc = D.DiversityAccumulator(16, codebook)
    acc.update(S.column_pixels(batch.column("pixels"), shape), batch.column("region").to_pylist(),
               batch.column("biome").to_pylist(), batch.column("landcover").to_pylist())
    return {"state": [json.dumps(acc.state())]}


def read_parquet_pass(files, shape, codebook, batch_size):
    """The alternative design: ``read_parquet`` blocks, then ``map_batches`` reduces them (Ray 2.60
    does not fuse the two, so the pixels pass through the object store)."""
    import ray

    paths = [f for fs in files.values() for f in fs]
    ds = ray.data.read_parquet(paths).select_columns(["pixels", "region", "biome", "landcover"])
    ds = ds.map_batches(_batch_state, batch_size=batch_size, batch_format="pyarrow", num_cpus=1,
                        fn_kwargs={"shape": list(shape), "codebook": codebook})
    return [r["state"] for r in ds.iter_rows()]


def cpu_time(fn, *args):
    t0 = time.process_time()
    out = fn(*args)
    return time.process_time() - t0, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chips", type=int, default=1024)
    ap.add_argument("--size-px", type=int, default=96)
    ap.add_argument("--sets", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2, help="Ray CPUs")
    ap.add_argument("--clusters", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=128, help="chips per read / batch")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import pyarrow.parquet as pq
    from threadpoolctl import threadpool_limits

    from pw_ray.analyze import diversity as D
    from pw_ray.analyze import diversity_job as J
    from pw_ray.ingest import shards as S

    tmp = tempfile.mkdtemp(prefix="bench-analyze-")
    chips = make_chips(args.chips, args.size_px, seed=0)
    files = write_sets(os.path.join(tmp, "root"), chips, args.sets)
    codebook = D.fit_codebook(D.sample_pixels(chips[::max(1, len(chips) // 256)], 64, seed=0), args.clusters)
    n = len(chips)
    shape = (len(BANDS), args.size_px, args.size_px)
    log.info("bench: %d chips %s in %d sets, %d files", n, chips.shape[1:], args.sets,
             sum(len(f) for f in files.values()))

    with threadpool_limits(1):  # one core: what a Ray task with num_cpus=1 gets
        t_hist, hist = cpu_time(D.spectral_entropy_hist_batch, chips)
        t_cb, cb = cpu_time(D.spectral_entropy_codebook_batch, chips, codebook)
        t_rhist, rhist = cpu_time(reference_hist, chips)
        t_rcb, rcb = cpu_time(reference_codebook, chips, codebook)
        identical = bool(np.array_equal(hist, rhist) and np.array_equal(cb, rcb))

        def one_process():  # read, decode and measure every shard here, serially
            accs = {}
            for name, fs in files.items():
                acc = accs[name] = D.DiversityAccumulator(16, codebook)
                for f in fs:
                    t = pq.read_table(f, columns=["pixels", "region", "biome", "landcover"])
                    acc.update(S.column_pixels(t.column("pixels"), shape),
                               *(t.column(c).to_pylist() for c in ("region", "biome", "landcover")))
            return {k: a.result() for k, a in accs.items()}

        t_serial, serial = cpu_time(one_process)

    import ray

    ray.init(num_cpus=args.cores, include_dashboard=False, _temp_dir=os.path.join(tmp, "ray"),
             logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    J.accumulate_sets({"set0": files["set0"][:1]}, 16, codebook)  # warm-up: workers started

    t0, c0 = time.perf_counter(), tree_cpu_s()
    accs = J.accumulate_sets(files, 16, codebook, args.batch_size)
    t_ray, c_ray = time.perf_counter() - t0, tree_cpu_s() - c0
    ray_result = {k: a.result() for k, a in accs.items()}
    agree = all(ray_result[k]["n_chips"] == serial[k]["n_chips"] and all(
        np.isclose(ray_result[k][m], serial[k][m], rtol=1e-12, atol=0) for m in serial[k]) for k in serial)

    t0, c0 = time.perf_counter(), tree_cpu_s()  # Ray's Parquet reader, then map_batches reduces
    read_parquet_pass(files, shape, codebook, args.batch_size)
    t_rp, c_rp = time.perf_counter() - t0, tree_cpu_s() - c0

    t0, c0 = time.perf_counter(), tree_cpu_s()  # the analyze of before: the driver iterates and computes
    for name, fs in files.items():
        acc = D.DiversityAccumulator(16, codebook)
        ds = ray.data.read_parquet(fs).select_columns(["pixels", "region", "biome", "landcover"])
        for batch in ds.iter_batches(batch_size=128, batch_format="pyarrow"):
            acc.update(S.column_pixels(batch.column("pixels"), shape), batch.column("region").to_pylist(),
                       batch.column("biome").to_pylist(), batch.column("landcover").to_pylist())
    t_driver, c_driver = time.perf_counter() - t0, tree_cpu_s() - c0
    ray.shutdown()

    per_core = n / (t_hist + t_cb)
    out = {
        "chips": n, "chip_shape": list(shape), "cores": args.cores, "clusters": args.clusters,
        "hist_ms_per_chip": round(1e3 * t_hist / n, 3), "codebook_ms_per_chip": round(1e3 * t_cb / n, 3),
        "spectral_chips_per_s_per_core": round(per_core, 1),
        "reference_spectral_chips_per_s_per_core": round(n / (t_rhist + t_rcb), 1),
        "speedup_vs_reference": round((t_rhist + t_rcb) / (t_hist + t_cb), 2),
        "identical_to_reference": identical,
        "one_process_read_and_measure_chips_per_s": round(n / t_serial, 1),
        "ray_chips_per_s": round(n / t_ray, 1),
        "ray_chips_per_s_per_core": round(n / t_ray / args.cores, 1),
        "ray_chips_per_cpu_s": round(n / c_ray, 1),
        "read_parquet_then_map_chips_per_s": round(n / t_rp, 1),
        "read_parquet_then_map_chips_per_cpu_s": round(n / c_rp, 1),
        "driver_loop_chips_per_s": round(n / t_driver, 1),
        "driver_loop_chips_per_cpu_s": round(n / c_driver, 1),
        "ray_vs_driver_loop": round(t_driver / t_ray, 2),
        "ray_equals_one_process": bool(agree),
        "goal_500_per_core_met": per_core >= 500,
        "load_avg": round(os.getloadavg()[0], 1), "machine": f"{platform.processor() or platform.machine()}, "
                                                             f"{os.cpu_count()} cores",
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
