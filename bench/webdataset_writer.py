"""WebDataset tars of one shard: ``webdataset.TarWriter`` against a hand-written ``tarfile`` loop.

    python bench/webdataset_writer.py                      # 256 chips of 10×96×96 uint16, 7 rounds
    python bench/webdataset_writer.py --chips 128 --px 48 --rounds 5

Both turn the same shard table (:func:`pw_ray.ingest.shards.chips_table`, realistic metadata
columns) into a tar in memory, ``<chip>.npy`` + ``<chip>.json`` per chip:

* **handwritten** — :func:`pw_ray.ingest.shards.webdataset_bytes`, pw-ray's ``tarfile`` loop
  (``np.save`` + one ``TarInfo`` per file, ``mtime`` 0);
* **tarwriter** — the same samples through ``webdataset.TarWriter`` (``mtime=0``).

The rounds alternate the two (side by side, so load from other processes hits both alike) and
report the median CPU seconds (``time.process_time``) and wall seconds per tar, after one
untimed warm-up call each. Apart from that per-tar cost, ``import webdataset`` has a one-off
cost in every process that writes tars (it imports torch): measured in fresh subprocesses that
have already imported numpy, pyarrow and rasterio (as an ingest worker has), as CPU seconds,
wall seconds and resident memory added, and whether torch got imported. Each variant is
also run twice on the same table to check its bytes are identical (reruns must write the same
files), and both tars are read back with ``webdataset.WebDataset`` and compared with the table.
The last line is one JSON object with the figures and the ratios tarwriter / handwritten.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pw_ray.ingest import shards as S  # noqa: E402

log = logging.getLogger("pw_ray.bench")

BANDS = ["B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"]


def tarwriter_bytes(table) -> bytes:
    """The same tar through ``webdataset.TarWriter``: members ``<key>.json``, ``<key>.npy``."""
    import webdataset as wds

    pixels = S.read_pixels(table)
    meta = table.drop_columns(["pixels"]).to_pylist()
    bands = S.shard_bands(table)
    buf = io.BytesIO()
    with wds.TarWriter(buf, mtime=0, mode=0o644) as tar:
        for m, px in zip(meta, pixels):
            tar.write({"__key__": m["chip_id"].replace(".", "_"), "npy": px, "json": dict(m, bands=bands)})
    return buf.getvalue()


def shard_table(n_chips: int, px: int, seed: int = 0):
    """A shard of ``n_chips`` chips of (10, px, px) uint16 with metadata shaped like an ingest's."""
    rng = np.random.default_rng(seed)
    # Reflectance-like DNs (smooth-ish, not white noise, so sizes are realistic for npy: raw anyway).
    pixels = rng.integers(200, 6000, size=(n_chips, len(BANDS), px, px), dtype=np.uint16)
    meta = []
    for i in range(n_chips):
        meta.append({
            "chip_id": f"europe-eu-{i:06d}.S2B_MSIL2A_20230614T103629_R008_T32UNU_20230614T165328.{i % 7}",
            "set": "europe", "point_id": f"europe-eu-{i:06d}", "lon": 10.0 + i * 1e-3, "lat": 50.0 - i * 1e-3,
            "region": "eu", "biome": "Temperate Broadleaf & Mixed Forests", "landcover": "tree",
            "lc_fractions": [0.5, 0.1, 0.1, 0.1, 0.05, 0.05, 0.0, 0.1, 0.0, 0.0, 0.0],
            "item_id": "S2B_MSIL2A_20230614T103629_R008_T32UNU_20230614T165328", "collection": "sentinel-2-l2a",
            "datetime": "2023-06-14T10:36:29Z", "epsg": 32632, "row_off": 96 * (i % 100), "col_off": 96 * (i // 100),
            "cloud_fraction": 0.01, "nodata_fraction": 0.0, "baseline": "05.09", "offset_applied": 1000,
        })
    return S.chips_table(meta, pixels, BANDS)


IMPORT_PROBE = """
import json, os, sys, time
import numpy, pyarrow, pyarrow.parquet, rasterio
def rss_mb():
    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 1e6
r0, c0, w0 = rss_mb(), time.process_time(), time.perf_counter()
import webdataset
print(json.dumps({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                  "rss_mb": rss_mb() - r0, "imports_torch": "torch" in sys.modules}))
"""


def import_cost(repeats: int) -> dict:
    """Median one-off cost of ``import webdataset`` in a fresh process (see :data:`IMPORT_PROBE`)."""
    import subprocess

    runs = [json.loads(subprocess.run([sys.executable, "-c", IMPORT_PROBE], check=True, capture_output=True,
                                      text=True).stdout.strip().splitlines()[-1]) for _ in range(repeats)]
    return {"import_cpu_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
            "import_wall_s": round(statistics.median(r["wall_s"] for r in runs), 3),
            "import_rss_mb": round(statistics.median(r["rss_mb"] for r in runs)),
            "import_pulls_in_torch": all(r["imports_torch"] for r in runs)}


def timed(fn, table) -> tuple[float, float, bytes]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(table)
    return time.process_time() - c0, time.perf_counter() - w0, out


def read_back(data: bytes, table) -> None:
    """Read the tar with ``webdataset.WebDataset`` and check it holds the table's chips."""
    import webdataset as wds

    with tempfile.NamedTemporaryFile(suffix=".tar") as f:
        f.write(data)
        f.flush()
        samples = list(wds.WebDataset(f.name, shardshuffle=False).decode())
    pixels = S.read_pixels(table)
    ids = table.column("chip_id").to_pylist()
    assert [s["json"]["chip_id"] for s in samples] == ids
    for s, px in zip(samples, pixels):
        np.testing.assert_array_equal(s["npy"], px)
        assert s["json"]["bands"] == BANDS


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chips", type=int, default=256)
    ap.add_argument("--px", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    table = shard_table(args.chips, args.px)
    variants = {"tarwriter": tarwriter_bytes, "handwritten": S.webdataset_bytes}
    cpu = {k: [] for k in variants}
    wall = {k: [] for k in variants}
    last: dict[str, bytes] = {}
    deterministic = {}
    for fn in variants.values():  # warm-up: imports, first-call allocations
        fn(table)
    for r in range(args.rounds):
        order = list(variants) if r % 2 == 0 else list(variants)[::-1]
        for name in order:
            c, w, out = timed(variants[name], table)
            cpu[name].append(c)
            wall[name].append(w)
            if name in last:
                deterministic[name] = deterministic.get(name, True) and out == last[name]
            last[name] = out
    for name, data in last.items():
        read_back(data, table)
    raw_mb = table.column("pixels").nbytes / 1e6
    once = import_cost(3)
    result = {
        "bench": "webdataset_writer", "chips": args.chips, "chip_shape": [len(BANDS), args.px, args.px],
        "rounds": args.rounds, "pixels_mb": round(raw_mb, 2),
        **{f"{k}_cpu_s": round(statistics.median(v), 4) for k, v in cpu.items()},
        **{f"{k}_wall_s": round(statistics.median(v), 4) for k, v in wall.items()},
        **{f"{k}_bytes": len(v) for k, v in last.items()},
        **{f"{k}_deterministic": deterministic[k] for k in variants},
        "cpu_ratio_tarwriter_vs_handwritten": round(statistics.median(cpu["tarwriter"])
                                                    / statistics.median(cpu["handwritten"]), 3),
        "wall_ratio_tarwriter_vs_handwritten": round(statistics.median(wall["tarwriter"])
                                                     / statistics.median(wall["handwritten"]), 3),
        "bytes_ratio_tarwriter_vs_handwritten": round(len(last["tarwriter"]) / len(last["handwritten"]), 4),
        "both_read_back_by_webdataset": True,
        **{f"tarwriter_{k}": v for k, v in once.items()},
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, python {platform.python_version()}",
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
