"""No credentials or signed URLs in any output or log.

The Planetary Computer adapter signs loopback hrefs here (``sign_hosts`` widened by the test) with
``planetary_computer.sign_url`` monkeypatched to append a fake SAS token ``?st=…&sig=SECRET``;
the COGs are served over HTTP on loopback (nginx ignores the query). One asset is missing, so a
GDAL error quoting the signed URL must be recorded too. Then 'SECRET' must appear in no Parquet
table (index, items, manifest, shards), no WebDataset tar, no log record and no Ray worker log.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import cloudpickle
import pandas as pd
import pyarrow.parquet as pq
from shapely.geometry import shape

from pw_ray import storage
from pw_ray.config import ChipSpec
from pw_ray.ingest import shards as S
from pw_ray.ingest.catalogs import PlanetaryComputer
from pw_ray.ingest.search import StaticSearch

SECRET = "SECRET"


def fake_sign_url(href: str) -> str:
    return href + "?st=2026-01-01T00%3A00%3A00Z&se=2026-01-02T00%3A00%3A00Z&sp=rl&sig=" + SECRET


def test_signed_urls_never_reach_outputs_or_logs(stac_archive, cog_server, ray_session, monkeypatch, caplog,
                                                tmp_path):
    import planetary_computer
    import ray

    from pw_ray.ingest.pipeline import run_ingest
    from pw_ray.synthetic import load_items

    monkeypatch.setattr(planetary_computer, "sign_url", fake_sign_url)
    # Ray workers import their own planetary_computer: hand them the patched function by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        root = str(Path(stac_archive.root).resolve())
        items = []
        for it in load_items(stac_archive):
            for a in it["assets"].values():
                href = str(Path(a["href"]).resolve())
                if href.startswith(root):
                    a["href"] = cog_server.url + href[len(root):]
            items.append(it)
        assert all(a["href"].startswith("http://127.0.0.1") for a in items[0]["assets"].values()
                   if a["href"].endswith(".tif"))
        # One scene's red band is missing on the server: its chips fail with GDAL's error text.
        broken = items[1]
        broken["assets"]["B04"]["href"] = cog_server.url + "/missing/B04.tif"
        rows = []
        for i, it in enumerate(items):
            c = shape(it["geometry"]).centroid
            rows.append(dict(point_id=f"sec-{i:06d}", set="sec", lon=c.x, lat=c.y, region="af",
                             biome="unknown", landcover="unknown"))
        points = pd.DataFrame(rows)
        adapter = PlanetaryComputer(sign_hosts=("127.0.0.1",), signer=planetary_computer.sign_url)
        assert SECRET in adapter.sign(items[0]["assets"]["B02"]["href"])
        search = StaticSearch(items, collection=None, datetime_range="1900-01-01/2100-01-01",
                              max_cloud_cover=100, max_items=2)
        spec = ChipSpec(size_px=32, max_cloud_fraction=1.0, max_nodata_fraction=1.0, chunk_size=4)
        out = str(tmp_path / "root")
        with caplog.at_level(logging.INFO):
            s = run_ingest(out, "sec", points, search, adapter, spec)
        assert s.ok >= 1 and s.failed >= 1, s.line()
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])

    manifest = pq.read_table(storage.join(out, "manifest", "sec.parquet")).to_pandas()
    failed = manifest[manifest["status"] == "failed"]
    assert "404" in " ".join(failed["reason"])  # the error is recorded (any URL in it redacted)

    parquet = [p for p in Path(out).rglob("*.parquet")]
    assert {p.parent.name for p in parquet} >= {"index", "manifest"} and S.shard_files(out, "sec")
    for p in parquet:
        t = pq.read_table(p)
        for name in t.column_names:
            if name == "pixels":
                continue
            assert SECRET not in json.dumps(t.column(name).to_pylist(), default=str), (p, name)
        assert SECRET.encode() not in json.dumps({k.decode(): v.decode() for k, v in
                                                  (t.schema.metadata or {}).items()}).encode()
    for tar in Path(out).rglob("*.tar"):
        assert SECRET.encode() not in tar.read_bytes()
    for rec in caplog.records:
        assert SECRET not in rec.getMessage() and SECRET not in str(rec.exc_text or "")
    session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    redacted = False
    for f in session.rglob("*"):
        if f.is_file() and f.suffix in (".out", ".err", ".log"):
            data = f.read_bytes()
            assert SECRET.encode() not in data, f
            redacted |= b"missing/B04.tif?<redacted>" in data
    # The retry warnings of the worker that read the missing asset name its URL, signed, redacted.
    assert redacted
