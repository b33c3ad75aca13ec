"""Diversity measures on Ray Data: the distributed result equals one serial pass."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pw_ray.analyze import diversity as D
from pw_ray.analyze import diversity_job as J
from pw_ray.ingest import shards as S

SHAPE = (4, 12, 12)
#: set → shard files as (region, chips); several files per set, several row groups per file.
LAYOUT = {"alpha": [("eu", 37), ("eu", 21), ("af", 30)], "beta": [("sa", 26), ("oc", 19)]}


def write_shards(root, layout=LAYOUT, seed=0, row_group_size=8, file_level=False) -> dict[str, list[str]]:
    """Shards under ``root`` for ``layout``; set name → its shard files (``shards.shard_files``).

    ``file_level``: every chip of file ``i`` (counted over all sets) holds the value 1000·(i+1),
    so a pixel tells which file it came from.
    """
    rng = np.random.default_rng(seed)
    i = 0
    for name, files in layout.items():
        for chunk, (region, n) in enumerate(files):
            if file_level:
                px = np.full((n, *SHAPE), 1000 * (i + 1), dtype=np.uint16)
            else:  # per chip its own spread, values past 10000 to exercise the clipping
                scale = rng.integers(50, 12000, (n, 1, 1, 1))
                px = (rng.random((n, *SHAPE)) * scale).astype(np.uint16)
            meta = [{"chip_id": f"{name}-{region}-{chunk}-{j}", "set": name, "region": region,
                     "biome": None if j % 5 == 0 else f"biome{rng.integers(3)}",
                     "landcover": f"lc{rng.integers(4)}"} for j in range(n)]
            S.write_parquet_shard(S.chips_table(meta, px, ["B02", "B03", "B04", "B08"]),
                                  S.parquet_uri(str(root), name, region, chunk), row_group_size)
            i += 1
    return {name: S.shard_files(str(root), name) for name in layout}


def serial(root, name, codebook, bins=16) -> dict:
    """Today's serial computation: one accumulator over the whole set."""
    t = S.read_set(str(root), name)
    acc = D.DiversityAccumulator(bins, codebook)
    acc.update(S.read_pixels(t), t.column("region").to_pylist(), t.column("biome").to_pylist(),
               t.column("landcover").to_pylist())
    return acc.result()


def test_ray_data_diversity_equals_the_serial_accumulator(ray_session, tmp_path):
    files = write_shards(tmp_path)
    # Batches of 16 over files of 19-37 chips in row groups of 8: batches straddle files and sets.
    div, codebook = J.diversity_table({**files, "empty": []}, bins=16, clusters=6, codebook_chips=20,
                                      codebook_pixels=16, seed=3, batch_size=16)
    assert codebook.shape == (6, SHAPE[0])
    assert div["pretrain_set"].tolist() == ["alpha", "beta", "empty"]
    empty = div.iloc[2]  # a set without shards: no chips, NaN measures
    assert empty["n_chips"] == 0 and np.isnan(empty["spectral_entropy_hist"])
    for row in div.iloc[:2].to_dict("records"):
        expected = serial(tmp_path, row["pretrain_set"], codebook)
        assert row["n_chips"] == expected["n_chips"] == sum(n for _, n in LAYOUT[row["pretrain_set"]])
        for key in ("continent_entropy", "biome_entropy", "landcover_entropy"):  # counts add: exact
            assert row[key] == expected[key]
        for key in ("spectral_entropy_hist", "spectral_entropy_codebook"):  # sums in another order
            assert row[key] == pytest.approx(expected[key], rel=1e-12)
    assert div.loc[0, "continent_entropy"] > 0 and div.loc[0, "spectral_entropy_codebook"] > 0


def test_batch_states_of_a_batch_straddling_two_sets_merge_to_each_sets_pass(tmp_path):
    files = write_shards(tmp_path, {"alpha": [("eu", 9)], "beta": [("sa", 7)]})
    tables = [pq.read_table(files[n][0]) for n in ("alpha", "beta")]
    batch = pa.concat_tables([t.select(J.COLUMNS) for t in tables])
    codebook = D.fit_codebook(D.sample_pixels(S.read_pixels(tables[0]), 16), 4)
    states = J.batch_states(batch, SHAPE, 16, codebook, ["alpha", "beta"]).to_pylist()
    assert [s["set"] for s in states] == ["alpha", "beta"]
    for s in states:
        merged = D.DiversityAccumulator(16, codebook).merge_state(json.loads(s["state"])).result()
        assert merged == serial(tmp_path, s["set"], codebook)


def test_batch_states_rejects_rows_of_an_unknown_set(tmp_path):
    files = write_shards(tmp_path, {"alpha": [("eu", 3)]})
    with pytest.raises(ValueError, match="'alpha'"):
        J.batch_states(pq.read_table(files["alpha"][0]).select(J.COLUMNS), SHAPE, 16, None, ["beta"])


def test_codebook_sample_is_seeded_and_sized_by_its_arguments(tmp_path):
    files = write_shards(tmp_path)["alpha"]  # 88 chips
    a = J.sample_codebook_pixels(files, chips=10, pixels_per_chip=5, seed=[1, 2])
    assert a.shape == (50, SHAPE[0]) and a.dtype == np.float32
    np.testing.assert_array_equal(a, J.sample_codebook_pixels(files, chips=10, pixels_per_chip=5, seed=[1, 2]))
    assert not np.array_equal(a, J.sample_codebook_pixels(files, chips=10, pixels_per_chip=5, seed=[1, 3]))
    # More chips asked than the set holds: every chip once.
    assert J.sample_codebook_pixels(files, chips=1000, pixels_per_chip=1, seed=0).shape == (88, SHAPE[0])


def test_codebook_sample_reads_only_drawn_files_and_row_groups(tmp_path, monkeypatch):
    layout = {"alpha": [("eu", 80), ("eu", 40), ("af", 40)]}  # row groups of 8: 10, 5 and 5 per file
    files = write_shards(tmp_path, layout, file_level=True)["alpha"]  # file i holds the value 1000·(i+1)
    reads = []
    real = pq.ParquetFile.read_row_group
    monkeypatch.setattr(pq.ParquetFile, "read_row_group",
                        lambda self, i, *a, **k: reads.append(i) or real(self, i, *a, **k))
    px = J.sample_codebook_pixels(files, chips=2, pixels_per_chip=2, seed=5, max_files=1)
    assert px.shape == (4, SHAPE[0]) and len(np.unique(px)) == 1  # one file drawn
    assert 1 <= len(reads) <= 2  # only the row groups of the two drawn chips, of 5 or 10 in the file
    # Across seeds, every file gets drawn: the sample is not stuck on the first shard.
    drawn = {float(np.unique(J.sample_codebook_pixels(files, 1, 1, seed=s, max_files=1))[0]) for s in range(20)}
    assert drawn == {1000.0, 2000.0, 3000.0}


def test_set_seed_depends_on_the_set_not_its_position():
    assert J.set_seed(0, "alpha") == J.set_seed(0, "alpha") != J.set_seed(0, "beta")
