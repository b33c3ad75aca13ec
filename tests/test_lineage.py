"""Lineage records: digests of inputs, and why an output must be redone."""

import numpy as np
import pyarrow as pa

from pw_ray import lineage, storage
from pw_ray.config import ChipSpec


def test_digest_is_canonical_over_key_order_tuples_and_numpy():
    a = {"b": (1, 2), "a": np.int64(3), "c": ChipSpec(size_px=32)}
    b = {"a": 3, "c": ChipSpec(size_px=32), "b": [1, 2]}
    assert lineage.digest(a) == lineage.digest(b)
    assert lineage.digest(a) != lineage.digest({**b, "a": 4})
    assert len(lineage.digest(a)) == 16


def test_changes_names_every_differing_path():
    old = {"stac": {"datetime": "2023", "max_items": 5}, "chips": {"size_px": 32}, "points": "x"}
    new = {"stac": {"datetime": "2024", "max_items": 5}, "chips": {"size_px": 48}, "points": "x", "extra": 1}
    assert lineage.changes(old, new) == ["chips.size_px", "extra", "stac.datetime"]
    assert lineage.changes(old, old) == []


def test_why_redo_says_what_changed_and_reuses_a_match():
    old = lineage.record({"stac": {"datetime": "2023-01-01/2023-12-31"}, "points": "a"})
    same = lineage.record({"points": "a", "stac": {"datetime": "2023-01-01/2023-12-31"}})
    new = lineage.record({"stac": {"datetime": "2024-01-01/2024-12-31"}, "points": "a"})
    assert lineage.why_redo(old, same) is None
    assert lineage.why_redo(old, new) == "stac.datetime changed"
    assert lineage.why_redo(None, new) == "not built yet"
    assert lineage.why_redo(old, same, force=True) == "--force"
    assert lineage.why_redo({"digest": "0"}, new) == "recorded without its inputs"
    many = lineage.record({f"k{i}": i + 1 for i in range(5)})
    assert lineage.why_redo(lineage.record({f"k{i}": i for i in range(5)}), many) == \
        "k0, k1, k2 and 2 more changed"


def test_parquet_lineage_round_trip_reads_the_footer(tmp_path):
    rec = lineage.record({"x": 1})
    t = lineage.attach(pa.table({"a": [1, 2]}).replace_schema_metadata({"other": "kept"}), rec)
    uri = str(tmp_path / "t.parquet")
    storage.write_table(t, uri)
    assert lineage.of_parquet(uri) == rec
    assert storage.read_table(uri).schema.metadata[b"other"] == b"kept"
    assert lineage.of_parquet(str(tmp_path / "missing.parquet")) is None
