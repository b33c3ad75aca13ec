"""External sets: a CSV of published diversity values and scores, validated and merged."""

import io
import math

import numpy as np
import pandas as pd
import pytest

from pw_ray.analyze import external as X
from pw_ray.analyze import stats as S
from tests.analyze.fabricated import make_diversity, make_external, make_results


def _parse(text: str) -> X.ExternalSets:
    df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    return X.parse_external_sets(df, origin="ext.csv")


def test_csv_rows_become_diversity_rows_and_summary_shaped_scores(tmp_path):
    ext = make_external(tmp_path)
    assert ext.names == ["ssl4eo", "fmow_s2"]
    assert ext.tasks == ["landcover", "population"]
    div = ext.diversity.set_index("pretrain_set")
    assert div.loc["ssl4eo", "continent_entropy"] == 1.70  # from the row that gives it
    assert div.loc["fmow_s2", "spectral_entropy_hist"] == 1.70
    assert math.isnan(div.loc["ssl4eo", "spectral_entropy_codebook"])  # not in the CSV
    scores = ext.scores.set_index(["pretrain_set", "method", "task"])
    assert len(scores) == 6
    assert scores.loc[("ssl4eo", "linear", "landcover"), "score_mean"] == 0.71
    assert scores.loc[("ssl4eo", "linear", "landcover"), "score_std"] == 0.02
    assert math.isnan(scores.loc[("ssl4eo", "linear", "population"), "score_std"])
    assert scores.loc[("fmow_s2", "linear", "population"), "task_region"] == "global"  # the defaults


def test_external_sets_join_the_main_table_and_its_ranking(tmp_path):
    ext = make_external(tmp_path)
    table = S.main_table(make_results(), extra=ext.scores).set_index("pretrain_set")
    assert list(table.index[:2]) == ["ssl4eo", "eu"]  # 0.71 / 0.65 beat eu's ≈0.60 on both tasks
    assert table.loc["ssl4eo", "rank"] == 0.0 and table.loc["eu", "rank"] == 1.0
    assert table.loc["fmow_s2", "mean_performance"] == pytest.approx((0.40 + 0.35) / 2)


def test_correlation_table_gives_all_and_measured_only_rows(tmp_path):
    ext = make_external(tmp_path)
    perf = S.main_table(make_results(), extra=ext.scores).set_index("pretrain_set")["mean_performance"]
    div = pd.concat([make_diversity(), ext.diversity], ignore_index=True)
    c = S.correlation_table(div, perf, external=ext.names, n_boot=20).set_index(["sets", "measure"])
    assert c.loc[("all", "continent_entropy"), "n"] == 5
    assert c.loc[("all", "continent_entropy"), "n_external"] == 2
    assert c.loc[("all", "spectral_entropy_codebook"), "n"] == 3  # externals have no codebook value
    assert c.loc[("all", "spectral_entropy_codebook"), "n_external"] == 0
    assert c.loc[("measured", "continent_entropy"), "n"] == 3
    assert c.loc[("measured", "continent_entropy"), "n_external"] == 0


def test_correlation_table_without_external_sets_has_only_all_rows():
    perf = S.main_table(make_results()).set_index("pretrain_set")["mean_performance"]
    c = S.correlation_table(make_diversity(), perf, n_boot=0)
    assert set(c["sets"]) == {"all"} and (c["n_external"] == 0).all()


def test_a_name_that_clashes_with_a_measured_set_is_refused(tmp_path):
    ext = make_external(tmp_path)
    with pytest.raises(ValueError, match=r"\['fmow_s2'\] have the names of measured sets"):
        ext.check_against(["eu", "fmow_s2", "zero"])


@pytest.mark.parametrize(("text", "message"), [
    ("set,landcover\na,0.5\n", "needs a 'name' column"),
    ("name,spectral_entropy\na,1.0\n", "'spectral_entropy' is ambiguous"),
    ("name,landcover\na,0.5\nb,high\n", r"line 3, column 'landcover': 'high' is not a number"),
    ("name,biome_entropy\na,-0.1\n", "entropies are ≥ 0 nats"),
    ("name,landcover\na,0.5\na,0.6\n", r"more than one row for name='a', method='linear', task_region='global'"),
    ("name,method,biome_entropy,landcover\na,linear,1.0,0.5\na,knn,1.2,0.4\n", "different biome_entropy values"),
    ("name,landcover_std\na,0.1\n", r"\['landcover_std'\] have no score column"),
    ("name,landcover\n,0.5\n", "empty name on line 2"),
])
def test_invalid_csv_is_refused_naming_the_line_and_column(text, message):
    with pytest.raises(ValueError, match=message):
        _parse(text)


def test_missing_file_names_the_config_field(tmp_path):
    with pytest.raises(FileNotFoundError, match="analysis.external_sets: no file at"):
        X.read_external_sets(str(tmp_path / "nope.csv"))


def test_the_validated_table_parses_again_unchanged(tmp_path):
    """analyze stores ``table`` in results/external_sets.parquet; report parses it again."""
    ext = make_external(tmp_path)
    again = X.parse_external_sets(ext.table)
    pd.testing.assert_frame_equal(again.table, ext.table)
    assert np.array_equal(again.scores.to_numpy(dtype=str), ext.scores.to_numpy(dtype=str))
