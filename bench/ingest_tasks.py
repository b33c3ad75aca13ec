"""Where the shard phase's time goes on Ray: busy time and gaps per worker, task pool vs actor pool.

Builds the synthetic archive of ``bench/ingest.py`` (same layout flags and defaults), indexes one set, then runs the shard
phase (``write_chunk`` per chunk) twice, side by side in one run: as Ray Data tasks
(``TaskPoolStrategy``, what ``run_ingest`` does) and on an actor pool
(``ActorPoolStrategy``, ``max_tasks_in_flight_per_actor`` 2). Each task records its start, end and
CPU time in its worker, so the idle time between tasks on a worker is measured, not inferred.

    python bench/ingest_tasks.py [--points 960] [--chunk-size 256] [--cores 2]
    python bench/ingest_tasks.py --points 2400 --chunk-size 64 --scenes-per-region 4 --scene-px 480 --block-px 256

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _summary(res: list[dict], t0: float, t1: float) -> dict:
    by_pid: dict[int, list[dict]] = {}
    for r in res:
        by_pid.setdefault(r["pid"], []).append(r)
    busy = gaps = 0.0
    for rows in by_pid.values():
        rows.sort(key=lambda r: r["t0"])
        busy += sum(r["t1"] - r["t0"] for r in rows)
        gaps += sum(b["t0"] - a["t1"] for a, b in zip(rows, rows[1:]))
    return {"tasks": len(res), "workers": len(by_pid), "wall_s": round(t1 - t0, 2),
            "first_start_s": round(min(r["t0"] for r in res) - t0, 2),
            "busy_s": round(busy, 2), "gaps_s": round(gaps, 2),
            "task_cpu_s": round(sum(r["cpu"] for r in res), 2),
            "chips_per_s": round(sum(r["n"] for r in res) / (t1 - t0), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=960)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--scene-px", type=int, default=2040)
    ap.add_argument("--block-px", type=int, default=1024)
    ap.add_argument("--scenes-per-region", type=int, default=2)
    args = ap.parse_args(argv)
    import ray

    from bench.ingest import bench_config, start_ray
    from pw_ray import experiment as E
    from pw_ray import storage
    from pw_ray.config import PretrainSet
    from pw_ray.ingest import pipeline as P
    from pw_ray.plan import plan_set

    tmp = tempfile.mkdtemp(prefix="pwray-bench-tasks-")
    root = os.path.join(tmp, "root")
    cfg = bench_config(root, args.points, chunk_size=args.chunk_size, scenes_per_region=args.scenes_per_region,
                       scene_px=args.scene_px, block_px=args.block_px)
    src = E.source(cfg)
    start_ray(args.cores, tmp)
    out = {}
    try:
        pts = plan_set(PretrainSet(name="b", region="global", size=args.points, seed=4), src.coverage,
                       biome_path=src.biome_path)
        P.run_ingest(root, "b", pts, src.searcher, src.adapter, cfg.chips, src.landcover)  # index + warm workers
        index = storage.read_table(storage.join(root, "index", "b.parquet")).to_pandas()
        items_df = storage.read_table(storage.join(root, "index", "b-items.parquet")).to_pandas()
        items_json = dict(zip(items_df["item_id"], items_df["items_json"]))
        tasks = P.chunk_tasks(P.assign_chunks(index, cfg.chips.chunk_size), items_json)
        spec, adapter, lc = cfg.chips, src.adapter, src.landcover

        def do(task: dict, out_root: str) -> dict:
            t0, c0 = time.time(), time.process_time()
            r = P.run_chunk_task(task, out_root, "b", adapter, spec, lc)
            return {"n": r["n"], "t0": t0, "t1": time.time(), "cpu": time.process_time() - c0, "pid": os.getpid()}

        class Writer:
            def __init__(self, out_root: str):
                self.out_root = out_root

            def __call__(self, task: dict) -> dict:
                return do(task, self.out_root)

        for mode in ("task_pool", "actor_pool"):
            out_root = os.path.join(tmp, mode)
            ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
            t0 = time.time()
            if mode == "task_pool":
                ds = ds.map(lambda t, o=out_root: do(t, o), compute=ray.data.TaskPoolStrategy(size=len(tasks)),
                            num_cpus=1)
            else:
                ds = ds.map(Writer, fn_constructor_kwargs={"out_root": out_root}, num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(min_size=1, max_size=args.cores,
                                                               max_tasks_in_flight_per_actor=2))
            res = ds.take_all()
            out[mode] = _summary(res, t0, time.time())
            print(mode, out[mode], flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps({"chunk_size": args.chunk_size, "cores": args.cores, **out,
                      "gap_share_task_pool": round(out["task_pool"]["gaps_s"] / max(
                          out["task_pool"]["busy_s"] + out["task_pool"]["gaps_s"], 1e-9), 3)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
