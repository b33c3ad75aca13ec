"""Cheap spectral signatures of candidate points, read from the COGs' internal overviews.

A candidate's signature is what the spectral-diverse builder (:mod:`pw_ray.diverse`) ranks it by:
the per-band value histograms of analyze's spectral entropy, variant "hist"
(:func:`pw_ray.analyze.diversity.band_histograms`: fixed range 0–10000, ``analysis.spectral_bins``
bins), of the chip the ingest would cut for it, read at a coarse resolution.

For each candidate:

1. **the scene and window the ingest would choose**: :func:`pw_ray.ingest.pipeline.index_points`
   (the same search, SCL screening, cloud and no-data limits, signing, retries and GDAL
   environment as the ingest). A candidate without a usable scene gets no signature
   (``status`` skipped or failed, with the index's reason) and is never chosen before one with;
2. **the chip's footprint at ``signature_px`` × ``signature_px``** pixels per band (e.g. a 96 px
   chip at 10 m read at 12 px = 80 m), averaged down by GDAL from the nearest internal overview
   level: a block or two per band instead of the full-resolution ones. The candidates of one
   scene are read together, one open and one read per asset for nearby footprints
   (:func:`pw_ray.ingest.chips.read_grouped`), each signed just before its read and retried
   like every chip read (:func:`pw_ray.ingest.chips.retrying`), harmonised to the pre-04.00 DN
   scale like the chips (:func:`pw_ray.ingest.chips.harmonise`);
3. **the histograms and the score**: ``band_hist`` (C × bins counts, flattened) and ``score`` =
   their "hist" spectral entropy in nats (:func:`pw_ray.analyze.diversity.hist_entropy`), the
   estimate of what analyze will measure on the ingested chip.

:func:`candidate_signatures` is the pure part (one batch of candidates, no Ray);
:func:`signature_table` runs it on Ray Data, one task per spatially sorted batch.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import pickle

import numpy as np
import pandas as pd
from rasterio.enums import Resampling
from rasterio.windows import Window

from pw_ray.analyze.diversity import band_histograms, hist_entropy
from pw_ray.config import ChipSpec
from pw_ray.ingest import chips as C
from pw_ray.ingest.catalogs import CatalogAdapter, redact
from pw_ray.ingest.failures import failure_kind

log = logging.getLogger(__name__)

#: Columns of a signature table (one row per candidate point).
SIGNATURE_COLUMNS = ["point_id", "status", "reason", "failure", "item_id", "cloud_fraction", "nodata_fraction",
                     "score", "band_hist"]
#: Bump when a signature's definition changes: stored candidates are then recomputed.
SIGNATURE_VERSION = 1
#: Candidates per Ray task. Spatially sorted first (as the index parts), so a batch's candidates
#: share scenes and each asset is opened once per scene per batch. Smaller than an index part
#: (1024): a pool is ``candidates`` × a set, and a demo-sized pool still gets a few tasks.
SIGNATURE_BATCH = 256
#: Footprints of one scene are read as one rectangle while it is at most this many times their
#: summed area (and :data:`pw_ray.ingest.chips.MAX_UNION_PX` signature pixels on a side): at the
#: signature's resolution a whole scene is a few blocks, so a looser rule than the chips' pays.
SIGNATURE_UNION_RATIO = 64.0


def signature_windows(windows: list[tuple[int, int]], size_px: int, signature_px: int, height_px: int,
                      width_px: int) -> list[tuple[int, int]]:
    """Chip windows (row, col offsets in the scene's 10 m grid) → windows of ``signature_px`` in the
    signature grid (cells of ``size_px / signature_px`` 10 m pixels), snapped to the nearest cell
    and kept inside a ``height_px`` × ``width_px`` scene."""
    f = size_px / signature_px
    top = max(0, int(math.floor(height_px / f)) - signature_px)
    left = max(0, int(math.floor(width_px / f)) - signature_px)
    return [(min(max(round(r / f), 0), top), min(max(round(c / f), 0), left)) for r, c in windows]


def read_signature_windows(href: str, windows: list[tuple[int, int]], size_px: int, signature_px: int,
                           res: float = 10.0, retries: int = 3) -> np.ndarray:
    """One asset at several chip windows, each footprint read at ``signature_px`` × ``signature_px``
    (average resampling: GDAL reads the nearest overview level and averages what remains)
    → ``(N, signature_px, signature_px)`` DNs as stored (not harmonised)."""

    def run():
        with C.open_raster(href) as ds:
            factor = abs(ds.transform.a) / res  # asset pixels are this many 10 m pixels wide
            f = size_px / signature_px  # 10 m pixels per signature pixel
            sig = signature_windows(windows, size_px, signature_px, int(round(ds.height * factor)),
                                    int(round(ds.width * factor)))
            scale = f / factor  # asset pixels per signature pixel

            def read(r0, c0, h, w):  # a rectangle of the signature grid, one GDAL read
                return ds.read(1, window=Window(c0 * scale, r0 * scale, w * scale, h * scale), out_shape=(h, w),
                               resampling=Resampling.average, boundless=False)

            return np.stack(C.read_grouped(sig, signature_px, read, SIGNATURE_UNION_RATIO)) if sig else \
                np.zeros((0, signature_px, signature_px), np.uint16)

    return C.retrying(run, href, retries=retries)


def scene_signature_pixels(item: dict, adapter: CatalogAdapter, windows: list[tuple[int, int]], spec: ChipSpec,
                           signature_px: int) -> np.ndarray:
    """One scene's chip windows at the signature resolution: ``(N, C, signature_px, signature_px)``
    uint16, reflectance ×1e4 harmonised like the chips, bands in ``spec.bands`` order."""
    pixels = np.zeros((len(windows), len(spec.bands), signature_px, signature_px), dtype=np.uint16)
    for ci, band in enumerate(spec.bands):
        href = adapter.sign(adapter.href(item, band))  # signed just before its read: tokens expire
        dn = read_signature_windows(href, windows, spec.size_px, signature_px, spec.resolution_m)
        pixels[:, ci] = C.harmonise(dn, adapter.offset(item, band))
    return pixels


def scene_signatures(item: dict, adapter: CatalogAdapter, windows: list[tuple[int, int]], spec: ChipSpec,
                     signature_px: int, bins: int) -> np.ndarray:
    """Per-band histograms ``(N, C, bins)`` of one scene's chip windows at the signature resolution."""
    return band_histograms(scene_signature_pixels(item, adapter, windows, spec, signature_px), bins)


def candidate_signatures(points: pd.DataFrame, searcher, adapter: CatalogAdapter, spec: ChipSpec,
                         signature_px: int = 12, bins: int = 16) -> pd.DataFrame:
    """The signature of each candidate of ``points`` (pure: no Ray; one row per point, in order).

    ``points``: a points table (``point_id, lon, lat, region``, …). The scene and window come from
    :func:`pw_ray.ingest.pipeline.index_points`; with ``stac.seasons`` > 1 the best scene of the
    whole date range stands for the point (one search, not one per season). Returns :data:`SIGNATURE_COLUMNS`: ``score`` (nats, NaN without a
    signature) and ``band_hist`` (``len(spec.bands) × bins`` int32 counts, band-major; empty without).
    """
    from pw_ray.ingest.pipeline import index_points

    if int(getattr(searcher, "seasons", 1) or 1) > 1:
        searcher = copy.copy(searcher)  # the caller's searcher keeps its seasons
        searcher.seasons = 1
    index = index_points(points, searcher, adapter, spec).set_index("point_id")
    items = {i: json.loads(j) for i, j in zip(index["item_id"], index["items_json"]) if j is not None}
    out = pd.DataFrame({"point_id": points["point_id"].astype(str).to_numpy()})
    rows = index.loc[out["point_id"]]
    out["status"] = rows["status"].to_numpy()
    out["reason"] = rows["reason"].fillna("").to_numpy()
    out["failure"] = rows["failure"].fillna("").to_numpy()
    out["item_id"] = rows["item_id"].to_numpy()
    out["cloud_fraction"] = rows["cloud_fraction"].astype(np.float64).to_numpy()
    out["nodata_fraction"] = rows["nodata_fraction"].astype(np.float64).to_numpy()
    score = np.full(len(out), np.nan)
    hists: list = [np.zeros(0, np.int32)] * len(out)
    ok = np.flatnonzero(out["status"].to_numpy() == "ok")
    with C.gdal_env():
        for scene_id, members in pd.Series(ok).groupby(out["item_id"].to_numpy()[ok]):
            members = members.to_numpy()
            wins = list(zip(rows["row_off"].to_numpy()[members].astype(int),
                            rows["col_off"].to_numpy()[members].astype(int)))
            try:
                counts = scene_signatures(items[scene_id], adapter, wins, spec, signature_px, bins)
            except Exception as err:  # a bad scene costs its candidates their signature, never the job
                out.loc[members, ["status", "reason", "failure"]] = [
                    "failed", redact(f"{type(err).__name__}: {err}"), failure_kind(err)]
                continue
            score[members] = hist_entropy(counts)
            for k, i in enumerate(members):
                hists[i] = counts[k].astype(np.int32).ravel()
    out["score"] = score
    out["band_hist"] = hists
    return out[SIGNATURE_COLUMNS]


def signature_table(points: pd.DataFrame, searcher, adapter: CatalogAdapter, spec: ChipSpec,
                    signature_px: int = 12, bins: int = 16, parallelism: int | None = None) -> pd.DataFrame:
    """:func:`candidate_signatures` of every point on Ray Data: one task per batch of
    :data:`SIGNATURE_BATCH` spatially sorted points, as many at once as the ingest would run
    (:func:`pw_ray.ingest.pipeline.index_parallelism`: the cluster's width, within the STAC
    request budget the batches share). Rows in the order of ``points``."""
    import ray

    from pw_ray.ingest.pipeline import CELL_DEG, index_parallelism, spatial_batches

    if points.empty:
        return pd.DataFrame(columns=SIGNATURE_COLUMNS)
    batches = spatial_batches(points, SIGNATURE_BATCH, float(getattr(searcher, "cell_deg", CELL_DEG)))
    if hasattr(searcher, "share_budget"):  # the job's one STAC request budget, for every task
        searcher.share_budget()
    width = index_parallelism(len(batches), ray.cluster_resources().get("CPU", 0),
                              parallelism or spec.ingest_parallelism,
                              getattr(searcher, "max_concurrent_requests", None))

    def _do(task: dict) -> dict:
        sig = candidate_signatures(pickle.loads(task["points"]), searcher, adapter, spec, signature_px, bins)
        return {"batch": task["batch"], "signatures": pickle.dumps(sig, protocol=5)}

    tasks = [{"batch": k, "points": pickle.dumps(b, protocol=5)} for k, b in enumerate(batches)]
    log.info("signatures: %d candidates in %d batches, up to %d tasks at once", len(points), len(tasks), width)
    ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
    results = ds.map(_do, compute=ray.data.TaskPoolStrategy(size=width), num_cpus=1).take_all()
    sig = pd.concat([pickle.loads(r["signatures"]) for r in sorted(results, key=lambda r: r["batch"])],
                    ignore_index=True)
    return sig.set_index("point_id").loc[points["point_id"].astype(str)].reset_index()


__all__ = ["SIGNATURE_BATCH", "SIGNATURE_COLUMNS", "SIGNATURE_VERSION", "candidate_signatures",
           "read_signature_windows", "scene_signature_pixels", "scene_signatures", "signature_table",
           "signature_windows"]
