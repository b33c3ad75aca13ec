"""Ingest benchmark: the pipeline vs one process, a naive per-chip loop and the COG decode limit;
its parallel efficiency; its bytes on the wire.

On one synthetic archive built in a temp dir (or kept in ``--archive-cache``), by default laid
out like Sentinel-2 L2A on a small scale (2 scenes per region of 2040 px at 10 m, 1024 px COG
tiles as in the public catalogs' COGs; 64 chips per scene at the 4x set, most 10 m blocks shared
by a few chips), or dense (``--scenes-per-region 4 --scene-px 480 --block-px 256 --points 1800``:
~20 chips share each block, so decoding is a small part of a chip's cost), side by side in one run:

* **pipeline**: ``run_ingest`` after Ray start-up. The search/index phase (scene search, SCL
  screening) is timed separately; ``chips_per_s`` is the shard phase (read grouped by scene,
  write Parquet + WebDataset), measured by rerunning with the index kept and the shards removed;
  ``chips_per_s_replayed`` the same phase replayed at idle-machine speed (``bench/parallel.py``).
* **one process**: the same shard phase without Ray — ``write_chunk`` over every chunk in a
  loop in this process — so Ray's share of the pipeline's time is visible.
* **naive**: for each chip, for each raster it needs (10 bands, SCL, the land-cover layer),
  ``rasterio.open`` it and read the chip's window (resampled to 10 m) on its own.
* **decode limit**: one process, a tight loop that opens each needed raster once and reads each
  COG block the chips touch exactly once (``ds.read(window=block_window)``), nothing else. The
  land-cover layer counts: every chip record carries its class fractions.
* **by stage**: the shard tasks time themselves (``read``: decode, resample, harmonise;
  ``landcover``; ``encode``: Parquet + tar bytes; ``write``), printed per chip for the one-process
  run and summed over tasks for the pipeline, so the work beyond decoding is visible.
* **parallel efficiency** (``parallel_efficiency``): on a second archive whose set has ≥ 20
  chunks per core with its scenes whole in chunks (8 scenes per region of 1020 px, 1024 px
  tiles, ``--eff-points`` 12800, ``--eff-chunk-size`` 256 as in production), chips/s on ``--cores`` ÷ (cores ×
  one-process chips/s), computed from CPU seconds and the tasks' own start and end times so that
  other load on the machine does not decide it (``bench/parallel.py``); a plain process pool
  over the same chunks is measured the same way as the ceiling; ``_wall``: the raw wall-clock
  figure. ``--eff-repeats`` rounds (default 2) of pipeline, one process and pool, interleaved;
  each counts its least disturbed round, and every round's figure is listed.
* **bytes on the wire** (``bytes_vs_needed``): the 4x set's shard phase once more, its COGs
  served by nginx on loopback: bytes served ÷ bytes of the COG tiles the chips need
  (``bench/cog_bytes.py``).

Throughput, naive loop and decode limit are compared on the 4× set (``chips``), where the fixed
start-up of a Ray job is a small part of the time, as in production; the naive loop reads an
even sample of its chips (``--naive-chips``: its cost per chip does not depend on the set).
Ratios: ``ratio_vs_naive`` = pipeline chips/s ÷ naive chips/s (wall clock, all cores; ``_cpu``:
replayed pipeline ÷ naive chips per CPU second); ``ratio_vs_decode_limit`` = (pipeline chips/s ÷
cores used) ÷ decode-limit chips/s (per core); ``one_process_vs_decode_limit`` and
``one_process_vs_naive`` the one-process loop against both (``_cpu``: per CPU second, which other
load does not change). ``peak_rss_mb``: peak of the summed RSS of the driver and every process
under it (raylet, Ray workers), sampled every 0.1 s during the pipeline run, at 1× and 4× the
set size.

    python bench/ingest.py [--points 240] [--cores 2] [--size-px 96] [--chunk-size 256] [--archive-cache DIR]
    python bench/ingest.py --points 1800 --scenes-per-region 4 --scene-px 480 --block-px 256   # dense

The last line printed is one JSON object; ``parquet_bytes_per_chip`` and ``wds_bytes_per_chip`` are
what the 4x set's shards hold per chip (``pw-ray estimate --calibration`` reads them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proctree import PeakRss  # noqa: E402

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------------- memory
# ----------------------------------------------------------------------------- baselines
def _ok_chips(index):
    return index[index["status"] == "ok"].sort_values(["item_id", "row_off", "col_off"])


def _assets(item, adapter, spec, landcover_hrefs):
    """(href, nearest?) of every raster a chip of ``item`` needs: its bands, SCL, its land cover."""
    from pw_ray import bands as B

    out = [(adapter.sign(adapter.href(item, band)), False) for band in spec.bands]
    out.append((adapter.sign(adapter.href(item, B.SCL)), True))
    if item["id"] in landcover_hrefs:
        out.append((landcover_hrefs[item["id"]], True))
    return out


def naive_loop(index, items, adapter, spec, landcover_hrefs) -> tuple[float, float]:
    """(wall, CPU) seconds to read every kept chip one rasterio.open per chip per raster (bands,
    SCL, land cover)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from pw_ray.ingest import chips as C

    t0, c0 = time.perf_counter(), time.process_time()
    with C.gdal_env():
        for r in _ok_chips(index).itertuples(index=False):
            for href, nearest in _assets(items[r.item_id], adapter, spec, landcover_hrefs):
                with rasterio.open(href) as ds:
                    f = abs(ds.transform.a) / spec.resolution_m
                    w = Window(r.col_off / f, r.row_off / f, spec.size_px / f, spec.size_px / f)
                    rs = Resampling.bilinear if f != 1 and not nearest else Resampling.nearest
                    ds.read(1, window=w, out_shape=(spec.size_px, spec.size_px), resampling=rs)
    return time.perf_counter() - t0, time.process_time() - c0


def decode_limit(index, items, adapter, spec, landcover_hrefs) -> tuple[float, float, int]:
    """(wall, CPU) seconds to decode, once each, every COG block the kept chips touch (bands, SCL
    and the land-cover layer: a chip's record needs all three); and the block count."""
    import rasterio
    from rasterio.windows import Window

    from pw_ray.ingest import chips as C

    ok = _ok_chips(index)
    n_blocks = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    with C.gdal_env(GDAL_CACHEMAX=16 * 2**20):
        for item_id, grp in ok.groupby("item_id", sort=True):
            for href, _ in _assets(items[item_id], adapter, spec, landcover_hrefs):
                with rasterio.open(href) as ds:
                    f = abs(ds.transform.a) / spec.resolution_m
                    bh, bw = ds.block_shapes[0]
                    need = set()
                    for r, c in zip(grp["row_off"], grp["col_off"]):
                        r0, c0 = int(r / f), int(c / f)
                        r1 = min(ds.height, int(np.ceil((r + spec.size_px) / f))) - 1
                        c1 = min(ds.width, int(np.ceil((c + spec.size_px) / f))) - 1
                        need.update((i, j) for i in range(r0 // bh, r1 // bh + 1)
                                    for j in range(c0 // bw, c1 // bw + 1))
                    for i, j in sorted(need):
                        w = Window(j * bw, i * bh, min(bw, ds.width - j * bw), min(bh, ds.height - i * bh))
                        ds.read(1, window=w)
                    n_blocks += len(need)
    return time.perf_counter() - t0, time.process_time() - cpu0, n_blocks


def one_process(root, name, index, items, src, spec) -> tuple[float, float, dict]:
    """(wall, CPU) seconds for the shard phase in this process, no Ray (``write_chunk`` for every
    chunk), and those seconds by stage."""
    from pw_ray import storage
    from pw_ray.ingest.pipeline import assign_chunks, stage_seconds, write_chunk

    out = storage.join(root, "one-process")
    chunked = assign_chunks(index, spec.chunk_size)
    results = []
    t0, c0 = time.perf_counter(), time.process_time()
    for (region, k), rows in chunked.groupby(["region", "chunk"], sort=True):
        results.append(write_chunk(rows, items, out, name, region, int(k), src.adapter, spec, src.landcover))
    return time.perf_counter() - t0, time.process_time() - c0, stage_seconds(results)


# ----------------------------------------------------------------------------- pipeline
def run_pipeline(root: str, name: str, pts, src, spec, cores: int):
    """(index seconds, shard seconds, peak RSS MB, summary of the shard run, replayed shard-phase
    seconds: ``bench/parallel.py``) of one set through run_ingest."""
    from bench.parallel import CpuSampler, background_cpu_per_s, replay_seconds
    from pw_ray import storage
    from pw_ray.ingest.pipeline import run_ingest

    with PeakRss() as mem:
        t0 = time.perf_counter()
        first = run_ingest(root, name, pts, src.searcher, src.adapter, spec, src.landcover)
        # The index phase: the first run less its shard tasks (a second run's time is no measure
        # of the first's shard phase on a machine whose load changes).
        t_index = time.perf_counter() - t0 - first.shard_tasks.get("wall_s", 0.0)
        # Shard phase alone: keep the index, drop shards + manifest, run again.
        shutil.rmtree(storage.join(root, "shards", name), ignore_errors=True)
        os.remove(storage.join(root, "manifest", f"{name}.parquet"))
        rate = background_cpu_per_s()
        with CpuSampler(0.5) as cpu:
            t0 = time.perf_counter()
            s = run_ingest(root, name, pts, src.searcher, src.adapter, spec, src.landcover)
            t_shards = time.perf_counter() - t0
    st = s.shard_tasks
    replay, _ = replay_seconds(st["task_times"], cores, st["start"], st["end"],
                               cpu.between(st["start"], st["end"]) - st["cpu_s"], rate)
    return t_index, t_shards, mem.peak, s, replay


def bench_root(tmp: str, archive_cache: str | None = None) -> str:
    """The experiment root of a bench run: ``<tmp>/root``, or with ``archive_cache`` the folder
    ``<archive_cache>/root`` emptied of everything but its ``archive/`` (the synthetic archive is
    reused when its spec is unchanged: its marker records its folder, which must stay the same)."""
    if not archive_cache:
        return os.path.join(tmp, "root")
    root = os.path.join(os.path.abspath(archive_cache), "root")
    clear_root(root)
    return root


def clear_root(root: str) -> None:
    """Remove everything under ``root`` except the synthetic archive."""
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(root):
        if name != "archive":
            path = os.path.join(root, name)
            shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)


def bench_config(root: str, points: int, *, scenes_per_region: int = 4, scene_px: int = 480,
                 block_px: int = 256, size_px: int = 96, chunk_size: int = 256, webdataset: bool = True):
    """The benchmarks' experiment config: one global set of ``points`` on a synthetic archive."""
    from pw_ray.config import parse_config

    return parse_config({
        "name": "bench", "root": root, "tasks": [],
        "pretrain_sets": [{"name": "b1", "region": "global", "size": points, "seed": 1}],
        "stac": {"kind": "synthetic", "max_cloud_cover": 60,
                 "synthetic": {"seed": 0, "scenes_per_region": scenes_per_region, "scene_px": scene_px,
                               "block_px": block_px, "cloudy_fraction": 0.3}},
        "chips": {"size_px": size_px, "max_cloud_fraction": 0.3, "max_nodata_fraction": 0.1,
                  "chunk_size": chunk_size, "webdataset": webdataset},
    })


def start_ray(cores: int, tmp: str) -> None:
    """A local Ray with ``cores`` CPUs, its files under ``tmp``, quiet (no dashboard, no progress bars)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=os.path.join(tmp, "ray"),
             logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset start/finish lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=240, help="points in the 1x set")
    ap.add_argument("--cores", type=int, default=2, help="Ray CPUs (cores used by the pipeline)")
    ap.add_argument("--size-px", type=int, default=96)
    ap.add_argument("--scene-px", type=int, default=2040)
    ap.add_argument("--block-px", type=int, default=1024, help="COG tile side (real S2 L2A: 1024)")
    ap.add_argument("--scenes-per-region", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=256, help="chips per shard (chips.chunk_size; "
                                                                  "one Ray task each)")
    ap.add_argument("--naive-chips", type=int, default=300, help="chips the naive loop reads (a sample)")
    ap.add_argument("--archive-cache", default=None, help="keep the synthetic archive in this folder")
    ap.add_argument("--eff-points", type=int, default=12800, help="points of the parallel-efficiency set")
    ap.add_argument("--eff-chunk-size", type=int, default=256, help="chips per chunk of the efficiency set "
                                                                      "(production's default chunk size)")
    ap.add_argument("--eff-scenes-per-region", type=int, default=8)
    ap.add_argument("--eff-scene-px", type=int, default=1020)
    ap.add_argument("--eff-repeats", type=int, default=2, help="rounds of the efficiency set; the best counts")
    ap.add_argument("--eff-archive-cache", default=None, help="keep the efficiency set's archive in this folder")
    ap.add_argument("--no-efficiency", action="store_true", help="skip the parallel-efficiency set")
    ap.add_argument("--no-bytes", action="store_true", help="skip the bytes-on-the-wire measurement (nginx)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)

    import ray

    from bench import cog_bytes
    from bench.ingest_tasks import compare_executors
    from pw_ray import experiment as E
    from pw_ray import storage, synthetic
    from pw_ray.config import PretrainSet
    from pw_ray.ingest import pipeline as P
    from pw_ray.plan import plan_set

    tmp = tempfile.mkdtemp(prefix="pwray-bench-ingest-")
    root = bench_root(tmp, args.archive_cache)
    cfg = bench_config(root, args.points, scenes_per_region=args.scenes_per_region, scene_px=args.scene_px,
                       block_px=args.block_px, size_px=args.size_px, chunk_size=args.chunk_size)
    t0 = time.perf_counter()
    src = E.source(cfg)
    print(f"archive built in {time.perf_counter() - t0:.1f}s under {tmp}", flush=True)
    start_ray(args.cores, tmp)
    # Warm-up: worker start-up is not ingest time.
    ray.data.range(args.cores * 2).map(lambda r: r, num_cpus=1).take_all()

    res, eff, net = {}, None, None
    try:
        for mult in (1, 4):
            name = f"b{mult}"
            pts = plan_set(PretrainSet(name=name, region="global", size=args.points * mult, seed=mult),
                           src.coverage, biome_path=src.biome_path)
            t_index, t_shards, peak, summary, replay = run_pipeline(root, name, pts, src, cfg.chips, args.cores)
            ok = summary.ok
            res[mult] = dict(points=len(pts), chips=ok, index_s=t_index, shards_s=t_shards, peak_rss_mb=peak,
                             stage_s=summary.stage_s, tasks=summary.chunks_written, replay_s=replay)
            print(f"{mult}x: {len(pts)} points, {ok} chips; index {t_index:.1f}s, shards {t_shards:.1f}s "
                  f"(replayed {replay:.1f}s), peak RSS {peak:.0f} MB", flush=True)
        # Compared on the larger set: a Ray job's fixed start-up is then a small part of its time,
        # as on a production set of 10^5-10^6 chips.
        index = storage.read_table(storage.join(root, "index", "b4.parquet")).to_pandas()
        items_df = storage.read_table(storage.join(root, "index", "b4-items.parquet")).to_pandas()
        items = {r.item_id: json.loads(r.items_json) for r in items_df.itertuples(index=False)}
        n = res[4]["chips"]
        # What the shards of the 4x set hold per chip (pw-ray estimate --calibration scales it by pixels).
        from pw_ray.ingest import shards as S

        shard_bytes = {kind: sum(os.path.getsize(storage.local_path(u)) for u in files)
                       for kind, files in (("parquet", S.shard_files(root, "b4")), ("wds", S.wds_files(root, "b4")))}
        t_one, c_one, one_stages = one_process(root, "b4", index, items, src, cfg.chips)
        # The synthetic land cover: one raster per scene, on the scene's grid.
        archive = synthetic.load_archive(storage.join(root, "archive"))
        lc_items = synthetic.load_landcover_items(archive)
        lc_hrefs = {it["properties"]["synthetic:scene"]: it["assets"]["map"]["href"] for it in lc_items}
        # The naive loop's cost per chip does not depend on the set (nothing is shared between
        # chips), so it runs on an even sample of the chips.
        ok = _ok_chips(index)
        sample = ok.iloc[np.linspace(0, len(ok) - 1, min(len(ok), args.naive_chips)).astype(int)]
        t_naive, c_naive = naive_loop(sample, items, src.adapter, cfg.chips, lc_hrefs)
        t_dec, c_dec, n_blocks = decode_limit(index, items, src.adapter, cfg.chips, lc_hrefs)
        if not args.no_bytes:
            try:
                net = cog_bytes.measure(
                    index, items, src, cfg.chips,
                    lambda items_json: P.chunk_tasks(P.assign_chunks(index, cfg.chips.chunk_size), items_json),
                    Path(archive.root), os.path.join(tmp, "over-http"), "b4", archive.landcover_items_path)
                print(f"bytes on the wire (4x, nginx): {net}", flush=True)
            except Exception as err:  # no nginx here: say so, measure the rest
                net = {"error": f"{type(err).__name__}: {err}"}
                print(f"bytes on the wire not measured: {net['error']}", flush=True)
        if not args.no_efficiency:
            root_e = bench_root(os.path.join(tmp, "eff"), args.eff_archive_cache)
            cfg_e = bench_config(root_e, args.eff_points, scenes_per_region=args.eff_scenes_per_region,
                                 scene_px=args.eff_scene_px, block_px=args.block_px, size_px=args.size_px,
                                 chunk_size=args.eff_chunk_size)
            src_e = E.source(cfg_e)
            pts_e = plan_set(PretrainSet(name="e", region="global", size=args.eff_points, seed=4), src_e.coverage,
                             biome_path=src_e.biome_path)
            eff = compare_executors(root_e, "e", pts_e, cfg_e, src_e, args.cores,
                                    ("pipeline", "one_process", "process_pool"), args.eff_repeats,
                                    log=lambda *a: print(*a, flush=True))
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
            for cache in (args.archive_cache, args.eff_archive_cache):
                if cache:
                    clear_root(os.path.join(os.path.abspath(cache), "root"))

    pipe1 = res[1]["chips"] / res[1]["shards_s"]
    pipe = n / res[4]["shards_s"]
    pipe_replayed = n / res[4]["replay_s"]
    naive = len(sample) / t_naive
    one = n / t_one
    dec = n / t_dec
    rows = [
        ("pipeline shard phase (1x)", pipe1, f"{res[1]['chips']} chips, {args.cores} cores, "
                                             f"{pipe1 / args.cores:.1f}/s per core"),
        ("pipeline shard phase (4x)", pipe, f"{n} chips, {args.cores} cores, {pipe / args.cores:.1f}/s per core"),
        ("  replayed at idle speed", pipe_replayed, "CPU seconds + measured gaps (bench/parallel.py)"),
        ("pipeline index phase (4x)", n / max(res[4]["index_s"], 1e-9), "search + SCL screening, separate"),
        ("one process, no Ray", one, f"1 core, write_chunk in a loop; {n / c_one:.1f} per CPU s"),
        ("naive per-chip loop", naive, f"1 core, open per chip per raster, {len(sample)} chips; "
                                       f"{len(sample) / c_naive:.1f} per CPU s"),
        ("decode limit", dec, f"1 core, {n_blocks} blocks decoded once each; {n / c_dec:.1f} per CPU s"),
    ]
    print(f"\n{'what':<28} {'chips/s':>9}  notes")
    for what, v, note in rows:
        print(f"{what:<28} {v:9.1f}  {note}")
    # Where a shard task's time goes: only "read" holds the decoding the decode limit measures.
    stage_ms = {k: round(1000 * v / n, 3) for k, v in one_stages.items()}
    print(f"\none process, ms per chip by stage: {stage_ms}; decode limit {1000 * t_dec / n:.2f} ms per chip")
    print(f"pipeline (4x), task seconds by stage: { {k: round(v, 2) for k, v in res[4]['stage_s'].items()} }, "
          f"{res[4]['tasks']} tasks")
    out = {
        "chips": n, "cores": args.cores, "size_px": args.size_px, "bands": len(cfg.chips.bands),
        "chips_per_s": round(pipe, 2), "chips_per_s_1x": round(pipe1, 2),
        "chips_per_s_replayed": round(pipe_replayed, 2),
        "index_chips_per_s": round(n / max(res[4]["index_s"], 1e-9), 2),
        "one_process_chips_per_s": round(one, 2), "one_process_chips_per_cpu_s": round(n / c_one, 2),
        "naive_chips_per_s": round(naive, 2), "naive_chips_per_cpu_s": round(len(sample) / c_naive, 2),
        "decode_limit_chips_per_s": round(dec, 2), "decode_limit_chips_per_cpu_s": round(n / c_dec, 2),
        "ratio_vs_naive": round(pipe / naive, 3),
        "ratio_vs_naive_cpu": round(pipe_replayed / (len(sample) / c_naive), 3),
        "ratio_vs_decode_limit": round(pipe / args.cores / dec, 3),
        "one_process_vs_decode_limit": round(one / dec, 3),
        "one_process_vs_decode_limit_cpu": round(c_dec / c_one, 3),
        "one_process_vs_naive": round(one / naive, 3),
        "one_process_vs_naive_cpu": round((n / c_one) / (len(sample) / c_naive), 3),
        "one_process_ms_per_chip": stage_ms, "decode_limit_ms_per_chip": round(1000 * t_dec / n, 3),
        "chunk_size": args.chunk_size,
        "parquet_bytes_per_chip": round(shard_bytes["parquet"] / max(n, 1)),
        "wds_bytes_per_chip": round(shard_bytes["wds"] / max(n, 1)),
        "block_px": args.block_px, "scene_px": args.scene_px,
        "peak_rss_mb": {"1x": round(res[1]["peak_rss_mb"]), "4x": round(res[4]["peak_rss_mb"])},
        "load_avg_1m": round(os.getloadavg()[0], 1),
    }
    if eff is not None:
        pe, pool = eff["pipeline"], eff["process_pool"]
        out.update({
            "parallel_efficiency": pe["cpu_efficiency"], "parallel_efficiency_wall": pe["wall_efficiency"],
            "parallel_efficiency_process_pool": pool["cpu_efficiency"],
            "efficiency_set": {"chips": eff["chips"], "chunks": eff["chunks"], "scenes": eff["scenes"],
                               "chunk_size": args.eff_chunk_size, "scene_px": args.eff_scene_px,
                               "repeats": eff["repeats"], "one_process": eff["one_process"],
                               "pipeline": pe, "process_pool": pool},
        })
    if net is not None:
        out["bytes_vs_needed"] = net.get("bytes_vs_needed")
        out["bytes"] = net
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
