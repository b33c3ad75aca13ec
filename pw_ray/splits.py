"""Train/val/test splits of downstream task points, decided at plan time.

A task point's split must be known before any pretraining point is placed, so that plan can
keep pretraining away from held-out places (:mod:`pw_ray.leakage`); the same split is then
carried to the task table at ingest and used by evaluate. Plan writes them to
``splits/<task>.parquet`` (:func:`write_splits`: ``point_id, split, block``), beside the task's
``points/<task>.parquet``.

* **spatial** — the sphere is cut into blocks of about ``block_m`` × ``block_m`` metres
  (:func:`block_of`) and each block's split is a seeded function of the block alone
  (:func:`block_splits`): every point in a block gets its block's split, so neighbouring chips
  fall in one split and no block is in two. Which block a point lies in, and that block's split,
  depend on nothing else (not on the other points, the task or its size), so two tasks with
  the same ``split_fractions`` share their test blocks and a point's split can be recomputed
  from its coordinates at any stage.
* **random** — a seeded shuffle per region cut by the fractions
  (:func:`pw_ray.evaluate.methods.split_indices`), stratified by label where the labels are
  known at plan time (``points`` tasks).

The block grid: rows are bands of latitude ``block_m`` high (on a sphere of radius
:data:`pw_ray.plan.EARTH_RADIUS_M`); row ``r`` is cut into ``max(1, floor(circumference of its
middle latitude / block_m))`` equal longitude cells, so blocks are about ``block_m`` wide at
every latitude. A block is named ``"<row>:<col>"``.

Chips that sit within a chip side of a block edge can touch a chip of the neighbouring block,
which may be in another split: with ``block_m`` = 10 chip sides (the default) that is at most
about 4 chip sides in 10 of a block's edge zone, and :mod:`pw_ray.leakage`'s exclusion keeps
pretraining chips away from every held-out chip regardless.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from pw_ray import storage

SPLITS = ("train", "val", "test")
#: Columns of ``splits/<task>.parquet`` (docs/CONTRACTS.md).
SPLIT_COLUMNS = ["point_id", "split", "block"]
_EARTH_RADIUS_M = 6_371_008.8  # = pw_ray.plan.EARTH_RADIUS_M (not imported: plan imports shapely)


def _rows_cols(lon: np.ndarray, lat: np.ndarray, block_m: float) -> tuple[np.ndarray, np.ndarray]:
    if not block_m > 0:
        raise ValueError(f"block_m must be > 0 metres, got {block_m}")
    lon = np.asarray(lon, dtype=np.float64)
    lat = np.asarray(lat, dtype=np.float64)
    dlat = math.degrees(block_m / _EARTH_RADIUS_M)
    n_rows = int(math.ceil(180.0 / dlat))
    row = np.clip(np.floor((lat + 90.0) / dlat), 0, n_rows - 1).astype(np.int64)
    mid = np.radians(np.minimum(-90.0 + (row + 0.5) * dlat, 90.0))
    n_cols = np.maximum(1, np.floor(2 * math.pi * _EARTH_RADIUS_M * np.cos(mid) / block_m)).astype(np.int64)
    lon01 = np.mod(lon + 180.0, 360.0) / 360.0
    col = np.minimum(np.floor(lon01 * n_cols), n_cols - 1).astype(np.int64)
    return row, col


def block_of(lon, lat, block_m: float) -> np.ndarray:
    """Name (``"<row>:<col>"``) of the block each point lies in; lon/lat in degrees, shape (N,)."""
    row, col = _rows_cols(lon, lat, block_m)
    return np.array([f"{r}:{c}" for r, c in zip(row.tolist(), col.tolist())], dtype=object)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters neighbouring inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def block_uniform(lon, lat, block_m: float, seed: int) -> np.ndarray:
    """A number in [0, 1) per point that depends only on its block and ``seed``, shape (N,).

    Blocks' numbers behave as independent uniform draws (a SplitMix64 hash of seed, row and
    column), so cutting them at the split fractions assigns whole blocks.
    """
    row, col = _rows_cols(lon, lat, block_m)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps by design
        h = _mix64(np.full(row.shape, seed, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15))
        h = _mix64(h ^ row.astype(np.uint64))
        h = _mix64(h ^ col.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _cut(u: np.ndarray, fractions) -> np.ndarray:
    f = np.asarray(fractions, dtype=np.float64)
    if f.shape != (3,) or (f < 0).any() or f.sum() <= 0:
        raise ValueError(f"fractions must be three shares ≥ 0 (train, val, test), got {fractions}")
    edges = np.cumsum(f / f.sum())
    return np.array(SPLITS, dtype=object)[np.minimum(np.searchsorted(edges, u, side="right"), 2)]


def block_splits(lon, lat, block_m: float, fractions, seed: int) -> np.ndarray:
    """Spatial split of each point: its block's seeded draw cut by ``fractions`` (train, val, test)."""
    return _cut(block_uniform(lon, lat, block_m, seed), fractions)


def random_splits(regions, fractions, seed: int, labels=None) -> np.ndarray:
    """Seeded random split per region (stratified by ``labels`` when given), shape (N,)."""
    from pw_ray.evaluate.methods import split_indices

    regions = pd.Series(np.asarray(regions, dtype=object))
    out = np.empty(len(regions), dtype=object)
    for r in sorted(regions.unique()):
        m = (regions == r).to_numpy()
        strat = None if labels is None else np.asarray(labels)[m]
        out[m] = split_indices(int(m.sum()), strat, tuple(fractions), seed)
    return out


def assign_splits(points: pd.DataFrame, mode: str, fractions, *, block_m: float, split_seed: int,
                  seed: int, labels=None) -> pd.DataFrame:
    """``points`` (``lon``, ``lat``, ``region``) with ``split`` and ``block`` columns added.

    mode: ``spatial`` (blocks of ``block_m`` metres drawn with ``split_seed``) or ``random``
    (per region with ``seed``, stratified by ``labels`` when given). ``block`` is filled in
    both modes, so either can be audited for blocks that straddle splits.
    """
    lon = points["lon"].to_numpy(dtype=np.float64)
    lat = points["lat"].to_numpy(dtype=np.float64)
    out = points.copy()
    if mode == "spatial":
        out["split"] = block_splits(lon, lat, block_m, fractions, split_seed)
    elif mode == "random":
        out["split"] = random_splits(points["region"].to_numpy(), fractions, seed, labels)
    else:
        raise ValueError(f"split mode must be 'spatial' or 'random', got {mode!r}")
    out["block"] = block_of(lon, lat, block_m)
    return out


def splits_uri(root: str, task: str) -> str:
    return storage.join(root, "splits", f"{task}.parquet")


def split_inputs(cfg, spec) -> dict:
    """What a task's splits depend on besides its points (their lineage record's ``split``)."""
    out = {"split": spec.split, "split_fractions": [float(f) for f in spec.split_fractions], "seed": spec.seed,
           "block_m": round(float(cfg.block_m), 6)}
    if spec.split == "spatial":
        out["split_seed"] = cfg.plan.split_seed
    return out


def write_splits(root: str, task: str, splits: pd.DataFrame, rec: dict | None = None) -> None:
    """``splits/<task>.parquet``: ``point_id, split, block`` of a task's points, with the lineage
    record ``rec`` in its footer (:mod:`pw_ray.lineage`); atomic."""
    import pyarrow as pa

    from pw_ray import lineage

    table = pa.table({"point_id": pa.array(splits["point_id"].astype(str), pa.string()),
                      "split": pa.array(splits["split"].astype(str), pa.string()),
                      "block": pa.array(splits["block"].astype(str), pa.string())})
    storage.write_table(lineage.attach(table, rec) if rec is not None else table, splits_uri(root, task))


def read_splits(root: str, task: str) -> pd.DataFrame:
    return storage.read_table(splits_uri(root, task)).to_pandas()
