"""Checkpoint state files load with ``torch.load(weights_only=True)``: the layout the loop saves loads
the same, and a file that would run code when unpickled is refused."""

from __future__ import annotations

import pytest
import torch

from pw_ray.config import parse_config
from pw_ray.pretrain import step as St
from pw_ray.pretrain import trainer as T
from tests.conftest import TINY_CONFIG


def _state_as_the_loop_saves_it(tmp_path):
    cfg = parse_config(dict(TINY_CONFIG, root=str(tmp_path / "root")))
    norm = {"mean": [1000.0] * len(cfg.chips.bands), "std": [500.0] * len(cfg.chips.bands)}
    config = T.loop_config(cfg, "europe", n_chips=64, normalization=norm)
    torch.manual_seed(0)
    model = T._build_model(config)
    optimizer = St.make_optimizer(model, 1e-3, config["weight_decay"])
    pixels = torch.randint(1, 4000, (2, len(config["bands"]), config["img_size"], config["img_size"]),
                           dtype=torch.int32).to(torch.uint16)
    St.train_step(model, pixels, optimizer, step=0, lr=1e-3, mean=torch.tensor(norm["mean"]),
                  std=torch.tensor(norm["std"]), mask_ratio=config["mask_ratio"], accum_steps=1, micro_step=0,
                  grad_clip=config["grad_clip"], autocast_dtype=None)  # the optimizer now holds its moments
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 1, "epoch": 0,
            "batches_in_epoch": 1, "config": config}


def test_checkpoint_state_loads_weights_only_and_restores_the_same_model_and_optimizer(tmp_path):
    state = _state_as_the_loop_saves_it(tmp_path)
    path = tmp_path / T.STATE_FILE
    torch.save(state, path)
    loaded = T.load_state(str(path))
    assert {k: loaded[k] for k in ("step", "epoch", "batches_in_epoch", "config")} == {
        k: state[k] for k in ("step", "epoch", "batches_in_epoch", "config")}
    model = T._build_model(loaded["config"])
    model.load_state_dict(loaded["model"])
    for name, tensor in state["model"].items():
        assert torch.equal(model.state_dict()[name], tensor), name
    optimizer = St.make_optimizer(model, 1e-3, loaded["config"]["weight_decay"])
    optimizer.load_state_dict(loaded["optimizer"])
    moments = [s["exp_avg"] for s in optimizer.state_dict()["state"].values()]
    assert moments and all(torch.equal(a, s["exp_avg"]) for a, s in zip(moments, state["optimizer"]["state"].values()))


class _RunsCodeWhenUnpickled:
    def __reduce__(self):
        return (print, ("unpickling ran code",))


def test_checkpoint_state_that_would_run_code_is_refused(tmp_path):
    path = tmp_path / T.STATE_FILE
    torch.save({"step": 1, "payload": _RunsCodeWhenUnpickled()}, path)
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        T.load_state(str(path))
