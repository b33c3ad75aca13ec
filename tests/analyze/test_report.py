"""The report: index.html with embedded figures, PNG files beside it, README.md tables."""

import json
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from pw_ray.analyze import report as R
from pw_ray.analyze import stats as S

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SETS = ["eu", "af", "global"]


def _results():
    rng = np.random.default_rng(0)
    rows = []
    for i, s in enumerate(SETS):
        for task, ttype in (("landcover", "classification"), ("population", "regression")):
            for region in ("global", "af", "eu"):
                for method in ("knn", "linear"):
                    for seed in (0, 1):
                        score = 0.6 - 0.1 * i + rng.normal(0, 0.01)
                        rows.append(dict(pretrain_set=s, task=task, task_type=ttype, task_region=region,
                                         method=method, seed=seed, score=score,
                                         accuracy=score if ttype == "classification" else np.nan,
                                         macro_f1=np.nan, r2=score if ttype == "regression" else np.nan,
                                         n_train=60, n_test=20, wall_s=1.0, checkpoint=""))
    return pd.DataFrame(rows)


def _diversity():
    return pd.DataFrame({"pretrain_set": SETS, "n_chips": [100, 100, 100],
                         "continent_entropy": [0.0, 0.0, np.log(6)], "biome_entropy": [1.2, 0.8, 1.6],
                         "landcover_entropy": [1.5, 1.0, 1.7], "spectral_entropy_hist": [2.1, 1.5, 1.9],
                         "spectral_entropy_codebook": [2.5, 1.7, 2.2]})


def _inputs(tmp_path):
    results, diversity = _results(), _diversity()
    perf = S.main_table(results).set_index("pretrain_set")["mean_performance"]
    corr = S.diversity_correlations(diversity, perf, n_boot=50)
    rng = np.random.default_rng(1)
    points = pd.DataFrame({"lon": rng.uniform(-20, 40, 60), "lat": rng.uniform(-30, 60, 60),
                           "set": np.repeat(SETS, 20), "region": rng.choice(["af", "eu"], 60)})
    chips = {s: rng.integers(0, 4000, (3, 3, 16, 16)).astype(np.uint16) for s in SETS}
    manifest = pd.DataFrame({"ok": [90, 95, 80], "skipped": [8, 5, 15], "failed": [2, 0, 5]}, index=SETS)
    geojson = tmp_path / "continents.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"continent": "af"},
         "geometry": {"type": "Polygon", "coordinates": [[[-20, -35], [50, -35], [50, 35], [-20, 35], [-20, -35]]]}},
        {"type": "Feature", "properties": {"continent": "eu"},
         "geometry": {"type": "MultiPolygon",
                      "coordinates": [[[[-10, 36], [40, 36], [40, 70], [-10, 70], [-10, 36]]]]}}]}))
    return dict(results=results, diversity=diversity, correlations=corr, points=points, chips_by_set=chips,
                manifest_counts=manifest, continents_path=geojson)


class _Collector(HTMLParser):
    """Collects <img> sources and <a> targets and checks that tags nest properly."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.imgs, self.links, self.stack, self.errors = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.imgs.append(attrs["src"])
        if tag == "a":
            self.links.append(attrs["href"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    index = R.write_report(out / "report", **_inputs(out))
    return index


def test_report_embeds_every_figure_as_a_data_uri(full_report):
    parser = _Collector()
    parser.feed(full_report.read_text(encoding="utf-8"))
    # 2 methods' mean performance + 2 tasks × 2 methods heatmaps + correlations, locations, chips, ingest
    assert len(parser.imgs) == 10
    assert all(src.startswith("data:image/png;base64,") for src in parser.imgs)
    assert parser.errors == [] and parser.stack == []


def test_report_pngs_exist_beside_the_html_and_are_valid(full_report):
    parser = _Collector()
    parser.feed(full_report.read_text(encoding="utf-8"))
    assert len(parser.links) == 10
    for rel in parser.links:
        assert (full_report.parent / rel).read_bytes()[:8] == PNG_MAGIC


def test_report_html_has_no_external_url(full_report):
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", full_report.read_text(encoding="utf-8"))
    assert "//" not in text


def test_readme_contains_the_main_table(full_report):
    readme = (full_report.parent / "README.md").read_text(encoding="utf-8")
    table = S.main_table(_results())
    assert S.to_markdown(table, {"landcover": "max", "population": "max", "mean_performance": "max",
                                 "rank": "min"}, digits={"mean_performance": 3}) in readme
    assert "![Sampled locations per pretraining set](locations.png)" in readme


def test_report_without_optional_inputs_writes_notes(tmp_path):
    index = R.write_report(tmp_path, results=_results(), diversity=None, correlations=None)
    text = index.read_text(encoding="utf-8")
    assert "Skipped: no diversity table was given." in text
    assert "Skipped: no example chips were given." in text
    assert text.count("<img ") == 6  # mean performance ×2, heatmaps ×4
    assert (tmp_path / "README.md").exists()


def test_report_with_nothing_still_renders(tmp_path):
    index = R.write_report(tmp_path, results=None, diversity=None, correlations=None)
    assert "Skipped: no evaluation results were given." in index.read_text(encoding="utf-8")


def test_chip_stretch_maps_the_2nd_and_98th_percentiles_to_0_and_1():
    chip = np.arange(3 * 10 * 10, dtype=np.uint16).reshape(3, 10, 10)
    rgb = R.stretch_rgb(chip)
    assert rgb.shape == (10, 10, 3)
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    assert (rgb == 0).sum() == pytest.approx(0.02 * 300, abs=1) and (rgb == 1).sum() == pytest.approx(0.02 * 300, abs=1)
