"""The pretraining stage on Ray Train, on shards the pipeline itself ingests from the synthetic archive.

One 2-worker run (gloo on CPU) is shared by the tests that read its outputs; the resume, fault
and multi-node tests make runs of their own. Each run gets its own storage root with a copy
of the same shards.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from pw_ray import storage
from pw_ray.config import parse_config
from pw_ray.ingest import shards as S
from pw_ray.pretrain import trainer as T
from pw_ray.pretrain.metrics import read_scalars
from tests.pretrain.runs import (CHIPS, SET, checkpoints, ckpt_step, config, registered_checkpoint_step,
                                 root_with_shards, run_cluster_script, run_dir, steps_by_file)

MULTINODE = Path(__file__).with_name("multinode_run.py")
_config = config
_root_with_shards = root_with_shards


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def run(shards_root, tmp_path_factory):
    """One 12-step run with statistics of the set; what it left, captured before anyone resumes it."""
    root = _root_with_shards(shards_root, tmp_path_factory.mktemp("run"))
    cfg = parse_config(_config(root, "set", max_steps=12))
    records, logger = _Records(), logging.getLogger(T.__name__)
    level = logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    t0 = time.perf_counter()
    try:
        summary = T.pretrain_set(cfg, SET)
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    run = run_dir(root)
    return {"cfg": cfg, "root": root, "run": run, "summary": summary, "wall_s": time.perf_counter() - t0,
            "log": [r.getMessage() for r in records.records],
            "checkpoint_steps": [ckpt_step(p) for p in checkpoints(run)],
            "scalars": read_scalars(str(run / "tensorboard"))}


def test_two_worker_run_trains_every_step_and_exports(run):
    s = run["summary"]
    assert (s["steps"], s["total_steps"], s["start_step"], s["n_chips"]) == (12, 12, 0, CHIPS)
    assert math.isfinite(s["final_loss"])
    assert 0 < s["worker_peak_heap_mb"] < s["worker_peak_rss_mb"]  # the largest of the 2 workers
    export = run["root"] / "runs" / "pretrain" / SET / "export"
    assert {p.name for p in export.iterdir()} == {"encoder.pt", "config.json", "summary.json"}


def test_checkpoints_land_in_the_run_dir_and_only_the_best_k_and_the_latest_are_kept(run):
    written = [s.step for s in run["scalars"] if s.tag == "checkpoint_mb"]
    assert written == [4, 8, 12]  # every 4 steps
    loss = {s.step: s.value for s in run["scalars"] if s.tag == "loss"}  # what Ray scored each checkpoint by
    best_two = sorted(written, key=lambda k: loss[k])[:2]  # keep_checkpoints = 2, lowest loss
    assert run["checkpoint_steps"] == sorted(set(best_two) | {12})  # and the latest, which a resume needs
    assert run["run"].name == run["summary"]["run"] and run["run"].name.startswith(f"{SET}-")


def test_checkpoint_size_and_write_time_are_reported(run):
    s = run["summary"]
    sizes = [v.value for v in run["scalars"] if v.tag == "checkpoint_mb"]
    assert s["checkpoint_mb"] == pytest.approx(sizes[-1]) and s["checkpoints_written"] == 3
    state_mb = (checkpoints(run["run"])[-1] / T.STATE_FILE).stat().st_size / 2**20
    assert s["checkpoint_mb"] == pytest.approx(state_mb, rel=1e-6)
    writes = [v.value for v in run["scalars"] if v.tag == "checkpoint_write_s"]
    assert len(writes) == 3 and all(w > 0 for w in writes)
    assert s["checkpoint_write_s"] == pytest.approx(writes[1])  # the last write known when the last checkpoint reported
    assert 0 < s["checkpoint_save_s"]


def test_tensorboard_logs_loss_lr_and_throughput_every_step(run):
    tags = defaultdict(list)
    for s in run["scalars"]:
        tags[s.tag].append(s.step)
    assert {"loss", "lr", "samples_per_s", "peak_heap_mb", "peak_rss_mb"} <= set(tags)
    assert tags["loss"] == list(range(1, 13))
    assert all(s.value > 0 for s in run["scalars"] if s.tag == "samples_per_s")


def test_reported_loss_falls(run):
    loss = [s.value for s in run["scalars"] if s.tag == "loss"]
    assert np.mean(loss[-3:]) < 0.8 * np.mean(loss[:3])


def test_set_statistics_are_computed_from_the_shards_and_exported(run):
    table = S.read_set(str(run["root"]), SET, columns=["pixels"])
    pixels = S.read_pixels(table).astype(np.float64)
    conf = json.loads((run["root"] / "runs" / "pretrain" / SET / "export" / "config.json").read_text())
    assert conf["normalization"]["source"] == f"set:{SET}"
    np.testing.assert_allclose(conf["mean"], pixels.mean(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(conf["std"], pixels.std(axis=(0, 2, 3)), rtol=1e-5)
    assert conf["normalization"]["mean"] == conf["mean"]


def test_export_reproduces_the_checkpoints_embeddings(run):
    enc, conf = T.load_encoder(str(run["root"]), SET)
    last = checkpoints(run["run"])[-1]
    state = T.load_state(last / T.STATE_FILE)
    model = T._build_model(state["config"])
    model.load_state_dict(state["model"])
    model.eval()
    x = torch.rand(3, 10, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(enc.embed(x), model.embed(x), atol=1e-5, rtol=0)
    assert conf["steps"] == state["step"]


def test_run_logs_and_exports_the_satmae_recipe_variants_it_used(run):
    conf = json.loads((run["root"] / "runs" / "pretrain" / SET / "export" / "config.json").read_text())
    variants = conf["recipe_variants"]
    assert {k: variants[k] for k in ("loss_pairing", "mask", "kept_tokens", "input_quantization", "precision",
                                     "norm_pix_loss", "patch_embed_bias_init")} == {
        "loss_pairing": "official", "mask": "independent", "kept_tokens": "int(N*(1-mask_ratio))",
        "input_quantization": "uint8", "precision": "fp32 (CPU workers)", "norm_pix_loss": False,
        "patch_embed_bias_init": "Conv2d default"}
    assert conf["normalization"]["quantize"] == "uint8"  # every later embedding quantises as pretraining did
    line = next(m for m in run["log"] if "SatMAE recipe variants" in m)
    assert "loss_pairing=official" in line and "mask=independent" in line and "input_quantization=uint8" in line


def test_rerun_with_more_steps_resumes_from_the_last_checkpoint(run):
    """A restarted driver (same root, same run name) continues; it does not start over."""
    cfg = parse_config(_config(run["root"], "set", max_steps=18))
    summary = T.pretrain_set(cfg, SET)
    assert (summary["start_step"], summary["steps"]) == (12, 18)
    first, second = steps_by_file(run["run"])[:2]
    assert first[-1] == 12 and second[0] == 13
    assert T.pretrain_set(cfg, SET)["steps"] == 18  # done: a third call skips


def test_a_worker_warns_when_it_waits_for_data_more_than_5_percent_of_its_steps(caplog):
    from pw_ray.pretrain.loader import DataWaitMonitor

    monitor = DataWaitMonitor(T.DATA_WAIT_WARN_SHARE, T.DATA_WAIT_WARN_REPORTS)
    with caplog.at_level("WARNING", logger=T.__name__):
        warned = [T.check_data_wait(monitor, 1, share) for share in (0.04, 0.12, 0.08, 0.3, 0.2, 0.05)]
    assert warned == [False, False, False, True, False, False]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "pretrain rank 1 waited for data 30 % of its step time in 3 reports in a row (more than 5 %): its loader "
        "does not keep up; raise train.loader_threads or train.cpus_per_worker"]


def _alive_train_worker_pids() -> list[int]:
    import ray

    return [a["Pid"] for a in ray._private.state.actors().values()
            if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"]


def _loop_with_slow_steps(seconds: float):
    """The real worker loop, each step delayed, so a kill can land between two checkpoints."""
    def loop(config):
        from pw_ray.pretrain import step as St
        from pw_ray.pretrain.trainer import train_loop_per_worker

        real = St.train_step

        def slow_step(*args, **kwargs):
            time.sleep(seconds)
            return real(*args, **kwargs)

        St.train_step = slow_step
        train_loop_per_worker(config)
    return loop


@pytest.mark.slow
def test_a_killed_worker_costs_at_most_one_checkpoint_interval(shards_root, tmp_path):
    """Steps 0.5 s apart, checkpoints every 5: Ray registers the step-5 checkpoint (its controller
    reads reports every 2 s) before step 10, so the kill lands between two checkpoints."""
    root = _root_with_shards(shards_root, tmp_path)
    cfg = parse_config(_config(root, max_steps=15, checkpoint_every=5))
    out: dict = {}
    fit = threading.Thread(target=lambda: out.update(summary=T.pretrain_set(cfg, SET, _loop_with_slow_steps(0.5))))
    fit.start()
    deadline = time.monotonic() + 180
    while registered_checkpoint_step(root) < 5 and time.monotonic() < deadline:
        time.sleep(0.1)
    registered, pids = registered_checkpoint_step(root), _alive_train_worker_pids()
    assert registered == 5 and len(pids) == 2
    os.kill(pids[-1], signal.SIGKILL)
    fit.join(timeout=300)
    assert not fit.is_alive() and out["summary"]["steps"] == 15
    runs = steps_by_file(run_dir(root))
    assert len(runs) == 2, "the worker group restarted once"
    resumed_from, lost = runs[1][0] - 1, runs[0][-1] - (runs[1][0] - 1)
    assert resumed_from == registered and 0 <= lost <= 5
    assert runs[1][-1] == 15 and out["summary"]["start_step"] == 5


def _loop_recording_batches(record_dir: str):
    """The real worker loop; each step appends (step, digests of its chips) to ``rank<r>.jsonl``."""
    def loop(config):
        import hashlib

        import ray.train

        from pw_ray.pretrain import step as St
        from pw_ray.pretrain.trainer import train_loop_per_worker

        real, rank = St.train_step, ray.train.get_context().get_world_rank()

        def recording_step(model, batch, *args, **kwargs):
            chips = [hashlib.sha1(c.numpy().tobytes()).hexdigest() for c in batch]
            with open(os.path.join(record_dir, f"rank{rank}.jsonl"), "a") as f:
                f.write(json.dumps({"step": kwargs["step"], "chips": chips}) + "\n")
            return real(model, batch, *args, **kwargs)

        St.train_step = recording_step
        train_loop_per_worker(config)
    return loop


@pytest.mark.slow
def test_a_resumed_run_continues_at_exactly_the_batch_after_its_checkpoint(shards_root, tmp_path):
    """Stopped at step 5 of a 12-step epoch, then resumed: every rank trains on exactly the
    batches one uninterrupted epoch gives it, each chip once."""
    from pw_ray.pretrain.loader import ChipStream

    root, record = _root_with_shards(shards_root, tmp_path), tmp_path / "batches"
    record.mkdir()
    loop = _loop_recording_batches(str(record))
    assert T.pretrain_set(parse_config(_config(root, max_steps=5, checkpoint_every=5)), SET, loop)["steps"] == 5
    resumed = T.pretrain_set(parse_config(_config(root, max_steps=9, checkpoint_every=5)), SET, loop)
    assert (resumed["start_step"], resumed["steps"]) == (5, 9)

    cfg = parse_config(_config(root))
    catalog = T.shard_catalog(cfg, SET)
    lc = T.loop_config(cfg, SET, catalog.n_chips, {"mean": [0.0], "std": [1.0]}, catalog)
    trained = []
    for rank in range(2):
        rows = [json.loads(line) for line in (record / f"rank{rank}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == list(range(9)), "each step trained once, none repeated"
        stream = ChipStream(catalog, batch_size=2, seed=lc["seed"], epoch=0, rank=rank, world=2,
                            shuffle_chips=lc["shuffle_buffer"])
        epoch = [[hashlib.sha1(c.numpy().tobytes()).hexdigest() for c in b] for b in stream]
        assert [r["chips"] for r in rows] == epoch[:9]
        trained += sum((r["chips"] for r in rows), [])
    assert len(set(trained)) == len(trained) == 2 * 9 * 2


@pytest.mark.slow
def test_two_node_cluster_run_places_one_worker_per_node(shards_root, tmp_path):
    root = _root_with_shards(shards_root, tmp_path)
    config = _config(root, max_steps=4, resources_per_worker={"train_slot": 1})
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = run_cluster_script(MULTINODE, [], tmp_path, timeout=600)
    assert result["nodes"] == 2 and len(result["worker_nodes"]) == 2
    assert result["summary"]["steps"] == 4
    assert storage.exists(str(root / "runs" / "pretrain" / SET / "export" / "config.json"))
