"""Derive ``pw_ray/data/continents.geojson`` from Natural Earth 1:110m countries.

Source: the public-domain Natural Earth ``naturalearth_lowres`` shapefile (177 countries)
shipped inside the ``geopandas==0.14.4`` wheel on PyPI, under
``geopandas/datasets/naturalearth_lowres/``. The wheel is only unzipped, never installed.

Dev-time tool: it needs ``pyshp`` (``pip install pyshp``) to read the shapefile. Neither
pyshp nor geopandas is a runtime dependency of pw-ray; the package ships the derived file
and reads it with ``json`` + ``shapely`` (see ``pw_ray.regions``).

What it does, per country polygon *part* (an island, an exclave, a mainland):

1. map Natural Earth's ``continent`` field to a pw-ray code (``af as eu na oc sa``) and drop
   ``Antarctica`` and ``Seven seas (open ocean)`` (remote islands such as Kerguelen);
2. fix what that field gets wrong for sampling by location: Russia is cut at the Urals
   (60°E; east of it, and Chukotka across the antimeridian, is Asia), and overseas parts of
   a country go to the continent they lie on (French Guiana → South America, Hawaii →
   Oceania, East Thrace → Europe), see ``PART_RULES``;
3. dissolve per continent (``shapely.unary_union``), drop sliver holes left between
   neighbouring countries, simplify slightly and round to 1e-4° (~11 m), far below the
   ~1 km precision of the 1:110m coastlines;
4. write a GeoJSON FeatureCollection, one feature per continent, property ``region``.

Rerunnable and deterministic: same wheel → byte-identical output (the wheel's SHA-256 is
logged). Usage::

    pip download --no-deps geopandas==0.14.4 -d /tmp/gpd   # optional: the script does it
    python scripts/make_continents.py [--wheel /tmp/gpd/geopandas-0.14.4-py3-none-any.whl]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import shapely
from shapely.geometry import MultiPolygon, Polygon, box, mapping, shape
from shapely.geometry.polygon import orient

log = logging.getLogger("make_continents")

GEOPANDAS_WHEEL = "geopandas==0.14.4"
SHAPEFILE_STEM = "geopandas/datasets/naturalearth_lowres/naturalearth_lowres"
#: The .cpg next to the shapefile says ISO-8859-1 (e.g. "Côte d'Ivoire").
DBF_ENCODING = "latin-1"
OUTPUT = Path(__file__).resolve().parents[1] / "pw_ray" / "data" / "continents.geojson"

CONTINENT_CODES = {
    "Africa": "af", "Asia": "as", "Europe": "eu", "North America": "na",
    "Oceania": "oc", "South America": "sa",
}
DROPPED_CONTINENTS = {"Antarctica", "Seven seas (open ocean)"}
CONTINENT_NAMES = {
    "af": "Africa", "as": "Asia", "eu": "Europe", "na": "North America",
    "oc": "Oceania", "sa": "South America",
}

#: Countries cut along a meridian (degrees east) before their parts are classified, because
#: one Natural Earth polygon spans two continents: Russia's mainland straddles the Urals.
SPLIT_MERIDIANS: dict[str, float] = {"RUS": 60.0}

#: (iso_a3, test on the part's representative point (lon, lat), continent code); the first
#: matching rule wins, parts that match none keep their country's continent.
PART_RULES: list[tuple[str, Callable[[float, float], bool], str]] = [
    # Russia east of the Urals, and Chukotka west of the antimeridian, is Asia.
    ("RUS", lambda lon, lat: lon > 60.0 or lon < -160.0, "as"),
    # French Guiana is France's part in South America.
    ("FRA", lambda lon, lat: lon < -30.0, "sa"),
    # Hawaii lies in Polynesia; Alaska stays North American.
    ("USA", lambda lon, lat: lat < 30.0 and lon < -140.0, "oc"),
    # East Thrace (Istanbul's European side) lies west of the Bosphorus (~29°E).
    ("TUR", lambda lon, lat: lon < 29.0, "eu"),
]

#: Holes smaller than this (deg²) after dissolving are gaps between neighbouring countries'
#: 1:110m borders, not lakes; 1 deg² is ~12,000 km² at the equator.
SLIVER_HOLE_DEG2 = 1.0
#: Douglas-Peucker tolerance, degrees (~1 km): below the 1:110m scale's own precision.
SIMPLIFY_DEG = 0.01
#: Output coordinate grid, degrees (~11 m).
GRID_DEG = 1e-4


def find_or_download_wheel(wheel: Path | None, target: Path) -> Path:
    """Return the geopandas wheel, downloading it with pip into ``target`` when no path is given."""
    if wheel is not None:
        if not wheel.exists():
            raise FileNotFoundError(f"--wheel {wheel} does not exist")
        return wheel
    log.info("downloading %s into %s", GEOPANDAS_WHEEL, target)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         GEOPANDAS_WHEEL, "-d", str(target)],
        check=True,
    )
    found = sorted(target.glob("geopandas-*.whl"))
    if not found:
        raise FileNotFoundError(f"pip download of {GEOPANDAS_WHEEL} left no wheel in {target}")
    return found[0]


def read_countries(wheel: Path) -> list[tuple[dict, Polygon | MultiPolygon]]:
    """Read (record, geometry in lon/lat degrees) for every country in the wheel's shapefile."""
    try:
        import shapefile  # pyshp: dev-time only, see the module docstring
    except ImportError:
        raise SystemExit("this script needs pyshp: pip install pyshp") from None

    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    log.info("reading %s (sha256 %s)", wheel.name, digest)
    with zipfile.ZipFile(wheel) as zf:
        blobs = {ext: io.BytesIO(zf.read(f"{SHAPEFILE_STEM}.{ext}")) for ext in ("shp", "shx", "dbf")}
    reader = shapefile.Reader(shp=blobs["shp"], shx=blobs["shx"], dbf=blobs["dbf"],
                              encoding=DBF_ENCODING)
    countries = []
    for shape_record in reader.iterShapeRecords():
        record = shape_record.record.as_dict()
        geom = shapely.make_valid(shape(shape_record.shape.__geo_interface__))
        countries.append((record, geom))
    log.info("read %d countries", len(countries))
    return countries


def polygon_parts(geom) -> list[Polygon]:
    """The polygons of a (multi)polygon or geometry collection, in stored order."""
    if isinstance(geom, Polygon):
        return [geom] if not geom.is_empty else []
    return [p for g in getattr(geom, "geoms", []) for p in polygon_parts(g)]


def split_at_meridian(geom, lon: float) -> list[Polygon]:
    """Cut ``geom`` into the parts west and east of meridian ``lon`` (degrees east)."""
    west = geom.intersection(box(-180.0, -90.0, lon, 90.0))
    east = geom.intersection(box(lon, -90.0, 180.0, 90.0))
    return polygon_parts(west) + polygon_parts(east)


def classify_parts(countries) -> dict[str, list[Polygon]]:
    """Assign every country part to a continent code; see ``PART_RULES``."""
    by_code: dict[str, list[Polygon]] = {code: [] for code in CONTINENT_NAMES}
    for record, geom in countries:
        continent = record["continent"]
        if continent in DROPPED_CONTINENTS:
            log.info("dropping %s (%s)", record["name"], continent)
            continue
        if continent not in CONTINENT_CODES:
            raise ValueError(f"unknown continent {continent!r} for {record['name']!r}; "
                             f"expected one of {sorted(CONTINENT_CODES)} or {sorted(DROPPED_CONTINENTS)}")
        iso = record["iso_a3"]
        parts = (split_at_meridian(geom, SPLIT_MERIDIANS[iso]) if iso in SPLIT_MERIDIANS
                 else polygon_parts(geom))
        for part in parts:
            code = CONTINENT_CODES[continent]
            point = part.representative_point()
            for rule_iso, test, rule_code in PART_RULES:
                if rule_iso == iso and test(point.x, point.y):
                    code = rule_code
                    break
            if code != CONTINENT_CODES[continent]:
                log.info("%s part at (%.1f, %.1f), %.2f deg²: %s → %s", record["name"],
                         point.x, point.y, part.area, CONTINENT_CODES[continent], code)
            by_code[code].append(part)
    return by_code


def drop_sliver_holes(geom, min_hole_deg2: float) -> MultiPolygon:
    """Remove interior rings smaller than ``min_hole_deg2`` (gaps between country borders)."""
    polygons = []
    for poly in polygon_parts(geom):
        holes = []
        for ring in poly.interiors:
            area = Polygon(ring).area
            if area >= min_hole_deg2:
                holes.append(ring)
            else:
                log.debug("dropping a %.4f deg² hole at %s", area, ring.coords[0])
        polygons.append(Polygon(poly.exterior, holes))
    return MultiPolygon(polygons)


def dissolve(parts: list[Polygon]) -> MultiPolygon:
    """Union, clean, simplify and round one continent's parts; parts sorted for determinism."""
    merged = shapely.unary_union(parts)
    merged = drop_sliver_holes(merged, SLIVER_HOLE_DEG2)
    merged = merged.simplify(SIMPLIFY_DEG, preserve_topology=True)
    merged = shapely.set_precision(merged, GRID_DEG)
    polygons = sorted(polygon_parts(merged), key=lambda p: (-round(p.area, 6), p.bounds))
    # RFC 7946: exterior rings counter-clockwise, holes clockwise.
    return MultiPolygon([orient(p, sign=1.0) for p in polygons])


def _round_coords(obj):
    if isinstance(obj, float):
        return round(obj, 4)
    if isinstance(obj, (list, tuple)):
        return [_round_coords(x) for x in obj]
    return obj


def feature_collection(continents: dict[str, MultiPolygon]) -> str:
    """GeoJSON text: one feature per line so diffs of a regenerated file stay readable."""
    lines = []
    for code, geom in continents.items():
        feature = {
            "type": "Feature",
            "properties": {"region": code, "name": CONTINENT_NAMES[code]},
            "geometry": {"type": "MultiPolygon",
                         "coordinates": _round_coords(mapping(geom)["coordinates"])},
        }
        lines.append(json.dumps(feature, separators=(",", ":")))
    header = ('{"type":"FeatureCollection",'
              '"source":"Natural Earth 1:110m admin-0 countries (public domain) via the '
              'geopandas 0.14.4 wheel; derived by scripts/make_continents.py",\n"features":[\n')
    return header + ",\n".join(lines) + "\n]}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--wheel", type=Path, help="geopandas-0.14.4 wheel (downloaded if omitted)")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    with tempfile.TemporaryDirectory(prefix="pw-ray-gpd-") as download_dir:
        countries = read_countries(find_or_download_wheel(args.wheel, Path(download_dir)))
    parts = classify_parts(countries)
    continents = {code: dissolve(parts[code]) for code in CONTINENT_NAMES}
    for code, geom in continents.items():
        log.info("%s: %d polygons, %d vertices, %.0f deg²", code, len(geom.geoms),
                 shapely.get_num_coordinates(geom), geom.area)
    text = feature_collection(continents)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    log.info("wrote %s (%d bytes)", args.output, len(text.encode()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
