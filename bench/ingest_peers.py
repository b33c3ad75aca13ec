"""pw-ray's shard phase against what a user would pick instead: odc-stac, same archive, same cores, one run.

On the synthetic archive of ``bench/ingest.py`` (S2-like layout by default), one set of points
is indexed once, then its chips are read and written to Parquet two ways, side by side:

* **pw-ray**: ``run_ingest``'s shard phase (plain Ray tasks over chunks, ``--cores`` Ray CPUs),
  Parquet only (``chips.webdataset: false``, as the peer writes no tars);
* **odc-stac**: per scene, ``odc.stac.load`` of its bands, SCL and land cover on the scene's 10 m
  geobox cut to the bounding box of its chips (bilinear for 20 m bands, nearest for SCL and land
  cover), each chip sliced out and written in pw-ray's shard format (``bench/odc_peer.py``), on
  a process pool of ``--cores`` workers.

odc-stac is never a dependency of the project: it is installed into its own venv (``--venv``,
default ``/tmp/pwray-odc-venv``; created on first use with ``pip install odc-stac``, the project's
own packages visible through a ``.pth``). Both sides are timed per task (start, end, CPU) and
compared by wall clock and by the load-robust replay of ``bench/parallel.py``:
``ratio_vs_odc_stac`` = pw-ray chips/s ÷ odc-stac chips/s, replayed; ``_wall`` the raw one.
The chips are compared too: 10 m bands pixel for pixel, 20 m bands within 1 DN, and no data
(pixels 0 on one side only).

    python bench/ingest_peers.py [--points 960] [--cores 2] [--archive-cache DIR]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ODC_STAC = "odc-stac==0.5.3"


def odc_python(venv: str) -> str:
    """The python of a venv that imports odc.stac, made on first use; raises with pip's own
    words when it cannot be installed."""
    py = os.path.join(venv, "bin", "python")
    if os.path.exists(py) and subprocess.run([py, "-c", "import odc.stac"], capture_output=True).returncode == 0:
        return py
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The project's packages (rasterio, pyarrow, pw-ray's own deps) stay visible; odc-stac and
    # what it adds (xarray, dask, odc-geo, ...) go into the venv and win over them.
    Path(site, "pw_ray_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    r = subprocess.run([py, "-m", "pip", "install", "-q", ODC_STAC], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"pip install {ODC_STAC} into {venv} failed: {(r.stderr or r.stdout)[-2000:]}")
    return py


def scene_jobs(index, items: dict, lc_items: dict, src, spec, set_name: str) -> list[dict]:
    """One job per scene for ``bench/odc_peer.py``: the item, its land-cover item, its grid, the
    chips' windows and metadata, and the DN offsets pw-ray's adapter gives its bands."""
    from pw_ray.ingest import chips as C

    jobs = []
    ok = index[index["status"] == "ok"]
    for item_id, grp in ok.groupby("item_id", sort=True):
        item = items[item_id]
        grid = C.scene_grid(item, src.adapter, spec.resolution_m)
        chips = [{"chip_id": str(r.chip_id), "set": set_name, "point_id": r.point_id, "lon": float(r.lon),
                  "lat": float(r.lat), "region": r.region, "biome": r.biome, "landcover": r.landcover,
                  "collection": r.collection, "datetime": r.datetime, "epsg": int(r.epsg),
                  "row_off": int(r.row_off), "col_off": int(r.col_off), "baseline": r.baseline}
                 for r in grp.itertuples(index=False)]
        jobs.append({"item": item, "lc_item": lc_items.get(item_id), "lc_asset": "map",
                     "lc_codes": [int(c) for c in src.landcover.codes], "lc_names": list(src.landcover.names),
                     "grid": {"epsg": grid.epsg, "x0": grid.x0, "y0": grid.y0, "height": grid.height,
                              "width": grid.width, "res": grid.res},
                     "chips": chips, "bands": list(spec.bands), "size_px": spec.size_px,
                     "offsets": {b: int(src.adapter.offset(item, b)) for b in spec.bands}})
    return jobs


def compare_chips(ours, theirs, bands: list[str]) -> dict:
    """Agreement of two chip tables (pw-ray's shard format) on their common chips."""
    from pw_ray import bands as B
    from pw_ray.ingest import shards as S

    a = ours.to_pandas().set_index("chip_id")
    b = theirs.to_pandas().set_index("chip_id")
    common = sorted(set(a.index) & set(b.index))
    pa_, pb = S.read_pixels(ours), S.read_pixels(theirs)
    ia = {c: i for i, c in enumerate(ours.column("chip_id").to_pylist())}
    ib = {c: i for i, c in enumerate(theirs.column("chip_id").to_pylist())}
    x = pa_[[ia[c] for c in common]].astype(np.int32)
    y = pb[[ib[c] for c in common]].astype(np.int32)
    ten = [k for k, band in enumerate(bands) if B.resolution(band) == 10]
    coarse = [k for k, band in enumerate(bands) if B.resolution(band) != 10]
    valid = (x > 0) & (y > 0)
    one_side = (x == 0) != (y == 0)
    return {
        "chips_compared": len(common),
        "equal_10m": round(float((x[:, ten] == y[:, ten]).mean()), 6),
        "within_1dn_20m_valid": round(float((np.abs(x[:, coarse] - y[:, coarse]) <= 1)[valid[:, coarse]].mean()), 6),
        "nodata_px_one_side_per_chip": round(float(one_side.sum() / max(1, len(common))), 2),
        "nodata_px_per_chip_ours": round(float((x == 0).sum() / max(1, len(common))), 2),
        "cloud_fraction_max_diff": round(float(np.abs(a.loc[common, "cloud_fraction"]
                                                      - b.loc[common, "cloud_fraction"]).max()), 6),
        "lc_fractions_equal": bool(all(np.allclose(p, q) for p, q in zip(a.loc[common, "lc_fractions"],
                                                                         b.loc[common, "lc_fractions"]))),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=960)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--size-px", type=int, default=96)
    ap.add_argument("--scene-px", type=int, default=2040)
    ap.add_argument("--block-px", type=int, default=1024)
    ap.add_argument("--scenes-per-region", type=int, default=2)
    ap.add_argument("--chunk-size", type=int, default=256)
    ap.add_argument("--venv", default="/tmp/pwray-odc-venv", help="venv for odc-stac (made on first use)")
    ap.add_argument("--archive-cache", default=None, help="keep the synthetic archive in this folder")
    args = ap.parse_args(argv)

    out = {"points": args.points, "cores": args.cores}
    try:
        py = odc_python(args.venv)
    except Exception as err:  # say exactly why, and still end with the JSON line
        out.update(ratio_vs_odc_stac=None, odc_stac_error=str(err))
        print(json.dumps(out), flush=True)
        return 1

    import ray

    from bench.ingest import bench_config, bench_root, clear_root, start_ray
    from bench.parallel import CpuSampler, background_cpu_per_s, replay_seconds
    from pw_ray import experiment as E
    from pw_ray import storage, synthetic
    from pw_ray.config import PretrainSet
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.pipeline import run_ingest
    from pw_ray.ingest.workpool import TaskTime
    from pw_ray.plan import plan_set

    tmp = tempfile.mkdtemp(prefix="pwray-bench-peers-")
    root = bench_root(tmp, args.archive_cache)
    cfg = bench_config(root, args.points, scenes_per_region=args.scenes_per_region, scene_px=args.scene_px,
                       block_px=args.block_px, size_px=args.size_px, chunk_size=args.chunk_size, webdataset=False)
    src = E.source(cfg)
    start_ray(args.cores, tmp)
    ray.data.range(args.cores * 2).map(lambda r: r, num_cpus=1).take_all()  # workers up
    try:
        pts = plan_set(PretrainSet(name="p", region="global", size=args.points, seed=4), src.coverage,
                       biome_path=src.biome_path)
        run_ingest(root, "p", pts, src.searcher, src.adapter, cfg.chips, src.landcover)  # the index; warm-up
        shutil.rmtree(storage.join(root, "shards", "p"))
        rate = background_cpu_per_s()
        with CpuSampler(0.5) as cpu:
            s = run_ingest(root, "p", pts, src.searcher, src.adapter, cfg.chips, src.landcover)
        st = s.shard_tasks
        pipe_overhead = cpu.between(st["start"], st["end"]) - st["cpu_s"]
        pipe_replay, _ = replay_seconds(st["task_times"], args.cores, st["start"], st["end"], pipe_overhead, rate)
        # CPU of the phase at idle-machine length: Ray's steady background counted for the replay.
        pipe_cpu = st["cpu_s"] + max(0.0, pipe_overhead - rate * st["wall_s"]) + rate * pipe_replay

        index = storage.read_table(storage.join(root, "index", "p.parquet")).to_pandas()
        items_df = storage.read_table(storage.join(root, "index", "p-items.parquet")).to_pandas()
        items = {r.item_id: json.loads(r.items_json) for r in items_df.itertuples(index=False)}
        lc_all = synthetic.load_landcover_items(synthetic.load_archive(storage.join(root, "archive")))
        lc_items = {it["properties"]["synthetic:scene"]: it for it in lc_all}
        jobs = scene_jobs(index, items, lc_items, src, cfg.chips, "p")
        jobs_path = os.path.join(tmp, "jobs.json")
        Path(jobs_path).write_text(json.dumps(jobs))
        odc_out = os.path.join(tmp, "odc")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        r = subprocess.run([py, str(REPO / "bench" / "odc_peer.py"), jobs_path, odc_out, "--cores", str(args.cores)],
                           capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise RuntimeError(f"bench/odc_peer.py failed: {r.stderr[-3000:]}")
        odc = json.loads(r.stdout.strip().splitlines()[-1])
        odc_times = [TaskTime(*t) for t in odc["times"]]
        odc_overhead = odc["cpu_s"] - sum(t.cpu_s for t in odc_times)
        odc_replay, _ = replay_seconds(odc_times, args.cores, odc["start"], odc["end"], odc_overhead)

        ours = S.read_set(root, "p")
        theirs = _read_folder(odc_out)
        agree = compare_chips(ours, theirs, list(cfg.chips.bands))
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.archive_cache:
            clear_root(root)

    n_pipe, n_odc = s.ok, odc["chips"]
    pipe_wall, odc_wall = st["wall_s"], odc["end"] - odc["start"]
    rows = [
        ("pw-ray shard phase", n_pipe, pipe_wall, n_pipe / pipe_wall, n_pipe / pipe_replay, pipe_cpu),
        (f"odc-stac {odc['odc_stac']}", n_odc, odc_wall, n_odc / odc_wall, n_odc / odc_replay, odc["cpu_s"]),
    ]
    print(f"\n{'what':<22} {'chips':>6} {'wall s':>7} {'chips/s':>8} {'replayed':>9} {'CPU ms/chip':>12}")
    for what, n, w, cps, rep, c in rows:
        print(f"{what:<22} {n:6d} {w:7.1f} {cps:8.1f} {rep:9.1f} {1000 * c / n:12.2f}")
    print(f"odc-stac loaded {odc['loaded_px'] / 1e6:.1f} M px per band for {n_odc} chips of "
          f"{args.size_px}² ({odc['loaded_px'] / (n_odc * args.size_px ** 2):.1f}× the chips' area)")
    print("agreement:", agree)
    out.update({
        "chips": n_pipe, "odc_stac": odc["odc_stac"],
        "pipeline_chips_per_s": round(n_pipe / pipe_wall, 2), "odc_stac_chips_per_s": round(n_odc / odc_wall, 2),
        "pipeline_chips_per_s_replayed": round(n_pipe / pipe_replay, 2),
        "odc_stac_chips_per_s_replayed": round(n_odc / odc_replay, 2),
        "pipeline_cpu_ms_per_chip": round(1000 * pipe_cpu / n_pipe, 3),
        "odc_stac_cpu_ms_per_chip": round(1000 * odc["cpu_s"] / n_odc, 3),
        "ratio_vs_odc_stac": round((n_pipe / pipe_replay) / (n_odc / odc_replay), 3),
        "ratio_vs_odc_stac_wall": round((n_pipe / pipe_wall) / (n_odc / odc_wall), 3),
        "odc_loaded_area_vs_chips": round(odc["loaded_px"] / (n_odc * args.size_px ** 2), 2),
        "chips_per_scene": round(n_pipe / len(jobs), 1),
        "agreement": agree, "load_avg_1m": round(os.getloadavg()[0], 1),
    })
    print(json.dumps(out), flush=True)
    return 0


def _read_folder(folder: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(os.path.join(folder, f)) for f in sorted(os.listdir(folder)) if f.endswith(".parquet")]
    return pa.concat_tables(tables)


if __name__ == "__main__":
    sys.exit(main())
