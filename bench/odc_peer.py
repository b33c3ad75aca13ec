"""The odc-stac side of ``bench/ingest_peers.py``; runs in the venv that has odc-stac (never the project's).

For each scene (one job): ``odc.stac.load`` of the scene's bands, SCL and its land-cover item on
the scene's 10 m geobox cut to the bounding box of its chips (bilinear for the 20 m bands,
nearest for SCL and land cover), then each chip sliced out, its DNs harmonised with the offsets the
driver computed, cloud / no-data / land-cover fractions computed as pw-ray does, and the scene's
chips written as one Parquet file in pw-ray's chip-shard format. Scenes run on a process pool
of ``--cores`` workers, largest first, each timed like a Ray task.

    <venv>/bin/python bench/odc_peer.py JOBS.json OUT_DIR --cores 2   # prints one JSON line
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_scene(job: dict) -> dict:
    """Load, slice and write one scene's chips; returns its chip count and timing."""
    t0, c0 = time.time(), time.process_time()
    import numpy as np
    import odc.stac
    import pystac
    from odc.geo.geobox import GeoBox
    from rasterio.transform import Affine

    from pw_ray import bands as B
    from pw_ray import storage
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.chips import harmonise

    size, bands = job["size_px"], job["bands"]
    g = job["grid"]
    geobox = GeoBox((g["height"], g["width"]), Affine(g["res"], 0, g["x0"], 0, -g["res"], g["y0"]),
                    f"EPSG:{g['epsg']}")
    rows = [c["row_off"] for c in job["chips"]]
    cols = [c["col_off"] for c in job["chips"]]
    r0, c0_, r1, c1 = min(rows), min(cols), max(rows) + size, max(cols) + size
    box = geobox[r0:r1, c0_:c1]
    item = pystac.Item.from_dict(job["item"])
    ds = odc.stac.load([item], bands=bands + [B.SCL], geobox=box,
                       resampling={"*": "bilinear", B.SCL: "nearest"}, chunks=None)
    lc = None
    if job.get("lc_item"):
        lc = odc.stac.load([pystac.Item.from_dict(job["lc_item"])], bands=[job["lc_asset"]], geobox=box,
                           resampling="nearest", chunks=None)[job["lc_asset"]].values[0]
    stack = np.stack([ds[b].values[0] for b in bands])  # (C, H, W) at 10 m
    scl = ds[B.SCL].values[0]
    codes = np.asarray(job["lc_codes"])
    lut = np.full(256, -1, dtype=np.int64)
    lut[codes] = np.arange(len(codes))
    n = len(job["chips"])
    pixels = np.zeros((n, len(bands), size, size), dtype=np.uint16)
    metas = []
    for i, chip in enumerate(job["chips"]):
        r, c = chip["row_off"] - r0, chip["col_off"] - c0_
        for k, band in enumerate(bands):
            pixels[i, k] = harmonise(stack[k, r:r + size, c:c + size], job["offsets"][band])
        s = scl[r:r + size, c:c + size]
        frac = np.zeros(len(codes), dtype=np.float32)
        name = chip["landcover"]
        if lc is not None:
            idx = lut[lc[r:r + size, c:c + size].ravel()]
            frac = (np.bincount(idx[idx >= 0], minlength=len(codes)) / (size * size)).astype(np.float32)
            if frac.sum() > 0:
                name = job["lc_names"][int(np.argmax(frac))]
        nodata = (s == B.SCL_NODATA) | (pixels[i] == 0).any(axis=0)
        metas.append({**{k: chip[k] for k in ("chip_id", "set", "point_id", "lon", "lat", "region", "biome",
                                              "collection", "datetime", "epsg", "row_off", "col_off", "baseline")},
                      "landcover": name, "lc_fractions": frac.tolist(), "item_id": job["item"]["id"],
                      "cloud_fraction": float(np.isin(s, B.SCL_CLOUDY).mean()),
                      "nodata_fraction": float(nodata.mean()),
                      "offset_applied": int(job["offsets"][bands[0]])})
    table = S.chips_table(metas, pixels, bands)
    storage.write_bytes(os.path.join(job["out"], f"{job['item']['id']}.parquet"), S.parquet_bytes(table))
    return {"n": n, "t": [f"{os.uname().nodename}:{os.getpid()}", t0, time.time(), time.process_time() - c0],
            "px": int(box.shape[0] * box.shape[1])}


def _warm(_):
    import odc.stac  # noqa: F401
    import rasterio  # noqa: F401

    import pw_ray.ingest.shards  # noqa: F401
    time.sleep(0.05)
    return os.getpid()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("jobs")
    ap.add_argument("out")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args(argv)
    from bench.proctree import tree_cpu_s

    jobs = json.loads(Path(args.jobs).read_text())
    for j in jobs:
        j["out"] = args.out
    jobs.sort(key=lambda j: -len(j["chips"]))  # largest first, as the pipeline does
    os.makedirs(args.out, exist_ok=True)
    import odc.stac

    with ProcessPoolExecutor(args.cores, mp_context=mp.get_context("spawn")) as pool:
        list(pool.map(_warm, range(args.cores * 4)))
        pids = list(pool._processes)
        cpu0 = sum(tree_cpu_s(p) for p in pids) + time.process_time()
        start = time.time()
        res = list(pool.map(load_scene, jobs))
        end = time.time()
        cpu = sum(tree_cpu_s(p) for p in pids) + time.process_time() - cpu0
    print(json.dumps({"odc_stac": odc.stac.__version__, "start": start, "end": end, "cpu_s": cpu,
                      "chips": sum(r["n"] for r in res), "loaded_px": sum(r["px"] for r in res),
                      "times": [r["t"] for r in res]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
