"""Scale curves: plan → index → manifest → analyze at three set sizes against a loopback STAC API.

A real stac-fastapi-pgstac server (PostgreSQL + pgstac on loopback, ``tests/servers.py``) holds
a synthetic catalog large enough for the biggest size: land cells of 1° on the six continents,
``--places-per-cell`` scene footprints per cell, ``--revisits`` items per footprint (other
dates and cloud covers). Items share COGs: every item points at one of the 12 scenes of a small
synthetic archive (480 px at 10 m) served by nginx, moved to its place by its ``proj:transform``
and footprint. A counting proxy in front of the API counts the search requests on the server
side. For each size (points per set, spread over the six continents like ``global``, at
``--points-per-place`` points per footprint) a fresh driver process runs:

* **plan** — ``plan.plan_set`` (global, restricted to the footprints of that size);
* **index** — ``pipeline.ensure_index``: parts of whole search cells as Ray tasks, one paged
  search per cell, SCL screening of every point's candidates over HTTP;
* **chunks** — ``pipeline.assign_chunks`` of the kept chips;
* **manifest** — ``pipeline.build_manifest`` over the whole index, with 5 % of the kept chips
  reported failed by their chunks (the worst case of issue 12);
* **shards** + **analyze** — on a subset: the points of one footprint in ``--subset-every``,
  ingested with ``run_ingest`` (96 px chips, Parquet only) and measured with
  ``diversity_job.diversity_table``. Shards are the other helper's bench (bench/ingest.py); here
  they only feed analyze, whose chips/s is reported per core.

Per size it prints STAC search requests per point (counted at the proxy), the driver's peak RSS
(``ru_maxrss`` of the driver process: Ray's workers are other processes), seconds per stage,
then per stage the log-log slope against points (shards and analyze: against their chips) and
the value extrapolated to ``--target`` (700,000, the paper's set size): the larger of the straight
line through the two largest sizes (the marginal cost: a fixed start-up cost makes the log-log
slope read low at small sizes) and the largest size grown along the fitted slope. Slopes are
fitted on CPU seconds, which other work on a shared machine does not inflate: the driver's own
for the stages that run in it (plan, chunks, manifest), the driver's plus all of Ray's under it
for the stages that run tasks (``tree_cpu_s``); the extrapolated seconds are wall seconds on the
cores used. Driver memory is affine in the rows it holds, so its extrapolation is the line, per
stage (RSS sampled every 20 ms), the largest: the process's own peak can sit in start-up.
Stages with a slope above 1.15 (and at least 0.2 CPU seconds at the largest size) are listed as
``superlinear``.

    python bench/scale.py                                       # 5k, 20k, 80k points (~10–15 min on 2 cores)
    python bench/scale.py --sizes 20000,80000,320000 --places-per-cell 4   # bigger (needs more cells per continent)
    python bench/scale.py --figure docs/img/scale.png           # and the curves as a figure

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.proctree import tree_cpu_s  # noqa: E402

import numpy as np  # noqa: E402

log = logging.getLogger("pw_ray.bench.scale")

DEFAULT_SIZES = (5_000, 20_000, 80_000)
TARGET = 700_000
SUPERLINEAR_SLOPE = 1.15
#: Stages whose seconds are fitted (shards and analyze run on a subset; analyze is reported as chips/s).
STAGES = ("plan", "index", "chunks", "manifest", "shards", "analyze")
#: What each stage's slope is fitted on. Wall clock on a machine shared with other work moves
#: with their load; CPU seconds do not: the driver's own for the stages that run on it, the
#: driver's and all of Ray's under it (``tree_cpu_s``) for the stages that run tasks.
FIT_BASIS = {"plan": "driver_cpu", "index": "tree_cpu", "chunks": "driver_cpu", "manifest": "driver_cpu",
             "shards": "tree_cpu", "analyze": "tree_cpu"}
#: Stages run on a subset of the points: fitted against their chips, extrapolated to TARGET chips.
SUBSET_STAGES = ("shards", "analyze")
#: A slope is only called superlinear when the stage takes at least this long at the largest size
#: (below it, timer noise decides the slope).
MIN_FLAG_S = 0.2
COLLECTION = "sentinel-2-l2a"
DATES = ("2023-02-14", "2023-06-10", "2023-10-03")


# ----------------------------------------------------------------------------- the catalog
def land_cells(per_region: int, places_per_cell: int, seed: int = 0) -> dict[str, list[tuple[int, int]]]:
    """``per_region`` 1° cells per continent whose footprints all lie well on that continent, in a
    seeded order (the first cells of a bigger run are those of a smaller one)."""
    from pw_ray.config import CONTINENTS
    from pw_ray.regions import regions_of

    rows, cols = np.meshgrid(np.arange(-56, 72), np.arange(-180, 180), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    region, ok = None, np.ones(rows.size, dtype=bool)
    for lon, lat in _place_offsets(places_per_cell):
        for dx, dy in ((0, 0), (-0.04, -0.04), (0.04, 0.04), (-0.04, 0.04), (0.04, -0.04)):
            r = regions_of(cols + lon + dx, rows + lat + dy, tolerance_deg=0)
            region = r if region is None else region
            ok &= (r == region) & (r != None)  # noqa: E711 (object array)
    rng = np.random.default_rng(seed)
    out = {}
    for c in CONTINENTS:
        idx = np.flatnonzero(ok & (region == c))
        if len(idx) < per_region:
            raise SystemExit(f"{c}: only {len(idx)} land cells hold {places_per_cell} footprints, {per_region} "
                             f"needed; raise --places-per-cell or --points-per-place")
        idx = idx[rng.permutation(len(idx))[:per_region]]
        out[c] = [(int(rows[i]), int(cols[i])) for i in idx]
    return out


def _place_offsets(k: int) -> list[tuple[float, float]]:
    """Footprint centres inside a cell (lon, lat offsets from its south-west corner), apart."""
    side = math.ceil(math.sqrt(k))
    return [((i % side + 0.5) / side, (i // side + 0.5) / side) for i in range(k)]


def clone_item(base: dict, lon: float, lat: float, item_id: str, cloud: float, day: str, href_from: str,
               href_to: str) -> dict:
    """``base`` moved to (lon, lat): its grid (``proj:transform`` of every asset, ``proj:epsg``),
    footprint and bbox; its COG hrefs rewritten from ``href_from`` to ``href_to`` (the same COGs)."""
    from rasterio.warp import transform as warp_transform

    from pw_ray.synthetic.scenes import bbox, corners, polygon

    zone = int((lon + 180) // 6) + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    size = int(base["assets"]["B02"]["proj:shape"][0])
    (x,), (y,) = warp_transform("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    half = size * 10 / 2
    origin = (math.floor((x - half) / 60) * 60.0, math.ceil((y + half) / 60) * 60.0)
    cs = corners(SimpleNamespace(origin=origin, epsg=epsg), size)
    item = json.loads(json.dumps(base))
    item["id"] = item_id
    item["geometry"] = polygon(cs, ("bl", "bm", "br", "tr", "tm", "tl"))
    item["bbox"] = bbox(cs)
    props = item["properties"]
    props.update({"proj:epsg": epsg, "eo:cloud_cover": cloud, "datetime": f"{day}T10:30:00Z"})
    for asset in item["assets"].values():
        res = asset["proj:transform"][0]
        asset["proj:transform"] = [res, 0.0, origin[0], 0.0, -res, origin[1]]
        if asset["href"].startswith(href_from):
            asset["href"] = href_to + asset["href"][len(href_from):]
    item["links"] = []
    return item


def catalog(base_items: list[dict], cells: dict[str, list[tuple[int, int]]], places_per_cell: int, revisits: int,
            href_from: str, href_to: str, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(items, places): ``revisits`` items per footprint; places as ``{id, region, lon, lat, rank,
    footprint}`` where ``rank`` orders the places of a region (a size takes each region's first ones)."""
    rng = np.random.default_rng([seed, 1])
    items, places = [], []
    for region, region_cells in cells.items():
        for ci, (row, col) in enumerate(region_cells):
            for k, (dx, dy) in enumerate(_place_offsets(places_per_cell)):
                p = len(places)
                lon, lat = col + dx, row + dy
                base = base_items[p % len(base_items)]
                for r in range(revisits):
                    cloud = round(float(rng.uniform(0, 20 + 25 * r)), 3)  # later revisits: cloudier
                    items.append(clone_item(base, lon, lat, f"BENCH-P{p:06d}-R{r}", cloud, DATES[r % len(DATES)],
                                            href_from, href_to))
                places.append({"id": p, "region": region, "lon": lon, "lat": lat, "rank": ci * places_per_cell + k,
                               "footprint": items[-1]["geometry"]})
    return items, places


def load_catalog(dsn: str, collection_path: Path, items: list[dict]) -> float:
    """Load the collection and items into pgstac; seconds taken."""
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    t = time.perf_counter()
    coll = json.loads(Path(collection_path).read_text())
    coll["links"] = []
    coll["extent"]["spatial"]["bbox"] = [[-180.0, -90.0, 180.0, 90.0]]
    coll["extent"]["temporal"]["interval"] = [["2023-01-01T00:00:00Z", "2023-12-31T23:59:59Z"]]
    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db)
        loader.load_collections(iter([coll]), Methods.upsert)
        loader.load_items(iter(items), Methods.insert)
    return time.perf_counter() - t


# ----------------------------------------------------------------------------- one size, one driver
class RssSampler:
    """Peak RSS of this process per stage (``/proc/self/status``, every 20 ms)."""

    def __init__(self):
        self.stage, self.peaks, self._stop = "start", {}, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    @staticmethod
    def rss_mb() -> float:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def sample(self):
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), self.rss_mb())

    def _run(self):
        while not self._stop.is_set():
            self.sample()
            time.sleep(0.02)

    def stop(self):
        self._stop.set()
        self._t.join()


def _search_requests(control_url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(control_url, timeout=30) as r:
        snap = json.loads(r.read())
    return sum(1 for key, _ in snap["log"] if key.startswith("POST /search"))


def run_size(args: dict) -> dict:
    """One size in this (fresh) driver process; returns its figures."""
    import ray
    from shapely.geometry import shape

    from pw_ray.analyze.diversity_job import diversity_table
    from pw_ray.config import ChipSpec, PretrainSet
    from pw_ray.ingest import pipeline as P
    from pw_ray.ingest import shards as S
    from pw_ray.ingest.catalogs import adapter_for
    from pw_ray.ingest.search import ApiSearch, search_cells
    from pw_ray.plan import plan_set

    rss = RssSampler()
    n, root, name = int(args["points"]), args["root"], f"scale{args['points']}"
    ray.init(num_cpus=args["cores"], include_dashboard=False, logging_level="ERROR",
             _temp_dir=args["ray_tmp"], runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    spec = ChipSpec(size_px=96, max_cloud_fraction=0.3, max_nodata_fraction=0.1, chunk_size=256, webdataset=False)
    half_chip_deg = spec.size_px * spec.resolution_m / 2 / 111_000
    places = json.loads(Path(args["places"]).read_text())
    coverage: dict[str, list] = {}
    for p in places:  # the footprint, shrunk by half a chip: chips lie inside their scene (as experiment.source)
        coverage.setdefault(p["region"], []).append(shape(p["footprint"]).buffer(-half_chip_deg))
    out: dict = {"points": n, "places": len(places)}
    sec: dict[str, float] = {}
    cpu: dict[str, float] = {}  # this driver process's CPU seconds per stage
    tree: dict[str, float] = {}  # CPU seconds of the driver and all of Ray under it, per stage

    class stage:  # noqa: N801 (a with-block per stage: wall and driver CPU seconds, RSS peak)
        def __init__(self, key):
            self.key = key

        def __enter__(self):
            rss.stage = self.key
            rss.sample()  # a stage shorter than the sampling period has its samples too
            self.t, self.c, self.tree = time.perf_counter(), time.process_time(), tree_cpu_s(reaped=True)

        def __exit__(self, *exc):
            rss.sample()
            sec[self.key] = time.perf_counter() - self.t
            cpu[self.key] = time.process_time() - self.c
            tree[self.key] = tree_cpu_s(reaped=True) - self.tree

    with stage("plan"):
        points = plan_set(PretrainSet(name=name, region="global", size=n, seed=0), coverage)

    searcher = ApiSearch(args["api"], COLLECTION, "2023-01-01/2023-12-31", 60.0, 5, timeout_s=60,
                         max_concurrent_requests=args["max_concurrent_requests"], max_requests_per_s=None)
    adapter = adapter_for("planetary-computer")
    rec = P.index_inputs(points, P.source_inputs(searcher, adapter, None)["index"], spec)
    n_parts = len(P.spatial_batches(points, P.INDEX_PART))
    width = P.index_parallelism(n_parts, ray.cluster_resources().get("CPU", 0), None, searcher.max_concurrent_requests)
    before = _search_requests(args["control"])
    index_stats: dict = {}
    with stage("index"):
        index, items_json, _ = P.ensure_index(root, name, points, searcher, adapter, spec, rec, width,
                                              stats=index_stats)
    searches = _search_requests(args["control"]) - before
    cells = len({tuple(c) for c in search_cells(points["lon"], points["lat"])})
    out.update(cells=cells, parts=n_parts, index_width=width, search_requests=searches,
               index_task_cpu_s=round(index_stats["cpu_s"], 3), index_search_s=round(index_stats["search_s"], 3),
               index_screen_s=round(index_stats["screen_s"], 3),
               requests_per_point=searches / n, ok=int((index["status"] == "ok").sum()),
               skipped=int((index["status"] == "skipped").sum()), failed=int((index["status"] == "failed").sum()))

    with stage("chunks"):
        chunked = P.assign_chunks(index, spec.chunk_size)
    # 5 % of the kept chips failed in their chunks (results as the chunk tasks return them).
    rng = np.random.default_rng(0)
    lost = chunked.iloc[np.sort(rng.choice(len(chunked), size=len(chunked) // 20, replace=False))]
    results = [{"failed": json.dumps([[c, "RasterioIOError: HTTP response code: 503", "transient"]
                                      for c in g["chip_id"]])} for _, g in lost.groupby(["region", "chunk"])]
    with stage("manifest"):
        manifest = P.build_manifest(index, chunked, results)
    assert len(manifest) == len(index) and (manifest["status"] == "failed").sum() >= len(lost)

    # Shards and analyze on a subset: the points whose chip is from one footprint in subset_every.
    ok = index[index["status"] == "ok"]
    place_of = ok["item_id"].str.extract(r"BENCH-P(\d+)-R")[0].astype(int)
    chosen = set(ok.loc[place_of % int(args["subset_every"]) == 0, "point_id"])
    subset = points[points["point_id"].isin(chosen)].reset_index(drop=True)
    with stage("shards"):
        summary = P.run_ingest(root, f"{name}-sub", subset, searcher, adapter, spec, None)
    files = S.shard_files(root, f"{name}-sub")
    with stage("analyze"):
        table, _ = diversity_table({f"{name}-sub": files})
    chips = int(table["n_chips"].iloc[0])
    out.update(shard_chips=summary.ok, shard_failed=summary.failed, shard_skipped=summary.skipped,
               shard_top_failures=summary.top_failures, analyze_chips=chips,
               analyze_chips_per_s=chips / sec["analyze"] if sec["analyze"] else float("nan"),
               analyze_chips_per_s_per_core=chips / sec["analyze"] / args["cores"])
    rss.stop()
    out["stage_s"] = {k: round(v, 3) for k, v in sec.items()}
    out["stage_cpu_s"] = {k: round(v, 3) for k, v in cpu.items()}
    out["stage_tree_cpu_s"] = {k: round(v, 3) for k, v in tree.items()}
    out["shard_stage_s"] = {k: round(v, 3) for k, v in summary.stage_s.items()}
    out["stage_peak_mb"] = {k: round(v, 1) for k, v in rss.peaks.items()}
    out["driver_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["index_rows"], out["scenes"] = len(index), len(items_json)
    ray.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------- fits
def loglog_slope(x, y) -> float:
    x, y = np.log(np.asarray(x, float)), np.log(np.maximum(np.asarray(y, float), 1e-9))
    return float(np.polyfit(x, y, 1)[0])


def extrapolate(x, y, target: float) -> dict:
    """Power law through all sizes and the line through the two largest; ``value``: the larger
    (for stage seconds, :func:`main` replaces it with the line or the CPU-slope growth)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    slope = loglog_slope(x, y)
    a = float(np.polyfit(np.log(x), np.log(np.maximum(y, 1e-9)), 1)[1])
    power = math.exp(a) * target ** slope
    line = y[-1] + (y[-1] - y[-2]) / (x[-1] - x[-2]) * (target - x[-1])
    return {"slope": round(slope, 3), "power_law": power, "line": line, "value": max(power, line)}


def figure(rows: list[dict], fits: dict, target: int, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.array([r["points"] for r in rows], float)
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for stage in STAGES:
        xs = np.array([_x(r, stage) for r in rows], float)
        y = np.array([r["stage_s"][stage] for r in rows])
        f = fits[stage]
        what = " (vs chips)" if stage in SUBSET_STAGES else ""
        line, = ax.loglog(xs, y, "o-" if not what else "s--", label=f"{stage}{what}, slope {f['slope']:.2f}")
        ax.loglog([xs[-1], target], [y[-1], f["value"]], ":", color=line.get_color(), alpha=0.6)
    ax.axvline(target, color="grey", lw=0.8)
    ax.set_xlabel("points per set (shards, analyze: chips)")
    ax.set_ylabel("wall seconds (2 cores, shared machine)")
    ax.set_title("seconds per stage; dotted: extrapolated to 700k")
    ax.legend(fontsize=8)
    mem = np.array([r["driver_peak_mb"] for r in rows])
    bx.plot(x / 1000, mem, "o-", label="driver peak RSS (process)")
    stage = fits["driver_peak_mb"].get("stage")
    if stage:
        sm = np.array([r["stage_peak_mb"].get(stage, np.nan) for r in rows])
        bx.plot(x / 1000, sm, "o--", color="C1", label=f"driver RSS in {stage}")
        bx.plot([x[-1] / 1000, target / 1000], [sm[-1], fits["driver_peak_mb"]["line"]], ":", color="C1")
    bx.axhline(4096, color="C3", lw=0.8, label="goal 4 GB")
    bx.set_ylim(0, 4600)
    req = [r["requests_per_point"] for r in rows]
    bx2 = bx.twinx()
    bx2.plot(x / 1000, req, "s--", color="C2", label="search requests per point")
    bx2.set_ylim(0, max(0.06, max(req) * 1.2))
    bx2.axhline(0.05, color="C2", lw=0.6, ls=":")
    bx.set_xlabel("thousand points per set")
    bx.set_ylabel("MB")
    bx2.set_ylabel("requests per point")
    bx.set_title("driver memory and STAC requests")
    bx.legend(loc="upper left", fontsize=8)
    bx2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    log.info("figure written to %s", path)


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="points per set, comma-separated")
    ap.add_argument("--points-per-place", type=int, default=25, help="points per scene footprint (≥ 20)")
    ap.add_argument("--places-per-cell", type=int, default=2, help="scene footprints per 1° cell")
    ap.add_argument("--revisits", type=int, default=3, help="items per footprint (dates, cloud covers)")
    ap.add_argument("--subset-every", type=int, default=10, help="shards + analyze for one footprint in N")
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--max-concurrent-requests", type=int, default=8)
    ap.add_argument("--target", type=int, default=TARGET, help="points per set to extrapolate to")
    ap.add_argument("--figure", default=None, help="write the curves as a PNG here (e.g. docs/img/scale.png)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("ray", "pw_ray.ingest", "pw_ray.analyze", "pw_ray.plan", "pypgstac", "tests.servers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.child:
        print(json.dumps(run_size(json.loads(args.child))), flush=True)
        return 0

    from pw_ray.config import SyntheticArchive
    from pw_ray.synthetic import build_archive, load_items
    from tests.servers import CogServer, FaultPlan, FaultProxy, Postgres, StacApiServer, create_pgstac_db

    sizes = sorted(int(s) for s in args.sizes.split(","))
    if args.points_per_place < 20:
        raise SystemExit("--points-per-place must be ≥ 20 (the density the issue asks for)")
    per_region = math.ceil(max(sizes) / 6 / args.points_per_place / args.places_per_cell)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pwray-scale-"))
    try:
        info = build_archive(work / "archive", SyntheticArchive(seed=0, scenes_per_region=2, scene_px=480))
        base = load_items(info)
        cells = land_cells(per_region, args.places_per_cell)
        with Postgres() as pg, CogServer(info.root) as cog:
            items, places = catalog(base, cells, args.places_per_cell, args.revisits, str(info.root), cog.url)
            dsn = create_pgstac_db(pg, "scale")
            load_s = load_catalog(dsn, info.collection_path, items)
            log.info("catalog: %d items over %d footprints in %d cells, loaded in %.0f s", len(items), len(places),
                     sum(map(len, cells.values())), load_s)
            with StacApiServer(pg, "scale") as api, FaultProxy(api.url, FaultPlan(rate=0.0), name="count") as px:
                rows = []
                for n in sizes:
                    need = math.ceil(n / 6 / args.points_per_place)
                    chosen = [p for p in places if p["rank"] < need]
                    (work / f"places-{n}.json").write_text(json.dumps(chosen))
                    child = {"points": n, "root": str(work / f"root-{n}"), "places": str(work / f"places-{n}.json"),
                             "api": px.url, "control": px.url + "/__pwray_proxy__/stats", "cores": args.cores,
                             "ray_tmp": str(work / "ray"), "subset_every": args.subset_every,
                             "max_concurrent_requests": args.max_concurrent_requests}
                    log.info("size %d: %d footprints …", n, len(chosen))
                    t = time.perf_counter()
                    res = subprocess.run([sys.executable, __file__, "--child", json.dumps(child)], capture_output=True,
                                         text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0",
                                                         "RAY_AUTH_MODE": "disabled"})
                    if res.returncode:
                        sys.stderr.write(res.stderr[-6000:])
                        raise SystemExit(f"size {n} failed ({res.returncode})")
                    row = json.loads(res.stdout.strip().splitlines()[-1])
                    row["wall_s"] = time.perf_counter() - t
                    rows.append(row)
                    log.info("size %d done in %.0f s: %s", n, row["wall_s"], row["stage_s"])
    finally:
        shutil.rmtree(work, ignore_errors=True)

    x = [r["points"] for r in rows]
    fits = {s: extrapolate([_x(r, s) for r in rows], [r["stage_s"][s] for r in rows], args.target) for s in STAGES}
    basis = {s: [_basis(r, s) for r in rows] for s in STAGES}
    for s in STAGES:  # the slope from the load-proof basis; the 700k value in wall seconds
        xs = [_x(r, s) for r in rows]
        fits[s]["slope_wall"] = fits[s]["slope"]
        fits[s]["slope"] = round(loglog_slope(xs, basis[s]), 3)
        fits[s]["cpu_700k"] = extrapolate(xs, basis[s], args.target)["value"]
        # Wall seconds at the target: the marginal cost (line) or the largest size grown along the
        # CPU slope, whichever is more; a power law of noisy wall times would overshoot either way.
        grown = rows[-1]["stage_s"][s] * (args.target / xs[-1]) ** max(fits[s]["slope"], 0.0)
        fits[s]["value"] = max(fits[s]["line"], grown)
    # Driver memory: the line through the two largest sizes, per stage (the process's own peak can
    # sit in start-up, a constant, and hide what grows), the largest of them.
    mem_fits = {k: extrapolate(x, [r["stage_peak_mb"].get(k, 0.0) for r in rows], args.target)["line"]
                for k in ("start",) + STAGES}
    mem_fits["process"] = extrapolate(x, [r["driver_peak_mb"] for r in rows], args.target)["line"]
    peak_stage = max(mem_fits, key=mem_fits.get)
    fits["driver_peak_mb"] = extrapolate(x, [r["driver_peak_mb"] for r in rows], args.target)
    fits["driver_peak_mb"]["line"] = mem_fits[peak_stage]
    fits["driver_peak_mb"]["stage"] = peak_stage if peak_stage in ("start",) + STAGES else None
    superlinear = [s for s in STAGES if fits[s]["slope"] > SUPERLINEAR_SLOPE and basis[s][-1] >= MIN_FLAG_S]
    _print_table(rows, fits, args.target)
    if args.figure:
        figure(rows, fits, args.target, args.figure)
    last = rows[-1]
    out = {
        "bench": "scale", "machine": f"{platform.node()} ({os.cpu_count()} CPUs, {args.cores} used)",
        "load_avg": [round(v, 2) for v in os.getloadavg()], "date": time.strftime("%Y-%m-%d"),
        "sizes": x, "points_per_place": args.points_per_place, "places_per_cell": args.places_per_cell,
        "revisits": args.revisits,
        "requests_per_point": round(max(r["requests_per_point"] for r in rows), 5),
        "requests_per_point_by_size": [round(r["requests_per_point"], 5) for r in rows],
        "points_per_cell": [round(r["points"] / r["cells"], 1) for r in rows],
        "driver_peak_mb": [round(r["driver_peak_mb"], 1) for r in rows],
        "driver_peak_mb_700k": round(fits["driver_peak_mb"]["line"], 1),
        "driver_peak_700k_stage": peak_stage,
        "driver_kb_per_point": round((rows[-1]["stage_peak_mb"][peak_stage] - rows[-2]["stage_peak_mb"][peak_stage])
                                     / (x[-1] - x[-2]) * 1024, 3) if peak_stage in STAGES else None,
        "manifest_s": [r["stage_s"]["manifest"] for r in rows],
        "manifest_s_700k": round(fits["manifest"]["value"], 3),
        "stage_s": {s: [r["stage_s"][s] for r in rows] for s in STAGES},
        "slopes": {s: fits[s]["slope"] for s in STAGES},
        "slope_basis": FIT_BASIS,
        "stage_cpu_s": {s: [r["stage_cpu_s"][s] for r in rows] for s in STAGES},
        "stage_tree_cpu_s": {s: [r["stage_tree_cpu_s"][s] for r in rows] for s in STAGES},
        "stage_cpu_s_700k": {s: round(fits[s]["cpu_700k"], 1) for s in STAGES},
        "index_task_cpu_s": [r["index_task_cpu_s"] for r in rows],
        "shard_chips": [r["shard_chips"] for r in rows],
        "shard_failed": [r["shard_failed"] for r in rows],
        "shard_top_failures": [r["shard_top_failures"] for r in rows],
        "index_ok_skipped_failed": [[r["ok"], r["skipped"], r["failed"]] for r in rows],
        "shard_task_stage_s": [r["shard_stage_s"] for r in rows],
        "index_search_share": round(sum(r["index_search_s"] for r in rows)
                                    / max(1e-9, sum(r["index_search_s"] + r["index_screen_s"] for r in rows)), 3),
        "stage_s_700k": {s: round(fits[s]["value"], 1) for s in STAGES},
        "index_points_per_s": round(last["points"] / last["stage_s"]["index"], 1),
        "analyze_chips": [r["analyze_chips"] for r in rows],
        "analyze_chips_per_s_per_core": round(last["analyze_chips_per_s_per_core"], 1),
        # The cost of more chips, without the job's fixed start (Ray Data, the codebook fit).
        "analyze_marginal_chips_per_s_per_core": round((last["analyze_chips"] - rows[-2]["analyze_chips"])
                                                       / max(1e-9, last["stage_s"]["analyze"]
                                                             - rows[-2]["stage_s"]["analyze"]) / args.cores, 1),
        "driver_peak_mb_by_stage": {s: [r["stage_peak_mb"].get(s) for r in rows] for s in ("start",) + STAGES},
        "superlinear": superlinear,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(out), flush=True)
    return 0


def _basis(row: dict, stage: str) -> float:
    kind = FIT_BASIS[stage]
    if kind == "driver_cpu":
        return row["stage_cpu_s"][stage]
    if kind == "tree_cpu":
        return row["stage_tree_cpu_s"][stage]
    return row["stage_s"][stage]


def _x(row: dict, stage: str) -> int:
    """What a stage's work grows with: points, or for the subset stages their chips."""
    return row["analyze_chips"] if stage in SUBSET_STAGES else row["points"]


def _print_table(rows: list[dict], fits: dict, target: int) -> None:
    head = f"{'points':>8} {'cells':>6} {'req/pt':>7} {'driver MB':>9} " + " ".join(f"{s:>9}" for s in STAGES)
    print(head)
    for r in rows:
        print(f"{r['points']:>8} {r['cells']:>6} {r['requests_per_point']:>7.4f} {r['driver_peak_mb']:>9.0f} "
              + " ".join(f"{r['stage_s'][s]:>9.2f}" for s in STAGES))
    print(f"{'slope':>8} {'':>6} {'':>7} {fits['driver_peak_mb']['slope']:>9.2f} "
          + " ".join(f"{fits[s]['slope']:>9.2f}" for s in STAGES))
    print(f"{target:>8} {'':>6} {'':>7} {fits['driver_peak_mb']['line']:>9.0f} "
          + " ".join(f"{fits[s]['value']:>9.1f}" for s in STAGES))
    print("analyze chips/s per core: "
          + ", ".join(f"{r['analyze_chips_per_s_per_core']:.0f} ({r['analyze_chips']} chips)" for r in rows))


if __name__ == "__main__":
    sys.exit(main())
