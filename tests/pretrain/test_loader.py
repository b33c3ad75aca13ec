"""The per-worker shard reader: every chip once per epoch, seeded per-epoch order, exact start batch.

Fixture shards are written with the project's shard writer; every chip's pixels hold its id
(chip i is filled with the value i), so a batch says exactly which chips it holds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pw_ray.ingest import shards as S
from pw_ray.pretrain import loader as L

SET = "ld"
SHAPE = (2, 4, 4)
FILE_CHIPS = (10, 7, 13, 4, 9)  # 43 chips; row groups of 4 chips: 3, 2, 4, 1 and 3 per file
ROW_GROUP = 4


def _write(root, file_chips=FILE_CHIPS, shape=SHAPE) -> list[str]:
    """Shards of ``file_chips`` chips each under ``root`` (a path or a URI); chip i holds the value i."""
    first = 0
    for chunk, n in enumerate(file_chips):
        ids = np.arange(first, first + n)
        pixels = np.broadcast_to(ids[:, None, None, None], (n, *shape)).astype(np.uint16)
        meta = [{"chip_id": f"c{i}"} for i in ids]
        table = S.chips_table(meta, np.ascontiguousarray(pixels), ["B02", "B03", "B04", "B08"][:shape[0]])
        S.write_parquet_shard(table, S.parquet_uri(str(root), SET, "eu", chunk), row_group_size=ROW_GROUP)
        first += n
    return S.shard_files(str(root), SET)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return L.read_catalog(_write(tmp_path_factory.mktemp("shards")))


def _ids(batch) -> list[int]:
    """The chip ids in a (B, C, H, W) batch (each chip is filled with its id)."""
    b = batch.numpy()
    assert (b == b[:, :1, :1, :1]).all(), "a chip's pixels were mixed with another's"
    return b[:, 0, 0, 0].astype(int).tolist()


def _epoch(catalog, **kw) -> list[list[int]]:
    kw = {"batch_size": 4, "seed": 7, "epoch": 0, "shuffle_chips": 8, **kw}
    return [_ids(b) for b in L.ChipStream(catalog, **kw)]


def test_catalog_holds_every_files_row_groups_and_the_chip_shape(catalog):
    assert catalog.shape == SHAPE
    assert catalog.row_groups == ((4, 4, 2), (4, 3), (4, 4, 4, 1), (4,), (4, 4, 1))
    assert catalog.n_chips == sum(FILE_CHIPS)
    assert L.ShardCatalog.from_dict(catalog.to_dict()) == catalog


def test_catalog_refuses_files_of_another_chip_shape(tmp_path):
    uris = _write(tmp_path / "a", (4,), SHAPE)
    other = _write(tmp_path / "b", (4,), (2, 8, 8))
    with pytest.raises(ValueError, match="shape \\[2, 8, 8\\]"):
        L.read_catalog(uris + other)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_read_disjoint_equal_shares_that_cover_the_set(catalog, world):
    per_rank = catalog.n_chips // world
    shares = [_epoch(catalog, rank=r, world=world, batch_size=1) for r in range(world)]
    chips = [sum(s, []) for s in shares]
    assert [len(c) for c in chips] == [per_rank] * world
    seen = sum(chips, [])
    assert len(set(seen)) == len(seen) == per_rank * world
    assert set(seen) <= set(range(catalog.n_chips))


def test_batches_hold_whole_chips_and_drop_the_last_partial_batch(catalog):
    batches = _epoch(catalog, batch_size=5)  # 43 chips: 8 batches, 3 chips left out
    assert [len(b) for b in batches] == [5] * 8
    assert len(set(sum(batches, []))) == 40
    assert len(L.ChipStream(catalog, batch_size=5, seed=7, epoch=0)) == 8


def test_every_epoch_draws_a_new_file_order_and_chip_order_from_the_seed(catalog):
    e0, e1 = _epoch(catalog, epoch=0), _epoch(catalog, epoch=1)
    assert e0 == _epoch(catalog, epoch=0), "the same (seed, epoch) gives the same batches"
    assert e0 != e1 and sorted(sum(e0, [])) != sum(e0, [])
    assert e0 != _epoch(catalog, epoch=0, seed=8)
    orders = {tuple(L.file_order(len(FILE_CHIPS), 7, e)) for e in range(6)}
    assert len(orders) > 1


def test_chips_are_shuffled_within_windows_and_read_in_order_without_one(catalog):
    pieces = L.epoch_pieces(catalog.row_groups, 7, 0)
    reading_order = []  # chip ids in the order the pieces hold them
    starts = np.cumsum((0,) + FILE_CHIPS)
    ends = {f: np.cumsum((0,) + catalog.row_groups[f]) for f in range(len(FILE_CHIPS))}
    for p in pieces:
        first = starts[p.file] + ends[p.file][p.row_group]
        reading_order += list(range(first + p.start, first + p.stop))
    unshuffled = sum(_epoch(catalog, shuffle_chips=0, batch_size=1), [])
    assert unshuffled == reading_order
    shuffled = sum(_epoch(catalog, shuffle_chips=8, batch_size=1), [])
    assert shuffled != reading_order
    # local: a chip leaves within its window, never before the window's first piece is read
    for first, end in L.shuffle_windows(pieces, 8):
        lo = sum(p.n for p in pieces[:first])
        hi = lo + sum(p.n for p in pieces[first:end])
        assert hi - lo >= 8 or end == len(pieces)
        assert sorted(shuffled[lo:hi]) == sorted(reading_order[lo:hi])


@pytest.mark.parametrize("rank,world", [(0, 1), (1, 2)])
def test_a_stream_started_at_batch_k_yields_exactly_batches_k_on(catalog, rank, world):
    full = _epoch(catalog, rank=rank, world=world, batch_size=3, epoch=2)
    for k in range(len(full) + 1):
        assert _epoch(catalog, rank=rank, world=world, batch_size=3, epoch=2, start_batch=k) == full[k:]


def test_start_batch_beyond_the_epoch_is_refused(catalog):
    with pytest.raises(ValueError, match="start_batch must be in \\[0, 10\\]"):
        L.ChipStream(catalog, batch_size=4, seed=7, epoch=0, start_batch=11)


def test_batches_a_consumer_keeps_are_never_overwritten(catalog):
    kept = list(L.ChipStream(catalog, batch_size=2, seed=7, epoch=0, prefetch_batches=1))
    ids = [_ids(b) for b in kept]
    assert len(set(sum(ids, []))) == 42, "every kept batch still holds its own chips"


def test_dropped_batch_buffers_are_reused(catalog):
    stream = L.ChipStream(catalog, batch_size=2, seed=7, epoch=0, prefetch_batches=1)
    addresses = set()
    for batch in stream:
        addresses.add(batch.data_ptr())
    assert len(addresses) <= 1 + 3, "one buffer per batch in flight, not one per batch"


def test_leaving_early_stops_the_reading_thread(catalog):
    stream = L.ChipStream(catalog, batch_size=2, seed=7, epoch=0)
    with stream:
        for _ in stream:
            break
    assert stream._thread is not None and not stream._thread.is_alive()


def test_a_missing_shard_fails_the_iteration_naming_it(tmp_path):
    uris = _write(tmp_path, (8, 8))
    cat = L.read_catalog(uris)
    Path(uris[1]).unlink()
    with pytest.raises(FileNotFoundError, match="ld-eu-00001"):
        list(L.ChipStream(cat, batch_size=4, seed=0, epoch=0))


def test_a_truncated_shard_fails_the_catalog_naming_it_and_its_set(tmp_path):
    uris = _write(tmp_path, (8, 8))
    data = Path(uris[0]).read_bytes()
    Path(uris[0]).write_bytes(data[: len(data) // 2])
    with pytest.raises(S.CorruptShardError, match="ld-eu-00000.*set 'ld'"):
        L.read_catalog(uris, SET)


def test_the_stream_reads_shards_on_an_object_store(s3_root):
    cat = L.read_catalog(_write(s3_root, (10, 7)), SET)
    assert cat.uris[0].startswith("s3://") and cat.row_groups == ((4, 4, 2), (4, 3))
    chips = sum((_ids(b) for b in L.ChipStream(cat, batch_size=1, seed=3, epoch=1)), [])
    assert sorted(chips) == list(range(17))


def test_data_wait_warning_comes_once_per_episode_after_patience_windows():
    monitor = L.DataWaitMonitor(threshold=0.05, patience=3)
    shares = [0.2, 0.3, 0.04, 0.1, 0.2, 0.3, 0.4, 0.5, 0.01, 0.06, 0.06, 0.06]
    assert [monitor.update(s) for s in shares] == [False] * 5 + [True] + [False] * 5 + [True]
