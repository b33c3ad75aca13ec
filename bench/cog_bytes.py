"""Bytes on the wire per chip: what nginx serves to the shard phase against the COG bytes the chips need.

The synthetic archive is served by nginx on loopback with Range support (``tests/servers.py``,
``CogServer``), the items' hrefs (bands, SCL, land cover) are pointed at it, and the shard phase
(``run_chunk_task`` over every chunk, one process: the bytes do not depend on the executor when
scenes are whole in chunks) reads every chip through GDAL's ``/vsicurl/`` with
``chips.GDAL_CLOUD_OPTIONS``. Then:

* **served**: the response bytes (``$body_bytes_sent``) of every request in nginx's access log;
* **needed**: for every raster a scene's chips read, the compressed bytes of the COG tiles
  their footprints touch (``TileByteCounts``, each tile once however many chips share it), plus
  the bytes before the raster's first tile of any level (header, IFDs, tile index: no reader
  finds a tile without them; internal overviews' tiles are not needed for 10 m chips).

``bytes_vs_needed`` = served ÷ needed (goal ≤ 1.5).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from pathlib import Path

import numpy as np

#: nginx's default ("combined") access-log line: request, status, body bytes.
_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) (?P<bytes>\d+)')


def served(log_path: Path, offset: int = 0) -> dict:
    """Requests and body bytes of the ``.tif`` requests logged after ``offset`` bytes of the log."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    n = total = 0
    for m in _LINE.finditer(text):
        if m["path"].split("?")[0].endswith(".tif"):
            n += 1
            total += int(m["bytes"])
    return {"requests": n, "bytes": total}


def needed(index, items: dict, hrefs_of, size_px: int, res: float = 10.0) -> dict:
    """Compressed bytes of the COG tiles the kept chips' footprints touch, plus each raster's
    header, for every raster ``hrefs_of(item)`` names (local paths)."""
    import rasterio

    tiles = header = rasters = 0
    ok = index[index["status"] == "ok"]
    for item_id, grp in ok.groupby("item_id", sort=True):
        for href in hrefs_of(items[item_id]):
            with rasterio.open(href) as ds:
                f = abs(ds.transform.a) / res
                bh, bw = ds.block_shapes[0]
                need = set()
                for r, c in zip(grp["row_off"], grp["col_off"]):
                    r0, c0 = int(r // f), int(c // f)
                    r1 = min(ds.height, int(np.ceil((r + size_px) / f))) - 1
                    c1 = min(ds.width, int(np.ceil((c + size_px) / f))) - 1
                    need.update((i, j) for i in range(r0 // bh, r1 // bh + 1) for j in range(c0 // bw, c1 // bw + 1))
                tiles += sum(ds.block_size(1, i, j) for i, j in need)
                levels = len(ds.overviews(1))
            # The header ends where the first tile of any level starts (a COG keeps its overviews'
            # tiles before the full-resolution ones: those are not needed to read a chip at 10 m).
            header += min(_first_tile_offset(href, level) for level in [None, *range(levels)])
            rasters += 1
    return {"tile_bytes": tiles, "header_bytes": header, "rasters": rasters, "bytes": tiles + header}


def _first_tile_offset(href: str, level: int | None) -> int:
    """Byte offset of the first tile of a raster (``level``: an overview level, None: full size)."""
    import rasterio

    kw = {} if level is None else {"overview_level": level}
    with rasterio.open(href, **kw) as ds:
        bh, bw = ds.block_shapes[0]
        return min(int(ds.get_tag_item(f"BLOCK_OFFSET_{j}_{i}", "TIFF", bidx=1))
                   for i in range(-(-ds.height // bh)) for j in range(-(-ds.width // bw)))


def _over_http(item: dict, archive: Path, url: str) -> dict:
    item = json.loads(json.dumps(item))
    for a in item["assets"].values():
        a["href"] = url + "/" + str(Path(a["href"]).resolve().relative_to(archive.resolve()))
    return item


def measure(index, items: dict, src, spec, tasks_of, archive: Path, out_root: str, set_name: str,
            lc_items_path: Path | None = None) -> dict:
    """Serve ``archive`` with nginx, run the shard phase over HTTP in this process, and compare the
    bytes served with the bytes needed. ``tasks_of(items_json)`` gives the chunk tasks for the
    given items (JSON strings by item id). Raises when nginx cannot be started."""
    from pw_ray import bands as B
    from pw_ray.ingest import pipeline as P
    from tests.servers import CogServer

    lc = src.landcover
    with CogServer(archive) as cog:
        if cog.kind != "nginx":
            raise RuntimeError(f"nginx is not installed (served by {cog.kind}); install: apt-get install nginx-light")
        http_items = {i: _over_http(it, archive, cog.url) for i, it in items.items()}
        if lc is not None and lc_items_path is not None and hasattr(lc, "url"):
            lines = [json.dumps(_over_http(json.loads(line), archive, cog.url))
                     for line in Path(lc_items_path).read_text().splitlines() if line.strip()]
            lc_path = Path(out_root) / "landcover-http.ndjson"
            lc_path.parent.mkdir(parents=True, exist_ok=True)
            lc_path.write_text("\n".join(lines) + "\n")
            lc = dataclasses.replace(lc, url=str(lc_path))
        tasks = tasks_of({i: json.dumps(it) for i, it in http_items.items()})
        log_path = cog.tmp / "access.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        t0 = time.perf_counter()
        n = sum(P.run_chunk_task(t, out_root, set_name, src.adapter, spec, lc)["n"] for t in tasks)
        seconds = time.perf_counter() - t0
        time.sleep(0.5)  # nginx writes its log lines as requests finish
        got = served(log_path, offset)

    lc_local = {}
    if lc_items_path is not None:
        for line in Path(lc_items_path).read_text().splitlines():
            if line.strip():
                it = json.loads(line)
                lc_local[it["properties"]["synthetic:scene"]] = it["assets"]["map"]["href"]

    def hrefs_of(item):
        out = [src.adapter.href(item, b) for b in list(spec.bands) + [B.SCL]]
        return out + ([lc_local[item["id"]]] if item["id"] in lc_local else [])

    want = needed(index, items, hrefs_of, spec.size_px, spec.resolution_m)
    return {"chips": n, "seconds": round(seconds, 2), "requests": got["requests"], "served_bytes": got["bytes"],
            "needed_bytes": want["bytes"], "needed_tile_bytes": want["tile_bytes"],
            "needed_header_bytes": want["header_bytes"], "rasters": want["rasters"],
            "served_kb_per_chip": round(got["bytes"] / 1024 / max(1, n), 1),
            "needed_kb_per_chip": round(want["bytes"] / 1024 / max(1, n), 1),
            "bytes_vs_needed": round(got["bytes"] / max(1, want["bytes"]), 3)}
