"""Building the archive: paint every scene, write its COGs and items, reuse an archive of the same spec."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import Affine

from pw_ray import bands as B
from pw_ray import storage
from pw_ray.config import SyntheticArchive
from pw_ray.synthetic.biomes import biome_features
from pw_ray.synthetic.landcover import CODE_OF_CLASS
from pw_ray.synthetic.pixels import paint_scene
from pw_ray.synthetic.scenes import Scene, corners, plan_scenes
from pw_ray.synthetic.stac import (LC_COLLECTION, S2_COLLECTION, ArchiveInfo, archive_info, band_asset, lc_item,
                                   s2_item, write_catalog)

log = logging.getLogger(__name__)

#: Bumped whenever the generator's output changes, so old archives are rebuilt.
#: 2: internal overviews on the Sentinel-2 assets (the pixels at full resolution are unchanged).
FORMAT_VERSION = 2
#: The Sentinel-2 COGs carry internal overviews down to this resolution (metres), like the public
#: catalogs' COGs: reads of a chip's footprint at a coarse level (the cheap spectral signatures of
#: ``pw_ray.ingest.signatures``) touch a block or two instead of the full-resolution ones.
OVERVIEW_COARSEST_M = 160


def build_archive(out_dir: str | Path, spec: SyntheticArchive, progress: bool = False) -> ArchiveInfo:
    """Write the synthetic archive into ``out_dir`` (a local folder) and describe it.

    Deterministic: the same ``spec`` gives identical items (up to the ``out_dir`` prefix of
    hrefs) and identical pixels. When ``out_dir`` already holds a complete archive built from
    the same spec, it is reused untouched; a different spec rebuilds it.
    """
    root = storage.to_local_dir(str(out_dir))
    marker = root / "archive.json"
    wanted = {"format_version": FORMAT_VERSION, "root": str(root), "spec": spec.model_dump(mode="json")}
    if marker.exists():
        try:
            found = json.loads(marker.read_text())
        except ValueError:
            found = {}
        if {k: found.get(k) for k in wanted} == wanted:
            log.info("synthetic archive in %s reused (same spec)", root)
            return load_archive(root)
        log.info("synthetic archive in %s was built from another spec; rebuilding", root)
    _clear(root)

    start = time.perf_counter()
    scenes = plan_scenes(spec)
    log.info("building synthetic archive: %d scenes of %d px in %s", len(scenes), spec.scene_px, root)
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: _build_scene(root, s, spec), scenes)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(scenes), desc="synthetic scenes", unit="scene")
        built = list(results)

    s2_items = [b[0] for b in built]
    lc_items = [b[1] for b in built]
    biomes = [f for b in built for f in b[2]]
    info = write_catalog(root, s2_items, lc_items, biomes)
    storage.write_text(str(marker), json.dumps({**wanted, "n_items": len(s2_items)}, indent=2))
    log.info("synthetic archive built in %.1f s: %d items in %s", time.perf_counter() - start, len(s2_items), root)
    return info


def load_archive(out_dir: str | Path) -> ArchiveInfo:
    """Describe an archive that :func:`build_archive` wrote into ``out_dir``."""
    root = storage.to_local_dir(str(out_dir))
    marker = root / "archive.json"
    if not marker.exists():
        raise FileNotFoundError(f"no synthetic archive in {root} (missing archive.json); run build_archive first")
    meta = json.loads(marker.read_text())
    return archive_info(root, int(meta["n_items"]))


def overview_levels(res_m: float, coarsest_m: float = OVERVIEW_COARSEST_M) -> int:
    """Internal overview levels (factors 2, 4, …) of a ``res_m`` asset down to ``coarsest_m``:
    4 for 10 m (20 … 160 m), 3 for 20 m, 1 for 60 m."""
    return max(0, int(np.floor(np.log2(coarsest_m / res_m) + 1e-9)))


def _write_cog(path: Path, array: np.ndarray, epsg: int, transform: Affine, block_px: int = 256,
               overviews: int = 0, overview_resampling: str = "AVERAGE") -> None:
    """Write a one-band COG atomically: deflate, ``block_px`` tiles for grids at least that large,
    else 256 px (128 for grids of 256 px or less), and ``overviews`` internal overview levels
    (factors 2, 4, …, each at least 1 px; GDAL computes them, deterministically, with
    ``overview_resampling``: AVERAGE for reflectance, NEAREST for class maps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    side = max(array.shape)
    block = block_px if side >= block_px else (256 if side > 256 else 128)
    levels = min(int(overviews), int(np.floor(np.log2(min(array.shape))))) if overviews > 0 else 0
    ov = ({"overviews": "IGNORE_EXISTING", "overview_count": levels, "overview_resampling": overview_resampling}
          if levels else {"overviews": "NONE"})
    with rasterio.open(
        tmp, "w", driver="COG", width=array.shape[1], height=array.shape[0], count=1, dtype=array.dtype.name,
        crs=f"EPSG:{epsg}", transform=transform, nodata=0, compress="DEFLATE", predictor=2, blocksize=block, **ov,
    ) as dst:
        dst.write(array, 1)
    os.replace(tmp, path)


def _build_scene(root: Path, scene: Scene, spec: SyntheticArchive) -> tuple[dict, dict, list[dict]]:
    """Paint one scene and write its COGs; return (S2 item, land-cover item, biome features)."""
    arrays, lc = paint_scene(scene, spec)
    x0, y0 = scene.origin
    size = spec.scene_px
    assets = {}
    for key in B.ALL_BANDS:
        res = B.resolution(key)
        transform = Affine(res, 0, x0, 0, -res, y0)
        href = root / "cogs" / scene.item_id / f"{key}.tif"
        _write_cog(href, arrays[key], scene.epsg, transform, spec.block_px, overview_levels(res),
                   "NEAREST" if key == B.SCL else "AVERAGE")
        assets[key] = band_asset(key, href, arrays[key].shape, transform, scene.baseline)

    lc_id = f"lc-{scene.item_id}"
    lc_href = root / "cogs" / lc_id / "map.tif"
    transform10 = Affine(10, 0, x0, 0, -10, y0)
    _write_cog(lc_href, CODE_OF_CLASS[lc], scene.epsg, transform10, spec.block_px)

    footprint = corners(scene, size)
    return (s2_item(scene, footprint, assets, arrays[B.SCL]),
            lc_item(scene, lc_id, footprint, lc_href, lc.shape, transform10),
            biome_features(scene, footprint))


def _clear(root: Path) -> None:
    """Remove what an earlier (other-spec or unfinished) build left; touch nothing else in ``root``."""
    (root / "archive.json").unlink(missing_ok=True)
    for name in ("cogs", S2_COLLECTION, LC_COLLECTION):
        shutil.rmtree(root / name, ignore_errors=True)
    for name in ("catalog.json", "biomes.geojson"):
        (root / name).unlink(missing_ok=True)
    root.mkdir(parents=True, exist_ok=True)
