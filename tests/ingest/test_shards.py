"""Shard layout: the binary ``pixels`` column, its plain-numpy read-back, and the older list layout."""

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pw_ray.ingest import shards as S

BANDS = ["B02", "B03", "B04"]


def _meta(n):
    return [dict(chip_id=f"c{i}", set="s", point_id=f"p{i}", lon=1.0, lat=2.0, region="eu") for i in range(n)]


def _pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 65535, (n, 3, 8, 8), dtype=np.uint16)


def test_roundtrip_through_parquet(tmp_path):
    px = _pixels(7)
    uri = str(tmp_path / "a.parquet")
    S.write_parquet_shard(S.chips_table(_meta(7), px, BANDS), uri, row_group_size=3)
    t = pq.read_table(uri)
    assert pa.types.is_fixed_size_binary(t.schema.field("pixels").type)
    assert t.schema.field("pixels").type.byte_width == 3 * 8 * 8 * 2
    np.testing.assert_array_equal(S.read_pixels(t), px)
    assert S.shard_bands(t) == BANDS and json.loads(t.schema.metadata[b"pw_ray.shape"]) == [3, 8, 8]
    md = pq.ParquetFile(uri).metadata
    assert md.num_row_groups == 3
    col = md.row_group(0).column(t.schema.get_field_index("pixels"))
    assert col.compression == "ZSTD" and not col.is_stats_set and not col.has_dictionary_page


def test_slices_and_chunked_columns_read_the_right_chips():
    px = _pixels(10, seed=1)
    t = S.chips_table(_meta(10), px, BANDS)
    np.testing.assert_array_equal(S.read_pixels(t.slice(3, 4)), px[3:7])
    both = pa.concat_tables([t.slice(0, 4), t.slice(6, 4)])
    assert both.column("pixels").num_chunks == 2
    np.testing.assert_array_equal(S.read_pixels(both), np.concatenate([px[:4], px[6:]]))


def test_the_older_list_layout_is_still_read():
    px = _pixels(4, seed=2)
    t = S.chips_table(_meta(4), px, BANDS)
    flat = pa.array(px.reshape(-1), type=pa.uint16())
    old = t.set_column(t.schema.get_field_index("pixels"), "pixels", pa.FixedSizeListArray.from_arrays(flat, 3 * 64))
    buf = io.BytesIO()
    pq.write_table(old, buf)
    np.testing.assert_array_equal(S.read_pixels(pq.read_table(pa.BufferReader(buf.getvalue()))), px)


def test_bad_pixels_are_refused():
    with pytest.raises(ValueError, match="uint16"):
        S.chips_table(_meta(2), np.zeros((2, 3, 8, 8), np.float32), BANDS)
    with pytest.raises(ValueError, match="metadata rows"):
        S.chips_table(_meta(3), _pixels(2), BANDS)


def test_parquet_and_tars_live_in_separate_folders_per_set(tmp_path):
    root = str(tmp_path)
    assert S.parquet_uri(root, "s", "eu", 3) == f"{root}/shards/s/parquet/eu/s-eu-00003.parquet"
    assert S.parquet_dir(root, "s") == f"{root}/shards/s/parquet"
    assert S.parquet_dir(root, "s", "eu") == f"{root}/shards/s/parquet/eu"
    assert S.wds_uri(root, "s", "eu", 3) == f"{root}/shards/s/wds/s-eu-00003.tar"


def _region_table(region, n, seed):
    meta = [dict(m, chip_id=f"{region}-{m['chip_id']}", region=region) for m in _meta(n)]
    return S.chips_table(meta, _pixels(n, seed), BANDS)


def _legacy_uri(root, region, chunk):
    return f"{root}/shards/s/region={region}/s-{region}-{chunk:05d}.parquet"


def test_the_older_region_key_layout_is_still_listed_and_read(tmp_path):
    root = str(tmp_path)
    S.write_parquet_shard(_region_table("eu", 2, 0), _legacy_uri(root, "eu", 0))
    S.write_parquet_shard(_region_table("af", 3, 1), _legacy_uri(root, "af", 0))
    S.write_parquet_shard(_region_table("eu", 4, 2), S.parquet_uri(root, "s", "eu", 1))
    S.write_wds_shard(_region_table("eu", 2, 0), S.wds_uri(root, "s", "eu", 0))
    assert S.shard_files(root, "s") == [_legacy_uri(root, "af", 0), _legacy_uri(root, "eu", 0),
                                        S.parquet_uri(root, "s", "eu", 1)]
    t = S.read_set(root, "s", columns=["chip_id", "region"])
    assert t.column("region").to_pylist() == ["af"] * 3 + ["eu"] * 6
    # A chunk in both places (a move seen half-way) is listed once, from the new place.
    S.write_parquet_shard(_region_table("af", 3, 1), S.parquet_uri(root, "s", "af", 0))
    assert S.shard_files(root, "s")[0] == S.parquet_uri(root, "s", "af", 0)
    assert len(S.read_set(root, "s")) == 9


def test_adopting_the_older_layout_moves_files_unchanged(tmp_path):
    root = str(tmp_path)
    eu = _region_table("eu", 2, 0)
    S.write_parquet_shard(eu, _legacy_uri(root, "eu", 0))
    S.write_parquet_shard(_region_table("af", 3, 1), _legacy_uri(root, "af", 0))
    S.write_parquet_shard(_region_table("af", 3, 1), S.parquet_uri(root, "s", "af", 0))  # already moved
    raw = (tmp_path / "shards" / "s" / "region=eu" / "s-eu-00000.parquet").read_bytes()
    assert S.adopt_legacy_layout(root, "s") == 1
    assert not list((tmp_path / "shards" / "s").glob("region=*/*"))
    assert S.shard_files(root, "s") == [S.parquet_uri(root, "s", "af", 0), S.parquet_uri(root, "s", "eu", 0)]
    assert (tmp_path / "shards" / "s" / "parquet" / "eu" / "s-eu-00000.parquet").read_bytes() == raw
    assert S.adopt_legacy_layout(root, "s") == 0
    whole = pq.read_table(S.parquet_dir(root, "s"))
    assert sorted(whole.column("chip_id").to_pylist()) == [f"af-c{i}" for i in range(3)] + ["eu-c0", "eu-c1"]


def test_a_write_killed_mid_way_is_hidden_from_folder_readers(tmp_path, monkeypatch):
    """storage.write_bytes' temp file starts with a dot: pyarrow (and pandas, Ray Data, datasets)
    skip it when reading the folder, and shard_files and remove_partial still know it."""
    from pw_ray import storage

    root = str(tmp_path)
    S.write_parquet_shard(_region_table("eu", 2, 0), S.parquet_uri(root, "s", "eu", 0))

    def killed(src, dst):
        raise KeyboardInterrupt("killed before the rename")

    monkeypatch.setattr(storage.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        S.write_parquet_shard(_region_table("eu", 1, 1), S.parquet_uri(root, "s", "eu", 1))
    monkeypatch.undo()
    (left,) = [p for p in (tmp_path / "shards" / "s" / "parquet" / "eu").iterdir() if S.TMP_MARK in p.name]
    assert left.name.startswith(".s-eu-00001.parquet.tmp-")
    assert pq.read_table(S.parquet_dir(root, "s")).num_rows == 2
    assert S.shard_files(root, "s") == [S.parquet_uri(root, "s", "eu", 0)]
    assert S.remove_partial(root, "s") == 1 and not left.exists()


def test_webdataset_tar_is_deterministic_and_read_by_webdataset(tmp_path):
    import webdataset as wds

    px = _pixels(5)
    meta = _meta(5)
    meta[0]["chip_id"] = "europe-eu-000001.S2B_MSIL2A_20230614T103629.0"  # dots: WebDataset keys have none
    table = S.chips_table(meta, px, BANDS)
    data = S.webdataset_bytes(table)
    assert S.webdataset_bytes(table) == data  # a rerun writes the same bytes
    (tmp_path / "a.tar").write_bytes(data)
    samples = list(wds.WebDataset(str(tmp_path / "a.tar"), shardshuffle=False).decode())
    assert [s["__key__"] for s in samples] == ["europe-eu-000001_S2B_MSIL2A_20230614T103629_0",
                                               "c1", "c2", "c3", "c4"]
    assert [s["json"]["chip_id"] for s in samples] == [m["chip_id"] for m in meta]
    assert all(s["json"]["bands"] == BANDS for s in samples)
    np.testing.assert_array_equal(np.stack([s["npy"] for s in samples]), px)


def test_writing_a_webdataset_tar_does_not_import_torch():
    # Why webdataset_bytes is hand-written: webdataset's own writer imports torch (+~500 MB per
    # ingest worker, bench/webdataset_writer.py).
    import subprocess
    import sys

    code = ("import sys, numpy as np\n"
            "from pw_ray.ingest import shards as S\n"
            "t = S.chips_table([dict(chip_id='c0')], np.zeros((1, 2, 4, 4), np.uint16), ['B02', 'B03'])\n"
            "assert len(S.webdataset_bytes(t)) > 0\n"
            "print(sorted(m for m in ('torch', 'webdataset') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
