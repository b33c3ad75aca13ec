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


def parquet_uri(root: str, set_name: str, region: str, chunk: int) -> str:
    return storage.join(root, "shards", set_name, f"region={region}",
                        shard_name(set_name, region, chunk) + ".parquet")


def wds_uri(root: str, set_name: str, region: str, chunk: int) -> str:
    return storage.join(root, "shards", set_name, "wds", shard_name(set_name, region, chunk) + ".tar")


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
    """A WebDataset tar (``.npy`` + ``.json`` per chip) of a shard table, deterministic."""
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


#: Marker in the names of files being written (``storage.write_bytes``: ``<name>.tmp-<hex>``,
#: renamed atomically when complete). Readers never list them as shards.
TMP_MARK = ".tmp-"


def shard_files(root: str, set_name: str) -> list[str]:
    """All complete Parquet shard files of a set, sorted (temp files of unfinished writes excluded)."""
    return [u for u in storage.listdir(storage.join(root, "shards", set_name), recursive=True,
                                       suffix=".parquet")
            if "/region=" in u and TMP_MARK not in u.rsplit("/", 1)[-1]]


def remove_partial(root: str, set_name: str) -> int:
    """Delete temp files left by writes that were killed mid-way (a rerun's first step).

    Only call it when no other ingest of this set runs: a live writer's temp file would go too
    (its rename then fails and its task is retried).
    """
    stale = [u for u in storage.listdir(storage.join(root, "shards", set_name), recursive=True)
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
SHARD_REPAIR = "delete it and rerun `pw-ray ingest --force` (it writes the missing chunk again)"


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
