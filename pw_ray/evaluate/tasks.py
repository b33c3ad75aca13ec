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
    from pw_ray.splits import random_splits

    return random_splits(regions.to_numpy(), spec.split_fractions, spec.seed,
                         labels.to_numpy() if spec.task_type == "classification" else None)


def build_labels(meta: pd.DataFrame, spec: TaskSpec, class_names: list[str],
                 splits: pd.DataFrame | None = None) -> pd.DataFrame:
    """The task table (``chip_id, region, label, split, block, task_type``) of a task's chips.

    ``block`` is the spatial block of the chip's point (:mod:`pw_ray.splits`), null where no
    block is known (random splits made here).

    splits: the task's planned splits (``splits/<task>.parquet``: ``point_id, split, block``): every
        chip takes its point's split (all seasons of a point in one split), so evaluate uses
        exactly the split plan kept pretraining away from. None: random splits made here from
        the chips (:func:`make_splits`); a spatial split is made by plan only.
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
        raise ValueError(f"task {spec.name}: a spatial split is made by plan (splits/{spec.name}.parquet); "
                         "run `pw-ray plan` for this task")
    else:
        df["split"] = make_splits(df["label"], df["region"], spec)
        df["block"] = None
    df["task_type"] = spec.task_type
    return df.sort_values("chip_id").reset_index(drop=True)


def task_record(root: str, name: str, table: pd.DataFrame) -> dict:
    """The lineage of a task table: its labels and splits, and the chunks its chips are in (the
    lineage digests of the task's shards), so embeddings and cells know when the task changed."""
    from pw_ray import lineage
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.chunks import frame_digest

    chunks = sorted((lineage.of_parquet(u) or {}).get("digest", "") for u in S.shard_files(root, name))
    return lineage.record({"labels": frame_digest(table), "chunks": lineage.digest(chunks)})


def write_task(root: str, spec: TaskSpec, table: pd.DataFrame) -> None:
    """``tasks/<task>.parquet`` with its lineage (:func:`task_record`)."""
    from pw_ray import lineage

    if spec.task_type == "classification":
        table = table.assign(label=table["label"].astype(str))
    out = lineage.attach(pa.Table.from_pandas(table, preserve_index=False), task_record(root, spec.name, table))
    storage.write_table(out, task_uri(root, spec.name))


def task_digest(root: str, task: str) -> str:
    """The lineage digest of a stored task table (from its footer); a table written before
    lineage existed is identified by its bytes."""
    from pw_ray import lineage

    rec = lineage.of_parquet(task_uri(root, task))
    return rec["digest"] if rec else lineage.bytes_digest(storage.read_bytes(task_uri(root, task)))


def read_task(root: str, task: str) -> pd.DataFrame:
    return storage.read_table(task_uri(root, task)).to_pandas()


def region_subset(table: pd.DataFrame, region: str) -> pd.DataFrame:
    """Rows of a task region (``global``: all rows)."""
    if region == GLOBAL:
        return table
    if region not in CONTINENTS:
        raise ValueError(f"unknown task region {region!r}")
    return table[table["region"] == region]


def train_subsample(table: pd.DataFrame, fraction: float, seed: int, task_type: str) -> pd.DataFrame:
    """``table`` with its training split thinned to ``fraction`` (``evaluation.train_fraction``);
    val and test rows untouched, so every seed is scored on the same chips.

    A seeded draw (``seed``: the evaluation seed) over the training rows in ``chip_id`` order:
    per label for classification, each class keeping ``max(1, round(m·fraction))`` of its ``m``
    chips (no class vanishes from a few-shot split); ``max(1, round(n·fraction))`` of all ``n``
    for regression. ``fraction`` 1 returns ``table`` itself.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"train fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return table
    train = table[table["split"] == "train"].sort_values("chip_id", kind="stable")
    rng = np.random.default_rng(seed)
    groups = [g for _, g in train.groupby("label", sort=True)] if task_type == "classification" else [train]
    keep = [g.index[rng.permutation(len(g))[:max(1, int(round(len(g) * fraction)))]] for g in groups if len(g)]
    kept = set(np.concatenate(keep).tolist()) if keep else set()
    return table[(table["split"] != "train") | table.index.isin(kept)]


def _line_numbers(mask: np.ndarray, limit: int = 5) -> str:
    """CSV line numbers (header = line 1) of the rows where ``mask`` holds, at most ``limit``."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(r + 2) for r in rows[:limit])
    return shown + (f" and {len(rows) - limit} more" if len(rows) > limit else "")


def points_from_csv(uri: str, name: str, seed: int, task_type: str = "classification",
                    max_off_fraction: float = 0.05) -> pd.DataFrame:
    """Labelled points (CSV or Parquet of lon, lat, label — the MOSAIKS shape) → plan rows.

    Every problem names the file and the lines: an empty file, a header without rows, missing
    columns, coordinates that are not numbers or out of range, missing labels, non-numeric
    labels for a regression task. Points on no continent (the ocean, Antarctica) are dropped
    with a warning that names them; more than ``max_off_fraction`` of them is an error.
    """
    from pw_ray.regions import regions_of

    if uri.endswith(".parquet"):
        df = storage.read_table(uri).to_pandas()
    else:
        import io

        try:
            df = pd.read_csv(io.StringIO(storage.read_text(uri)))
        except pd.errors.EmptyDataError:
            raise ValueError(f"labelled points {uri} is empty; it needs a header 'lon,lat,label' and one row "
                             f"per point") from None
        except pd.errors.ParserError as err:
            raise ValueError(f"labelled points {uri} is not a readable CSV: {err}") from None
    missing = {"lon", "lat", "label"} - set(df.columns)
    if missing:
        raise ValueError(f"labelled points {uri} lack columns {sorted(missing)}; need lon, lat, label "
                         f"(found: {', '.join(map(str, df.columns))})")
    if df.empty:
        raise ValueError(f"labelled points {uri} has a header but no rows")
    df = df.reset_index(drop=True)
    for col, bound in (("lon", 180.0), ("lat", 90.0)):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = num.isna().to_numpy()
        if bad.any():
            raise ValueError(f"labelled points {uri}: {col} is not a number on line(s) {_line_numbers(bad)} "
                             f"(first value: {df[col][bad].iloc[0]!r})")
        out = (num.abs() > bound).to_numpy()
        if out.any():
            raise ValueError(f"labelled points {uri}: {col} outside [-{bound:g}, {bound:g}] on line(s) "
                             f"{_line_numbers(out)}")
        df[col] = num.astype(float)
    no_label = df["label"].isna().to_numpy() | (df["label"].astype(str).str.strip() == "").to_numpy()
    if no_label.any():
        raise ValueError(f"labelled points {uri}: no label on line(s) {_line_numbers(no_label)}")
    if task_type == "regression":
        y = pd.to_numeric(df["label"], errors="coerce")
        bad = y.isna().to_numpy()
        if bad.any():
            raise ValueError(f"labelled points {uri}: task_type regression needs numeric labels; line(s) "
                             f"{_line_numbers(bad)} are not (first: {df['label'][bad].iloc[0]!r})")
        df["label"] = y.astype(float)
    df["region"] = regions_of(df["lon"].to_numpy(), df["lat"].to_numpy())
    off = df["region"].isna().to_numpy()
    if off.any():
        msg = (f"labelled points {uri}: {int(off.sum())} of {len(df)} points are on no continent (ocean or "
               f"Antarctica), line(s) {_line_numbers(off)}")
        if off.mean() > max_off_fraction:
            raise ValueError(f"{msg}; more than chips.max_failed_fraction = {max_off_fraction:g} of the file "
                             f"— check the coordinate order (lon, lat) and the CRS (WGS 84 degrees)")
        log.warning("task %s: %s; they are dropped", name, msg)
    df = df[~off].reset_index(drop=True)
    df["point_id"] = [f"{name}-{i:06d}" for i in range(len(df))]
    df["set"] = name
    df["seed"] = seed
    return df
