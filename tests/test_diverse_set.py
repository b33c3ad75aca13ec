"""A spectral-diverse set through the pipeline: plan (pool, signatures on Ray Data, selection), ingest,
analyze and report, beside a random set of the same size, on a tiny synthetic archive."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from pw_ray import experiment as E
from pw_ray import storage
from pw_ray.config import parse_config
from tests.conftest import TINY_CONFIG

SETS = [
    {"name": "global", "region": "global", "size": 24, "seed": 3},
    {"name": "diverse", "region": "global", "size": 24, "seed": 4, "strategy": "spectral-diverse", "candidates": 6},
]


@pytest.fixture(scope="module")
def diverse_run(ray_session, tmp_path_factory):
    root = tmp_path_factory.mktemp("diverse-run") / "root"
    cfg = parse_config(dict(TINY_CONFIG, root=str(root), pretrain_sets=SETS, tasks=[],
                            analysis={"bootstrap": 0, "codebook_chips": 32, "spectral_clusters": 8}))
    src = E.source(cfg)
    E.plan(cfg, src=src)
    E.ingest(cfg, src=src)
    E.analyze(cfg)
    return cfg, src


def _points(cfg, name):
    return storage.read_table(E.points_uri(cfg, name)).to_pandas()


def test_the_diverse_set_has_the_random_sets_size_and_continent_counts(diverse_run):
    cfg, _ = diverse_run
    glob, div = _points(cfg, "global"), _points(cfg, "diverse")
    assert len(div) == len(glob) == 24
    assert list(div.columns) == list(glob.columns)
    assert div["point_id"].tolist() == [f"diverse-{i:06d}" for i in range(24)]
    assert div["region"].value_counts().to_dict() == glob["region"].value_counts().to_dict()
    cand = storage.read_table(E.candidates_uri(cfg, "diverse")).to_pandas()
    assert len(cand) == 6 * 24 and int(cand["chosen"].sum()) == 24
    assert set(cand.loc[cand["chosen"], "chosen_point_id"]) == set(div["point_id"])


def test_the_candidates_table_is_as_documented(diverse_run):
    import pyarrow.parquet as pq

    from tests.test_docs import REPO, arrow_type_name

    cfg, _ = diverse_run
    text = (REPO / "docs" / "CONTRACTS.md").read_text()
    section = re.search(r"(?ms)^## Candidates of a spectral-diverse set\n(.*?)(?=^## )", text).group(1)
    documented = re.findall(r"(?m)^\| `([^`]+)` \| ([^|]+?) \|", section)
    schema = pq.read_schema(storage.local_path(E.candidates_uri(cfg, "diverse")))
    assert [(f.name, arrow_type_name(f.type)) for f in schema] == documented


def test_analyze_measures_the_chosen_chips_as_more_diverse_than_the_random_set(diverse_run):
    cfg, _ = diverse_run
    div = storage.read_table(storage.join(cfg.root, "results", "diversity.parquet")).to_pandas()
    div = div.set_index("pretrain_set")
    assert list(div.index) == ["global", "diverse"]
    assert div.loc["diverse", "spectral_entropy_hist"] > div.loc["global", "spectral_entropy_hist"] + 0.1
    # Every chosen point had a usable scene at plan time, so ingest keeps at least as many chips.
    assert div.loc["diverse", "n_chips"] >= div.loc["global", "n_chips"]


def test_the_report_shows_the_diverse_set_like_any_other(diverse_run):
    cfg, _ = diverse_run
    index = E.report(cfg)
    readme = (Path(index).parent / "README.md").read_text(encoding="utf-8")
    rows: dict[str, str] = {}
    for line in readme.splitlines():
        if line.startswith("| "):
            name = line.split("|")[1].strip()
            rows[name] = rows.get(name, "") + line + "\n"
    div = storage.read_table(storage.join(cfg.root, "results", "diversity.parquet")).to_pandas()
    for name in ("global", "diverse"):  # a row each in the diversity table, with analyze's value
        value = div.set_index("pretrain_set").loc[name, "spectral_entropy_hist"]
        assert f"{value:.3f}" in rows[name], rows[name]
    assert "diverse" in Path(index).read_text(encoding="utf-8")


def test_the_dataset_cards_say_how_each_set_was_chosen(diverse_run):
    import json

    cfg, _ = diverse_run
    card = json.loads(storage.read_text(storage.join(cfg.root, "shards", "diverse", "card.json")))["sampling"]
    assert card["strategy"] == "spectral-diverse" and card["candidates"] == 6
    assert card["method"].startswith("spectral-diverse: 6 × size candidate points") and "not a random sample" in card["method"]
    glob = json.loads(storage.read_text(storage.join(cfg.root, "shards", "global", "card.json")))["sampling"]
    assert glob["strategy"] == "random" and glob["method"].startswith("uniform on land")
    readme = storage.read_text(storage.join(cfg.root, "shards", "diverse", "README.md"))
    assert "spectral-diverse (6 candidates per point)" in readme


def test_replanning_reuses_the_stored_signatures_and_gives_the_same_points(diverse_run, capsys):
    cfg, src = diverse_run
    before = _points(cfg, "diverse")
    storage.remove(E.points_uri(cfg, "diverse"))
    storage.remove(storage.join(cfg.root, "_stages", "plan.json"))  # the stage marker does not see a lost file
    E.plan(cfg, force=False, src=src)
    out = capsys.readouterr().out
    assert "plan diverse: candidate signatures reused (inputs unchanged)" in out
    assert "plan global: points reused" in out
    pd.testing.assert_frame_equal(_points(cfg, "diverse"), before)
