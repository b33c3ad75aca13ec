"""The ingest stage on Ray Data: points → chip index → chips grouped by scene → shards.

1. **Index** (``index/<set>.parquet``): per point, search scenes (best cloud first), compute the
   chip window in the scene's 10 m grid, read the SCL window and keep the first scene whose chip
   passes the cloud and no-data limits — in batches of spatially sorted points, one SCL read per
   scene per batch. Points with no usable scene are recorded as skipped with the reason; errors
   as failed. Items go to ``index/<set>-items.parquet`` (no signed URLs).
2. **Chunks**: kept chips are sorted by (region, scene, window) and cut into chunks of
   ``chips.chunk_size``; a chunk's chips come from few scenes, so each scene is opened once.
3. **Shards**: one Ray task per chunk reads its scenes and writes
   ``shards/<set>/region=<r>/<set>-<r>-<chunk>.parquet`` (+ a WebDataset tar) atomically,
   skipping chunks whose files exist: a rerun finishes what is missing and never duplicates.
4. **Manifest** (``manifest/<set>.parquet``): one row per chip, ``ok`` | ``skipped`` | ``failed``.

The index and the manifest have one row per chip: per point with ``stac.seasons`` = 1, else
one per point and season (docs/CONTRACTS.md).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from pw_ray import storage
from pw_ray.config import ChipSpec
from pw_ray.ingest import chips as C
from pw_ray.ingest import shards as S
from pw_ray.ingest.catalogs import CatalogAdapter, baseline_of, redact
from pw_ray.ingest.landcover import LandcoverSource

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "point_id", "chip_id", "season", "set", "lon", "lat", "region", "biome", "landcover", "status", "reason",
    "item_id",
    "collection", "datetime", "epsg", "row_off", "col_off", "cloud_fraction", "nodata_fraction",
    "baseline",
]


@dataclass
class IngestSummary:
    set_name: str
    points: int
    ok: int
    skipped: int
    failed: int
    chunks_written: int
    chunks_reused: int
    #: Seconds the shard tasks spent per stage (:data:`STAGES`), summed over tasks.
    stage_s: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.set_name}: {self.ok}/{self.points} chips ok, {self.skipped} skipped, "
                f"{self.failed} failed; {self.chunks_written} chunks written, {self.chunks_reused} reused")

    def stages_line(self) -> str:
        """Where the shard tasks' time went, e.g. ``read 4.91 s (71%), land cover 0.38 s (6%), …``."""
        total = sum(self.stage_s.values())
        if not total:
            return "no chunk written"
        return ", ".join(f"{_STAGE_NAMES.get(k, k)} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in self.stage_s.items())


#: Stages of a shard task: ``read`` (decode, resample, harmonise the bands and SCL),
#: ``landcover`` (class fractions), ``encode`` (Parquet and WebDataset bytes), ``write``
#: (atomic writes to storage).
STAGES = ("read", "landcover", "encode", "write")
_STAGE_NAMES = {"landcover": "land cover"}


class _Stopwatch:
    """Seconds per named stage: ``with sw("read"): ...``."""

    def __init__(self):
        self.seconds = dict.fromkeys(STAGES, 0.0)
        self._name = None

    def __call__(self, name: str):
        self._name = name
        return self

    def __enter__(self):
        self._t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.seconds[self._name] += time.perf_counter() - self._t0


def index_points(points: pd.DataFrame, searcher, adapter: CatalogAdapter, spec: ChipSpec) -> pd.DataFrame:
    """Choose a scene and a chip window for each point (pure function of its inputs).

    Each point takes the first of its candidate scenes (best cloud cover first) whose chip passes
    the cloud and no-data limits. The SCL screening runs in rounds over the candidates' rank:
    round k groups the still-undecided points by their k-th candidate scene and reads that
    scene's SCL once for all of them (one open, overlapping windows decoded once), instead of
    one open per point and candidate — over HTTP an open costs a round trip or two.

    With ``searcher.seasons`` = N > 1 (``stac.seasons``) each point gets N rows, one per date
    window, with ``chip_id`` ``<point_id>-s<k>``; otherwise ``chip_id`` is the ``point_id``.
    """
    n_seasons = int(getattr(searcher, "seasons", 1) or 1)
    rows, cands, reasons, items = [], [], [], {}
    for p in points.itertuples(index=False):
        for season in range(n_seasons):
            row = {c: getattr(p, c, None) for c in ("point_id", "set", "lon", "lat", "region", "biome", "landcover")}
            row.update(chip_id=str(p.point_id) if n_seasons == 1 else f"{p.point_id}-s{season}", season=season)
            row.update(status="skipped", reason="no scene", item_id=None, collection="", datetime="",
                       baseline="", epsg=0, row_off=-1, col_off=-1, cloud_fraction=float("nan"),
                       nodata_fraction=float("nan"))
            found: list[dict] = []
            try:
                found = (searcher.candidates(float(p.lon), float(p.lat)) if n_seasons == 1
                         else searcher.candidates(float(p.lon), float(p.lat), season=season))
            except Exception as err:  # a bad point costs that point, never the job
                row.update(status="failed", reason=redact(f"{type(err).__name__}: {err}"))
            rows.append(row)
            cands.append(found)
            reasons.append([])

    pending = [i for i, r in enumerate(rows) if r["status"] != "failed"]
    rank = 0
    with C.gdal_env():
        while pending:
            by_scene: dict[str, list[int]] = {}
            for i in pending:
                if rank < len(cands[i]):
                    by_scene.setdefault(cands[i][rank]["id"], []).append(i)
            for scene_id, members in by_scene.items():
                _screen_scene(cands[members[0]][rank], members, rows, reasons, items, adapter, spec)
            pending = [i for i in pending if rows[i]["status"] == "skipped" and rank + 1 < len(cands[i])]
            rank += 1
    for row, why in zip(rows, reasons):
        if row["status"] == "skipped" and why:
            row["reason"] = why[0] if len(set(r.split(" ")[0] for r in why)) == 1 else "; ".join(why[:3])
    df = pd.DataFrame(rows).reindex(columns=INDEX_COLUMNS)
    # Each scene's JSON once per batch (on its first row), not on every chip of it: the index
    # rows cross the object store and the driver collects them all.
    first = df["item_id"].notna() & ~df["item_id"].duplicated()
    df["items_json"] = [json.dumps(items[i]) if f else None for i, f in zip(df["item_id"], first)]
    return df


#: Points per index task. Fixed, so that which points share an SCL read (and so the index) does
#: not depend on the cluster's size.
INDEX_BATCH = 64


def spatial_batches(points: pd.DataFrame, size: int = INDEX_BATCH) -> list[pd.DataFrame]:
    """Points cut into batches of ``size`` after sorting by region and 1° cell, so the points
    of a batch share scenes (one SCL open per scene per batch); deterministic."""
    order = points.assign(_cy=np.floor(points["lat"].astype(float)), _cx=np.floor(points["lon"].astype(float)))
    order = order.sort_values(["region", "_cy", "_cx", "point_id"], kind="stable").drop(columns=["_cy", "_cx"])
    order = order.reset_index(drop=True)
    return [order.iloc[i:i + size] for i in range(0, len(order), size)]


def _screen_scene(item: dict, members: list[int], rows: list[dict], reasons: list[list[str]],
                  items: dict, adapter: CatalogAdapter, spec: ChipSpec) -> None:
    """One candidate scene for several points: chip windows, one SCL read, accept or note why not."""
    try:
        grid = C.scene_grid(item, adapter, spec.resolution_m)
        wins = {i: C.chip_window(grid, float(rows[i]["lon"]), float(rows[i]["lat"]), spec.size_px)
                for i in members}
        inside = [i for i in members if wins[i] is not None]
        for i in members:
            if wins[i] is None:
                reasons[i].append(f"{item['id']}: point outside scene grid")
        if not inside:
            return
        scl = C.read_scl(item, adapter, [wins[i] for i in inside], spec.size_px, spec.resolution_m)
    except Exception as err:  # a bad scene costs the points that reached it, never the job
        for i in members:
            rows[i].update(status="failed", reason=redact(f"{type(err).__name__}: {err}"))
        return
    cloud = np.isin(scl, C.B.SCL_CLOUDY).mean(axis=(1, 2))
    nodata = (scl == C.B.SCL_NODATA).mean(axis=(1, 2))
    for k, i in enumerate(inside):
        if cloud[k] > spec.max_cloud_fraction:
            reasons[i].append(f"cloud {cloud[k]:.2f} > {spec.max_cloud_fraction}")
            continue
        if nodata[k] > spec.max_nodata_fraction:
            reasons[i].append(f"nodata {nodata[k]:.2f} > {spec.max_nodata_fraction}")
            continue
        try:
            for band in spec.bands:  # fail early, naming the band, if an asset is missing
                adapter.asset_key(item, band)
        except Exception as err:
            rows[i].update(status="failed", reason=redact(f"{type(err).__name__}: {err}"))
            continue
        rows[i].update(status="ok", reason="", item_id=item["id"], collection=item.get("collection"),
                       datetime=item["properties"].get("datetime"), epsg=grid.epsg,
                       row_off=wins[i][0], col_off=wins[i][1], cloud_fraction=float(cloud[k]),
                       nodata_fraction=float(nodata[k]), baseline=baseline_of(item))
        items[item["id"]] = item


def assign_chunks(index: pd.DataFrame, chunk_size: int) -> pd.DataFrame:
    """Kept chips sorted by (region, scene, window) and numbered into chunks per region.

    Whole scenes are packed into chunks of at most ``chunk_size`` chips, so a scene is split
    (and its shared COG blocks decoded by two tasks) only when it alone has more chips than a
    chunk holds; a scene that would overflow the current chunk starts the next one.
    """
    if "chip_id" not in index.columns:  # an index written before seasons existed
        index = index.assign(chip_id=index["point_id"])
    ok = index[index["status"] == "ok"].sort_values(["region", "item_id", "row_off", "col_off", "chip_id"])
    ok = ok.copy()
    chunk_of: list[int] = []
    region, chunk, filled = None, 0, 0
    # Scenes in (region, scene) order: the rows are sorted, so groups come contiguous and in order.
    for (scene_region, _), n in ok.groupby(["region", "item_id"], sort=False).size().items():
        if scene_region != region:  # chunks are numbered per region
            region, chunk, filled = scene_region, 0, 0
        elif filled and filled + n > chunk_size:  # this scene opens the next chunk
            chunk, filled = chunk + 1, 0
        for _ in range(n):  # a scene larger than a chunk fills several
            if filled == chunk_size:
                chunk, filled = chunk + 1, 0
            chunk_of.append(chunk)
            filled += 1
    ok["chunk"] = chunk_of
    return ok


def write_chunk(rows: pd.DataFrame, items: dict[str, dict], root: str, set_name: str, region: str,
                chunk: int, adapter: CatalogAdapter, spec: ChipSpec,
                landcover: LandcoverSource | None = None) -> dict:
    """Read one chunk's chips scene by scene and write its Parquet (+ tar). Idempotent.

    ``landcover``: each chip's class fractions (``lc_fractions``, in ``landcover.names`` order)
    and its dominant class come from it; without it chips keep the point's planned label.
    """
    pq_uri = S.parquet_uri(root, set_name, region, chunk)
    tar_uri = S.wds_uri(root, set_name, region, chunk)
    if storage.exists(pq_uri) and (not spec.webdataset or storage.exists(tar_uri)):
        n = storage.read_table(pq_uri, columns=["chip_id"]).num_rows
        return {"region": region, "chunk": chunk, "written": False, "n": n, "failed": "[]",
                "stages": json.dumps(dict.fromkeys(STAGES, 0.0))}
    # Chips go straight to their place in the chunk's planned order, whatever order the scenes
    # are read in: one pixel buffer for the chunk, no concatenation or reordering copies.
    pos = {cid: i for i, cid in enumerate(rows["chip_id"])}
    metas: list[dict | None] = [None] * len(rows)
    pixels = np.zeros((len(rows), len(spec.bands), spec.size_px, spec.size_px), dtype=np.uint16)
    failed = []
    sw = _Stopwatch()
    with C.gdal_env():
        for item_id, grp in rows.groupby("item_id", sort=True):
            item = items[item_id]
            wins = list(zip(grp["row_off"].astype(int), grp["col_off"].astype(int)))
            try:
                with sw("read"):
                    sc = C.read_scene_chips(item, adapter, wins, spec.bands, spec.size_px, spec.resampling,
                                            spec.resolution_m)
                lc = None
                if landcover is not None:
                    with sw("landcover"):
                        lc = landcover.fractions(C.scene_grid(item, adapter, spec.resolution_m), wins,
                                                 spec.size_px)
            except Exception as err:  # a failing scene costs its chips, never the job
                log.warning("scene %s failed: %s", item_id, redact(err))
                failed += [(pid, redact(f"{type(err).__name__}: {err}")) for pid in grp["chip_id"]]
                continue
            cloud, nodata = sc.cloud_fraction, sc.nodata_fraction
            for i, r in enumerate(grp.itertuples(index=False)):
                frac = lc[i] if lc is not None else np.zeros(0, np.float32)
                lc_name = r.landcover
                if lc is not None and frac.sum() > 0:
                    lc_name = landcover.names[int(np.argmax(frac))]
                metas[pos[r.chip_id]] = dict(
                    chip_id=str(r.chip_id), set=set_name, point_id=r.point_id, lon=float(r.lon),
                    lat=float(r.lat), region=r.region, biome=r.biome, landcover=lc_name,
                    lc_fractions=frac.tolist(), item_id=item_id, collection=r.collection,
                    datetime=r.datetime, epsg=int(r.epsg), row_off=int(r.row_off), col_off=int(r.col_off),
                    cloud_fraction=float(cloud[i]), nodata_fraction=float(nodata[i]),
                    baseline=r.baseline, offset_applied=int(sc.offsets[spec.bands[0]]),
                )
            pixels[[pos[c] for c in grp["chip_id"]]] = sc.pixels
    keep = [i for i, m in enumerate(metas) if m is not None]
    if keep:
        if len(keep) < len(metas):  # a scene failed: drop its chips' places
            pixels = pixels[keep]
        with sw("encode"):
            table = S.chips_table([metas[i] for i in keep], pixels, spec.bands)
        if spec.webdataset:  # one encoded copy of the chunk in memory at a time
            with sw("encode"):
                tar = S.webdataset_bytes(table)
            with sw("write"):
                storage.write_bytes(tar_uri, tar)
            del tar
        with sw("encode"):
            parquet = S.parquet_bytes(table)
        with sw("write"):
            storage.write_bytes(pq_uri, parquet)  # last: its presence marks the chunk done
    return {"region": region, "chunk": chunk, "written": True, "n": len(keep), "failed": json.dumps(failed),
            "stages": json.dumps(sw.seconds)}


def chunk_tasks(chunked: pd.DataFrame, items_json: dict[str, str]) -> list[dict]:
    """One task record per chunk of ``assign_chunks``: its chips (a pickled DataFrame) and the
    JSON of only its scenes, so a task deserialises its chunk, not the whole set's index and items.

    Largest chunks first (most scenes, then most chips; ties by region and chunk): tasks start in
    this order, so the last wave of a job is short chunks and no worker finishes long after the
    others (longest-processing-time-first). The order decides only when a chunk runs, never
    what it holds.
    """
    tasks = [{"region": r, "chunk": int(k), "rows": pickle.dumps(g, protocol=5),
              "items": json.dumps({i: items_json[i] for i in g["item_id"].unique()}),
              "scenes": int(g["item_id"].nunique()), "chips": len(g)}
             for (r, k), g in chunked.groupby(["region", "chunk"], sort=True)]
    return sorted(tasks, key=lambda t: (-t["scenes"], -t["chips"], t["region"], t["chunk"]))


def run_chunk_task(task: dict, root: str, set_name: str, adapter: CatalogAdapter, spec: ChipSpec,
                   landcover: LandcoverSource | None = None) -> dict:
    """:func:`write_chunk` for one record of :func:`chunk_tasks`."""
    items = {i: json.loads(j) for i, j in json.loads(task["items"]).items()}
    return write_chunk(pickle.loads(task["rows"]), items, root, set_name, task["region"], task["chunk"],
                       adapter, spec, landcover)


def stage_seconds(results: list[dict]) -> dict[str, float]:
    """:data:`STAGES` seconds summed over the results of :func:`write_chunk`."""
    total = dict.fromkeys(STAGES, 0.0)
    for r in results:
        for k, v in json.loads(r["stages"]).items():
            total[k] += v
    return total


#: Default ceiling on ingest tasks in flight when ``chips.ingest_parallelism`` is unset.
MAX_DEFAULT_PARALLELISM = 64


def ingest_parallelism(n_units: int, cluster_cpus: float, override: int | None = None,
                       cap: int = MAX_DEFAULT_PARALLELISM) -> int:
    """How many ingest tasks may run at once (the ``TaskPoolStrategy`` size).

    ``override`` (``chips.ingest_parallelism``) wins. Otherwise the larger of the CPUs the
    cluster has now and the number of work units (capped at ``cap``): on a cluster that starts
    with no worker CPUs, sizing by today's CPUs would allow one task, leave the autoscaler no
    pending demand and never scale up; queuing up to ``cap`` tasks makes it add CPU workers.
    """
    if override:
        return int(override)
    return max(1, int(cluster_cpus), min(int(n_units), cap))


def run_ingest(root: str, set_name: str, points: pd.DataFrame, searcher, adapter: CatalogAdapter,
               spec: ChipSpec, landcover: LandcoverSource | None = None,
               parallelism: int | None = None) -> IngestSummary:
    """Ingest one set of points into shards under ``root`` with Ray Data. Resumable."""
    import ray

    index_uri = storage.join(root, "index", f"{set_name}.parquet")
    manifest_uri = storage.join(root, "manifest", f"{set_name}.parquet")
    override = parallelism or spec.ingest_parallelism
    # Expected chunks (an upper bound until the index says which chips are kept).
    parallelism = ingest_parallelism(-(-len(points) // spec.chunk_size), ray.cluster_resources().get("CPU", 0),
                                     override)
    log.info("ingest %s: up to %d tasks at once", set_name, parallelism)

    if storage.exists(index_uri):
        log.info("ingest %s: chip index exists, reusing %s", set_name, index_uri)
        index = storage.read_table(index_uri).to_pandas()
    else:
        log.info("ingest %s: searching scenes for %d points", set_name, len(points))
        batches = spatial_batches(points)
        ds = ray.data.from_pandas(batches)
        ds = ds.map_batches(
            index_points, fn_kwargs=dict(searcher=searcher, adapter=adapter, spec=spec),
            batch_format="pandas", batch_size=INDEX_BATCH,
            compute=ray.data.TaskPoolStrategy(size=parallelism), num_cpus=1,
        )
        index = ds.to_pandas().sort_values(["point_id", "chip_id"]).reset_index(drop=True)
        items_table = index.dropna(subset=["items_json"]).drop_duplicates("item_id")[["item_id", "items_json"]]
        storage.write_table(pa.Table.from_pandas(items_table, preserve_index=False),
                            storage.join(root, "index", f"{set_name}-items.parquet"))
        index = index.drop(columns=["items_json"])
        storage.write_table(pa.Table.from_pandas(index, preserve_index=False), index_uri)
    items_df = storage.read_table(storage.join(root, "index", f"{set_name}-items.parquet")).to_pandas()
    items_json = dict(zip(items_df["item_id"], items_df["items_json"]))

    if n_stale := S.remove_partial(root, set_name):
        log.info("ingest %s: removed %d temp files of writes killed mid-way", set_name, n_stale)
    chunked = assign_chunks(index, spec.chunk_size)
    tasks = chunk_tasks(chunked, items_json)
    results = []
    if tasks:
        def _do(task: dict) -> dict:
            return run_chunk_task(task, root, set_name, adapter, spec, landcover)

        parallelism = ingest_parallelism(len(tasks), ray.cluster_resources().get("CPU", 0), override)
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        ds = ds.map(_do, compute=ray.data.TaskPoolStrategy(size=parallelism), num_cpus=1)
        results = ds.take_all()
    failed_points = {pid: why for r in results for pid, why in json.loads(r["failed"])}
    if "chip_id" not in index.columns:  # an index written before seasons existed
        index["chip_id"] = index["point_id"]
    manifest = index[["point_id", "chip_id", "set", "lon", "lat", "region", "status", "reason", "item_id"]].copy()
    for pid, why in failed_points.items():
        manifest.loc[manifest["chip_id"] == pid, ["status", "reason"]] = ["failed", why]
    chunk_of = dict(zip(chunked["chip_id"], chunked["region"].astype(str) + "/" + chunked["chunk"].astype(str)))
    manifest["shard"] = manifest["chip_id"].map(chunk_of).where(manifest["status"] == "ok")
    storage.write_table(pa.Table.from_pandas(manifest, preserve_index=False), manifest_uri)
    counts = manifest["status"].value_counts()
    summary = IngestSummary(
        set_name, len(manifest), int(counts.get("ok", 0)), int(counts.get("skipped", 0)),
        int(counts.get("failed", 0)), sum(1 for r in results if r["written"]),
        sum(1 for r in results if not r["written"]),
        stage_seconds(results),
    )
    log.info("ingest %s", summary.line())
    log.info("ingest %s: shard tasks' time: %s", set_name, summary.stages_line())
    return summary
