"""The estimate of a whole experiment, stage by stage: counts, bytes, hours and cost, each figure
with the source of every number in it (the config, a calibration file, a documented benchmark,
the model itself, or a labelled assumption).

Pure arithmetic on the config: nothing is planned, searched, read or trained, and only local
task files are opened (a remote path is never fetched: its size comes from the config).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pw_ray import storage
from pw_ray.estimate import ingest_model as IM
from pw_ray.estimate.rates import Calibration, Rates, resolve_rates

#: (key, label, unit) of every figure, in print order. Units: count, bytes, hours, money.
QUANTITIES = [
    ("points", "points", "count"),
    ("stac_requests", "STAC requests", "count"),
    ("scenes", "scenes", "count"),
    ("bytes_read", "bytes read", "bytes"),
    ("chips", "chips written", "count"),
    ("bytes_written", "bytes written", "bytes"),
    ("samples", "samples through the model", "count"),
    ("flops", "model FLOPs", "flops"),
    ("cpu_hours", "CPU-hours", "hours"),
    ("gpu_hours", "GPU-hours", "hours"),
    ("checkpoint_bytes", "checkpoint storage", "bytes"),
    ("cost", "cost", "money"),
]
#: Figures that add up across stages into the total.
ADDITIVE = ("stac_requests", "scenes", "bytes_read", "chips", "bytes_written", "samples", "flops", "cpu_hours",
            "gpu_hours", "checkpoint_bytes", "cost")


@dataclass
class Figure:
    value: float | None
    source: str


@dataclass
class StageEstimate:
    name: str
    figures: dict[str, Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def value(self, key: str) -> float | None:
        f = self.figures.get(key)
        return None if f is None else f.value


@dataclass
class PointSet:
    """A set of points to ingest (a pretraining set or a task), or an imported benchmark."""

    name: str
    kind: str                   # "pretrain" or the task kind
    points: int | None
    source: str
    weights: dict[str, float]   # continent → share
    searched: bool              # through the STAC search (False: imported images)


@dataclass
class Estimate:
    config_name: str
    stages: list[StageEstimate]
    total: StageEstimate
    rates: Rates
    #: Bytes kept at the end (shards, checkpoints, exports, embeddings) and their storage cost.
    stored: Figure
    storage_cost: Figure
    per_chip: dict[str, float]
    costs: object  # pw_ray.models.flops.ModelCosts

    def stage(self, name: str) -> StageEstimate:
        return next(s for s in self.stages if s.name == name)


# ----------------------------------------------------------------------------- inputs
def _count_rows(path: str) -> int:
    import pandas as pd

    if path.endswith(".parquet"):
        return storage.read_table(path).num_rows
    import io

    return len(pd.read_csv(io.StringIO(storage.read_text(path))))


def point_sets(cfg) -> list[PointSet]:
    """Every set of points the experiment ingests, with its size and where the size came from."""
    from pw_ray.config import CONTINENTS

    everywhere = {c: 1 / len(CONTINENTS) for c in CONTINENTS}
    out = [PointSet(s.name, "pretrain", s.size, "size", s.weights(), True)
           for s in cfg.pretrain_sets]
    for t in cfg.tasks:
        if t.kind in ("synthetic-landcover", "synthetic-population"):
            out.append(PointSet(t.name, t.kind, t.size, "size", everywhere, True))
        elif t.kind == "points":
            if not storage.is_remote(t.path) and storage.exists(t.path):
                out.append(PointSet(t.name, t.kind, _count_rows(t.path), f"rows of {t.path}", everywhere, True))
            else:
                out.append(PointSet(t.name, t.kind, t.size, f"size: its file {t.path} is not read here",
                                    everywhere, True))
        else:  # imported benchmark images: no search
            n = t.max_chips
            src = "max_chips, at most" if n else f"all images of {t.path}: unknown, set tasks[].max_chips"
            out.append(PointSet(t.name, t.kind, n, src, everywhere, False))
    return out


def _sum(values) -> float | None:
    vals = list(values)
    return None if any(v is None for v in vals) else float(sum(vals))


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else seconds / 3600


# ----------------------------------------------------------------------------- the stages
def estimate(cfg, calibration: Calibration | None = None) -> Estimate:
    """The :class:`Estimate` of ``cfg`` (rates from its ``estimate`` section and ``calibration``)."""
    from pw_ray.models.flops import costs_for

    rates = resolve_rates(cfg, calibration or Calibration({}))
    costs = costs_for(cfg)
    sets = point_sets(cfg)
    chips_px = len(cfg.chips.bands) * cfg.chips.size_px**2
    parquet_per_chip = (rates.parquet_bytes_per_px.value * chips_px if rates.parquet_bytes_per_px.value
                        else IM.assumption("parquet_ratio") * 2 * chips_px)
    parquet_src = rates.parquet_bytes_per_px.label if rates.parquet_bytes_per_px.value else "assumption parquet_ratio"
    wds_per_chip = IM.wds_bytes_per_chip(len(cfg.chips.bands), cfg.chips.size_px) if cfg.chips.webdataset else 0
    per_chip = {"parquet": parquet_per_chip, "webdataset": float(wds_per_chip)}
    chips_of = {s.name: None if s.points is None else s.points * (cfg.stac.seasons if s.searched else 1)
                for s in sets}

    stages = [_plan(sets), _ingest(cfg, sets, chips_of, per_chip, parquet_src, rates),
              _pretrain(cfg, chips_of, per_chip, costs, rates), _evaluate(cfg, chips_of, per_chip, costs, rates),
              _analyze(cfg, chips_of, per_chip, rates)]
    for s in stages:
        _cost(s, rates)
    total = StageEstimate("total")
    for key in ADDITIVE:
        present = [s.figures[key] for s in stages if key in s.figures]
        if present:
            known = [f.value for f in present if f.value is not None]
            unknown = [s.name for s in stages if key in s.figures and s.figures[key].value is None]
            total.figures[key] = Figure(float(sum(known)) if known else None,
                                        "sum of the stages" + (f" (without {', '.join(unknown)}: unknown)"
                                                               if unknown else ""))
    total.figures["points"] = Figure(stages[0].value("points"), "plan")
    stored_parts = [stages[1].value("bytes_written"), stages[2].value("checkpoint_bytes"),
                    stages[3].figures.get("embedding_bytes", Figure(0.0, "")).value]
    stored = Figure(_sum(stored_parts), "shards (ingest bytes written) + checkpoints kept and exports + embeddings")
    price = rates.price_storage_gb_month
    storage_cost = Figure(None if stored.value is None or price.value is None
                          else stored.value / 1e9 * price.value * cfg.estimate.storage_months,
                          f"stored GB × {price.source} × estimate.storage_months {cfg.estimate.storage_months:g}"
                          if price.value is not None else "no price: set estimate.price_storage_gb_month or "
                                                          "--price-storage-gb-month")
    if storage_cost.value is not None and total.value("cost") is not None:
        total.figures["cost"] = Figure(total.value("cost") + storage_cost.value,
                                       total.figures["cost"].source + " + storage")
    return Estimate(cfg.name, stages, total, rates, stored, storage_cost, per_chip, costs)


def _plan(sets: list[PointSet]) -> StageEstimate:
    st = StageEstimate("plan")
    pre = [s for s in sets if s.kind == "pretrain"]
    sizes = sorted({s.points for s in pre})
    parts = [f"{len(pre)} pretraining sets × {sizes[0]:,} (pretrain_sets[].size)" if len(sizes) == 1 else
             "pretraining sets " + " + ".join(f"{s.points:,}" for s in pre) + " (pretrain_sets[].size)"]
    tasks = [f"{s.name} {'?' if s.points is None else f'{s.points:,}'} ({s.source})" for s in sets
             if s.kind != "pretrain"]
    parts += ["tasks: " + ", ".join(tasks)] if tasks else []
    st.figures["points"] = Figure(_sum(s.points for s in sets), "; ".join(parts))
    return st


def _ingest(cfg, sets, chips_of, per_chip, parquet_src, rates) -> StageEstimate:
    from pw_ray.plan import continent_counts

    st = StageEstimate("ingest")
    searched = [s for s in sets if s.searched]
    seasons = cfg.stac.seasons
    st.figures["points"] = Figure(_sum(s.points for s in searched), "points searched (pretraining sets, "
                                                                     "synthetic and points tasks)")
    chips = _sum(chips_of[s.name] for s in sets)
    st.figures["chips"] = Figure(chips, f"points × stac.seasons {seasons} (+ imported images): an upper bound, "
                                        "every point gives a chip; points skipped for clouds or no-data give none")
    if cfg.stac.kind == "api":
        cell_km = cfg.estimate.search_cell_km or IM.S2_TILE_KM
        page = cfg.estimate.stac_page_size or IM.assumption("page_size")
        reqs, scenes, read, cells = 0.0, 0.0, 0.0, 0.0
        for s in searched:
            if s.points is None:
                continue
            counts = continent_counts(s.weights, s.points)
            se = IM.search_estimate(counts, chips_of[s.name], seasons, cfg.stac.datetime, cell_km, page)
            reqs, scenes, cells = reqs + se.requests, scenes + se.scenes, cells + se.cells
            per_scene = chips_of[s.name] / max(se.scenes, 1.0)
            read += se.scenes * IM.bytes_read_per_scene(cfg.chips.bands, cfg.chips.size_px, cfg.chips.resolution_m,
                                                        per_scene)
        cell_src = (f"estimate.search_cell_km {cell_km:g} km" if cfg.estimate.search_cell_km
                    else f"{IM.S2_TILE_KM} km, a Sentinel-2 tile")
        tiles = IM.tiles_per_cell(cell_km)
        items = tiles * IM.window_days(cfg.stac.datetime, seasons) / IM.assumption("revisit_days")
        page_src = (f"estimate.stac_page_size {page}" if cfg.estimate.stac_page_size
                    else f"{page} per page, assumption page_size")
        st.figures["stac_requests"] = Figure(reqs, (
            f"per-tile search: {cells:,.0f} occupied cells (side {cell_src}; points uniform on each continent's "
            f"land) × {seasons} season(s) × {max(1, math.ceil(items / page))} page(s) of ~{items:.0f} items "
            f"({tiles:.1f} tiles per cell × {IM.window_days(cfg.stac.datetime, seasons):.0f} days ÷ "
            f"{IM.assumption('revisit_days'):g}, assumption revisit_days; {page_src}; no cloud filter: an upper "
            f"bound); one search per point would be {_sum(s.points for s in searched) * seasons:,.0f}"))
        st.figures["scenes"] = Figure(scenes, f"occupied cells × seasons × {tiles:.1f} tiles per cell (a point's "
                                              "chip comes from the least-cloudy usable scene of a tile over it), at "
                                              "most one per chip")
        st.figures["bytes_read"] = Figure(read, (
            "the COG blocks each scene's chips touch, once per scene (SCL twice: screening and shards); "
            "assumptions cog_block_px, cog_bytes_per_px, scl_bytes_per_px; land cover not counted"))
    else:
        what = "the embedded synthetic archive (local files)" if cfg.stac.kind == "synthetic" else \
            f"a static catalog read once ({cfg.stac.url})"
        st.figures["stac_requests"] = Figure(0.0, f"no STAC API: {what}")
        st.notes.append(f"scenes and bytes read are not estimated for {what}")
    imported = [s for s in sets if not s.searched]
    if imported:
        st.notes.append("imported benchmarks (" + ", ".join(s.name for s in imported) + "): their images are read "
                        "as they are, no search; their bytes read are not estimated")
    if chips is not None:
        st.figures["bytes_written"] = Figure(chips * (per_chip["parquet"] + per_chip["webdataset"]), (
            f"chips × ({per_chip['parquet']:,.0f} B Parquet [{parquet_src}] + {per_chip['webdataset']:,.0f} B "
            f"WebDataset [.npy of {len(cfg.chips.bands)}×{cfg.chips.size_px}² uint16 + .json in tar blocks, "
            "assumption json_bytes])"))
        ingest_rate, index_rate = rates.ingest_chips_per_cpu_s, rates.index_chips_per_cpu_s
        st.figures["cpu_hours"] = Figure(_hours(chips / ingest_rate.value + chips / index_rate.value), (
            f"chips ÷ {ingest_rate.value:,.1f} chips per CPU-second [{ingest_rate.label}] + chips ÷ "
            f"{index_rate.value:,.1f} for the index [{index_rate.label}]"))
    return st


def checkpoints_written(total_steps: int, every: int | None, run_minutes: float | None = None,
                        every_min: float | None = None) -> int | None:
    """Checkpoints one run writes: every ``every`` optimizer steps and/or every ``every_min``
    minutes of its ``run_minutes`` of training (whichever interval is shorter sets the count), and
    at the end. None when the interval is in minutes and the run's duration is unknown."""
    counts = []
    if every:
        counts.append(total_steps // every + (1 if total_steps % every else 0))
    if every_min:
        if run_minutes is None:
            return None
        counts.append(max(1, math.ceil(run_minutes / every_min)))
    return max(counts)


def checkpoints_kept(written: int, keep: int) -> int:
    """Checkpoints a run keeps at most: the ``keep`` of lowest loss and the latest (Ray Train's rule)."""
    return min(keep + 1, written)


def _gpu_hours(flops: float | None, samples: float | None, rates: Rates) -> Figure:
    """GPU-hours of ``flops`` at MFU × peak, or of ``samples`` at a measured samples/s."""
    if flops is None:
        return Figure(None, "unknown (the sizes above are)")
    mfu, peak = rates.mfu, rates.gpu_peak_flops
    if peak.value is not None:
        return Figure(_hours(flops / (mfu.value * peak.value)),
                      f"FLOPs ÷ (MFU {mfu.value:g} [{mfu.label}] × {peak.value / 1e12:g} TFLOP/s [{peak.label}])")
    sps = rates.gpu_samples_per_s
    if sps.value is not None and samples is not None:
        return Figure(_hours(samples / sps.value), f"samples ÷ {sps.value:,.1f} samples/s [{sps.label}]")
    return Figure(None, f"unknown: {peak.source}, or give --calibration with a bench/gpu_step.py run")


def _pretrain(cfg, chips_of, per_chip, costs, rates) -> StageEstimate:
    from pw_ray.pretrain.trainer import total_steps

    st = StageEstimate("pretrain")
    t = cfg.train
    batch = t.batch_size * t.accum_steps * t.num_workers
    sets = [(s.name, chips_of[s.name]) for s in cfg.pretrain_sets]
    steps = {name: total_steps(cfg, n) for name, n in sets}
    samples = float(sum(steps[n] * batch for n, _ in sets))
    epochs = f"{t.epochs} epochs" + (f", at most train.max_steps {t.max_steps}" if t.max_steps else "")
    st.figures["samples"] = Figure(samples, f"Σ over {len(sets)} sets of optimizer steps ({epochs}) × effective "
                                            f"batch {batch} (batch_size × accum_steps × num_workers)")
    flops = samples * costs.train_flops
    st.figures["flops"] = Figure(flops, f"samples × {costs.train_flops / 1e9:,.2f} GFLOP per sample (forward + "
                                        f"backward of the {cfg.model.preset} model, counted by "
                                        "torch.utils.flop_counter on the model itself)")
    if t.use_gpu:
        st.figures["gpu_hours"] = _gpu_hours(flops, samples, rates)
    else:
        st.figures["gpu_hours"] = Figure(0.0, "train.use_gpu is false")
        st.notes.append("training on CPU: its hours are not estimated (no CPU rate is measured)")
    st.figures["bytes_read"] = Figure(float(sum(n * t.epochs for _, n in sets)) * per_chip["parquet"],
                                      "every epoch streams its set's Parquet shards")
    ckpt, enc = costs.checkpoint_bytes, costs.encoder_bytes
    # A run's minutes of training: its share of the GPU-hours on its num_workers GPUs.
    gpu_h, total_steps_all = st.figures["gpu_hours"].value if t.use_gpu else None, sum(steps.values())
    minutes = {n: None if not gpu_h or not total_steps_all else gpu_h * 60 * s / total_steps_all / t.num_workers
               for n, s in steps.items()}
    per_run = {n: checkpoints_written(s, t.checkpoint_every, minutes[n], t.checkpoint_every_min)
               for n, s in steps.items()}
    intervals = " and ".join(
        ([f"every train.checkpoint_every_min {t.checkpoint_every_min:g} min of a run's "
          + (f"{next(iter(minutes.values())) / 60:,.1f} h" if len(set(minutes.values())) == 1 and gpu_h else "hours")
          + " (its GPU-hours ÷ num_workers)"] if t.checkpoint_every_min else [])
        + ([f"every train.checkpoint_every {t.checkpoint_every} steps"] if t.checkpoint_every else []))
    if any(v is None for v in per_run.values()):
        st.figures["bytes_written"] = Figure(None, f"checkpoints {intervals}: unknown without the runs' hours "
                                                   "(GPU-hours above)")
        st.figures["checkpoint_bytes"] = Figure(None, "checkpoints kept: unknown without the number written")
        return st
    written = sum(per_run.values())
    kept = sum(checkpoints_kept(w, t.keep_checkpoints) for w in per_run.values())
    st.figures["bytes_written"] = Figure(written * ckpt + len(sets) * enc, (
        f"{written:,} checkpoints ({intervals}, and at the end) × "
        f"{ckpt / 2**30:,.3f} GiB (model + AdamW moments, {costs.parameters:,} parameters) + exports"))
    st.figures["checkpoint_bytes"] = Figure(kept * ckpt + len(sets) * enc, (
        f"{kept} checkpoints kept at most (train.keep_checkpoints {t.keep_checkpoints} of lowest loss + the latest, "
        f"per set) × {ckpt / 2**30:,.3f} GiB + {len(sets)} exported encoders × {enc / 2**20:,.1f} MiB"))
    return st


def _evaluate(cfg, chips_of, per_chip, costs, rates) -> StageEstimate:
    from pw_ray.evaluate.grid import grid_cells
    from pw_ray.models.satmae import PRESETS

    st = StageEstimate("evaluate")
    ev = cfg.evaluation
    if not cfg.tasks:
        st.notes.append("no tasks: nothing to evaluate")
        return st
    cells = grid_cells(cfg)
    encoders = len(cfg.pretrain_sets) + (1 if ev.include_zero else 0)
    by_method = {m: sum(1 for c in cells if c["method"] == m) for m in ev.methods}
    task_chips = {t.name: chips_of[t.name] for t in cfg.tasks}
    if any(v is None for v in task_chips.values()):
        st.notes.append("tasks of unknown size (" + ", ".join(k for k, v in task_chips.items() if v is None)
                        + ") are left out")
    share = {r: 1.0 if r == "global" else 1 / 6 for r in ev.task_regions}
    st.notes.append(f"{len(cells):,} cells (" + ", ".join(f"{m} {n:,}" for m, n in by_method.items())
                    + f") over {encoders} encoders; a continent's subset holds 1/6 of a task's chips "
                      "(assumption: tasks spread evenly)")
    probes = [m for m in ev.methods if m in ("knn", "linear")]
    embed_samples = encoders * sum(v or 0 for v in task_chips.values()) if probes and ev.cache_embeddings else 0
    ft_flops, ft_samples = 0.0, 0.0
    cpu_s = 0.0
    for c in cells:
        t = next(t for t in cfg.tasks if t.name == c["task"])
        n = (task_chips[t.name] or 0) * share[c["task_region"]]
        tr, va, te = (f / sum(t.split_fractions) for f in t.split_fractions)  # shares (a dataset split: assumed)
        train = n * tr * ev.train_fraction
        if c["method"] == "finetune":
            ft_samples += ev.finetune_epochs * (train + n * va) + n * te
            ft_flops += ev.finetune_epochs * (train * costs.finetune_flops + n * va * costs.embed_flops) \
                + n * te * costs.embed_flops
        else:
            rate = rates.knn_s_per_chip if c["method"] == "knn" else rates.linear_s_per_chip
            cpu_s += n * rate.value
    embed_flops = embed_samples * costs.embed_flops
    st.figures["samples"] = Figure(float(embed_samples + ft_samples), (
        f"embeddings: {encoders} encoders × task chips; fine-tuning: evaluation.finetune_epochs "
        f"{ev.finetune_epochs} × (train + val) + test per fine-tune cell"))
    st.figures["flops"] = Figure(embed_flops + ft_flops, (
        f"{costs.embed_flops / 1e9:,.2f} GFLOP per embedding, {costs.finetune_flops / 1e9:,.2f} per fine-tuning "
        "sample (counted on the model)"))
    gpu_flops = (embed_flops if ev.gpus_per_probe > 0 else 0.0) + (ft_flops if ev.gpus_per_finetune > 0 else 0.0)
    cpu_flops = (embed_flops + ft_flops) - gpu_flops
    st.figures["gpu_hours"] = _gpu_hours(gpu_flops, None, rates) if gpu_flops else Figure(
        0.0, "evaluation.gpus_per_probe and gpus_per_finetune are 0")
    probe_src = "; ".join(f"{m}: {getattr(rates, m + '_s_per_chip').value * 1e3:.3f} ms per chip of a subset "
                          f"[{getattr(rates, m + '_s_per_chip').label}]" for m in probes)
    st.figures["cpu_hours"] = Figure(_hours(cpu_s), f"kNN and linear cells on CPU: {probe_src}" if probes
                                     else "no kNN or linear cells")
    if cpu_flops:
        st.notes.append(f"{cpu_flops:.3g} model FLOPs run on CPU (no GPU asked for): their hours are not estimated")
    dim = PRESETS[cfg.model.preset]["embed_dim"]
    emb = float(embed_samples * dim * 4)
    st.figures["embedding_bytes"] = Figure(emb, f"{encoders} encoders × task chips × {dim} float32")
    st.figures["bytes_written"] = Figure(emb, f"embeddings: {encoders} encoders × task chips × {dim} float32 "
                                              "(cell results are small)")
    st.figures["bytes_read"] = Figure(embed_samples * per_chip["parquet"], "each encoder reads each task's shards")
    return st


def _analyze(cfg, chips_of, per_chip, rates) -> StageEstimate:
    st = StageEstimate("analyze")
    chips = _sum(chips_of[s.name] for s in cfg.pretrain_sets)
    r = rates.analyze_chips_per_cpu_s
    st.figures["bytes_read"] = Figure(chips * per_chip["parquet"], "every pretraining chip's Parquet row once")
    st.figures["cpu_hours"] = Figure(_hours(chips / r.value), f"pretraining chips ÷ {r.value:,.0f} chips per "
                                                              f"CPU-second [{r.label}]")
    return st


def _cost(st: StageEstimate, rates: Rates) -> None:
    """CPU-hours × the CPU price + GPU-hours × the GPU price; unknown while an hour figure lacks its price."""
    parts, total, unpriced = [], 0.0, []
    for key, price in (("cpu_hours", rates.price_cpu_hour), ("gpu_hours", rates.price_gpu_hour)):
        hours = st.value(key)
        if not hours:
            continue
        field = price.source.rsplit("estimate.", 1)[-1]
        if price.value is None:
            unpriced.append(f"{key.replace('_', '-')}: no price (set estimate.{field} or --{field.replace('_', '-')})")
            continue
        total += hours * price.value
        parts.append(f"{key.replace('_', '-')} × {price.value:g} [{price.label}]")
    if unpriced:
        priced = f"; priced part {total:,.2f} = " + " + ".join(parts) if parts else ""
        st.figures["cost"] = Figure(None, "; ".join(unpriced) + priced)
    elif parts:
        st.figures["cost"] = Figure(total, " + ".join(parts))


__all__ = ["Estimate", "StageEstimate", "Figure", "PointSet", "QUANTITIES", "estimate", "point_sets",
           "checkpoints_written", "checkpoints_kept"]
