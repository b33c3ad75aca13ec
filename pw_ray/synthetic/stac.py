"""The archive's STAC side: item and asset dicts, the two collections, the static catalog, reading it back."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from rasterio.transform import Affine

from pw_ray import bands as B
from pw_ray import storage
from pw_ray.ingest.landcover import SYNTHETIC_LANDCOVER_COLLECTION, WORLDCOVER_CODES
from pw_ray.synthetic.landcover import LANDCOVER_CLASSES
from pw_ray.synthetic.pixels import baseline_offset
from pw_ray.synthetic.scenes import Scene, bbox, polygon

S2_COLLECTION = "sentinel-2-l2a"
#: The land-cover collection's id; ingest defaults to it for ``stac.kind: synthetic``.
LC_COLLECTION = SYNTHETIC_LANDCOVER_COLLECTION
COG_TYPE = "image/tiff; application=geotiff; profile=cloud-optimized"

STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
]
LC_EXTENSIONS = [
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/classification/v1.1.0/schema.json",
]


@dataclass(frozen=True)
class ArchiveInfo:
    """Where a built archive's files are (all absolute paths)."""

    root: Path
    catalog_path: Path
    items_path: Path
    collection_path: Path
    landcover_items_path: Path
    landcover_collection_path: Path
    biomes_path: Path
    n_items: int


def load_items(info: ArchiveInfo) -> list[dict]:
    """The archive's ``sentinel-2-l2a`` items as STAC item dicts, in build order."""
    return _read_ndjson(info.items_path)


def load_landcover_items(info: ArchiveInfo) -> list[dict]:
    """The archive's ``synthetic-landcover`` items (asset ``map``), one per scene."""
    return _read_ndjson(info.landcover_items_path)


def rewrite_hrefs(item: dict, prefix_from: str, prefix_to: str) -> dict:
    """A copy of ``item`` whose asset and link hrefs starting with ``prefix_from`` start with ``prefix_to``.

    E.g. ``rewrite_hrefs(item, str(info.root), "http://127.0.0.1:8000")`` to read the COGs over HTTP.
    """
    prefix_from, prefix_to = str(prefix_from), str(prefix_to)
    out = copy.deepcopy(item)
    for obj in list(out.get("assets", {}).values()) + list(out.get("links", [])):
        href = obj.get("href", "")
        if href.startswith(prefix_from):
            obj["href"] = prefix_to + href[len(prefix_from):]
    return out


def band_asset(key: str, href: Path, shape: tuple[int, int], transform: Affine, baseline: str) -> dict:
    """The STAC asset of one band's COG (``eo:bands``, ``raster:bands`` with the baseline's offset)."""
    res = B.resolution(key)
    asset = {"href": str(href), "type": COG_TYPE, "title": _TITLES[key], "roles": ["data"], "gsd": float(res),
             "proj:shape": [int(shape[0]), int(shape[1])], "proj:transform": [float(v) for v in transform[:6]]}
    if key == B.SCL:
        asset["raster:bands"] = [{"nodata": 0, "data_type": "uint8", "spatial_resolution": float(res)}]
        return asset
    info = B.BAND_INFO[key]
    asset["eo:bands"] = [{"name": key, "common_name": info.common_name, "description": _TITLES[key].split(" - ")[1],
                          "center_wavelength": info.center_wavelength_um,
                          "full_width_half_max": info.full_width_half_max_um}]
    # The physical rule, also for readers that honour raster:bands: reflectance = DN·1e-4 + offset.
    asset["raster:bands"] = [{"nodata": 0, "data_type": "uint16", "spatial_resolution": float(res), "scale": 0.0001,
                              "offset": -0.1 if baseline_offset(baseline) else 0.0}]
    return asset


_TITLES = {
    "B01": "Band 1 - Coastal aerosol - 60m", "B02": "Band 2 - Blue - 10m", "B03": "Band 3 - Green - 10m",
    "B04": "Band 4 - Red - 10m", "B05": "Band 5 - Vegetation red edge 1 - 20m",
    "B06": "Band 6 - Vegetation red edge 2 - 20m", "B07": "Band 7 - Vegetation red edge 3 - 20m",
    "B08": "Band 8 - NIR - 10m", "B8A": "Band 8A - Vegetation red edge 4 - 20m",
    "B09": "Band 9 - Water vapor - 60m", "B11": "Band 11 - SWIR (1.6) - 20m", "B12": "Band 12 - SWIR (2.2) - 20m",
    "SCL": "Scene classification map (SCL)",
}


def _scl_percentages(scl: np.ndarray) -> dict[str, float]:
    """Sen2Cor-style percentages: no data over all pixels, every class over valid pixels."""
    counts = np.bincount(scl.ravel(), minlength=12).astype(np.float64)
    valid = max(1.0, counts.sum() - counts[B.SCL_NODATA])

    def pct(*classes: int) -> float:
        return round(100 * float(sum(counts[c] for c in classes)) / valid, 4)

    return {
        # ESA's CLOUDY_PIXEL_PERCENTAGE: medium + high probability clouds + thin cirrus (no shadows).
        "eo:cloud_cover": pct(B.SCL_CLOUD_MEDIUM, B.SCL_CLOUD_HIGH, B.SCL_CIRRUS),
        "s2:nodata_pixel_percentage": round(100 * float(counts[B.SCL_NODATA]) / counts.sum(), 4),
        "s2:high_proba_clouds_percentage": pct(B.SCL_CLOUD_HIGH),
        "s2:medium_proba_clouds_percentage": pct(B.SCL_CLOUD_MEDIUM),
        "s2:thin_cirrus_percentage": pct(B.SCL_CIRRUS),
        "s2:cloud_shadow_percentage": pct(B.SCL_CLOUD_SHADOW),
        "s2:vegetation_percentage": pct(B.SCL_VEGETATION),
        "s2:not_vegetated_percentage": pct(B.SCL_NOT_VEGETATED),
        "s2:water_percentage": pct(B.SCL_WATER),
        "s2:snow_ice_percentage": pct(B.SCL_SNOW),
    }


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def s2_item(scene: Scene, corners: dict, assets: dict, scl: np.ndarray) -> dict:
    """A ``sentinel-2-l2a`` item shaped like Planetary Computer's, cloud fields counted from ``scl``."""
    props = {
        "datetime": _iso(scene.sensed),
        "platform": scene.platform,
        "constellation": "Sentinel 2",
        "instruments": ["msi"],
        **_scl_percentages(scl),
        "proj:epsg": scene.epsg,
        "sat:orbit_state": "descending",
        "sat:relative_orbit": scene.orbit,
        "s2:mgrs_tile": scene.mgrs_tile,
        "s2:product_type": "S2MSI2A",
        "s2:processing_baseline": scene.baseline,
        "s2:product_uri": f"{scene.item_id}.SAFE",
        "s2:mean_solar_azimuth": round(scene.sun_azimuth, 4),
        "s2:mean_solar_zenith": round(scene.sun_zenith, 4),
        "synthetic:region": scene.region,
    }
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": STAC_EXTENSIONS,
        "id": scene.item_id, "collection": S2_COLLECTION,
        "geometry": polygon(corners, ("bl", "bm", "br", "tr", "tm", "tl")), "bbox": bbox(corners),
        "properties": props, "links": [], "assets": assets,
    }


def lc_item(scene: Scene, lc_id: str, corners: dict, href: Path, shape, transform: Affine) -> dict:
    """The scene's ``synthetic-landcover`` item: one ``map`` asset of WorldCover codes on its 10 m grid."""
    classes = [{"value": WORLDCOVER_CODES[c], "name": c, "description": c} for c in LANDCOVER_CLASSES]
    return {
        "type": "Feature", "stac_version": "1.0.0", "stac_extensions": LC_EXTENSIONS,
        "id": lc_id, "collection": LC_COLLECTION,
        "geometry": polygon(corners, ("bl", "bm", "br", "tr", "tm", "tl")), "bbox": bbox(corners),
        "properties": {"datetime": _iso(scene.sensed), "proj:epsg": scene.epsg,
                       "synthetic:region": scene.region, "synthetic:scene": scene.item_id},
        "links": [],
        "assets": {"map": {
            "href": str(href), "type": COG_TYPE, "title": "Land cover (WorldCover codes)", "roles": ["data"],
            "gsd": 10.0, "proj:shape": [int(shape[0]), int(shape[1])],
            "proj:transform": [float(v) for v in transform[:6]],
            "raster:bands": [{"nodata": 0, "data_type": "uint8", "spatial_resolution": 10.0}],
            "classification:classes": classes,
        }},
    }


def _collection(cid: str, description: str, license_: str, extensions: list[str], items: list[dict],
                summaries: dict) -> dict:
    boxes = np.array([it["bbox"] for it in items])
    times = sorted(it["properties"]["datetime"] for it in items)
    return {
        "type": "Collection", "stac_version": "1.0.0", "stac_extensions": extensions, "id": cid,
        "description": description, "license": license_,
        "extent": {"spatial": {"bbox": [[*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist()]]},
                   "temporal": {"interval": [[times[0], times[-1]]]}},
        "summaries": summaries, "links": [],
    }


def write_catalog(root: Path, s2_items: list[dict], lc_items: list[dict], biomes: list[dict]) -> ArchiveInfo:
    """Write both collections (``items.ndjson`` + static catalog), ``catalog.json`` and ``biomes.geojson``."""
    s2_summaries = {"gsd": [10.0, 20.0, 60.0], "platform": ["sentinel-2a", "sentinel-2b"],
                    "instruments": ["msi"], "constellation": ["Sentinel 2"],
                    "eo:bands": [s2_items[0]["assets"][b]["eo:bands"][0] for b in B.SPECTRAL_BANDS]}
    collections = {
        S2_COLLECTION: (_collection(S2_COLLECTION, "Synthetic Sentinel-2 Level-2A scenes (pw-ray test archive)",
                                    "proprietary", STAC_EXTENSIONS, s2_items, s2_summaries), s2_items),
        LC_COLLECTION: (_collection(LC_COLLECTION, "Synthetic land cover (WorldCover codes) on the scenes' grids",
                                    "CC-BY-4.0", LC_EXTENSIONS, lc_items, {"gsd": [10.0]}), lc_items),
    }
    catalog = {"type": "Catalog", "stac_version": "1.0.0", "id": "pw-ray-synthetic",
               "description": "pw-ray's synthetic Sentinel-2 L2A archive with land cover",
               "links": [{"rel": "root", "href": "./catalog.json", "type": "application/json"}]}
    for cid, (coll, items) in collections.items():
        catalog["links"].append({"rel": "child", "href": f"./{cid}/collection.json", "type": "application/json"})
        folder = root / cid
        lines = "".join(json.dumps(it, separators=(",", ":")) + "\n" for it in items)
        storage.write_text(str(folder / "items.ndjson"), lines)
        links = [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                 {"rel": "parent", "href": "../catalog.json", "type": "application/json"}]
        for it in items:
            links.append({"rel": "item", "href": f"./{it['id']}/{it['id']}.json", "type": "application/geo+json"})
            static = dict(it, links=[
                {"rel": "root", "href": "../../catalog.json", "type": "application/json"},
                {"rel": "parent", "href": "../collection.json", "type": "application/json"},
                {"rel": "collection", "href": "../collection.json", "type": "application/json"},
            ])
            storage.write_text(str(folder / it["id"] / f"{it['id']}.json"), json.dumps(static, indent=1))
        storage.write_text(str(folder / "collection.json"), json.dumps(dict(coll, links=links), indent=1))
    storage.write_text(str(root / "catalog.json"), json.dumps(catalog, indent=1))
    storage.write_text(str(root / "biomes.geojson"),
                       json.dumps({"type": "FeatureCollection", "features": biomes}, separators=(",", ":")))
    return archive_info(root, len(s2_items))


def archive_info(root: Path, n_items: int) -> ArchiveInfo:
    """Where the files of an archive under ``root`` are."""
    return ArchiveInfo(
        root=root, catalog_path=root / "catalog.json",
        items_path=root / S2_COLLECTION / "items.ndjson", collection_path=root / S2_COLLECTION / "collection.json",
        landcover_items_path=root / LC_COLLECTION / "items.ndjson",
        landcover_collection_path=root / LC_COLLECTION / "collection.json",
        biomes_path=root / "biomes.geojson", n_items=n_items,
    )


def _read_ndjson(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
