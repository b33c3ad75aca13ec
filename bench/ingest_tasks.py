"""The shard phase on four executors, side by side: why ingest runs it on plain Ray tasks.

Builds a synthetic archive (by default 8 scenes per region of 1020 px with 1024 px COG tiles, so
that a set of ≥ 20 chunks per core has whole scenes in its chunks: a scene split over chunks has
its shared blocks decoded by each, which no executor can avoid), indexes one set, cuts it into
chunks (largest first, as ``run_ingest`` does) and runs the same chunk tasks
(:func:`pw_ray.ingest.pipeline.run_chunk_task`) in one run, one after the other:

* ``pipeline``: ``run_ingest``'s shard phase, right after its index phase — plain Ray tasks, a
  bounded number in flight (:func:`pw_ray.ingest.workpool.run_bounded`);
* ``one_process``: a loop in this process, no Ray — the reference for parallel efficiency;
* ``ray_data_tasks``: Ray Data ``map`` on a ``TaskPoolStrategy`` (what ``run_ingest`` did before);
* ``ray_data_actors``: Ray Data on an ``ActorPoolStrategy`` (``max_tasks_in_flight_per_actor`` 2);
* ``process_pool``: ``concurrent.futures.ProcessPoolExecutor`` with one worker per core, no
  scheduler between tasks — the ceiling.

Each task records its start, end and CPU seconds in its worker; every mode reports the idle time
between tasks, how busy the workers were (``occupancy``), its wall-clock parallel efficiency and
the load-robust CPU-based one (``bench/parallel.py`` says how it is computed).

    python bench/ingest_tasks.py [--points 6400] [--chunk-size 128] [--cores 2] [--archive-cache DIR]
    python bench/ingest_tasks.py --scenes-per-region 2 --scene-px 2040 --chunk-size 64   # scenes split

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

MODES = ("pipeline", "one_process", "ray_data_tasks", "ray_data_actors", "process_pool")


def compare_executors(root: str, name: str, pts, cfg, src, cores: int, modes=MODES, repeats: int = 1,
                      log=print) -> dict:
    """Index ``pts`` and run the shard phase of the same chunk tasks under each of ``modes``, side
    by side, ``repeats`` rounds; returns a row per mode (see ``bench/parallel.py``; the round with
    the shortest replayed phase, the others' efficiencies in ``rounds``) plus ``chips``, ``chunks``
    and ``scenes``. ``one_process`` is the reference and must be among the modes (its fastest
    round by CPU seconds per chip).

    The first ``run_ingest`` builds the index; its shard phase is the first ``pipeline`` round
    (the Ray workers are warm from the index tasks; later rounds rerun it with the index kept).
    Each round runs the modes in the order given, each writing to its own folder. Other load on
    a shared machine only ever slows a round down, so the best round is the least disturbed.
    """
    import ray

    from bench.parallel import CpuMeter, CpuSampler, background_cpu_per_s, efficiency, process_pool
    from pw_ray import storage
    from pw_ray.ingest import pipeline as P
    from pw_ray.ingest.workpool import TaskTime, _timed

    if "one_process" not in modes:
        raise ValueError("modes must include one_process: the efficiencies are relative to it")
    spec, adapter, lc = cfg.chips, src.adapter, src.landcover

    def pipeline_round():
        rate = background_cpu_per_s()
        shutil.rmtree(storage.join(root, "shards", name), ignore_errors=True)
        with CpuSampler(0.5) as sampler:
            s = P.run_ingest(root, name, pts, src.searcher, src.adapter, spec, lc)
        st = s.shard_tasks
        return (st["task_times"], st["start"], st["end"], s.ok, sampler.between(st["start"], st["end"]) - st["cpu_s"],
                rate)

    phases: dict[str, list] = {m: [] for m in modes}
    if "pipeline" in modes:
        phases["pipeline"].append(pipeline_round())
    else:
        P.run_ingest(root, name, pts, src.searcher, src.adapter, spec, lc)
    index = storage.read_table(storage.join(root, "index", f"{name}.parquet")).to_pandas()
    items_df = storage.read_table(storage.join(root, "index", f"{name}-items.parquet")).to_pandas()
    items_json = dict(zip(items_df["item_id"], items_df["items_json"]))
    tasks = P.chunk_tasks(P.assign_chunks(index, spec.chunk_size), items_json)
    chips = sum(t["chips"] for t in tasks)
    per_scene = index[index["status"] == "ok"].groupby("item_id").size()
    log(f"{chips} chips of {len(per_scene)} scenes ({per_scene.max()} at most) in {len(tasks)} chunks of at "
        f"most {spec.chunk_size} ({len(tasks) / cores:.1f} per core)")
    out: dict = {"chips": chips, "chunks": len(tasks), "scenes": int(len(per_scene)), "repeats": repeats}

    class Writer:
        def __init__(self, out_root: str):
            self.args = (out_root, name, adapter, spec, lc)

        def __call__(self, task: dict) -> dict:
            r, t = _timed(P.run_chunk_task, task, self.args)
            return {"n": r["n"], "t": tuple(t.__dict__.values())}

    def ray_data_task(task: dict, targs: tuple) -> dict:
        r, t = _timed(P.run_chunk_task, task, targs)
        return {"n": r["n"], "t": tuple(t.__dict__.values())}

    ones: list[tuple[float, float, int]] = []
    for k in range(repeats):
        for mode in modes:
            if mode == "pipeline":
                if k:
                    phases[mode].append(pipeline_round())
                continue
            out_root = os.path.join(root, "_modes", mode)
            shutil.rmtree(out_root, ignore_errors=True)
            targs = (out_root, name, adapter, spec, lc)
            if mode == "one_process":
                c0, w0 = time.process_time(), time.perf_counter()
                n = sum(P.run_chunk_task(t, *targs)["n"] for t in tasks)
                ones.append(((time.process_time() - c0) / n, (time.perf_counter() - w0) / n, n))
                log(f"{mode} round {k + 1}: {1000 * ones[-1][0]:.3f} CPU ms per chip")
                continue
            if mode == "process_pool":
                res, times, start, end, overhead = process_pool(P.run_chunk_task, tasks, targs, cores)
                phases[mode].append((times, start, end, sum(r["n"] for r in res), overhead, 0.0))
                continue
            rate = background_cpu_per_s()
            ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
            with CpuMeter() as m:
                start = time.time()
                if mode == "ray_data_tasks":
                    ds = ds.map(ray_data_task, fn_kwargs={"targs": targs},
                                compute=ray.data.TaskPoolStrategy(size=len(tasks)), num_cpus=1)
                else:
                    ds = ds.map(Writer, fn_constructor_kwargs={"out_root": out_root}, num_cpus=1,
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=cores,
                                                                   max_tasks_in_flight_per_actor=2))
                res = ds.take_all()
                end = time.time()
            times = [TaskTime(*r["t"]) for r in res]
            # Actors that ended took their CPU along: their overhead reads low, never high.
            phases[mode].append((times, start, end, sum(r["n"] for r in res), m.cpu_s - sum(t.cpu_s for t in times),
                                 rate))
    one_cpu, one_wall, n_one = min(ones)
    out["one_process"] = {"chips": n_one, "cpu_ms_per_chip": round(1000 * one_cpu, 3),
                          "wall_ms_per_chip": round(1000 * one_wall, 3),
                          "rounds_cpu_ms_per_chip": [round(1000 * c, 3) for c, _, _ in ones]}
    log("one_process", out["one_process"])
    for mode in modes:
        if not phases.get(mode):
            continue
        effs = []
        for times, start, end, n, overhead, rate in phases[mode]:
            eff = efficiency(n, cores, one_cpu, one_wall, times, start, end, overhead, rate)
            effs.append((eff.replay_s, eff, len(times), n, rate))
        _, eff, n_tasks, n, rate = min(effs, key=lambda e: e[0])
        out[mode] = {**eff.row(), "background_cpu_per_s": round(rate, 3),
                     "gap_ms_per_task": round(1000 * eff.idle_s / max(1, n_tasks), 1),
                     "task_cpu_ms_per_chip": round(1000 * eff.task_cpu_s / n, 3),
                     "rounds": [round(e[1].cpu_efficiency, 3) for e in effs]}
        log(mode, out[mode])
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=6400)
    ap.add_argument("--chunk-size", type=int, default=128)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--scene-px", type=int, default=1020)
    ap.add_argument("--block-px", type=int, default=1024)
    ap.add_argument("--scenes-per-region", type=int, default=8)
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of " + ", ".join(MODES))
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every mode; the best round of each counts")
    ap.add_argument("--archive-cache", default=None, help="keep the synthetic archive in this folder")
    args = ap.parse_args(argv)
    modes = [m for m in args.modes.split(",") if m]
    if unknown := set(modes) - set(MODES):
        ap.error(f"--modes: unknown {sorted(unknown)}; allowed: {', '.join(MODES)}")
    import ray

    from bench.ingest import bench_config, bench_root, clear_root, start_ray
    from pw_ray import experiment as E
    from pw_ray.config import PretrainSet
    from pw_ray.plan import plan_set

    tmp = tempfile.mkdtemp(prefix="pwray-bench-tasks-")
    root = bench_root(tmp, args.archive_cache)
    cfg = bench_config(root, args.points, chunk_size=args.chunk_size, scenes_per_region=args.scenes_per_region,
                       scene_px=args.scene_px, block_px=args.block_px)
    src = E.source(cfg)
    start_ray(args.cores, tmp)
    ray.data.range(args.cores * 2).map(lambda r: r, num_cpus=1).take_all()  # workers up
    try:
        pts = plan_set(PretrainSet(name="b", region="global", size=args.points, seed=4), src.coverage,
                       biome_path=src.biome_path)
        out = compare_executors(root, "b", pts, cfg, src, args.cores, modes, args.repeats,
                                log=lambda *a: print(*a, flush=True))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.archive_cache:
            clear_root(root)
    print(json.dumps({"chunk_size": args.chunk_size, "cores": args.cores, "load_avg_1m": round(os.getloadavg()[0], 1),
                      **out}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
