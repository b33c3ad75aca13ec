"""The sets pretrain at once (issue 15): each set's Ray Train run has its own run name, storage path
and failure budget, so the runs overlap in time and losing one run's node restores only that
run from its checkpoint; one failing set does not stop the others."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pw_ray import experiment as E
from pw_ray.config import parse_config
from tests.pretrain.runs import config, root_with_shards, run_cluster_script, run_dirs, steps_by_file

PARALLEL = Path(__file__).with_name("parallel_sets_run.py")


@pytest.mark.slow
def test_two_sets_train_at_once_and_a_lost_node_restores_only_its_sets_run(shards_root, tmp_path):
    sets = ("eu", "af")
    root = root_with_shards(shards_root, tmp_path, sets)
    conf = config(root, sets=sets, num_workers=1, batch_size=4, max_steps=16, checkpoint_every=4,
                  cpus_per_worker=1, resources_per_worker={"fake_gpu": 1}, max_failures=2)
    (tmp_path / "config.json").write_text(json.dumps(conf))
    r = run_cluster_script(PARALLEL, ["eu"], tmp_path, timeout=900)
    assert r["error"] is None and r["removed"], r
    eu, af = r["sets"]["eu"], r["sets"]["af"]

    # the runs overlapped: each one's first step came before the other's last
    span = {name: (min(t for f in s["files"] for _, t in f), max(t for f in s["files"] for _, t in f))
            for name, s in r["sets"].items()}
    assert span["eu"][0] < span["af"][1] and span["af"][0] < span["eu"][1], span
    starts = {name: [s for s in r["starts"] if s["set"] == name] for name in sets}
    assert starts["eu"][0]["node"] != starts["af"][0]["node"], "two workers, two nodes"

    # eu lost its node: its worker group came back on another node, from its checkpoint
    assert starts["eu"][0]["node"] == r["removed"] and len(starts["eu"]) == 2
    assert starts["eu"][1]["node"] not in (r["removed"], starts["af"][0]["node"])
    first, second = ([step for step, _ in f] for f in eu["files"])
    resumed_from = second[0] - 1
    assert resumed_from % 4 == 0 and resumed_from >= r["removed_at_step"] >= 4 and second[-1] == 16
    assert eu["summary"]["start_step"] == resumed_from and eu["summary"]["steps"] == 16

    # af never restarted: one worker group, every step once
    assert len(starts["af"]) == 1 and len(af["files"]) == 1
    assert [step for step, _ in af["files"][0]] == list(range(1, 17))
    assert af["summary"]["steps"] == 16 and not af["summary"]["start_step"]


def _loop_failing_for(set_name: str):
    def loop(config):
        from pw_ray.pretrain.trainer import train_loop_per_worker

        if config["set_name"] == set_name:
            raise OSError(f"disk of {set_name}'s worker is full")
        train_loop_per_worker(config)
    return loop


def test_a_failing_set_does_not_stop_the_others_and_the_stage_is_not_marked_done(shards_root, tmp_path, capsys):
    """``af``'s run fails (its failure budget is 0), ``eu``'s finishes; the stage names ``af``."""
    sets = ("eu", "af")
    root = root_with_shards(shards_root, tmp_path, sets)
    cfg = parse_config(config(root, sets=sets, num_workers=1, batch_size=8, epochs=1, cpus_per_worker=1,
                              max_failures=0))
    with pytest.raises(E.SetsFailed, match=r"pretrain failed for af \(1 other set\(s\) finished: eu; the stage is "
                                           r"not marked done, rerun to retry\):\n  af: WorkerGroupError: .*OSError: "
                                           r"disk of af's worker is full"):
        E.pretrain(cfg, train_loop=_loop_failing_for("af"))
    assert json.loads((root / "runs" / "pretrain" / "eu" / "export" / "summary.json").read_text())["steps"] == 6
    assert not (root / "runs" / "pretrain" / "af" / "export").exists()
    assert not E.stage_done(cfg, "pretrain") and not (root / "_stages" / "pretrain.json").exists()
    out = capsys.readouterr().out
    assert f"pretrain eu: 6 steps, final loss " in out and f"(run {run_dirs(root, 'eu')[0].name})" in out


def test_sets_selects_the_sets_to_train_and_never_marks_the_stage(shards_root, tmp_path, capsys):
    sets = ("eu", "af")
    root = root_with_shards(shards_root, tmp_path, sets)
    cfg = parse_config(config(root, sets=sets, num_workers=1, batch_size=8, epochs=1, cpus_per_worker=1))
    E.pretrain(cfg, sets=["af"])
    assert run_dirs(root, "af") and not run_dirs(root, "eu")
    assert not (root / "_stages" / "pretrain.json").exists()
    assert [f[0] for f in steps_by_file(run_dirs(root, "af")[0])] == [1]
    with pytest.raises(ValueError, match=r"--sets: mars not in the config; its pretraining sets: eu, af"):
        E.select_sets(cfg, "pretrain", ["mars"])
