import os

import pyarrow as pa

from pw_ray import storage


def test_join_keeps_uri_scheme():
    assert storage.join("s3://bucket/root/", "shards", "/eu/") == "s3://bucket/root/shards/eu"
    assert storage.join("/data", "a", "b.parquet") == "/data/a/b.parquet"


def test_write_bytes_is_atomic_and_leaves_no_temp_files(tmp_path):
    uri = str(tmp_path / "deep" / "dir" / "f.bin")
    storage.write_bytes(uri, b"one")
    storage.write_bytes(uri, b"two")
    assert storage.read_bytes(uri) == b"two"
    assert os.listdir(tmp_path / "deep" / "dir") == ["f.bin"]


def test_table_roundtrip_and_listdir(tmp_path):
    t = pa.table({"a": [1, 2, 3]})
    storage.write_table(t, str(tmp_path / "x" / "t.parquet"))
    assert storage.read_table(str(tmp_path / "x" / "t.parquet")).column("a").to_pylist() == [1, 2, 3]
    assert storage.listdir(str(tmp_path), recursive=True, suffix=".parquet") == [str(tmp_path / "x" / "t.parquet")]
    assert storage.listdir(str(tmp_path / "missing")) == []


def test_exists_and_remove(tmp_path):
    uri = str(tmp_path / "f.txt")
    assert not storage.exists(uri)
    storage.write_text(uri, "hi")
    assert storage.exists(uri) and storage.read_text(uri) == "hi"
    storage.remove(uri)
    assert not storage.exists(uri)
