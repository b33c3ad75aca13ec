"""Diversity measures on Ray Data: the distributed result equals one serial pass."""

import json

import numpy as np
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
    # Reads of 12 chips over files of 19-37 chips in row groups of 8: slices straddle row groups.
    div, codebook = J.diversity_table({**files, "empty": []}, bins=16, clusters=6, codebook_chips=20,
                                      codebook_pixels=16, seed=3, chips_per_read=12)
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


def test_shard_states_reduce_each_file_to_its_sets_state(tmp_path):
    files = write_shards(tmp_path, {"alpha": [("eu", 9)], "beta": [("sa", 7)]})
    codebook = D.fit_codebook(D.sample_pixels(S.read_pixels(pq.read_table(files["alpha"][0])), 16), 4)
    out = J.shard_states({"set": ["alpha", "beta"], "file": [files["alpha"][0], files["beta"][0]]}, 16, codebook,
                         chips_per_read=4)
    assert out["set"] == ["alpha", "beta"]
    for name, state in zip(out["set"], out["state"]):
        merged = D.DiversityAccumulator(16, codebook).merge_state(json.loads(state)).result()
        expected = serial(tmp_path, name, codebook)
        assert merged["n_chips"] == expected["n_chips"] and merged["landcover_entropy"] == expected["landcover_entropy"]
        assert merged["spectral_entropy_codebook"] == pytest.approx(expected["spectral_entropy_codebook"], rel=1e-12)


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
