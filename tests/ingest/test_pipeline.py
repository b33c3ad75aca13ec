"""The ingest stage on Ray Data, on a tiny synthetic archive (no network)."""

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pw_ray import storage
from pw_ray.config import parse_config
from pw_ray.ingest import shards as S
from tests.conftest import TINY_CONFIG


def _cfg(root, **chips):
    d = dict(TINY_CONFIG, root=str(root), tasks=[])
    d["pretrain_sets"] = [{"name": "mix", "region": "global", "size": 30, "seed": 5}]
    d["chips"] = dict(TINY_CONFIG["chips"], **chips)
    return parse_config(d)


def _ingest(cfg):
    from pw_ray import experiment as E

    src = E.source(cfg)
    E.plan(cfg, src=src)
    E.ingest(cfg, src=src)
    return src


@pytest.fixture(scope="module")
def ingested(ray_session, tmp_path_factory):
    cfg = _cfg(tmp_path_factory.mktemp("ing") / "root")
    _ingest(cfg)
    return cfg


def test_manifest_has_one_row_per_point_with_a_status(ingested):
    m = pq.read_table(storage.join(ingested.root, "manifest", "mix.parquet")).to_pandas()
    assert len(m) == 30 and m["point_id"].is_unique
    assert set(m["status"]) <= {"ok", "skipped", "failed"}
    assert (m.loc[m["status"] != "ok", "reason"].str.len() > 0).all()
    assert (m["status"] == "ok").sum() >= 15


def test_shards_are_partitioned_by_region_with_uint16_chips(ingested):
    files = S.shard_files(ingested.root, "mix")
    assert files and all(f.startswith(f"{ingested.root}/shards/mix/parquet/") for f in files)
    t = S.read_set(ingested.root, "mix")
    px = S.read_pixels(t)
    assert px.dtype == np.uint16 and px.shape[1:] == (10, 32, 32)
    assert S.shard_bands(t) == ingested.chips.bands
    m = pq.read_table(storage.join(ingested.root, "manifest", "mix.parquet")).to_pandas()
    assert len(t) == (m["status"] == "ok").sum()
    for f in files:  # .../parquet/<region>/<file>: the folder and the column agree
        region = f.rsplit("/", 2)[1]
        assert set(storage.read_table(f, columns=["region"]).column("region").to_pylist()) == {region}


def test_chips_respect_cloud_and_nodata_limits(ingested):
    t = S.read_set(ingested.root, "mix", columns=["cloud_fraction", "nodata_fraction", "baseline", "offset_applied"]).to_pandas()
    assert (t["cloud_fraction"] <= 0.3 + 1e-6).all()
    assert (t["nodata_fraction"] <= 0.1 + 1e-6).all()
    new = t["baseline"].astype(float) >= 4.0
    assert (t.loc[new, "offset_applied"] == -1000).all() and (t.loc[~new, "offset_applied"] == 0).all()


def test_plain_pyarrow_reads_pixels_back(ingested):
    f = S.shard_files(ingested.root, "mix")[0]
    t = pq.read_table(f)
    shape = json.loads(t.schema.metadata[b"pw_ray.shape"])
    col = t.column("pixels").combine_chunks()  # the recipe of the README, "Shard format"
    n = int(np.prod(shape))
    px = np.frombuffer(col.buffers()[1], "<u2")[col.offset * n:][:len(col) * n].reshape(-1, *shape)
    assert px.shape == (len(t), 10, 32, 32)
    np.testing.assert_array_equal(px, S.read_pixels(t))
    assert px.max() > 0
    assert pq.ParquetFile(f).metadata.row_group(0).column(0).compression == "ZSTD"


def test_webdataset_tars_hold_the_same_chips(ingested):
    import webdataset as wds

    f = S.shard_files(ingested.root, "mix")[0]
    t = pq.read_table(f)
    _, region, chunk = f.rsplit("/", 1)[1].removesuffix(".parquet").rsplit("-", 2)
    tar = S.wds_uri(ingested.root, "mix", region, int(chunk))
    assert tar == f"{ingested.root}/shards/mix/wds/mix-{region}-{chunk}.tar"
    samples = list(wds.WebDataset(tar, shardshuffle=False).decode())
    assert len(samples) == len(t)
    first = samples[0]
    assert first["json"]["chip_id"] == t.column("chip_id")[0].as_py()
    np.testing.assert_array_equal(first["npy"], S.read_pixels(t)[0])


def test_rerun_reuses_every_chunk_and_changes_nothing(ingested, ray_session):
    from pw_ray import experiment as E
    from pw_ray.ingest.pipeline import run_ingest

    before = {f: storage.read_bytes(f) for f in S.shard_files(ingested.root, "mix")}
    src = E.source(ingested)
    pts = storage.read_table(storage.join(ingested.root, "points", "mix.parquet")).to_pandas()
    s = run_ingest(ingested.root, "mix", pts, src.searcher, src.adapter, ingested.chips, src.landcover)
    assert s.chunks_written == 0 and s.chunks_reused == len(before)
    assert not any(s.stage_s.values()) and s.stages_line() == "no chunk written"
    # One timed task per chunk on the plain-task shard phase (reused chunks are checked in a task too).
    st = s.shard_tasks
    assert st["tasks"] == len(before) == len(st["task_times"]) and 1 <= st["workers"] <= 2 and st["slots"] == 2
    assert all(t.start <= t.end and t.cpu_s >= 0 for t in st["task_times"]) and st["wall_s"] > 0
    assert "task_times" not in s.record()["shard_tasks"] and json.dumps(s.record())
    assert {f: storage.read_bytes(f) for f in S.shard_files(ingested.root, "mix")} == before


def test_lost_chunk_is_rewritten_identically(ingested, ray_session):
    from pw_ray import experiment as E
    from pw_ray.ingest.pipeline import run_ingest

    files = S.shard_files(ingested.root, "mix")
    victim = files[0]
    original = storage.read_table(victim)
    storage.remove(victim)
    src = E.source(ingested)
    pts = storage.read_table(storage.join(ingested.root, "points", "mix.parquet")).to_pandas()
    s = run_ingest(ingested.root, "mix", pts, src.searcher, src.adapter, ingested.chips, src.landcover)
    assert s.chunks_written == 1
    # The one task's time, by stage: every stage ran.
    assert list(s.stage_s) == ["read", "landcover", "encode", "write"]
    assert all(v > 0 for v in s.stage_s.values()), s.stage_s
    assert s.stages_line().startswith("read ") and "land cover" in s.stages_line()
    again = storage.read_table(victim)
    assert again.column("chip_id").to_pylist() == original.column("chip_id").to_pylist()
    np.testing.assert_array_equal(S.read_pixels(again), S.read_pixels(original))


def test_same_config_gives_same_chips(ingested, ray_session, tmp_path):
    other = _cfg(tmp_path / "again")
    _ingest(other)
    a, b = S.read_set(ingested.root, "mix"), S.read_set(other.root, "mix")
    assert a.column("chip_id").to_pylist() == b.column("chip_id").to_pylist()
    np.testing.assert_array_equal(S.read_pixels(a), S.read_pixels(b))


def _manifest_ok(cfg, region=None):
    m = pq.read_table(storage.join(cfg.root, "manifest", "mix.parquet")).to_pandas()
    m = m[m["status"] == "ok"]
    return sorted(m["chip_id"] if region is None else m.loc[m["region"] == region, "chip_id"])


def _readers(ray_session, cache):
    """Each reader a new user reaches for first: folder → DataFrame (chip_id, region)."""
    import pandas as pd
    import ray

    out = {
        "pyarrow": lambda d: pq.read_table(d, columns=["chip_id", "region"]).to_pandas(),
        "pandas": lambda d: pd.read_parquet(d, columns=["chip_id", "region"]),
        "ray": lambda d: ray.data.read_parquet(d).select_columns(["chip_id", "region"]).to_pandas(),
    }
    try:
        import datasets
    except ImportError:
        return out
    out["datasets"] = lambda d: datasets.load_dataset("parquet", data_dir=d, split="train", cache_dir=str(cache),
                                                      columns=["chip_id", "region"]).to_pandas()
    return out


@pytest.mark.parametrize("reader", ["pyarrow", "pandas", "ray", "datasets"])
def test_a_set_and_a_region_read_as_one_dataset(ingested, ray_session, tmp_path, reader):
    """``shards/<set>/parquet`` is the whole set and ``…/parquet/<r>`` one region, in one call of
    each reader, the ``region`` column intact (the tars, in ``shards/<set>/wds``, never in the way)."""
    readers = _readers(ray_session, tmp_path / "hf-cache")
    if reader not in readers:
        if os.environ.get("CI"):
            pytest.fail("datasets not installed in CI: install the dev extra")
        pytest.skip("the `datasets` package is not installed (part of the dev extra)")
    read = readers[reader]
    assert list((storage.to_local_dir(ingested.root) / "shards" / "mix" / "wds").glob("*.tar"))
    whole = read(f"{ingested.root}/shards/mix/parquet")
    assert sorted(whole["chip_id"]) == _manifest_ok(ingested)
    regions = sorted({str(r) for r in whole["region"]})
    assert len(regions) >= 2
    region = regions[0]
    part = read(f"{ingested.root}/shards/mix/parquet/{region}")
    assert {str(r) for r in part["region"]} == {region}
    assert sorted(part["chip_id"]) == _manifest_ok(ingested, region)


def test_a_root_in_the_older_layout_is_read_and_moved_on_rerun(ingested, ray_session, tmp_path):
    """Shards written as ``shards/<set>/region=<r>/`` (before the layout changed) are still read,
    and the next ingest reuses every chunk and moves it to ``parquet/<r>/`` unchanged."""
    import shutil

    from pw_ray import experiment as E
    from pw_ray.ingest.pipeline import run_ingest

    root = tmp_path / "old"
    shutil.copytree(storage.to_local_dir(ingested.root), root)
    set_dir = root / "shards" / "mix"
    for region_dir in sorted((set_dir / "parquet").iterdir()):
        region_dir.rename(set_dir / f"region={region_dir.name}")
    (set_dir / "parquet").rmdir()
    old_files = S.shard_files(str(root), "mix")
    assert old_files and all("/region=" in f for f in old_files)
    before = S.read_set(ingested.root, "mix")
    assert S.read_set(str(root), "mix").equals(before)

    src = E.source(ingested)
    pts = storage.read_table(storage.join(str(root), "points", "mix.parquet")).to_pandas()
    s = run_ingest(str(root), "mix", pts, src.searcher, src.adapter, ingested.chips, src.landcover)
    assert s.chunks_written == 0 and s.chunks_reused == len(old_files)
    assert not list(set_dir.glob("region=*/*"))
    assert [f.removeprefix(str(root)) for f in S.shard_files(str(root), "mix")] == \
        [f.removeprefix(ingested.root) for f in S.shard_files(ingested.root, "mix")]
    assert S.read_set(str(root), "mix").equals(before)
