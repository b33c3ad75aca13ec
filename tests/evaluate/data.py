"""Small generated fixtures for the evaluate tests (nothing is downloaded).

* :func:`make_eval_root` — a storage root with what the evaluate stage reads: two synthetic
  tasks (shards + ``tasks/<task>.parquet``) and exported encoders for ``europe`` and ``zero``
  (random initialisations: the grid's mechanics do not need a pretrained one).
* :func:`make_fmow_dir` — the fMoW-Sentinel layout: ``train.csv`` / ``val.csv`` with
  ``category, location_id, image_id, timestamp, image_path`` and 13-band GeoTIFFs at
  ``<split>/<category>/<category>_<loc>/<category>_<loc>_<img>.tif``.
* :func:`make_geobench_dir` — a GEO-Bench dataset in its tif sample format:
  ``default_partition.json`` and a folder per sample with one GeoTIFF per band,
  ``band_index.json`` and ``label.json``.

Band ``b`` (index in the file) of every generated image holds ``1000 + 100·b`` plus a small
per-class offset, so tests can check that bands were mapped by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pw_ray import storage

EVAL_CONFIG = {
    "name": "eval-tiny",
    "pretrain_sets": [{"name": "europe", "region": "eu", "size": 8, "seed": 1}],
    "chips": {"size_px": 16, "chunk_size": 64},
    "model": {"preset": "tiny", "patch_size": 8},
    "tasks": [
        # random: the chips are written straight to shards here, not planned with a split
        {"name": "landcover", "kind": "synthetic-landcover", "size": 66, "seed": 11, "split": "random"},
        {"name": "population", "kind": "synthetic-population", "size": 66, "seed": 12, "split": "random"},
    ],
    "evaluation": {"methods": ["knn", "linear"], "seeds": [0], "task_regions": ["global", "oc"],
                   "min_subset": 10, "knn_k": 5, "max_concurrent": 2, "finetune_epochs": 1},
}
#: chips per region in each synthetic task: ``oc`` is below ``min_subset`` on purpose.
REGION_SIZES = {"eu": 36, "af": 24, "oc": 6}
CLASSES = ("tree", "water", "built")
# Reflectance ×1e4 of the three classes in the ten SatMAE bands
# (B02 B03 B04 B05 B06 B07 B08 B8A B11 B12).
SPECTRA = np.array([
    [350, 600, 350, 900, 2500, 3100, 3300, 3400, 1600, 800],    # tree
    [600, 500, 300, 250, 150, 120, 100, 90, 40, 30],             # water
    [1100, 1200, 1300, 1400, 1500, 1600, 1700, 1700, 1900, 1700],  # built
], dtype=np.float64)
REGION_LONLAT = {"eu": (10.0, 50.0), "af": (20.0, 5.0), "oc": (135.0, -25.0), "na": (-100.0, 40.0)}


# ----------------------------------------------------------------------------- evaluate root
def _task_chips(name: str, seed: int, size_px: int, class_names: list[str]):
    """Metadata rows and (N, 10, H, W) uint16 pixels: each chip a patchwork of two classes."""
    rng = np.random.default_rng(seed)
    metas, pixels = [], []
    k = len(class_names)
    for region, n in REGION_SIZES.items():
        lon0, lat0 = REGION_LONLAT[region]
        for i in range(n):
            dom = CLASSES[i % len(CLASSES)]
            other = CLASSES[(i + 1 + rng.integers(2)) % len(CLASSES)]
            share = rng.uniform(0.6, 0.95)
            mask = rng.random((size_px, size_px)) < share
            img = np.where(mask[None], SPECTRA[CLASSES.index(dom)][:, None, None],
                           SPECTRA[CLASSES.index(other)][:, None, None])
            img = img * rng.uniform(0.9, 1.1) + rng.normal(0, 30, img.shape)
            pixels.append(np.clip(img, 1, 10000).astype(np.uint16))
            frac = np.zeros(k, np.float32)
            frac[class_names.index(dom)] = mask.mean()
            frac[class_names.index(other)] += 1 - mask.mean()
            metas.append(dict(chip_id=f"{name}-{region}-{i:04d}", set=name, point_id=f"{name}-{region}-{i:04d}",
                              lon=lon0 + 0.01 * i, lat=lat0, region=region, biome="unknown", landcover=dom,
                              lc_fractions=frac.tolist(), item_id="synthetic", collection="synthetic",
                              datetime="2023-06-01T00:00:00Z", epsg=4326, row_off=0, col_off=0,
                              cloud_fraction=0.0, nodata_fraction=0.0, baseline="05.09", offset_applied=0))
    return metas, np.stack(pixels)


def export_random_encoder(cfg, set_name: str, seed: int) -> None:
    """A randomly initialised encoder exported where pretraining would put ``set_name``'s."""
    import torch

    from pw_ray.models.export import export_encoder
    from pw_ray.models.satmae import build_mae
    from pw_ray.pretrain.trainer import export_dir
    from pw_ray.pretrain.transforms import stats_for

    torch.manual_seed(seed)
    model = build_mae(cfg.model.preset, list(cfg.chips.bands), [list(g) for g in cfg.model.groups],
                      img_size=cfg.chips.size_px, patch_size=cfg.model.patch_size)
    mean, std = stats_for(cfg.chips.bands)
    export_encoder(model, storage.local_path(export_dir(cfg.root, set_name)), list(cfg.chips.bands),
                   [list(g) for g in cfg.model.groups],
                   {"set": set_name, "steps": 0, "mean": mean.tolist(), "std": std.tolist()})


def make_eval_root(cfg) -> None:
    """Task shards and tables plus encoders under ``cfg.root`` (see the module docstring)."""
    from pw_ray import synthetic
    from pw_ray.evaluate import tasks as T
    from pw_ray.ingest import shards as S

    class_names = list(synthetic.LANDCOVER_CLASSES)
    for spec in cfg.tasks:
        metas, pixels = _task_chips(spec.name, spec.seed, cfg.chips.size_px, class_names)
        table = S.chips_table(metas, pixels, list(cfg.chips.bands))
        for region in REGION_SIZES:
            idx = [i for i, m in enumerate(metas) if m["region"] == region]
            S.write_parquet_shard(table.take(idx), S.parquet_uri(cfg.root, spec.name, region, 0))
        meta = pd.DataFrame(metas)
        T.write_task(cfg.root, spec, T.build_labels(meta, spec, class_names))
    for i, s in enumerate([p.name for p in cfg.pretrain_sets] + ["zero"]):
        export_random_encoder(cfg, s, seed=100 + i)
    storage.write_text(storage.join(cfg.root, "config.yaml"), _yaml(cfg))


def _yaml(cfg) -> str:
    from pw_ray.config import dump_config

    return dump_config(cfg)


# ----------------------------------------------------------------------------- GeoTIFFs
def _utm_grid(lon: float, lat: float, width: int, height: int, res: float = 10.0):
    """(EPSG, affine transform) of a north-up UTM grid centred on (lon, lat)."""
    from rasterio.transform import from_origin
    from rasterio.warp import transform as warp

    zone = int((lon + 180) // 6) + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    xs, ys = warp("EPSG:4326", f"EPSG:{epsg}", [lon], [lat])
    return epsg, from_origin(xs[0] - width * res / 2, ys[0] + height * res / 2, res, res)


def band_value(band_index: int, class_index: int) -> int:
    """The constant each generated image holds in a band (see the module docstring)."""
    return 1000 + 100 * band_index + 7 * class_index


def write_geotiff(path: Path, data: np.ndarray, lon: float, lat: float, descriptions=None) -> None:
    """(C, H, W) uint16 → a GeoTIFF on a UTM grid centred at (lon, lat)."""
    import rasterio

    path.parent.mkdir(parents=True, exist_ok=True)
    c, h, w = data.shape
    epsg, transform = _utm_grid(lon, lat, w, h)
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=c, dtype="uint16",
                       crs=f"EPSG:{epsg}", transform=transform) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)


# ----------------------------------------------------------------------------- fMoW-Sentinel
FMOW_CATEGORIES = ("airport", "crop_field", "lake_or_pond")


def make_fmow_dir(base: Path, locations_per_category: int = 4, images_per_location: int = 2,
                  regions=("eu", "af", "na"), size=(20, 26), with_image_path: bool = True) -> Path:
    """An fMoW-Sentinel folder under ``base/fmow-sentinel``; returns it.

    Locations cycle through ``regions``; train gets ``locations_per_category`` locations per
    category, val half as many (at least 2). Images are ``size`` (height, width) pixels, 13 bands.
    """
    root = base / "fmow-sentinel"
    rng = np.random.default_rng(0)
    for split, n_loc in (("train", locations_per_category), ("val", max(2, locations_per_category // 2))):
        rows = []
        for ci, cat in enumerate(FMOW_CATEGORIES):
            for loc in range(n_loc):
                region = regions[(loc + ci) % len(regions)]
                lon0, lat0 = REGION_LONLAT[region]
                lon, lat = lon0 + 0.3 * loc + 0.05 * ci, lat0 + 0.2 * loc
                for img in range(images_per_location):
                    rel = f"{split}/{cat}/{cat}_{loc}/{cat}_{loc}_{img}.tif"
                    data = np.stack([np.full(size, band_value(b, ci), np.uint16) for b in range(13)])
                    data = (data + rng.integers(0, 3, data.shape)).astype(np.uint16)
                    write_geotiff(root / rel, data, lon, lat)
                    row = {"category": cat, "location_id": loc, "image_id": img,
                           "timestamp": f"201{6 + img}-06-01T00:00:00Z"}
                    if with_image_path:
                        row["image_path"] = f"fmow-sentinel/{rel}"
                    rows.append(row)
        pd.DataFrame(rows).to_csv(root / f"{split}.csv", index=False)
    return root


# ----------------------------------------------------------------------------- GEO-Bench
#: GEO-Bench's names of Sentinel-2's 13 bands (``geobench.sentinel2_13_bands``).
GEOBENCH_S2_BANDS = (
    "01 - Coastal aerosol", "02 - Blue", "03 - Green", "04 - Red", "05 - Vegetation Red Edge",
    "06 - Vegetation Red Edge", "07 - Vegetation Red Edge", "08 - NIR", "08A - Vegetation Red Edge",
    "09 - Water vapour", "10 - SWIR - Cirrus", "11 - SWIR", "12 - SWIR",
)


def make_geobench_dir(base: Path, n_classes: int = 3, per_class=(6, 2, 2), regions=("eu", "af"),
                      size: int = 12) -> Path:
    """A GEO-Bench tif-format dataset ``base/classification_v1.0/m-tiny``; returns its folder.

    ``per_class``: samples per class in (train, valid, test).
    """
    root = base / "classification_v1.0" / "m-tiny"
    partition = {"train": [], "valid": [], "test": []}
    i = 0
    for split, n in zip(partition, per_class):
        for label in range(n_classes):
            for _ in range(n):
                name = f"id_{i:04d}"
                region = regions[i % len(regions)]
                lon0, lat0 = REGION_LONLAT[region]
                sdir = root / name
                index = []
                for b, band in enumerate(GEOBENCH_S2_BANDS):
                    fname = f"{band}.tif"
                    data = np.full((1, size, size), band_value(b, label), np.uint16)
                    write_geotiff(sdir / fname, data, lon0 + 0.1 * (i % 7), lat0 + 0.1 * (i % 5), [band])
                    index.append([band, [fname]])
                (sdir / "band_index.json").write_text(json.dumps(index))
                (sdir / "label.json").write_text(json.dumps(label))
                partition[split].append(name)
                i += 1
    (root / "default_partition.json").write_text(json.dumps(partition, indent=2))
    return root
