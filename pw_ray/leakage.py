"""Keeping pretraining away from downstream test areas, and auditing that it was.

"Where to pretrain" is a claim about generalisation: a pretraining chip that overlaps a
downstream test chip lets an encoder memorise the place it is tested on. Two pieces:

* **Exclusion at plan time.** Task points are planned first, each with its split
  (:mod:`pw_ray.splits`); the points of the held-out splits (``plan.exclude_splits``: test,
  optionally val) of every task, whatever its kind, become a keep-out set, and every pretraining
  point is drawn more than ``plan.exclusion_m`` metres (great circle) from all of them
  (:func:`pw_ray.plan.sample_away`: closer candidates are replaced by the next ones of the same
  continent's stream, so sets keep their size and region weights). The distance and the digest
  of the held-out points are part of each set's points lineage (:mod:`pw_ray.lineage`), so new
  test points or another distance plan the sets again; what was done — candidates replaced per
  set — is recorded in ``points/_plan.json`` (:func:`record_uri`) for the cards and the report.
* **Audit at analyze time** (:func:`audit`): per (pretraining set, task, held-out split), the
  distances from the task's held-out chips to their nearest pretraining chip — minimum, 1st
  percentile, median — and how many chips lie within the distance on either side. With
  exclusion on, both counts are 0 by construction; with exclusion off the audit measures against
  the chip-overlap distance (chip diagonal + two pixels), and the report says on its first page
  that the study ran without exclusion. Written to ``results/leakage.parquet``.

Distances: chip and point coordinates are the planned points' (a chip is centred on its point
to within a pixel). Nearest neighbours come from a k-d tree on unit vectors (chord distance is
monotone in great-circle distance), so an audit of 700k pretraining chips against tens of
thousands of test chips takes seconds (``bench/leakage.py``), never pairwise loops.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from pw_ray import storage
from pw_ray.plan import EARTH_RADIUS_M, _chord_for, unit_vectors

log = logging.getLogger(__name__)

#: Columns of ``results/leakage.parquet`` (docs/CONTRACTS.md).
AUDIT_COLUMNS = ["pretrain_set", "task", "split", "exclusion", "distance_m", "n_pretrain", "n_held_out",
                 "min_distance_m", "p01_distance_m", "median_distance_m", "n_held_out_within",
                 "n_pretrain_within", "replaced"]


# ----------------------------------------------------------------------------- plan side
def record_uri(root: str) -> str:
    """Where plan records what the exclusion did (``points/_plan.json``)."""
    return storage.join(root, "points", "_plan.json")


def held_out_points(task_points: Mapping[str, pd.DataFrame], splits: Sequence[str]) -> pd.DataFrame:
    """The task points pretraining must keep away from: columns ``task, point_id, split, lon, lat``.

    ``task_points``: task name → its planned points with a ``split`` column;
    ``splits``: the held-out splits (``plan.exclude_splits``).
    """
    parts = []
    for name, pts in task_points.items():
        if "split" not in pts.columns:
            raise ValueError(f"task {name}: planned points have no 'split' column; re-plan the task "
                             f"(pw-ray plan --force) so its splits are known before pretraining points")
        held = pts[pts["split"].isin(list(splits))]
        parts.append(pd.DataFrame({"task": name, "point_id": held["point_id"].to_numpy(),
                                   "split": held["split"].to_numpy(),
                                   "lon": held["lon"].to_numpy(np.float64), "lat": held["lat"].to_numpy(np.float64)}))
    if not parts:
        return pd.DataFrame({"task": [], "point_id": [], "split": [], "lon": np.empty(0), "lat": np.empty(0)})
    return pd.concat(parts, ignore_index=True)


def held_out_digest(held: pd.DataFrame) -> str:
    """sha256 (16 hex) of the held-out coordinates, independent of row order."""
    xy = np.round(held[["lon", "lat"]].to_numpy(np.float64), 9)
    xy = xy[np.lexsort((xy[:, 1], xy[:, 0]))] if len(xy) else xy
    return hashlib.sha256(np.ascontiguousarray(xy).tobytes()).hexdigest()[:16]


def exclusion_inputs(exclusion_m: float, exclude_splits: Sequence[str], held: pd.DataFrame) -> dict:
    """What a pretraining set's points depend on beyond their own spec (part of their lineage)."""
    return {"exclusion_m": round(float(exclusion_m), 6), "exclude_splits": list(exclude_splits),
            "held_out_points": int(len(held)), "held_out_digest": held_out_digest(held)}


def read_record(root: str) -> dict:
    """What the exclusion did per set (``{"sets": {name: {...}}}``); empty before plan wrote it."""
    uri = record_uri(root)
    record = json.loads(storage.read_text(uri)) if storage.exists(uri) else {}
    return {"sets": {}, **record}


def write_record(root: str, record: dict) -> None:
    storage.write_text(record_uri(root), json.dumps(record, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- distances
def _metres(chord: np.ndarray) -> np.ndarray:
    return 2 * EARTH_RADIUS_M * np.arcsin(np.clip(np.asarray(chord) / 2, 0.0, 1.0))


def nearest_m(query_lon, query_lat, ref_lon, ref_lat) -> np.ndarray:
    """Great-circle metres from each query point to its nearest reference point, shape (N,)."""
    if len(ref_lon) == 0:
        return np.full(len(query_lon), np.inf)
    tree = cKDTree(unit_vectors(np.asarray(ref_lon, np.float64), np.asarray(ref_lat, np.float64)))
    chord, _ = tree.query(unit_vectors(np.asarray(query_lon, np.float64), np.asarray(query_lat, np.float64)), k=1)
    return _metres(chord)


def count_within(query_lon, query_lat, ref_lon, ref_lat, distance_m: float) -> int:
    """How many query points have a reference point strictly within ``distance_m`` metres."""
    if len(ref_lon) == 0 or len(query_lon) == 0 or distance_m <= 0:
        return 0
    tree = cKDTree(unit_vectors(np.asarray(ref_lon, np.float64), np.asarray(ref_lat, np.float64)))
    chord, _ = tree.query(unit_vectors(np.asarray(query_lon, np.float64), np.asarray(query_lat, np.float64)),
                          k=1, distance_upper_bound=_chord_for(distance_m))
    return int((_metres(chord[np.isfinite(chord)]) < distance_m).sum())


def audit_pair(pretrain: pd.DataFrame, held: pd.DataFrame, distance_m: float) -> dict:
    """Leakage figures of one (pretraining set, held-out chips) pair; frames with ``lon``, ``lat``.

    Returns ``n_pretrain``, ``n_held_out``, ``min_distance_m``, ``p01_distance_m`` (1st
    percentile, linear interpolation), ``median_distance_m`` of the held-out chips' distances to
    their nearest pretraining chip (NaN without chips), ``n_held_out_within`` (held-out chips with
    a pretraining chip closer than ``distance_m``) and ``n_pretrain_within`` (pretraining chips
    with a held-out chip closer than ``distance_m``).
    """
    p_lon, p_lat = pretrain["lon"].to_numpy(np.float64), pretrain["lat"].to_numpy(np.float64)
    h_lon, h_lat = held["lon"].to_numpy(np.float64), held["lat"].to_numpy(np.float64)
    d = nearest_m(h_lon, h_lat, p_lon, p_lat) if len(held) and len(pretrain) else np.empty(0)
    return {
        "n_pretrain": int(len(pretrain)), "n_held_out": int(len(held)),
        "min_distance_m": float(d.min()) if d.size else float("nan"),
        "p01_distance_m": float(np.percentile(d, 1)) if d.size else float("nan"),
        "median_distance_m": float(np.median(d)) if d.size else float("nan"),
        "n_held_out_within": int((d < distance_m).sum()) if d.size else 0,
        "n_pretrain_within": count_within(p_lon, p_lat, h_lon, h_lat, distance_m),
    }


# ----------------------------------------------------------------------------- analyze side
def chip_locations(root: str, set_name: str, columns: Sequence[str] = ("chip_id", "lon", "lat")) -> pd.DataFrame:
    """``chip_id, lon, lat`` of every chip in a set's shards (column projection: no pixels read)."""
    import pyarrow.dataset as pads

    from pw_ray.ingest import shards as S

    files = S.shard_files(root, set_name)
    if not files:
        return pd.DataFrame({c: [] for c in columns})
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    return pads.dataset(paths, filesystem=fs, format="parquet").to_table(columns=list(columns)).to_pandas()


def held_out_chips(root: str, task: str, splits: Sequence[str]) -> pd.DataFrame:
    """The task's chips in ``splits``: ``chip_id, split, lon, lat`` (task table ⋈ shard locations)."""
    from pw_ray.evaluate.tasks import read_task

    table = read_task(root, task)
    table = table[table["split"].isin(list(splits))][["chip_id", "split"]]
    return table.merge(chip_locations(root, task), on="chip_id", how="inner")


def audit(cfg) -> pd.DataFrame:
    """The leakage audit of a study (``AUDIT_COLUMNS``): one row per (pretraining set, task,
    held-out split), for the test split and every other split in ``plan.exclude_splits``."""
    exclusion = cfg.exclusion_m
    distance = exclusion if exclusion > 0 else cfg.chip_overlap_m
    splits = list(dict.fromkeys(["test", *cfg.plan.exclude_splits]))
    record = read_record(cfg.root).get("sets", {})
    held = {t.name: held_out_chips(cfg.root, t.name, splits) for t in cfg.tasks}
    rows = []
    for s in cfg.pretrain_sets:
        pretrain = chip_locations(cfg.root, s.name, ("lon", "lat"))
        replaced = (record.get(s.name) or {}).get("replaced")
        for t in cfg.tasks:
            for split in splits:
                part = held[t.name][held[t.name]["split"] == split]
                rows.append({"pretrain_set": s.name, "task": t.name, "split": split, "exclusion": exclusion > 0,
                             "distance_m": float(distance), **audit_pair(pretrain, part, distance),
                             "replaced": None if replaced is None else int(replaced)})
    out = pd.DataFrame(rows, columns=AUDIT_COLUMNS)
    out["replaced"] = out["replaced"].astype("Int64")
    return out


def audit_uri(root: str) -> str:
    return storage.join(root, "results", "leakage.parquet")


def write_audit(cfg) -> pd.DataFrame:
    """:func:`audit` → ``results/leakage.parquet``; logs one line per pair with chips too close."""
    import pyarrow as pa

    table = audit(cfg)
    storage.write_table(pa.Table.from_pandas(table, preserve_index=False), audit_uri(cfg.root))
    close = table[table["n_held_out_within"] > 0]
    for r in close.itertuples(index=False):
        log.warning("leakage: %d %s chips of task %s lie within %.0f m of a chip of pretraining set %s%s",
                    r.n_held_out_within, r.split, r.task, r.distance_m, r.pretrain_set,
                    "" if r.exclusion else " (plan.exclusion_m is 0: exclusion off)")
    log.info("leakage audit: %d (set, task, split) pairs, %d with chips within the distance → %s",
             len(table), len(close), audit_uri(cfg.root))
    return table


def read_audit(root: str) -> pd.DataFrame | None:
    uri = audit_uri(root)
    return storage.read_table(uri).to_pandas() if storage.exists(uri) else None
