"""One end-to-end run of every stage on the tiny config, and what a rerun does."""

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from pw_ray import storage

pytestmark = pytest.mark.slow


def test_every_stage_leaves_its_marker(tiny_run):
    cfg, _ = tiny_run
    for stage in ("plan", "ingest", "pretrain", "evaluate", "analyze", "report"):
        marker = json.loads(storage.read_text(storage.join(cfg.root, "_stages", f"{stage}.json")))
        assert marker["stage"] == stage and marker["seconds"] >= 0


def test_results_cover_the_whole_grid_with_valid_scores(tiny_run):
    cfg, _ = tiny_run
    df = pq.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    sets = {s.name for s in cfg.pretrain_sets} | {"zero"}
    assert len(df) == len(sets) * 2 * 3 * 2 * 1  # sets × tasks × task regions × methods × seeds
    assert set(df["pretrain_set"]) == sets
    assert df[["pretrain_set", "task", "task_region", "method", "seed"]].duplicated().sum() == 0
    ok = df[df["status"] == "ok"]
    assert len(ok) > 0.8 * len(df)
    cls = ok[ok["task_type"] == "classification"]
    assert cls["accuracy"].between(0, 1).all() and cls["macro_f1"].between(0, 1).all()
    reg = ok[ok["task_type"] == "regression"]
    assert (reg["r2"] <= 1).all() and np.isfinite(reg["r2"]).all()
    assert (ok["n_test"] > 0).all() and (ok["wall_s"] > 0).all()


def test_pretraining_beats_chance_on_landcover(tiny_run):
    cfg, _ = tiny_run
    df = pq.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    glob = df[(df["task"] == "landcover") & (df["task_region"] == "global") & (df["status"] == "ok")]
    n_classes = pq.read_table(storage.join(cfg.root, "tasks", "landcover.parquet")).to_pandas()["label"].nunique()
    assert glob["accuracy"].max() > 1.0 / n_classes


def test_diversity_has_one_row_per_set_with_expected_continent_entropy(tiny_run):
    cfg, _ = tiny_run
    div = pq.read_table(storage.join(cfg.root, "results", "diversity.parquet")).to_pandas().set_index("pretrain_set")
    assert list(div.index) == [s.name for s in cfg.pretrain_sets]
    assert div.loc["europe", "continent_entropy"] == pytest.approx(0.0)
    assert div.loc["africa", "continent_entropy"] == pytest.approx(0.0)
    assert 1.0 < div.loc["global", "continent_entropy"] <= np.log(6) + 1e-9
    assert (div["spectral_entropy_hist"] > 0).all()


def test_report_shows_every_set_and_zero(tiny_run):
    cfg, report = tiny_run
    html = open(report, encoding="utf-8").read()
    for name in [s.name for s in cfg.pretrain_sets] + ["zero"]:
        assert name in html
    assert html.count("<img") >= 4 and "http://" not in html.split("<body", 1)[1].split("data:image")[0]
    md = storage.read_text(storage.join(cfg.root, "report", "README.md"))
    assert "| europe" in md or "europe |" in md


def test_rerun_skips_every_stage_and_says_so(tiny_run, caplog):
    from pw_ray import experiment as E

    cfg, _ = tiny_run
    before = pq.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    with caplog.at_level(logging.INFO, logger="pw_ray"):
        E.run_all(cfg)
    skipped = [r.getMessage() for r in caplog.records if "already done" in r.getMessage()]
    assert len(skipped) == 6
    after = pq.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    assert before.equals(after)
