"""The analyze and report stages on the tiny pipeline's outputs, with external sets added."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pw_ray import storage

pytestmark = pytest.mark.slow

EXTERNAL_CSV = """name,source,continent_entropy,biome_entropy,landcover_entropy,spectral_entropy_hist,landcover,population
published_a,"paper A, Table 2",1.60,1.20,1.40,2.00,0.55,0.20
published_b,"paper B",0.90,0.80,1.00,1.50,0.35,0.10
"""


@pytest.fixture(scope="module")
def external_run(tiny_run, tmp_path_factory):
    """analyze + report rerun on a copy of the tiny run's data, with two external sets."""
    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from tests.conftest import TINY_CONFIG

    cfg, _ = tiny_run
    tmp = tmp_path_factory.mktemp("external-run")
    root = tmp / "root"
    for part in ("shards", "manifest", "points", "tasks", "results"):  # what analyze and report read
        shutil.copytree(Path(storage.local_path(storage.join(cfg.root, part))), root / part)
    csv = tmp / "external.csv"
    csv.write_text(EXTERNAL_CSV, encoding="utf-8")
    cfg2 = parse_config(dict(TINY_CONFIG, root=str(root), analysis={"bootstrap": 50, "external_sets": str(csv)}))
    E.analyze(cfg2)
    return cfg2, E.report(cfg2)


def _table(cfg, name):
    return pq.read_table(storage.join(cfg.root, "results", name)).to_pandas()


def test_correlations_include_the_external_sets_and_repeat_without_them(external_run):
    cfg, _ = external_run
    c = _table(cfg, "correlations.parquet").set_index(["sets", "measure"])
    n_measured = len(cfg.pretrain_sets)
    assert c.loc[("all", "continent_entropy"), "n"] == n_measured + 2
    assert c.loc[("all", "continent_entropy"), "n_external"] == 2
    assert c.loc[("measured", "continent_entropy"), "n"] == n_measured
    assert c.loc[("all", "spectral_entropy_codebook"), "n_external"] == 0  # the CSV gives no codebook value
    assert np.isfinite(c.loc[("all", "spectral_entropy_hist"), "spearman_p"])
    assert (c["n_boot"] == 50).all()


def test_diversity_table_keeps_only_the_measured_sets(external_run):
    cfg, _ = external_run
    assert _table(cfg, "diversity.parquet")["pretrain_set"].tolist() == [s.name for s in cfg.pretrain_sets]
    assert _table(cfg, "external_sets.parquet")["name"].tolist() == ["published_a", "published_b"]


def test_report_marks_the_external_sets_in_tables_and_lists_them(external_run):
    cfg, index = external_run
    readme = storage.read_text(storage.join(cfg.root, "report", "README.md"))
    main = readme.split("## Rank per task region")[0]
    assert "| published_a † |" in main and "| published_b † |" in main
    assert "### Measured sets only" in readme and "## External sets" in readme
    assert "paper A, Table 2" in Path(index).read_text(encoding="utf-8")
