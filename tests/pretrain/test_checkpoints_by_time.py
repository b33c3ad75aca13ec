"""Checkpoints by training time (``train.checkpoint_every_min``): rank 0's clock decides, every rank
checkpoints at the same step (each calls ``ray.train.report`` the same number of times)."""

from __future__ import annotations

import pytest

from pw_ray.config import parse_config
from pw_ray.pretrain import trainer as T
from pw_ray.pretrain.metrics import read_scalars
from tests.pretrain.runs import config, root_with_shards, run_dir


@pytest.mark.parametrize("step, since_s, step_s, checkpoint_now, expected", [
    (1, 60.0, 60.0, False, (False, 3)),     # 2 of 3 minutes to go at a minute per step
    (2, 120.0, 60.0, False, (False, 3)),
    (3, 180.0, 60.0, False, (True, 6)),     # due now; the next a whole interval on
    (4, 20.0, 60.0, True, (True, 7)),       # a checkpoint anyway (a step interval): the clock restarts
    (10, 179.0, 600.0, False, (False, 11)),  # at least one step on
    (10, 0.0, 0.0, False, (False, 10 + 180 * 10**9)),  # no step measured yet: far off until the next report
])
def test_the_next_checkpoint_step_follows_rank_0s_step_rate(step, since_s, step_s, checkpoint_now, expected):
    assert T.time_checkpoint(step, since_s, step_s, 180.0, checkpoint_now) == expected


def _loop_with_step_clocks(seconds_per_step_by_rank: list[float]):
    """The real worker loop, with a clock that advances by a fixed time per optimizer step, rank by
    rank: the ranks disagree about the time, and only rank 0's may decide."""
    def loop(config):
        import ray.train

        from pw_ray.pretrain import step as St
        from pw_ray.pretrain import trainer

        rank = ray.train.get_context().get_world_rank()
        steps, real = {"n": 0}, St.train_step

        def counting_step(*args, **kwargs):
            steps["n"] += 1
            return real(*args, **kwargs)

        St.train_step = counting_step
        trainer.CLOCK = lambda: seconds_per_step_by_rank[rank] * steps["n"]
        trainer.train_loop_per_worker(config)
    return loop


def test_checkpoints_fall_every_interval_of_rank_0s_training_time(shards_root, tmp_path):
    """Rank 0: a minute per step, rank 1: 15 s; every 3 minutes → steps 3, 6, 9 and the last, 12."""
    root = root_with_shards(shards_root, tmp_path)
    conf = config(root, max_steps=12, checkpoint_every_min=3, keep_checkpoints=10)
    del conf["train"]["checkpoint_every"]
    cfg = parse_config(conf)
    assert (cfg.train.checkpoint_every, cfg.train.checkpoint_every_min) == (None, 3)
    summary = T.pretrain_set(cfg, "eu", _loop_with_step_clocks([60.0, 15.0]))
    assert summary["steps"] == 12 and summary["checkpoints_written"] == 4
    written = [s.step for s in read_scalars(str(run_dir(root) / "tensorboard")) if s.tag == "checkpoint_mb"]
    assert written == [3, 6, 9, 12]
