"""URIs and atomic writes: the same calls on a local path, ``s3://``, ``gs://`` or ``abfs://``.

Stages talk through files under one storage root. Writes are atomic: on a local disk a
file is written beside its target and renamed into place; on object stores a single
upload only becomes visible when it completes, so readers never see a partial file.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_REMOTE = ("s3://", "gs://", "gcs://", "abfs://", "abfss://", "hdfs://")


def is_remote(uri: str) -> bool:
    return str(uri).startswith(_REMOTE)


def join(root: str, *parts: str) -> str:
    """Join URI parts with ``/`` (``os.path.join`` would break ``s3://``)."""
    out = str(root).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p:
            out = f"{out}/{p}"
    return out


def local_path(uri: str) -> str:
    uri = str(uri)
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return os.path.abspath(os.path.expanduser(uri))


def resolve(uri: str) -> str:
    """An absolute form of the URI (local paths made absolute, remote ones unchanged)."""
    return str(uri) if is_remote(uri) else local_path(uri)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a URI."""
    if is_remote(uri):
        return pafs.FileSystem.from_uri(str(uri))
    return pafs.LocalFileSystem(), local_path(uri)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)


def listdir(uri: str, recursive: bool = False, suffix: str | None = None) -> list[str]:
    """Files (not folders) under a URI, sorted; empty when it does not exist."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive))
    prefix = "" if not is_remote(uri) else str(uri).split("://")[0] + "://"
    out = [prefix + i.path for i in infos if i.type == pafs.FileType.File]
    if suffix:
        out = [p for p in out if p.endswith(suffix)]
    return sorted(out)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except (FileNotFoundError, OSError) as err:
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(uri) from err
        raise


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_bytes(uri: str, data) -> None:
    """Write a whole file atomically (``data``: bytes or any buffer, e.g. a ``pyarrow.Buffer``)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    if is_remote(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    # Hidden (leading dot) so that a folder read (pyarrow, pandas, Ray Data, ``datasets``) skips
    # the file of a write in flight or killed mid-way; ``.tmp-`` marks it for clean-up.
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def parquet_bytes(table: pa.Table, row_group_size: int | None = None, compression: str = "zstd",
                  **parquet_options) -> pa.Buffer:
    """A table as Parquet file bytes (zstd by default; ``parquet_options`` go to ``pq.write_table``).

    Built in an Arrow buffer, not ``io.BytesIO``, whose growth by reallocation cost more than the
    zstd compression of a chip shard.
    """
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, compression=compression, row_group_size=row_group_size, **parquet_options)
    return buf.getvalue()


def write_table(table: pa.Table, uri: str, row_group_size: int | None = None,
                compression: str = "zstd", **parquet_options) -> None:
    """Write a Parquet file atomically (:func:`parquet_bytes`, then one :func:`write_bytes`)."""
    write_bytes(uri, parquet_bytes(table, row_group_size, compression, **parquet_options))


def read_table(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def remove(uri: str) -> None:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dst: str) -> None:
    """Move one file (a rename on a local disk; copy then delete on object stores)."""
    fs, src_path = filesystem(src)
    dst_fs, dst_path = filesystem(dst)
    if type(fs) is not type(dst_fs):
        raise ValueError(f"cannot move {src} to {dst}: different filesystems")
    parent = dst_path.rsplit("/", 1)[0] if "/" in dst_path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
    fs.move(src_path, dst_path)


class RootNotWritable(OSError):
    """A storage root that cannot be written (missing bucket, no credentials, read-only disk…)."""


def check_creatable(root: str) -> None:
    """Check, writing nothing, that a local storage root exists as a writable folder or could be
    created (its nearest existing ancestor is a writable folder); :class:`RootNotWritable` if
    not. Remote roots are not checked: the first stage that writes finds out
    (:func:`check_writable` does, by writing)."""
    if is_remote(root):
        return
    path = Path(local_path(root))
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    why = ""
    if not probe.is_dir():
        why = f"{probe} is not a folder"
    elif not os.access(probe, os.W_OK | os.X_OK):
        why = f"{probe} is not writable"
    if why:
        raise RootNotWritable(f"storage root {root!r} cannot be created or written ({why})")


def check_writable(root: str) -> None:
    """Fail fast, naming ``root``, when the storage root cannot be written (:class:`RootNotWritable`)."""
    probe = join(root, f".pw-ray-write-probe-{uuid.uuid4().hex[:8]}")
    try:
        write_bytes(probe, b"ok")
        remove(probe)
    except Exception as err:  # any failure means the run could not store its outputs
        raise RootNotWritable(f"storage root {root!r} is not writable or not reachable ({err})") from None


def to_local_dir(uri: str) -> Path:
    """A local folder for a URI, for libraries that need one (only local URIs)."""
    if is_remote(uri):
        raise ValueError(f"{uri} is remote; this operation needs a local path")
    return Path(local_path(uri))
