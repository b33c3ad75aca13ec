"""The ingest stage on Ray: points → chip index → chips grouped by scene → shards → manifest.

1. **Index** (``index/<set>.parquet``): scenes searched per cell (one paged search per
   ``stac.search_cell_deg`` cell and season for all its points, within the job's STAC request
   budget), each point's candidates ranked best cloud first; per point the chip window in the
   scene's 10 m grid, the SCL window read, and the first scene whose chip passes the cloud and
   no-data limits kept — in parts of whole cells (one Ray task and one stored part file each,
   ``index/_parts/<set>/``), one SCL read per scene per part. Points with no usable scene are
   recorded as skipped with the reason; errors as failed, transient or permanent. Items go to
   ``index/<set>-items.parquet`` (no signed URLs).
2. **Chunks**: kept chips are sorted by (region, scene, window) and whole scenes packed into
   chunks of at most ``chips.chunk_size``; a chunk's chips come from few scenes.
3. **Shards**: one plain Ray task per chunk (:mod:`pw_ray.ingest.workpool`, largest chunk first,
   a bounded number in flight) reads its scenes and writes
   ``shards/<set>/parquet/<r>/<set>-<r>-<chunk>.parquet`` (+ ``shards/<set>/wds/…tar``)
   atomically with :func:`pw_ray.ingest.chunks.write_chunk`, reusing a stored chunk only when its
   lineage matches; shards of chunks no longer planned are removed.
4. **Manifest** (``manifest/<set>.parquet``): one row per chip, ``ok`` | ``skipped`` | ``failed``,
   equal to what the shards hold.

Every stored output records the digest of its inputs (:mod:`pw_ray.lineage`), so a rerun after a
config change redoes exactly what the change touches and says why.

The index and the manifest have one row per chip: per point with ``stac.seasons`` = 1, else
one per point and season (docs/CONTRACTS.md).
"""

from __future__ import annotations

import json
import logging
import pickle
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from pw_ray import lineage, storage
from pw_ray.config import ChipSpec
from pw_ray.ingest import chips as C
from pw_ray.ingest import shards as S
from pw_ray.ingest.catalogs import CatalogAdapter, baseline_of, redact
from pw_ray.ingest.chunks import STAGES, Stopwatch, frame_digest, remove_stale, stage_seconds
from pw_ray.ingest.chunks import write_chunk as write_any_chunk
from pw_ray.ingest.failures import PERMANENT, TRANSIENT, budget_error, failure_kind, retryable, top_reasons
from pw_ray.ingest.landcover import LandcoverSource
from pw_ray.ingest.search import CELL_DEG, cell_bbox, search_cells
from pw_ray.ingest.workpool import occupancy, run_bounded

log = logging.getLogger(__name__)

INDEX_COLUMNS = [
    "point_id", "chip_id", "season", "set", "lon", "lat", "region", "biome", "landcover", "status", "reason",
    "failure", "item_id",
    "collection", "datetime", "epsg", "row_off", "col_off", "cloud_fraction", "nodata_fraction",
    "baseline",
]
#: Columns of ``manifest/<set>.parquet`` (one row per chip).
MANIFEST_COLUMNS = ["point_id", "chip_id", "set", "lon", "lat", "region", "status", "reason", "failure", "item_id",
                    "shard"]
#: Bump when the index a config gives changes (the search, the screening): stored indexes are rebuilt.
INDEX_VERSION = 1


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
    #: Why the chip index was rebuilt ("" when the stored one was reused).
    index_why: str = ""
    #: Why chunks were written, with counts (``{"not written yet": 12, "chips.size_px changed": 3}``).
    chunk_whys: dict[str, int] = field(default_factory=dict)
    #: Shard files of an earlier config removed from the set.
    stale_removed: int = 0
    #: Failed chips by kind.
    failed_transient: int = 0
    failed_permanent: int = 0
    #: The three most common failure reasons with counts.
    top_failures: list = field(default_factory=list)
    skip_reasons: list = field(default_factory=list)
    #: How the shard tasks ran: :func:`workpool.occupancy`, plus ``start``/``end``/``wall_s``
    #: (driver, Unix seconds), ``slots`` and ``task_times`` (a :class:`workpool.TaskTime` per
    #: task); empty when no chunk was planned.
    shard_tasks: dict = field(default_factory=dict)

    def record(self) -> dict:
        """The summary as JSON-ready fields (for ``_stages/ingest.json``): the shard tasks'
        aggregates without their per-task times."""
        out = dict(self.__dict__)
        out["shard_tasks"] = {k: v for k, v in self.shard_tasks.items() if k != "task_times"}
        return out

    def line(self) -> str:
        fails = ""
        if self.failed:
            fails = f" ({self.failed_transient} transient: retried next run; {self.failed_permanent} permanent)"
        return (f"{self.set_name}: {self.ok}/{self.points} chips ok, {self.skipped} skipped, "
                f"{self.failed} failed{fails}; {self.chunks_written} chunks written, {self.chunks_reused} reused")

    def reuse_lines(self) -> list[str]:
        """What this run reused and redid, and why (one line each)."""
        index = ("index: reused (its inputs are unchanged)" if not self.index_why
                 else f"index: {self.index_why} → rebuilt")
        out = [f"{self.set_name} {index}"]
        if self.chunks_written or self.chunks_reused or self.stale_removed:
            whys = ", ".join(f"{n} {why}" for why, n in sorted(self.chunk_whys.items(), key=lambda kv: -kv[1]))
            line = (f"{self.set_name} shards: {self.chunks_reused} chunks reused, {self.chunks_written} written"
                    + (f" ({whys})" if whys else ""))
            if self.stale_removed:
                line += f"; {self.stale_removed} files of an earlier config removed"
            out.append(line)
        return out

    def stages_line(self) -> str:
        """Where the shard tasks' time went, e.g. ``read 4.91 s (71%), land cover 0.38 s (6%), …``."""
        total = sum(self.stage_s.values())
        if not total:
            return "no chunk written"
        return ", ".join(f"{_STAGE_NAMES.get(k, k)} {v:.2f} s ({100 * v / total:.0f}%)" for k, v in self.stage_s.items())

    def budget_error(self, max_failed_fraction: float) -> str | None:
        """Why this set's ingest must not count as done (see :func:`failures.budget_error`)."""
        reasons = [k for k, n in self.top_failures for _ in range(n)] or [k for k, n in self.skip_reasons
                                                                          for _ in range(n)]
        return budget_error(self.set_name, self.points, self.ok, self.failed, self.skipped, reasons,
                            max_failed_fraction)


_STAGE_NAMES = {"landcover": "land cover"}
_Stopwatch = Stopwatch  # the name bench/ingest.py and older code use


def index_points(points: pd.DataFrame, searcher, adapter: CatalogAdapter, spec: ChipSpec,
                 timings: dict | None = None) -> pd.DataFrame:
    """Choose a scene and a chip window for each point (pure function of its inputs).

    Scenes are searched per cell (:func:`search_candidates`: one paged search per cell of
    ``searcher.cell_deg`` and season for all the cell's points). Each point takes the first of
    its candidate scenes (best cloud cover first) whose chip passes the cloud and no-data
    limits. The SCL screening runs in rounds over the candidates' rank: round k groups the
    still-undecided points by their k-th candidate scene and reads that scene's SCL once for all
    of them (one open, overlapping windows decoded once), instead of one open per point and
    candidate — over HTTP an open costs a round trip or two.

    With ``searcher.seasons`` = N > 1 (``stac.seasons``) each point gets N rows, one per date
    window, with ``chip_id`` ``<point_id>-s<k>``; otherwise ``chip_id`` is the ``point_id``.
    ``timings``, when given, receives the seconds spent searching (``search_s``) and screening
    (``screen_s``).
    """
    t0 = time.perf_counter()
    n_seasons = int(getattr(searcher, "seasons", 1) or 1)
    rows, reasons, items = [], [], {}
    for p in points.itertuples(index=False):
        for season in range(n_seasons):
            row = {c: getattr(p, c, None) for c in ("point_id", "set", "lon", "lat", "region", "biome", "landcover")}
            row.update(chip_id=str(p.point_id) if n_seasons == 1 else f"{p.point_id}-s{season}", season=season)
            row.update(status="skipped", reason="no scene", failure="", item_id=None, collection="", datetime="",
                       baseline="", epsg=0, row_off=-1, col_off=-1, cloud_fraction=float("nan"),
                       nodata_fraction=float("nan"))
            rows.append(row)
            reasons.append([])
    cands = search_candidates(points, searcher, rows, n_seasons)
    t1 = time.perf_counter()

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
    if timings is not None:
        timings.update(search_s=t1 - t0, screen_s=time.perf_counter() - t1)
    return df


def search_candidates(points: pd.DataFrame, searcher, rows: list[dict], n_seasons: int) -> list[list[dict]]:
    """Candidate scenes of every row (point-major, season-minor: row ``i·N + s``), best first.

    One :meth:`cell_candidates` call (one paged search) per cell and season; a search that fails
    (after the searcher's retries) fails the rows of that cell and season with the reason and
    its kind (transient/permanent), never the job. A searcher with ``search_threads`` > 1 (a
    STAC API: the searches wait on the network) runs that many at once, within the job's request
    budget; the answer does not depend on it. Searchers that only answer per point
    (``candidates``) are asked per point and season.
    """
    cands: list[list[dict]] = [[] for _ in rows]
    lons = points["lon"].to_numpy(dtype=np.float64)
    lats = points["lat"].to_numpy(dtype=np.float64)

    def fail(idx, err):
        for i in idx:
            rows[i].update(status="failed", reason=redact(f"{type(err).__name__}: {err}"), failure=failure_kind(err))

    if not hasattr(searcher, "cell_candidates"):
        for k in range(len(points)):
            for season in range(n_seasons):
                i = k * n_seasons + season
                try:  # a bad point costs that point, never the job
                    cands[i] = (searcher.candidates(float(lons[k]), float(lats[k])) if n_seasons == 1
                                else searcher.candidates(float(lons[k]), float(lats[k]), season=season))
                except Exception as err:
                    fail([i], err)
        return cands
    deg = float(getattr(searcher, "cell_deg", CELL_DEG))
    cells = search_cells(lons, lats, deg)
    order = np.lexsort((cells[:, 1], cells[:, 0]))
    starts = np.flatnonzero(np.r_[True, np.any(cells[order][1:] != cells[order][:-1], axis=1)])
    jobs = [(members, season) for members in np.split(order, starts[1:]) for season in range(n_seasons)]

    def search(job):
        members, season = job
        try:
            return searcher.cell_candidates(cell_bbox(cells[members[0]], deg), lons[members], lats[members],
                                            None if n_seasons == 1 else season)
        except Exception as err:  # a failed search costs its cell's points, never the job
            return err

    threads = min(int(getattr(searcher, "search_threads", 1) or 1), len(jobs))
    if threads > 1:
        with ThreadPoolExecutor(threads, thread_name_prefix="cell-search") as pool:
            answers = list(pool.map(search, jobs))
    else:
        answers = [search(job) for job in jobs]
    for (members, season), found in zip(jobs, answers):
        idx = members * n_seasons + season
        if isinstance(found, Exception):
            fail(idx, found)
            continue
        for i, f in zip(idx, found):
            cands[i] = f
    return cands


#: Points per index part: one Ray task and one stored part file (``index/_parts/<set>/<k>.parquet``).
#: Fixed, so that the parts (and which points share a search and an SCL read) do not depend on the
#: cluster's size; large enough that a part's points share cells and scenes, small enough that
#: losing the driver loses little work (a rerun reuses every finished part).
INDEX_PART = 1024
INDEX_BATCH = INDEX_PART  # the name older code and benches use


def spatial_batches(points: pd.DataFrame, size: int = INDEX_PART, cell_deg: float = CELL_DEG) -> list[pd.DataFrame]:
    """Points cut into parts of whole search cells (:func:`search.search_cells`), deterministic.

    Cells are taken in (row, column) order and packed into parts of at most ``size`` points, so
    each cell is searched once, by the part that holds it. A cell with more than ``size`` points
    is split into parts of its own (``ceil(n / size)`` near-equal ones, by point id), each of
    which searches it: a few more requests for very dense cells, in exchange for parts that stay
    small enough to lose. Within a part points are in (cell, point id) order.
    """
    if not len(points):
        return []
    cells = search_cells(points["lon"].to_numpy(dtype=np.float64), points["lat"].to_numpy(dtype=np.float64),
                         cell_deg)
    order = points.assign(_cy=cells[:, 0], _cx=cells[:, 1])
    order = order.sort_values(["_cy", "_cx", "point_id"], kind="stable").reset_index(drop=True)
    sizes = order.groupby(["_cy", "_cx"], sort=False).size().to_numpy()
    order = order.drop(columns=["_cy", "_cx"])
    parts, start, part_start = [], 0, 0
    for n in sizes:
        if n > size:  # a dense cell: flush, then its own parts
            if start > part_start:
                parts.append((part_start, start))
            pieces = -(-n // size)
            edges = [start + (n * j) // pieces for j in range(pieces + 1)]
            parts.extend(zip(edges[:-1], edges[1:]))
            part_start = start = start + n
            continue
        if start + n - part_start > size:
            parts.append((part_start, start))
            part_start = start
        start += n
    if start > part_start:
        parts.append((part_start, start))
    return [order.iloc[a:b] for a, b in parts]


def _screen_scene(item: dict, members: list[int], rows: list[dict], reasons: list[list[str]],
                  items: dict, adapter: CatalogAdapter, spec: ChipSpec) -> None:
    """One candidate scene for several points: chip windows, one SCL read, accept or note why not."""
    try:
        grid = C.scene_grid(item, adapter, spec.resolution_m)
        wins = dict(zip(members, C.chip_windows(grid, [rows[i]["lon"] for i in members],
                                                [rows[i]["lat"] for i in members], spec.size_px)))
        inside = [i for i in members if wins[i] is not None]
        for i in members:
            if wins[i] is None:
                reasons[i].append(f"{item['id']}: point outside scene grid")
        if not inside:
            return
        scl = C.read_scl(item, adapter, [wins[i] for i in inside], spec.size_px, spec.resolution_m)
    except Exception as err:  # a bad scene costs the points that reached it, never the job
        for i in members:
            rows[i].update(status="failed", reason=redact(f"{type(err).__name__}: {err}"), failure=failure_kind(err))
        return
    scl = scl.astype(np.uint8, copy=False)
    cloud = C.SCL_CLOUDY_LUT[scl].mean(axis=(1, 2))
    nodata = C.SCL_NODATA_LUT[scl].mean(axis=(1, 2))
    missing = None
    try:
        for band in spec.bands:  # fail early, naming the band, if an asset is missing
            adapter.asset_key(item, band)
    except Exception as err:  # the item lacks a band: no retry will add it
        missing = redact(f"{type(err).__name__}: {err}")
    for k, i in enumerate(inside):
        if cloud[k] > spec.max_cloud_fraction:
            reasons[i].append(f"cloud {cloud[k]:.2f} > {spec.max_cloud_fraction}")
            continue
        if nodata[k] > spec.max_nodata_fraction:
            reasons[i].append(f"nodata {nodata[k]:.2f} > {spec.max_nodata_fraction}")
            continue
        if missing is not None:
            rows[i].update(status="failed", reason=missing, failure=PERMANENT)
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


# ----------------------------------------------------------------------------- lineage of the inputs
def _local(uri: str | None) -> str | None:
    """A URI as lineage sees it: remote ones whole, local ones by file name (the synthetic archive
    and its items live in a cache folder whose place may differ between machines and runs)."""
    if uri is None:
        return None
    uri = str(uri)
    return uri if "://" in uri and not uri.startswith("file://") else "local:" + uri.rsplit("/", 1)[-1]


def describe_search(searcher) -> dict:
    """What decides the scenes a searcher returns: its query, and for in-memory catalogs their
    items (without hrefs, which name a machine's folders)."""
    if hasattr(searcher, "describe"):
        return searcher.describe()
    out = {"type": type(searcher).__name__}
    for k in ("url", "collection", "datetime", "max_cloud", "max_items", "seasons"):
        if hasattr(searcher, k):
            out[k] = getattr(searcher, k)
    if isinstance(out.get("url"), str):
        out["url"] = _local(out["url"])
    items = getattr(searcher, "items", None)
    if items is not None:
        out["items"] = lineage.digest([{k: v for k, v in it.items() if k not in ("assets", "links")}
                                       | {"assets": sorted(it.get("assets", {}))} for it in items])
        for k in ("start", "end"):
            out[k] = str(getattr(searcher, k, None))
    return out


def describe_landcover(lc: LandcoverSource | None) -> dict | None:
    if lc is None:
        return None
    out = {"type": type(lc).__name__, "codes": list(lc.codes), "names": list(lc.names)}
    for k in ("href", "collection", "url", "kind", "asset", "datetime", "catalog"):
        if hasattr(lc, k):
            v = getattr(lc, k)
            out[k] = _local(v) if k in ("href", "url") else v
    return out


def source_inputs(searcher, adapter: CatalogAdapter, landcover: LandcoverSource | None) -> dict:
    """What decides a set's scenes (``"index"``) and, besides its rows and the chip spec, its
    chunks' bytes (``"chunks"``). Searchers and land-cover sources built from a config carry it
    in the config's names (``search.stac_lineage``: a rerun then says ``stac.datetime changed``);
    for others it is derived from the objects."""
    stac = getattr(searcher, "lineage", None)
    lc = getattr(landcover, "lineage", None) if landcover is not None else None
    if lc is None and landcover is not None:
        lc = describe_landcover(landcover)
    if stac is None:
        return {"index": {"search": describe_search(searcher), "catalog": lineage.plain(adapter)},
                "chunks": {"catalog": lineage.plain(adapter), "landcover": lc}}
    chunks = {k: stac[k] for k in ("kind", "url", "catalog", "collection", "synthetic") if k in stac}
    return {"index": {"stac": stac}, "chunks": {"stac": {**chunks, "landcover": lc}}}


def index_inputs(points: pd.DataFrame, source: dict, spec: ChipSpec) -> dict:
    """The lineage record of a set's chip index: its points, the search (``source``, see
    :func:`source_inputs`) and the chip fields that decide a chip's window and acceptance."""
    chips = {k: getattr(spec, k) for k in ("bands", "size_px", "resolution_m", "max_cloud_fraction",
                                           "max_nodata_fraction")}
    return lineage.record({"version": INDEX_VERSION, "points": frame_digest(points), "chips": chips, **source})


def chunk_context(source: dict) -> dict:
    """What besides its rows and the chip spec shapes a STAC chunk's bytes."""
    return {"reader": "stac-scenes", "nodata": C.NODATA_RULE, **source}


# ----------------------------------------------------------------------------- index in parts
def _parts_dir(root: str, set_name: str) -> str:
    return storage.join(root, "index", "_parts", set_name)


def part_uri(root: str, set_name: str, part: int) -> str:
    return storage.join(_parts_dir(root, set_name), f"{part:06d}.parquet")


def part_record(index_rec: dict, points: pd.DataFrame) -> dict:
    return lineage.record({"index": index_rec["digest"], "points": points["point_id"].astype(str).tolist()})


def index_part(task: dict, root: str, set_name: str, searcher, adapter: CatalogAdapter, spec: ChipSpec,
               force: bool = False, retry_failed: bool = False) -> dict:
    """Index one part's points and store the part (reusing a stored part whose lineage matches
    and that holds no failure to retry). Runs in a Ray task; returns a small record."""
    points = pickle.loads(task["points"])
    uri = part_uri(root, set_name, task["part"])
    rec = json.loads(task["record"])
    if not force and lineage.why_redo(lineage.of_parquet(uri), rec) is None:
        kinds = storage.read_table(uri, columns=["status", "failure"]).to_pandas()
        failed = kinds[kinds["status"] == "failed"]["failure"]
        if not any(retryable(k, retry_failed) for k in failed):
            return {"part": task["part"], "written": False}
    cpu, timings = time.process_time(), {}
    df = index_points(points, searcher, adapter, spec, timings)
    storage.write_table(lineage.attach(pa.Table.from_pandas(df, preserve_index=False), rec), uri)
    return {"part": task["part"], "written": True, "cpu_s": time.process_time() - cpu, **timings}


def build_index(root: str, set_name: str, points: pd.DataFrame, searcher, adapter: CatalogAdapter, spec: ChipSpec,
                index_rec: dict, parallelism: int, force: bool = False, retry_failed: bool = False,
                stats: dict | None = None) -> tuple[pd.DataFrame, int]:
    """The chip index of a set from its parts: each part indexed in a Ray task and stored as it
    finishes, so a killed driver loses only the parts in flight. Returns (index with
    ``items_json``, parts written).

    Parts are whole search cells (:func:`spatial_batches`), so a cell is searched once. The
    searcher's request budget is made the job's (``share_budget``: one actor for all tasks)
    before the tasks start; ``parallelism`` is the tasks in flight (:func:`index_parallelism`).
    ``stats``, when given, receives the parts, parts written and the seconds the tasks spent
    searching and screening and their CPU seconds (summed over tasks).
    """
    import ray

    # INDEX_PART looked up now: tests shrink it.
    batches = spatial_batches(points, INDEX_PART, float(getattr(searcher, "cell_deg", CELL_DEG)))
    tasks = [{"part": k, "points": pickle.dumps(b, protocol=5), "record": json.dumps(part_record(index_rec, b))}
             for k, b in enumerate(batches)]
    for uri in storage.listdir(_parts_dir(root, set_name), suffix=".parquet"):  # parts of a larger config
        if S.TMP_MARK not in uri and int(uri.rsplit("/", 1)[-1].split(".")[0]) >= len(tasks):
            storage.remove(uri)
    results = []
    if tasks:
        if hasattr(searcher, "share_budget"):  # one request budget for every task of the job
            searcher.share_budget()

        def _do(task: dict) -> dict:
            return index_part(task, root, set_name, searcher, adapter, spec, force, retry_failed)

        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        results = ds.map(_do, compute=ray.data.TaskPoolStrategy(size=max(1, min(parallelism, len(tasks)))),
                         num_cpus=1).take_all()
    uris = [part_uri(root, set_name, t["part"]) for t in tasks]
    frames = [storage.read_table(u).to_pandas() for u in uris]
    index = (pd.concat(frames, ignore_index=True) if frames
             else pd.DataFrame(columns=INDEX_COLUMNS + ["items_json"]))
    del frames  # one copy of the rows less while sorting (the driver holds every row of the set)
    index = index.sort_values(["point_id", "chip_id"], ignore_index=True)
    written = sum(1 for r in results if r["written"])
    summed = {k: float(sum(r.get(k, 0.0) for r in results)) for k in ("search_s", "screen_s", "cpu_s")}
    log.info("index %s: %d parts of whole search cells, %d searched (search %.1f s, SCL screening %.1f s, "
             "summed over tasks), %d reused", set_name, len(tasks), written, summed["search_s"], summed["screen_s"],
             len(tasks) - written)
    if stats is not None:
        stats.update(parts=len(tasks), written=written, **summed)
    return index, written


def ensure_index(root: str, set_name: str, points: pd.DataFrame, searcher, adapter: CatalogAdapter, spec: ChipSpec,
                 index_rec: dict, parallelism: int, force: bool = False, retry_failed: bool = False,
                 stats: dict | None = None) -> tuple[pd.DataFrame, dict[str, str], str | None]:
    """The set's chip index, reused when its lineage matches ``index_rec`` (and it holds no
    failure to retry), else built (:func:`build_index`) and stored with its scene list.

    Returns (index without ``items_json``, item JSON by id, why it was rebuilt or None);
    ``stats``: see :func:`build_index`.
    """
    index_uri = storage.join(root, "index", f"{set_name}.parquet")
    items_uri = storage.join(root, "index", f"{set_name}-items.parquet")
    why = lineage.why_redo(lineage.of_parquet(index_uri), index_rec, force)
    index = None
    if why is None and storage.exists(items_uri):
        index = storage.read_table(index_uri).to_pandas()
        if n_retry := _retry_count(index, retry_failed):
            why, index = f"{n_retry} failed chips to retry", None
    elif why is None:
        why = "its scene list is missing"
    if index is None:
        log.info("ingest %s: chip index: %s → searching scenes for %d points", set_name, why, len(points))
        index, _ = build_index(root, set_name, points, searcher, adapter, spec, index_rec, parallelism, force,
                               retry_failed, stats)
        items_table = index.dropna(subset=["items_json"]).drop_duplicates("item_id")[["item_id", "items_json"]]
        storage.write_table(pa.Table.from_pandas(items_table, preserve_index=False), items_uri)
        index = index.drop(columns=["items_json"])
        storage.write_table(lineage.attach(pa.Table.from_pandas(index, preserve_index=False), index_rec), index_uri)
        log.info("ingest %s: chip index written", set_name)
        return index, dict(zip(items_table["item_id"], items_table["items_json"])), why
    log.info("ingest %s: chip index reused (inputs unchanged)", set_name)
    items_df = storage.read_table(items_uri).to_pandas()
    return index, dict(zip(items_df["item_id"], items_df["items_json"])), why


def _retry_count(index: pd.DataFrame, retry_failed: bool) -> int:
    if "failure" not in index.columns:
        return 0
    failed = index.loc[index["status"] == "failed", "failure"]
    return int(sum(retryable(k, retry_failed) for k in failed))


# ----------------------------------------------------------------------------- chunks
def write_chunk(rows: pd.DataFrame, items: dict[str, dict], root: str, set_name: str, region: str,
                chunk: int, adapter: CatalogAdapter, spec: ChipSpec,
                landcover: LandcoverSource | None = None, *, force: bool = False,
                retry_failed: bool = False, context: dict | None = None) -> dict:
    """Read one chunk's chips scene by scene and write its Parquet (+ tar), or reuse the stored
    one (see :func:`pw_ray.ingest.chunks.write_chunk`).

    ``landcover``: each chip's class fractions (``lc_fractions``, in ``landcover.names`` order)
    and its dominant class come from it; without it chips keep the point's planned label.
    """
    def read_scene(grp: pd.DataFrame, sw: Stopwatch):
        item = items[grp["item_id"].iloc[0]]
        wins = list(zip(grp["row_off"].astype(int), grp["col_off"].astype(int)))
        with C.gdal_env():
            with sw("read"):
                sc = C.read_scene_chips(item, adapter, wins, spec.bands, spec.size_px, spec.resampling,
                                        spec.resolution_m)
                cloud, nodata = sc.cloud_fraction, sc.nodata_fraction  # once per scene, not per chip
            lc = None
            if landcover is not None:
                with sw("landcover"):
                    lc = landcover.fractions(C.scene_grid(item, adapter, spec.resolution_m), wins, spec.size_px)
        metas = []
        for i, r in enumerate(grp.itertuples(index=False)):
            frac = lc[i] if lc is not None else np.zeros(0, np.float32)
            lc_name = r.landcover
            if lc is not None and frac.sum() > 0:
                lc_name = landcover.names[int(np.argmax(frac))]
            metas.append(dict(
                chip_id=str(r.chip_id), set=set_name, point_id=r.point_id, lon=float(r.lon),
                lat=float(r.lat), region=r.region, biome=r.biome, landcover=lc_name,
                lc_fractions=frac.tolist(), item_id=item["id"], collection=r.collection,
                datetime=r.datetime, epsg=int(r.epsg), row_off=int(r.row_off), col_off=int(r.col_off),
                cloud_fraction=float(cloud[i]), nodata_fraction=float(nodata[i]),
                baseline=r.baseline, offset_applied=int(sc.offsets[spec.bands[0]]),
            ))
        return sc.pixels, metas

    return write_any_chunk(rows, "item_id", read_scene, root=root, set_name=set_name, region=region, chunk=chunk,
                           spec=spec, context=chunk_context(context if context is not None
                                                            else source_inputs(None, adapter, landcover)["chunks"]),
                           force=force,
                           retry_failed=retry_failed)


def chunk_tasks(chunked: pd.DataFrame, items_json: dict[str, str]) -> list[dict]:
    """One task record per chunk of ``assign_chunks``: its chips (a pickled DataFrame) and the
    JSON of only its scenes, so a task deserialises its chunk, not the whole set's index and items.

    Largest chunks first (most scenes, then most chips; ties by region and chunk): tasks start in
    this order, so the last wave of a job is short chunks and no worker finishes long after the
    others (longest-processing-time-first). The order decides only when a chunk runs, never
    what it holds.
    """
    tasks = [{"region": r, "chunk": int(k), "rows": pickle.dumps(g.drop(columns=["chunk"]), protocol=5),
              "items": json.dumps({i: items_json[i] for i in g["item_id"].unique()}),
              "scenes": int(g["item_id"].nunique()), "chips": len(g)}
             for (r, k), g in chunked.groupby(["region", "chunk"], sort=True)]
    return sorted(tasks, key=lambda t: (-t["scenes"], -t["chips"], t["region"], t["chunk"]))


def run_chunk_task(task: dict, root: str, set_name: str, adapter: CatalogAdapter, spec: ChipSpec,
                   landcover: LandcoverSource | None = None, force: bool = False,
                   retry_failed: bool = False, context: dict | None = None) -> dict:
    """:func:`write_chunk` for one record of :func:`chunk_tasks`."""
    items = {i: json.loads(j) for i, j in json.loads(task["items"]).items()}
    return write_chunk(pickle.loads(task["rows"]), items, root, set_name, task["region"], task["chunk"],
                       adapter, spec, landcover, force=force, retry_failed=retry_failed, context=context)


#: Index tasks in flight per request slot of the STAC budget (``stac.max_concurrent_requests``).
#: A part's searches are a small share of its time (a few paged cell searches, then SCL reads of
#: its scenes from the COG store, which the budget does not limit), so several tasks share a
#: slot; more tasks than this would mostly hold a CPU while they wait for the budget.
INDEX_TASKS_PER_REQUEST_SLOT = 4


def index_parallelism(n_parts: int, cluster_cpus: float, override: int | None = None,
                      max_concurrent_requests: int | None = None, *, max_cpus: float | None = None) -> int:
    """Index tasks in flight: what :func:`ingest_parallelism` gives for ``n_parts`` work units
    (the cluster decides the width), bounded by the STAC request budget:
    :data:`INDEX_TASKS_PER_REQUEST_SLOT` tasks per request slot, ``chips.ingest_parallelism``
    included; no bound for in-memory catalogs, which make no requests. The bound applies to the
    index phase only; the shard phase reads COGs, not the API, and keeps its own width.
    """
    limit = INDEX_TASKS_PER_REQUEST_SLOT * int(max_concurrent_requests) if max_concurrent_requests else None
    width = ingest_parallelism(n_parts, cluster_cpus, override, max_cpus=max_cpus, request_limit=limit)
    return max(1, min(width, limit) if limit else width)


def ingest_parallelism(n_units: int, cluster_cpus: float, override: int | None = None,
                       cap: int | None = None, *, max_cpus: float | None = None,
                       request_limit: int | None = None) -> int:
    """How many ingest tasks may be in flight at once (running, or queued in Ray for a free CPU).

    ``override`` (``chips.ingest_parallelism``) wins. Otherwise one task per work unit
    (``n_units``: chunks, index parts), up to the CPUs the cluster can grow to (``max_cpus``:
    :func:`pw_ray.cluster.discover_max_cpus`, from ``chips.ingest_max_cpus`` or the autoscaler's
    cluster YAML), never below the CPUs it has now (``cluster_cpus``). Pending tasks are the
    demand Ray's autoscaler grows the CPU pool for: sizing by today's CPUs would leave a cluster
    that starts with none at one task, and a fixed ceiling would use a few of many nodes. With
    ``max_cpus`` unknown every unit may be pending (Ray queues what the CPUs cannot run yet).
    ``cap`` and, for the index phase, ``request_limit`` (the STAC API's limit of concurrent
    requests: more tasks would only wait for it) bound the result; it is at least 1.
    """
    if override:
        return int(override)
    width = int(n_units)
    if max_cpus is not None:
        width = min(width, int(max(max_cpus, cluster_cpus)))
    for bound in (cap, request_limit):
        if bound:
            width = min(width, int(bound))
    return max(1, width)


# ----------------------------------------------------------------------------- manifest
def build_manifest(index: pd.DataFrame, chunked: pd.DataFrame, results: list[dict]) -> pd.DataFrame:
    """One row per chip: the index's verdict, overridden by the chunk writers' failures; ``shard``
    names the chunk (``<region>/<chunk>``) of every ``ok`` chip. Linear in rows and failures."""
    if "chip_id" not in index.columns:  # an index written before seasons existed
        index = index.assign(chip_id=index["point_id"])
    if "failure" not in index.columns:
        index = index.assign(failure="")
    manifest = index[[c for c in MANIFEST_COLUMNS if c != "shard"]].copy()
    manifest["failure"] = manifest["failure"].fillna("")
    failed = [f for r in results for f in json.loads(r["failed"])]
    if failed:
        f = pd.DataFrame(failed, columns=["chip_id", "reason", "failure"]).drop_duplicates("chip_id").set_index(
            "chip_id")
        hit = manifest["chip_id"].isin(f.index)
        ids = manifest.loc[hit, "chip_id"]
        manifest.loc[hit, "status"] = "failed"
        manifest.loc[hit, "reason"] = ids.map(f["reason"]).to_numpy()
        manifest.loc[hit, "failure"] = ids.map(f["failure"]).to_numpy()
    shard = pd.Series((chunked["region"].astype(str) + "/" + chunked["chunk"].astype(str)).to_numpy(),
                      index=chunked["chip_id"].to_numpy())
    manifest["shard"] = manifest["chip_id"].map(shard).where(manifest["status"] == "ok")
    return manifest


def summarise(set_name: str, manifest: pd.DataFrame, results: list[dict]) -> IngestSummary:
    """Counts, chunk reuse and the commonest failure and skip reasons of one set's ingest."""
    counts = manifest["status"].value_counts()
    failed = manifest[manifest["status"] == "failed"]
    skipped = manifest[manifest["status"] == "skipped"]
    return IngestSummary(
        set_name, len(manifest), int(counts.get("ok", 0)), int(counts.get("skipped", 0)), int(counts.get("failed", 0)),
        sum(1 for r in results if r["written"]), sum(1 for r in results if not r["written"]),
        stage_seconds(results),
        chunk_whys=dict(Counter(r["why"] for r in results if r["written"])),
        failed_transient=int((failed["failure"] == TRANSIENT).sum()),
        failed_permanent=int((failed["failure"] == PERMANENT).sum()),
        top_failures=top_reasons(failed["reason"]),
        skip_reasons=top_reasons(skipped["reason"]),
    )


# ----------------------------------------------------------------------------- the stage
def run_ingest(root: str, set_name: str, points: pd.DataFrame, searcher, adapter: CatalogAdapter,
               spec: ChipSpec, landcover: LandcoverSource | None = None,
               parallelism: int | None = None, *, force: bool = False, retry_failed: bool = False,
               source: dict | None = None) -> IngestSummary:
    """Ingest one set of points into shards under ``root`` on Ray (index parts on Ray Data, shard
    tasks on :func:`workpool.run_bounded`). Resumable.

    Reuse is decided by lineage: the index is rebuilt when its points, search, catalog or chip
    limits changed (or it holds failures to retry), a chunk is rewritten when its rows or chip
    spec changed (or it holds failures to retry); shards of chunks no longer planned are removed.
    ``force`` rebuilds and rewrites everything; ``retry_failed`` retries permanent failures too.
    ``source``: the lineage of the search and land cover (:func:`source_inputs`; derived from the
    objects when not given).
    """
    import ray

    manifest_uri = storage.join(root, "manifest", f"{set_name}.parquet")
    override = parallelism or spec.ingest_parallelism
    from pw_ray.cluster import discover_max_cpus

    max_cpus, max_cpus_from = discover_max_cpus(spec.ingest_max_cpus)
    source = source or source_inputs(searcher, adapter, landcover)
    index_rec = index_inputs(points, source["index"], spec)
    width = index_parallelism(-(-len(points) // INDEX_PART), ray.cluster_resources().get("CPU", 0), override,
                              getattr(searcher, "max_concurrent_requests", None), max_cpus=max_cpus)
    log.info("ingest %s: up to %d index tasks at once (cluster can grow to %s CPUs: %s)", set_name, width,
             "?" if max_cpus is None else f"{max_cpus:g}", max_cpus_from)
    index, items_json, why = ensure_index(root, set_name, points, searcher, adapter, spec, index_rec, width, force,
                                          retry_failed)

    if n_stale := S.remove_partial(root, set_name):
        log.info("ingest %s: removed %d temp files of writes killed mid-way", set_name, n_stale)
    if n_moved := S.adopt_legacy_layout(root, set_name):
        log.info("ingest %s: moved %d shards of the older region=<r>/ layout into parquet/<r>/", set_name, n_moved)
    chunked = assign_chunks(index, spec.chunk_size)
    tasks = chunk_tasks(chunked, items_json)
    results, shard_stats = [], {}
    if tasks:
        # Plain Ray tasks, not Ray Data: see pw_ray.ingest.workpool (no polling gap between tasks).
        cpus = ray.cluster_resources().get("CPU", 0)
        parallelism = ingest_parallelism(len(tasks), cpus, override, max_cpus=max_cpus)
        # Unless the width is the user's, a few tasks more than the CPUs wait in Ray's queue: a
        # worker that finishes a chunk is handed the next queued one at once, without a round
        # trip through this loop.
        in_flight = parallelism if override else parallelism + max(2, parallelism // 8)
        run = run_bounded(run_chunk_task, tasks, in_flight,
                          args=(root, set_name, adapter, spec, landcover, force, retry_failed, source["chunks"]))
        results = run.results
        # Tasks that could run at once: an autoscaling cluster may have grown during the phase.
        slots = max(1, min(parallelism, len(tasks), int(max(cpus, ray.cluster_resources().get("CPU", 0)))))
        shard_stats = {"start": run.start, "end": run.end, "wall_s": run.wall_s, "slots": slots,
                       **occupancy(run.times, slots, run.wall_s), "task_times": run.times}
    planned = {(t["region"], t["chunk"]) for t in tasks}
    stale = remove_stale(root, set_name, planned, spec.webdataset)
    manifest = build_manifest(index, chunked, results)
    storage.write_table(pa.Table.from_pandas(manifest, preserve_index=False), manifest_uri)
    summary = summarise(set_name, manifest, results)
    summary.index_why = "" if why is None else why
    summary.stale_removed = len(stale)
    summary.shard_tasks = shard_stats
    log.debug("ingest %s", summary.line())  # the experiment prints it (and what was reused) per set
    log.info("ingest %s: shard tasks' time: %s", set_name, summary.stages_line())
    if shard_stats:
        log.info("ingest %s: %d shard tasks in %.1f s on %d workers: busy %.0f%% of %d slots, %.2f s idle between "
                 "tasks, %.1f CPU s", set_name, shard_stats["tasks"], shard_stats["wall_s"], shard_stats["workers"],
                 100 * shard_stats["occupancy"], shard_stats["slots"], shard_stats["gaps_s"], shard_stats["cpu_s"])
    return summary
