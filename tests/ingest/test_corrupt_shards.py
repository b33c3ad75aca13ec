"""An unreadable shard (here: truncated, as a killed copy or a full disk leaves it) fails every reader
with an error that names the file, its set and the repair, instead of a bare ``ArrowInvalid``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pw_ray import storage
from pw_ray.config import parse_config
from pw_ray.ingest import shards as S
from tests.conftest import TINY_CONFIG

BANDS = ["B02", "B03", "B04", "B08"]


def _write_shards(root: str, set_name: str, chunks: int = 2, chips: int = 4) -> list[str]:
    rng = np.random.default_rng(0)
    uris = []
    for chunk in range(chunks):
        meta = [{"chip_id": f"{set_name}-{chunk}-{i}", "set": set_name, "point_id": f"p{chunk}-{i}", "region": "eu",
                 "biome": "temperate", "landcover": "tree"} for i in range(chips)]
        pixels = rng.integers(1, 5000, (chips, len(BANDS), 8, 8), dtype=np.uint16)
        uri = S.parquet_uri(root, set_name, "eu", chunk)
        S.write_parquet_shard(S.chips_table(meta, pixels, BANDS), uri)
        uris.append(uri)
    return uris


def _truncate(uri: str) -> None:
    data = storage.read_bytes(uri)
    storage.write_bytes(uri, data[: len(data) // 2])


def _assert_names_file_set_and_repair(err: BaseException, uri: str, set_name: str) -> None:
    text = str(err)
    assert isinstance(err, S.CorruptShardError), repr(err)
    assert uri in text and f"set {set_name!r}" in text and "pw-ray ingest" in text and "delete it" in text, text


def test_read_set_names_the_truncated_shard_and_its_set(tmp_path):
    root = str(tmp_path / "root")
    uris = _write_shards(root, "landcover")
    _truncate(uris[1])
    with pytest.raises(S.CorruptShardError) as e:
        S.read_set(root, "landcover", columns=["chip_id"])
    _assert_names_file_set_and_repair(e.value, uris[1], "landcover")


def test_read_set_on_s3_names_the_truncated_shard(s3_root):
    uris = _write_shards(s3_root, "europe")
    _truncate(uris[0])
    with pytest.raises(S.CorruptShardError) as e:
        S.read_set(s3_root, "europe")
    _assert_names_file_set_and_repair(e.value, uris[0], "europe")


def test_pretraining_reader_names_the_truncated_shard_before_streaming(tmp_path):
    from pw_ray.pretrain import trainer as T

    cfg = parse_config(dict(TINY_CONFIG, root=str(tmp_path / "root")))
    uris = _write_shards(cfg.root, "europe", chunks=3)
    assert T.shard_catalog(cfg, "europe").n_chips == 12  # all readable: 3 × 4 chips
    _truncate(uris[2])
    with pytest.raises(S.CorruptShardError) as e:
        T.shard_catalog(cfg, "europe")
    _assert_names_file_set_and_repair(e.value, uris[2], "europe")


def test_analyze_names_the_truncated_shard(tmp_path):
    from pw_ray import experiment as E

    cfg = parse_config(dict(TINY_CONFIG, root=str(tmp_path / "root")))
    uris = _write_shards(cfg.root, "europe")
    _truncate(uris[1])  # the first shard (the codebook sample) is fine: the footer check finds the second
    with pytest.raises(S.CorruptShardError) as e:
        E.analyze(cfg)
    _assert_names_file_set_and_repair(e.value, uris[1], "europe")


def test_report_names_the_truncated_shard(tmp_path):
    from pw_ray import experiment as E

    cfg = parse_config(dict(TINY_CONFIG, root=str(tmp_path / "root")))
    for s in cfg.pretrain_sets:
        storage.write_table(pa.table({"point_id": ["p"], "lon": [0.0], "lat": [45.0], "set": [s.name]}),
                            storage.join(cfg.root, "points", f"{s.name}.parquet"))
    uris = _write_shards(cfg.root, "europe", chunks=1)
    _truncate(uris[0])
    with pytest.raises(S.CorruptShardError) as e:
        E.report(cfg)
    _assert_names_file_set_and_repair(e.value, uris[0], "europe")
