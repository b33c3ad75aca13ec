"""Downstream tasks: labelled chip tables with a ``region`` column and fixed splits.

A task's chips are ingested like a pretraining set (``shards/<task>/``); its labels and splits
live in ``tasks/<task>.parquet`` (``chip_id, region, label, split, task_type``). Region subsets are filters
on ``region``; the ``global`` subset is the whole table.

Synthetic tasks (the demo's) take their labels from what the pixels really show, through the
land-cover fractions the ingest recorded for each chip:

* ``synthetic-landcover`` — classification: the dominant land-cover class of the chip.
* ``synthetic-population`` — regression: a population-like density
  ``log1p(4000·built + 300·crop + 40·(grass + tree + shrub))`` plus Gaussian noise (σ 0.1, seeded).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from pw_ray import storage
from pw_ray.config import CONTINENTS, GLOBAL, TaskSpec

log = logging.getLogger(__name__)


def task_uri(root: str, task: str) -> str:
    return storage.join(root, "tasks", f"{task}.parquet")


def population_density(lc_fractions: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Population-like target from land-cover fractions (N, K) → (N,) log people/km²."""
    idx = {n: i for i, n in enumerate(class_names)}

    def f(name):
        return lc_fractions[:, idx[name]] if name in idx else 0.0

    return np.log1p(4000 * f("built") + 300 * f("crop") + 40 * (f("grass") + f("tree") + f("shrub")))


def synthetic_labels(meta: pd.DataFrame, spec: TaskSpec, class_names: list[str]) -> pd.Series:
    if spec.kind == "synthetic-landcover":
        return meta["landcover"].astype(str)
    fr = np.stack([np.asarray(v, dtype=np.float32) for v in meta["lc_fractions"]])
    if fr.shape[1] != len(class_names):
        raise ValueError(f"task {spec.name}: chips carry no land-cover fractions; the source needs a land-cover layer")
    rng = np.random.default_rng(spec.seed)
    y = population_density(fr, class_names) + rng.normal(0, 0.1, len(fr))
    return pd.Series(y.astype(np.float64), index=meta.index)


def make_splits(labels: pd.Series, regions: pd.Series, spec: TaskSpec) -> np.ndarray:
    """Random train/val/test splits of chips, stratified by label (classification) within each region.

    For chip tables whose points were not planned with a split (fixtures, old roots); planned
    tasks carry their split from plan (:func:`build_labels` ``splits``).
    """
    from pw_ray.evaluate.methods import split_indices

    out = np.empty(len(labels), dtype=object)
    for r in sorted(regions.unique()):
        m = (regions == r).to_numpy()
        strat = labels[m].to_numpy() if spec.task_type == "classification" else None
        out[m] = split_indices(int(m.sum()), strat, tuple(spec.split_fractions), spec.seed)
    return out


def build_labels(meta: pd.DataFrame, spec: TaskSpec, class_names: list[str],
                 splits: pd.DataFrame | None = None, *, block_m: float | None = None,
                 split_seed: int = 0) -> pd.DataFrame:
    """The task table (``chip_id, region, label, split, block, task_type``) of a task's chips.

    ``block`` is the spatial block of the chip's point (:mod:`pw_ray.splits`), null where no
    block is known (random splits made here).

    splits: the task's planned splits (``splits/<task>.parquet``: ``point_id, split, block``): every
        chip takes its point's split (all seasons of a point in one split), so evaluate uses
        exactly the split plan kept pretraining away from. None: decided here from the chips —
        spatial with ``block_m`` (the same function of location plan uses), random as
        :func:`make_splits`.
    """
    if spec.kind.startswith("synthetic-"):
        labels = synthetic_labels(meta, spec, class_names)
    elif "label" in meta.columns:
        labels = meta["label"]
    else:
        raise ValueError(f"task {spec.name}: chips have no 'label' column")
    df = pd.DataFrame({"chip_id": meta["chip_id"].to_numpy(), "region": meta["region"].to_numpy(),
                       "label": labels.to_numpy()})
    if splits is not None:
        planned = splits.drop_duplicates("point_id").set_index("point_id")
        point_ids = meta["point_id"].to_numpy()
        missing = pd.Index(point_ids).difference(planned.index)
        if len(missing):
            raise ValueError(f"task {spec.name}: {len(missing)} chips come from points with no planned split "
                             f"(first: {missing[0]}); re-plan the task")
        df["split"] = planned.loc[point_ids, "split"].to_numpy()
        df["block"] = planned.loc[point_ids, "block"].to_numpy() if "block" in planned.columns else None
    elif spec.split == "spatial":
        from pw_ray.splits import block_of, block_splits

        if block_m is None:
            raise ValueError(f"task {spec.name}: a spatial split needs block_m (cfg.block_m) or planned splits")
        lon, lat = meta["lon"].to_numpy(np.float64), meta["lat"].to_numpy(np.float64)
        df["split"] = block_splits(lon, lat, block_m, spec.split_fractions, split_seed)
        df["block"] = block_of(lon, lat, block_m)
    else:
        df["split"] = make_splits(df["label"], df["region"], spec)
        df["block"] = None
    df["task_type"] = spec.task_type
    return df.sort_values("chip_id").reset_index(drop=True)


def write_task(root: str, spec: TaskSpec, table: pd.DataFrame) -> None:
    if spec.task_type == "classification":
        table = table.assign(label=table["label"].astype(str))
    storage.write_table(pa.Table.from_pandas(table, preserve_index=False), task_uri(root, spec.name))


def read_task(root: str, task: str) -> pd.DataFrame:
    return storage.read_table(task_uri(root, task)).to_pandas()


def region_subset(table: pd.DataFrame, region: str) -> pd.DataFrame:
    """Rows of a task region (``global``: all rows)."""
    if region == GLOBAL:
        return table
    if region not in CONTINENTS:
        raise ValueError(f"unknown task region {region!r}")
    return table[table["region"] == region]


def points_from_csv(uri: str, name: str, seed: int) -> pd.DataFrame:
    """Labelled points (CSV or Parquet of lon, lat, label — the MOSAIKS shape) → plan rows."""
    from pw_ray.regions import regions_of

    if uri.endswith(".parquet"):
        df = storage.read_table(uri).to_pandas()
    else:
        import io

        df = pd.read_csv(io.StringIO(storage.read_text(uri)))
    missing = {"lon", "lat", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"labelled points {uri} lack columns {sorted(missing)}; need lon, lat, label")
    df = df.reset_index(drop=True)
    df["region"] = regions_of(df["lon"].to_numpy(), df["lat"].to_numpy())
    dropped = df["region"].isna().sum()
    if dropped:
        log.warning("task %s: %d labelled points are not on a continent, dropped", name, dropped)
    df = df.dropna(subset=["region"]).reset_index(drop=True)
    df["point_id"] = [f"{name}-{i:06d}" for i in range(len(df))]
    df["set"] = name
    df["seed"] = seed
    return df
