"""The pretraining stage on Ray Train: a TorchTrainer streaming a set's shards.

The loop is a plain function (:func:`train_loop_per_worker`); the model, the schedule and the
step come from :mod:`pw_ray.models.satmae` and :mod:`pw_ray.pretrain.step` and run without Ray.
Each worker reads its share of the shards itself (:mod:`pw_ray.pretrain.loader`: files in a
seeded order per epoch, a range of them per rank, a local shuffle, batches ready ahead of the
step) from a catalog of the files' row groups the driver reads once per run.

A run belongs to its inputs (:func:`pretrain_record`: the set's shards, ``model``, and the fields
of ``train`` that change what is learnt; not ``epochs``/``max_steps``, whose increase continues a
run, nor operational fields). Everything of a set lives in ``<root>/runs/pretrain/<set>/``:

* ``<set>-<digest8>/``, the Ray Train run of one lineage (so a superseded config's checkpoints
  are never resumed by another, and switching back resumes the old run):

  - ``checkpoint_*/state.pt`` every ``train.checkpoint_every_min`` minutes of training (rank 0's
    clock; every rank agrees on the step) and/or every ``train.checkpoint_every`` optimizer steps
    (model, optimizer, step, epoch, batches done in the epoch, world size); Ray keeps the
    ``train.keep_checkpoints`` of lowest loss and the latest; a resumed worker continues with
    exactly the batch after the checkpoint's;
  - ``tensorboard/`` loss, lr, samples/s, time waiting for data, the workers' peak memory every
    ``train.log_every`` steps, and each checkpoint's size and write time (Ray's dashboard gets
    the same metrics at most every 2 s);
  - ``normalization.json`` the per-band statistics the run normalises with (``model.normalization: set``);

* ``export/`` the encoder of the latest run (``encoder.pt`` + ``config.json``) and
  ``summary.json``, both recording the run's lineage.

A new ``fit()`` with the same run name resumes from the latest checkpoint (a restarted driver,
or a config with more steps), and ``FailureConfig`` restarts the worker group from it when a
worker or a node dies. The learning rate is a function of the step, so the step restores the
schedule.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass

from pw_ray import lineage, storage
from pw_ray.config import ExperimentConfig
from pw_ray.ingest import shards as S
from pw_ray.pretrain.loader import ShardCatalog, read_catalog, shard_filesystem

log = logging.getLogger(__name__)

ZERO = "zero"  # the random-encoder baseline
STATE_FILE = "state.pt"
#: Seconds between metric reports to Ray: its controller's poll interval (Ray Train V2 default 2 s).
REPORT_INTERVAL_S = float(os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", 2.0))
#: A worker warns when it waits for data longer than this share of its step time ...
DATA_WAIT_WARN_SHARE = 0.05
#: ... in this many reports in a row.
DATA_WAIT_WARN_REPORTS = 3
#: Bump when the training code changes what a run learns from the same inputs: runs start anew.
PRETRAIN_VERSION = 1
#: The fields of ``train`` that change what a run learns (the effective batch, the optimiser and its
#: schedule's shape, the data order, the arithmetic). Not ``epochs``/``max_steps`` (raising them
#: continues the run), nor operational ones (log and checkpoint intervals, ``keep_checkpoints``,
#: ``max_failures``, CPUs and resources, ``compile``, loader threads and prefetch).
RECIPE_FIELDS = ("batch_size", "accum_steps", "num_workers", "blr", "weight_decay", "warmup_epochs", "grad_clip",
                 "shuffle_buffer", "precision", "use_gpu")
#: Training time for ``train.checkpoint_every_min`` (seconds; a module attribute so tests can replace it).
CLOCK = time.perf_counter
#: Ray Train orders checkpoints by this reported metric (lowest kept) besides always keeping the latest.
CHECKPOINT_SCORE = "loss"


def set_dir(root: str, set_name: str) -> str:
    """``runs/pretrain/<set>``: the set's runs (one per lineage) and its export."""
    return storage.join(root, "runs", "pretrain", set_name)


def run_dir(root: str, set_name: str, run: str) -> str:
    """The Ray Train run dir of run ``run`` (:func:`run_name`) of a set."""
    return storage.join(set_dir(root, set_name), run)


def export_dir(root: str, set_name: str) -> str:
    return storage.join(set_dir(root, set_name), "export")


def tensorboard_dir(root: str, set_name: str, run: str) -> str:
    from pw_ray.pretrain.metrics import TB_DIR

    return storage.join(run_dir(root, set_name, run), TB_DIR)


def load_state(path: str, map_location="cpu") -> dict:
    """A checkpoint's ``state.pt``: model and optimizer state dicts, step, epoch, batches done in the
    epoch and the loop config, all tensors and plain values. ``weights_only=True``: unpickling runs
    no code from the file (a checkpoint on shared storage is input like any other)."""
    import torch

    return torch.load(path, map_location=map_location, weights_only=True)


def _pixels_to_numpy(batch, shape):
    """Ray Data batch (pyarrow) → {"pixels": (N, C, H, W) uint16}."""
    from pw_ray.ingest.shards import column_pixels

    return {"pixels": column_pixels(batch.column("pixels"), shape)}


# ----------------------------------------------------------------------------- the worker loop
def _all_gather(tensor, world: int) -> list:
    """Every rank's copy of a small tensor (the tensor itself when alone)."""
    if world == 1:
        return [tensor]
    import torch
    import torch.distributed as dist

    out = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(out, tensor)
    return out


def _build_model(config: dict):
    from pw_ray.models.satmae import build_mae

    return build_mae(config["preset"], config["bands"], config["groups"], img_size=config["img_size"],
                     patch_size=config["patch_size"], norm_pix_loss=config["norm_pix_loss"],
                     loss_pairing=config.get("loss_pairing", "official"),
                     spatial_mask=config.get("spatial_mask", False))


def train_loop_per_worker(config: dict) -> None:
    """One Ray Train worker: resume, then train on this worker's stream of the set until ``total_steps``."""
    import ray.train
    import ray.train.torch
    import torch

    from pw_ray.pretrain import step as St
    from pw_ray.pretrain.loader import ChipStream, DataWaitMonitor
    from pw_ray.pretrain.metrics import MetricsLog, heap_mb, peak_rss_mb

    ctx = ray.train.get_context()
    world, rank = ctx.get_world_size(), ctx.get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(config["seed"] + rank)

    model = _build_model(config).to(device)
    base_lr = St.effective_lr(config["blr"], config["batch_size"], config["accum_steps"], world)
    optimizer = St.make_optimizer(model, base_lr, config["weight_decay"])
    autocast, scaler = St.mixed_precision(config.get("precision", "bf16"), device)
    step = epoch = batches_done = 0
    ckpt = ray.train.get_checkpoint()
    if ckpt:
        with ckpt.as_directory() as d:
            state = load_state(os.path.join(d, STATE_FILE), map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batches_done = state["step"], state["epoch"], state["batches_in_epoch"]
        batches_done = _resumed_batch(batches_done, state.get("world", world), world, rank)
        log.info("rank %d resumed at step %d (epoch %d, batch %d)", rank, step, epoch, batches_done)
    start_step = last_ckpt_step = step
    if world > 1:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    if config["compile"]:
        model = torch.compile(model)
    core = St.unwrap(model)
    mean = torch.tensor(config["mean"], dtype=torch.float32, device=device)
    std = torch.tensor(config["std"], dtype=torch.float32, device=device)
    total, accum = config["total_steps"], config["accum_steps"]
    global_batch = config["batch_size"] * accum * world
    metrics_log = MetricsLog(config["tensorboard_uri"]) if rank == 0 and config["tensorboard_uri"] else None
    catalog = ShardCatalog.from_dict(config["shards"])
    wait_monitor = DataWaitMonitor(DATA_WAIT_WARN_SHARE, DATA_WAIT_WARN_REPORTS)
    window = {"t": time.perf_counter(), "steps": 0, "loss": 0.0, "n": 0, "wait": 0.0}
    last_ray_report = float("-inf")
    peak_heap = heap_mb()  # sampled at every report: what the worker keeps between steps
    every_steps, every_s = config["checkpoint_every"], config["checkpoint_every_s"]
    # Checkpoints by time: rank 0's training clock decides, at each report (a collective), whether
    # one is due now and at which step the next falls due; every rank then checkpoints at that
    # step, so all call ray.train.report the same number of times.
    last_ckpt_clock = CLOCK()
    clock_window = (last_ckpt_clock, step)  # (clock, step) at the last report: seconds per step
    time_due_step: int | None = None
    written = {"n": 0, "write_s": None}  # rank 0: checkpoints written by this worker group, last write time

    def report(checkpoint: bool) -> None:
        """Log the steps since the last call (every rank calls this at the same steps).

        TensorBoard gets every call. Ray gets checkpoints, and metrics at most every
        ``report_interval_s``: Ray Train holds one unread report per worker and its controller
        reads them every 2 s, so a report sooner than that blocks the step until it is read.
        A report becomes a checkpoint when rank 0's clock says the time interval is over.
        """
        nonlocal last_ckpt_step, last_ray_report, peak_heap, time_due_step, clock_window, last_ckpt_clock
        now, clock = time.perf_counter(), CLOCK()
        due = checkpoint or now - last_ray_report >= config["report_interval_s"]
        peak_heap = max(peak_heap, heap_mb())
        wait = window["wait"] / max(now - window["t"], 1e-9)  # share of the time blocked on the stream
        check_data_wait(wait_monitor, rank, wait)
        time_now, next_due = False, -1
        if every_s and rank == 0:
            step_s = (clock - clock_window[0]) / max(step - clock_window[1], 1)
            time_now, next_due = time_checkpoint(step, clock - last_ckpt_clock, step_s, every_s, checkpoint)
        clock_window = (clock, step)
        # one collective: the mean loss over workers, rank 0's clocks deciding for all ranks (Ray's
        # report interval, the checkpoint interval), and the largest memory and data wait of any worker
        mine = torch.tensor([window["loss"] / max(window["n"], 1), float(due and rank == 0), peak_heap,
                             peak_rss_mb(), wait, float(time_now), float(next_due)], device=device)
        ranks = torch.stack(_all_gather(mine, world))
        loss, due = float(ranks[:, 0].mean()), bool(ranks[:, 1].max() > 0)
        if every_s:
            checkpoint = checkpoint or bool(ranks[0, 5] > 0)
            time_due_step = int(ranks[0, 6])
        due = due or checkpoint
        metrics = {"step": step, "epoch": epoch, "start_step": start_step, "loss": loss,
                   "lr": St.lr_at(step - 1, total, config["warmup_steps"], base_lr),
                   "samples_per_s": window["steps"] * global_batch / max(now - window["t"], 1e-9),
                   "data_wait_frac": wait, "data_wait_frac_max": float(ranks[:, 4].max()),
                   # MiB, the largest over workers: private memory (RSS − SHR) at any report so far,
                   # and peak RSS, which also counts the object store pages a worker has read
                   "peak_heap_mb": float(ranks[:, 2].max()), "peak_rss_mb": float(ranks[:, 3].max())}
        window.update(t=now, steps=0, loss=0.0, n=0, wait=0.0)
        if metrics_log:
            metrics_log.write(step, {k: metrics[k] for k in ("loss", "lr", "samples_per_s", "data_wait_frac",
                                                               "data_wait_frac_max", "epoch", "peak_heap_mb",
                                                               "peak_rss_mb")})
        if checkpoint:
            last_ckpt_step = step
        if not due:
            return
        last_ray_report = now
        if not (checkpoint and rank == 0):  # only rank 0 uploads; every rank reports
            ray.train.report(metrics)
            if checkpoint:
                last_ckpt_clock = CLOCK()
            return
        t_save = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, STATE_FILE)
            torch.save({"model": core.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "epoch": epoch, "batches_in_epoch": batches_done, "world": world,
                        "config": {k: v for k, v in config.items() if k != "shards"}}, path)
            # size and time of this checkpoint's serialisation; the whole write (serialisation, upload
            # to storage, Ray's hand-off) of the one before: it is known only once report returns
            metrics.update(checkpoint_mb=os.path.getsize(path) / 2**20,
                           checkpoint_save_s=time.perf_counter() - t_save, checkpoints_written=written["n"] + 1)
            if written["write_s"] is not None:
                metrics["checkpoint_write_s"] = written["write_s"]
            if metrics_log:
                metrics_log.sync()
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        written.update(n=written["n"] + 1, write_s=time.perf_counter() - t_save)
        if metrics_log:
            metrics_log.write(step, {"checkpoint_mb": metrics["checkpoint_mb"], "checkpoint_write_s": written["write_s"]})
        last_ckpt_clock = CLOCK()  # training time restarts after the write

    while step < total and epoch < config["epochs"]:
        # this rank's batches of the epoch, from the first one not yet trained on (a resumed run
        # continues at exactly the batch after its checkpoint's)
        stream = ChipStream(catalog, batch_size=config["batch_size"], seed=config["seed"], epoch=epoch, rank=rank,
                            world=world, shuffle_chips=config["shuffle_buffer"], start_batch=batches_done,
                            read_threads=config["loader_threads"], prefetch_batches=config["prefetch_batches"],
                            pin_memory=device.type == "cuda")  # the step syncs (loss.item()) before a batch is dropped
        optimizer.zero_grad(set_to_none=True)  # an epoch that ended mid-accumulation leaves no gradient behind
        micro = 0
        ready = time.perf_counter()
        with stream:
            for b_idx, batch in enumerate(stream, start=batches_done):
                window["wait"] += time.perf_counter() - ready
                out = St.train_step(model, batch, optimizer, step=step,
                                    lr=St.lr_at(step, total, config["warmup_steps"], base_lr), mean=mean, std=std,
                                    mask_ratio=config["mask_ratio"], accum_steps=accum, micro_step=micro,
                                    grad_clip=config["grad_clip"], autocast_dtype=autocast, scaler=scaler,
                                    input_quantization=config.get("input_quantization", "uint8"))
                window["loss"] += out["loss"]
                window["n"] += 1
                ready = time.perf_counter()
                batches_done = b_idx + 1
                micro = (micro + 1) % accum
                if micro:
                    continue
                step += 1
                window["steps"] += 1
                if (step >= total or (every_steps and step % every_steps == 0)
                        or (time_due_step is not None and step >= time_due_step)):
                    report(checkpoint=True)
                elif step % config["log_every"] == 0:
                    report(checkpoint=False)
                if step >= total:
                    break
                ready = time.perf_counter()
        if step >= total:
            break
        epoch, batches_done = epoch + 1, 0
    if step > last_ckpt_step:  # the data ran out between checkpoints: keep what was trained
        report(checkpoint=True)
    if metrics_log:
        metrics_log.close()


def time_checkpoint(step: int, since_checkpoint_s: float, step_s: float, every_s: float,
                    checkpoint_now: bool = False) -> tuple[bool, int]:
    """Rank 0's clock at a report → (a checkpoint is due at this step, the step the next one falls due at).

    ``since_checkpoint_s``: training seconds since the last checkpoint (or the worker group's
    start); ``step_s``: seconds per optimizer step since the last report; ``every_s``: the
    interval; ``checkpoint_now``: this report writes a checkpoint anyway. The next one is predicted
    from the step rate, at least one step on; the next report predicts again.
    """
    due = checkpoint_now or since_checkpoint_s >= every_s
    remaining = every_s if due else every_s - since_checkpoint_s
    return due, step + max(1, math.ceil(remaining / max(step_s, 1e-9)))


def check_data_wait(monitor, rank: int, wait: float) -> bool:
    """Log a warning when rank ``rank``'s share of step time spent waiting for data (``wait``,
    0–1, over the last reporting window) has stayed above :data:`DATA_WAIT_WARN_SHARE` for
    :data:`DATA_WAIT_WARN_REPORTS` reports (once per such episode); True when it warned."""
    if not monitor.update(wait):
        return False
    log.warning("pretrain rank %d waited for data %.0f %% of its step time in %d reports in a row (more than "
                "%.0f %%): its loader does not keep up; raise train.loader_threads or train.cpus_per_worker",
                rank, 100 * wait, DATA_WAIT_WARN_REPORTS, 100 * DATA_WAIT_WARN_SHARE)
    return True


def _resumed_batch(batches_done: int, saved_world: int, world: int, rank: int) -> int:
    """The batch of its epoch a resumed rank starts at.

    Exact with the checkpoint's world size. With another world size each rank's share of the
    epoch is cut differently, so the rank starts at the same fraction of the epoch instead
    (chips near the cut may be seen twice or not at all this epoch).
    """
    if saved_world == world:
        return batches_done
    log.warning("pretrain rank %d: checkpoint written by %d workers, resuming with %d: the rest of its epoch "
                "is cut anew, resume is exact only with the same number of workers", rank, saved_world, world)
    return batches_done * saved_world // world


# ----------------------------------------------------------------------------- the driver
def steps_per_epoch(n_chips: int, batch_size: int, workers: int, accum: int) -> int:
    return max(1, n_chips // (batch_size * workers * accum))


def total_steps(cfg: ExperimentConfig, n_chips: int) -> int:
    """Optimizer steps of the whole run: ``epochs`` over the set, capped by ``max_steps``."""
    t = cfg.train
    spe = steps_per_epoch(n_chips, t.batch_size, t.num_workers, t.accum_steps)
    return min(spe * t.epochs, t.max_steps) if t.max_steps else spe * t.epochs


def loop_config(cfg: ExperimentConfig, set_name: str, n_chips: int, normalization: dict,
                catalog: ShardCatalog | None = None, run: str | None = None) -> dict:
    """Everything a worker needs, as plain values (it is pickled to every worker and saved in
    checkpoints, all but the shard catalog ``shards`` the workers read from). ``run``: the run
    whose ``tensorboard/`` rank 0 writes (none without it)."""
    t, m = cfg.train, cfg.model
    spe = steps_per_epoch(n_chips, t.batch_size, t.num_workers, t.accum_steps)
    total = total_steps(cfg, n_chips)
    return dict(
        set_name=set_name, preset=m.preset, bands=list(cfg.chips.bands), groups=[list(g) for g in m.groups],
        img_size=cfg.chips.size_px, patch_size=m.patch_size, norm_pix_loss=m.norm_pix_loss,
        loss_pairing=m.loss_pairing, spatial_mask=m.spatial_mask, input_quantization=m.input_quantization,
        precision=t.precision, use_gpu=t.use_gpu, mask_ratio=m.mask_ratio, blr=t.blr, weight_decay=t.weight_decay,
        batch_size=t.batch_size, accum_steps=t.accum_steps, epochs=t.epochs, total_steps=total,
        warmup_steps=int(t.warmup_epochs * spe), grad_clip=t.grad_clip, checkpoint_every=t.checkpoint_every,
        checkpoint_every_s=t.checkpoint_every_min * 60 if t.checkpoint_every_min else None,
        log_every=t.log_every, report_interval_s=REPORT_INTERVAL_S,
        seed=cfg.pretrain_set(set_name).seed if set_name != ZERO else 0,
        shuffle_buffer=min(t.shuffle_buffer, n_chips // 4), compile=t.compile,
        loader_threads=t.loader_threads, prefetch_batches=t.prefetch_batches,
        shards=catalog.to_dict() if catalog else None,
        mean=list(normalization["mean"]), std=list(normalization["std"]),
        tensorboard_uri=storage.resolve(tensorboard_dir(cfg.root, set_name, run)) if run else None,
    )


def shard_catalog(cfg: ExperimentConfig, set_name: str) -> ShardCatalog:
    """The set's shard files with their row groups and chip shape: the listing and the footers,
    read once per run (the workers plan every epoch from it)."""
    files = S.shard_files(cfg.root, set_name)
    if not files:
        raise FileNotFoundError(f"pretrain {set_name}: no shards under {cfg.root}/shards/{set_name}; run ingest first")
    return read_catalog(files, set_name)  # an unreadable shard fails here, named, not in a worker


# ----------------------------------------------------------------------------- lineage
def shards_digest(catalog: ShardCatalog) -> str:
    """What a run trains on: the lineage digest of each of the set's chunks (its planned chips and
    chip spec) with the chips it holds (a chunk whose failed chips were retried holds more), in no
    particular order of files or place (a copied root keeps its runs)."""
    return lineage.digest(sorted(zip(catalog.chunk_digests, (sum(r) for r in catalog.row_groups))))


def pretrain_record(cfg: ExperimentConfig, set_name: str, catalog: ShardCatalog) -> dict:
    """The lineage record of a set's pretraining run: its shards, ``model``, the band order, the
    set's seed and the recipe fields of ``train`` (:data:`RECIPE_FIELDS`)."""
    return lineage.record({"version": PRETRAIN_VERSION, "shards": shards_digest(catalog), "model": cfg.model,
                           "bands": list(cfg.chips.bands), "seed": cfg.pretrain_set(set_name).seed,
                           "train": {k: getattr(cfg.train, k) for k in RECIPE_FIELDS}})


def zero_record(cfg: ExperimentConfig, seed: int = 0) -> dict:
    """The lineage of the random-encoder baseline: the model, the bands, the chip size, the seed."""
    return lineage.record({"version": PRETRAIN_VERSION, "model": cfg.model, "bands": list(cfg.chips.bands),
                           "size_px": cfg.chips.size_px, "seed": seed})


def run_name(set_name: str, record: dict) -> str:
    """The Ray Train run name of a lineage: ``<set>-<first 8 hex digits of its digest>``."""
    return f"{set_name}-{record['digest'][:8]}"


def read_summary(root: str, set_name: str) -> dict | None:
    """The set's ``export/summary.json`` (None: no complete export)."""
    uri = storage.join(export_dir(root, set_name), "summary.json")
    return json.loads(storage.read_text(uri)) if storage.exists(uri) else None


@dataclass
class RunPlan:
    """What pretraining does for one set, decided on the driver before anything trains."""

    set_name: str
    catalog: ShardCatalog
    record: dict
    run: str  #: the Ray Train run name (:func:`run_name`)
    total_steps: int
    why: str | None  #: None: the export is this lineage's and has its steps (reuse)
    done: dict | None  #: the export's summary.json
    resumes: bool  #: the run has checkpoints: training continues from the latest
    force: bool = False

    def line(self) -> str:
        """One line for the user: what is reused or redone, and why."""
        if self.why is None:
            return (f"pretrain {self.set_name}: reused (inputs unchanged): run {self.run}, "
                    f"{self.done['steps']} steps exported")
        if self.force:
            return f"pretrain {self.set_name}: --force → training run {self.run} from step 0 (its checkpoints removed)"
        what = (f"continuing run {self.run} from its last checkpoint" if self.resumes
                else f"training a new run {self.run}")
        return f"pretrain {self.set_name}: {self.why} → {what}"


def plan_run(cfg: ExperimentConfig, set_name: str, force: bool = False) -> RunPlan:
    """Decide whether a set's export can be reused: it can when it records this lineage and
    ``total_steps``; otherwise the set trains in the run of its lineage (resuming it if it has
    checkpoints: a driver restart, raised epochs, a switch back to an earlier config)."""
    t = cfg.train
    catalog = shard_catalog(cfg, set_name)
    n_chips = catalog.n_chips
    if n_chips < t.batch_size * t.num_workers * t.accum_steps:
        raise ValueError(f"pretrain {set_name}: {n_chips} chips cannot fill one step of train.batch_size "
                         f"{t.batch_size} × num_workers {t.num_workers} × accum_steps {t.accum_steps}")
    rec = pretrain_record(cfg, set_name, catalog)
    run, total = run_name(set_name, rec), total_steps(cfg, n_chips)
    done = read_summary(cfg.root, set_name)
    why = lineage.why_redo(done.get("lineage") if done else None, rec, force)
    if done and not done.get("lineage") and not force:
        why = "export recorded without its lineage (an older pw-ray)"
    elif why is None and done.get("steps", 0) < total:
        why = f"export at {done.get('steps', 0)} of {total} steps (train.epochs or max_steps raised)"
    resumes = not force and storage.exists(storage.join(run_dir(cfg.root, set_name, run),
                                                        "checkpoint_manager_snapshot.json"))
    return RunPlan(set_name, catalog, rec, run, total, why, done, resumes, force)


# ----------------------------------------------------------------------------- the run
def pixel_dataset(catalog: ShardCatalog):
    """The set's chips as a streamed Ray Dataset of {"pixels": (N, C, H, W) uint16}, read block by
    block, never loaded whole (one pass over the set on Ray Data tasks: the normalisation statistics)."""
    import ray

    fs, paths = shard_filesystem(catalog.uris)
    ds = ray.data.read_parquet(paths, filesystem=fs).select_columns(["pixels"])
    return ds.map_batches(_pixels_to_numpy, fn_kwargs={"shape": catalog.shape}, batch_format="pyarrow",
                          batch_size=256)


def _batch_moments(batch) -> dict:
    from pw_ray.pretrain.transforms import pixel_moments

    n, mean, m2 = pixel_moments(batch["pixels"])
    return {"n": [n], "mean": [mean.numpy()], "m2": [m2.numpy()]}


def set_normalization(cfg: ExperimentConfig, set_name: str, catalog: ShardCatalog, run: str) -> dict:
    """The per-band statistics of ``model.normalization`` for this set, as the export records them.

    ``fmow``: SatMAE's fMoW-Sentinel table. ``set``: mean and std of every pixel of the set's
    shards, computed in one streamed pass (Ray Data tasks reduce blocks to moments, the driver
    merges them) and cached in the run dir (``run``, the run name of the lineage of ``catalog``,
    the set's :func:`shard_catalog`), so a resumed run normalises exactly as before.
    """
    import torch

    from pw_ray.models.export import fmow_normalization
    from pw_ray.pretrain.transforms import compute_stats

    if cfg.model.normalization == "fmow":
        return fmow_normalization(cfg.chips.bands)
    cache = storage.join(run_dir(cfg.root, set_name, run), "normalization.json")
    if storage.exists(cache):
        return json.loads(storage.read_text(cache))
    n_chips = catalog.n_chips
    moments = pixel_dataset(catalog).map_batches(_batch_moments, batch_format="numpy", batch_size=64)
    rows = ((int(r["n"]), torch.as_tensor(r["mean"]), torch.as_tensor(r["m2"])) for r in moments.iter_rows())
    mean, std = compute_stats(rows)
    norm = {"method": "clip mean±2std, then (x - (mean - 2std)) / (4std) -> [0, 1]",
            "source": f"set:{set_name}", "chips": n_chips,
            "mean": [round(float(v), 4) for v in mean], "std": [round(float(v), 4) for v in std.clamp(min=1.0)]}
    storage.write_text(cache, json.dumps(norm, indent=2))
    log.info("pretrain %s: normalisation statistics of %d chips → %s", set_name, n_chips, cache)
    return norm


def build_trainer(cfg: ExperimentConfig, set_name: str, catalog: ShardCatalog, run: str,
                  train_loop=train_loop_per_worker):
    """(TorchTrainer, loop config, normalisation) for one set, resuming its run dir if one exists.

    ``catalog``: the set's :func:`shard_catalog`; ``run``: the run name of its lineage
    (:func:`run_name`); ``train_loop`` replaces the worker loop (tests wrap it to inject faults
    or delays)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    normalization = set_normalization(cfg, set_name, catalog, run)
    lc = loop_config(cfg, set_name, catalog.n_chips, normalization, catalog, run)
    t = cfg.train
    # On an object store Ray gets pw-ray's filesystem (endpoint, region), not one it makes from the URI.
    storage_path, storage_fs = storage.ray_storage(set_dir(cfg.root, set_name))
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=lc,
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu,
            resources_per_worker={"CPU": t.cpus_per_worker, **t.resources_per_worker}),
        run_config=ray.train.RunConfig(
            name=run,  # fixed per lineage: a new fit() finds the run dir and resumes
            storage_path=storage_path, storage_filesystem=storage_fs,
            # the k of lowest loss, and always the latest (Ray keeps it: a run resumes from it)
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=t.keep_checkpoints,
                                                         checkpoint_score_attribute=CHECKPOINT_SCORE,
                                                         checkpoint_score_order="min"),
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
        ),
    )
    return trainer, lc, normalization


def train_run(cfg: ExperimentConfig, plan: RunPlan, train_loop=train_loop_per_worker) -> dict:
    """Train (or continue) the run of ``plan`` with Ray Train and export its encoder; returns the
    run's summary, also written to ``export/summary.json`` (last: it marks the set done)."""
    set_name = plan.set_name
    if plan.force:  # really redo: a run of the same lineage would otherwise resume
        storage.remove(run_dir(cfg.root, set_name, plan.run))
    trainer, lc, normalization = build_trainer(cfg, set_name, plan.catalog, plan.run, train_loop)
    log.info("pretrain %s: %d steps on %d worker(s) → %s", set_name, lc["total_steps"], cfg.train.num_workers,
             run_dir(cfg.root, set_name, plan.run))
    from pw_ray.pretrain.step import recipe_variants

    log.info("pretrain %s: SatMAE recipe variants (docs/pretrain.md, Fidelity to SatMAE): %s", set_name,
             ", ".join(f"{k}={v}" for k, v in recipe_variants(lc).items()))
    t0 = time.perf_counter()
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"pretrain {set_name} failed: {result.error}")
    summary = export_from_checkpoint(cfg, set_name, result.checkpoint, normalization, plan.record)
    metrics = result.metrics or {}
    summary.update(run=plan.run, lineage=plan.record, decision=plan.why, n_chips=plan.catalog.n_chips,
                   total_steps=lc["total_steps"], start_step=metrics.get("start_step"),
                   final_loss=metrics.get("loss"), wall_s=round(time.perf_counter() - t0, 1),
                   worker_peak_heap_mb=metrics.get("peak_heap_mb"), worker_peak_rss_mb=metrics.get("peak_rss_mb"),
                   checkpoint_mb=metrics.get("checkpoint_mb"), checkpoint_save_s=metrics.get("checkpoint_save_s"),
                   checkpoint_write_s=metrics.get("checkpoint_write_s"),
                   checkpoints_written=metrics.get("checkpoints_written"))
    storage.write_text(storage.join(export_dir(cfg.root, set_name), "summary.json"), json.dumps(summary, indent=2))
    return summary


def pretrain_set(cfg: ExperimentConfig, set_name: str, train_loop=train_loop_per_worker, force: bool = False) -> dict:
    """Pretrain one set with Ray Train and export its encoder; returns the run's summary.

    Reuses a set whose export records this lineage and ``total_steps``; otherwise trains in the
    run of its lineage (:func:`plan_run`), resuming from its latest checkpoint if it has one.
    """
    plan = plan_run(cfg, set_name, force)
    log.info("%s", plan.line())
    if plan.why is None:
        return plan.done
    return train_run(cfg, plan, train_loop)


# ----------------------------------------------------------------------------- export
def export_from_checkpoint(cfg: ExperimentConfig, set_name: str, checkpoint, normalization: dict,
                           record: dict | None = None) -> dict:
    if checkpoint is None:
        raise RuntimeError(f"pretrain {set_name}: the run finished without a checkpoint to export")
    with checkpoint.as_directory() as d:
        state = load_state(os.path.join(d, STATE_FILE))
    model = _build_model(state["config"])
    model.load_state_dict(state["model"])
    _export(cfg, set_name, model, state["step"], normalization, state["config"], record)
    return {"set": set_name, "steps": state["step"], "epoch": state["epoch"]}


def _export(cfg: ExperimentConfig, set_name: str, model, step: int, normalization: dict, run_config: dict,
            record: dict | None = None) -> None:
    """``export/encoder.pt`` + ``config.json`` (written last: a present config.json is a complete export).

    ``run_config`` is the loop config the weights were trained with: the export records its
    SatMAE recipe variants, and its input quantisation in ``normalization`` for every later
    embedding; ``record`` the run's lineage (:func:`pretrain_record`).
    """
    from pw_ray.models.export import export_encoder
    from pw_ray.pretrain.step import recipe_variants

    normalization = {**normalization, "quantize": run_config["input_quantization"]}
    extra = {"set": set_name, "steps": step, "normalization": normalization,
             "mean": list(normalization["mean"]), "std": list(normalization["std"]),
             "recipe_variants": recipe_variants(run_config)}
    if record is not None:
        extra["lineage"] = record
    out = export_dir(cfg.root, set_name)
    if storage.exists(storage.join(out, "summary.json")):  # another lineage's: not done until rewritten
        storage.remove(storage.join(out, "summary.json"))
    with tempfile.TemporaryDirectory() as d:
        export_encoder(model, d, list(cfg.chips.bands), [list(g) for g in cfg.model.groups], extra)
        for name in sorted(os.listdir(d), key=lambda n: n == "config.json"):
            with open(os.path.join(d, name), "rb") as f:
                storage.write_bytes(storage.join(out, name), f.read())


def export_zero(cfg: ExperimentConfig, seed: int = 0, force: bool = False) -> dict:
    """The "zero pretraining" baseline: a randomly initialised encoder, exported like the others
    (reused while its lineage, :func:`zero_record`, is unchanged)."""
    import torch

    from pw_ray.models.export import fmow_normalization
    from pw_ray.models.satmae import build_mae

    rec = zero_record(cfg, seed)
    done = read_summary(cfg.root, ZERO)
    why = lineage.why_redo(done.get("lineage") if done else None, rec, force)
    if why is None:
        return {**done, "decision": None}
    torch.manual_seed(seed)
    model = build_mae(cfg.model.preset, list(cfg.chips.bands), [list(g) for g in cfg.model.groups],
                      img_size=cfg.chips.size_px, patch_size=cfg.model.patch_size,
                      loss_pairing=cfg.model.loss_pairing, spatial_mask=cfg.model.spatial_mask)
    normalization = fmow_normalization(cfg.chips.bands)
    _export(cfg, ZERO, model, 0, normalization, loop_config(cfg, ZERO, 0, normalization), rec)
    summary = {"set": ZERO, "steps": 0, "final_loss": None, "n_chips": 0, "wall_s": 0.0, "lineage": rec,
               "decision": why}
    storage.write_text(storage.join(export_dir(cfg.root, ZERO), "summary.json"), json.dumps(summary, indent=2))
    return summary


def load_encoder(root: str, set_name: str, pooling: str = "mean_then_norm"):
    """Load an exported encoder (a module with ``embed``, pooled as ``pooling`` says) and its config."""
    from pw_ray.models.standalone_loader import load_encoder as _load

    out = export_dir(root, set_name)
    with tempfile.TemporaryDirectory() as d:
        for name in ("config.json", "encoder.pt"):
            with open(os.path.join(d, name), "wb") as f:
                f.write(storage.read_bytes(storage.join(out, name)))
        enc = _load(d, pooling)
        with open(os.path.join(d, "config.json")) as f:
            conf = json.load(f)
    return enc, conf


__all__ = ["pretrain_set", "plan_run", "train_run", "RunPlan", "pretrain_record", "build_trainer",
           "set_normalization", "export_zero", "load_encoder", "train_loop_per_worker"]
