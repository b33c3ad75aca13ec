"""Failed chips: transient or permanent, grouped reasons, the budget, and a linear manifest."""

import json

import numpy as np
import pandas as pd
import pytest

from bench.manifest import quadratic_manifest
from pw_ray.ingest.catalogs import MissingBandError
from pw_ray.ingest.failures import (PERMANENT, TRANSIENT, budget_error, failure_kind, reason_key, retryable,
                                    top_reasons)
from pw_ray.ingest.pipeline import build_manifest


@pytest.mark.parametrize("err, kind", [
    (TimeoutError("read timed out"), TRANSIENT),
    (ConnectionError("reset"), TRANSIENT),
    (OSError("HTTP response code: 503"), TRANSIENT),
    (OSError("CURL error: Connection reset by peer"), TRANSIENT),
    (RuntimeError("429 Too Many Requests"), TRANSIENT),
    (MissingBandError("item x lacks B10"), PERMANENT),
    (OSError("'/x/B04.tif' not recognized as being in a supported file format."), PERMANENT),
    (OSError("TIFFReadEncodedTile() failed."), PERMANENT),
    (OSError("HTTP response code: 404"), PERMANENT),
    (RuntimeError("something nobody expected"), TRANSIENT),
])
def test_failure_kind(err, kind):
    assert failure_kind(err) == kind
    assert failure_kind(f"{type(err).__name__}: {err}") == kind


def test_retryable_follows_the_kind_and_the_retry_failed_flag():
    assert retryable(TRANSIENT) and not retryable(PERMANENT) and retryable(PERMANENT, retry_failed=True)
    assert not retryable("")


def test_reasons_group_across_scenes_and_keep_http_codes():
    reasons = [f"RasterioIOError: HTTP response code: 503 on https://h/{i}/B04.tif?<redacted>" for i in range(5)]
    reasons += ["MissingBandError: item S2A_1 lacks B10"] * 2 + ["KeyError: x"]
    assert reason_key(reasons[0]) == "RasterioIOError: HTTP response code: 503 on <url>"
    top = top_reasons(reasons)
    assert top[0] == ("RasterioIOError: HTTP response code: 503 on <url>", 5)
    assert top[1] == ("MissingBandError: item S#A_# lacks B#", 2)
    assert len(top) == 3


def test_budget_error_names_counts_and_reasons():
    assert budget_error("eu", 100, 96, 4, 0, ["E: a"] * 4, 0.05) is None
    msg = budget_error("eu", 100, 90, 10, 0, ["E: a"] * 7 + ["F: b"] * 3, 0.05)
    assert msg.startswith("eu: 10/100 chips failed (10.0%), more than chips.max_failed_fraction = 0.05")
    assert "E: a (×7); F: b (×3)" in msg
    none = budget_error("eu", 10, 0, 0, 10, ["cloud #.# > #.#"] * 10, 0.05)
    assert none.startswith("eu: no chips produced (0/10 ok, 10 skipped, 0 failed)")
    assert "cloud" in none


def test_build_manifest_equals_the_naive_one():
    rng = np.random.default_rng(0)
    n = 2000
    status = rng.choice(["ok", "skipped", "failed"], n, p=[0.8, 0.15, 0.05])
    index = pd.DataFrame({
        "point_id": [f"p{i:05d}" for i in range(n)], "chip_id": [f"p{i:05d}" for i in range(n)], "set": "s",
        "lon": rng.uniform(-10, 10, n), "lat": rng.uniform(-10, 10, n), "region": rng.choice(["eu", "af"], n),
        "status": status, "reason": np.where(status == "ok", "", "why"),
        "failure": np.where(status == "failed", "transient", ""), "item_id": "it"})
    chunked = index[index["status"] == "ok"].copy()
    chunked["chunk"] = np.arange(len(chunked)) // 64
    fail_ids = rng.choice(chunked["chip_id"].to_numpy(), 150, replace=False)
    results = [{"failed": json.dumps([[c, f"E: {c}", "permanent"] for c in fail_ids[:100]])},
               {"failed": json.dumps([[c, f"E: {c}", "transient"] for c in fail_ids[100:]])}, {"failed": "[]"}]
    got = build_manifest(index, chunked, results)
    want = quadratic_manifest(index, chunked, results)  # the old construction, as the reference
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
    assert (got.loc[got["chip_id"].isin(fail_ids), "status"] == "failed").all()
    assert got["shard"].notna().sum() == (got["status"] == "ok").sum()
