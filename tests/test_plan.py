"""pw_ray.plan: where the points of a pretraining set go."""

import json

import numpy as np
import pandas as pd
import pytest
import shapely
from shapely.geometry import box

from pw_ray.config import CONTINENTS, PretrainSet
from pw_ray.plan import (continent_counts, haversine_m, label_points, plan_set,
                         sample_points)
from pw_ray.regions import region_geometry, regions_of


def test_global_gives_equal_counts():
    df = sample_points({"global": 1.0}, 60, seed=0)
    assert df["region"].value_counts().to_dict() == {c: 10 for c in CONTINENTS}


def test_weighted_mix_counts_use_largest_remainder():
    # 0.5·7 = 3.5, 0.3·7 = 2.1, 0.2·7 = 1.4 → floors 3, 2, 1 and the one left goes to eu.
    assert continent_counts({"eu": 0.5, "af": 0.3, "sa": 0.2}, 7) == {"af": 2, "eu": 4, "sa": 1}
    df = sample_points({"eu": 5, "af": 3, "sa": 2}, 7, seed=1)
    assert df["region"].value_counts().to_dict() == {"eu": 4, "af": 2, "sa": 1}


def test_counts_sum_to_n_for_awkward_weights():
    counts = continent_counts({c: 1 / 3 for c in CONTINENTS}, 1001)
    assert sum(counts.values()) == 1001
    assert max(counts.values()) - min(counts.values()) == 1


def test_frame_has_the_contract_columns_and_ids():
    df = sample_points({"oc": 1.0}, 3, seed=7, set_name="oc-small")
    assert list(df.columns) == ["point_id", "set", "lon", "lat", "region", "seed"]
    assert df["point_id"].tolist() == ["oc-small-000000", "oc-small-000001", "oc-small-000002"]
    assert set(df["set"]) == {"oc-small"}
    assert df["lon"].dtype == np.float64 and df["lat"].dtype == np.float64
    assert df["seed"].tolist() == [7, 7, 7]


@pytest.mark.parametrize("code", CONTINENTS)
def test_every_point_lies_in_its_continent(code):
    df = sample_points({code: 1.0}, 300, seed=3)
    assert (df["region"] == code).all()
    found = regions_of(df["lon"].to_numpy(), df["lat"].to_numpy(), tolerance_deg=0)
    assert found.tolist() == [code] * 300


def test_sampling_is_area_correct_on_the_sphere():
    # Share of Europe's points north of 55°N vs that share of its area; area is measured in
    # the cylindrical equal-area projection (x = lon, y = sin lat), where it is exact.
    eu = region_geometry("eu")
    equal_area = shapely.transform(eu, lambda xy: np.column_stack([xy[:, 0], np.sin(np.radians(xy[:, 1]))]))
    north = shapely.intersection(equal_area, box(-180, np.sin(np.radians(55)), 180, 1)).area
    expected = north / equal_area.area
    df = sample_points({"eu": 1.0}, 20_000, seed=11)
    observed = (df["lat"] > 55).mean()
    assert observed == pytest.approx(expected, abs=0.015)  # ~4 binomial standard errors


def test_same_seed_gives_the_same_frame():
    a = sample_points({"global": 1.0}, 120, seed=5, set_name="g")
    b = sample_points({"global": 1.0}, 120, seed=5, set_name="g")
    pd.testing.assert_frame_equal(a, b)


def test_different_seed_gives_different_points():
    a = sample_points({"global": 1.0}, 120, seed=5)
    b = sample_points({"global": 1.0}, 120, seed=6)
    assert not np.allclose(a["lon"].to_numpy(), b["lon"].to_numpy())


def test_adding_a_continent_keeps_the_others_points():
    alone = sample_points({"eu": 1.0}, 20, seed=2)
    mixed = sample_points({"eu": 1.0, "af": 1.0}, 40, seed=2)
    eu = mixed[mixed["region"] == "eu"]
    np.testing.assert_array_equal(eu["lon"].to_numpy(), alone["lon"].to_numpy())
    np.testing.assert_array_equal(eu["lat"].to_numpy(), alone["lat"].to_numpy())


def test_min_spacing_is_respected_across_the_whole_set():
    spacing = 300_000.0
    df = sample_points({"eu": 1.0, "as": 1.0}, 120, seed=4, min_spacing_m=spacing)
    lon, lat = df["lon"].to_numpy(), df["lat"].to_numpy()
    d = haversine_m(lon[:, None], lat[:, None], lon[None, :], lat[None, :])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= spacing


def test_impossible_spacing_raises_naming_the_region():
    with pytest.raises(ValueError, match=r"region 'oc'.*only \d+ of 200 points.*2000000 m"):
        sample_points({"oc": 1.0}, 200, seed=0, min_spacing_m=2_000_000.0)


def test_coverage_restricts_points_to_the_polygons():
    footprints = [box(10.0, 45.0, 11.0, 46.0), box(20.0, 50.0, 20.5, 50.5)]
    df = sample_points({"eu": 1.0}, 200, seed=9, coverage={"eu": footprints})
    inside = shapely.contains_xy(shapely.union_all(footprints), df["lon"].to_numpy(), df["lat"].to_numpy())
    assert inside.all()
    # Both footprints get points, roughly in proportion to their areas (4:1).
    share_first = shapely.contains_xy(footprints[0], df["lon"].to_numpy(), df["lat"].to_numpy()).mean()
    assert 0.65 < share_first < 0.92


def test_coverage_over_the_sea_only_keeps_the_land_part():
    # Straddles Portugal's coast: the western half is Atlantic.
    footprint = box(-11.0, 39.0, -8.0, 40.0)
    df = sample_points({"eu": 1.0}, 100, seed=0, coverage={"eu": [footprint]})
    assert (regions_of(df["lon"].to_numpy(), df["lat"].to_numpy(), tolerance_deg=0) == "eu").all()


def test_coverage_missing_a_needed_region_raises():
    with pytest.raises(ValueError, match="region 'af'"):
        sample_points({"af": 1.0}, 5, seed=0, coverage={"eu": [box(10, 45, 11, 46)]})


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        sample_points({"eu": 1.0}, 5, seed=-1)


def test_label_points_assigns_biome_from_geojson(tmp_path):
    biomes = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"biome": "temperate_forest"},
             "geometry": shapely.geometry.mapping(box(0, 40, 10, 50))},
            {"type": "Feature", "properties": {"biome": "desert"},
             "geometry": shapely.geometry.mapping(box(20, 20, 30, 30))},
        ],
    }
    path = tmp_path / "biomes.geojson"
    path.write_text(json.dumps(biomes))
    df = pd.DataFrame({"lon": [2.35, 25.0, -60.0], "lat": [48.86, 25.0, -10.0]})
    out = label_points(df, str(path), landcover=lambda lons, lats: np.where(lats > 0, "cropland", None))
    assert out["biome"].tolist() == ["temperate_forest", "desert", "unknown"]
    assert out["landcover"].tolist() == ["cropland", "cropland", "unknown"]


def test_label_points_without_sources_is_unknown():
    df = pd.DataFrame({"lon": [2.35], "lat": [48.86]})
    out = label_points(df, None, None)
    assert out["biome"].tolist() == ["unknown"] and out["landcover"].tolist() == ["unknown"]


def test_plan_set_follows_the_pretrain_set():
    pset = PretrainSet(name="mix", region={"na": 2, "sa": 1}, size=9, seed=3)
    df = plan_set(pset)
    assert list(df.columns) == ["point_id", "set", "lon", "lat", "region", "biome", "landcover", "seed"]
    assert df["region"].value_counts().to_dict() == {"na": 6, "sa": 3}
    assert set(df["set"]) == {"mix"} and set(df["seed"]) == {3}
    assert df["point_id"].iloc[0] == "mix-000000"
