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
