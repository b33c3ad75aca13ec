"""Reruns on one root: outputs are reused only when the inputs that made them are unchanged.

Each test walks a pilot-to-production story on the tiny synthetic archive: change one thing,
rerun, and check that exactly what depends on it was redone (and said so), that nothing of the
old config stays in the set, and that the manifest equals what the shards hold.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pw_ray import experiment as E
from pw_ray import lineage, storage
from pw_ray.config import parse_config
from pw_ray.ingest import shards as S
from pw_ray.ingest.chunks import FAILED_KEY
from pw_ray.ingest.failures import FailureBudgetExceeded
from pw_ray.ingest.pipeline import run_ingest
from tests.conftest import TINY_CONFIG
from tests.ingest.truth import assert_manifest_matches_shards


def _cfg(root, size=20, stac=None, chips=None, tasks=()):
    d = dict(TINY_CONFIG, root=str(root), tasks=list(tasks))
    d["pretrain_sets"] = [{"name": "mix", "region": "global", "size": size, "seed": 5}]
    d["stac"] = {**TINY_CONFIG["stac"], **(stac or {})}
    d["chips"] = {**TINY_CONFIG["chips"], **(chips or {})}
    return parse_config(d)


def _points(cfg, name="mix"):
    return storage.read_table(E.points_uri(cfg, name)).to_pandas()


def _ingest_set(cfg, name="mix", **kw):
    src = E.source(cfg)
    return run_ingest(cfg.root, name, _points(cfg, name), src.searcher, src.adapter, cfg.chips, src.landcover,
                      **kw)


def _shard_lineages(cfg, name="mix"):
    return {u: lineage.of_parquet(u)["digest"] for u in S.shard_files(cfg.root, name)}


# ----------------------------------------------------------------------------- plan
def test_plan_replans_a_set_whose_size_changed_and_keeps_the_others(tmp_path, capsys):
    root = tmp_path / "root"
    cfg = _cfg(root, size=10)
    E.plan(cfg)
    assert len(_points(cfg)) == 10
    capsys.readouterr()
    E.plan(cfg)  # marked done: nothing to do
    grown = _cfg(root, size=20)
    E.plan(grown)
    out = capsys.readouterr().out
    assert "plan mix: pretrain_set.size changed → 20 points planned" in out
    assert len(_points(grown)) == 20
    E.plan(grown, force=True)
    assert "plan mix: --force → 20 points planned" in capsys.readouterr().out


def test_a_deleted_points_file_reenters_the_done_plan(tmp_path, capsys):
    cfg = _cfg(tmp_path / "root")
    E.plan(cfg)
    assert E.stage_done(cfg, "plan")
    storage.remove(E.points_uri(cfg, "mix"))
    assert not E.stage_done(cfg, "plan")
    E.plan(cfg)
    assert "plan mix: not built yet → 20 points planned" in capsys.readouterr().out
    assert E.stage_done(cfg, "plan")


def test_plan_reuses_points_whose_inputs_are_unchanged(tmp_path, capsys):
    root = tmp_path / "root"
    cfg = _cfg(root)
    E.plan(cfg)
    before = storage.read_bytes(E.points_uri(cfg, "mix"))
    # Another field of the config changes (the stage re-enters), the set's inputs do not.
    E.plan(_cfg(root, chips={"chunk_size": 8}))
    assert "plan mix: points reused (inputs unchanged)" in capsys.readouterr().out
    assert storage.read_bytes(E.points_uri(cfg, "mix")) == before


# ----------------------------------------------------------------------------- ingest
@pytest.fixture
def ingested(ray_session, tmp_path):
    cfg = _cfg(tmp_path / "root", size=30)
    E.plan(cfg)
    E.ingest(cfg)
    assert_manifest_matches_shards(cfg.root, "mix")
    return cfg


def test_changed_search_rebuilds_the_index_and_reuses_chunks_whose_chips_are_the_same(ingested, capsys):
    cfg = ingested
    files = _shard_lineages(cfg)
    capsys.readouterr()
    # A date range that still holds every scene: the index is rebuilt, it picks the same chips.
    later = _cfg(cfg.root, size=30, stac={"datetime": "2023-01-01/2023-12-30"})
    E.plan(later)
    E.ingest(later)
    out = capsys.readouterr().out
    assert "mix index: stac.datetime changed → rebuilt" in out
    assert f"mix shards: {len(files)} chunks reused, 0 written" in out
    assert _shard_lineages(later) == files
    s = _ingest_set(later)  # and again: nothing to do at all
    assert s.index_why == "" and s.chunks_written == 0 and s.chunks_reused == len(files)


def test_changed_chip_spec_rewrites_every_chunk_and_leaves_no_old_chip(ingested, capsys):
    small = _cfg(ingested.root, size=30, chips={"chunk_size": 2})  # many small chunks per region
    E.ingest(small)
    old = set(_shard_lineages(small).values())
    assert len(old) > 10
    capsys.readouterr()
    bigger = _cfg(ingested.root, size=30, chips={"chunk_size": 16, "resampling": "nearest"})
    E.ingest(bigger)
    out = capsys.readouterr().out
    assert "mix index: reused (its inputs are unchanged)" in out
    assert "chips.resampling changed" in out and "files of an earlier config removed" in out
    now = _shard_lineages(bigger)
    assert len(now) < len(old) and not old & set(now.values())
    assert all(S.chunk_of(u)[1] == 0 for u in now)  # one chunk per region now; the others are gone
    assert sorted(S.chunk_of(u) for u in S.wds_files(bigger.root, "mix")) == sorted(S.chunk_of(u) for u in now)
    assert_manifest_matches_shards(bigger.root, "mix")


def test_a_deleted_shard_reenters_the_done_stage_and_only_its_chunk_is_written(ingested, capsys):
    cfg = ingested
    assert E.stage_done(cfg, "ingest")
    victim = S.shard_files(cfg.root, "mix")[0]
    storage.remove(victim)  # e.g. a corrupt shard removed by hand, as the error message says
    assert not E.stage_done(cfg, "ingest")
    capsys.readouterr()
    E.ingest(cfg)
    out = capsys.readouterr().out
    n = len(S.shard_files(cfg.root, "mix"))
    assert f"mix shards: {n - 1} chunks reused, 1 written (1 not written yet)" in out
    assert storage.exists(victim) and E.stage_done(cfg, "ingest")
    assert_manifest_matches_shards(cfg.root, "mix")


def test_force_really_redoes_the_stage(ingested):
    s = _ingest_set(ingested, force=True)
    assert s.index_why == "--force"
    assert s.chunks_reused == 0 and s.chunks_written > 0 and s.chunk_whys == {"--force": s.chunks_written}


def test_lost_index_is_rebuilt_from_its_parts(ingested, monkeypatch):
    import pw_ray.ingest.pipeline as P

    cfg = ingested
    monkeypatch.setattr(P, "INDEX_PART", 8)  # several parts for 30 points
    s = _ingest_set(cfg, force=True)
    parts = storage.listdir(storage.join(cfg.root, "index", "_parts", "mix"), suffix=".parquet")
    assert len(parts) == len(P.spatial_batches(_points(cfg), 8)) >= 4  # whole search cells of ≤ 8 points
    index_before = storage.read_table(storage.join(cfg.root, "index", "mix.parquet")).to_pandas()
    # A driver killed before it wrote the index (after all parts but one): the rerun searches one part.
    storage.remove(storage.join(cfg.root, "index", "mix.parquet"))
    storage.remove(parts[1])
    s = _ingest_set(cfg)
    assert s.index_why == "not built yet" and s.chunks_written == 0
    index_after = storage.read_table(storage.join(cfg.root, "index", "mix.parquet")).to_pandas()
    assert index_after.equals(index_before)
    assert storage.exists(parts[1])


def _corrupt(path: Path) -> bytes:
    data = path.read_bytes()
    path.write_bytes(b"not a tiff at all" + data[:100])
    return data


def test_failed_scene_stays_failed_on_reuse_and_is_retried_only_when_asked(ingested):
    cfg = ingested
    m = storage.read_table(storage.join(cfg.root, "manifest", "mix.parquet")).to_pandas()
    victim_item = m.loc[m["status"] == "ok", "item_id"].iloc[0]
    victims = set(m.loc[(m["status"] == "ok") & (m["item_id"] == victim_item), "chip_id"])
    archive = Path(cfg.root) / "archive"
    band = next(p for p in archive.rglob("*B04*.tif") if victim_item in str(p))
    original = _corrupt(band)
    s = _ingest_set(cfg, force=True)  # the chunk is written with that scene's chips failed
    m = storage.read_table(storage.join(cfg.root, "manifest", "mix.parquet")).to_pandas()
    failed = m[m["chip_id"].isin(victims)]
    assert (failed["status"] == "failed").all() and (failed["failure"] == "permanent").all()
    assert failed["reason"].str.contains("not recognized as being in a supported file format").all()
    assert s.failed_permanent == len(victims)
    assert_manifest_matches_shards(cfg.root, "mix")

    band.write_bytes(original)  # fixed at the source, but permanent failures are not retried...
    s = _ingest_set(cfg)
    assert s.chunks_written == 0 and s.failed_permanent == len(victims)  # ...and a reused chunk still says so
    m = storage.read_table(storage.join(cfg.root, "manifest", "mix.parquet")).to_pandas()
    assert (m.loc[m["chip_id"].isin(victims), "status"] == "failed").all()
    assert_manifest_matches_shards(cfg.root, "mix")

    s = _ingest_set(cfg, retry_failed=True)  # ...unless asked
    assert s.chunks_written >= 1 and s.failed == 0 and "failed chips to retry" in " ".join(s.chunk_whys)
    assert_manifest_matches_shards(cfg.root, "mix")


def test_transient_failure_recorded_in_a_chunk_is_retried_on_the_next_run(ingested):
    cfg = ingested
    uri = S.shard_files(cfg.root, "mix")[0]
    t = pq.read_table(uri)
    lost = t.column("chip_id")[0].as_py()
    md = dict(t.schema.metadata)
    md[FAILED_KEY] = json.dumps([[lost, "RasterioIOError: HTTP response code: 503", "transient"]]).encode()
    storage.write_bytes(uri, S.parquet_bytes(t.slice(1).replace_schema_metadata(md)))  # as a flaky run left it
    s = _ingest_set(cfg)
    assert s.chunk_whys == {"1 failed chips to retry": 1} and s.failed == 0
    assert lost in pq.read_table(uri, columns=["chip_id"]).column("chip_id").to_pylist()
    assert_manifest_matches_shards(cfg.root, "mix")


def test_unreachable_stac_api_fails_the_stage_loudly(ray_session, tmp_path):
    cfg = _cfg(tmp_path / "root", size=10,
               stac={"kind": "api", "url": "http://127.0.0.1:9/stac", "retries": 0, "timeout_s": 2})
    E.plan(cfg)
    with pytest.raises(FailureBudgetExceeded) as err:
        E.ingest(cfg)
    msg = str(err.value)
    assert "mix: no chips produced (0/10 ok, 0 skipped, 10 failed)" in msg
    assert "most common reasons:" in msg and "(×10)" in msg
    assert not E.stage_done(cfg, "ingest")
    m = storage.read_table(storage.join(cfg.root, "manifest", "mix.parquet")).to_pandas()
    assert (m["status"] == "failed").all() and (m["failure"] == "transient").all()


def test_failure_budget_counts_failures_not_cloud_skips(tmp_path):
    from pw_ray.ingest.pipeline import IngestSummary

    ok = IngestSummary("eu", 100, 80, 17, 3, 1, 0)
    assert ok.budget_error(0.05) is None
    over = IngestSummary("eu", 100, 80, 10, 10, 1, 0, top_failures=[("E: x", 10)])
    assert over.budget_error(0.05).startswith("eu: 10/100 chips failed (10.0%)")
