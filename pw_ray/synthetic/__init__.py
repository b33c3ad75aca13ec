"""The embedded Sentinel-2 L2A-like archive: COGs, STAC items, land cover and biomes.

:func:`build_archive` writes, under one folder, a small archive shaped like Planetary
Computer's ``sentinel-2-l2a`` collection (asset keys ``B01`` … ``B12``, ``B8A``, ``SCL``;
10/20/60 m grids in the scene's UTM zone; uint16 reflectance ×1e4 with ESA's +1000
offset from processing baseline 04.00; SCL with clouds, shadows and no-data strips), plus
the layers the diversity measures need: a ``synthetic-landcover`` collection (WorldCover
codes on the scene's 10 m grid) and a biome GeoJSON. Demo and tests run on it; production
runs on real catalogs.

Regions differ on purpose: each continent mixes its own land-cover classes, some many and
evenly (``eu``, ``na``), some few and unevenly (``af``, ``oc``), and every class has its own
12-band spectrum, so a pretraining set's region changes what an encoder can learn.

Layout under ``out_dir``::

    archive.json                         spec, format version, root, item count (written last)
    catalog.json                         static STAC catalog (relative links, absolute asset hrefs)
    biomes.geojson                       biome polygons, EPSG:4326, property ``biome``
    sentinel-2-l2a/collection.json
    sentinel-2-l2a/items.ndjson          one item per line, for pgstac
    sentinel-2-l2a/<id>/<id>.json        the same items inside the static catalog
    synthetic-landcover/…                the same three for the land-cover collection
    cogs/<item_id>/<KEY>.tif             one COG per asset

One module per job: ``scenes`` (where and when each scene is), ``landcover`` (the class
patchwork), ``pixels`` (spectra, clouds, no data), ``biomes`` (the biome layer), ``stac``
(items, collections, catalog, reading them back) and ``archive`` (building it all, reuse).
The public names below are the package's API: ``from pw_ray import synthetic;
synthetic.build_archive(...)``.
"""

from pw_ray.ingest.landcover import WORLDCOVER_CLASSES, WORLDCOVER_CODES
from pw_ray.synthetic.archive import FORMAT_VERSION, build_archive, load_archive
from pw_ray.synthetic.biomes import BIOMES
from pw_ray.synthetic.landcover import LANDCOVER_CLASSES
from pw_ray.synthetic.scenes import _CENTRES  # noqa: F401 (the scene centres, checked by tests)
from pw_ray.synthetic.stac import (COG_TYPE, LC_COLLECTION, LC_EXTENSIONS, S2_COLLECTION, STAC_EXTENSIONS, ArchiveInfo,
                                   load_items, load_landcover_items, rewrite_hrefs)

__all__ = [
    "BIOMES", "COG_TYPE", "FORMAT_VERSION", "LANDCOVER_CLASSES", "LC_COLLECTION", "LC_EXTENSIONS", "S2_COLLECTION",
    "STAC_EXTENSIONS", "WORLDCOVER_CLASSES", "WORLDCOVER_CODES", "ArchiveInfo", "build_archive", "load_archive",
    "load_items", "load_landcover_items", "rewrite_hrefs",
]
