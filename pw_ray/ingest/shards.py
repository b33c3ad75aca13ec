"""Chip shards: zstd Parquet with one tensor column, and the same chips as WebDataset tars.

Parquet layout (readable with plain ``pyarrow`` + ``numpy``, see :func:`read_pixels`):

* ``pixels``: ``fixed_size_binary[2*C*H*W]``, each row one chip: little-endian uint16 in
  C-order (C, H, W), reflectance ×10⁴ harmonised to the pre-04.00 scale. Back to numpy::

      col = table.column("pixels").combine_chunks()
      px = np.frombuffer(col.buffers()[1], "<u2")[col.offset * C*H*W:][:len(col) * C*H*W].reshape(-1, C, H, W)

  (``fixed_size_list<uint16>`` as written before 2026-11-27 is still read by :func:`read_pixels`;
  the binary layout writes 3× faster and reads 3× faster than the list one: Parquet stores a
  list<uint16> as INT32 values with repetition levels, a binary column as the bytes);
* schema metadata ``pw_ray.bands`` (JSON list of canonical band names) and ``pw_ray.shape``
  (JSON ``[C, H, W]``);
* metadata columns (see :data:`META_SCHEMA`).

WebDataset: per chip ``<chip_id>.npy`` (the (C, H, W) uint16 array) and ``<chip_id>.json``
(the metadata columns). File names come from content (set, region, chunk), so a rerun writes
the same names, and every write is atomic.

Storage layout of a set (:func:`parquet_uri`, :func:`wds_uri`)::

    shards/<set>/parquet/<region>/<set>-<region>-<chunk>.parquet
    shards/<set>/wds/<set>-<region>-<chunk>.tar

``shards/<set>/parquet`` is one dataset and ``shards/<set>/parquet/<region>`` one region of it:
``pyarrow.parquet.read_table``, ``pandas.read_parquet``, ``ray.data.read_parquet`` and
``datasets.load_dataset("parquet", data_dir=…)`` each read either folder in one call, and every
file keeps its ``region`` column, so one file read alone still says its region. Region folders
are plain names, not hive ``region=<r>`` keys: a hive key beside the column makes pyarrow and
pandas fail (``string vs dictionary``), and without the column ``datasets`` (which ignores hive
keys) and a one-region or one-file read lose the region. The tars live outside the Parquet
folder, so no reader trips over them. Roots written before 2026-12 (``shards/<set>/region=<r>/``)
are still read (:func:`shard_files`); the next ingest of the set moves them into place
(:func:`adopt_legacy_layout`).
"""

from __future__ import annotations

import io
import json
import tarfile

import numpy as np
import pyarrow as pa

from pw_ray import storage

META_SCHEMA = pa.schema([
    ("chip_id", pa.string()),
    ("set", pa.string()),
    ("point_id", pa.string()),
    ("lon", pa.float64()),
    ("lat", pa.float64()),
    ("region", pa.string()),
    ("biome", pa.string()),
    ("landcover", pa.string()),
    ("lc_fractions", pa.list_(pa.float32())),
    ("item_id", pa.string()),
    ("collection", pa.string()),
    ("datetime", pa.string()),
    ("epsg", pa.int32()),
    ("row_off", pa.int32()),
    ("col_off", pa.int32()),
    ("cloud_fraction", pa.float32()),
    ("nodata_fraction", pa.float32()),
    ("baseline", pa.string()),
    ("offset_applied", pa.int16()),
])
META_COLUMNS = tuple(META_SCHEMA.names)


def chips_table(meta: list[dict], pixels: np.ndarray, bands: list[str]) -> pa.Table:
    """Build a shard table from metadata rows and a (N, C, H, W) uint16 array."""
    if pixels.ndim != 4 or pixels.dtype != np.uint16:
        raise ValueError(f"pixels must be (N, C, H, W) uint16, got {pixels.shape} {pixels.dtype}")
    if len(meta) != len(pixels):
        raise ValueError(f"{len(meta)} metadata rows for {len(pixels)} chips")
    n, c, h, w = pixels.shape
    cols = {name: pa.array([m.get(name) for m in meta], type=META_SCHEMA.field(name).type)
            for name in META_COLUMNS}
    table = pa.table({**cols, "pixels": pixels_column(pixels)})
    return table.replace_schema_metadata({
        "pw_ray.bands": json.dumps(list(bands)),
        "pw_ray.shape": json.dumps([c, h, w]),
    })


def pixels_column(pixels: np.ndarray) -> pa.FixedSizeBinaryArray:
    """(N, C, H, W) uint16 → the ``pixels`` column: one ``fixed_size_binary`` value per chip."""
    n = len(pixels)
    raw = np.ascontiguousarray(pixels, dtype="<u2")
    width = raw[0].nbytes if n else 2 * int(np.prod(pixels.shape[1:]))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), n, [None, pa.py_buffer(raw)])


def column_pixels(col: pa.Array | pa.ChunkedArray, shape) -> np.ndarray:
    """A ``pixels`` column (binary layout, or the older fixed-size list) → (N, C, H, W) uint16."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    shape = tuple(int(v) for v in shape)
    per_chip = int(np.prod(shape))
    if pa.types.is_fixed_size_binary(col.type):
        if col.null_count:
            raise ValueError("pixels column has null chips")
        flat = np.frombuffer(col.buffers()[1], dtype="<u2")[col.offset * per_chip:(col.offset + len(col)) * per_chip]
    else:  # fixed_size_list<uint16>
        flat = col.values.to_numpy(zero_copy_only=False)
    return flat.reshape(len(col), *shape).astype(np.uint16, copy=False)


def read_pixels(table: pa.Table) -> np.ndarray:
    """The ``pixels`` column as a (N, C, H, W) uint16 array (plain pyarrow + numpy)."""
    md = table.schema.metadata or {}
    return column_pixels(table.column("pixels"), json.loads(md[b"pw_ray.shape"]))


def shard_bands(table: pa.Table) -> list[str]:
    return json.loads((table.schema.metadata or {})[b"pw_ray.bands"])


def shard_name(set_name: str, region: str, chunk: int) -> str:
    return f"{set_name}-{region}-{chunk:05d}"


#: Folder of the Parquet shards inside ``shards/<set>/``, one subfolder per region.
PARQUET_DIR = "parquet"
#: Region folders of the layout written before 2026-12: ``shards/<set>/region=<r>/``.
LEGACY_REGION_PREFIX = "region="


def set_dir(root: str, set_name: str) -> str:
    """Everything of a set's shards: ``shards/<set>`` (Parquet and WebDataset)."""
    return storage.join(root, "shards", set_name)


def parquet_dir(root: str, set_name: str, region: str | None = None) -> str:
    """The folder one reader call reads a whole set from (``region``: one region of it)."""
    return storage.join(set_dir(root, set_name), PARQUET_DIR, *([region] if region else []))


def parquet_uri(root: str, set_name: str, region: str, chunk: int) -> str:
    return storage.join(parquet_dir(root, set_name, region), shard_name(set_name, region, chunk) + ".parquet")


def wds_uri(root: str, set_name: str, region: str, chunk: int) -> str:
    return storage.join(set_dir(root, set_name), "wds", shard_name(set_name, region, chunk) + ".tar")


def parquet_bytes(table: pa.Table, row_group_size: int = 128) -> pa.Buffer:
    """A shard table as Parquet file bytes: zstd, row groups of ``row_group_size`` chips, no
    dictionary or statistics on ``pixels`` (a dictionary of chip-sized binary values never pays
    and min/max of raw bytes says nothing)."""
    meta = [c for c in table.column_names if c != "pixels"]
    return storage.parquet_bytes(table, row_group_size, "zstd", use_dictionary=meta, write_statistics=meta)


def write_parquet_shard(table: pa.Table, uri: str, row_group_size: int = 128) -> None:
    """:func:`parquet_bytes` written atomically to ``uri``."""
    storage.write_bytes(uri, parquet_bytes(table, row_group_size))


def webdataset_bytes(table: pa.Table) -> bytes:
    """A WebDataset tar (``.npy`` + ``.json`` per chip) of a shard table, deterministic.

    Written with ``tarfile``, not ``webdataset.TarWriter``, for a measured reason:
    ``import webdataset`` imports torch, which ingest workers otherwise never load, and costs
    every tar-writing process +497 MB resident and ~1 CPU-second (about 6 s of wall time on a busy
    2-core machine). Per tar the two are the same size (byte for byte: 47,851,520 for 256 chips of
    10×96×96), both deterministic with ``mtime`` fixed, and TarWriter takes 1.25× the CPU time
    (``python bench/webdataset_writer.py``, 2026-11-29; docs/benchmarks.md). The layout is WebDataset's
    own (``<key>.<ext>`` members, the key without dots), read by ``webdataset.WebDataset``.
    """
    pixels = read_pixels(table)
    meta = table.drop_columns(["pixels"]).to_pylist()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for m, px in zip(meta, pixels):
            key = m["chip_id"].replace(".", "_")
            npy = io.BytesIO()
            np.save(npy, px)
            js = dict(m, bands=shard_bands(table))
            for suffix, data in ((".npy", npy.getvalue()), (".json", json.dumps(js).encode())):
                info = tarfile.TarInfo(key + suffix)
                info.size = len(data)
                info.mtime = 0  # deterministic bytes for the same chips
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def write_wds_shard(table: pa.Table, uri: str) -> None:
    storage.write_bytes(uri, webdataset_bytes(table))


#: Marker in the names of files being written (``storage.write_bytes``: ``.<name>.tmp-<hex>``,
#: renamed atomically when complete). :func:`shard_files` never lists them; the leading dot hides
#: them from pyarrow, pandas, Ray Data and ``datasets`` reading a whole folder.
TMP_MARK = ".tmp-"


def _layout_of(set_root: str, uri: str) -> str | None:
    """``"current"`` for ``parquet/<r>/<file>``, ``"legacy"`` for ``region=<r>/<file>``, else None."""
    parts = uri[len(storage.resolve(set_root)):].strip("/").split("/")
    if len(parts) == 3 and parts[0] == PARQUET_DIR:
        return "current"
    if len(parts) == 2 and parts[0].startswith(LEGACY_REGION_PREFIX):
        return "legacy"
    return None


def shard_files(root: str, set_name: str) -> list[str]:
    """All complete Parquet shard files of a set in (region, chunk) order; temp files of
    unfinished writes excluded.

    Reads both layouts: ``parquet/<r>/`` and the older ``region=<r>/``. A chunk present in both
    (a move by :func:`adopt_legacy_layout` seen half-way) is listed once, from ``parquet/``.
    """
    base = set_dir(root, set_name)
    by_name: dict[str, tuple[int, str]] = {}
    for u in storage.listdir(base, recursive=True, suffix=".parquet"):
        name = u.rsplit("/", 1)[-1]
        layout = _layout_of(base, u)
        if layout is None or TMP_MARK in name:
            continue
        rank = 0 if layout == "current" else 1
        if name not in by_name or rank < by_name[name][0]:
            by_name[name] = (rank, u)
    return [by_name[name][1] for name in sorted(by_name)]


def adopt_legacy_layout(root: str, set_name: str) -> int:
    """Move a set's files from the older ``region=<r>/`` folders into ``parquet/<r>/``.

    Ingest's first step on a rerun, so that chunks written before the layout changed are found
    where :func:`parquet_uri` looks (reused, not read again) and the set reads as one dataset.
    A file already present at its new place is kept and the old copy deleted. Returns the
    number of files moved. Like :func:`remove_partial`, only while no other ingest of the set runs.
    """
    base = set_dir(root, set_name)
    moved = 0
    for u in storage.listdir(base, recursive=True):
        if _layout_of(base, u) != "legacy" or TMP_MARK in u.rsplit("/", 1)[-1]:
            continue
        folder, name = u[len(storage.resolve(base)):].strip("/").split("/")
        target = storage.join(parquet_dir(root, set_name, folder[len(LEGACY_REGION_PREFIX):]), name)
        if storage.exists(target):
            storage.remove(u)
        else:
            storage.move(u, target)
            moved += 1
    return moved


def wds_files(root: str, set_name: str) -> list[str]:
    """All complete WebDataset tars of a set, sorted."""
    return [u for u in storage.listdir(storage.join(root, "shards", set_name), recursive=True, suffix=".tar")
            if TMP_MARK not in u.rsplit("/", 1)[-1]]


def chunk_of(uri: str) -> tuple[str, int]:
    """(region, chunk) of a shard file, from its name ``<set>-<region>-<chunk>.<ext>``."""
    stem = uri.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    head, chunk = stem.rsplit("-", 1)
    return head.rsplit("-", 1)[1], int(chunk)


def remove_partial(root: str, set_name: str) -> int:
    """Delete temp files left by writes that were killed mid-way (a rerun's first step).

    Only call it when no other ingest of this set runs: a live writer's temp file would go too
    (its rename then fails and its task is retried).
    """
    stale = [u for u in storage.listdir(set_dir(root, set_name), recursive=True)
             if TMP_MARK in u.rsplit("/", 1)[-1]]
    for u in stale:
        storage.remove(u)
    return len(stale)


def read_set(root: str, set_name: str, columns: list[str] | None = None) -> pa.Table:
    """A whole set's shards as one table (small sets: tasks, tests)."""
    files = shard_files(root, set_name)
    if not files:
        raise FileNotFoundError(f"no shards for set {set_name!r} under {root}")
    tables = [read_shard(f, set_name, columns=columns) for f in files]
    md = tables[0].schema.metadata
    return pa.concat_tables(tables).replace_schema_metadata(md)


# --------------------------------------------------------------------------- unreadable shards
#: How to repair a shard that cannot be read. The stage marker of a finished ingest makes a plain
#: rerun skip the stage, hence ``--force``; the ingest then writes the chunks whose files are missing.
SHARD_REPAIR = ("delete it and rerun `pw-ray ingest` (it writes that chunk again and reuses the others; "
                "`--force` would redo the whole stage)")


class CorruptShardError(storage.CorruptFileError):
    """A shard file that exists but cannot be read; the message names the file, the set and the repair."""


def corrupt_shard(uri: str, set_name: str, err: BaseException) -> CorruptShardError:
    reason = " ".join(str(getattr(err, "__cause__", None) or err).split()) or type(err).__name__
    return CorruptShardError(f"shard {uri} of set {set_name!r} cannot be read (truncated or overwritten?): "
                             f"{reason}. To repair: {SHARD_REPAIR}")


def read_shard(uri: str, set_name: str, columns: list[str] | None = None) -> pa.Table:
    """One shard file as a table; :class:`CorruptShardError` naming it and its set when unreadable."""
    try:
        return storage.read_table(uri, columns=columns)
    except storage.CorruptFileError as err:
        raise corrupt_shard(uri, set_name, err.__cause__ or err) from None


def shard_footers(files: list[str], set_name: str, threads: int = 16) -> list:
    """The Parquet footer (``pyarrow.parquet.FileMetaData``) of every file, read in parallel threads.

    One small ranged read per file, done before a set is streamed so that an unreadable shard
    fails at once with :class:`CorruptShardError` naming it, not deep inside a Ray Data task.
    """
    from concurrent.futures import ThreadPoolExecutor

    def footer(uri: str):
        try:
            return storage.read_parquet_metadata(uri)
        except storage.CorruptFileError as err:
            raise corrupt_shard(uri, set_name, err.__cause__ or err) from None

    if len(files) <= 1:
        return [footer(f) for f in files]
    with ThreadPoolExecutor(max_workers=min(threads, len(files))) as pool:
        return list(pool.map(footer, files))


def footer_shape(footer) -> list[int]:
    """The chip shape ``[C, H, W]`` recorded in a shard's footer (``pw_ray.shape``)."""
    return json.loads((footer.metadata or {})[b"pw_ray.shape"])
