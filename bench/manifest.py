"""Manifest build time at paper scale: ``pipeline.build_manifest`` against the old quadratic loop.

A synthetic index of N chips (80 % kept, 15 % skipped, 5 % failed at index time) split into
256-chip chunks, with ``--fail`` of the kept chips failing in the shard phase (the chunk writers'
failure lists). The linear build runs at every size; the old construction (one
``manifest.loc[manifest.chip_id == id]`` per failed chip) only at the small sizes, where it
finishes, and its time is extrapolated from its slope. Prints a table, then one line of JSON.

    python bench/manifest.py                       # 7k, 70k, 700k chips
    python bench/manifest.py --sizes 7000 70000    # quicker
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import pandas as pd


def synthetic_index(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    status = rng.choice(np.array(["ok", "skipped", "failed"], dtype=object), n, p=[0.8, 0.15, 0.05])
    ids = np.array([f"p{i:07d}" for i in range(n)], dtype=object)
    return pd.DataFrame({
        "point_id": ids, "chip_id": ids, "set": "bench", "lon": rng.uniform(-10, 30, n),
        "lat": rng.uniform(35, 60, n), "region": rng.choice(np.array(["eu", "af"], dtype=object), n),
        "status": status, "reason": np.where(status == "ok", "", "cloud 0.4 > 0.2"),
        "failure": np.where(status == "failed", "transient", ""), "item_id": "S2A_x"})


def chunk_results(index: pd.DataFrame, fail: float, seed: int = 1):
    kept = index[index["status"] == "ok"].copy()
    kept["chunk"] = np.arange(len(kept)) // 256
    rng = np.random.default_rng(seed)
    failed = rng.choice(kept["chip_id"].to_numpy(), int(len(kept) * fail), replace=False)
    by_chunk = pd.Series(kept["chunk"].to_numpy(), index=kept["chip_id"]).loc[failed]
    results = [{"failed": json.dumps([[c, f"RasterioIOError: HTTP 503 on {c}", "transient"] for c in g.index])}
               for _, g in by_chunk.groupby(by_chunk)]
    results += [{"failed": "[]"}] * (kept["chunk"].nunique() - len(results))
    return kept, results


def quadratic_manifest(index, chunked, results):
    """The construction replaced in 2026-11 (one boolean scan of the manifest per failed chip)."""
    m = index[["point_id", "chip_id", "set", "lon", "lat", "region", "status", "reason", "failure",
               "item_id"]].copy()
    for r in results:
        for cid, why, kind in json.loads(r["failed"]):
            m.loc[m["chip_id"] == cid, ["status", "reason", "failure"]] = ["failed", why, kind]
    chunk_of = dict(zip(chunked["chip_id"], chunked["region"].astype(str) + "/" + chunked["chunk"].astype(str)))
    m["shard"] = m["chip_id"].map(chunk_of).where(m["status"] == "ok")
    return m


def main() -> None:
    from pw_ray.ingest.pipeline import build_manifest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[7_000, 70_000, 700_000])
    ap.add_argument("--fail", type=float, default=0.05, help="share of kept chips failing in the shard phase")
    ap.add_argument("--quadratic-up-to", type=int, default=70_000, help="largest size the old loop runs at")
    args = ap.parse_args()
    rows = []
    for n in args.sizes:
        index = synthetic_index(n)
        chunked, results = chunk_results(index, args.fail)
        t0 = time.process_time()
        m = build_manifest(index, chunked, results)
        linear = time.process_time() - t0
        quad = None
        if n <= args.quadratic_up_to:
            t0 = time.process_time()
            ref = quadratic_manifest(index, chunked, results)
            quad = time.process_time() - t0
            assert m.reset_index(drop=True).equals(ref.reset_index(drop=True))
        n_failed = int((m["status"] == "failed").sum())
        rows.append({"chips": n, "failed": n_failed, "linear_s": linear, "quadratic_s": quad})
        print(f"{n:>9,} chips, {n_failed:>7,} failed: build_manifest {linear:7.3f} CPU-s"
              + (f", old loop {quad:8.2f} CPU-s ({quad / linear:,.0f}×)" if quad else ""), flush=True)
    xs = np.log([r["chips"] for r in rows])
    slope = float(np.polyfit(xs, np.log([max(r["linear_s"], 1e-6) for r in rows]), 1)[0]) if len(rows) > 1 else None
    quad_rows = [r for r in rows if r["quadratic_s"]]
    quad_slope = (float(np.polyfit(np.log([r["chips"] for r in quad_rows]),
                                   np.log([r["quadratic_s"] for r in quad_rows]), 1)[0])
                  if len(quad_rows) > 1 else None)
    big = rows[-1]
    quad_big = None
    if quad_slope is not None:
        last = quad_rows[-1]
        quad_big = last["quadratic_s"] * (big["chips"] / last["chips"]) ** quad_slope
    print(f"slope (log time / log chips): build_manifest {slope:.2f}"
          + (f", old loop {quad_slope:.2f}; old loop at {big['chips']:,} chips ≈ {quad_big / 60:,.0f} min "
             f"(extrapolated)" if quad_slope is not None else ""))
    print(json.dumps({"bench": "manifest", "sizes": [r["chips"] for r in rows],
                      "linear_s": [round(r["linear_s"], 4) for r in rows],
                      "quadratic_s": [None if r["quadratic_s"] is None else round(r["quadratic_s"], 3) for r in rows],
                      "manifest_s_max": round(big["linear_s"], 3), "slope": slope, "quadratic_slope": quad_slope,
                      "quadratic_s_max_extrapolated": None if quad_big is None else round(quad_big, 1)}))


if __name__ == "__main__":
    main()
