"""Ingest of several sets: one after another vs all at once (each set's ``run_ingest`` in its own
thread of the driver, as ``pw_ray.experiment.ingest`` runs them), side by side in one run.

On one synthetic archive and one plan (``--sets`` pretraining sets and two tasks of ``--points``
points each), every round ingests all sets from scratch (``force``: scene search, index, every
chunk) twice, once each way, alternating which goes first. Reported per way: the median wall
clock and the median CPU-seconds of the driver and every process under it (the local Ray's
workers); ``ratio_wall`` and ``ratio_cpu`` are concurrent ÷ sequential (below 1: at once is
faster / cheaper).

    python bench/ingest_sets.py [--sets 3] [--points 60] [--rounds 3] [--cores 2]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proctree import cpu_between, snapshot  # noqa: E402



def _sequential(jobs):
    """``experiment.per_set`` one set after another (the way ingest ran before)."""
    results, errors = {}, {}
    for name, job in jobs.items():
        try:
            results[name] = job()
        except Exception as err:  # noqa: BLE001
            errors[name] = err
    return results, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sets", type=int, default=3, help="pretraining sets (plus two tasks)")
    ap.add_argument("--points", type=int, default=60, help="points per set and task")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()

    import ray

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from tests.conftest import TINY_CONFIG

    regions = ["eu", "af", "as", "na", "sa", "oc", "global"]
    tmp = tempfile.mkdtemp(prefix="pwray-bench-sets-")
    conf = dict(TINY_CONFIG, root=f"{tmp}/root",
                pretrain_sets=[{"name": f"s{i}", "region": regions[i % 7], "size": args.points, "seed": i}
                               for i in range(args.sets)],
                tasks=[{"name": "landcover", "kind": "synthetic-landcover", "size": args.points, "seed": 11},
                       {"name": "population", "kind": "synthetic-population", "size": args.points, "seed": 12}])
    cfg = parse_config(conf)
    ray.init(num_cpus=args.cores, include_dashboard=False, _temp_dir=f"{tmp}/ray", logging_level="ERROR",
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    src = E.source(cfg)
    with contextlib.redirect_stdout(io.StringIO()):
        E.plan(cfg, src=src)
        E.ingest(cfg, src=src)  # warm: Ray workers started, imports loaded
    concurrent = E.per_set
    runs: dict[str, list[tuple[float, float]]] = {"sequential": [], "concurrent": []}
    for r in range(args.rounds):
        order = ["sequential", "concurrent"] if r % 2 == 0 else ["concurrent", "sequential"]
        for way in order:
            E.per_set = _sequential if way == "sequential" else concurrent
            before, t0 = snapshot(), time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                E.ingest(cfg, force=True, src=src)
            wall, after = time.perf_counter() - t0, snapshot()
            cpu = sum(cpu_between(before, after, reaped=False).values())
            runs[way].append((wall, cpu))
            print(f"round {r} {way:>10s}: {wall:6.1f} s wall, {cpu:6.1f} CPU-s", flush=True)
    E.per_set = concurrent
    ray.shutdown()
    med = {w: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for w, v in runs.items()}
    print(json.dumps({
        "sets": args.sets + 2, "points_per_set": args.points, "rounds": args.rounds, "cores": args.cores,
        "sequential_wall_s": round(med["sequential"][0], 2), "concurrent_wall_s": round(med["concurrent"][0], 2),
        "sequential_cpu_s": round(med["sequential"][1], 2), "concurrent_cpu_s": round(med["concurrent"][1], 2),
        "ratio_wall": round(med["concurrent"][0] / med["sequential"][0], 3),
        "ratio_cpu": round(med["concurrent"][1] / med["sequential"][1], 3)}))


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
