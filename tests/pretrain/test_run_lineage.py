"""A pretraining run belongs to its inputs (issue 12): the set's shards, ``model`` and the recipe
fields of ``train``. A changed recipe trains a new run beside the old one (never resuming its
checkpoints), switching back resumes the old run, raised epochs continue the same run, an
operational change (log interval, checkpoint interval, failure budget) reuses the export.

One first run (6 steps: one worker, batch 8, 48 chips, one epoch) on a root of its own; each
test continues on a copy of that root.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest

from pw_ray import experiment as E
from pw_ray.config import parse_config
from pw_ray.pretrain import trainer as T
from tests.pretrain.runs import SET, config, root_with_shards, run_dirs, steps_by_file


def _cfg(root: Path, model: dict | None = None, **train):
    conf = config(root, **{"num_workers": 1, "batch_size": 8, "epochs": 1, "checkpoint_every": 3,
                           "cpus_per_worker": 1, **train})
    conf["model"] = {**conf["model"], **(model or {})}
    return parse_config(conf)


def _pretrain(cfg) -> list[str]:
    """``experiment.pretrain``; the lines it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        E.pretrain(cfg)
    return out.getvalue().splitlines()


def _summary(root: Path) -> dict:
    return json.loads((root / "runs" / "pretrain" / SET / "export" / "summary.json").read_text())


def _files(run: Path) -> dict[str, str]:
    """Every file of a run dir but its TensorBoard logs, by path: the SHA-256 of its bytes."""
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file() and "tensorboard" not in p.parts}


@pytest.fixture(scope="module")
def first(shards_root, tmp_path_factory) -> Path:
    root = root_with_shards(shards_root, tmp_path_factory.mktemp("lineage"))
    lines = _pretrain(_cfg(root))
    assert lines[0].startswith(f"pretrain {SET}: not built yet → training a new run {SET}-"), lines
    assert _summary(root)["steps"] == 6
    return root


def _copy(first: Path, tmp_path: Path) -> Path:
    shutil.copytree(first, tmp_path / "root")
    return tmp_path / "root"


def test_export_and_summary_record_the_runs_lineage(first):
    cfg = _cfg(first)
    catalog = T.shard_catalog(cfg, SET)
    rec = T.pretrain_record(cfg, SET, catalog)
    summary = _summary(first)
    conf = json.loads((first / "runs" / "pretrain" / SET / "export" / "config.json").read_text())
    assert summary["lineage"] == rec and conf["lineage"] == rec
    assert [p.name for p in run_dirs(first)] == [summary["run"]] == [f"{SET}-{rec['digest'][:8]}"]
    assert rec["inputs"]["shards"] == T.shards_digest(catalog)
    assert set(rec["inputs"]["train"]) == set(T.RECIPE_FIELDS)
    assert rec["inputs"]["model"]["mask_ratio"] == 0.75 and rec["inputs"]["seed"] == 1


def test_an_operational_change_reuses_the_export(first, tmp_path):
    root = _copy(first, tmp_path)
    before = _files(run_dirs(root)[0])
    lines = _pretrain(_cfg(root, log_every=2, checkpoint_every_min=5, max_failures=7, loader_threads=1))
    assert lines[0] == f"pretrain {SET}: reused (inputs unchanged): run {_summary(root)['run']}, 6 steps exported"
    assert _files(run_dirs(root)[0]) == before and len(run_dirs(root)) == 1


def test_a_changed_recipe_trains_a_new_run_and_switching_back_resumes_the_old_one(first, tmp_path):
    root = _copy(first, tmp_path)
    (old,) = run_dirs(root)
    before = _files(old)
    lines = _pretrain(_cfg(root, model={"mask_ratio": 0.6}))
    assert lines[0].startswith(f"pretrain {SET}: model.mask_ratio changed → training a new run {SET}-"), lines
    new = [r for r in run_dirs(root) if r != old]
    assert len(new) == 1 and _summary(root)["run"] == new[0].name
    assert _summary(root)["start_step"] in (None, 0) and _summary(root)["steps"] == 6  # from scratch
    assert _files(old) == before, "the superseded run's checkpoints were touched"
    assert steps_by_file(new[0])[0][0] == 1

    # back to the first config: its run resumes (it is complete: re-exported, nothing trained)
    lines = _pretrain(_cfg(root))
    assert lines[0] == (f"pretrain {SET}: model.mask_ratio changed → continuing run {old.name} from its last "
                        "checkpoint"), lines
    assert _summary(root)["run"] == old.name and _summary(root)["steps"] == 6
    assert _summary(root)["lineage"] == T.pretrain_record(_cfg(root), SET, T.shard_catalog(_cfg(root), SET))
    assert sum(len(s) for s in steps_by_file(old)) == 6, "nothing was trained again"


def test_raised_epochs_continue_the_same_run(first, tmp_path):
    root = _copy(first, tmp_path)
    (run,) = run_dirs(root)
    lines = _pretrain(_cfg(root, epochs=2))
    assert lines[0] == (f"pretrain {SET}: export at 6 of 12 steps (train.epochs or max_steps raised) → continuing "
                        f"run {run.name} from its last checkpoint"), lines
    assert run_dirs(root) == [run]
    s = _summary(root)
    assert (s["run"], s["start_step"], s["steps"]) == (run.name, 6, 12)
    assert [f[0] for f in steps_by_file(run)] == [1, 7]


def test_force_trains_the_run_again_from_step_0(first, tmp_path):
    root = _copy(first, tmp_path)
    cfg = _cfg(root)
    plan = T.plan_run(cfg, SET, force=True)
    assert plan.line() == f"pretrain {SET}: --force → training run {plan.run} from step 0 (its checkpoints removed)"
    s = T.train_run(cfg, plan)
    assert s["start_step"] in (None, 0) and s["steps"] == 6
    assert [f[0] for f in steps_by_file(run_dirs(root)[0])] == [1]


def test_zero_encoder_is_exported_again_only_when_its_inputs_change(tmp_path):
    cfg = _cfg(tmp_path / "root")
    first = T.export_zero(cfg)
    assert first["decision"] == "not built yet"
    encoder = tmp_path / "root" / "runs" / "pretrain" / "zero" / "export" / "encoder.pt"
    digest = hashlib.sha256(encoder.read_bytes()).hexdigest()
    assert T.export_zero(cfg)["decision"] is None  # reused
    changed = T.export_zero(_cfg(tmp_path / "root", model={"preset": "small"}))
    assert changed["decision"] == "model.preset changed"
    assert hashlib.sha256(encoder.read_bytes()).hexdigest() != digest


def test_a_new_ingest_re_enters_pretrain_and_a_new_pretrain_re_enters_evaluate(tmp_path):
    """The "done" markers of pretrain and evaluate stand for the marker of the stage before them:
    re-ingested shards (same config) make pretrain check every set's lineage again, a retrained
    set makes evaluate look at the encoders again."""
    import time

    cfg = _cfg(tmp_path / "root")
    for stage in ("ingest", "pretrain", "evaluate"):
        E._mark(cfg, stage, time.perf_counter())
    assert all(E.stage_done(cfg, s) for s in ("ingest", "pretrain", "evaluate"))
    E._mark(cfg, "ingest", time.perf_counter())  # ingest ran again, e.g. with --retry-failed
    assert E.stage_done(cfg, "ingest") and not E.stage_done(cfg, "pretrain") and E.stage_done(cfg, "evaluate")
    E._mark(cfg, "pretrain", time.perf_counter())
    assert E.stage_done(cfg, "pretrain") and not E.stage_done(cfg, "evaluate")
