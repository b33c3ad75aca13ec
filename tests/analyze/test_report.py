"""The report: index.html with embedded figures, PNG files beside it, README.md tables."""

import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest

from pw_ray.analyze import figures as F
from pw_ray.analyze import report as R
from pw_ray.analyze import stats as S
from tests.analyze.fabricated import make_results

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


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
    pngs = [link for link in parser.links if not link.startswith("#")]
    assert len(pngs) == 10
    for rel in pngs:
        assert (full_report.parent / rel).read_bytes()[:8] == PNG_MAGIC


def test_report_html_has_no_external_url(full_report):
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", full_report.read_text(encoding="utf-8"))
    assert "//" not in text


def test_readme_contains_the_main_table(full_report):
    readme = (full_report.parent / "README.md").read_text(encoding="utf-8")
    table = S.main_table(make_results()).rename(columns={"pretrain_set": "pretraining set",
                                                          "mean_performance": "mean performance"})
    assert S.to_markdown(table, {"landcover": "max", "population": "max", "mean performance": "max",
                                 "rank": "min"}, digits={"mean performance": 3}) in readme
    assert "![Sampled locations per pretraining set](locations.png)" in readme


def test_report_without_optional_inputs_writes_notes(tmp_path):
    index = R.write_report(tmp_path, results=make_results(), diversity=None, correlations=None)
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
    rgb = F.stretch_rgb(chip)
    assert rgb.shape == (10, 10, 3)
    assert rgb.min() == 0.0 and rgb.max() == 1.0
    assert (rgb == 0).sum() == pytest.approx(0.02 * 300, abs=1) and (rgb == 1).sum() == pytest.approx(0.02 * 300, abs=1)


def _readme(index):
    return (index.parent / "README.md").read_text(encoding="utf-8")


def test_both_spectral_variants_appear_in_the_diversity_and_correlation_tables(full_report):
    readme = _readme(full_report)
    diversity, correlations = readme.split("## Diversity of the pretraining sets")[1].split("## Diversity and performance")
    assert "| spectral entropy (hist) | spectral entropy (codebook) |" in diversity  # both columns
    for label in ("spectral entropy (hist)", "spectral entropy (codebook)"):
        assert f"\n| {label} | 3 |" in correlations  # a correlation row each


def test_correlation_table_shows_p_values_and_bootstrap_intervals(full_report):
    readme = _readme(full_report)
    assert ("| measure | n | Spearman ρ | ρ 95 % CI | ρ p (t) | ρ p (perm.) | Pearson r | r 95 % CI | r p (t) |"
            in readme)
    assert "percentile bootstrap over 50 resamples of the sets" in readme
    # continent entropy: eu 0, af 0, global ln 6 against mean performance ≈ 0.6, 0.5, 0.4
    row = next(line for line in readme.splitlines() if line.startswith("| continent entropy |"))
    cells = [c.strip().strip("*") for c in row.strip("|").split("|")]
    assert cells[1] == "3" and float(cells[2]) == pytest.approx(-0.87, abs=0.01)  # ρ = −√3/2
    assert re.fullmatch(r"\[-?\d\.\d\d, -?\d\.\d\d\]", cells[3]) and re.fullmatch(r"0\.\d{3}", cells[4])
    assert cells[5] == "0.667"  # exact permutation p: 4 of the 6 pairings of 3 sets have |ρ| ≥ √3/2


def test_rank_per_task_region_table_for_each_method(full_report):
    readme = _readme(full_report)
    section = readme.split("## Rank per task region")[1].split("\n## ")[0]
    assert "### linear" in section and "### knn" in section
    assert "| pretraining set | Global | Africa | Europe |" in section
    assert "| eu | **0.00** | **0.00** | **0.00** |" in section


def test_external_sets_are_marked_beside_the_measured_ones(external_report):
    readme = _readme(external_report)
    main = readme.split("## Rank per task region")[0]
    assert "| ssl4eo † | **0.71 ± 0.02** | **0.65** |" in main  # best, bold; no std given for population
    assert "| fmow_s2 † |" in main and "† external set" in main
    assert "| fmow_s2 † | – | 1.200 | 1.400 | 1.300 | 1.700 | – |" in readme  # diversity row, no codebook value
    assert "### All sets (measured and external)" in readme and "### Measured sets only" in readme
    assert "| continent entropy | 5 (2 ext.) |" in readme
    assert "| spectral entropy (codebook) | 3 |" in readme  # externals gave no codebook value
    section = readme.split("## External sets")[1].split("\n## ")[0]
    assert "| ssl4eo | knn | global | landcover, population |" in section
    assert "paper A, Table 2" in section


def test_external_report_embeds_the_same_figures(external_report):
    parser = _Collector()
    parser.feed(external_report.read_text(encoding="utf-8"))
    assert len(parser.imgs) == 10 and parser.errors == []


def _audit(exclusion: bool, within: int) -> pd.DataFrame:
    return pd.DataFrame({
        "pretrain_set": ["eu", "af"], "task": ["landcover", "landcover"], "split": ["test", "test"],
        "exclusion": [exclusion] * 2, "distance_m": [699.0] * 2, "n_pretrain": [96, 96], "n_held_out": [40, 40],
        "min_distance_m": [812.4, 120.0 if within else 901.0], "p01_distance_m": [830.0, 150.0 if within else 950.0],
        "median_distance_m": [5e6, 4e6], "n_held_out_within": [0, within], "n_pretrain_within": [0, within],
        "replaced": pd.array([12, 3] if exclusion else [None, None], dtype="Int64"),
    })


def test_report_without_exclusion_says_so_on_its_first_page(tmp_path):
    index = R.write_report(tmp_path, results=make_results(), diversity=None, correlations=None,
                           leakage=_audit(False, 2), exclusion_m=0.0)
    readme = _readme(index)
    first_page = readme.split("## Main results")[0]
    assert "Exclusion was off (plan.exclusion_m = 0)" in first_page
    assert "counts 2 (pretraining set, test chip) pairs with a test chip within 699 m" in first_page
    assert "| af | landcover | test | 40 | 120 | 150 | 4000000 | 2 | 2 | – |" in readme.split("## Leakage audit")[1]


def test_report_with_exclusion_shows_the_audit_table(tmp_path):
    index = R.write_report(tmp_path, results=make_results(), diversity=None, correlations=None,
                           leakage=_audit(True, 0), exclusion_m=699.0)
    readme = _readme(index)
    assert "Exclusion was off" not in readme
    assert "planned more than 699 m from every held-out task point; the audit finds 0 test chips" in (
        readme.split("## Main results")[0])
    section = readme.split("## Leakage audit")[1].split("\n## ")[0]
    assert ("| pretraining set | task | split | held-out chips | min (m) | 1st pct (m) | median (m) | "
            "held-out within | pretraining within | replaced at plan |") in section
    assert "| eu | landcover | test | 40 | 812 | 830 | 5000000 | 0 | 0 | 12 |" in section
    assert "Leakage audit" in index.read_text(encoding="utf-8")
