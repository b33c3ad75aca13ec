"""Spectral-diverse builder benchmark: is the chosen set more diverse than random sets, and at what cost?

On one synthetic archive built in a temp dir, by default laid out like Sentinel-2 L2A on a small
scale (one scene per region of 4080 px at 10 m, 1024 px COG tiles with internal overviews, 96 px
chips: 16 full-resolution blocks per 10 m band, so chips share few of them, as in production) or
the demo's (``--scenes-per-region 3 --scene-px 480 --block-px 256 --size-px 48``: a scene is a
few blocks that every chip shares), one candidate pool of ``--candidates`` × ``--size`` points is
drawn like a ``global`` set, and side by side in one process:

* **signatures**: :func:`pw_ray.ingest.signatures.candidate_signatures` of the whole pool (the
  ingest's scene search and SCL screening, then each chip's footprint at ``--signature-px`` from
  the COGs' overviews);
* **full ingest**: every pool point through the ingest's own library functions, without Ray:
  ``index_points`` (search + SCL screening) then ``write_chunk`` for every chunk (all bands at
  10 m, SCL, land cover, Parquet + WebDataset written).

Both are timed in CPU seconds of this process (``time.process_time``; the machine is shared, so
wall clock is printed but not compared), twice each, interleaved, keeping each one's faster run.
``cost_ratio`` = signature CPU s per candidate ÷ ingest CPU s per chip written. Goal: ≤ 0.10.

Then the claim, on the **ingested pixels** (analyze's functions on the chips the ingest wrote):

* the diverse set: :func:`pw_ray.diverse.select_diverse` of the pool by signature score, with
  the per-continent counts of a ``global`` set of ``--size``;
* ``--random-sets`` random sets of the same size and counts, each drawn uniformly from the same
  pool with its own seed (a uniform subsample of a uniform sample is a random set);
* each set's spectral entropy = the mean over its chips of analyze's "hist" entropy (the one the
  builder maximises; a point without a chip counts as it does in analyze: not at all), and of
  the "codebook" entropy with a codebook fitted on pixels pooled from the whole pool;
* the size a random set needs to reach the diverse set's "hist" entropy: mean of the random
  sets at 1, 1.5, 2, 3, 4, … × ``--size`` up to the pool; ``size_ratio`` = the first size whose
  mean reaches it ÷ ``--size`` (null if none does). analyze's entropies are means over chips, so
  a random set's expected value is the pool's mean at any size: the curve is flat, and a set
  above the best random ones is not reached by random sets of any size;
* for comparison, a *set-level* entropy that does grow with size (not one of analyze's): the
  "hist" entropy of the per-band histograms of all the set's pixels pooled (``pooled_*``), with
  its own ``pooled_size_ratio``.

    python bench/diverse.py [--size 96] [--candidates 8] [--random-sets 20] [--signature-px 12]
    python bench/diverse.py --scenes-per-region 3 --scene-px 480 --block-px 256 --size-px 48   # the demo's

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

log = logging.getLogger("bench.diverse")


def config(root: str, args):
    from pw_ray.config import parse_config

    return parse_config({
        "name": "bench-diverse", "root": root,
        "pretrain_sets": [{"name": "diverse", "region": "global", "size": args.size, "seed": args.seed,
                           "strategy": "spectral-diverse", "candidates": args.candidates,
                           "signature_px": args.signature_px}],
        "stac": {"kind": "synthetic", "max_cloud_cover": 60,
                 "synthetic": {"seed": 0, "scenes_per_region": args.scenes_per_region, "scene_px": args.scene_px,
                               "cloudy_fraction": 0.3, "block_px": args.block_px}},
        "chips": {"size_px": args.size_px, "max_cloud_fraction": 0.3, "max_nodata_fraction": 0.1, "chunk_size": 64},
    })


def cpu(fn, *a, **kw):
    """(CPU seconds of this process, wall seconds, result) of one call."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*a, **kw)
    return time.process_time() - c0, time.perf_counter() - w0, out


def full_ingest(root: str, name: str, pool: pd.DataFrame, src, spec) -> tuple[pd.DataFrame, list[dict]]:
    """The pool through the ingest's library functions in this process (no Ray): index, every chunk."""
    from pw_ray.ingest.pipeline import assign_chunks, chunk_tasks, index_points, run_chunk_task

    index = index_points(pool, src.searcher, src.adapter, spec)
    first = index.dropna(subset=["items_json"])
    items_json = dict(zip(first["item_id"], first["items_json"]))
    tasks = chunk_tasks(assign_chunks(index.drop(columns=["items_json"]), spec.chunk_size), items_json)
    results = [run_chunk_task(t, root, name, src.adapter, spec, src.landcover, force=True) for t in tasks]
    return index, results


def random_sets(region: np.ndarray, counts: dict[str, int], n_sets: int, seed0: int = 0) -> list[np.ndarray]:
    """``n_sets`` uniform draws (seeds ``seed0`` …) of pool positions with ``counts`` per continent."""
    by_region = {r: np.flatnonzero(region == r) for r in counts}
    out = []
    for s in range(seed0, seed0 + n_sets):
        rng = np.random.default_rng([s, 17])
        out.append(np.concatenate([rng.choice(by_region[r], size=c, replace=False) for r, c in counts.items() if c]))
    return out


def set_entropy(values: np.ndarray, picked: np.ndarray) -> float:
    """Mean of the chips' values over the picked points that have a chip (NaN: no chip)."""
    v = values[picked]
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=96, help="points of the set (the demo's global: 96)")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--signature-px", type=int, default=12)
    ap.add_argument("--random-sets", type=int, default=20)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--scenes-per-region", type=int, default=1)
    ap.add_argument("--scene-px", type=int, default=4080)
    ap.add_argument("--block-px", type=int, default=1024)
    ap.add_argument("--size-px", type=int, default=96)
    ap.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from pw_ray import experiment as E
    from pw_ray.analyze import diversity as D
    from pw_ray.diverse import candidate_pool, select_diverse
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.signatures import candidate_signatures
    from pw_ray.plan import continent_counts

    tmp = tempfile.mkdtemp(prefix="bench-diverse-")
    try:
        cfg = config(str(Path(tmp) / "root"), args)
        spec, pset = cfg.chips, cfg.pretrain_sets[0]
        src = E.source(cfg)
        pool = candidate_pool(pset, src.coverage, spec.min_spacing_m).points
        bins = cfg.analysis.spectral_bins

        sig_runs, ing_runs = [], []
        for rep in range(2):  # interleaved, so both see the same machine load and warm caches
            c, w, sig = cpu(candidate_signatures, pool, src.searcher, src.adapter, spec, pset.signature_px, bins)
            sig_runs.append((c, w))
            c, w, (index, results) = cpu(full_ingest, str(Path(tmp) / f"ingest{rep}"), "pool", pool, src, spec)
            ing_runs.append((c, w))
            print(f"run {rep}: signatures {sig_runs[-1][0]:.2f} CPU s ({sig_runs[-1][1]:.1f} s wall), "
                  f"full ingest {c:.2f} CPU s ({w:.1f} s wall)", flush=True)
        sig_cpu, sig_wall = min(sig_runs)
        ing_cpu, ing_wall = min(ing_runs)
        n_chips = int((index["status"] == "ok").sum())

        # The ingested pixels, as analyze sees them.
        table = S.read_set(str(Path(tmp) / "ingest1"), "pool", columns=["chip_id", "point_id", "pixels",
                                                                      "cloud_fraction"])
        chips = S.read_pixels(table)
        chip_points = table.column("point_id").to_pylist()
        hist = D.spectral_entropy_hist_batch(chips, bins)
        codebook = D.fit_codebook(D.sample_pixels(chips, cfg.analysis.codebook_pixels, seed=0),
                                  cfg.analysis.spectral_clusters, seed=0)
        cb = D.spectral_entropy_codebook_batch(chips, codebook)
        pos = pd.Series(np.arange(len(pool)), index=pool["point_id"].to_numpy())
        at = pos.loc[chip_points].to_numpy()
        true_hist = np.full(len(pool), np.nan)
        true_cb = np.full(len(pool), np.nan)
        cloud = np.full(len(pool), np.nan)
        true_hist[at], true_cb[at] = hist, cb
        cloud[at] = table.column("cloud_fraction").to_numpy()

        score = sig["score"].to_numpy(np.float64)
        counts = continent_counts(pset.weights(), pset.size)
        region = pool["region"].to_numpy().astype(str)
        picked = select_diverse(pool, score, counts, spec.min_spacing_m)
        rand = random_sets(region, counts, args.random_sets)
        div_hist, div_cb = set_entropy(true_hist, picked), set_entropy(true_cb, picked)
        r_hist = np.array([set_entropy(true_hist, p) for p in rand])
        r_cb = np.array([set_entropy(true_cb, p) for p in rand])

        counts_chip = D.band_histograms(chips, bins)  # (chips, C, bins): the set-level measure sums them
        pos_chip = np.full(len(pool), -1)
        pos_chip[at] = np.arange(len(at))

        def pooled(picked: np.ndarray) -> float:
            rows = pos_chip[picked]
            return float(D.hist_entropy(counts_chip[rows[rows >= 0]].sum(axis=0)))

        div_pooled = pooled(picked)
        r_pooled = np.array([pooled(p) for p in rand])
        sizes, curve, curve_pooled = [], [], []
        for mult in (1, 1.5, 2, 3, 4, 6, 8, 12, 16):
            m = int(round(mult * pset.size))
            if m > len(pool):
                break
            c_m = continent_counts(pset.weights(), m)
            if any(c > (region == r).sum() for r, c in c_m.items()):
                break
            sizes.append(m)
            draws = random_sets(region, c_m, args.random_sets)
            curve.append(float(np.mean([set_entropy(true_hist, p) for p in draws])))
            curve_pooled.append(float(np.mean([pooled(p) for p in draws])))
        reached = [m for m, e in zip(sizes, curve) if e >= div_hist]
        reached_pooled = [m for m, e in zip(sizes, curve_pooled) if e >= div_pooled]
        both = np.isfinite(score) & np.isfinite(true_hist)
        from scipy.stats import spearmanr

        out = {
            "bench": "diverse", "pool": len(pool), "size": pset.size, "candidates": pset.candidates,
            "signature_px": pset.signature_px, "chip_px": spec.size_px, "scene_px": args.scene_px,
            "block_px": args.block_px, "chips_in_pool": n_chips,
            "diverse_chips": int(np.isfinite(true_hist[picked]).sum()),
            "random_chips_mean": float(np.mean([np.isfinite(true_hist[p]).sum() for p in rand])),
            "hist_diverse": round(div_hist, 4),
            "hist_random_mean": round(float(r_hist.mean()), 4), "hist_random_sd": round(float(r_hist.std(ddof=1)), 4),
            "hist_random_max": round(float(r_hist.max()), 4),
            "diverse_above_best_random": bool(div_hist > r_hist.max()),
            "hist_z": round(float((div_hist - r_hist.mean()) / r_hist.std(ddof=1)), 2),
            "codebook_diverse": round(div_cb, 4), "codebook_random_mean": round(float(r_cb.mean()), 4),
            "codebook_random_sd": round(float(r_cb.std(ddof=1)), 4), "codebook_random_max": round(float(r_cb.max()), 4),
            "random_size_curve": dict(zip(map(str, sizes), [round(e, 4) for e in curve])),
            "size_needed": reached[0] if reached else None,
            "size_ratio": round(reached[0] / pset.size, 2) if reached else None,
            "pooled_diverse": round(div_pooled, 4), "pooled_random_mean": round(float(r_pooled.mean()), 4),
            "pooled_random_max": round(float(r_pooled.max()), 4),
            "pooled_size_curve": dict(zip(map(str, sizes), [round(e, 4) for e in curve_pooled])),
            "pooled_size_ratio": round(reached_pooled[0] / pset.size, 2) if reached_pooled else None,
            "signature_vs_chip_spearman": round(float(spearmanr(score[both], true_hist[both])[0]), 3),
            "cloud_fraction_diverse": round(float(np.nanmean(cloud[picked])), 4),
            "cloud_fraction_random": round(float(np.mean([np.nanmean(cloud[p]) for p in rand])), 4),
            "signature_cpu_s": round(sig_cpu, 3), "signature_wall_s": round(sig_wall, 2),
            "ingest_cpu_s": round(ing_cpu, 3), "ingest_wall_s": round(ing_wall, 2),
            "signature_cpu_ms_per_candidate": round(1000 * sig_cpu / len(pool), 3),
            "ingest_cpu_ms_per_chip": round(1000 * ing_cpu / max(n_chips, 1), 3),
            "cost_ratio": round((sig_cpu / len(pool)) / (ing_cpu / max(n_chips, 1)), 4),
        }
        print(f"spectral entropy (hist, nats, ingested chips): diverse {div_hist:.4f} vs {args.random_sets} random "
              f"sets mean {r_hist.mean():.4f} sd {r_hist.std(ddof=1):.4f} max {r_hist.max():.4f}")
        print(f"spectral entropy (codebook): diverse {div_cb:.4f} vs random mean {r_cb.mean():.4f} max {r_cb.max():.4f}")
        print(f"random sets by size (hist mean): {out['random_size_curve']}; size ratio to reach the diverse set: "
              f"{out['size_ratio']}")
        print(f"set-level pooled hist entropy (not analyze's): diverse {div_pooled:.4f} vs random mean "
              f"{r_pooled.mean():.4f} max {r_pooled.max():.4f}; by size {out['pooled_size_curve']}; size ratio "
              f"{out['pooled_size_ratio']}")
        print(f"cost: signature {out['signature_cpu_ms_per_candidate']} CPU ms per candidate vs full ingest "
              f"{out['ingest_cpu_ms_per_chip']} CPU ms per chip → ratio {out['cost_ratio']} (goal ≤ 0.10)")
        print(json.dumps(out))
        return out
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
