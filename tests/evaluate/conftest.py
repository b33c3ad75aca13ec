"""Fixtures of the evaluate tests: a generated evaluate-ready root, copied per test."""

from __future__ import annotations

import shutil

import pytest

from tests.evaluate.data import EVAL_CONFIG, make_eval_root


@pytest.fixture(scope="session")
def eval_base(tmp_path_factory):
    """A root with two synthetic tasks, encoders for ``europe`` and ``zero`` and their cached
    embeddings (built once, Ray-free)."""
    from pw_ray.config import parse_config
    from pw_ray.evaluate.embeddings import compute_embeddings

    root = tmp_path_factory.mktemp("eval-base") / "root"
    cfg = parse_config(dict(EVAL_CONFIG, root=str(root)))
    make_eval_root(cfg)
    for s in ("europe", "zero"):
        for t in cfg.tasks:
            compute_embeddings(cfg.root, s, t.name)
    return root


@pytest.fixture
def eval_cfg(eval_base, tmp_path):
    """The evaluate config on a private copy of ``eval_base`` without cached embeddings."""
    from pw_ray.config import parse_config

    root = tmp_path / "root"
    shutil.copytree(eval_base, root, ignore=shutil.ignore_patterns("embeddings"))
    return parse_config(dict(EVAL_CONFIG, root=str(root)))
