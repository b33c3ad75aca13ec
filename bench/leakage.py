"""The leakage audit and the plan-time exclusion at paper scale, side by side with the alternatives.

    python bench/leakage.py [--pretrain 700000] [--held-out 30000] [--brute-sample 200]

Points: ``--pretrain`` pretraining points sampled on land with pw-ray's own sampler (``global``:
equal shares of the six continents) and ``--held-out`` held-out task points (another seed), the
scale of one paper set against a large downstream test split. Distance: the default exclusion
of 96 px chips at 10 m (chip diagonal + 2 px = 1378 m).

Audit (the nearest pretraining chip of each held-out chip, and the counts within the distance
on both sides), three ways in one run:

* ``kdtree`` — :func:`pw_ray.leakage.audit_pair` (scipy cKDTree on unit vectors; what analyze runs);
* ``balltree`` — scikit-learn ``BallTree(metric="haversine")`` for the same nearest distances
  and counts;
* ``brute`` — pairwise haversine of ``--brute-sample`` held-out points against all pretraining
  points (chunked numpy), extrapolated linearly to all held-out points (what a loop costs).

Results are cross-checked (nearest distances of kdtree and balltree agree to 1e-6 m; brute
agrees on its sample). Plan: :func:`pw_ray.plan.sample_away` with and without the keep-out set,
so the exclusion's share of planning a 700k set shows.

CPU seconds (``time.process_time``) are the figures to compare on a shared machine; wall
seconds are printed beside them. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, no install

from pw_ray import leakage as L  # noqa: E402
from pw_ray.plan import EARTH_RADIUS_M, haversine_m, sample_away  # noqa: E402


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def balltree_audit(pretrain: pd.DataFrame, held: pd.DataFrame, distance_m: float) -> dict:
    from sklearn.neighbors import BallTree

    p = np.radians(pretrain[["lat", "lon"]].to_numpy())
    h = np.radians(held[["lat", "lon"]].to_numpy())
    tree = BallTree(p, metric="haversine")
    d, _ = tree.query(h, k=1)
    d = d[:, 0] * EARTH_RADIUS_M
    htree = BallTree(h, metric="haversine")
    n_p = int((htree.query_radius(p, r=distance_m / EARTH_RADIUS_M, count_only=True) > 0).sum())
    return {"nearest": d, "n_held_out_within": int((d < distance_m).sum()), "n_pretrain_within": n_p}


def brute_nearest(pretrain: pd.DataFrame, held: pd.DataFrame, chunk: int = 20) -> np.ndarray:
    plon, plat = pretrain["lon"].to_numpy(), pretrain["lat"].to_numpy()
    out = np.empty(len(held))
    hlon, hlat = held["lon"].to_numpy(), held["lat"].to_numpy()
    for i in range(0, len(held), chunk):
        d = haversine_m(hlon[i:i + chunk, None], hlat[i:i + chunk, None], plon[None], plat[None])
        out[i:i + chunk] = d.min(axis=1)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain", type=int, default=700_000)
    ap.add_argument("--held-out", type=int, default=30_000)
    ap.add_argument("--brute-sample", type=int, default=200)
    ap.add_argument("--distance", type=float, default=96 * 10 * 2 ** 0.5 + 20)
    args = ap.parse_args(argv)

    held = sample_away({"global": 1}, args.held_out, seed=2).points
    free, plan_cpu, plan_wall = timed(lambda: sample_away({"global": 1}, args.pretrain, seed=1))
    away, plan_ex_cpu, plan_ex_wall = timed(lambda: sample_away({"global": 1}, args.pretrain, seed=1,
                                                                held_out=held, exclusion_m=args.distance))
    pretrain = free.points  # audit the set planned without exclusion: some chips are close

    kd, kd_cpu, kd_wall = timed(lambda: L.audit_pair(pretrain, held, args.distance))
    kd_nearest = L.nearest_m(held["lon"], held["lat"], pretrain["lon"], pretrain["lat"])
    bt, bt_cpu, bt_wall = timed(lambda: balltree_audit(pretrain, held, args.distance))
    sample = held.iloc[:args.brute_sample]
    br, br_cpu, br_wall = timed(lambda: brute_nearest(pretrain, sample))
    scale = len(held) / len(sample)

    agree_bt = float(np.abs(kd_nearest - bt["nearest"]).max())
    agree_br = float(np.abs(kd_nearest[:len(sample)] - br).max())
    assert agree_bt < 1e-3 and agree_br < 1e-3, (agree_bt, agree_br)
    assert (kd["n_held_out_within"], kd["n_pretrain_within"]) == (bt["n_held_out_within"], bt["n_pretrain_within"])
    excluded_audit = L.audit_pair(away.points, held, args.distance)
    assert excluded_audit["n_held_out_within"] == 0 and excluded_audit["n_pretrain_within"] == 0

    out = {
        "pretrain_points": len(pretrain), "held_out_points": len(held), "distance_m": round(args.distance, 1),
        "audit_kdtree_cpu_s": round(kd_cpu, 3), "audit_kdtree_wall_s": round(kd_wall, 3),
        "audit_balltree_cpu_s": round(bt_cpu, 3), "audit_balltree_wall_s": round(bt_wall, 3),
        "audit_brute_cpu_s_extrapolated": round(br_cpu * scale, 1),
        "audit_brute_wall_s_extrapolated": round(br_wall * scale, 1),
        "balltree_vs_kdtree_cpu": round(bt_cpu / kd_cpu, 2),
        "brute_vs_kdtree_cpu": round(br_cpu * scale / kd_cpu, 1),
        "max_nearest_diff_m_kdtree_balltree": agree_bt,
        "min_distance_m_without_exclusion": round(kd["min_distance_m"], 1),
        "n_held_out_within_without_exclusion": kd["n_held_out_within"],
        "n_pretrain_within_without_exclusion": kd["n_pretrain_within"],
        "min_distance_m_with_exclusion": round(excluded_audit["min_distance_m"], 1),
        "plan_cpu_s": round(plan_cpu, 2), "plan_with_exclusion_cpu_s": round(plan_ex_cpu, 2),
        "plan_wall_s": round(plan_wall, 2), "plan_with_exclusion_wall_s": round(plan_ex_wall, 2),
        "plan_exclusion_vs_plain_cpu": round(plan_ex_cpu / plan_cpu, 3),
        "replaced_at_plan": int(sum(away.replaced.values())),
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(f"\nleakage audit: {len(pretrain):,} pretraining × {len(held):,} held-out points, distance "
          f"{args.distance:.0f} m, {os.cpu_count()} CPUs (load {out['load_avg_1m']})")
    print(f"{'method':<46}{'CPU s':>10}{'wall s':>10}{'× kdtree (CPU)':>16}")
    for name, c, w in (("kdtree on unit vectors (pw_ray.leakage)", kd_cpu, kd_wall),
                       ("sklearn BallTree, haversine", bt_cpu, bt_wall),
                       (f"brute force (from {len(sample)} points, extrapolated)", br_cpu * scale, br_wall * scale)):
        print(f"{name:<46}{c:>10.2f}{w:>10.2f}{c / kd_cpu:>16.1f}")
    print(f"without exclusion: min {kd['min_distance_m']:.0f} m, {kd['n_held_out_within']} held-out / "
          f"{kd['n_pretrain_within']} pretraining points within {args.distance:.0f} m; "
          f"with exclusion: min {excluded_audit['min_distance_m']:.0f} m, 0 / 0")
    print(f"plan {len(pretrain):,} points: {plan_cpu:.2f} CPU s plain, {plan_ex_cpu:.2f} CPU s with exclusion "
          f"(× {out['plan_exclusion_vs_plain_cpu']}), {out['replaced_at_plan']} candidates replaced")
    print(json.dumps(out), flush=True)
    return out


if __name__ == "__main__":
    main()
