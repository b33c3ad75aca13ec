"""pw_ray.regions: continent geometry from the packaged Natural Earth derivative."""

import json
from importlib import resources

import numpy as np
import pytest
import shapely

from pw_ray.config import CONTINENTS
from pw_ray.regions import region_geometry, region_of, regions_of

CITIES = {
    "Paris": (2.35, 48.86, "eu"),
    "Nairobi": (36.82, -1.29, "af"),
    "Beijing": (116.40, 39.90, "as"),
    "Denver": (-104.99, 39.74, "na"),
    "Sydney": (151.21, -33.87, "oc"),
    "Brasília": (-47.88, -15.79, "sa"),
    "Moscow": (37.62, 55.76, "eu"),          # Russia west of the Urals
    "Novosibirsk": (82.93, 55.03, "as"),     # Russia east of the Urals
    "Cayenne": (-52.33, 4.92, "sa"),         # French Guiana, France's part in South America
    "Anadyr": (177.51, 64.73, "as"),         # Chukotka, not Europe although Russia is
    "Honolulu": (-157.86, 21.31, "oc"),      # Hawaii lies in Polynesia
    "Anchorage": (-149.90, 61.22, "na"),
    "Cairo": (31.24, 30.04, "af"),
}


@pytest.mark.parametrize("city", sorted(CITIES))
def test_city_lies_in_its_continent(city):
    lon, lat, code = CITIES[city]
    assert region_of(lon, lat) == code


def test_mid_atlantic_is_ocean():
    assert region_of(-30.0, 30.0) is None


def test_regions_of_is_vectorised_and_keeps_shape():
    lons = np.array([[2.35, -30.0], [82.93, -52.33]])
    lats = np.array([[48.86, 30.0], [55.03, 4.92]])
    out = regions_of(lons, lats)
    assert out.shape == (2, 2)
    assert out.tolist() == [["eu", None], ["as", "sa"]]


def test_point_just_off_a_coarse_coast_gets_the_nearest_continent_within_tolerance():
    # Off Cabo da Roca, Portugal's west tip: ocean in the 1:110m geometry.
    lon, lat = -9.60, 38.78
    assert region_of(lon, lat, tolerance_deg=0) is None
    assert region_of(lon, lat, tolerance_deg=0.5) == "eu"


def test_nan_coordinates_are_no_region():
    assert regions_of([np.nan, 2.35], [0.0, 48.86]).tolist() == [None, "eu"]


def test_longitudes_wrap():
    assert region_of(2.35 + 360.0, 48.86) == "eu"


def test_global_is_union_of_the_six_continents():
    union_area = sum(region_geometry(c).area for c in CONTINENTS)
    assert region_geometry("global").area == pytest.approx(union_area, rel=1e-9)


def test_continents_do_not_overlap():
    geoms = [region_geometry(c) for c in CONTINENTS]
    for i in range(len(geoms)):
        for j in range(i + 1, len(geoms)):
            assert shapely.intersection(geoms[i], geoms[j]).area == pytest.approx(0.0, abs=1e-9)


def test_unknown_region_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown region 'xx'.*af"):
        region_geometry("xx")


def test_packaged_file_is_small_and_has_one_feature_per_continent():
    data = resources.files("pw_ray").joinpath("data", "continents.geojson")
    text = data.read_text(encoding="utf-8")
    assert len(text.encode()) < 500_000
    regions = [f["properties"]["region"] for f in json.loads(text)["features"]]
    assert regions == list(CONTINENTS)
