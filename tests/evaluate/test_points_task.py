"""The user's own downstream task: a CSV of labelled points, end to end, and clear errors on bad files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pw_ray import storage
from pw_ray.evaluate.tasks import points_from_csv


# ----------------------------------------------------------------------------- bad input, named
def _write(tmp_path, text: str) -> str:
    p = tmp_path / "pts.csv"
    p.write_text(text)
    return str(p)


@pytest.mark.parametrize("text, message", [
    ("", "is empty; it needs a header 'lon,lat,label'"),
    ("lon,lat,label\n", "has a header but no rows"),
    ("lon,lat\n10,50\n", "lack columns ['label']"),
    ("lon,lat,label\n10,50,a\nten,50,b\n", "lon is not a number on line(s) 3 (first value: 'ten')"),
    ("lon,lat,label\n10,95,a\n", "lat outside [-90, 90] on line(s) 2"),
    ("lon,lat,label\n10,50,\n", "no label on line(s) 2"),
])
def test_bad_points_files_fail_naming_the_file_and_the_line(tmp_path, text, message):
    uri = _write(tmp_path, text)
    with pytest.raises(ValueError) as err:
        points_from_csv(uri, "mine", 0)
    assert uri in str(err.value) and message in str(err.value)


def test_regression_labels_must_be_numbers(tmp_path):
    uri = _write(tmp_path, "lon,lat,label\n10,50,1.5\n11,50,high\n")
    with pytest.raises(ValueError, match=r"task_type regression needs numeric labels; line\(s\) 3"):
        points_from_csv(uri, "mine", 0, task_type="regression")
    ok = points_from_csv(_write(tmp_path, "lon,lat,label\n10,50,1.5\n11,50,2\n"), "mine", 0, task_type="regression")
    assert ok["label"].tolist() == [1.5, 2.0]


def test_points_in_the_ocean_are_dropped_with_a_warning_or_refused_when_too_many(tmp_path, caplog):
    rows = ["lon,lat,label"] + [f"{10 + i * 0.01},{50},a" for i in range(40)] + ["-30,40,b"]  # one in the Atlantic
    uri = _write(tmp_path, "\n".join(rows) + "\n")
    df = points_from_csv(uri, "mine", 0)
    assert len(df) == 40 and (df["region"] == "eu").all()
    assert "1 of 41 points are on no continent" in caplog.text and "line(s) 42" in caplog.text
    with pytest.raises(ValueError, match="more than chips.max_failed_fraction"):
        points_from_csv(_write(tmp_path, "lon,lat,label\n-30,40,a\n10,50,b\n"), "mine", 0)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_a_points_task_runs_plan_to_report(ray_session, tmp_path, capsys):
    """Classification and regression points files, two seasons (one of them has no scene, so
    half the chips are skipped), points off every scene skipped: labels reach the task table by
    point, the grid scores both tasks, the report shows them."""
    from shapely.geometry import shape

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from pw_ray.synthetic import build_archive, load_items
    from tests.conftest import TINY_CONFIG

    root = tmp_path / "root"
    base = dict(TINY_CONFIG, root=str(root))
    archive = build_archive(root / "archive", parse_config({**base, "tasks": []}).stac.synthetic)
    rng = np.random.default_rng(3)
    rows = []
    for it in load_items(archive):
        poly = shape(it["geometry"]).buffer(-0.003)  # chips of points inside stay inside the scene
        w, s, e, n = poly.bounds
        while sum(r["item"] == it["id"] for r in rows) < 12:
            lon, lat = rng.uniform(w, e), rng.uniform(s, n)
            if poly.contains(shape({"type": "Point", "coordinates": [lon, lat]})):
                rows.append({"lon": lon, "lat": lat, "item": it["id"]})
    pts = pd.DataFrame(rows)
    pts["label"] = np.where(pts["lat"] > pts["lat"].median(), "north", "south")
    off = pd.DataFrame({"lon": [2.35, 13.4], "lat": [48.85, 52.52], "label": ["south", "north"]})  # no scene there
    (tmp_path / "cls.csv").write_text(pd.concat([pts[["lon", "lat", "label"]], off]).to_csv(index=False))
    reg = pts.assign(label=np.round(pts["lat"] * 0.1 + rng.normal(0, 0.01, len(pts)), 4))
    (tmp_path / "reg.csv").write_text(reg[["lon", "lat", "label"]].to_csv(index=False))

    cfg = parse_config({**base, "stac": {**TINY_CONFIG["stac"], "seasons": 2},
                        "pretrain_sets": [TINY_CONFIG["pretrain_sets"][0]],
                        "tasks": [{"name": "mine", "kind": "points", "path": str(tmp_path / "cls.csv"), "seed": 1},
                                  {"name": "mine_reg", "kind": "points", "path": str(tmp_path / "reg.csv"),
                                   "task_type": "regression", "seed": 2}],
                        "chips": {**TINY_CONFIG["chips"], "max_failed_fraction": 0.5},
                        "evaluation": {**TINY_CONFIG["evaluation"], "task_regions": ["global"]}})
    report = E.run_all(cfg)

    m = storage.read_table(storage.join(cfg.root, "manifest", "mine.parquet")).to_pandas()
    assert len(m) == 2 * (len(pts) + 2)  # two seasons: one chip per point and season
    assert (m["status"] == "skipped").sum() >= len(pts) + 2  # the second season has no scene; the off points none
    for name, source in (("mine", pd.concat([pts, off], ignore_index=True)), ("mine_reg", reg)):
        task = storage.read_table(storage.join(cfg.root, "tasks", f"{name}.parquet")).to_pandas()
        planned = storage.read_table(storage.join(cfg.root, "points", f"{name}.parquet")).to_pandas()
        assert len(task) == (storage.read_table(storage.join(cfg.root, "manifest", f"{name}.parquet"))
                             .to_pandas()["status"] == "ok").sum() > 20
        by_point = dict(zip(planned["point_id"], planned["label"]))
        chip_point = task["chip_id"].str.replace(r"-s\d+$", "", regex=True)
        if name == "mine":
            assert (task["label"] == chip_point.map(by_point)).all() and set(task["label"]) == {"north", "south"}
            assert (task["task_type"] == "classification").all()
        else:
            np.testing.assert_allclose(task["label"].astype(float), chip_point.map(by_point).astype(float))
            assert (task["task_type"] == "regression").all()
        assert len(planned) == len(source)
    results = storage.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    scored = results[results["status"] == "ok"]
    assert set(scored["task"]) == {"mine", "mine_reg"}
    assert scored.loc[scored["task"] == "mine_reg", "r2"].notna().all()
    assert scored.loc[scored["task"] == "mine", "accuracy"].between(0, 1).all()
    html = storage.read_text(report)
    assert "mine_reg" in html and "mine" in html
