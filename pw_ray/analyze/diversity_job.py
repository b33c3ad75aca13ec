"""The diversity measures of every pretraining set, computed by Ray Data over the shards.

Two passes, nothing per chip on the driver:

1. **Codebook.** One Ray task per set draws a seeded, bounded sample of the set's chips
   (:func:`sample_codebook_pixels`: at most ``max_files`` shard files chosen at random, then
   ``chips`` chips among their rows, read row group by row group, then ``pixels_per_chip``
   pixels of each). The driver pools the samples of all sets (256 × 64 = 16 384 spectra per
   set by default) and fits the shared k-means codebook on them.
2. **Measures.** One Ray Data pipeline over all the sets' shard files, one row per file:
   ``map_batches`` tasks on the cluster read their file slice by slice and reduce it to a
   :class:`DiversityAccumulator` state (:func:`shard_states`: category counts, sums of per-chip
   entropies). The driver adds the states up: counts add, sums add, so the merged result
   equals one serial pass (to float rounding of the sums).

   Why not ``read_parquet`` followed by ``map_batches``: in Ray 2.60 the Parquet read is not
   fused with the map, so every chip's pixels go through the object store between two tasks;
   ``bench/analyze.py`` measures both side by side (docs/benchmarks.md: fewer chips per CPU
   second and 2–3× the wall time for that design).

The math lives in :mod:`pw_ray.analyze.diversity`; this module only reads and wires.
"""

from __future__ import annotations

import json
import logging
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pw_ray import storage
from pw_ray.analyze import diversity as D
from pw_ray.ingest import shards as S

log = logging.getLogger(__name__)

#: The shard columns the measures need.
COLUMNS = ["pixels", "region", "biome", "landcover"]


def _parquet_file(uri: str) -> pq.ParquetFile:
    fs, path = storage.filesystem(uri)
    return pq.ParquetFile(path, filesystem=fs)


def set_seed(seed: int, set_name: str) -> list[int]:
    """A set's own seed for the codebook sample: stable when sets are added, removed or reordered."""
    return [int(seed), zlib.crc32(set_name.encode("utf-8"))]


# ----------------------------------------------------------------------------- codebook sample
def sample_codebook_pixels(files: Sequence[str], chips: int, pixels_per_chip: int, seed,
                           max_files: int = 16) -> np.ndarray:
    """Pixel spectra of a seeded, bounded sample of one set's chips → ``(M, C)`` float32, ×1e4.

    ``max_files`` of the set's shard files are drawn at random (``numpy`` generator seeded with
    ``seed``), then ``chips`` chips uniformly without replacement among their rows, then
    ``pixels_per_chip`` pixels of each (:func:`diversity.sample_pixels`). Only the footers of the
    drawn files and the row groups holding drawn chips are read, one row group at a time, so the
    cost is bounded by the sample, not by the set. Deterministic in (``files``, ``seed``).
    """
    if not files:
        return np.empty((0, 0), dtype=np.float32)
    rng = np.random.default_rng(seed)
    drawn = np.sort(rng.permutation(len(files))[:max_files])
    opened = {int(i): _parquet_file(files[i]) for i in drawn}  # footers only, until a row group is read
    parts = [(i, g, pf.metadata.row_group(g).num_rows) for i, pf in opened.items()
             for g in range(pf.metadata.num_row_groups)]  # (file, row group, rows in it)
    sizes = np.array([n for *_, n in parts], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    take = min(int(chips), int(starts[-1]))
    picks = np.sort(rng.choice(int(starts[-1]), take, replace=False))
    group_seeds = rng.integers(0, 2**32, len(parts))
    out = []
    for j, (i, g, _) in enumerate(parts):
        rows = picks[(picks >= starts[j]) & (picks < starts[j + 1])] - starts[j]
        if not len(rows):
            continue
        pf = opened[i]
        shape = S.footer_shape(pf.metadata)
        col = pf.read_row_group(g, columns=["pixels"]).column("pixels").take(pa.array(rows))
        out.append(D.sample_pixels(S.column_pixels(col, shape), pixels_per_chip, seed=int(group_seeds[j])))
    return np.concatenate(out)


def fit_shared_codebook(files_by_set: Mapping[str, Sequence[str]], clusters: int, chips_per_set: int,
                        pixels_per_chip: int, seed: int = 0) -> np.ndarray | None:
    """The k-means codebook of all sets, fitted on each set's :func:`sample_codebook_pixels`.

    The samples are drawn by one Ray task per set; the fit (bounded by the samples) runs here.
    None, with a warning, when the sets hold fewer than ``clusters`` sampled pixels.
    """
    import ray

    sample = ray.remote(num_cpus=1)(sample_codebook_pixels)
    refs = [sample.remote(list(files), chips_per_set, pixels_per_chip, set_seed(seed, name))
            for name, files in files_by_set.items() if files]
    pixels = [p for p in ray.get(refs) if len(p)]
    if not pixels or sum(len(p) for p in pixels) < clusters:
        log.warning("analyze: %d sampled pixels, fewer than analysis.spectral_clusters=%d: no codebook, "
                    "spectral_entropy_codebook is NaN", sum(len(p) for p in pixels), clusters)
        return None
    pooled = np.concatenate(pixels)
    log.info("analyze: fitting the %d-word spectral codebook on %d pixels from %d sets", clusters, len(pooled),
             len(pixels))
    return D.fit_codebook(pooled, clusters, seed=seed)


# ----------------------------------------------------------------------------- measures
def shard_states(batch: Mapping[str, Sequence], bins: int, codebook: np.ndarray | None,
                 chips_per_read: int = 128) -> dict[str, list]:
    """Shard files → one :meth:`DiversityAccumulator.state` each. The ``map_batches`` function.

    ``batch``: ``{"set": [...], "file": [...]}`` (set name, shard URI). Each file is read
    ``chips_per_read`` chips at a time (only the columns the measures need), so a task holds
    one slice of one file, whatever the file's size. Returns ``{"set": [...], "state": [JSON]}``.
    """
    out_sets, out_states = [], []
    for name, uri in zip(batch["set"], batch["file"]):
        pf = _parquet_file(str(uri))
        shape = S.footer_shape(pf.metadata)
        acc = D.DiversityAccumulator(bins, codebook)
        for rows in pf.iter_batches(batch_size=chips_per_read, columns=COLUMNS):
            acc.update(S.column_pixels(rows.column("pixels"), shape), rows.column("region").to_pylist(),
                       rows.column("biome").to_pylist(), rows.column("landcover").to_pylist())
        out_sets.append(str(name))
        out_states.append(json.dumps(acc.state()))
    return {"set": out_sets, "state": out_states}


def accumulate_sets(files_by_set: Mapping[str, Sequence[str]], bins: int, codebook: np.ndarray | None,
                    chips_per_read: int = 128) -> dict[str, D.DiversityAccumulator]:
    """Every set's accumulator, from one Ray Data pipeline over all their shard files.

    One dataset row (and block) per shard file; ``map_batches`` tasks read and reduce their
    file (:func:`shard_states`), so pixels never pass through the object store or the driver:
    only one small state per file comes back, and the driver adds them up.
    """
    import ray

    sets = list(files_by_set)
    accs = {name: D.DiversityAccumulator(bins, codebook) for name in sets}
    items = [{"set": name, "file": f} for name in sets for f in files_by_set[name]]
    if not items:
        return accs
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(shard_states, batch_size=1, num_cpus=1,
                        fn_kwargs={"bins": bins, "codebook": codebook, "chips_per_read": chips_per_read})
    for row in ds.iter_rows():
        accs[row["set"]].merge_state(json.loads(row["state"]))
    return accs


def diversity_table(files_by_set: Mapping[str, Sequence[str]], *, bins: int = 16, clusters: int = 32,
                    codebook_chips: int = 256, codebook_pixels: int = 64, seed: int = 0,
                    chips_per_read: int = 128) -> tuple[pd.DataFrame, np.ndarray | None]:
    """diversity.parquet (one row per set, in the order given) and the codebook used.

    ``files_by_set``: set name → its shard files (``shards.shard_files``). A set without shards
    gets ``n_chips`` 0 and NaN measures, with a warning.
    """
    for name, files in files_by_set.items():
        if not files:
            log.warning("analyze %s: no shards, its measures are NaN", name)
        # One small ranged read per file, in threads: an unreadable shard fails here, named with
        # its set and the repair, not deep inside a Ray task.
        S.shard_footers(list(files), name)
    codebook = fit_shared_codebook(files_by_set, clusters, codebook_chips, codebook_pixels, seed)
    accs = accumulate_sets(files_by_set, bins, codebook, chips_per_read)
    rows = [{"pretrain_set": name, **accs[name].result()} for name in files_by_set]
    return pd.DataFrame(rows), codebook
