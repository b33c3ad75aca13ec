"""Time per evaluation cell: kNN and linear probe on cached embeddings vs recomputing them per cell.

    python bench/evaluate.py                 # builds a small demo-archive run in a temp folder
    python bench/evaluate.py --root DIR      # reuses a finished run (e.g. `pw-ray demo --out DIR`)

Without ``--root`` it takes the demo config (``pw_ray/data/demo.yaml``: the embedded synthetic
archive, its two tasks of 420 chips at 48 px, the tiny SatMAE), keeps the first ``--sets``
pretraining sets, and runs plan, ingest and pretrain into ``--out`` (a temp folder by default;
an existing one is resumed). Then, for every (set incl. ``zero``, task, task region, method)
cell that is not skipped, it evaluates the cell twice with the same code the Tune trials run
(:func:`pw_ray.evaluate.grid.evaluate_cell`, Ray-free, one after another):

* **cached** — the embeddings were computed once per (checkpoint, task) and are read back;
* **recompute** — ``evaluation.cache_embeddings: false``: the cell loads the encoder, reads the
  task's chips and embeds them itself, as a grid without the cache would.

Both produce the same scores (checked). The last line is one JSON object: per-method seconds
per cell for both modes, their ratios, the one-off embedding cost and ``cached_vs_recompute``
(recompute time / cached time over all the cells).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

log = logging.getLogger("pw_ray.bench")


def build_run(out: str, n_sets: int):
    """Plan, ingest and pretrain the first ``n_sets`` demo sets under ``out``; return the config."""
    from importlib.resources import files as pkg_files

    import yaml

    from pw_ray import experiment as E
    from pw_ray import storage
    from pw_ray.config import dump_config, parse_config

    demo = yaml.safe_load((pkg_files("pw_ray") / "data" / "demo.yaml").read_text())
    demo["pretrain_sets"] = demo["pretrain_sets"][:n_sets]
    cfg = parse_config(demo, {"root": out})
    storage.makedirs(cfg.root)
    storage.write_text(storage.join(cfg.root, "config.yaml"), dump_config(cfg))  # --root can reuse it
    t0 = time.perf_counter()
    src = None if E.stage_done(cfg, "plan") and E.stage_done(cfg, "ingest") else E.source(cfg)
    E.plan(cfg, src=src)
    E.ingest(cfg, src=src)
    E.pretrain(cfg)
    log.info("bench: run ready under %s in %.0fs", out, time.perf_counter() - t0)
    return cfg


def load_run(root: str):
    import yaml

    from pw_ray import storage
    from pw_ray.config import parse_config

    return parse_config(yaml.safe_load(storage.read_text(storage.join(root, "config.yaml"))), {"root": root})


def bench(cfg, repeats: int) -> dict:
    import torch

    from pw_ray.evaluate import embeddings as EMB
    from pw_ray.evaluate import grid as G
    from pw_ray.evaluate import tasks as T

    ev = cfg.evaluation.model_dump()
    sets = [s.name for s in cfg.pretrain_sets] + (["zero"] if cfg.evaluation.include_zero else [])
    embed_s = []
    for s in sets:
        for t in cfg.tasks:
            if EMB.cached_digest(cfg.root, s, t.name) is None:
                t0 = time.perf_counter()
                EMB.compute_embeddings(cfg.root, s, t.name)
                embed_s.append(time.perf_counter() - t0)
    cells = [c for c in G.grid_cells(cfg) if c["method"] in ("knn", "linear") and c["seed"] == cfg.evaluation.seeds[0]]
    times = {(m, mode): [] for m in ("knn", "linear") for mode in ("cached", "recompute")}
    n_cells = {"knn": 0, "linear": 0}
    for c in cells:
        first = G.evaluate_cell(cfg.root, c, ev)
        if first["status"] != "ok":
            continue
        n_cells[c["method"]] += 1
        for mode, cfg_ev in (("cached", ev), ("recompute", dict(ev, cache_embeddings=False))):
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                row = G.evaluate_cell(cfg.root, c, cfg_ev)
                best = min(best, time.perf_counter() - t0)
            if abs(row["score"] - first["score"]) > 1e-6:
                raise AssertionError(f"{G.cell_id(c)}: {mode} score {row['score']} != {first['score']}")
            times[(c["method"], mode)].append(best)
        log.info("bench: %s cached %.3fs, recompute %.3fs", G.cell_id(c), times[(c["method"], "cached")][-1],
                 times[(c["method"], "recompute")][-1])
    out = {"cells": n_cells}
    for m in ("knn", "linear"):
        cached, recompute = times[(m, "cached")], times[(m, "recompute")]
        out[f"{m}_cached_s_per_cell"] = round(statistics.mean(cached), 4)
        out[f"{m}_recompute_s_per_cell"] = round(statistics.mean(recompute), 4)
        out[f"{m}_speedup"] = round(sum(recompute) / sum(cached), 1)
    all_cached = sum(sum(times[(m, "cached")]) for m in ("knn", "linear"))
    all_recompute = sum(sum(times[(m, "recompute")]) for m in ("knn", "linear"))
    out["cached_vs_recompute"] = round(all_recompute / all_cached, 1)
    if embed_s:
        out["embed_once_s_per_checkpoint_task"] = round(statistics.mean(embed_s), 3)
    out.update(
        chips_per_task={t.name: len(T.read_task(cfg.root, t.name)) for t in cfg.tasks}, size_px=cfg.chips.size_px,
        model=cfg.model.preset, sets=sets, task_regions=list(cfg.evaluation.task_regions),
        device="cuda" if torch.cuda.is_available() else "cpu", torch_threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(), timing=f"best of {repeats}, Ray-free, sequential",
    )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", help="a finished run to reuse (its config.yaml is read)")
    ap.add_argument("--out", help="where to build the run when --root is not given (default: a temp folder)")
    ap.add_argument("--sets", type=int, default=1, help="demo pretraining sets to build (default 1)")
    ap.add_argument("--bench-sets", type=int, default=1,
                    help="pretraining sets whose cells are timed (the first N, plus zero; default 1)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per cell and mode; the best counts")
    args = ap.parse_args(argv)

    from pw_ray.runtime import setup_logging

    setup_logging("INFO")
    if args.root:
        cfg = load_run(args.root)
    else:
        import ray

        out = args.out or tempfile.mkdtemp(prefix="pwray-bench-eval-")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        # A private Ray (own temp folder): never joins another Ray on the machine.
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 _temp_dir=tempfile.mkdtemp(prefix="pwrb", dir="/tmp"))
        ray.data.DataContext.get_current().enable_progress_bars = False
        try:
            cfg = build_run(out, args.sets)
        finally:
            ray.shutdown()
    result = bench(cfg.model_copy(update={"pretrain_sets": cfg.pretrain_sets[:args.bench_sets]}), args.repeats)
    for m in ("knn", "linear"):
        print(f"{m:>6}: {result[f'{m}_cached_s_per_cell'] * 1000:8.1f} ms/cell cached, "
              f"{result[f'{m}_recompute_s_per_cell'] * 1000:8.1f} ms/cell recomputing embeddings "
              f"(×{result[f'{m}_speedup']}, {result['cells'][m]} cells)")
    result["root"] = cfg.root
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
