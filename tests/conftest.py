"""Shared fixtures: one Ray instance per test session, a small synthetic archive, a demo-like config."""

from __future__ import annotations

import os
import tempfile

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

TINY_CONFIG = {
    "name": "tiny",
    "pretrain_sets": [
        {"name": "europe", "region": "eu", "size": 24, "seed": 1},
        {"name": "africa", "region": "af", "size": 24, "seed": 2},
        {"name": "global", "region": "global", "size": 24, "seed": 3},
    ],
    "stac": {"kind": "synthetic", "max_cloud_cover": 60,
             "synthetic": {"seed": 0, "scenes_per_region": 1, "scene_px": 192, "cloudy_fraction": 0.3}},
    "chips": {"size_px": 32, "max_cloud_fraction": 0.3, "max_nodata_fraction": 0.1, "chunk_size": 16},
    "model": {"preset": "tiny", "patch_size": 8},
    "train": {"epochs": 1, "batch_size": 8, "checkpoint_every": 2, "log_every": 1, "blr": 1e-3},
    "tasks": [
        {"name": "landcover", "kind": "synthetic-landcover", "size": 120, "seed": 11},
        {"name": "population", "kind": "synthetic-population", "size": 120, "seed": 12},
    ],
    "evaluation": {"methods": ["knn", "linear"], "seeds": [0], "task_regions": ["global", "eu", "af"],
                   "min_subset": 10, "knn_k": 5},
    "analysis": {"bootstrap": 50},
    # 500 m blocks: each 1.9 km scene holds blocks of every split (the default, 10 chip sides, is a scene)
    "plan": {"block_m": 500},
}


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole test session (2 CPUs), isolated in its own temp dir."""
    import ray

    tmp = tempfile.mkdtemp(prefix="pwray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, logging_level="WARNING",
             runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture
def tiny_cfg(tmp_path):
    from pw_ray.config import parse_config

    return parse_config(dict(TINY_CONFIG, root=str(tmp_path / "root")))


@pytest.fixture(scope="session")
def tiny_run(ray_session, tmp_path_factory):
    """The whole pipeline once on the tiny config; tests read its outputs (session-scoped: slow)."""
    from pw_ray import experiment as E
    from pw_ray.config import parse_config

    root = tmp_path_factory.mktemp("tiny-run") / "root"
    cfg = parse_config(dict(TINY_CONFIG, root=str(root)))
    report = E.run_all(cfg)
    return cfg, report


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 API server on loopback for the whole session (``tests/s3server.py``); stopped by PID."""
    from tests.s3server import S3Server

    with S3Server() as server:
        yield server


@pytest.fixture
def s3_root(s3_server, monkeypatch, request):
    """A fresh bucket on the session's S3 server, with this process's AWS settings pointing at it.

    Returns ``s3://<bucket>/root``. Only this process sees the settings: Ray workers of the session's
    Ray do not (tests that run Ray on S3 start a process of their own with ``s3_server.env()``).
    """
    import re
    import uuid

    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:40].strip("-")
    bucket = s3_server.create_bucket(f"{name}-{uuid.uuid4().hex[:8]}")
    return f"{bucket}/root"
