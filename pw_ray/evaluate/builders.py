"""Imported downstream tasks: fMoW-Sentinel and GEO-Bench folders → task chips, labels, splits.

Both builders work in the two steps every task takes:

* **plan** (:func:`plan_fmow`, :func:`plan_geobench`) reads the dataset's own index, keeps its
  own train/val/test split, optionally samples it down (``tasks[].max_chips``) and opens each
  image's header (no pixels) to place it: lon/lat of the image centre → ``region`` with
  :func:`pw_ray.regions.regions_of`. Images not on a continent are dropped and counted.
* **ingest** (:func:`ingest_imported`) reads the pixels, maps the dataset's bands **by name**
  onto ``chips.bands``, centre-crops each image to a square and resamples it to
  ``chips.size_px`` (``chips.resampling``), and writes the same shard format as every other set
  (``shards/<task>/parquet/<r>/*.parquet`` + WebDataset), ``manifest/<task>.parquet`` and
  ``tasks/<task>.parquet`` with the dataset's split. No STAC search is involved.

**fMoW-Sentinel** (``kind: fmow``, ``path``: the folder holding ``train.csv``, ``val.csv`` and
optionally ``test_gt.csv``; the CSVs' columns ``category, location_id, image_id, timestamp`` and
optionally ``image_path``/``polygon``). Images are 13-band GeoTIFFs in Sentinel-2 order of
increasing wavelength, B01 B02 B03 B04 B05 B06 B07 B08 B8A B09 B10 B11 B12 (the dataset's
README calls the two NIR bands "B8A, B8B"; band descriptions in the file, when present, win).
An image is found at ``image_path`` (relative to the CSV's folder or its parent), else at the
documented layout ``<split>/<category>/<category>_<location_id>/<category>_<location_id>_<image_id>.tif``.
Splits: ``train.csv`` → train; with ``test_gt.csv``, ``val.csv`` → val and ``test_gt.csv`` →
test; without it, ``val.csv`` is divided into val and test **by whole locations** (seeded,
per category, in the ratio of ``tasks[].split_fractions``' last two fractions), so no location's time
series straddles val and test and nothing of fMoW's val set ever trains. fMoW-Sentinel holds
Level-1C top-of-atmosphere reflectance ×10⁴ from before processing baseline 04.00, so no
offset is applied (the pretraining chips are L2A: a known domain gap of the benchmark itself).

**GEO-Bench** (``kind: geobench``, ``path``: one dataset folder such as
``classification_v1.0/m-eurosat``). What is read is GEO-Bench's *tif* sample format
(``geobench.Sample.write(format="tif")``): a folder per sample with one GeoTIFF per band,
``band_index.json`` (band name → files) and ``label.json`` (the class index), plus the
dataset's ``default_partition.json`` (``train``/``valid``/``test`` → sample names). Band names
such as ``"02 - Blue"`` or ``"08A - Vegetation Red Edge"`` map to ``B02`` and ``B8A``. The
published benchmark ships HDF5 samples instead: reading those needs ``h5py`` and unpickling
attributes that reference the ``geobench`` package's classes; neither is a dependency of
pw-ray, so such folders fail with a message saying so. ``task_specs.pkl`` is not read (it is a
pickle of geobench objects), so labels stay class indices. Multi-label samples are refused.
"""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa

from pw_ray import bands as B
from pw_ray import storage
from pw_ray.config import ChipSpec, TaskSpec
from pw_ray.ingest.pipeline import IngestSummary

log = logging.getLogger(__name__)

#: fMoW-Sentinel's 13 bands in file order (increasing wavelength).
FMOW_BANDS: tuple[str, ...] = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10",
                               "B11", "B12")
IMPORTED_KINDS = ("fmow", "geobench")
POINT_COLUMNS = ["point_id", "set", "lon", "lat", "region", "biome", "landcover", "seed", "label", "split",
                 "image", "band_files", "datetime", "epsg"]


# ----------------------------------------------------------------------------- shared
def _read_csv(uri: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(storage.read_text(uri)))


def _centre_lonlat(href: str) -> tuple[float, float, int]:
    """(lon, lat, EPSG code or 0) of a GeoTIFF's centre, from its header only."""
    import rasterio
    from rasterio.warp import transform as warp

    with rasterio.open(href) as ds:
        if ds.crs is None:
            return float("nan"), float("nan"), 0
        x, y = ds.xy(ds.height / 2, ds.width / 2, offset="ul")
        epsg = ds.crs.to_epsg() or 0
        if ds.crs.is_geographic and epsg == 4326:
            return float(x), float(y), epsg
        lons, lats = warp(ds.crs, "EPSG:4326", [x], [y])
        return float(lons[0]), float(lats[0]), epsg


def _sample(df: pd.DataFrame, max_chips: int | None, seed: int) -> pd.DataFrame:
    """At most ``max_chips`` rows, the same share from every (split, label) group (seeded)."""
    if not max_chips or len(df) <= max_chips:
        return df
    frac = max_chips / len(df)
    parts = [g.sample(n=max(1, int(round(len(g) * frac))), random_state=seed)
             for _, g in df.groupby(["split", "label"], sort=True)]
    out = pd.concat(parts)
    if len(out) > max_chips:
        out = out.sample(n=max_chips, random_state=seed)
    return out.sort_index()


def _locate(df: pd.DataFrame, name: str, seed: int) -> pd.DataFrame:
    """Add lon, lat, region, epsg from each image's header; drop (and count) off-continent images."""
    from pw_ray.regions import regions_of

    from concurrent.futures import ThreadPoolExecutor

    # Header reads are I/O (GDAL releases the GIL): a thread pool keeps 10⁵ images in minutes.
    with ThreadPoolExecutor(max_workers=16) as pool:
        where = list(pool.map(_centre_lonlat, df["image"]))
    df = df.assign(lon=[w[0] for w in where], lat=[w[1] for w in where], epsg=[w[2] for w in where])
    df["region"] = regions_of(df["lon"].to_numpy(), df["lat"].to_numpy())
    lost = int(df["region"].isna().sum())
    if lost:
        log.warning("task %s: %d of %d images have no georeference or lie on no continent; dropped",
                    name, lost, len(df))
    df = df.dropna(subset=["region"]).reset_index(drop=True)
    df["set"] = name
    df["seed"] = seed
    df["biome"] = "unknown"
    df["landcover"] = "unknown"
    for col in ("band_files", "datetime"):
        if col not in df.columns:
            df[col] = ""
    return df[POINT_COLUMNS]


def map_bands(available: list[str], wanted: list[str], source: str) -> list[int]:
    """Indexes into ``available`` (canonical names) of the ``wanted`` bands; a clear error if missing."""
    missing = [b for b in wanted if b not in available]
    if missing:
        raise ValueError(f"{source} has bands {available}; chips.bands needs {wanted}, missing {missing}")
    return [available.index(b) for b in wanted]


# ----------------------------------------------------------------------------- fMoW-Sentinel
def _fmow_split_files(path: str) -> dict[str, str]:
    files = {s: storage.join(path, f"{s}.csv") for s in ("train", "val")}
    for test_name in ("test_gt", "test"):
        uri = storage.join(path, f"{test_name}.csv")
        if storage.exists(uri):
            files["test"] = uri
            break
    missing = [u for u in (files["train"], files["val"]) if not storage.exists(u)]
    if missing:
        raise FileNotFoundError(f"fMoW-Sentinel folder {path} lacks {missing}; expected train.csv and val.csv "
                                "(columns category, location_id, image_id, timestamp[, image_path])")
    return files


def _fmow_image(path: str, split: str, r) -> str:
    """Where an fMoW-Sentinel image is: its CSV ``image_path`` if that exists, else the documented layout."""
    parent = path.rstrip("/").rsplit("/", 1)[0] if "/" in path.rstrip("/") else path
    rel = getattr(r, "image_path", None)
    if isinstance(rel, str) and rel:
        for base in (path, parent):
            uri = storage.join(base, rel)
            if storage.exists(uri):
                return uri
    base = f"{r.category}_{int(r.location_id)}"
    return storage.join(path, split, str(r.category), base, f"{base}_{int(r.image_id)}.tif")


def _location_split(df: pd.DataFrame, val_share: float, seed: int) -> pd.Series:
    """val/test per whole location, per category (seeded)."""
    rng = np.random.default_rng(seed)
    out = pd.Series("test", index=df.index, dtype=object)
    for _, g in df.groupby("label", sort=True):
        locs = np.array(sorted(g["location_id"].unique()))
        rng.shuffle(locs)
        n_val = int(np.floor(len(locs) * val_share)) if len(locs) > 1 else 0
        out[g.index[g["location_id"].isin(locs[:n_val])]] = "val"
    return out


def plan_fmow(spec: TaskSpec) -> pd.DataFrame:
    """Plan rows of an fMoW-Sentinel task (one per image, the dataset's split kept)."""
    files = _fmow_split_files(spec.path)
    parts = []
    for split, uri in files.items():
        df = _read_csv(uri)
        need = {"category", "location_id", "image_id"}
        if need - set(df.columns):
            raise ValueError(f"{uri} lacks columns {sorted(need - set(df.columns))}; has {list(df.columns)}")
        df = df.assign(label=df["category"].astype(str), split=split, source_split=split)
        df["image"] = [_fmow_image(spec.path, split, r) for r in df.itertuples(index=False)]
        df["datetime"] = df["timestamp"].astype(str) if "timestamp" in df.columns else ""
        parts.append(df)
    df = pd.concat(parts, ignore_index=True)
    if "test" not in files:
        v = df["split"] == "val"
        val_share = spec.split_fractions[1] / max(spec.split_fractions[1] + spec.split_fractions[2], 1e-9)
        df.loc[v, "split"] = _location_split(df[v], val_share, spec.seed)
    df = _sample(df, spec.max_chips, spec.seed).reset_index(drop=True)
    # fMoW numbers locations per split (train's airport_0 is not val's airport_0): ids name the CSV.
    df["point_id"] = [f"{spec.name}-{r.source_split}-{r.category}_{int(r.location_id)}_{int(r.image_id)}"
                      for r in df.itertuples(index=False)]
    return _locate(df, spec.name, spec.seed)


def _fmow_file_bands(ds) -> list[str]:
    """Canonical names of a file's bands: its descriptions when they name bands, else fMoW's order."""
    desc = [d for d in (ds.descriptions or ()) if d]
    if len(desc) == ds.count:
        try:
            return [B.canonical(d) for d in desc]
        except B.UnknownBandError:
            pass
    if ds.count != len(FMOW_BANDS):
        raise ValueError(f"{ds.name}: {ds.count} bands, expected fMoW-Sentinel's 13 ({', '.join(FMOW_BANDS)})")
    return list(FMOW_BANDS)


# ----------------------------------------------------------------------------- GEO-Bench
#: GEO-Bench's names of Sentinel-2's bands (``geobench.dataset.sentinel2_13_bands``) → canonical.
#: Matched exactly, so Sentinel-1 bands such as ``"01 - VH.Real"`` are never taken for B01.
GEOBENCH_S2_NAMES: dict[str, str] = {
    "01 - Coastal aerosol": "B01", "02 - Blue": "B02", "03 - Green": "B03", "04 - Red": "B04",
    "05 - Vegetation Red Edge": "B05", "06 - Vegetation Red Edge": "B06", "07 - Vegetation Red Edge": "B07",
    "08 - NIR": "B08", "08A - Vegetation Red Edge": "B8A", "09 - Water vapour": "B09",
    "10 - SWIR - Cirrus": "B10", "11 - SWIR": "B11", "12 - SWIR": "B12",
}


def geobench_band(name: str) -> str | None:
    """GEO-Bench's Sentinel-2 band name → canonical (``"08A - Vegetation Red Edge"`` → ``"B8A"``)."""
    return GEOBENCH_S2_NAMES.get(name.strip())


def plan_geobench(spec: TaskSpec) -> pd.DataFrame:
    """Plan rows of a GEO-Bench classification task (tif sample format; one per sample)."""
    path = spec.path
    part_uri = storage.join(path, "default_partition.json")
    if not storage.exists(part_uri):
        raise FileNotFoundError(f"GEO-Bench dataset {path} has no default_partition.json")
    partition = json.loads(storage.read_text(part_uri))
    rows = []
    hdf5_only = False
    for split, names in partition.items():
        ours = {"train": "train", "valid": "val", "val": "val", "test": "test"}.get(split)
        if ours is None:
            raise ValueError(f"{part_uri}: unknown split {split!r}; expected train, valid, test")
        for sample in names:
            sdir = storage.join(path, sample)
            index_uri = storage.join(sdir, "band_index.json")
            if not storage.exists(index_uri):
                hdf5_only = hdf5_only or storage.exists(storage.join(path, f"{sample}.hdf5"))
                if hdf5_only:
                    break
                raise FileNotFoundError(f"GEO-Bench sample {sdir} has no band_index.json")
            band_index = dict(json.loads(storage.read_text(index_uri)))
            label = json.loads(storage.read_text(storage.join(sdir, "label.json")))
            if isinstance(label, list):
                raise ValueError(f"{sdir}: multi-label samples are not supported (label {label[:5]}…)")
            files = {}
            for band_name, band_files in band_index.items():
                canon = geobench_band(band_name)
                if canon and band_files:
                    files[canon] = storage.join(sdir, band_files[0])
                    if len(band_files) > 1:
                        log.debug("%s: band %s has %d dates; using the first", sdir, band_name, len(band_files))
            if not files:
                raise ValueError(f"{sdir}: no Sentinel-2 bands among {list(band_index)}")
            first = files.get("B04") or next(iter(files.values()))
            rows.append({"point_id": f"{spec.name}-{sample}", "label": str(label), "split": ours,
                         "image": first, "band_files": json.dumps(files)})
        if hdf5_only:
            break
    if hdf5_only:
        raise NotImplementedError(
            f"GEO-Bench dataset {path} holds HDF5 samples: reading them needs h5py and the geobench package "
            "(their attributes are pickled geobench objects), which pw-ray does not depend on. Convert the "
            "dataset to GEO-Bench's tif sample format (geobench Sample.write(format='tif')) and point "
            "tasks[].path at that folder.")
    df = _sample(pd.DataFrame(rows), spec.max_chips, spec.seed).reset_index(drop=True)
    return _locate(df, spec.name, spec.seed)


# ----------------------------------------------------------------------------- pixels
def _square_window(height: int, width: int):
    from rasterio.windows import Window

    side = min(height, width)
    return Window((width - side) // 2, (height - side) // 2, side, side)


def read_chip(point: dict, kind: str, spec: ChipSpec) -> tuple[np.ndarray, dict]:
    """One image → ((C, H, W) uint16 in ``spec.bands`` order, extra metadata).

    Centre square crop, resampled to ``spec.size_px`` with ``spec.resampling``; values rounded
    and clipped to the uint16 range.
    """
    import rasterio
    from rasterio.enums import Resampling

    size, res = spec.size_px, Resampling[spec.resampling]
    out = np.zeros((len(spec.bands), size, size), dtype=np.float64)
    if kind == "fmow":
        with rasterio.open(point["image"]) as ds:
            idx = map_bands(_fmow_file_bands(ds), list(spec.bands), point["image"])
            win = _square_window(ds.height, ds.width)
            out[:] = ds.read([i + 1 for i in idx], window=win, out_shape=(len(idx), size, size), resampling=res)
            offs = (int(win.row_off), int(win.col_off))
    else:
        files = json.loads(point["band_files"])
        map_bands(sorted(files), list(spec.bands), point["point_id"])
        for c, band in enumerate(spec.bands):
            with rasterio.open(files[band]) as ds:
                win = _square_window(ds.height, ds.width)
                out[c] = ds.read(1, window=win, out_shape=(size, size), resampling=res)
        offs = (int(win.row_off), int(win.col_off))
    pixels = np.clip(np.rint(out), 0, np.iinfo(np.uint16).max).astype(np.uint16)
    return pixels, {"row_off": offs[0], "col_off": offs[1],
                    "nodata_fraction": float((pixels == 0).all(axis=0).mean())}


def _image_reader(kind: str, spec: ChipSpec, name: str):
    """The chunk writer's group reader for imported images: one image per group."""

    def read_image(grp: pd.DataFrame, sw) -> tuple[np.ndarray, list[dict]]:
        p = grp.iloc[0].to_dict()
        with sw("read"):
            px, extra = read_chip(p, kind, spec)
        meta = dict(
            chip_id=p["point_id"], set=name, point_id=p["point_id"], lon=float(p["lon"]), lat=float(p["lat"]),
            region=p["region"], biome=p["biome"], landcover=p["landcover"], lc_fractions=[],
            item_id=p["image"].rsplit("/", 1)[-1], collection="fmow-sentinel" if kind == "fmow" else "geobench",
            datetime=str(p.get("datetime") or ""), epsg=int(p["epsg"]), row_off=extra["row_off"],
            col_off=extra["col_off"], cloud_fraction=float("nan"), nodata_fraction=extra["nodata_fraction"],
            baseline="", offset_applied=0,
        )
        return px[None], [meta]

    return read_image


def write_chunk(points: pd.DataFrame, root: str, name: str, kind: str, region: str, chunk: int,
                spec: ChipSpec, force: bool = False, retry_failed: bool = False) -> dict:
    """Read one chunk's images and write (or reuse) its Parquet shard (+ WebDataset) with the
    one chunk writer, :func:`pw_ray.ingest.chunks.write_chunk`."""
    from pw_ray.ingest.chunks import write_chunk as write_any_chunk

    rows = points.assign(chip_id=points["point_id"])
    return write_any_chunk(rows, "chip_id", _image_reader(kind, spec, name), root=root, set_name=name,
                           region=region, chunk=chunk, spec=spec, context={"reader": f"imported-{kind}"},
                           force=force, retry_failed=retry_failed)


def ingest_imported(root: str, task: TaskSpec, points: pd.DataFrame, spec: ChipSpec, force: bool = False,
                    retry_failed: bool = False) -> IngestSummary:
    """Shards, manifest and task table of an imported task (Ray Data over chunks; resumable)."""
    import pickle

    import ray

    from pw_ray.evaluate import tasks as T
    from pw_ray.ingest.chunks import remove_stale
    from pw_ray.ingest.pipeline import build_manifest, summarise
    from pw_ray.ingest import shards as S

    if n_moved := S.adopt_legacy_layout(root, task.name):
        log.info("task %s: moved %d shards of the older region=<r>/ layout into parquet/<r>/", task.name, n_moved)
    pts = points.sort_values(["region", "point_id"]).reset_index(drop=True)
    pts["chunk"] = pts.groupby("region").cumcount() // spec.chunk_size
    jobs = [{"region": r, "chunk": int(k), "rows": pickle.dumps(g.drop(columns=["chunk"]), protocol=5)}
            for (r, k), g in pts.groupby(["region", "chunk"], sort=True)]
    results = []
    if jobs:
        def _do(job: dict) -> dict:
            return write_chunk(pickle.loads(job["rows"]), root, task.name, task.kind, job["region"], job["chunk"],
                               spec, force, retry_failed)

        n_cpu = max(1, int(ray.cluster_resources().get("CPU", 1)))
        ds = ray.data.from_items(jobs, override_num_blocks=len(jobs))
        results = ds.map(_do, compute=ray.data.TaskPoolStrategy(size=n_cpu), num_cpus=1).take_all()
    stale = remove_stale(root, task.name, {(j["region"], j["chunk"]) for j in jobs}, spec.webdataset)
    index = pts.assign(chip_id=pts["point_id"], status="ok", reason="", failure="",
                       item_id=pts["image"].map(lambda h: h.rsplit("/", 1)[-1]))
    manifest = build_manifest(index, index, results)
    storage.write_table(pa.Table.from_pandas(manifest, preserve_index=False),
                        storage.join(root, "manifest", f"{task.name}.parquet"))
    ok = set(manifest.loc[manifest["status"] == "ok", "chip_id"])
    kept = pts[pts["point_id"].isin(ok)]
    table = pd.DataFrame({"chip_id": kept["point_id"].to_numpy(), "region": kept["region"].to_numpy(),
                          "label": kept["label"].astype(str).to_numpy(), "split": kept["split"].to_numpy(),
                          "block": kept["block"].to_numpy() if "block" in kept.columns else None,
                          "task_type": task.task_type}).sort_values("chip_id").reset_index(drop=True)
    T.write_task(root, task, table)
    summary = summarise(task.name, manifest, results)
    summary.stale_removed = len(stale)
    if summary.failed:
        log.warning("task %s: %d images could not be read (most common: %s)", task.name, summary.failed,
                    summary.top_failures[:1])
    log.info("ingest %s", summary.line())
    return summary


def dataset_fingerprint(spec: TaskSpec) -> str:
    """Digest of an imported dataset's index files (fMoW's split CSVs, GEO-Bench's partition): what
    decides which images a plan takes. The images themselves are not hashed (10⁵ files)."""
    from pw_ray import lineage

    if spec.kind == "fmow":
        uris = sorted(_fmow_split_files(spec.path).values())
    else:
        uris = [storage.join(spec.path, "default_partition.json")]
    return lineage.digest([(u.rsplit("/", 1)[-1], lineage.bytes_digest(storage.read_bytes(u)))
                           for u in uris if storage.exists(u)])


def plan_imported(spec: TaskSpec) -> pd.DataFrame:
    if spec.kind == "fmow":
        return plan_fmow(spec)
    if spec.kind == "geobench":
        return plan_geobench(spec)
    raise ValueError(f"task {spec.name}: kind {spec.kind!r} is not an imported dataset ({IMPORTED_KINDS})")
