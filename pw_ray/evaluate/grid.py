"""The evaluation grid on Ray Tune: one trial per cell, resumable, never running a cell twice.

A cell is (pretraining set, task, task region, method, seed); kNN and the linear probe run at
the first seed only unless ``evaluation.train_fraction`` < 1 (:func:`method_seeds`). Each trial:

1. returns the stored result when ``runs/cells/<cell>.json`` exists (a restored or resubmitted
   grid never recomputes a finished cell, whatever Tune's own state says);
2. otherwise records its start (``runs/cell_starts/<cell>/<uuid>``, for auditing reruns),
   evaluates the cell and writes the result JSON atomically before reporting it.

``pw-ray evaluate`` restores the Tune experiment in ``runs/grid`` when it exists
(``Tuner.restore(..., resume_errored=True)``: finished trials are kept, interrupted and errored
ones run again and skip at once if their result was stored before the interruption) and
otherwise starts it. Cells the restored experiment does not cover (the config gained a set,
a task, a region, a method or a seed; a trial that used up its retries) run in a follow-up
experiment ``runs/grid-<digest>``. Afterwards all cell results are gathered into
``results/results.parquet``.

A stored result records its lineage (:func:`cell_record`: the encoder's digest, the task's
digest, the method and the evaluation fields it depends on); before a grid runs, results whose
lineage differs from what the config and the stored encoders and tasks give now are removed and
recomputed (a re-exported encoder, a re-ingested task, a changed ``evaluation.knn_k``), and the
driver says which and why. The expected records go to ``runs/cells/_expected.json`` for the
trials, so a restored Tune experiment checks stored results against today's inputs too.

Test-only knob: ``PW_RAY_CELL_SLEEP_S`` (seconds) makes every trial sleep after recording its
start, so tests can interrupt a grid while trials are running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid

import numpy as np
import pandas as pd
import pyarrow as pa

from pw_ray import lineage, storage
from pw_ray.config import ExperimentConfig
from pw_ray.evaluate import tasks as T

log = logging.getLogger(__name__)

RESULT_COLUMNS = ["pretrain_set", "task", "task_type", "task_region", "method", "seed", "status", "score",
                  "accuracy", "macro_f1", "r2", "n_train", "n_test", "wall_s", "checkpoint", "encoder_sha256",
                  "reason"]

#: Test-only: seconds each trial sleeps after recording its start (to interrupt a running grid).
SLEEP_ENV = "PW_RAY_CELL_SLEEP_S"


def cell_id(cell: dict) -> str:
    """``<set>__<task>__<region>__<method>__s<seed>``, and ``__f<fraction>`` when the cell learns
    from a subsample of the training split (a result is never reused for another fraction)."""
    frac = float(cell.get("train_fraction", 1.0))
    return (f"{cell['pretrain_set']}__{cell['task']}__{cell['task_region']}__{cell['method']}__s{cell['seed']}"
            + (f"__f{frac:g}" if frac < 1 else ""))


def cell_uri(root: str, cell: dict) -> str:
    return storage.join(root, "runs", "cells", cell_id(cell) + ".json")


def starts_uri(root: str, cell: dict) -> str:
    """Folder of a cell's start markers: one file per time the cell was really evaluated."""
    return storage.join(root, "runs", "cell_starts", cell_id(cell))


def cell_starts(root: str, cell: dict) -> int:
    """How many times a cell was really evaluated (started), from its markers.

    Temp files of a marker write interrupted by a kill (``<uuid>.tmp-<hex>``) are not starts.
    """
    return sum(1 for u in storage.listdir(starts_uri(root, cell)) if ".tmp-" not in u.rsplit("/", 1)[-1])


def method_seeds(method: str, seeds: list[int], train_fraction: float) -> list[int]:
    """The evaluation seeds a method runs at.

    Fine-tuning draws its head init, data order and dropout from the seed: every seed. kNN and
    the linear probe (lbfgs logistic regression, ridge) are deterministic functions of the
    training embeddings, so on the whole training split a second seed would repeat the first
    cell's score: they run once, at the first seed. With ``train_fraction`` < 1 the seed draws
    the training subsample (:func:`pw_ray.evaluate.tasks.train_subsample`) for every method, so
    every method runs at every seed.
    """
    if method == "finetune" or train_fraction < 1:
        return list(seeds)
    return list(seeds[:1])


def grid_cells(cfg: ExperimentConfig) -> list[dict]:
    ev = cfg.evaluation
    sets = [s.name for s in cfg.pretrain_sets] + (["zero"] if ev.include_zero else [])
    return [
        {"pretrain_set": s, "task": t.name, "task_type": t.task_type, "task_region": r, "method": m, "seed": seed,
         "train_fraction": ev.train_fraction}
        for s in sets for t in cfg.tasks for r in ev.task_regions
        for m in ev.methods for seed in method_seeds(m, ev.seeds, ev.train_fraction)
    ]


def _split(table: pd.DataFrame, ids: np.ndarray, emb: np.ndarray, name: str):
    pos = {c: i for i, c in enumerate(ids)}
    part = table[table["split"] == name]
    return emb[[pos[c] for c in part["chip_id"]]], part["label"].to_numpy()


def skip_reason(table: pd.DataFrame, min_subset: int) -> str:
    """Why a task-region subset cannot be evaluated ('' when it can)."""
    n = len(table)
    counts = table["split"].value_counts()
    if n < min_subset:
        return f"subset has {n} chips, fewer than evaluation.min_subset={min_subset}"
    if counts.get("test", 0) == 0:
        return f"subset has {n} chips but an empty test split"
    if counts.get("train", 0) < 2:
        return f"subset has {n} chips but {counts.get('train', 0)} in the train split (need ≥ 2)"
    return ""


def evaluate_cell(root: str, cell: dict, eval_cfg: dict) -> dict:
    """Evaluate one cell (plain Python; Ray-free). Returns a result row.

    A subset below ``eval_cfg["min_subset"]`` chips, or without test chips, is not evaluated:
    the row says ``status="skipped"`` and why. kNN and linear probe read the cached embeddings
    (``eval_cfg["cache_embeddings"]`` False recomputes them in the cell: benchmarking only).
    """
    from pw_ray.evaluate import embeddings as EMB
    from pw_ray.evaluate import methods as M

    t0 = time.perf_counter()
    row = {k: cell[k] for k in ("pretrain_set", "task", "task_type", "task_region", "method", "seed")}
    row.update(status="ok", reason="", score=np.nan, accuracy=np.nan, macro_f1=np.nan, r2=np.nan,
               checkpoint=storage.join(root, "runs", "pretrain", cell["pretrain_set"], "export"),
               encoder_sha256="")
    table = T.region_subset(T.read_task(root, cell["task"]), cell["task_region"])
    table = T.train_subsample(table, float(cell.get("train_fraction", 1.0)), cell["seed"], cell["task_type"])
    row.update(n_train=int((table["split"] == "train").sum()), n_test=int((table["split"] == "test").sum()))
    reason = skip_reason(table, eval_cfg["min_subset"])
    if reason:
        row.update(status="skipped", reason=reason, wall_s=time.perf_counter() - t0)
        return row
    task_type = cell["task_type"]
    if task_type == "regression":
        table = table.assign(label=table["label"].astype(np.float64))
    if cell["method"] in ("knn", "linear"):
        if eval_cfg.get("cache_embeddings", True):
            ids, emb = EMB.read_embeddings(root, cell["pretrain_set"], cell["task"])
            row["encoder_sha256"] = EMB.cached_digest(root, cell["pretrain_set"], cell["task"]) or ""
        else:
            ids, emb = EMB.embed_task(root, cell["pretrain_set"], cell["task"],
                                      pooling=eval_cfg.get("pooling", EMB.DEFAULT_POOLING))
            row["encoder_sha256"] = EMB.encoder_digest(root, cell["pretrain_set"])
        xtr, ytr = _split(table, ids, emb, "train")
        xva, yva = _split(table, ids, emb, "val")
        xte, yte = _split(table, ids, emb, "test")
        if cell["method"] == "knn":
            pred = M.knn(xtr, ytr, xte, eval_cfg["knn_k"], task_type)
        else:
            pred, _ = M.linear_probe(xtr, ytr, xva, yva, xte, task_type, seed=cell["seed"])
    else:
        pred, yte = _finetune_cell(root, cell, table, eval_cfg)
        row["encoder_sha256"] = EMB.encoder_digest(root, cell["pretrain_set"])
    row.update(M.metrics(yte, pred, task_type))
    row["wall_s"] = time.perf_counter() - t0
    return row


def _finetune_cell(root: str, cell: dict, table: pd.DataFrame, eval_cfg: dict):
    import torch

    from pw_ray.evaluate import methods as M
    from pw_ray.evaluate.embeddings import DEFAULT_POOLING, input_quantization, normalised
    from pw_ray.ingest import shards as S
    from pw_ray.pretrain.trainer import load_encoder

    encoder, conf = load_encoder(root, cell["pretrain_set"], eval_cfg.get("pooling", DEFAULT_POOLING))
    chips = S.read_set(root, cell["task"], columns=["chip_id", "pixels"])
    pos = {c: i for i, c in enumerate(chips.column("chip_id").to_pylist())}
    pixels = S.read_pixels(chips)
    mean = torch.tensor(conf["mean"]), torch.tensor(conf["std"])

    def part(name):
        p = table[table["split"] == name]
        return (normalised(pixels[[pos[c] for c in p["chip_id"]]], *mean, quantize=input_quantization(conf)),
                p["label"].to_numpy())

    (xtr, ytr), (xva, yva), (xte, yte) = part("train"), part("val"), part("test")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    n_classes = len(np.unique(table["label"])) if cell["task_type"] == "classification" else None
    pred = M.finetune(encoder, xtr, ytr, xva, yva, xte, cell["task_type"], n_classes,
                      epochs=eval_cfg["finetune_epochs"], layer_decay=eval_cfg.get("layer_decay"),
                      device=device, seed=cell["seed"],
                      autocast_dtype=torch.bfloat16 if device == "cuda" else None)
    return pred, yte


#: Evaluation fields a method's result depends on (besides the encoder and the task).
METHOD_FIELDS = {"knn": ("knn_k",), "linear": (), "finetune": ("finetune_epochs", "layer_decay")}
#: Fields every cell depends on (``pooling``: how embeddings are formed, when the config has it).
CELL_FIELDS = ("min_subset", "train_fraction", "pooling")


def cell_record(cell: dict, eval_cfg: dict, encoder_sha256: str, task_digest: str) -> dict:
    """The lineage of one cell's result."""
    fields = CELL_FIELDS + METHOD_FIELDS.get(cell["method"], ())
    return lineage.record({"encoder_sha256": encoder_sha256, "task": task_digest, "method": cell["method"],
                           "evaluation": {k: eval_cfg.get(k) for k in fields if k in eval_cfg}})


def expected_records(root: str, cells: list[dict], eval_cfg: dict) -> dict[str, dict]:
    """``{cell_id: cell_record}`` from the stored encoders and tasks (each read once)."""
    from pw_ray.evaluate.embeddings import encoder_digest

    encoders = {s: encoder_digest(root, s) for s in sorted({c["pretrain_set"] for c in cells})}
    tasks = {t: T.task_digest(root, t) for t in sorted({c["task"] for c in cells})}
    return {cell_id(c): cell_record(c, eval_cfg, encoders[c["pretrain_set"]], tasks[c["task"]]) for c in cells}


def expected_uri(root: str) -> str:
    return storage.join(root, "runs", "cells", "_expected.json")


_EXPECTED: dict[str, tuple[str, dict]] = {}


def _expected_for(root: str, cid: str) -> dict | None:
    """The record the driver expects for a cell (read once per process and file version)."""
    uri = expected_uri(root)
    if not storage.exists(uri):
        return None
    text = storage.read_text(uri)
    if _EXPECTED.get(root, ("",))[0] != text:
        _EXPECTED[root] = (text, json.loads(text))
    return _EXPECTED[root][1].get(cid)


def run_cell_trial(config: dict) -> None:
    """The Tune trainable: reuse a stored result whose lineage is today's, else evaluate and
    store the result (with its lineage) before reporting."""
    from ray import tune

    root, cell = config["root"], config["cell"]
    uri = cell_uri(root, cell)
    expected = _expected_for(root, cell_id(cell))
    if storage.exists(uri):
        row = json.loads(storage.read_text(uri))
        if expected is None or lineage.why_redo(row.get("lineage"), expected) is None:
            tune.report({"score": _finite(row["score"]), "reused": True})
            return
    storage.write_text(storage.join(starts_uri(root, cell), uuid.uuid4().hex), str(os.getpid()))
    sleep_s = float(os.environ.get(SLEEP_ENV, "0") or 0)
    if sleep_s > 0:
        time.sleep(sleep_s)
    row = evaluate_cell(root, cell, config["eval"])
    if expected is not None:
        row["lineage"] = expected
    storage.write_text(uri, json.dumps(row, default=_json_default))
    tune.report({"score": _finite(row["score"]), "reused": False})


def _finite(v) -> float:
    v = float(v)
    return v if np.isfinite(v) else -1.0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(type(o))


def _resources(eval_cfg: dict):
    def fn(config: dict) -> dict:
        method = config["cell"]["method"]
        gpu = eval_cfg["gpus_per_finetune"] if method == "finetune" else eval_cfg["gpus_per_probe"]
        res = {"cpu": eval_cfg["cpus_per_trial"]}
        if gpu:
            res["gpu"] = gpu
        return res
    return fn


def drop_stale_results(root: str, cells: list[dict], eval_cfg: dict | None = None,
                       expected: dict[str, dict] | None = None) -> list[str]:
    """Remove stored results whose lineage differs from today's (see :func:`cell_record`), or
    that recorded none (written by an older pw-ray). Returns the ids of the dropped cells (they
    run again) and logs how many for each reason."""
    expected = expected if expected is not None else expected_records(root, cells, eval_cfg or {})
    dropped, why = [], {}
    for c in cells:
        uri = cell_uri(root, c)
        if not storage.exists(uri):
            continue
        reason = lineage.why_redo(json.loads(storage.read_text(uri)).get("lineage"), expected[cell_id(c)])
        if reason:
            storage.remove(uri)
            dropped.append(cell_id(c))
            why[reason] = why.get(reason, 0) + 1
    for reason, n in sorted(why.items(), key=lambda kv: -kv[1]):
        log.info("evaluate: %d stored cell results are stale (%s) and run again", n, reason)
    return dropped


def _tuner(trainable, cfg: ExperimentConfig, cells: list[dict], name: str, storage_path: str, storage_fs,
           eval_cfg: dict):
    from ray import tune

    from pw_ray.evaluate.progress import GridProgress

    return tune.Tuner(
        trainable,
        param_space={"root": storage.resolve(cfg.root), "eval": eval_cfg, "cell": tune.grid_search(cells)},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.evaluation.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, storage_filesystem=storage_fs, verbose=0,
                                  callbacks=[GridProgress(storage.resolve(cfg.root), [cell_id(c) for c in cells],
                                                          cell_id)],
                                  failure_config=tune.FailureConfig(max_failures=2)),
    )


def run_grid(cfg: ExperimentConfig, cells: list[dict]) -> dict:
    """Run (or resume) the Tune experiment over the cells not finished yet.

    Returns ``{"cells", "finished_before", "restored", "follow_up"}`` for logging and tests.
    """
    from ray import tune

    from pw_ray.runtime import keep_credentials_out_of_tune

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")  # see RAY_NOTES: lose at most 1 s of state
    keep_credentials_out_of_tune()  # else Tune puts the driver's AWS keys into every trial's runtime env
    expected = expected_records(cfg.root, cells, cfg.evaluation.model_dump())
    drop_stale_results(cfg.root, cells, expected=expected)
    storage.write_text(expected_uri(cfg.root), json.dumps(expected, sort_keys=True))
    todo = [c for c in cells if not storage.exists(cell_uri(cfg.root, c))]
    info = {"cells": len(cells), "finished_before": len(cells) - len(todo), "restored": False, "follow_up": None}
    if not todo:
        log.info("evaluate: all %d cells finished, nothing to run", len(cells))
        return info
    eval_cfg = cfg.evaluation.model_dump()
    # A path inside storage_fs (the bucket's key on an object store) and pw-ray's filesystem for it.
    storage_path, storage_fs = storage.ray_storage(storage.join(cfg.root, "runs"))
    path = storage.join(storage_path, "grid")
    trainable = tune.with_resources(run_cell_trial, _resources(eval_cfg))
    if tune.Tuner.can_restore(path, storage_filesystem=storage_fs):
        log.info("evaluate: restoring the grid at %s (%d of %d cells left)", path, len(todo), len(cells))
        tuner = tune.Tuner.restore(path, trainable, resume_errored=True, restart_errored=False,
                                   storage_filesystem=storage_fs)
        info["restored"] = True
    else:
        log.info("evaluate: starting a grid of %d cells (%d left)", len(cells), len(todo))
        tuner = _tuner(trainable, cfg, cells, "grid", storage_path, storage_fs, eval_cfg)
    tuner.fit()
    left = [c for c in cells if not storage.exists(cell_uri(cfg.root, c))]
    if left:
        # Cells the (restored) experiment does not cover, or whose trials ran out of retries:
        # a follow-up experiment named after exactly these cells, so rerunning resumes it too.
        digest = hashlib.sha256("\n".join(sorted(cell_id(c) for c in left)).encode()).hexdigest()[:10]
        name = f"grid-{digest}"
        log.info("evaluate: %d cells not covered by %s; running them in runs/%s", len(left), path, name)
        follow = storage.join(storage_path, name)
        if tune.Tuner.can_restore(follow, storage_filesystem=storage_fs):
            tuner = tune.Tuner.restore(follow, trainable, resume_errored=True, restart_errored=False,
                                       storage_filesystem=storage_fs)
        else:
            tuner = _tuner(trainable, cfg, left, name, storage_path, storage_fs, eval_cfg)
        tuner.fit()
        info["follow_up"] = name
    return info


def collect_results(cfg: ExperimentConfig, cells: list[dict]) -> pd.DataFrame:
    rows, missing = [], []
    for c in cells:
        uri = cell_uri(cfg.root, c)
        if storage.exists(uri):
            rows.append(json.loads(storage.read_text(uri)))
        else:
            missing.append(cell_id(c))
    if missing:
        raise RuntimeError(f"{len(missing)} cells have no result (first: {missing[:3]}); rerun `pw-ray evaluate`")
    df = pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS)
    df = df.sort_values(["pretrain_set", "task", "task_region", "method", "seed"]).reset_index(drop=True)
    storage.write_table(pa.Table.from_pandas(df, preserve_index=False),
                        storage.join(cfg.root, "results", "results.parquet"))
    return df


def skipped_summary(df: pd.DataFrame) -> list[str]:
    """One line per (task, task region) skipped, with the reason: what `pw-ray evaluate` reports."""
    sk = df[df["status"] == "skipped"]
    out = []
    for (task, region), g in sk.groupby(["task", "task_region"], sort=True):
        out.append(f"{task}/{region}: {g['reason'].iloc[0]} ({len(g)} cells skipped)")
    return out
