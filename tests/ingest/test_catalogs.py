"""Catalog adapters against real item layouts (../shared/fixtures/stac) and PC-shaped items."""

import json
from pathlib import Path

import pytest

from pw_ray.ingest.catalogs import MissingBandError, adapter_for

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "stac"


def _items(name):
    path = FIXTURES / name
    if not path.exists():
        pytest.skip(f"shared fixtures not found at {path}")
    return json.loads(path.read_text())["features"]


def test_earth_search_maps_common_names_to_canonical_bands():
    item = _items("earthsearch-sentinel-2-l2a.json")[0]
    es = adapter_for("earth-search")
    assert es.asset_key(item, "B02") == "blue"
    assert es.asset_key(item, "B8A") == "nir08"
    assert es.asset_key(item, "B05") == "rededge1"
    assert es.asset_key(item, "SCL") == "scl"


def test_earth_search_l2a_offset_follows_boa_offset_applied_flag():
    item = _items("earthsearch-sentinel-2-l2a.json")[0]
    es = adapter_for("earth-search")
    assert item["properties"]["earthsearch:boa_offset_applied"] is True
    assert es.offset(item, "B04") == 0
    item = json.loads(json.dumps(item))
    item["properties"]["earthsearch:boa_offset_applied"] = False
    assert es.offset(item, "B04") == -1000  # baseline 05.11 still carries ESA's +1000


@pytest.mark.parametrize("baseline, expected", [("05.11", -1000), ("04.00", -1000), ("03.01", 0), ("02.14", 0)])
def test_earth_search_l2a_unflagged_item_follows_the_baseline_rule_not_raster_bands(baseline, expected):
    """An unflagged v1 item carries raster:bands offset −0.1 whatever its baseline; it is ignored."""
    item = json.loads(json.dumps(_items("earthsearch-sentinel-2-l2a.json")[0]))
    del item["properties"]["earthsearch:boa_offset_applied"]
    item["properties"]["s2:processing_baseline"] = baseline
    assert item["assets"]["red"]["raster:bands"][0]["offset"] == -0.1
    es = adapter_for("earth-search")
    assert es.offset(item, "B04") == expected and es.offset(item, "B8A") == expected
    assert es.offset(item, "SCL") == 0


def test_earth_search_c1_offset_from_raster_bands():
    item = _items("earthsearch-sentinel-2-c1-l2a.json")[0]
    assert adapter_for("earth-search").offset(item, "B04") == -1000
    assert adapter_for("earth-search").offset(item, "SCL") == 0


def test_generic_adapter_finds_bands_by_eo_bands_names():
    item = _items("earthsearch-sentinel-2-c1-l2a.json")[0]
    g = adapter_for("generic")
    assert g.asset_key(item, "B03") == "green"
    assert g.offset(item, "B03") == -1000


def _pc_item(baseline):
    return {"id": "S2A_X", "properties": {"s2:processing_baseline": baseline},
            "assets": {b: {"href": f"/x/{b}.tif"} for b in ("B02", "B03", "SCL")}}


def test_planetary_computer_offset_by_baseline():
    pc = adapter_for("planetary-computer")
    assert pc.offset(_pc_item("05.09"), "B02") == -1000
    assert pc.offset(_pc_item("04.00"), "B02") == -1000
    assert pc.offset(_pc_item("03.01"), "B02") == 0
    assert pc.offset(_pc_item("05.09"), "SCL") == 0


def test_missing_band_names_item_and_band():
    with pytest.raises(MissingBandError, match=r"item 'S2A_X' has no asset for band B11"):
        adapter_for("planetary-computer").asset_key(_pc_item("05.09"), "B11")


def test_planetary_computer_signs_only_blob_storage_hrefs():
    pc = adapter_for("planetary-computer")
    assert pc.sign("/local/B02.tif") == "/local/B02.tif"
    assert pc.sign("http://127.0.0.1:8000/B02.tif") == "http://127.0.0.1:8000/B02.tif"


def test_unknown_catalog_lists_allowed():
    with pytest.raises(ValueError, match="allowed: planetary-computer, earth-search, generic"):
        adapter_for("sentinel-hub")
