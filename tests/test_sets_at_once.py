"""The sets of a stage run at once (issue 15): ``ingest`` runs every set's ingest in its own thread
of the driver, one failing set does not stop the others, ``--sets`` selects sets and never marks
the stage done. (Pretraining's runs: tests/pretrain/test_parallel_sets.py.)"""

from __future__ import annotations

import threading

import pytest

from pw_ray import experiment as E
from pw_ray.config import parse_config
from tests.conftest import TINY_CONFIG


@pytest.fixture
def cfg(tmp_path):
    conf = dict(TINY_CONFIG, root=str(tmp_path / "root"), tasks=[],
                pretrain_sets=[dict(s, size=8) for s in TINY_CONFIG["pretrain_sets"]])
    return parse_config(conf)


@pytest.fixture
def planned(ray_session, cfg):
    src = E.source(cfg)
    E.plan(cfg, src=src)
    return cfg, src


def _manifest(cfg, name):
    from pw_ray import storage

    return storage.join(cfg.root, "manifest", f"{name}.parquet")


def test_ingest_runs_every_set_at_once(planned, monkeypatch):
    """Each set's ingest waits at a barrier for all three: one after another, none would pass it."""
    from pw_ray import storage
    from pw_ray.ingest import pipeline

    cfg, src = planned
    barrier, real = threading.Barrier(3, timeout=120), pipeline.run_ingest

    def run_ingest(root, name, *args, **kwargs):
        barrier.wait()
        return real(root, name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_ingest", run_ingest)
    E.ingest(cfg, src=src)
    assert all(storage.exists(_manifest(cfg, s.name)) for s in cfg.pretrain_sets)
    assert E.stage_done(cfg, "ingest")


def test_a_failing_set_does_not_stop_the_other_sets_ingest(planned, monkeypatch):
    from pw_ray import storage
    from pw_ray.ingest import pipeline

    cfg, src = planned
    real = pipeline.run_ingest

    def run_ingest(root, name, *args, **kwargs):
        if name == "africa":
            raise ConnectionError("catalog unreachable for africa")
        return real(root, name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "run_ingest", run_ingest)
    with pytest.raises(E.SetsFailed, match=r"ingest failed for africa \(2 other set\(s\) finished: europe, global; "
                                           r"the stage is not marked done, rerun to retry\):\n  africa: "
                                           r"ConnectionError: catalog unreachable for africa"):
        E.ingest(cfg, src=src)
    assert storage.exists(_manifest(cfg, "europe")) and storage.exists(_manifest(cfg, "global"))
    assert not storage.exists(_manifest(cfg, "africa")) and not E.stage_done(cfg, "ingest")


def test_sets_option_ingests_only_those_sets_and_never_marks_the_stage(planned, capsys):
    from pw_ray import storage

    cfg, src = planned
    E.ingest(cfg, src=src, sets=["global"])
    assert [s.name for s in cfg.pretrain_sets if storage.exists(_manifest(cfg, s.name))] == ["global"]
    assert not storage.exists(storage.join(cfg.root, "_stages", "ingest.json"))
    assert "ingest global:" in capsys.readouterr().out
    E.ingest(cfg, src=src)  # the whole stage: global's shards reused, the stage marked
    assert E.stage_done(cfg, "ingest")
    E.ingest(cfg, src=src, sets=["global"], force=True)  # redone for one set: every set is checked next time
    assert not E.stage_done(cfg, "ingest")


def test_unknown_set_names_exit_2_before_any_work(tmp_path, capsys):
    import yaml

    from pw_ray.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(dict(TINY_CONFIG, root=str(tmp_path / "root"))))
    assert main(["pretrain", "--config", str(path), "--sets", "europe,mars,landcover"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "pw-ray pretrain failed: --sets: mars, landcover not in the config; its pretraining sets: europe, africa, "
        "global")
    assert main(["ingest", "--config", str(path), "--sets", "mars"]) == 2
    assert "its pretraining sets and tasks: europe, africa, global, landcover, population" in capsys.readouterr().err
    assert not (tmp_path / "root" / "points").exists()
