"""Runs with nothing to score: analyze and report give the diversity measures and say so."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pw_ray import storage
from pw_ray.analyze import report as R
from pw_ray.analyze import stats as ST
from pw_ray.evaluate.grid import RESULT_COLUMNS
from tests.analyze.fabricated import make_diversity


@pytest.fixture(scope="module")
def no_task_run(ray_session, tmp_path_factory):
    """One pretraining set and no tasks: plan, ingest, evaluate, analyze, report.

    Pretraining is left out: with no tasks the grid has no cells, so nothing reads an encoder.
    """
    import contextlib
    import io

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from tests.conftest import TINY_CONFIG

    data = {k: v for k, v in TINY_CONFIG.items() if k != "tasks"}
    root = tmp_path_factory.mktemp("no-tasks") / "root"
    cfg = parse_config(dict(data, root=str(root), pretrain_sets=TINY_CONFIG["pretrain_sets"][:1]))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        E.plan(cfg)
        E.ingest(cfg)
        E.evaluate(cfg)
        E.analyze(cfg)
        index = E.report(cfg)
    return cfg, Path(index), out.getvalue()


def test_analyze_without_tasks_writes_the_diversity_measures_and_no_correlations(no_task_run):
    cfg, _, printed = no_task_run
    div = storage.read_table(storage.join(cfg.root, "results", "diversity.parquet")).to_pandas()
    assert div["pretrain_set"].tolist() == ["europe"] and div.loc[0, "n_chips"] > 0
    assert np.isfinite(div.loc[0, ["landcover_entropy", "spectral_entropy_hist", "spectral_entropy_codebook"]]
                       .astype(float)).all()
    assert not storage.exists(storage.join(cfg.root, "results", "correlations.parquet"))
    assert "evaluate: nothing was scored: the evaluation grid has no cells" in printed
    assert "analyze: no downstream results" in printed


def test_report_without_tasks_shows_diversity_and_says_there_are_no_downstream_results(no_task_run):
    cfg, index, _ = no_task_run
    readme = storage.read_text(storage.join(cfg.root, "report", "README.md"))
    assert readme.count("No downstream results: the evaluation grid has no cells") >= 3  # top, main, per region
    diversity = readme.split("## Diversity of the pretraining sets")[1].split("##")[0]
    assert "| europe |" in diversity
    assert "No downstream results, so no correlation with performance." in readme
    assert "No downstream results" in index.read_text(encoding="utf-8")


def _skipped_results() -> pd.DataFrame:
    rows = [dict(pretrain_set=s, task="lc", task_type="classification", task_region=r, method="knn", seed=0,
                 status="skipped", reason="subset has 8 chips, fewer than evaluation.min_subset=10")
            for s in ("eu", "af") for r in ("global", "eu")]
    return pd.DataFrame(rows).reindex(columns=RESULT_COLUMNS)


def test_no_scores_reason_says_why_nothing_was_scored():
    assert "run `pw-ray evaluate`" in ST.no_scores_reason(None)
    assert "no tasks" in ST.no_scores_reason(pd.DataFrame(columns=RESULT_COLUMNS))
    assert ST.no_scores_reason(_skipped_results()) == (
        "all 4 cells were skipped; most often: subset has 8 chips, fewer than evaluation.min_subset=10")
    some_ok = _skipped_results().assign(status=["ok", "skipped", "skipped", "skipped"])
    assert ST.no_scores_reason(some_ok) == ""


def test_report_with_every_cell_skipped_keeps_the_diversity_table(tmp_path):
    index = R.write_report(tmp_path / "report", results=_skipped_results(), diversity=make_diversity(),
                           correlations=None)
    readme = (tmp_path / "report" / "README.md").read_text(encoding="utf-8")
    assert "_No downstream results: all 4 cells were skipped; most often: subset has 8 chips" in readme
    assert "| global |" in readme.split("## Diversity of the pretraining sets")[1]
    assert "Skipped: no evaluation results were given." not in readme
    assert index.exists()
