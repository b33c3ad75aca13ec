"""The one chunk writer: a chunk's chips read group by group, written as one Parquet shard (+ tar).

Every kind of set goes through :func:`write_chunk`: pretraining sets and STAC tasks (groups are
scenes, read by ``pipeline``), imported benchmarks (groups are images, read by
``evaluate.builders``). What it guarantees, whatever the reader:

* **Lineage.** The shard records the digest of the chunk's planned rows and chip spec
  (:mod:`pw_ray.lineage`); an existing shard is reused only when that digest matches, so a
  changed config never leaves old chips in a set.
* **Failures kept.** A group that fails costs its chips, never the chunk; the shard's metadata
  lists every failed chip with its reason and kind (transient or permanent), so a reused chunk
  reports the same failures as the run that wrote it. A chunk with a transient failure is
  written again on the next run (permanent ones with ``--retry-failed``).
* **Atomic.** The tar is written first, the Parquet last (its presence marks the chunk done);
  a chunk whose chips all failed is still written, with no rows, to record why.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pw_ray import lineage, storage
from pw_ray.ingest import shards as S
from pw_ray.ingest.catalogs import redact
from pw_ray.ingest.failures import failure_kind, retryable

log = logging.getLogger(__name__)

#: Bump when the bytes a chunk's rows and spec produce change (a new column, another encoding):
#: every stored chunk is then written again.
CHUNK_VERSION = 1
#: Schema-metadata key of a shard's failed chips: JSON ``[[chip_id, reason, kind], …]``.
FAILED_KEY = b"pw_ray.failed"

#: Stages of a chunk task: ``read`` (decode, resample, harmonise), ``landcover`` (class
#: fractions), ``encode`` (Parquet and WebDataset bytes), ``write`` (atomic writes).
STAGES = ("read", "landcover", "encode", "write")


class Stopwatch:
    """Seconds per named stage: ``with sw("read"): ...``."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._name = None

    def __call__(self, name: str):
        self._name = name
        return self

    def __enter__(self):
        self._t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self._name] += time.perf_counter() - self._t0


def frame_digest(df: pd.DataFrame) -> str:
    """Digest of a table's content: its columns (sorted by name), values and row order."""
    h = []
    for col in sorted(df.columns):
        s = df[col]
        if s.dtype == object:
            s = s.map(lambda v: json.dumps(lineage.plain(v), sort_keys=True) if isinstance(v, (list, dict, np.ndarray))
                      else str(v))
        h.append(col)
        h.append(lineage.bytes_digest(pd.util.hash_pandas_object(s, index=False).to_numpy().tobytes()))
    return lineage.digest([len(df), h])


def chunk_record(rows: pd.DataFrame, spec, context: dict) -> dict:
    """The lineage record of a chunk: its planned rows, the chip spec that shapes its pixels and
    bytes, and ``context`` (catalog adapter, land-cover source, reader kind)."""
    chips = {k: getattr(spec, k) for k in ("bands", "size_px", "resolution_m", "resampling", "webdataset")}
    return lineage.record({"version": CHUNK_VERSION, "planned_chips": frame_digest(rows), "chips": chips, **context})


def _result(region: str, chunk: int, written: bool, why: str, n: int, failed: list, stages: dict) -> dict:
    return {"region": region, "chunk": int(chunk), "written": written, "why": why, "n": int(n),
            "failed": json.dumps(failed), "stages": json.dumps(stages)}


def stored_chunk(pq_uri: str, tar_uri: str | None, rec: dict, planned: int, retry_failed: bool = False
                 ) -> tuple[dict | None, str]:
    """(``{"n", "failed"}`` of a stored chunk that can be reused, None) and why not.

    Reusable when the Parquet (and the tar, if wanted) exist, its lineage matches ``rec``, its
    rows plus its recorded failures account for every planned chip, and none of its failures
    is to be retried on this run.
    """
    if not storage.exists(pq_uri):
        return None, "not written yet"
    if tar_uri and not storage.exists(tar_uri):
        return None, "its WebDataset tar is missing"
    fs, path = storage.filesystem(pq_uri)
    try:
        meta = pq.read_metadata(path, filesystem=fs)
    except Exception as err:  # a corrupt shard is rewritten, not trusted
        return None, f"unreadable ({type(err).__name__})"
    md = meta.schema.to_arrow_schema().metadata or {}
    why = lineage.why_redo(lineage.from_metadata(md), rec)
    if why:
        return None, why
    failed = json.loads(md.get(FAILED_KEY, b"[]"))
    if meta.num_rows + len(failed) != planned:
        return None, f"holds {meta.num_rows} chips and {len(failed)} failures for {planned} planned"
    retry = [f for f in failed if retryable(f[2], retry_failed)]
    if retry:
        return None, f"{len(retry)} failed chips to retry"
    return {"n": meta.num_rows, "failed": failed}, ""


#: ``read_group(rows, stopwatch) -> (pixels (n, C, H, W) uint16, metadata rows)`` for one group
#: of a chunk's rows (one scene, one image), in the rows' order; raises when the group fails.
GroupReader = Callable[[pd.DataFrame, Stopwatch], "tuple[np.ndarray, list[dict]]"]


def write_chunk(rows: pd.DataFrame, group_by: str, read_group: GroupReader, *, root: str, set_name: str,
                region: str, chunk: int, spec, context: dict, force: bool = False,
                retry_failed: bool = False) -> dict:
    """Write (or reuse) one chunk's shard; returns a small result record for the manifest.

    ``rows``: the chunk's planned chips in their shard order (a ``chip_id`` column);
    ``group_by``: the column whose groups are read together (``item_id``: a scene).
    """
    pq_uri = S.parquet_uri(root, set_name, region, chunk)
    tar_uri = S.wds_uri(root, set_name, region, chunk) if spec.webdataset else None
    rec = chunk_record(rows, spec, context)
    if not force:
        stored, why = stored_chunk(pq_uri, tar_uri, rec, len(rows), retry_failed)
        if stored is not None:
            return _result(region, chunk, False, "", stored["n"], stored["failed"], dict.fromkeys(STAGES, 0.0))
    else:
        why = "--force"
    # Chips go straight to their place in the chunk's planned order, whatever order the groups
    # are read in: one pixel buffer for the chunk, no concatenation or reordering copies.
    pos = {cid: i for i, cid in enumerate(rows["chip_id"])}
    metas: list[dict | None] = [None] * len(rows)
    pixels = np.zeros((len(rows), len(spec.bands), spec.size_px, spec.size_px), dtype=np.uint16)
    failed: list[list[str]] = []
    sw = Stopwatch()
    for key, grp in rows.groupby(group_by, sort=True):
        try:
            px, meta = read_group(grp, sw)
        except Exception as err:  # a failing group costs its chips, never the chunk
            cause = err.__cause__ or err.__context__
            reason = redact(f"{type(err).__name__}: {err}" + (f" ({cause})" if cause is not None else ""))
            log.warning("%s %s: %s failed: %s", set_name, S.shard_name(set_name, region, chunk), key, reason)
            kind = failure_kind(err)
            failed += [[str(c), reason, kind] for c in grp["chip_id"]]
            continue
        idx = [pos[c] for c in grp["chip_id"]]
        pixels[idx] = px
        for i, m in zip(idx, meta):
            metas[i] = m
    keep = [i for i, m in enumerate(metas) if m is not None]
    if len(keep) < len(metas):  # failed chips: drop their places
        pixels = pixels[keep]
    with sw("encode"):
        table = S.chips_table([metas[i] for i in keep], pixels, list(spec.bands))
        md = dict(table.schema.metadata or {})
        md[FAILED_KEY] = json.dumps(failed).encode()
        table = lineage.attach(table.replace_schema_metadata(md), rec)
    if tar_uri:  # one encoded copy of the chunk in memory at a time
        with sw("encode"):
            tar = S.webdataset_bytes(table)
        with sw("write"):
            storage.write_bytes(tar_uri, tar)
        del tar
    with sw("encode"):
        parquet = S.parquet_bytes(table)
    with sw("write"):
        storage.write_bytes(pq_uri, parquet)  # last: its presence marks the chunk done
    return _result(region, chunk, True, why, len(keep), failed, sw.seconds)


def stage_seconds(results: list[dict]) -> dict[str, float]:
    """:data:`STAGES` seconds summed over results of :func:`write_chunk`."""
    total = dict.fromkeys(STAGES, 0.0)
    for r in results:
        for k, v in json.loads(r["stages"]).items():
            total[k] += v
    return total


def remove_stale(root: str, set_name: str, planned: set[tuple[str, int]], webdataset: bool) -> list[str]:
    """Delete a set's shard files that belong to no planned chunk (left by an earlier config),
    and its tars when WebDataset output is off: a set's shards never mix two configs."""
    stale = []
    for uri in S.shard_files(root, set_name) + S.wds_files(root, set_name):
        key = S.chunk_of(uri)
        if key not in planned or (uri.endswith(".tar") and not webdataset):
            stale.append(uri)
    for uri in stale:
        storage.remove(uri)
    return stale
