"""Shards → batches for one training worker, without Ray: a seeded, per-epoch, rank-sharded read.

Every epoch, every worker (rank ``r`` of ``world``):

1. orders the set's files by a permutation drawn from ``(seed, epoch)`` (the same on every
   rank) and takes its own contiguous range of ``N // world`` chips of that order, so ranks
   read disjoint chips and all yield the same number of batches (:func:`epoch_pieces`);
2. reads its share row group by row group (a *piece*), in order, with ``read_threads`` threads
   one window ahead of the step (pyarrow releases the GIL while it decompresses);
3. shuffles locally: consecutive pieces form windows of at least ``shuffle_chips`` chips, and a
   window's chips leave in a permutation drawn from ``(seed, epoch, rank, window)``;
4. copies each chip once, from its decoded row group into its slot of a ``(B, C, H, W)`` uint16
   batch, on a background thread ``prefetch_batches`` batches ahead of the consumer.

The batches of an epoch are a function of the catalog, ``(seed, epoch, rank, world)``, the batch
size and the window size alone, never of timing: a run resumed at batch ``k`` of an epoch
(``start_batch=k``) continues with exactly the batch ``k`` the interrupted run would have
trained on, and reads only from the window holding chip ``k·B`` on.

Footers are read once per run (:func:`read_catalog`, on the driver): the catalog carries every
file's row-group sizes, so nothing lists files or reads footers per epoch. Memory does not grow
with the set: two windows of decoded row groups, the batches in flight and a few recycled
batch buffers.

``bench/loader.py`` measures this path against a plain pyarrow reader (docs/benchmarks.md).
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pw_ray import lineage, storage
from pw_ray.ingest.shards import column_pixels, shard_footers

#: Threads that read footers in :func:`read_catalog` (object stores answer many small reads at once).
CATALOG_THREADS = 32


# ----------------------------------------------------------------------------- the catalog
@dataclass(frozen=True)
class ShardCatalog:
    """The set's shard files and their row groups, read from the footers once per run.

    ``uris``: the Parquet files (local paths or ``s3://``/``gs://`` URIs, one filesystem);
    ``row_groups``: chips per row group of each file; ``shape``: a chip's ``(C, H, W)``;
    ``chunk_digests``: each file's lineage digest (what ingest made the chunk from; "" for a
    shard without one), the pretraining run's input (:func:`pw_ray.pretrain.trainer.shards_digest`).
    """

    uris: tuple[str, ...]
    row_groups: tuple[tuple[int, ...], ...]
    shape: tuple[int, int, int]
    chunk_digests: tuple[str, ...] = field(default=(), compare=False)  # the driver's only: not in to_dict

    @property
    def n_chips(self) -> int:
        return sum(sum(rgs) for rgs in self.row_groups)

    def to_dict(self) -> dict:
        """Plain values (the worker loop's config is pickled to every worker)."""
        return {"uris": list(self.uris), "row_groups": [list(r) for r in self.row_groups],
                "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> ShardCatalog:
        return cls(tuple(d["uris"]), tuple(tuple(int(n) for n in r) for r in d["row_groups"]),
                   tuple(int(v) for v in d["shape"]))


def shard_filesystem(uris: Sequence[str]):
    """One pyarrow filesystem for all ``uris`` and each file's path in it."""
    fs, first = storage.filesystem(uris[0])
    if storage.is_remote(uris[0]):
        return fs, [first] + [u.split("://", 1)[1] for u in uris[1:]]
    return fs, [storage.local_path(u) for u in uris]


def read_catalog(uris: Sequence[str], set_name: str = "", threads: int = CATALOG_THREADS) -> ShardCatalog:
    """Every file's row-group sizes and the chip shape, from the Parquet footers (read in parallel).

    Raises ``FileNotFoundError`` for an empty list, :class:`~pw_ray.ingest.shards.CorruptShardError`
    naming an unreadable file of set ``set_name``, and ``ValueError`` naming the first file whose
    ``pw_ray.shape`` differs from the first file's.
    """
    if not uris:
        raise FileNotFoundError(f"no shard files to read for set {set_name!r}")
    metas = shard_footers(list(uris), set_name, threads=threads)
    shapes = [json.loads((m.metadata or {}).get(b"pw_ray.shape", b"null")) for m in metas]
    if shapes[0] is None:
        raise ValueError(f"shard {uris[0]} has no pw_ray.shape in its schema metadata: not a chip shard")
    for uri, shape in zip(uris, shapes):
        if shape != shapes[0]:
            raise ValueError(f"shard {uri} holds chips of shape {shape}, the set's first file {shapes[0]}")
    row_groups = tuple(tuple(m.row_group(i).num_rows for i in range(m.num_row_groups)) for m in metas)
    digests = tuple((lineage.from_metadata(m.metadata) or {}).get("digest", "") for m in metas)
    return ShardCatalog(tuple(uris), row_groups, tuple(int(v) for v in shapes[0]), digests)


# ----------------------------------------------------------------------------- the epoch plan
@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of row group ``row_group`` of catalog file ``file``."""

    file: int
    row_group: int
    start: int
    stop: int

    @property
    def n(self) -> int:
        return self.stop - self.start


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) % 2**63 for k in key])


def file_order(n_files: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of the files: a permutation drawn from ``(seed, epoch)``."""
    return _rng(seed, epoch).permutation(n_files)


def epoch_pieces(row_groups: Sequence[Sequence[int]], seed: int, epoch: int, rank: int = 0,
                 world: int = 1) -> list[Piece]:
    """This rank's share of an epoch, in reading order.

    The files in :func:`file_order`, their row groups in file order, cut into ``world``
    contiguous ranges of ``N // world`` chips each (the last ``N mod world`` chips of the
    order are left out this epoch); rank ``rank`` gets range ``rank``.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}) for world size {world}, got {rank}")
    per_rank = sum(sum(r) for r in row_groups) // world
    lo, hi = rank * per_rank, (rank + 1) * per_rank
    pieces, at = [], 0
    for f in file_order(len(row_groups), seed, epoch):
        for g, n in enumerate(row_groups[f]):
            start, stop = max(lo, at), min(hi, at + n)
            if start < stop:
                pieces.append(Piece(int(f), g, start - at, stop - at))
            at += n
            if at >= hi:
                return pieces
    return pieces


def shuffle_windows(pieces: Sequence[Piece], shuffle_chips: int) -> list[tuple[int, int]]:
    """Consecutive pieces grouped into windows of at least ``shuffle_chips`` chips (the last
    window may hold fewer); ``(first piece, end piece)`` of each. ``shuffle_chips`` 0: a window
    per piece."""
    windows, first, filled = [], 0, 0
    for i, p in enumerate(pieces):
        filled += p.n
        if filled >= max(shuffle_chips, 1):
            windows.append((first, i + 1))
            first, filled = i + 1, 0
    if first < len(pieces):
        windows.append((first, len(pieces)))
    return windows


def window_order(n: int, shuffle_chips: int, seed: int, epoch: int, rank: int, window: int) -> np.ndarray:
    """The order in which a window's ``n`` chips leave: a permutation drawn from
    ``(seed, epoch, rank, window)``, or their reading order when ``shuffle_chips`` is 0."""
    if not shuffle_chips:
        return np.arange(n)
    return _rng(seed, epoch, rank, window).permutation(n)


def read_piece(fs, path: str, piece: Piece, shape: Sequence[int], footers: dict | None = None) -> np.ndarray:
    """One piece's chips, ``(n, C, H, W)`` uint16: a view of the decoded row group, no copy.

    ``footers``: file index → parsed footer, shared by the pieces of a pass, so a file's footer
    is fetched and parsed once however many of its row groups are read. A file that cannot be
    parsed raises :class:`~pw_ray.storage.CorruptFileError` naming it."""
    try:
        with fs.open_input_file(path) as f:
            meta = footers.get(piece.file) if footers is not None else None
            pf = pq.ParquetFile(f, metadata=meta)
            if footers is not None and meta is None:
                footers[piece.file] = pf.metadata
            table = pf.read_row_group(piece.row_group, columns=["pixels"])
    except pa.ArrowInvalid as err:
        raise storage.corrupt(path, err) from err
    return column_pixels(table.column("pixels"), shape)[piece.start:piece.stop]


# ----------------------------------------------------------------------------- the stream
class _BatchBuffers:
    """(B, C, H, W) uint16 arrays reused once nobody holds them any more.

    A fresh 47 MB array per batch costs as much in page faults as the copy into it. An array
    is free again when its only references are this pool's (a batch tensor made by
    ``torch.from_numpy``, and any view of it, keeps the array alive). With ``pin_memory`` the
    arrays are views of page-locked tensors, so copies to the GPU can run asynchronously.
    """

    def __init__(self, shape: tuple[int, ...], keep: int, pin_memory: bool):
        self.shape, self.keep, self.pin_memory = shape, keep, pin_memory
        self.arrays: list[np.ndarray] = []

    def take(self) -> np.ndarray:
        for a in self.arrays:
            if sys.getrefcount(a) <= 3:  # this list, the loop variable and getrefcount's argument
                return a
        if self.pin_memory:
            import torch

            a = torch.empty(self.shape, dtype=torch.uint16, pin_memory=True).numpy()
        else:
            a = np.empty(self.shape, dtype=np.uint16)
        if len(self.arrays) < self.keep:
            self.arrays.append(a)
        return a


_DONE = object()


class ChipStream:
    """One rank's batches of one epoch: ``(B, C, H, W)`` uint16 CPU tensors, reflectance ×1e4.

    Iterate it once; ``len()`` is the number of batches it yields (from ``start_batch`` on).
    Use it as a context manager (or call :meth:`close`) when leaving the loop early, so its
    threads stop. A batch tensor is the consumer's until it drops it; its buffer is reused after.
    """

    def __init__(self, catalog: ShardCatalog, *, batch_size: int, seed: int, epoch: int, rank: int = 0,
                 world: int = 1, shuffle_chips: int = 256, start_batch: int = 0, read_threads: int = 2,
                 prefetch_batches: int = 2, pin_memory: bool = False):
        if batch_size <= 0 or read_threads <= 0 or prefetch_batches <= 0 or shuffle_chips < 0:
            raise ValueError(f"batch_size {batch_size}, read_threads {read_threads} and prefetch_batches "
                             f"{prefetch_batches} must be > 0 and shuffle_chips {shuffle_chips} ≥ 0")
        self.catalog, self.batch_size = catalog, batch_size
        self.seed, self.epoch, self.rank, self.world = seed, epoch, rank, world
        self.shuffle_chips, self.read_threads = shuffle_chips, read_threads
        self.pieces = epoch_pieces(catalog.row_groups, seed, epoch, rank, world)
        self.windows = shuffle_windows(self.pieces, shuffle_chips)
        self.batches_in_epoch = sum(p.n for p in self.pieces) // batch_size
        if not 0 <= start_batch <= self.batches_in_epoch:
            raise ValueError(f"start_batch must be in [0, {self.batches_in_epoch}] (batches of rank {rank} "
                             f"in epoch {epoch}), got {start_batch}")
        self.start_batch = start_batch
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch_batches)
        self._stop = threading.Event()
        self._buffers = _BatchBuffers((batch_size, *catalog.shape), prefetch_batches + 3, pin_memory)
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        return self.batches_in_epoch - self.start_batch

    def __iter__(self) -> Iterator:
        import torch

        if self._thread is not None:
            raise RuntimeError("a ChipStream is iterated once; make a new one for another pass")
        self._thread = threading.Thread(target=self._produce, name=f"chip-stream-r{self.rank}e{self.epoch}",
                                        daemon=True)
        self._thread.start()
        try:
            yielded = 0
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield torch.from_numpy(item)
                yielded += 1
                del item
            if yielded != len(self):
                raise RuntimeError(f"rank {self.rank}'s stream of epoch {self.epoch} ended after {yielded} of "
                                   f"{len(self)} batches")
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reading threads (idempotent)."""
        self._stop.set()
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def __enter__(self) -> ChipStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the producer thread
    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            self._fill()
        except BaseException as err:  # handed to the consumer, which raises it
            self._put(err)
        else:
            self._put(_DONE)

    def _fill(self) -> None:
        if not len(self):
            return
        fs, paths = shard_filesystem([self.catalog.uris[p.file] for p in self.pieces] or self.catalog.uris[:1])
        sizes = np.array([p.n for p in self.pieces])
        window_start = np.concatenate([[0], np.cumsum([sizes[a:b].sum() for a, b in self.windows])])
        first_chip = self.start_batch * self.batch_size
        w0 = int(np.searchsorted(window_start, first_chip, side="right")) - 1
        skip = first_chip - int(window_start[w0])
        to_emit = len(self)
        futures: dict[int, Future] = {}
        footers: dict[int, pq.FileMetaData] = {}  # a file's footer, parsed once for all its row groups
        next_piece = self.windows[w0][0]
        out, filled = None, 0
        with ThreadPoolExecutor(max_workers=self.read_threads, thread_name_prefix="chip-read") as pool:
            try:
                for w in range(w0, len(self.windows)):
                    a, b = self.windows[w]
                    # read the next window (at least read_threads pieces) while this one is emptied
                    ahead = max(self.windows[min(w + 1, len(self.windows) - 1)][1], b + self.read_threads)
                    while next_piece < min(ahead, len(self.pieces)):
                        futures[next_piece] = pool.submit(read_piece, fs, paths[next_piece], self.pieces[next_piece],
                                                          self.catalog.shape, footers)
                        next_piece += 1
                    chips = [futures.pop(i).result() for i in range(a, b)]
                    owner = np.repeat(np.arange(b - a), sizes[a:b])
                    row = np.arange(len(owner)) - np.repeat(np.cumsum(sizes[a:b]) - sizes[a:b], sizes[a:b])
                    order = window_order(len(owner), self.shuffle_chips, self.seed, self.epoch, self.rank, w)
                    for k in order[skip:]:
                        if out is None:
                            out = self._buffers.take()
                        out[filled] = chips[owner[k]][row[k]]
                        filled += 1
                        if filled == self.batch_size:
                            if not self._put(out):
                                return
                            out, filled, to_emit = None, 0, to_emit - 1
                            if not to_emit:
                                return
                        if self._stop.is_set():
                            return
                    skip = 0
                    del chips
            finally:
                for f in futures.values():
                    f.cancel()


# ----------------------------------------------------------------------------- waiting for data
class DataWaitMonitor:
    """Says when the share of step time spent waiting for data stays above ``threshold``.

    :meth:`update` takes one reporting window's share (0–1) and returns True when it and the
    ``patience − 1`` windows before it were all above the threshold; it then stays quiet until
    a window comes in at or below the threshold again (one warning per episode).
    """

    def __init__(self, threshold: float = 0.05, patience: int = 3):
        self.threshold, self.patience = threshold, patience
        self.above = 0

    def update(self, wait_share: float) -> bool:
        if wait_share <= self.threshold:
            self.above = 0
            return False
        self.above += 1
        return self.above == self.patience


__all__ = ["ShardCatalog", "read_catalog", "Piece", "file_order", "epoch_pieces", "shuffle_windows",
           "window_order", "read_piece", "ChipStream", "DataWaitMonitor"]
