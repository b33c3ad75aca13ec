"""The five stages of one experiment, composed from the library; each is idempotent.

``plan → ingest → pretrain → evaluate → analyze → report``. Every stage reads and writes under
``cfg.root``; rerunning a stage skips the work whose outputs exist and finishes the rest.
A finished stage leaves ``_stages/<stage>.json`` (with the config digest), so a rerun of the
whole pipeline says what it skipped.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from pw_ray import lineage, storage
from pw_ray.config import ExperimentConfig, dump_config

log = logging.getLogger("pw_ray")

STAGES = ("plan", "ingest", "pretrain", "evaluate", "analyze", "report")


# ----------------------------------------------------------------------------- bookkeeping
def _digest(cfg: ExperimentConfig) -> str:
    # `estimate` (prices, rates) shapes no stage's work: editing it must not re-enter done stages.
    return hashlib.sha256(dump_config(cfg.model_copy(update={"estimate": type(cfg.estimate)()})).encode()
                          ).hexdigest()[:16]


def _stage_digest(cfg: ExperimentConfig, stage: str) -> str:
    """What a stage's "done" marker stands for: the config, and for plan and ingest the inputs
    that live outside it (the bytes of labelled-point files and which points files exist; the
    lineage of each set's points and the names of its shard files), so that an edited points
    file, a deleted points file, a re-planned set or a deleted shard re-enters the stage."""
    extra = []
    if stage == "plan":
        # ... and which sets' points exist: a points file deleted by hand re-enters the stage.
        extra = [lineage.bytes_digest(storage.read_bytes(t.path)) if storage.exists(t.path) else None
                 for t in cfg.tasks if t.kind == "points"]
        extra.append([storage.exists(points_uri(cfg, name)) for name, _, _ in _point_sets(cfg)])
    elif stage == "ingest":
        from pw_ray.ingest import shards as S

        # The points each set was ingested from, and the shard files it has now (a deleted shard,
        # e.g. a corrupt one removed by hand, re-enters the stage, which writes just that chunk).
        extra = [[(lineage.of_parquet(points_uri(cfg, name)) or {}).get("digest"),
                  [u.rsplit("/", 1)[-1] for u in S.shard_files(cfg.root, name)]] for name, _, _ in _point_sets(cfg)]
    elif stage in UPSTREAM:
        # The upstream stage's marker as it was when this stage finished: a later run of that stage
        # (new shards, a retrained set) re-enters this one, which then reuses what its lineage allows.
        up = _marker(cfg, UPSTREAM[stage])
        extra = [UPSTREAM[stage], lineage.bytes_digest(storage.read_bytes(up)) if storage.exists(up) else None]
    return lineage.digest([_digest(cfg), extra]) if extra else _digest(cfg)


#: Stages whose "done" marker also stands for the upstream stage's marker (see :func:`_stage_digest`).
UPSTREAM = {"pretrain": "ingest", "evaluate": "pretrain"}


def _marker(cfg: ExperimentConfig, stage: str) -> str:
    return storage.join(cfg.root, "_stages", f"{stage}.json")


def stage_done(cfg: ExperimentConfig, stage: str) -> bool:
    uri = _marker(cfg, stage)
    if not storage.exists(uri):
        return False
    return json.loads(storage.read_text(uri)).get("config") == _stage_digest(cfg, stage)


def _mark(cfg: ExperimentConfig, stage: str, t0: float, **info) -> None:
    # `finished` makes every marker's bytes new: the stages after it (UPSTREAM) see that it ran again
    storage.write_text(_marker(cfg, stage), json.dumps(
        {"stage": stage, "config": _stage_digest(cfg, stage), "seconds": round(time.perf_counter() - t0, 1),
         "finished": time.time(), **info}))


def _unmark(cfg: ExperimentConfig, stage: str) -> None:
    """Drop a stage's "done" marker: a run over some of its sets redid work, so the stage (and the
    stages after it, through :data:`UPSTREAM`) must check every set again on the next run."""
    if storage.exists(_marker(cfg, stage)):
        storage.remove(_marker(cfg, stage))


def _skip(cfg: ExperimentConfig, stage: str, force: bool) -> bool:
    if not force and stage_done(cfg, stage):
        info = json.loads(storage.read_text(_marker(cfg, stage)))
        log.info("%s: already done for this config (took %ss) — skipping; --force reruns it", stage, info["seconds"])
        return True
    return False


# ----------------------------------------------------------------------------- sets at once
class SetsFailed(RuntimeError):
    """Some sets of a stage failed; the others finished. The stage is not marked done."""

    def __init__(self, stage: str, errors: dict[str, BaseException], done: list[str], extra: list[str] = ()):
        from pw_ray.runtime import failure_reason

        self.errors = errors
        lines = [f"{name}: {failure_reason(err)}" for name, err in errors.items()] + list(extra)
        super().__init__(f"{stage} failed for {', '.join(errors)} ({len(done)} other set(s) finished: "
                         f"{', '.join(done) or 'none'}; the stage is not marked done, rerun to retry):\n  "
                         + "\n  ".join(lines))


def select_sets(cfg: ExperimentConfig, stage: str, sets: list[str] | None) -> list[str]:
    """The names of ``--sets`` in config order (every set when None); ingest also takes task names.
    A name the config does not have is a ``ValueError`` naming the ones it has."""
    known = [s.name for s in cfg.pretrain_sets] + ([t.name for t in cfg.tasks] if stage == "ingest" else [])
    if sets is None:
        return known
    unknown = [n for n in sets if n not in known]
    if unknown:
        what = "pretraining sets and tasks" if stage == "ingest" else "pretraining sets"
        raise ValueError(f"--sets: {', '.join(unknown)} not in the config; its {what}: {', '.join(known)}")
    return [n for n in known if n in sets]


def per_set(jobs: dict[str, Callable[[], Any]]) -> tuple[dict[str, Any], dict[str, BaseException]]:
    """Run each set's job at the same time, each in a thread of the driver (the Ray work it submits
    runs on the cluster: Ray Train runs, Ray Data tasks; the cluster's resources, or the
    autoscaler, decide how much of it runs at once). Returns (results, errors) by set: one set's
    failure does not stop the others. A single job runs in the calling thread."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}
    if len(jobs) <= 1:
        for name, job in jobs.items():
            try:
                results[name] = job()
            except Exception as err:  # noqa: BLE001 - reported with the set's name by the caller
                log.exception("%s failed", name)
                errors[name] = err
        return results, errors
    pool = ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="pw-ray-set")
    try:
        futures = {name: pool.submit(job) for name, job in jobs.items()}
        for name, fut in futures.items():
            try:
                results[name] = fut.result()
            except Exception as err:  # noqa: BLE001
                log.error("%s failed", name, exc_info=err)
                errors[name] = err
    finally:  # on Ctrl-C, do not wait for the other sets' runs
        pool.shutdown(wait=not sys.exc_info()[0], cancel_futures=True)
    return results, errors


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


def archive_folder(root: str):
    """The local folder of the synthetic archive: ``<root>/archive`` on a local root.

    On a remote root it lives in the local cache (:func:`pw_ray.storage.cache_dir`): GDAL reads its
    COGs by local path, so every process that reads chips must run on this machine (the demo, a
    one-node Ray). The archive is a fixture rebuilt from its seed, not an output worth uploading;
    a multi-node cluster ingests from a STAC catalog (``stac.kind: api``).
    """
    return storage.cache_dir(storage.join(root, "archive"))


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

    archive_dir = archive_folder(cfg.root)
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


#: Bump when sampling changes what a config's points are: stored points are then planned again.
PLAN_VERSION = 1


def points_record(cfg: ExperimentConfig, kind: str, spec, exclusion: dict | None = None) -> dict:
    """The lineage record of one set's points: the set's (or task's) spec and seed, the spacing,
    the layers that label points, where scenes exist (the synthetic archive's coverage), and for
    labelled-point files and imported benchmarks the bytes of their index files. ``exclusion``
    (pretraining sets): the distance and the held-out task points they were kept away from
    (:func:`pw_ray.leakage.exclusion_inputs`)."""
    inputs = {"version": PLAN_VERSION, "pretrain_set" if kind == "pretrain" else "task": spec,
              "min_spacing_m": cfg.chips.min_spacing_m,
              "biome_path": cfg.stac.biome_path, "landcover": cfg.stac.landcover}
    if cfg.stac.kind == "synthetic":  # sampling stays inside the archive's scenes, half a chip in
        inputs["coverage"] = {"synthetic": cfg.stac.synthetic, "chip_m": cfg.chips.size_px * cfg.chips.resolution_m}
    if kind == "pretrain" and spec.strategy != "random":  # chosen by signatures: what decides them
        inputs["signatures"] = signature_inputs(cfg)
    if kind == "task" and spec.kind == "points":
        inputs["file"] = lineage.bytes_digest(storage.read_bytes(spec.path))
        inputs["max_off_continent"] = cfg.chips.max_failed_fraction
    elif kind == "task" and spec.kind in ("fmow", "geobench"):
        from pw_ray.evaluate.builders import dataset_fingerprint

        inputs["files"] = dataset_fingerprint(spec)
    if exclusion is not None:
        inputs["exclusion"] = exclusion
    return lineage.record(inputs)


def signature_inputs(cfg: ExperimentConfig) -> dict:
    """What decides the candidates' signatures of a spectral-diverse set besides its spec: the
    search, the chip fields that decide a chip's scene and window, and analyze's bins."""
    from pw_ray.ingest.search import stac_lineage
    from pw_ray.ingest.signatures import SIGNATURE_VERSION

    chips = {k: getattr(cfg.chips, k) for k in ("bands", "size_px", "resolution_m", "max_cloud_fraction",
                                                "max_nodata_fraction")}
    out = {"version": SIGNATURE_VERSION, "stac": stac_lineage(cfg.stac), "chips": chips,
           "spectral_bins": cfg.analysis.spectral_bins}
    if cfg.stac.kind == "synthetic":  # its COGs (their overviews) change with the generator's format
        from pw_ray.synthetic import FORMAT_VERSION

        out["archive_format"] = FORMAT_VERSION
    return out


def points_uri(cfg: ExperimentConfig, name: str) -> str:
    return storage.join(cfg.root, "points", f"{name}.parquet")


def candidates_uri(cfg: ExperimentConfig, name: str) -> str:
    """The candidate pool of a spectral-diverse set, with signatures and what was chosen."""
    return storage.join(cfg.root, "candidates", f"{name}.parquet")


def plan_diverse(cfg: ExperimentConfig, spec, src: Source, rec: dict, force: bool = False, *,
                 held_out: pd.DataFrame | None = None, exclusion_m: float = 0.0):
    """The labelled points of a spectral-diverse set and the pool's candidates the exclusion
    replaced (a :class:`pw_ray.plan.Sampled`). The pool is drawn ``exclusion_m`` from ``held_out``
    before any signature or selection; the pool and its signatures are stored in
    ``candidates/<set>.parquet`` with the points' lineage, and reused from there when it matches
    (a points file lost, or a plan killed after the signatures)."""
    from pw_ray.diverse import candidate_pool, plan_diverse_set, points_from_candidates
    from pw_ray.ingest.signatures import signature_table
    from pw_ray.plan import Sampled, label_points

    uri = candidates_uri(cfg, spec.name)
    if lineage.why_redo(lineage.of_parquet(uri), rec, force) is None:
        _say(f"plan {spec.name}: candidate signatures reused (inputs unchanged)")
        # Drawing the pool again is cheap (no reads) and gives the exclusion's count per continent.
        replaced = candidate_pool(spec, src.coverage, cfg.chips.min_spacing_m, held_out=held_out,
                                  exclusion_m=exclusion_m).replaced
        points = points_from_candidates(storage.read_table(uri).to_pandas(), spec.name)
        return Sampled(label_points(points, src.biome_path, src.landcover), replaced)

    def signatures(pool: pd.DataFrame) -> pd.DataFrame:
        return signature_table(pool, src.searcher, src.adapter, cfg.chips, spec.signature_px,
                               cfg.analysis.spectral_bins)

    t0 = time.perf_counter()
    built = plan_diverse_set(spec, signatures, src.coverage, cfg.chips.min_spacing_m, held_out=held_out,
                             exclusion_m=exclusion_m)
    table = built.candidates
    storage.write_table(lineage.attach(pa.Table.from_pandas(table, preserve_index=False), rec), uri)
    ok = table["score"].notna()
    _say(f"plan {spec.name}: {len(table)} candidates, {int(ok.sum())} with a signature "
         f"({time.perf_counter() - t0:.0f}s); mean signature entropy {table.loc[table['chosen'], 'score'].mean():.3f} "
         f"nats chosen vs {table.loc[ok, 'score'].mean():.3f} over the candidates")
    return Sampled(label_points(built.points, src.biome_path, src.landcover), built.replaced)


def _task_points(cfg: ExperimentConfig, spec, src: Source) -> pd.DataFrame:
    """A task's points (imported benchmarks: with the dataset's own ``split``)."""
    from pw_ray.config import PretrainSet
    from pw_ray.evaluate.tasks import points_from_csv
    from pw_ray.plan import label_points, plan_set

    lc = src.landcover  # callable: (lons, lats) → class names, sampled pixel by pixel
    if spec.kind in ("synthetic-landcover", "synthetic-population"):
        # A task's points: an equal mix of the six continents, its own seed.
        pset = PretrainSet(name=spec.name, region="global", size=spec.size, seed=spec.seed + 10_000)
        return plan_set(pset, src.coverage, cfg.chips.min_spacing_m, biome_path=src.biome_path, landcover=lc)
    if spec.kind == "points":
        return label_points(points_from_csv(spec.path, spec.name, spec.seed, task_type=spec.task_type,
                                            max_off_fraction=cfg.chips.max_failed_fraction),
                            src.biome_path, lc)
    if spec.kind in ("fmow", "geobench"):
        # Imported benchmarks: their own index, split and images; no STAC search.
        from pw_ray.evaluate.builders import plan_imported

        return plan_imported(spec)
    raise NotImplementedError(f"task kind {spec.kind!r} has no builder yet (task {spec.name})")


def _task_splits(cfg: ExperimentConfig, spec, pts: pd.DataFrame) -> pd.DataFrame:
    """``point_id, split, block`` of a task's points, decided at plan time (:mod:`pw_ray.splits`)."""
    from pw_ray.splits import SPLIT_COLUMNS, assign_splits, block_of

    if spec.split == "dataset":  # imported benchmarks keep theirs
        return pts.assign(block=block_of(pts["lon"], pts["lat"], cfg.block_m))[SPLIT_COLUMNS]
    # Labels known now (points tasks) stratify a random split; synthetic labels come from pixels.
    labels = pts["label"].astype(str).to_numpy() if (
        spec.split == "random" and "label" in pts.columns and spec.task_type == "classification") else None
    return assign_splits(pts, spec.split, spec.split_fractions, block_m=cfg.block_m, split_seed=cfg.plan.split_seed,
                         seed=spec.seed, labels=labels)[SPLIT_COLUMNS]


def plan(cfg: ExperimentConfig, force: bool = False, src: Source | None = None) -> None:
    """Task points first, each with its split (``splits/<task>.parquet``), then every pretraining
    set's points kept ``plan.exclusion_m`` from the held-out task points. A stored output is
    reused only when its lineage matches (a changed size, seed, region, spacing, source, split
    setting or held-out point plans it again)."""
    from pw_ray import leakage
    from pw_ray import splits as SP
    from pw_ray.plan import plan_set_away

    if _skip(cfg, "plan", force):
        return
    t0 = time.perf_counter()
    sources = [src]

    def get_source() -> Source:  # built only when something is planned
        sources[0] = sources[0] or source(cfg)
        return sources[0]

    task_points = {}
    for spec in cfg.tasks:
        name, uri = spec.name, points_uri(cfg, spec.name)
        rec = points_record(cfg, "task", spec)
        why = lineage.why_redo(lineage.of_parquet(uri), rec, force)
        if why is None:
            pts = storage.read_table(uri).to_pandas()
            _say(f"plan {name}: points reused (inputs unchanged)")
        else:
            pts = _task_points(cfg, spec, get_source())
            storage.write_table(lineage.attach(pa.Table.from_pandas(pts, preserve_index=False), rec), uri)
            _say(f"plan {name}: {why} → {len(pts)} points planned")
        srec = lineage.record({"points": rec["digest"], "split": SP.split_inputs(cfg, spec)})
        why = lineage.why_redo(lineage.of_parquet(SP.splits_uri(cfg.root, name)), srec, force)
        if why is None:
            splits = SP.read_splits(cfg.root, name)
        else:
            splits = _task_splits(cfg, spec, pts)
            SP.write_splits(cfg.root, name, splits, srec)
            _say(f"plan {name}: {why} → splits " + ", ".join(f"{k} {v}" for k, v in splits["split"].value_counts().items()))
        task_points[name] = pts.drop(columns=["split"], errors="ignore").merge(splits, on="point_id", validate="1:1")

    exclusion = cfg.exclusion_m
    held = leakage.held_out_points(task_points, cfg.plan.exclude_splits)
    away = leakage.exclusion_inputs(exclusion, cfg.plan.exclude_splits, held)
    if exclusion <= 0:
        log.warning("plan: exclusion is off (plan.exclusion_m = 0): pretraining points may lie on downstream "
                    "%s chips", "/".join(cfg.plan.exclude_splits))
    record = leakage.read_record(cfg.root)
    for s in cfg.pretrain_sets:
        uri = points_uri(cfg, s.name)
        rec = points_record(cfg, "pretrain", s, exclusion=away)
        why = lineage.why_redo(lineage.of_parquet(uri), rec, force)
        if why is None:
            _say(f"plan {s.name}: points reused (inputs unchanged)")
            continue
        src_ = get_source()
        if s.strategy != "random":  # the pool keeps away from held-out points, then the signatures choose
            planned = plan_diverse(cfg, s, src_, rec, force, held_out=held, exclusion_m=exclusion)
        else:
            planned = plan_set_away(s, src_.coverage, cfg.chips.min_spacing_m, biome_path=src_.biome_path,
                                    landcover=src_.landcover, held_out=held, exclusion_m=exclusion)
        storage.write_table(lineage.attach(pa.Table.from_pandas(planned.points, preserve_index=False), rec), uri)
        record["sets"][s.name] = {**away, "replaced": int(sum(planned.replaced.values())),
                                  "replaced_by_region": planned.replaced}
        leakage.write_record(cfg.root, record)
        done = (f"{record['sets'][s.name]['replaced']} candidates within {exclusion:.0f} m of {len(held)} held-out "
                f"task points replaced" if exclusion > 0 else "exclusion off")
        _say(f"plan {s.name}: {why} → {len(planned.points)} points planned, {done}")
        log.info("plan %s: %d points → %s", s.name, len(planned.points), uri)
    _mark(cfg, "plan", t0)


def _say(line: str) -> None:
    """A progress line for the user (stdout) and the log."""
    print(line, flush=True)
    log.debug(line)


def ingest(cfg: ExperimentConfig, force: bool = False, src: Source | None = None, retry_failed: bool = False,
           sets: list[str] | None = None) -> None:
    """Index, shards and manifest of every set (each reusing what its lineage allows), then task
    tables (with the splits plan decided) and the pretraining sets' dataset cards; all sets at
    once, each in a thread of the driver (:func:`per_set`). Exits non-zero, naming the sets and
    their commonest reasons, when a set failed more than ``chips.max_failed_fraction`` of its chips
    or produced none, or failed outright; the other sets finish first, the stage is then not
    marked done and the next run retries. ``sets``: only these sets and tasks (``--sets``; the
    stage is then never marked done)."""
    from pw_ray.cards import write_dataset_card
    from pw_ray.evaluate import tasks as T
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.failures import FailureBudgetExceeded
    from pw_ray.ingest.pipeline import run_ingest
    from pw_ray.splits import read_splits

    names = select_sets(cfg, "ingest", sets)
    if not retry_failed and _skip(cfg, "ingest", force):
        return
    t0 = time.perf_counter()
    src = src or source(cfg)

    def ingest_one(name: str, kind: str, spec) -> tuple[dict, str | None]:
        pts = storage.read_table(points_uri(cfg, name)).to_pandas()
        if kind == "task" and spec.kind in ("fmow", "geobench"):
            # Imported benchmarks: chips straight from their images, their own split kept.
            from pw_ray.evaluate.builders import ingest_imported

            s = ingest_imported(cfg.root, spec, pts.merge(read_splits(cfg.root, name)[["point_id", "block"]],
                                                          on="point_id", how="left", validate="1:1"),
                                cfg.chips, force=force, retry_failed=retry_failed)
        else:
            s = run_ingest(cfg.root, name, pts, src.searcher, src.adapter, cfg.chips, src.landcover,
                           force=force, retry_failed=retry_failed)
        for line in s.reuse_lines():
            _say(f"ingest {line}")
        _say(f"ingest {s.line()}")
        if err := s.budget_error(cfg.chips.max_failed_fraction):
            return s.record(), err
        if kind == "pretrain":
            write_dataset_card(cfg, name, config_digest=_digest(cfg))  # diversity: filled in by analyze
        if kind == "task" and spec.kind not in ("fmow", "geobench"):
            meta = S.read_set(cfg.root, name, columns=list(S.META_COLUMNS)).to_pandas()
            if spec.kind == "points":  # the user's labels, by point (every season's chip gets its point's)
                meta = meta.merge(pts[["point_id", "label"]], on="point_id", how="left", validate="many_to_one")
            T.write_task(cfg.root, spec, T.build_labels(meta, spec, src.lc_names, splits=read_splits(cfg.root, name)))
        return s.record(), None

    done, errors = per_set({name: functools.partial(ingest_one, name, kind, spec)
                            for name, kind, spec in _point_sets(cfg) if name in names})
    summaries = {name: done[name][0] for name in names if name in done}
    over_budget = [done[name][1] for name in names if name in done and done[name][1]]
    if errors:
        raise SetsFailed("ingest", errors, [n for n in names if n in done], over_budget)
    if over_budget:
        raise FailureBudgetExceeded("ingest over its failure budget (the stage is not marked done; rerun "
                                    "to retry transient failures, --retry-failed for permanent ones):\n  "
                                    + "\n  ".join(over_budget))
    if sets is None:
        _mark(cfg, "ingest", t0, summaries=summaries)
    else:
        _unmark(cfg, "ingest")


def pretrain(cfg: ExperimentConfig, force: bool = False, sets: list[str] | None = None,
             train_loop: Callable | None = None) -> None:
    """One Ray Train run per set, all sets at once (each run asks the cluster for its workers:
    the autoscaler adds GPU nodes for them, a fixed cluster queues them), each with its own run
    name, storage path and failure budget. A set whose export records its lineage and steps is
    reused; the line of each set says what was reused or redone and why. Sets that fail do not
    stop the others: the stage then exits non-zero naming them, and is not marked done.
    ``sets``: only these (``--sets``); ``train_loop`` replaces the worker loop (tests)."""
    from pw_ray.cards import write_model_card
    from pw_ray.pretrain import trainer as T

    names = select_sets(cfg, "pretrain", sets)
    if _skip(cfg, "pretrain", force):
        return
    t0 = time.perf_counter()
    plans, plan_errors = {}, {}
    for name in names:
        try:  # reads the set's shard footers: a set without shards fails here, alone
            plans[name] = T.plan_run(cfg, name, force)
        except Exception as err:  # noqa: BLE001 - reported with the set's name below
            log.error("pretrain %s failed", name, exc_info=err)
            plan_errors[name] = err
            continue
        _say(plans[name].line())
    kw = {"train_loop": train_loop} if train_loop else {}
    out, errors = per_set({p.set_name: functools.partial(T.train_run, cfg, p, **kw)
                           for p in plans.values() if p.why is not None})
    errors = {n: (plan_errors | errors)[n] for n in names if n in plan_errors or n in errors}
    for name in names:
        if name in out:
            r = out[name]
            resumed = f", resumed at step {r['start_step']}" if r.get("start_step") else ""
            loss = f", final loss {r['final_loss']:.4f}" if r.get("final_loss") is not None else ""
            _say(f"pretrain {name}: {r.get('steps')} steps{resumed}{loss} (run {r['run']})")
        elif name not in errors:
            out[name] = plans[name].done
        if name in out:
            write_model_card(cfg, name, config_digest=_digest(cfg))
    if cfg.evaluation.include_zero and sets is None:
        out[T.ZERO] = T.export_zero(cfg, force=force)
        why = out[T.ZERO]["decision"]
        _say(f"pretrain zero: {why} → random encoder exported" if why else "pretrain zero: reused (inputs unchanged)")
        write_model_card(cfg, T.ZERO, config_digest=_digest(cfg))
    if errors:
        raise SetsFailed("pretrain", errors, [n for n in names if n in out])
    if sets is None:
        _mark(cfg, "pretrain", t0, runs=out)
    elif any(p.why is not None for p in plans.values()):
        _unmark(cfg, "pretrain")


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
    refs = [embed.remote(cfg.root, s, t, pooling=cfg.evaluation.pooling) for s, t in needs]
    log.info("evaluate: embeddings for %d (encoder, task) pairs (cached ones are reused)", len(refs))
    ray.get(refs)
    run_grid(cfg, cells)
    df = collect_results(cfg, cells)
    ok = df[df["status"] == "ok"]
    print(f"evaluate: {len(ok)} cells scored, {len(df) - len(ok)} skipped", flush=True)
    if ok.empty:
        from pw_ray.analyze.stats import no_scores_reason

        print(f"evaluate: nothing was scored: {no_scores_reason(df)}; analyze and report will give the "
              "diversity measures only", flush=True)
    for line in skipped_summary(df):
        print(f"evaluate: skipped {line}", flush=True)
    _mark(cfg, "evaluate", t0, cells=len(df))
    return df


def analyze(cfg: ExperimentConfig, force: bool = False) -> None:
    from pw_ray.analyze import stats as ST
    from pw_ray.analyze.diversity_job import diversity_table
    from pw_ray.ingest import shards as S

    if _skip(cfg, "analyze", force):
        return
    t0 = time.perf_counter()
    a = cfg.analysis
    # Ray Data over the shards; the codebook is fitted on a seeded sample of every set.
    div, _ = diversity_table({s.name: S.shard_files(cfg.root, s.name) for s in cfg.pretrain_sets},
                             bins=a.spectral_bins, clusters=a.spectral_clusters, codebook_chips=a.codebook_chips,
                             codebook_pixels=a.codebook_pixels, seed=a.seed)
    storage.write_table(pa.Table.from_pandas(div, preserve_index=False),
                        storage.join(cfg.root, "results", "diversity.parquet"))
    _audit_and_cards(cfg, div)
    for r in div.itertuples(index=False):
        print(f"analyze: {r.pretrain_set}: {r.n_chips} chips, entropy (nats) continent {r.continent_entropy:.3f} "
              f"biome {r.biome_entropy:.3f} land cover {r.landcover_entropy:.3f} spectral hist "
              f"{r.spectral_entropy_hist:.3f} codebook {r.spectral_entropy_codebook:.3f}", flush=True)
    results_uri = storage.join(cfg.root, "results", "results.parquet")
    results = storage.read_table(results_uri).to_pandas() if storage.exists(results_uri) else None
    ok = results[results["status"] == "ok"] if results is not None else None
    ext = None
    if a.external_sets:  # published sets beside the measured ones; a validated copy for the report
        from pw_ray.analyze.external import read_external_sets

        ext = read_external_sets(a.external_sets)
        ext.check_against([s.name for s in cfg.pretrain_sets] + ["zero"], [t.name for t in cfg.tasks])
        storage.write_table(pa.Table.from_pandas(ext.table, preserve_index=False),
                            storage.join(cfg.root, "results", "external_sets.parquet"))
    corr_uri = storage.join(cfg.root, "results", "correlations.parquet")
    if ok is None or ok.empty:  # nothing was scored: the diversity measures are the whole result
        if storage.exists(corr_uri):
            storage.remove(corr_uri)  # from an earlier config that had scores; it would mislead the report
        print(f"analyze: no downstream results, so diversity measures only and no correlation with "
              f"performance: {ST.no_scores_reason(results)}", flush=True)
        _mark(cfg, "analyze", t0, scored=0)
        return
    method = "linear" if "linear" in set(ok["method"]) else str(ok["method"].iloc[0])
    table = ST.main_table(ok, method=method, task_region="global", extra=None if ext is None else ext.scores)
    perf = table.set_index("pretrain_set")["mean_performance"]
    div_all = div if ext is None else pd.concat([div, ext.diversity], ignore_index=True)
    corr = ST.correlation_table(div_all, perf, external=[] if ext is None else ext.names, n_boot=a.bootstrap, seed=0)
    storage.write_table(pa.Table.from_pandas(corr, preserve_index=False), corr_uri)
    for r in corr.itertuples(index=False):
        print(f"analyze: {r.measure:>28s}  Spearman ρ = {r.spearman_rho:+.2f} "
              f"[{r.spearman_ci_low:+.2f}, {r.spearman_ci_high:+.2f}] p = {r.spearman_p:.3f} "
              f"(permutation {r.spearman_p_perm:.3f})  "
              f"n = {r.n} ({r.sets} sets, {r.n_external} external)", flush=True)
    _mark(cfg, "analyze", t0, scored=len(ok))


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

    def res_if_any(name):  # results and correlations are missing when nothing was scored
        return res(name) if storage.exists(storage.join(cfg.root, "results", name)) else None
    points = pd.concat([storage.read_table(storage.join(cfg.root, "points", f"{s.name}.parquet")).to_pandas()
                        for s in cfg.pretrain_sets])
    chips_by_set, counts = {}, []
    rgb = [cfg.chips.bands.index(b) for b in ("B04", "B03", "B02") if b in cfg.chips.bands]
    for s in cfg.pretrain_sets:
        files = S.shard_files(cfg.root, s.name)
        if files and len(rgb) == 3:
            chips_by_set[s.name] = S.read_pixels(S.read_shard(files[0], s.name))[:6][:, rgb]
        m = storage.read_table(storage.join(cfg.root, "manifest", f"{s.name}.parquet")).to_pandas()
        c = m["status"].value_counts()
        counts.append({"pretrain_set": s.name, **{k: int(c.get(k, 0)) for k in ("ok", "skipped", "failed")}})
    from importlib.resources import files as pkg_files

    external = None
    if cfg.analysis.external_sets:  # the copy analyze validated, so report and correlations agree
        from pw_ray.analyze.external import parse_external_sets

        external = parse_external_sets(res("external_sets.parquet"), origin=cfg.analysis.external_sets)
    render = functools.partial(
        write_report, external=external, results=res_if_any("results.parquet"), diversity=res("diversity.parquet"),
        correlations=res_if_any("correlations.parquet"), points=points, chips_by_set=chips_by_set,
        manifest_counts=pd.DataFrame(counts).set_index("pretrain_set"),
        leakage=leakage.read_audit(cfg.root), exclusion_m=cfg.exclusion_m,
        continents_path=str(pkg_files("pw_ray") / "data" / "continents.geojson"),
        title=f"Pretrain where? — {cfg.name}",
    )
    if storage.is_remote(out):  # rendering needs a local folder: render in a temp one, upload every file
        with tempfile.TemporaryDirectory(prefix="pwray-report-") as local_out:
            path = render(local_out)
            uploaded = storage.upload_dir(local_out, out)
        path = storage.join(out, path.relative_to(local_out).as_posix())
        log.info("report: %d files uploaded to %s", len(uploaded), out)
    else:
        path = str(render(storage.to_local_dir(out)))
    _mark(cfg, "report", t0)
    return path


def run_all(cfg: ExperimentConfig, force: bool = False, stop_after: str | None = None,
            retry_failed: bool = False) -> str | None:
    storage.makedirs(cfg.root)
    storage.write_text(storage.join(cfg.root, "config.yaml"), dump_config(cfg))
    src = None
    if not (stage_done(cfg, "plan") and stage_done(cfg, "ingest")) or force or retry_failed:
        src = source(cfg)
    plan(cfg, force, src)
    ingest(cfg, force, src, retry_failed=retry_failed)
    if stop_after == "ingest":
        return None
    pretrain(cfg, force)
    evaluate(cfg, force)
    analyze(cfg, force)
    return report(cfg, force)
