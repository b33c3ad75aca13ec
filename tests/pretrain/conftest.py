"""Fixtures of the pretraining tests: one set of ingested shards for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shards_root(ray_session, tmp_path_factory) -> Path:
    """A root holding the ingested shards of one 48-chip set (plan + ingest of the real pipeline)."""
    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from pw_ray.ingest import shards as S
    from tests.pretrain.runs import CHIPS, SET, config

    root = tmp_path_factory.mktemp("pretrain-shards") / "root"
    cfg = parse_config(config(root))
    src = E.source(cfg)
    E.plan(cfg, src=src)
    E.ingest(cfg, src=src)
    assert len(S.read_set(str(root), SET, columns=["chip_id"])) == CHIPS
    return root
