"""The evaluation grid: cells, skips, the embedding cache, fine-tuning, progress, a whole small grid."""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from pw_ray import storage
from pw_ray.evaluate import embeddings as EMB
from pw_ray.evaluate import grid as G
from pw_ray.evaluate.progress import format_duration, progress_line
from tests.evaluate.data import export_random_encoder


def _cell(cfg, **kw):
    base = {"pretrain_set": "europe", "task": "landcover", "task_type": "classification",
            "task_region": "global", "method": "knn", "seed": 0}
    return {**base, **kw}


def _embed_all(cfg):
    for s in ("europe", "zero"):
        for t in cfg.tasks:
            EMB.compute_embeddings(cfg.root, s, t.name)


# ----------------------------------------------------------------------------- cells (Ray-free)
def test_subset_below_min_subset_is_skipped_with_reason(eval_cfg):
    row = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, task_region="oc"), eval_cfg.evaluation.model_dump())
    assert row["status"] == "skipped"
    assert row["reason"] == "subset has 6 chips, fewer than evaluation.min_subset=10"
    assert math.isnan(row["score"]) and math.isnan(row["accuracy"])


def test_subset_without_test_chips_is_skipped_with_reason(eval_cfg):
    ev = dict(eval_cfg.evaluation.model_dump(), min_subset=1)
    row = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, task_region="oc"), ev)
    assert row["status"] == "skipped" and row["reason"] == "subset has 6 chips but an empty test split"
    assert row["n_test"] == 0


def test_embeddings_are_computed_once_per_checkpoint_and_task(eval_cfg, monkeypatch):
    uri = EMB.compute_embeddings(eval_cfg.root, "europe", "landcover")
    mtime = os.path.getmtime(uri)

    def no_recompute(*a, **k):
        raise AssertionError("embeddings recomputed although cached")

    monkeypatch.setattr(EMB, "embed_task", no_recompute)
    assert EMB.compute_embeddings(eval_cfg.root, "europe", "landcover") == uri
    assert os.path.getmtime(uri) == mtime
    ids, emb = EMB.read_embeddings(eval_cfg.root, "europe", "landcover")
    assert emb.shape[0] == len(ids) == 66 and emb.dtype == np.float32
    assert EMB.cached_digest(eval_cfg.root, "europe", "landcover") == EMB.encoder_digest(eval_cfg.root, "europe")


def test_knn_and_linear_read_the_cache_and_never_load_the_encoder(eval_cfg, monkeypatch):
    import pw_ray.pretrain.trainer as trainer

    _embed_all(eval_cfg)
    reads = []
    real_read = EMB.read_embeddings
    monkeypatch.setattr(EMB, "read_embeddings", lambda *a: reads.append(a) or real_read(*a))

    def no_encoder(*a, **k):
        raise AssertionError("a probe cell loaded the encoder")

    monkeypatch.setattr(trainer, "load_encoder", no_encoder)
    mtime = os.path.getmtime(EMB.embeddings_uri(eval_cfg.root, "europe", "landcover"))
    ev = eval_cfg.evaluation.model_dump()
    for method in ("knn", "linear"):
        row = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method=method), ev)
        assert row["status"] == "ok" and 0 <= row["accuracy"] <= 1
        assert row["encoder_sha256"] == EMB.encoder_digest(eval_cfg.root, "europe")
    assert reads == [(eval_cfg.root, "europe", "landcover")] * 2
    assert os.path.getmtime(EMB.embeddings_uri(eval_cfg.root, "europe", "landcover")) == mtime


def test_a_new_checkpoint_invalidates_cached_embeddings_and_results(eval_cfg):
    uri = EMB.compute_embeddings(eval_cfg.root, "europe", "landcover")
    old = EMB.cached_digest(eval_cfg.root, "europe", "landcover")
    cell = _cell(eval_cfg)
    row = G.evaluate_cell(eval_cfg.root, cell, eval_cfg.evaluation.model_dump())
    storage.write_text(G.cell_uri(eval_cfg.root, cell), json.dumps(row, default=G._json_default))

    export_random_encoder(eval_cfg, "europe", seed=999)  # "pretrained again"
    EMB.compute_embeddings(eval_cfg.root, "europe", "landcover")
    new = EMB.cached_digest(eval_cfg.root, "europe", "landcover")
    assert new != old and new == EMB.encoder_digest(eval_cfg.root, "europe")
    assert storage.exists(uri)
    assert G.drop_stale_results(eval_cfg.root, [cell]) == [G.cell_id(cell)]
    assert not storage.exists(G.cell_uri(eval_cfg.root, cell))


def test_another_pooling_invalidates_cached_embeddings_and_results(eval_cfg):
    from pw_ray import lineage

    uri = EMB.compute_embeddings(eval_cfg.root, "europe", "landcover")  # the default, mean_then_norm
    ids, satmae = EMB.read_embeddings(eval_cfg.root, "europe", "landcover")
    ev = eval_cfg.evaluation.model_dump()
    cell = _cell(eval_cfg)
    row = G.evaluate_cell(eval_cfg.root, cell, ev)
    row["lineage"] = G.expected_records(eval_cfg.root, [cell], ev)[G.cell_id(cell)]
    storage.write_text(G.cell_uri(eval_cfg.root, cell), json.dumps(row, default=G._json_default))
    assert G.drop_stale_results(eval_cfg.root, [cell], ev) == []

    EMB.compute_embeddings(eval_cfg.root, "europe", "landcover", pooling="norm_then_mean")
    assert lineage.of_parquet(uri)["inputs"]["pooling"] == "norm_then_mean"
    ids2, mae = EMB.read_embeddings(eval_cfg.root, "europe", "landcover")
    assert list(ids2) == list(ids) and np.abs(mae - satmae).max() > 0.1
    # SatMAE's head standardises each vector; the pretrained norm's output does not
    np.testing.assert_allclose(satmae.mean(axis=1), 0, atol=1e-4)
    assert G.drop_stale_results(eval_cfg.root, [cell], dict(ev, pooling="norm_then_mean")) == [G.cell_id(cell)]


def test_recompute_mode_gives_the_cached_result(eval_cfg):
    _embed_all(eval_cfg)
    ev = eval_cfg.evaluation.model_dump()
    cached = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method="linear"), ev)
    fresh = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method="linear"), dict(ev, cache_embeddings=False))
    assert fresh["accuracy"] == pytest.approx(cached["accuracy"])
    assert fresh["encoder_sha256"] == cached["encoder_sha256"]


def test_finetune_cell_gives_a_score(eval_cfg):
    row = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method="finetune"), eval_cfg.evaluation.model_dump())
    assert row["status"] == "ok"
    assert 0 <= row["accuracy"] <= 1 and 0 <= row["macro_f1"] <= 1 and row["score"] == row["accuracy"]
    assert row["encoder_sha256"] == EMB.encoder_digest(eval_cfg.root, "europe") and row["wall_s"] > 0


def test_finetune_regression_cell_gives_an_r2(eval_cfg):
    cell = _cell(eval_cfg, task="population", task_type="regression", method="finetune")
    row = G.evaluate_cell(eval_cfg.root, cell, eval_cfg.evaluation.model_dump())
    assert row["status"] == "ok" and np.isfinite(row["r2"]) and row["r2"] <= 1


def test_trial_resources_follow_the_config():
    res = G._resources({"cpus_per_trial": 2, "gpus_per_probe": 0.25, "gpus_per_finetune": 1})
    assert res({"cell": {"method": "knn"}}) == {"cpu": 2, "gpu": 0.25}
    assert res({"cell": {"method": "linear"}}) == {"cpu": 2, "gpu": 0.25}
    assert res({"cell": {"method": "finetune"}}) == {"cpu": 2, "gpu": 1}
    cpu_only = G._resources({"cpus_per_trial": 1, "gpus_per_probe": 0, "gpus_per_finetune": 0})
    assert cpu_only({"cell": {"method": "finetune"}}) == {"cpu": 1}


# ----------------------------------------------------------------------------- seeds, train fraction, layer decay
def _seeds_by_method(cells):
    out = {}
    for c in cells:
        out.setdefault(c["method"], []).append(c["seed"])
    return {m: sorted(set(v)) for m, v in out.items()}


def test_seeds_are_spent_only_where_they_change_the_score(eval_cfg):
    ev = dict(eval_cfg.evaluation.model_dump(), methods=["knn", "linear", "finetune"], seeds=[3, 1, 2])
    whole = eval_cfg.model_copy(update={"evaluation": type(eval_cfg.evaluation)(**ev)})
    assert _seeds_by_method(G.grid_cells(whole)) == {"knn": [3], "linear": [3], "finetune": [1, 2, 3]}
    n_set_task_region = 2 * 2 * 2
    assert len(G.grid_cells(whole)) == n_set_task_region * (1 + 1 + 3)
    few = whole.model_copy(update={"evaluation": type(eval_cfg.evaluation)(**dict(ev, train_fraction=0.5))})
    cells = G.grid_cells(few)
    assert _seeds_by_method(cells) == {m: [1, 2, 3] for m in ("knn", "linear", "finetune")}
    assert all(G.cell_id(c).endswith("__f0.5") for c in cells)
    assert G.cell_id(G.grid_cells(whole)[0]).endswith("__s3")


def test_on_the_whole_training_split_probes_do_not_depend_on_the_seed(eval_cfg):
    """Why kNN and the linear probe run once: a second seed repeats the first's predictions."""
    _embed_all(eval_cfg)
    ev = eval_cfg.evaluation.model_dump()
    for method in ("knn", "linear"):
        a, b = (G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method=method, seed=s), ev) for s in (0, 7))
        assert a["status"] == b["status"] == "ok"
        assert (a["accuracy"], a["macro_f1"], a["n_train"]) == (b["accuracy"], b["macro_f1"], b["n_train"])


def test_train_fraction_draws_a_seeded_stratified_subsample(eval_cfg):
    from pw_ray.evaluate import tasks as T

    table = T.read_task(eval_cfg.root, "landcover")
    train = table[table["split"] == "train"]
    picks = {s: T.train_subsample(table, 0.5, s, "classification") for s in (0, 1)}
    for s, sub in picks.items():
        kept = sub[sub["split"] == "train"]
        assert sub[sub["split"] != "train"].equals(table[table["split"] != "train"])
        for label, n in train["label"].value_counts().items():  # every class, about half of it
            assert (kept["label"] == label).sum() == max(1, round(n * 0.5))
        assert kept["chip_id"].tolist() == T.train_subsample(table, 0.5, s, "classification")[
            lambda d: d["split"] == "train"]["chip_id"].tolist()
    assert set(picks[0]["chip_id"]) != set(picks[1]["chip_id"])
    assert T.train_subsample(table, 1.0, 0, "classification") is table

    _embed_all(eval_cfg)
    ev = eval_cfg.evaluation.model_dump()
    rows = [G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method="knn", seed=s, train_fraction=0.5), ev)
            for s in (0, 1)]
    assert rows[0]["n_train"] == rows[1]["n_train"] == len(picks[0][picks[0]["split"] == "train"])
    assert rows[0]["n_train"] < len(train) and rows[0]["n_test"] == (table["split"] == "test").sum()


def test_layer_decay_reaches_fine_tuning(eval_cfg, monkeypatch):
    from pw_ray.evaluate import methods as M

    seen = {}

    def fake_finetune(encoder, xtr, ytr, xva, yva, xte, task_type, n_classes, **kw):
        seen.update(kw)
        return np.full(len(xte), ytr[0])

    monkeypatch.setattr(M, "finetune", fake_finetune)
    ev = dict(eval_cfg.evaluation.model_dump(), layer_decay=0.65)
    row = G.evaluate_cell(eval_cfg.root, _cell(eval_cfg, method="finetune", seed=4), ev)
    assert row["status"] == "ok" and seen["layer_decay"] == 0.65 and seen["seed"] == 4


# ----------------------------------------------------------------------------- progress
def test_progress_line_counts_done_cells_and_estimates_the_rest():
    assert progress_line(37, 224, 10, 20.0) == "cells 37/224, ETA 6m14s"
    assert progress_line(5, 10, 0, 0.0, reused=5) == "cells 5/10 (5 reused), ETA unknown"
    assert progress_line(10, 10, 10, 75.0) == "cells 10/10, done in 1m15s"
    assert format_duration(3725) == "1h02m" and format_duration(9.6) == "10s"


def test_progress_shows_the_first_cell_then_one_line_per_interval_and_the_last(tmp_path, caplog, monkeypatch):
    from types import SimpleNamespace

    from pw_ray.evaluate import progress as P

    clock = [100.0]
    monkeypatch.setattr(P.time, "monotonic", lambda: clock[0])
    ids = [f"c{i}" for i in range(30)]
    cb = P.GridProgress(str(tmp_path), ids, lambda cell: cell, every_s=10.0)
    cb.setup()
    with caplog.at_level(logging.DEBUG, logger="pw_ray"):
        for i, cell in enumerate(ids):
            clock[0] += 1.0  # a cell per second: 30 cells, 30 s
            cb.on_trial_complete(i, [], SimpleNamespace(config={"cell": cell}, last_result={"score": 0.5}))
    shown = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert [m.split(",")[0] for m in shown] == ["evaluate: cells 1/30", "evaluate: cells 11/30",
                                                "evaluate: cells 21/30", "evaluate: cells 30/30"]
    assert shown[-1].startswith("evaluate: cells 30/30, done in 30s")
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 26  # the rest, for --log-level DEBUG


# ----------------------------------------------------------------------------- the grid on Tune
def test_small_grid_completes_then_reruns_nothing(ray_session, eval_cfg, caplog):
    from pw_ray import experiment as E

    cfg = eval_cfg
    cells = G.grid_cells(cfg)
    with caplog.at_level(logging.INFO, logger="pw_ray"):
        df = E.evaluate(cfg)
    n_sets, n_tasks, n_regions, n_methods, n_seeds = 2, 2, 2, 2, 1  # europe + zero; global + oc
    assert len(cells) == len(df) == n_sets * n_tasks * n_regions * n_methods * n_seeds
    keys = ["pretrain_set", "task", "task_region", "method", "seed"]
    assert not df[keys].duplicated().any()
    assert set(df["pretrain_set"]) == {"europe", "zero"}
    assert (df["pretrain_set"] == "zero").sum() == n_tasks * n_regions * n_methods * n_seeds
    stored = pq.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    assert len(stored) == len(df) and list(stored.columns) == G.RESULT_COLUMNS

    skipped = df[df["status"] == "skipped"]
    assert set(skipped["task_region"]) == {"oc"} and len(skipped) == n_sets * n_tasks * n_methods
    assert (skipped["reason"] == "subset has 6 chips, fewer than evaluation.min_subset=10").all()
    ok = df[df["status"] == "ok"]
    cls, reg = ok[ok["task_type"] == "classification"], ok[ok["task_type"] == "regression"]
    assert cls["accuracy"].between(0, 1).all() and cls["macro_f1"].between(0, 1).all()
    assert cls["r2"].isna().all() and reg["accuracy"].isna().all()
    assert np.isfinite(reg["r2"]).all() and (reg["r2"] <= 1).all()
    assert (ok["wall_s"] > 0).all() and (ok["n_test"] > 0).all()
    assert all(c.endswith(f"runs/pretrain/{s}/export") for c, s in zip(ok["checkpoint"], ok["pretrain_set"]))
    assert (ok["encoder_sha256"].str.len() == 16).all()

    # one cached embedding file per (checkpoint, task), none recomputed by the cells
    emb_files = storage.listdir(storage.join(cfg.root, "runs", "embeddings"), recursive=True, suffix=".parquet")
    assert len(emb_files) == n_sets * n_tasks
    mtimes = {f: os.path.getmtime(f) for f in emb_files}
    # every cell evaluated exactly once, and the console saw the progress
    for c in cells:
        assert G.cell_starts(cfg.root, c) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("cells 16/16" in m for m in messages)
    assert any(m.startswith("evaluate: cells 1/16, ETA") for m in messages)

    # the same command again (forced past the stage marker): no cell and no embedding recomputed
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="pw_ray"):
        again = E.evaluate(cfg, force=True)
    assert again.equals(df)
    assert any("all 16 cells finished" in r.getMessage() for r in caplog.records)
    assert {f: os.path.getmtime(f) for f in emb_files} == mtimes
    for c in cells:
        assert G.cell_starts(cfg.root, c) == 1


# ----------------------------------------------------------------------------- lineage of results
def _store(cfg, cell, expected):
    row = G.evaluate_cell(cfg.root, cell, cfg.evaluation.model_dump())
    row["lineage"] = expected[G.cell_id(cell)]
    storage.write_text(G.cell_uri(cfg.root, cell), json.dumps(row, default=G._json_default))


def test_a_changed_method_setting_reruns_exactly_the_cells_it_touches(eval_cfg, caplog):
    _embed_all(eval_cfg)
    cells = [_cell(eval_cfg, method="knn"), _cell(eval_cfg, method="linear")]
    ev = eval_cfg.evaluation.model_dump()
    expected = G.expected_records(eval_cfg.root, cells, ev)
    for c in cells:
        _store(eval_cfg, c, expected)
    assert G.drop_stale_results(eval_cfg.root, cells, ev) == []
    with caplog.at_level(logging.INFO, logger="pw_ray.evaluate.grid"):
        dropped = G.drop_stale_results(eval_cfg.root, cells, dict(ev, knn_k=ev["knn_k"] + 2))
    assert dropped == [G.cell_id(cells[0])]
    assert "1 stored cell results are stale (evaluation.knn_k changed)" in caplog.text
    assert storage.exists(G.cell_uri(eval_cfg.root, cells[1]))


def test_a_reingested_task_invalidates_its_embeddings_and_cells(eval_cfg, monkeypatch):
    from pw_ray.config import TaskSpec
    from pw_ray.evaluate import tasks as T

    _embed_all(eval_cfg)
    cell = _cell(eval_cfg, method="knn")
    ev = eval_cfg.evaluation.model_dump()
    _store(eval_cfg, cell, G.expected_records(eval_cfg.root, [cell], ev))
    table = T.read_task(eval_cfg.root, "landcover")
    spec = next(t for t in eval_cfg.tasks if t.name == "landcover")
    T.write_task(eval_cfg.root, TaskSpec(**spec.model_dump()), table.assign(split=table["split"].iloc[::-1].to_numpy()))
    calls = []
    real = EMB.embed_task
    monkeypatch.setattr(EMB, "embed_task", lambda *a, **k: calls.append(a) or real(*a, **k))
    EMB.compute_embeddings(eval_cfg.root, "europe", "landcover")
    assert len(calls) == 1  # other splits: the cached entry is stale
    EMB.compute_embeddings(eval_cfg.root, "europe", "landcover")
    assert len(calls) == 1  # and now current
    assert G.drop_stale_results(eval_cfg.root, [cell], ev) == [G.cell_id(cell)]
