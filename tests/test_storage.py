import os

import pyarrow as pa
import pytest

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


def test_truncated_parquet_names_the_file_and_the_repair(tmp_path):
    uri = str(tmp_path / "t.parquet")
    storage.write_table(pa.table({"a": list(range(100))}), uri)
    data = storage.read_bytes(uri)
    storage.write_bytes(uri, data[: len(data) // 2])
    with pytest.raises(storage.CorruptFileError) as e:
        storage.read_table(uri)
    assert uri in str(e.value) and "delete it and rerun" in str(e.value)
    with pytest.raises(storage.CorruptFileError, match="t.parquet"):
        storage.read_parquet_metadata(uri)


def test_cache_dir_is_the_folder_itself_when_local_and_per_root_when_remote(tmp_path, monkeypatch):
    monkeypatch.setenv("PW_RAY_CACHE_DIR", str(tmp_path / "cache"))
    assert storage.cache_dir(str(tmp_path / "root")) == tmp_path / "root"
    assert storage.cache_dir("s3://bucket/a/b") == tmp_path / "cache" / "s3" / "bucket" / "a" / "b"
    assert storage.cache_dir("s3://bucket/../x") == tmp_path / "cache" / "s3" / "bucket" / "x"


def test_fetch_hint_names_the_client_and_the_endpoint(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    assert storage.fetch_hint("s3://b/root/report") == (
        "aws s3 cp --recursive --endpoint-url http://127.0.0.1:9000 s3://b/root/report/ ./report/")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert storage.fetch_hint("s3://b/root/report/") == "aws s3 cp --recursive s3://b/root/report/ ./report/"
    assert storage.fetch_hint("gs://b/root/report") == "gsutil -m cp -r gs://b/root/report ./"
    assert storage.fetch_hint("/local/report") == ""


def test_bad_endpoint_setting_names_the_variable(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "ftp://nowhere")
    with pytest.raises(ValueError, match="AWS_ENDPOINT_URL_S3"):
        storage.filesystem("s3://bucket-for-bad-endpoint/x")


# --------------------------------------------------------------------------- on a real S3 API (moto)
def test_s3_bytes_text_and_tables_roundtrip(s3_root):
    storage.write_bytes(storage.join(s3_root, "a", "f.bin"), b"\x00\x01")
    storage.write_text(storage.join(s3_root, "a", "f.txt"), "héllo")
    storage.write_table(pa.table({"a": [1, 2, 3]}), storage.join(s3_root, "t.parquet"))
    assert storage.read_bytes(storage.join(s3_root, "a", "f.bin")) == b"\x00\x01"
    assert storage.read_text(storage.join(s3_root, "a", "f.txt")) == "héllo"
    assert storage.read_table(storage.join(s3_root, "t.parquet")).column("a").to_pylist() == [1, 2, 3]
    assert storage.read_parquet_metadata(storage.join(s3_root, "t.parquet")).num_rows == 3


def test_s3_listdir_returns_s3_uris_sorted(s3_root):
    for name in ("b/2.parquet", "b/1.parquet", "c.txt"):
        storage.write_text(storage.join(s3_root, name), name)
    assert storage.listdir(s3_root, recursive=True) == [
        f"{s3_root}/b/1.parquet", f"{s3_root}/b/2.parquet", f"{s3_root}/c.txt"]
    assert storage.listdir(s3_root) == [f"{s3_root}/c.txt"]
    assert storage.listdir(s3_root, recursive=True, suffix=".parquet") == [
        f"{s3_root}/b/1.parquet", f"{s3_root}/b/2.parquet"]
    assert storage.listdir(storage.join(s3_root, "missing")) == []


def test_s3_exists_and_remove_files_and_folders(s3_root):
    f = storage.join(s3_root, "d", "f.txt")
    assert not storage.exists(f) and not storage.exists(storage.join(s3_root, "d"))
    storage.write_text(f, "x")
    assert storage.exists(f) and storage.exists(storage.join(s3_root, "d"))
    storage.remove(f)
    assert not storage.exists(f)
    storage.write_text(storage.join(s3_root, "e", "1"), "1")
    storage.write_text(storage.join(s3_root, "e", "sub", "2"), "2")
    storage.remove(storage.join(s3_root, "e"))
    assert storage.listdir(storage.join(s3_root, "e"), recursive=True) == []
    storage.remove(storage.join(s3_root, "never-written"))  # nothing to do, no error


def test_s3_write_replaces_whole_and_a_failed_write_leaves_nothing(s3_root):
    uri = storage.join(s3_root, "x.bin")
    storage.write_bytes(uri, b"first version, longer")
    storage.write_bytes(uri, pa.py_buffer(b"second"))  # a pyarrow Buffer, as Parquet shards are written
    assert storage.read_bytes(uri) == b"second"
    bad = storage.join(s3_root, "bad.bin")
    with pytest.raises(TypeError):
        storage.write_bytes(bad, "not bytes")
    assert not storage.exists(bad)
    assert storage.listdir(s3_root) == [uri]  # no temp or marker objects beside it


def test_s3_missing_file_raises_file_not_found_naming_the_uri(s3_root):
    uri = storage.join(s3_root, "nope.parquet")
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        storage.read_table(uri)
    with pytest.raises(FileNotFoundError, match="nope.parquet"):
        storage.read_bytes(uri)


def test_s3_truncated_parquet_names_the_file(s3_root):
    uri = storage.join(s3_root, "t.parquet")
    storage.write_table(pa.table({"a": list(range(100))}), uri)
    storage.write_bytes(uri, storage.read_bytes(uri)[:50])
    with pytest.raises(storage.CorruptFileError, match=uri):
        storage.read_table(uri)


def test_s3_endpoint_from_aws_endpoint_url_s3_wins(s3_root, s3_server, monkeypatch):
    """pyarrow reads AWS_ENDPOINT_URL itself but not the service-specific AWS_ENDPOINT_URL_S3."""
    from tests.servers import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.url)
    storage.write_text(storage.join(s3_root, "via-s3-var.txt"), "ok")
    assert storage.read_text(storage.join(s3_root, "via-s3-var.txt")) == "ok"


def test_s3_check_writable_names_the_root_and_never_the_secret(s3_root, s3_server):
    from pw_ray.config import ConfigError, check_storage_root

    storage.check_writable(s3_root)
    assert storage.listdir(s3_root, recursive=True) == []  # the probe is removed
    with pytest.raises(ConfigError) as e:
        check_storage_root("s3://no-such-bucket-pwray/root")
    assert "s3://no-such-bucket-pwray/root" in str(e.value)
    assert s3_server.secret_key not in str(e.value)


def test_s3_upload_dir_copies_every_file(s3_root, tmp_path):
    (tmp_path / "rep" / "fig").mkdir(parents=True)
    (tmp_path / "rep" / "index.html").write_text("<html/>")
    (tmp_path / "rep" / "fig" / "a.png").write_bytes(b"png")
    out = storage.upload_dir(tmp_path / "rep", storage.join(s3_root, "report"))
    assert out == [f"{s3_root}/report/fig/a.png", f"{s3_root}/report/index.html"]
    assert storage.read_bytes(f"{s3_root}/report/fig/a.png") == b"png"
