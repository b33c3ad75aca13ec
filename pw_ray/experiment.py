"""The five stages of one experiment, composed from the library; each is idempotent.

``plan → ingest → pretrain → evaluate → analyze → report``. Every stage reads and writes under
``cfg.root``; rerunning a stage skips the work whose outputs exist and finishes the rest.
A finished stage leaves ``_stages/<stage>.json`` (with the config digest), so a rerun of the
whole pipeline says what it skipped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pw_ray import storage
from pw_ray.config import ExperimentConfig, dump_config

log = logging.getLogger("pw_ray")

STAGES = ("plan", "ingest", "pretrain", "evaluate", "analyze", "report")


# ----------------------------------------------------------------------------- bookkeeping
def _digest(cfg: ExperimentConfig) -> str:
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]


def _marker(cfg: ExperimentConfig, stage: str) -> str:
    return storage.join(cfg.root, "_stages", f"{stage}.json")


def stage_done(cfg: ExperimentConfig, stage: str) -> bool:
    uri = _marker(cfg, stage)
    if not storage.exists(uri):
        return False
    return json.loads(storage.read_text(uri)).get("config") == _digest(cfg)


def _mark(cfg: ExperimentConfig, stage: str, t0: float, **info) -> None:
    storage.write_text(_marker(cfg, stage), json.dumps(
        {"stage": stage, "config": _digest(cfg), "seconds": round(time.perf_counter() - t0, 1), **info}))


def _skip(cfg: ExperimentConfig, stage: str, force: bool) -> bool:
    if not force and stage_done(cfg, stage):
        info = json.loads(storage.read_text(_marker(cfg, stage)))
        log.info("%s: already done for this config (took %ss) — skipping; --force reruns it", stage, info["seconds"])
        return True
    return False


# ----------------------------------------------------------------------------- the source
@dataclass
class Source:
    searcher: object
    adapter: object
    coverage: dict | None
    biome_path: str | None
    #: ``pw_ray.ingest.landcover.LandcoverSource`` (picklable) or None: no land cover.
    landcover: object | None

    @property
    def lc_names(self) -> list[str]:
        """Land-cover class names in the column order of ``lc_fractions`` (empty without land cover)."""
        return list(self.landcover.names) if self.landcover is not None else []


def source(cfg: ExperimentConfig) -> Source:
    """Searcher, catalog adapter and auxiliary layers for the config's ``stac`` section."""
    from pw_ray.ingest.catalogs import adapter_for
    from pw_ray.ingest.landcover import landcover_source
    from pw_ray.ingest.search import searcher_for

    if cfg.stac.kind != "synthetic":
        return Source(searcher_for(cfg.stac), adapter_for(cfg.stac.catalog), None, cfg.stac.biome_path,
                      landcover_source(cfg.stac))
    from shapely.geometry import shape

    from pw_ray import synthetic
    from pw_ray.regions import regions_of

    archive_dir = storage.to_local_dir(storage.join(cfg.root, "archive"))
    info = synthetic.build_archive(archive_dir, cfg.stac.synthetic, progress=True)
    items = synthetic.load_items(info)
    coverage: dict[str, list] = {}
    half_chip_deg = cfg.chips.size_px * cfg.chips.resolution_m / 2 / 111_000
    for it in items:
        geom = shape(it["geometry"])
        # Shrink by half a chip so chips centred on sampled points lie inside the scene.
        inner = geom.buffer(-half_chip_deg)
        c = geom.centroid
        region = regions_of(np.array([c.x]), np.array([c.y]))[0]
        if region and not inner.is_empty:
            coverage.setdefault(region, []).append(inner)
    searcher = searcher_for(cfg.stac, archive_items_uri=str(info.items_path))
    # Unset stac.landcover: the archive's synthetic-landcover collection, read like any STAC collection.
    landcover = landcover_source(cfg.stac, synthetic_items=str(info.landcover_items_path))
    return Source(searcher, adapter_for(cfg.stac.catalog), coverage, cfg.stac.biome_path or str(info.biomes_path),
                  landcover)


# ----------------------------------------------------------------------------- stages
def _point_sets(cfg: ExperimentConfig):
    """(name, kind, spec) for every set of points to ingest: pretraining sets, then tasks."""
    out = [(s.name, "pretrain", s) for s in cfg.pretrain_sets]
    out += [(t.name, "task", t) for t in cfg.tasks]
    return out


def _plan_task(cfg: ExperimentConfig, spec, src: Source) -> pd.DataFrame:
    """A task's points with their ``split`` and ``block`` (decided here, at plan time: :mod:`pw_ray.splits`)."""
    from pw_ray.config import PretrainSet
    from pw_ray.evaluate.tasks import points_from_csv
    from pw_ray.plan import label_points, plan_set
    from pw_ray.splits import assign_splits

    lc = src.landcover  # callable: (lons, lats) → class names, sampled pixel by pixel
    if spec.kind in ("synthetic-landcover", "synthetic-population"):
        # A task's points: an equal mix of the six continents, its own seed.
        pset = PretrainSet(name=spec.name, region="global", size=spec.size, seed=spec.seed + 10_000)
        pts = plan_set(pset, src.coverage, cfg.chips.min_spacing_m, biome_path=src.biome_path, landcover=lc)
    elif spec.kind == "points":
        pts = label_points(points_from_csv(spec.path, spec.name, spec.seed), src.biome_path, lc)
    elif spec.kind in ("fmow", "geobench"):
        # Imported benchmarks: their own index, split and images; no STAC search.
        from pw_ray.evaluate.builders import plan_imported
        from pw_ray.splits import block_of

        pts = plan_imported(spec)
        return pts.assign(block=block_of(pts["lon"], pts["lat"], cfg.block_m))
    else:
        raise NotImplementedError(f"task kind {spec.kind!r} has no builder yet (task {spec.name})")
    # Labels known now (points tasks) stratify a random split; synthetic labels come from pixels.
    labels = pts["label"].astype(str).to_numpy() if (
        spec.split == "random" and "label" in pts.columns and spec.task_type == "classification") else None
    return assign_splits(pts, spec.split, spec.split_fractions, block_m=cfg.block_m,
                         split_seed=cfg.plan.split_seed, seed=spec.seed, labels=labels)


def plan(cfg: ExperimentConfig, force: bool = False, src: Source | None = None) -> None:
    """Task points first (with their splits), then pretraining points away from the held-out ones."""
    from pw_ray import leakage
    from pw_ray import splits as SP
    from pw_ray.plan import plan_set_away

    if _skip(cfg, "plan", force):
        return
    t0 = time.perf_counter()
    src = src or source(cfg)
    record = leakage.read_record(cfg.root)
    task_points = {}
    for spec in cfg.tasks:
        uri = storage.join(cfg.root, "points", f"{spec.name}.parquet")
        splits = leakage.split_inputs(cfg, spec)
        if storage.exists(uri) and not force:
            if record["tasks"].get(spec.name) == splits and storage.exists(SP.splits_uri(cfg.root, spec.name)):
                log.info("plan %s: points exist, keeping them", spec.name)
                pts = storage.read_table(uri).to_pandas().drop(columns=["split"], errors="ignore")
                task_points[spec.name] = pts.merge(SP.read_splits(cfg.root, spec.name), on="point_id")
                continue
            log.info("plan %s: points exist but were split otherwise (or before splits moved to plan); "
                     "planning them again", spec.name)
        pts = _plan_task(cfg, spec, src)
        # Imported datasets' points carry their own split column (ingest reads it); planned splits
        # live in splits/<task>.parquet only, so a task's points table is a points table.
        keep = [c for c in pts.columns if c != "block" and (c != "split" or spec.split == "dataset")]
        storage.write_table(pa.Table.from_pandas(pts[keep], preserve_index=False), uri)
        SP.write_splits(cfg.root, spec.name, pts)
        record["tasks"][spec.name] = splits
        leakage.write_record(cfg.root, record)
        task_points[spec.name] = pts
        log.info("plan %s: %d points (%s) → %s", spec.name, len(pts),
                 ", ".join(f"{k}={v}" for k, v in pts["split"].value_counts().items()), uri)

    exclusion = cfg.exclusion_m
    held = leakage.held_out_points(task_points, cfg.plan.exclude_splits)
    inputs = leakage.exclusion_inputs(exclusion, cfg.plan.exclude_splits, held)
    if exclusion <= 0:
        log.warning("plan: exclusion is off (plan.exclusion_m = 0): pretraining points may lie on downstream "
                    "%s chips", "/".join(cfg.plan.exclude_splits))
    for s in cfg.pretrain_sets:
        uri = storage.join(cfg.root, "points", f"{s.name}.parquet")
        if storage.exists(uri) and not force and leakage.record_matches(record["sets"].get(s.name), inputs):
            log.info("plan %s: points exist, keeping them", s.name)
            continue
        planned = plan_set_away(s, src.coverage, cfg.chips.min_spacing_m, biome_path=src.biome_path,
                                landcover=src.landcover, held_out=held, exclusion_m=exclusion)
        storage.write_table(pa.Table.from_pandas(planned.points, preserve_index=False), uri)
        record["sets"][s.name] = {**inputs, "replaced": int(sum(planned.replaced.values())),
                                  "replaced_by_region": planned.replaced}
        leakage.write_record(cfg.root, record)
        away = (f"{record['sets'][s.name]['replaced']} candidates within {exclusion:.0f} m of {len(held)} "
                f"held-out task points replaced" if exclusion > 0 else "exclusion off")
        print(f"plan {s.name}: {len(planned.points)} points, {away}", flush=True)
    _mark(cfg, "plan", t0)


def ingest(cfg: ExperimentConfig, force: bool = False, src: Source | None = None) -> None:
    from pw_ray.cards import write_dataset_card
    from pw_ray.evaluate import tasks as T
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.pipeline import run_ingest
    from pw_ray.splits import read_splits

    if _skip(cfg, "ingest", force):
        return
    t0 = time.perf_counter()
    src = src or source(cfg)
    summaries = {}
    for name, kind, spec in _point_sets(cfg):
        pts = storage.read_table(storage.join(cfg.root, "points", f"{name}.parquet")).to_pandas()
        if kind == "task" and spec.kind in ("fmow", "geobench"):
            # Imported benchmarks: chips straight from their images, their own split kept.
            from pw_ray.evaluate.builders import ingest_imported

            s = ingest_imported(cfg.root, spec, pts.merge(read_splits(cfg.root, name)[["point_id", "block"]],
                                                          on="point_id", how="left"), cfg.chips)
            summaries[name] = s.__dict__
            print(f"ingest {s.line()}", flush=True)
            continue
        s = run_ingest(cfg.root, name, pts, src.searcher, src.adapter, cfg.chips, src.landcover)
        summaries[name] = s.__dict__
        print(f"ingest {s.line()}", flush=True)
        if kind == "pretrain":
            write_dataset_card(cfg, name, config_digest=_digest(cfg))  # diversity: filled in by analyze
        if kind == "task":
            meta = S.read_set(cfg.root, name, columns=[c for c in S.META_COLUMNS]).to_pandas()
            T.write_task(cfg.root, spec, T.build_labels(meta, spec, src.lc_names, splits=read_splits(cfg.root, name)))
    _mark(cfg, "ingest", t0, summaries=summaries)


def pretrain(cfg: ExperimentConfig, force: bool = False) -> None:
    from pw_ray.cards import write_model_card
    from pw_ray.pretrain.trainer import export_zero, pretrain_set

    if _skip(cfg, "pretrain", force):
        return
    t0 = time.perf_counter()
    out = {}
    for s in cfg.pretrain_sets:
        out[s.name] = pretrain_set(cfg, s.name)
        r = out[s.name]
        resumed = f", resumed at step {r['start_step']}" if r.get("start_step") else ""
        loss = f", final loss {r['final_loss']:.4f}" if r.get("final_loss") is not None else ""
        print(f"pretrain {s.name}: {r.get('steps')} steps{resumed}{loss}", flush=True)
        write_model_card(cfg, s.name, config_digest=_digest(cfg))
    if cfg.evaluation.include_zero:
        out["zero"] = export_zero(cfg)
        write_model_card(cfg, "zero", config_digest=_digest(cfg))
    _mark(cfg, "pretrain", t0, runs=out)


def evaluate(cfg: ExperimentConfig, force: bool = False) -> pd.DataFrame:
    import ray

    from pw_ray.evaluate.embeddings import compute_embeddings
    from pw_ray.evaluate.grid import collect_results, grid_cells, run_grid, skipped_summary

    if _skip(cfg, "evaluate", force):
        return storage.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    t0 = time.perf_counter()
    cells = grid_cells(cfg)
    sets = sorted({c["pretrain_set"] for c in cells})
    needs = [(s, t.name) for s in sets for t in cfg.tasks
             if cfg.evaluation.cache_embeddings and any(m in ("knn", "linear") for m in cfg.evaluation.methods)]
    gpu = cfg.evaluation.gpus_per_probe
    embed = ray.remote(num_cpus=1, num_gpus=gpu)(compute_embeddings)
    refs = [embed.remote(cfg.root, s, t) for s, t in needs]
    log.info("evaluate: embeddings for %d (encoder, task) pairs (cached ones are reused)", len(refs))
    ray.get(refs)
    run_grid(cfg, cells)
    df = collect_results(cfg, cells)
    ok = df[df["status"] == "ok"]
    print(f"evaluate: {len(ok)} cells scored, {len(df) - len(ok)} skipped", flush=True)
    for line in skipped_summary(df):
        print(f"evaluate: skipped {line}", flush=True)
    _mark(cfg, "evaluate", t0, cells=len(df))
    return df


def analyze(cfg: ExperimentConfig, force: bool = False) -> None:
    import ray

    from pw_ray.analyze import diversity as D
    from pw_ray.analyze import stats as ST
    from pw_ray.ingest import shards as S

    if _skip(cfg, "analyze", force):
        return
    t0 = time.perf_counter()
    a = cfg.analysis
    # A shared spectral codebook, learnt from a fixed sample of every set's first shard.
    sample = []
    for s in cfg.pretrain_sets:
        files = S.shard_files(cfg.root, s.name)
        if files:
            t = storage.read_table(files[0])
            sample.append(D.sample_pixels(S.read_pixels(t)[:32], per_chip=64, seed=0))
    codebook = D.fit_codebook(np.concatenate(sample), a.spectral_clusters, seed=0) if sample else None
    rows = []
    for s in cfg.pretrain_sets:
        acc = D.DiversityAccumulator(a.spectral_bins, codebook)
        files = S.shard_files(cfg.root, s.name)
        fs, first = storage.filesystem(files[0])
        # The footer holds the chip shape: no need to read a whole shard's pixels for it.
        shape = json.loads(pq.read_schema(first, filesystem=fs).metadata[b"pw_ray.shape"])
        ds = ray.data.read_parquet([storage.filesystem(f)[1] for f in files], filesystem=fs).select_columns(
            ["pixels", "region", "biome", "landcover"])
        for batch in ds.iter_batches(batch_size=128, batch_format="pyarrow"):  # streams: never the whole set
            px = S.column_pixels(batch.column("pixels"), shape)
            acc.update(px, batch.column("region").to_pylist(), batch.column("biome").to_pylist(),
                       batch.column("landcover").to_pylist())
        rows.append({"pretrain_set": s.name, **acc.result()})
    div = pd.DataFrame(rows)
    storage.write_table(pa.Table.from_pandas(div, preserve_index=False),
                        storage.join(cfg.root, "results", "diversity.parquet"))
    _audit_and_cards(cfg, div)
    results = storage.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    ok = results[results["status"] == "ok"]
    method = "linear" if "linear" in set(ok["method"]) else str(ok["method"].iloc[0])
    ext = None
    if a.external_sets:  # published sets beside the measured ones; a validated copy for the report
        from pw_ray.analyze.external import read_external_sets

        ext = read_external_sets(a.external_sets)
        ext.check_against([s.name for s in cfg.pretrain_sets] + ["zero"], [t.name for t in cfg.tasks])
        storage.write_table(pa.Table.from_pandas(ext.table, preserve_index=False),
                            storage.join(cfg.root, "results", "external_sets.parquet"))
    table = ST.main_table(ok, method=method, task_region="global", extra=None if ext is None else ext.scores)
    perf = table.set_index("pretrain_set")["mean_performance"]
    div_all = div if ext is None else pd.concat([div, ext.diversity], ignore_index=True)
    corr = ST.correlation_table(div_all, perf, external=[] if ext is None else ext.names, n_boot=a.bootstrap, seed=0)
    storage.write_table(pa.Table.from_pandas(corr, preserve_index=False),
                        storage.join(cfg.root, "results", "correlations.parquet"))
    for r in corr.itertuples(index=False):
        print(f"analyze: {r.measure:>28s}  Spearman ρ = {r.spearman_rho:+.2f} "
              f"[{r.spearman_ci_low:+.2f}, {r.spearman_ci_high:+.2f}] p = {r.spearman_p:.3f} "
              f"(permutation {r.spearman_p_perm:.3f})  "
              f"n = {r.n} ({r.sets} sets, {r.n_external} external)", flush=True)
    _mark(cfg, "analyze", t0)


def _audit_and_cards(cfg: ExperimentConfig, diversity: pd.DataFrame) -> None:
    """Leakage audit (``results/leakage.parquet``) and dataset cards with their diversity measures."""
    from pw_ray.cards import write_dataset_card
    from pw_ray.leakage import write_audit

    write_audit(cfg)
    by_set = diversity.set_index("pretrain_set").to_dict("index")
    for s in cfg.pretrain_sets:
        write_dataset_card(cfg, s.name, config_digest=_digest(cfg), diversity=by_set.get(s.name))


def report(cfg: ExperimentConfig, force: bool = False) -> str:
    from pw_ray import leakage
    from pw_ray.analyze.report import write_report
    from pw_ray.ingest import shards as S

    out = storage.join(cfg.root, "report")
    if _skip(cfg, "report", force):
        return storage.join(out, "index.html")
    t0 = time.perf_counter()
    res = lambda name: storage.read_table(storage.join(cfg.root, "results", name)).to_pandas()  # noqa: E731
    points = pd.concat([storage.read_table(storage.join(cfg.root, "points", f"{s.name}.parquet")).to_pandas()
                        for s in cfg.pretrain_sets])
    chips_by_set, counts = {}, []
    rgb = [cfg.chips.bands.index(b) for b in ("B04", "B03", "B02") if b in cfg.chips.bands]
    for s in cfg.pretrain_sets:
        files = S.shard_files(cfg.root, s.name)
        if files and len(rgb) == 3:
            chips_by_set[s.name] = S.read_pixels(storage.read_table(files[0]))[:6][:, rgb]
        m = storage.read_table(storage.join(cfg.root, "manifest", f"{s.name}.parquet")).to_pandas()
        c = m["status"].value_counts()
        counts.append({"pretrain_set": s.name, **{k: int(c.get(k, 0)) for k in ("ok", "skipped", "failed")}})
    from importlib.resources import files as pkg_files

    external = None
    if cfg.analysis.external_sets:  # the copy analyze validated, so report and correlations agree
        from pw_ray.analyze.external import parse_external_sets

        external = parse_external_sets(res("external_sets.parquet"), origin=cfg.analysis.external_sets)
    local_out = storage.to_local_dir(out)  # report rendering needs a local folder
    path = write_report(
        local_out, external=external, results=res("results.parquet"), diversity=res("diversity.parquet"),
        correlations=res("correlations.parquet"), points=points, chips_by_set=chips_by_set,
        manifest_counts=pd.DataFrame(counts).set_index("pretrain_set"),
        leakage=leakage.read_audit(cfg.root), exclusion_m=cfg.exclusion_m,
        continents_path=str(pkg_files("pw_ray") / "data" / "continents.geojson"),
        title=f"Pretrain where? — {cfg.name}",
    )
    _mark(cfg, "report", t0)
    return str(path)


def run_all(cfg: ExperimentConfig, force: bool = False, stop_after: str | None = None) -> str | None:
    storage.makedirs(cfg.root)
    storage.write_text(storage.join(cfg.root, "config.yaml"), dump_config(cfg))
    src = None
    if not (stage_done(cfg, "plan") and stage_done(cfg, "ingest")) or force:
        src = source(cfg)
    plan(cfg, force, src)
    ingest(cfg, force, src)
    if stop_after == "ingest":
        return None
    pretrain(cfg, force)
    evaluate(cfg, force)
    analyze(cfg, force)
    return report(cfg, force)
