"""The printed form of an :class:`~pw_ray.estimate.stages.Estimate`: per stage, every figure with its
source; the total; the rates used; with a cluster, whether the config fits it and the wall clock
at full scale."""

from __future__ import annotations

import math

from pw_ray.estimate.stages import QUANTITIES, Estimate, StageEstimate

_LABEL = {k: label for k, label, _ in QUANTITIES}
_UNIT = {k: unit for k, _, unit in QUANTITIES}


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "?"
    if unit == "bytes":
        for name, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
            if value >= size:
                return f"{value / size:,.2f} {name}"
        return f"{value:,.0f} B"
    if unit == "hours":
        return f"{value:,.1f} h" if value >= 1 or value == 0 else f"{value * 60:,.1f} min"
    if unit == "money":
        return f"{value:,.2f}"
    if unit == "flops":
        return f"{value:.3g} FLOP"
    return f"{value:,.0f}"


def _stage_lines(st: StageEstimate) -> list[str]:
    out = [st.name]
    for key, _, unit in QUANTITIES:
        f = st.figures.get(key)
        if f is None:
            continue
        out.append(f"  {_LABEL[key]:<26} {fmt_value(f.value, unit):>15}  {f.source}")
    out += [f"  note: {n}" for n in st.notes]
    return out


def wall_clock_lines(est: Estimate, cfg, fit) -> list[str]:
    """Hours of wall clock per stage with the cluster grown to its caps (``fit``: a FitReport)."""
    from pw_ray.cluster import max_cpus, place

    spec = fit.cluster
    cpus = max_cpus(spec)
    out = [f"wall clock at full scale on {spec.source} (every node up, no failures; ingest also waits on the "
           "network and the STAC API's limits, which the rate above may not include)"]
    for name in ("ingest", "analyze"):
        h = est.stage(name).value("cpu_hours")
        if h is not None and cpus:
            out.append(f"  {name:<9} {fmt_value(h / cpus, 'hours'):>12}  CPU-hours ÷ {cpus} CPUs")
    t = cfg.train
    h = est.stage("pretrain").value("gpu_hours")
    if h is not None and t.use_gpu:
        worker = next(f for f in fit.fits if f.request.stage == "pretrain")
        at_once = min(len(cfg.pretrain_sets), worker.placement.copies // t.num_workers)
        if at_once:
            waves = math.ceil(len(cfg.pretrain_sets) / at_once)
            per_set = h / len(cfg.pretrain_sets) / t.num_workers
            out.append(f"  {'pretrain':<9} {fmt_value(per_set * waves, 'hours'):>12}  {at_once} of "
                       f"{len(cfg.pretrain_sets)} sets at once on {t.num_workers} GPU(s) each, "
                       f"{waves} wave(s) of {fmt_value(per_set, 'hours')}")
    h = est.stage("evaluate").value("gpu_hours")
    if h:
        gpus = place(spec, {"GPU": 1.0}).copies
        if gpus:
            out.append(f"  {'evaluate':<9} {fmt_value(h / gpus, 'hours'):>12}  GPU-hours ÷ {gpus} GPUs (at best)")
    return out


def _rates_lines(est: Estimate, cfg) -> list[str]:
    """Every rate and assumption the figures used, with its full source."""
    from pw_ray.estimate.ingest_model import ASSUMPTIONS

    r = est.rates
    rows = [("MFU", f"{r.mfu.value:g}", r.mfu),
            ("GPU peak", "?" if r.gpu_peak_flops.value is None else f"{r.gpu_peak_flops.value / 1e12:g} TFLOP/s",
             r.gpu_peak_flops),
            ("ingest", f"{r.ingest_chips_per_cpu_s.value:,.1f} chips per CPU-second", r.ingest_chips_per_cpu_s),
            ("index", f"{r.index_chips_per_cpu_s.value:,.1f} chips per CPU-second", r.index_chips_per_cpu_s),
            ("analyze", f"{r.analyze_chips_per_cpu_s.value:,.0f} chips per CPU-second", r.analyze_chips_per_cpu_s),
            ("kNN cell", f"{r.knn_s_per_chip.value * 1e3:.3f} ms per chip", r.knn_s_per_chip),
            ("linear cell", f"{r.linear_s_per_chip.value * 1e3:.3f} ms per chip", r.linear_s_per_chip)]
    if r.gpu_samples_per_s.value is not None:
        rows.append(("GPU samples/s", f"{r.gpu_samples_per_s.value:,.1f}", r.gpu_samples_per_s))
    if r.parquet_bytes_per_px.value is not None:
        rows.append(("Parquet", f"{r.parquet_bytes_per_px.value:.3f} bytes per pixel", r.parquet_bytes_per_px))
    for name in ("price_cpu_hour", "price_gpu_hour", "price_storage_gb_month"):
        p = getattr(r, name)
        rows.append((name.replace("_", " "), "none" if p.value is None else f"{p.value:g}", p))
    out = ["rates"] + [f"  {what:<22} {value:>28}  {rate.source}" for what, value, rate in rows]
    used = ["revisit_days", "page_size", "cog_block_px", "cog_bytes_per_px", "scl_bytes_per_px"] \
        if cfg.stac.kind == "api" else []
    used += ([] if r.parquet_bytes_per_px.value is not None else ["parquet_ratio"]) + ["json_bytes"]
    out += ["", "assumptions (labelled in the figures above)"]
    out += [f"  {name:<22} {ASSUMPTIONS[name][1]}" for name in used]
    return out


def format_estimate(est: Estimate, cfg, config_uri: str = "", fit=None) -> str:
    """The whole estimate as text (``fit``: a :class:`pw_ray.cluster.FitReport`, optional)."""
    c = est.costs
    head = [f"pw-ray estimate: {est.config_name}" + (f" ({config_uri})" if config_uri else ""),
            f"model: {cfg.model.preset}, {c.parameters:,} parameters; per sample {c.train_flops / 1e9:,.2f} GFLOP "
            f"per pretraining step, {c.embed_flops / 1e9:,.2f} per embedding; checkpoint "
            f"{fmt_value(c.checkpoint_bytes, 'bytes')}",
            ""]
    body = []
    for st in est.stages:
        body += _stage_lines(st) + [""]
    body += _stage_lines(est.total)
    body.append(f"  {'stored at the end':<26} {fmt_value(est.stored.value, 'bytes'):>15}  {est.stored.source}")
    body.append(f"  {'storage cost':<26} {fmt_value(est.storage_cost.value, 'money'):>15}  {est.storage_cost.source}")
    body.append("")
    body += _rates_lines(est, cfg)
    if fit is not None:
        body += [""] + fit.lines() + [""] + wall_clock_lines(est, cfg, fit)
    return "\n".join(head + body)


__all__ = ["format_estimate", "fmt_value", "wall_clock_lines"]
