"""A training worker streams its set: its memory does not grow with the size of the set.

The same one-worker, one-epoch run on a small set and on a set 11 times larger, the shards
written directly (random pixels, no ingest). The measure is the worker's heap as Ray defines
it (RSS − SHR, ``peak_heap_mb``): the worker reads the shards itself (``pw_ray.pretrain.loader``),
so everything it holds (decoded row groups, shuffle windows, batches ready ahead) is its own.

The shuffle window is fixed and the small set (11 files of one 128-chip row group each)
already fills the loader's read-ahead, so the buffers a worker legitimately holds are about
the same in both runs; 64 px chips keep a row group (10 MiB) small next to the tolerance.

The small set is long enough (44 steps) for the worker's heap to reach its plateau: the allocators
(Python's, Arrow's jemalloc, torch's) take a few tens of steps to settle, about 20-40 MiB above
where they start, and a run of 8 steps, compared with one of 88, measured that warm-up, not
the set (38-50 MiB apart with a 48 MiB tolerance, where 88 and 176 steps both peak at 685 MiB).
"""

from __future__ import annotations

import mmap
import sys
from pathlib import Path

import numpy as np
import pytest

from pw_ray.config import parse_config
from pw_ray.ingest import shards as S
from pw_ray.pretrain import trainer as T
from pw_ray.pretrain.metrics import heap_mb
from tests.conftest import TINY_CONFIG

SET = "mem"
SIZE_PX, PATCH_PX = 64, 16  # 80 KiB of pixels per chip, 48 tokens per chip for the tiny model
BATCH = 32
CHIPS_PER_FILE = 128
SMALL, LARGE = 1408, 5632  # 110 and 440 MiB of pixels
TOLERANCE_MB = 48.0


def _config(root: Path, n_chips: int) -> dict:
    """One worker, one epoch, a fixed shuffle buffer: only the number of chips differs."""
    return dict(
        TINY_CONFIG, root=str(root), tasks=[], evaluation={"include_zero": False},
        chips={"size_px": SIZE_PX, "chunk_size": CHIPS_PER_FILE},
        model={"preset": "tiny", "patch_size": PATCH_PX, "normalization": "fmow"},
        pretrain_sets=[{"name": SET, "region": "eu", "size": n_chips, "seed": 1}],
        train={"epochs": 1, "batch_size": BATCH, "num_workers": 1, "cpus_per_worker": 1, "shuffle_buffer": 64,
               "checkpoint_every": 10_000, "log_every": 1},
    )


def _write_set(root: Path, n_chips: int, bands: list[str]) -> float:
    """``n_chips`` random uint16 chips as Parquet shards of the set; returns their pixels' MiB."""
    rng = np.random.default_rng(n_chips)
    for chunk, start in enumerate(range(0, n_chips, CHIPS_PER_FILE)):
        n = min(CHIPS_PER_FILE, n_chips - start)
        pixels = rng.integers(0, 10_000, size=(n, len(bands), SIZE_PX, SIZE_PX), dtype=np.uint16)
        meta = [{"chip_id": f"{SET}-{start + i:06d}", "set": SET, "region": "eu"} for i in range(n)]
        S.write_parquet_shard(S.chips_table(meta, pixels, bands), S.parquet_uri(str(root), SET, "eu", chunk))
    return n_chips * len(bands) * SIZE_PX * SIZE_PX * 2 / 2**20


def _pretrain(root: Path, n_chips: int) -> tuple[dict, float]:
    """The run's summary (with the worker's peak memory) and the set's MiB of pixels."""
    cfg = parse_config(_config(root, n_chips))
    set_mb = _write_set(root, n_chips, list(cfg.chips.bands))
    return T.pretrain_set(cfg, SET), set_mb


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RSS − SHR is read from /proc")
def test_heap_counts_private_memory_but_not_shared_memory():
    """Shared pages (as the object store's, mapped into a worker) stay out of the heap."""
    size = 64 * 2**20
    before = heap_mb()
    private = np.ones(size, dtype=np.uint8)  # written: resident
    with_private = heap_mb()
    shared = mmap.mmap(-1, size, flags=mmap.MAP_SHARED)
    shared.write(b"\x01" * size)
    with_shared = heap_mb()
    shared.close()
    assert with_private - before == pytest.approx(64, abs=8)
    assert abs(with_shared - with_private) < 8
    del private


@pytest.mark.slow
def test_a_workers_heap_does_not_grow_with_the_size_of_the_set(ray_session, tmp_path):
    small, small_mb = _pretrain(tmp_path / "small", SMALL)
    large, large_mb = _pretrain(tmp_path / "large", LARGE)

    assert large_mb - small_mb >= 4 * TOLERANCE_MB, "holding the large set whole must exceed the tolerance"
    assert large["steps"] == LARGE // BATCH, "every chip of the large set went through the worker"
    grown = large["worker_peak_heap_mb"] - small["worker_peak_heap_mb"]
    assert grown < TOLERANCE_MB, (
        f"the worker's heap grew by {grown:.0f} MiB from a {small_mb:.0f} MiB set to a {large_mb:.0f} MiB one "
        f"(peak heap {small['worker_peak_heap_mb']:.0f} → {large['worker_peak_heap_mb']:.0f} MiB)")
