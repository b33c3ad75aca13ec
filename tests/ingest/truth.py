"""The manifest is the truth: a check shared by the ingest tests."""

from __future__ import annotations

from collections import Counter

from pw_ray import storage
from pw_ray.ingest import shards as S


def assert_manifest_matches_shards(root: str, set_name: str) -> None:
    """Every ``ok`` manifest row is a chip in the shards, in the shard it names, and every chip
    in the shards has an ``ok`` row; no chip is stored twice."""
    m = storage.read_table(storage.join(root, "manifest", f"{set_name}.parquet")).to_pandas()
    ok = m[m["status"] == "ok"]
    stored: dict[str, str] = {}
    counts: Counter = Counter()
    for uri in S.shard_files(root, set_name):
        region, chunk = S.chunk_of(uri)
        for cid in storage.read_table(uri, columns=["chip_id"]).column("chip_id").to_pylist():
            stored[cid] = f"{region}/{chunk}"
            counts[cid] += 1
    dupes = [c for c, n in counts.items() if n > 1]
    assert not dupes, f"chips stored twice: {dupes[:5]}"
    assert set(ok["chip_id"]) == set(stored), (
        f"ok but not stored: {sorted(set(ok['chip_id']) - set(stored))[:5]}; "
        f"stored but not ok: {sorted(set(stored) - set(ok['chip_id']))[:5]}")
    assert dict(zip(ok["chip_id"], ok["shard"])) == stored
    assert m.loc[m["status"] != "ok", "shard"].isna().all()
