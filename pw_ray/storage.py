"""URIs and atomic writes: the same calls on a local path, ``s3://``, ``gs://`` or ``abfs://``.

Stages talk through files under one storage root. Writes are atomic: on a local disk a
file is written beside its target and renamed into place; on object stores a single
upload only becomes visible when it completes, so readers never see a partial file.

``s3://`` URIs go to AWS S3 or to any S3-compatible store (MinIO, Ceph, R2, moto): the endpoint
comes from the standard AWS settings ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL``
(e.g. ``http://127.0.0.1:9000``; ``http://`` means plain HTTP), the region from ``AWS_REGION``
or ``AWS_DEFAULT_REGION`` (without an endpoint, the bucket's own region is looked up), and
credentials from the usual AWS chain (environment, profile, instance role), which pyarrow reads
itself: pw-ray never reads, logs or stores them. Every process that touches the root (Ray
workers too) needs the same environment; a local Ray inherits the driver's.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
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


class CorruptFileError(ValueError):
    """A stored file that exists but cannot be parsed (truncated, overwritten, not Parquet)."""


S3_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
S3_REGION_VARS = ("AWS_REGION", "AWS_DEFAULT_REGION")

_FILESYSTEMS: dict[tuple, pafs.FileSystem] = {}
_FILESYSTEMS_LOCK = threading.Lock()


def _first_env(names: tuple[str, ...]) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


def s3_endpoint() -> str | None:
    """The S3 endpoint URL from ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``; None: AWS itself."""
    return _first_env(S3_ENDPOINT_VARS)


def s3_filesystem(bucket: str | None = None) -> pafs.S3FileSystem:
    """An ``S3FileSystem`` for the configured endpoint and region (see the module docstring).

    pyarrow (Arrow 26) honours ``AWS_ENDPOINT_URL`` by itself but not ``AWS_ENDPOINT_URL_S3``, and
    looks up the bucket's region with a request each time a filesystem is made from a URI; this
    builds it from the settings once per (bucket, settings) and caches it (S3FileSystem is
    thread-safe and picklable).
    """
    endpoint, region = s3_endpoint(), _first_env(S3_REGION_VARS)
    # The access key id (not the secret) keys the cache, so a change of credentials gets a new client.
    key = ("s3", bucket, endpoint, region, os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_PROFILE"))
    with _FILESYSTEMS_LOCK:
        fs = _FILESYSTEMS.get(key)
    if fs is not None:
        return fs
    kwargs: dict = {}
    if endpoint:
        parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"{'/'.join(S3_ENDPOINT_VARS)}={endpoint!r} is not an endpoint URL; "
                             "expected e.g. http://127.0.0.1:9000 or https://s3.example.com")
        kwargs.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"), scheme=parsed.scheme)
        kwargs["region"] = region or "us-east-1"  # S3-compatible stores mostly ignore it, SigV4 needs one
    elif region:
        kwargs["region"] = region
    elif bucket:
        try:
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        except OSError:  # no permission to ask, or offline: the SDK's default applies
            pass
    fs = pafs.S3FileSystem(**kwargs)
    with _FILESYSTEMS_LOCK:
        _FILESYSTEMS[key] = fs
    return fs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem and the path inside it for a URI (``s3://b/k`` → (S3, ``b/k``))."""
    uri = str(uri)
    if uri.startswith("s3://"):
        path = uri[len("s3://"):].rstrip("/")
        return s3_filesystem(path.split("/", 1)[0]), path
    if is_remote(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), local_path(uri)


def ray_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """``(storage_path, storage_filesystem)`` for Ray Train/Tune ``RunConfig`` and ``Tuner.restore``.

    Local: the absolute path and None (Ray's own local filesystem). Remote: the path inside the
    bucket and the configured filesystem, so Ray reaches the same endpoint as pw-ray does.
    """
    if not is_remote(uri):
        return local_path(uri), None
    fs, path = filesystem(uri)
    return path, fs


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
    if is_remote(uri):
        # Object stores have no folders to make. Closing an S3 output stream completes the upload,
        # even when leaving a `with` block on an error: so turn the data into one buffer before the
        # stream opens (a wrong type must not leave an empty object) and hand it over in one write
        # (a failed part upload fails the close too, and nothing becomes visible).
        buf = pa.py_buffer(data)
        with fs.open_output_stream(path) as f:
            f.write(buf)
        return
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.create_dir(parent, recursive=True)
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
    """A Parquet file as a table; :class:`CorruptFileError` naming ``uri`` when it cannot be parsed."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise FileNotFoundError(uri)
    try:
        return pq.read_table(path, filesystem=fs, columns=columns)
    except pa.ArrowInvalid as err:
        raise corrupt(uri, err) from err


def read_parquet_metadata(uri: str) -> pq.FileMetaData:
    """A Parquet file's footer (rows, schema, key-value metadata) without its data."""
    fs, path = filesystem(uri)
    try:
        return pq.read_metadata(path, filesystem=fs)
    except pa.ArrowInvalid as err:
        raise corrupt(uri, err) from err
    except FileNotFoundError:
        raise FileNotFoundError(uri) from None


def corrupt(uri: str, err: BaseException, repair: str = "delete it and rerun the stage that wrote it"
            ) -> CorruptFileError:
    """The error for a file that exists but cannot be parsed: names the file, the parser's reason, the repair."""
    reason = " ".join(str(err).split()) or type(err).__name__
    return CorruptFileError(f"{uri} is not a readable Parquet file (truncated or overwritten?): {reason}. "
                            f"To repair: {repair}")


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


def cache_dir(uri: str) -> Path:
    """A local folder standing for ``uri``: the folder itself when local, else one under the cache.

    The cache is ``$PW_RAY_CACHE_DIR`` (default ``~/.cache/pw-ray``); a remote URI gets
    ``<cache>/<scheme>/<bucket>/<key>``, so two roots never share a folder.
    """
    if not is_remote(uri):
        return to_local_dir(uri)
    base = Path(os.environ.get("PW_RAY_CACHE_DIR") or Path.home() / ".cache" / "pw-ray").expanduser()
    scheme, rest = str(uri).split("://", 1)
    parts = [p for p in rest.split("/") if p not in ("", ".", "..")]
    return base.joinpath(scheme, *parts)


def upload_dir(local_dir: str | Path, uri: str) -> list[str]:
    """Copy every file under ``local_dir`` to the same relative path under ``uri``; the URIs written, sorted."""
    local_dir = Path(local_dir)
    out = []
    for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        target = join(uri, *path.relative_to(local_dir).parts)
        write_bytes(target, path.read_bytes())
        out.append(target)
    return out


def fetch_hint(uri: str) -> str:
    """A shell command that copies the folder ``uri`` to ``./<its name>`` (empty for local URIs)."""
    uri = str(uri).rstrip("/")
    name = uri.rsplit("/", 1)[-1] or "report"
    if uri.startswith("s3://"):
        endpoint = s3_endpoint()
        flag = f" --endpoint-url {endpoint}" if endpoint else ""
        return f"aws s3 cp --recursive{flag} {uri}/ ./{name}/"
    if uri.startswith(("gs://", "gcs://")):
        return f"gsutil -m cp -r {uri.replace('gcs://', 'gs://', 1)} ./"
    return ""
