"""The pretraining stage on Ray Train: a TorchTrainer streaming a set's shards.

The loop is a plain function (:func:`train_loop_per_worker`); the model, the schedule and the
step come from :mod:`pw_ray.models.satmae` and :mod:`pw_ray.pretrain.step` and run without Ray.
Checkpoints go to ``<root>/runs/pretrain/<set>/`` every ``train.checkpoint_every`` steps;
a new ``fit()`` with the same run name resumes from the latest one (driver restart), and
``FailureConfig`` restarts the worker group from it when a worker or node dies.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time

import numpy as np

from pw_ray import storage
from pw_ray.config import ExperimentConfig
from pw_ray.ingest import shards as S

log = logging.getLogger(__name__)

ZERO = "zero"  # the random-encoder baseline


def run_dir(root: str, set_name: str) -> str:
    return storage.join(root, "runs", "pretrain", set_name)


def export_dir(root: str, set_name: str) -> str:
    return storage.join(run_dir(root, set_name), "export")


def _pixels_to_numpy(batch, shape):
    """Ray Data batch (pyarrow) → {"pixels": (N, C, H, W) uint16}."""
    col = batch.column("pixels").combine_chunks()
    flat = col.values.to_numpy(zero_copy_only=False)
    return {"pixels": flat.reshape(len(batch), *shape)}


def train_loop_per_worker(config: dict) -> None:
    import ray.train
    import ray.train.torch
    import torch

    from pw_ray.models.satmae import build_mae
    from pw_ray.pretrain import step as St
    from pw_ray.pretrain.transforms import stats_for

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"] + rank)

    model = build_mae(config["preset"], config["bands"], config["groups"], img_size=config["img_size"],
                      patch_size=config["patch_size"], norm_pix_loss=config["norm_pix_loss"])
    model.to(device)
    lr = St.effective_lr(config["blr"], config["batch_size"], config["accum_steps"], world)
    optimizer = St.make_optimizer(model, lr, config["weight_decay"])
    step, epoch, batches_done = 0, 0, 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_in_epoch"]
        log.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, step, epoch, batches_done)
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    core = getattr(model, "module", model)
    mean, std = stats_for(config["bands"])
    mean, std = mean.to(device), std.to(device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    total = config["total_steps"]
    warmup = config["warmup_steps"]
    shard = ray.train.get_dataset_shard("train")
    accum = config["accum_steps"]
    t0, seen = time.perf_counter(), 0

    def save_and_report(metrics: dict, final: bool = False) -> None:
        if rank == 0:
            with tempfile.TemporaryDirectory() as d:
                torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                            "epoch": epoch, "batches_in_epoch": batches_done,
                            "config": {k: v for k, v in config.items() if k != "shape"}},
                           os.path.join(d, "state.pt"))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    while step < total and epoch < config["epochs"]:
        it = shard.iter_torch_batches(batch_size=config["batch_size"], drop_last=True,
                                      local_shuffle_buffer_size=config["shuffle_buffer"] or None,
                                      local_shuffle_seed=config["seed"] + epoch)
        micro = 0
        for b_idx, batch in enumerate(it):
            if b_idx < batches_done:  # resumed mid-epoch: skip what was already trained on
                continue
            x = batch["pixels"].to(device, non_blocking=True)
            out = St.train_step(core if world == 1 else model, x, optimizer, step=step,
                                lr=St.lr_at(step, total, warmup, lr), mean=mean, std=std,
                                mask_ratio=config["mask_ratio"], accum_steps=accum, micro_step=micro,
                                grad_clip=config["grad_clip"], autocast_dtype=autocast)
            seen += x.shape[0]
            batches_done = b_idx + 1
            micro = (micro + 1) % accum
            if micro:
                continue
            step += 1
            metrics = {"step": step, "epoch": epoch, "loss": out["loss"], "lr": out["lr"],
                       "samples_per_s": seen * world / max(time.perf_counter() - t0, 1e-9)}
            if step % config["checkpoint_every"] == 0 or step >= total:
                save_and_report(metrics)
            elif step % config["log_every"] == 0:
                ray.train.report(metrics)
            if step >= total:
                break
        else:
            epoch, batches_done = epoch + 1, 0
            continue
        break
    if step % config["checkpoint_every"] != 0 and step < total:
        save_and_report({"step": step, "epoch": epoch, "loss": float("nan"), "lr": 0.0, "samples_per_s": 0.0})


def steps_per_epoch(n_chips: int, batch_size: int, workers: int, accum: int) -> int:
    return max(1, n_chips // (batch_size * workers * accum))


def loop_config(cfg: ExperimentConfig, set_name: str, n_chips: int) -> dict:
    t, m = cfg.train, cfg.model
    spe = steps_per_epoch(n_chips, t.batch_size, t.num_workers, t.accum_steps)
    total = min(spe * t.epochs, t.max_steps) if t.max_steps else spe * t.epochs
    return dict(
        set_name=set_name, preset=m.preset, bands=list(cfg.chips.bands), groups=[list(g) for g in m.groups],
        img_size=cfg.chips.size_px, patch_size=m.patch_size, norm_pix_loss=m.norm_pix_loss,
        mask_ratio=m.mask_ratio, blr=t.blr, weight_decay=t.weight_decay, batch_size=t.batch_size,
        accum_steps=t.accum_steps, epochs=max(t.epochs, -(-total // spe)), total_steps=total,
        warmup_steps=int(t.warmup_epochs * spe), grad_clip=t.grad_clip, checkpoint_every=t.checkpoint_every,
        log_every=t.log_every, seed=cfg.pretrain_set(set_name).seed if set_name != ZERO else 0,
        shuffle_buffer=min(256, max(0, n_chips // 4)),
    )


def pretrain_set(cfg: ExperimentConfig, set_name: str) -> dict:
    """Pretrain one set with Ray Train and export its encoder. Resumes; skips when exported."""
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    out = export_dir(cfg.root, set_name)
    if storage.exists(storage.join(out, "config.json")):
        log.info("pretrain %s: encoder already exported at %s, skipping", set_name, out)
        return json.loads(storage.read_text(storage.join(out, "summary.json")))
    files = S.shard_files(cfg.root, set_name)
    if not files:
        raise FileNotFoundError(f"pretrain {set_name}: no shards under {cfg.root}/shards/{set_name}; run ingest first")
    table0 = storage.read_table(files[0], columns=["chip_id"])
    shape = json.loads(storage.read_table(files[0]).schema.metadata[b"pw_ray.shape"])
    n_chips = sum(storage.read_table(f, columns=["chip_id"]).num_rows for f in files)
    del table0
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    ds = ray.data.read_parquet(paths, filesystem=fs, columns=["pixels"], shuffle="files")
    ds = ds.map_batches(_pixels_to_numpy, fn_kwargs={"shape": shape}, batch_format="pyarrow",
                        batch_size=256)
    lc = loop_config(cfg, set_name, n_chips)
    t = cfg.train
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=lc,
        scaling_config=ray.train.ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                               resources_per_worker={"CPU": t.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=set_name,
            storage_path=storage.resolve(storage.join(cfg.root, "runs", "pretrain")),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        ),
        datasets={"train": ds},
    )
    log.info("pretrain %s: %d chips, %d steps on %d worker(s)", set_name, n_chips, lc["total_steps"], t.num_workers)
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"pretrain {set_name} failed: {result.error}")
    summary = export_from_checkpoint(cfg, set_name, result.checkpoint, lc)
    summary.update(n_chips=n_chips, wall_s=time.perf_counter() - t0)
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=2))
    return summary


def export_from_checkpoint(cfg: ExperimentConfig, set_name: str, checkpoint, lc: dict) -> dict:
    import torch

    from pw_ray.models.export import export_encoder
    from pw_ray.models.satmae import build_mae

    model = build_mae(lc["preset"], lc["bands"], lc["groups"], img_size=lc["img_size"],
                      patch_size=lc["patch_size"], norm_pix_loss=lc["norm_pix_loss"])
    step, loss = 0, None
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        step = state["step"]
    _export(cfg, set_name, model, step)
    return {"set": set_name, "steps": step, "final_loss": loss}


def _export(cfg: ExperimentConfig, set_name: str, model, step: int) -> None:
    from pw_ray.models.export import export_encoder
    from pw_ray.pretrain.transforms import stats_for

    out = export_dir(cfg.root, set_name)
    mean, std = stats_for(cfg.chips.bands)
    extra = {"set": set_name, "steps": step, "mean": mean.tolist(), "std": std.tolist()}
    with tempfile.TemporaryDirectory() as d:
        export_encoder(model, d, list(cfg.chips.bands), [list(g) for g in cfg.model.groups], extra)
        for name in sorted(os.listdir(d)):
            with open(os.path.join(d, name), "rb") as f:
                data = f.read()
            if name != "config.json":
                storage.write_bytes(storage.join(out, name), data)
        with open(os.path.join(d, "config.json"), "rb") as f:
            storage.write_bytes(storage.join(out, "config.json"), f.read())  # last: marks the export done


def export_zero(cfg: ExperimentConfig, seed: int = 0) -> dict:
    """The "zero pretraining" baseline: a randomly initialised encoder, exported like the others."""
    import torch

    from pw_ray.models.satmae import build_mae

    out = export_dir(cfg.root, ZERO)
    if storage.exists(storage.join(out, "config.json")):
        return json.loads(storage.read_text(storage.join(out, "summary.json")))
    torch.manual_seed(seed)
    model = build_mae(cfg.model.preset, list(cfg.chips.bands), [list(g) for g in cfg.model.groups],
                      img_size=cfg.chips.size_px, patch_size=cfg.model.patch_size)
    _export(cfg, ZERO, model, 0)
    summary = {"set": ZERO, "steps": 0, "final_loss": None, "n_chips": 0, "wall_s": 0.0}
    storage.write_text(storage.join(out, "summary.json"), json.dumps(summary, indent=2))
    return summary


def load_encoder(root: str, set_name: str):
    """Load an exported encoder (a module with ``embed``) and its config from storage."""
    from pw_ray.models.standalone_loader import load_encoder as _load

    out = export_dir(root, set_name)
    with tempfile.TemporaryDirectory() as d:
        for name in ("config.json", "encoder.pt"):
            with open(os.path.join(d, name), "wb") as f:
                f.write(storage.read_bytes(storage.join(out, name)))
        enc = _load(d)
        with open(os.path.join(d, "config.json")) as f:
            conf = json.load(f)
    return enc, conf


__all__ = ["pretrain_set", "export_zero", "load_encoder", "train_loop_per_worker", "np"]
