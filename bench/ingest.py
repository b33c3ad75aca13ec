"""Ingest benchmark: the Ray Data pipeline vs a naive per-chip loop vs the COG decode limit.

On one synthetic archive built in a temp dir, by default laid out like Sentinel-2 L2A on a
small scale (2 scenes per region of 2040 px at 10 m, 1024 px COG tiles as in the public
catalogs' COGs; 80 chips per scene at the 4x set, most 10 m blocks shared by a few chips), or
dense (``--scenes-per-region 4 --scene-px 480 --block-px 256 --points 1800``: ~20 chips share
each block, so decoding is a small part of a chip's cost), side by side in one run:

* **pipeline**: ``run_ingest`` after Ray start-up. The search/index phase (scene search, SCL
  screening) is timed separately; ``chips_per_s`` is the shard phase (read grouped by scene,
  write Parquet + WebDataset), measured by rerunning with the index kept and the shards removed.
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

Throughput, naive loop and decode limit are compared on the 4× set (``chips``), where the fixed
start-up of a Ray Data job is a small part of the time, as in production; the naive loop reads an
even sample of its chips (``--naive-chips``: its cost per chip does not depend on the set).
Ratios: ``ratio_vs_naive`` = pipeline chips/s ÷ naive chips/s (wall clock, all cores);
``ratio_vs_decode_limit`` = (pipeline chips/s ÷ cores used) ÷ decode-limit chips/s (per core).
``peak_rss_mb``: peak of the summed RSS of the driver and every process under it (raylet, Ray
workers), sampled every 0.1 s during the pipeline run, at 1× and 4× the set size.

    python bench/ingest.py [--points 240] [--cores 2] [--size-px 96] [--chunk-size 256]
    python bench/ingest.py --points 1800 --scenes-per-region 4 --scene-px 480 --block-px 256   # dense

The last line printed is one JSON object; ``parquet_bytes_per_chip`` and ``wds_bytes_per_chip`` are
what the 4x set's shards hold per chip (``pw-ray estimate --calibration`` reads them).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


# ----------------------------------------------------------------------------- memory
def _tree_rss_mb(root_pid: int) -> float:
    """Summed RSS (MB) of ``root_pid`` and all its descendants, from /proc."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as f:
                pages = int(f.read().split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parent[int(d)] = ppid
        rss[int(d)] = pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    keep, frontier = {root_pid}, [root_pid]
    children: dict[int, list[int]] = {}
    for pid, pp in parent.items():
        children.setdefault(pp, []).append(pid)
    while frontier:
        p = frontier.pop()
        for c in children.get(p, []):
            if c not in keep:
                keep.add(c)
                frontier.append(c)
    return sum(rss.get(p, 0.0) for p in keep)


class PeakRss:
    def __init__(self, interval_s: float = 0.1):
        self.interval_s, self.peak, self._stop = interval_s, 0.0, threading.Event()

    def __enter__(self):
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _tree_rss_mb(os.getpid()))
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


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


def naive_loop(index, items, adapter, spec, landcover_hrefs) -> float:
    """Seconds to read every kept chip one rasterio.open per chip per raster (bands, SCL, land cover)."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    from pw_ray.ingest import chips as C

    t0 = time.perf_counter()
    with C.gdal_env():
        for r in _ok_chips(index).itertuples(index=False):
            for href, nearest in _assets(items[r.item_id], adapter, spec, landcover_hrefs):
                with rasterio.open(href) as ds:
                    f = abs(ds.transform.a) / spec.resolution_m
                    w = Window(r.col_off / f, r.row_off / f, spec.size_px / f, spec.size_px / f)
                    rs = Resampling.bilinear if f != 1 and not nearest else Resampling.nearest
                    ds.read(1, window=w, out_shape=(spec.size_px, spec.size_px), resampling=rs)
    return time.perf_counter() - t0


def decode_limit(index, items, adapter, spec, landcover_hrefs) -> tuple[float, int]:
    """Seconds to decode, once each, every COG block the kept chips touch (bands, SCL and the
    land-cover layer: a chip's record needs all three); and the block count."""
    import rasterio
    from rasterio.windows import Window

    from pw_ray.ingest import chips as C

    ok = _ok_chips(index)
    n_blocks = 0
    t0 = time.perf_counter()
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
    return time.perf_counter() - t0, n_blocks


def one_process(root, name, index, items, src, spec) -> tuple[float, dict]:
    """Seconds for the shard phase in this process, no Ray (``write_chunk`` for every chunk), and
    those seconds by stage."""
    from pw_ray import storage
    from pw_ray.ingest.pipeline import assign_chunks, stage_seconds, write_chunk

    out = storage.join(root, "one-process")
    chunked = assign_chunks(index, spec.chunk_size)
    results = []
    t0 = time.perf_counter()
    for (region, k), rows in chunked.groupby(["region", "chunk"], sort=True):
        results.append(write_chunk(rows, items, out, name, region, int(k), src.adapter, spec, src.landcover))
    return time.perf_counter() - t0, stage_seconds(results)


# ----------------------------------------------------------------------------- pipeline
def run_pipeline(root: str, name: str, pts, src, spec):
    """(index seconds, shard seconds, peak RSS MB, summary of the shard run) of one set through run_ingest."""
    from pw_ray import storage
    from pw_ray.ingest.pipeline import run_ingest

    with PeakRss() as mem:
        t0 = time.perf_counter()
        run_ingest(root, name, pts, src.searcher, src.adapter, spec, src.landcover)
        t_all = time.perf_counter() - t0
        # Shard phase alone: keep the index, drop shards + manifest, run again.
        shutil.rmtree(storage.join(root, "shards", name), ignore_errors=True)
        os.remove(storage.join(root, "manifest", f"{name}.parquet"))
        t0 = time.perf_counter()
        s = run_ingest(root, name, pts, src.searcher, src.adapter, spec, src.landcover)
        t_shards = time.perf_counter() - t0
    return max(0.0, t_all - t_shards), t_shards, mem.peak, s


def bench_config(root: str, points: int, *, scenes_per_region: int = 4, scene_px: int = 480,
                 block_px: int = 256, size_px: int = 96, chunk_size: int = 256):
    """The benchmarks' experiment config: one global set of ``points`` on a synthetic archive."""
    from pw_ray.config import parse_config

    return parse_config({
        "name": "bench", "root": root, "tasks": [],
        "pretrain_sets": [{"name": "b1", "region": "global", "size": points, "seed": 1}],
        "stac": {"kind": "synthetic", "max_cloud_cover": 60,
                 "synthetic": {"seed": 0, "scenes_per_region": scenes_per_region, "scene_px": scene_px,
                               "block_px": block_px, "cloudy_fraction": 0.3}},
        "chips": {"size_px": size_px, "max_cloud_fraction": 0.3, "max_nodata_fraction": 0.1,
                  "chunk_size": chunk_size},
    })


def start_ray(cores: int, tmp: str) -> None:
    """A local Ray with ``cores`` CPUs, its files under ``tmp``, quiet (no dashboard, no progress bars)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=os.path.join(tmp, "ray"),
             logging_level="WARNING", log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False


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
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    args = ap.parse_args(argv)

    import ray

    from pw_ray import experiment as E
    from pw_ray import storage
    from pw_ray.config import PretrainSet
    from pw_ray.plan import plan_set

    tmp = tempfile.mkdtemp(prefix="pwray-bench-ingest-")
    root = os.path.join(tmp, "root")
    cfg = bench_config(root, args.points, scenes_per_region=args.scenes_per_region, scene_px=args.scene_px,
                       block_px=args.block_px, size_px=args.size_px, chunk_size=args.chunk_size)
    t0 = time.perf_counter()
    src = E.source(cfg)
    print(f"archive built in {time.perf_counter() - t0:.1f}s under {tmp}", flush=True)
    start_ray(args.cores, tmp)
    # Warm-up: worker start-up is not ingest time.
    ray.data.range(args.cores * 2).map(lambda r: r, num_cpus=1).take_all()

    res = {}
    try:
        for mult in (1, 4):
            name = f"b{mult}"
            pts = plan_set(PretrainSet(name=name, region="global", size=args.points * mult, seed=mult),
                           src.coverage, biome_path=src.biome_path)
            t_index, t_shards, peak, summary = run_pipeline(root, name, pts, src, cfg.chips)
            ok = summary.ok
            res[mult] = dict(points=len(pts), chips=ok, index_s=t_index, shards_s=t_shards, peak_rss_mb=peak,
                             stage_s=summary.stage_s, tasks=summary.chunks_written)
            print(f"{mult}x: {len(pts)} points, {ok} chips; index {t_index:.1f}s, shards {t_shards:.1f}s, "
                  f"peak RSS {peak:.0f} MB", flush=True)
        # Compared on the larger set: a Ray Data job's fixed start-up (~0.8 s here) is then a small
        # part of its time, as on a production set of 10^5-10^6 chips.
        index = storage.read_table(storage.join(root, "index", "b4.parquet")).to_pandas()
        items_df = storage.read_table(storage.join(root, "index", "b4-items.parquet")).to_pandas()
        items = {r.item_id: json.loads(r.items_json) for r in items_df.itertuples(index=False)}
        n = res[4]["chips"]
        # What the shards of the 4x set hold per chip (pw-ray estimate --calibration scales it by pixels).
        from pw_ray.ingest import shards as S

        shard_bytes = {kind: sum(os.path.getsize(storage.local_path(u)) for u in files)
                       for kind, files in (("parquet", S.shard_files(root, "b4")), ("wds", S.wds_files(root, "b4")))}
        t_one, one_stages = one_process(root, "b4", index, items, src, cfg.chips)
        # The synthetic land cover: one raster per scene, on the scene's grid.
        from pw_ray import synthetic

        lc_items = synthetic.load_landcover_items(synthetic.load_archive(storage.join(root, "archive")))
        lc_hrefs = {it["properties"]["synthetic:scene"]: it["assets"]["map"]["href"] for it in lc_items}
        # The naive loop's cost per chip does not depend on the set (nothing is shared between
        # chips), so it runs on an even sample of the chips.
        ok = _ok_chips(index)
        sample = ok.iloc[np.linspace(0, len(ok) - 1, min(len(ok), args.naive_chips)).astype(int)]
        t_naive = naive_loop(sample, items, src.adapter, cfg.chips, lc_hrefs)
        t_dec, n_blocks = decode_limit(index, items, src.adapter, cfg.chips, lc_hrefs)
    finally:
        ray.shutdown()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    pipe1 = res[1]["chips"] / res[1]["shards_s"]
    pipe = n / res[4]["shards_s"]
    naive = len(sample) / t_naive
    one = n / t_one
    dec = n / t_dec
    rows = [
        ("pipeline shard phase (1x)", pipe1, f"{res[1]['chips']} chips, {args.cores} cores, "
                                             f"{pipe1 / args.cores:.1f}/s per core"),
        ("pipeline shard phase (4x)", pipe, f"{n} chips, {args.cores} cores, {pipe / args.cores:.1f}/s per core"),
        ("pipeline index phase (4x)", n / max(res[4]["index_s"], 1e-9), "search + SCL screening, separate"),
        ("one process, no Ray", one, "1 core, write_chunk in a loop"),
        ("naive per-chip loop", naive, f"1 core, open per chip per raster, {len(sample)} chips"),
        ("decode limit", dec, f"1 core, {n_blocks} blocks decoded once each"),
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
        "index_chips_per_s": round(n / max(res[4]["index_s"], 1e-9), 2),
        "one_process_chips_per_s": round(one, 2),
        "naive_chips_per_s": round(naive, 2), "decode_limit_chips_per_s": round(dec, 2),
        "ratio_vs_naive": round(pipe / naive, 3),
        "ratio_vs_decode_limit": round(pipe / args.cores / dec, 3),
        "one_process_vs_decode_limit": round(one / dec, 3),
        "one_process_ms_per_chip": stage_ms, "decode_limit_ms_per_chip": round(1000 * t_dec / n, 3),
        "chunk_size": args.chunk_size,
        "parquet_bytes_per_chip": round(shard_bytes["parquet"] / max(n, 1)),
        "wds_bytes_per_chip": round(shard_bytes["wds"] / max(n, 1)),
        "block_px": args.block_px, "scene_px": args.scene_px,
        "peak_rss_mb": {"1x": round(res[1]["peak_rss_mb"]), "4x": round(res[4]["peak_rss_mb"])},
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
