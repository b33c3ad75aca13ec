"""Fabricated analysis inputs for the tests (no pipeline run).

Three measured sets (``eu`` best, then ``af``, then ``global``) on two tasks, three task
regions, two methods and two seeds, and two external sets from a CSV.
"""

import json

import numpy as np
import pandas as pd

from pw_ray.analyze import external as X
from pw_ray.analyze import stats as S

SETS = ["eu", "af", "global"]
EXTERNAL_CSV = """name,source,continent_entropy,biome_entropy,landcover_entropy,spectral_entropy_hist,method,landcover,landcover_std,population
ssl4eo,"paper A, Table 2",1.70,2.10,1.80,2.30,linear,0.71,0.02,0.65
ssl4eo,,,,,,knn,0.60,,0.55
fmow_s2,paper,1.20,1.40,1.30,1.70,,0.40,,0.35
"""


def make_results() -> pd.DataFrame:
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


def make_diversity() -> pd.DataFrame:
    return pd.DataFrame({"pretrain_set": SETS, "n_chips": [100, 100, 100],
                         "continent_entropy": [0.0, 0.0, np.log(6)], "biome_entropy": [1.2, 0.8, 1.6],
                         "landcover_entropy": [1.5, 1.0, 1.7], "spectral_entropy_hist": [2.1, 1.5, 1.9],
                         "spectral_entropy_codebook": [2.5, 1.7, 2.2]})


def make_external(tmp_path) -> X.ExternalSets:
    path = tmp_path / "external.csv"
    path.write_text(EXTERNAL_CSV, encoding="utf-8")
    return X.read_external_sets(str(path))


def make_inputs(tmp_path, external: bool = False) -> dict:
    results, diversity = make_results(), make_diversity()
    ext = make_external(tmp_path) if external else None
    perf = S.main_table(results, extra=ext.scores if ext else None).set_index("pretrain_set")["mean_performance"]
    div_all = pd.concat([diversity, ext.diversity], ignore_index=True) if ext else diversity
    corr = S.correlation_table(div_all, perf, external=ext.names if ext else [], n_boot=50)
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
                manifest_counts=manifest, continents_path=geojson, external=ext)
