"""chips.gdal_env: one GDAL environment, tunable from the process environment."""

import rasterio.env

from pw_ray.ingest import chips as C


def test_defaults_apply_when_the_environment_is_silent(monkeypatch):
    monkeypatch.delenv("GDAL_HTTP_MAX_RETRY", raising=False)
    with C.gdal_env():
        assert rasterio.env.getenv()["GDAL_HTTP_MAX_RETRY"] == C.GDAL_CLOUD_OPTIONS["GDAL_HTTP_MAX_RETRY"]


def test_environment_beats_defaults_and_overrides_beat_both(monkeypatch):
    monkeypatch.setenv("GDAL_HTTP_MAX_RETRY", "9")
    with C.gdal_env():
        assert rasterio.env.getenv()["GDAL_HTTP_MAX_RETRY"] == "9"
    with C.gdal_env(GDAL_HTTP_MAX_RETRY=2):
        assert str(rasterio.env.getenv()["GDAL_HTTP_MAX_RETRY"]) == "2"


def test_block_cache_is_set_in_bytes(monkeypatch):
    # rasterio hands an integer GDAL_CACHEMAX to GDALSetCacheMax64 (bytes): "256" must not
    # become a 256-byte cache that re-decodes every COG block on each window read.
    monkeypatch.delenv("GDAL_CACHEMAX", raising=False)
    with C.gdal_env():
        assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == 256 * 2**20
    monkeypatch.setenv("GDAL_CACHEMAX", "512")  # an operator's GDAL-style MB value
    with C.gdal_env():
        assert rasterio.env.get_gdal_config("GDAL_CACHEMAX") == 512 * 2**20


def test_cachemax_spellings():
    assert C.cachemax_bytes(64) == 64 * 2**20
    assert C.cachemax_bytes("300000000") == 300_000_000
    assert 0 < C.cachemax_bytes("1%") < C.cachemax_bytes("2%")
    import pytest

    with pytest.raises(ValueError, match="GDAL_CACHEMAX"):
        C.cachemax_bytes("lots")

