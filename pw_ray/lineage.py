"""Lineage: each stored output records a digest of exactly the inputs that made it.

A rerun reuses an output only when the digest of what it would be made from now equals the one
it recorded, and can say why it did not (``"stac.datetime changed"``). An input record is a
small JSON-able mapping (config sections, upstream digests); its digest is the SHA-256 of its
canonical JSON. Parquet outputs keep the record in their schema metadata under
:data:`PARQUET_KEY` (the footer: readable without the data), JSON outputs under ``"lineage"``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, is_dataclass
from typing import Any, Mapping

import numpy as np

#: Schema-metadata key of a Parquet output's lineage record.
PARQUET_KEY = b"pw_ray.lineage"


def plain(value: Any) -> Any:
    """``value`` as plain JSON types (pydantic models, dataclasses, numpy, tuples, sets)."""
    if hasattr(value, "model_dump"):
        return plain(value.model_dump(mode="json"))
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value):  # e.g. a signing function: its name is what identifies it
        return f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', type(value).__name__)}"
    return repr(value)


def canonical_json(value: Any) -> str:
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)


def digest(value: Any, length: int = 16) -> str:
    """Hex SHA-256 (first ``length`` characters) of ``value``'s canonical JSON."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


def bytes_digest(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def record(inputs: Mapping[str, Any]) -> dict:
    """``{"digest": …, "inputs": …}`` for a mapping of named inputs."""
    ins = plain(inputs)
    return {"digest": digest(ins), "inputs": ins}


def changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths at which two input records differ (``["stac.datetime", "chips.size_px"]``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            path = f"{prefix}.{k}" if prefix else str(k)
            if k not in old or k not in new:
                out.append(path)
            else:
                out += changes(old[k], new[k], path)
        return out
    return [] if old == new else [prefix or "<inputs>"]


def why_redo(old: Mapping | None, new: Mapping, force: bool = False) -> str | None:
    """Why an output recorded as ``old`` must be redone for ``new`` (None: it can be reused).

    ``old``/``new`` are :func:`record` results; ``old`` None means there is no output (or it
    recorded no lineage, e.g. written by an older pw-ray).
    """
    if force:
        return "--force"
    if old is None:
        return "not built yet"
    if old.get("digest") == new["digest"]:
        return None
    paths = changes(old.get("inputs"), new["inputs"]) if old.get("inputs") is not None else []
    if not paths:
        return "recorded without its inputs" if old.get("inputs") is None else "inputs changed"
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    return f"{shown} changed"


def attach(table, rec: Mapping):
    """A pyarrow table with ``rec`` in its schema metadata (other metadata kept)."""
    md = dict(table.schema.metadata or {})
    md[PARQUET_KEY] = json.dumps(plain(rec), sort_keys=True).encode()
    return table.replace_schema_metadata(md)


def from_metadata(metadata: Mapping | None) -> dict | None:
    """The lineage record of a Parquet schema's metadata, or None."""
    raw = (metadata or {}).get(PARQUET_KEY)
    return json.loads(raw) if raw else None


def of_parquet(uri: str) -> dict | None:
    """The lineage record of a stored Parquet file (reads only its footer), None if it has none
    or does not exist."""
    import pyarrow.parquet as pq

    from pw_ray import storage

    if not storage.exists(uri):
        return None
    fs, path = storage.filesystem(uri)
    return from_metadata(pq.read_schema(path, filesystem=fs).metadata)
