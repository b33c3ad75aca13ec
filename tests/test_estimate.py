"""``pw-ray estimate``: the arithmetic, its sources, and its figures against a run that really happened.

* Calibration files (the benches' last JSON lines) replace the documented rates, and the hours
  are exactly chips ÷ rate, FLOPs ÷ (MFU × peak) or samples ÷ samples/s; prices give the cost.
* Against the tiny pipeline run of the test session: the points planned, the chips indexed, the
  WebDataset and Parquet bytes written, the checkpoints kept and their size, and the samples
  trained are what the estimate says for the same config.

(The FLOPs and sizes of the model itself: tests/models/test_flops.py.)
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from pw_ray.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[1]


def paper(**estimate):
    cfg = load_config(REPO / "configs" / "paper.yaml", check_root=False)
    if not estimate:
        return cfg
    data = cfg.model_dump(mode="json")
    data["estimate"] = {**data["estimate"], **estimate}
    return parse_config(data)


# ----------------------------------------------------------------------------- calibration and prices
GPU_STEP = {"samples_per_s": 500.0, "mfu": 0.42, "flops_per_sample": 132e9, "device": "NVIDIA H200",
            "preset": "base", "batch": 256, "compile": False, "peak_flops": 989e12, "final_loss": 0.5}
INGEST = {"chips": 767, "cores": 2, "size_px": 96, "bands": 10, "chips_per_s": 100.0, "chips_per_s_1x": 50.0,
          "index_chips_per_s": 400.0, "parquet_bytes_per_chip": 120_000, "wds_bytes_per_chip": 186_368}
ANALYZE = {"chips": 2048, "ray_chips_per_cpu_s": 500.0}
EVALUATE = {"cells": {"knn": 7, "linear": 7}, "knn_cached_s_per_cell": 0.05, "linear_cached_s_per_cell": 2.0,
            "chips_per_task": {"a": 400, "b": 400}, "model": "tiny"}


def _write(tmp_path, name, data, noise="some log line\n"):
    path = tmp_path / name
    path.write_text(noise + json.dumps(data) + "\n")
    return str(path)


def test_calibration_files_set_the_rates_and_the_hours_follow_exactly(tmp_path):
    from pw_ray.estimate import estimate, load_calibration

    cal = load_calibration([_write(tmp_path, n, d) for n, d in
                            (("gpu.json", GPU_STEP), ("ingest.json", INGEST), ("analyze.json", ANALYZE),
                             ("eval.json", EVALUATE))])
    assert sorted(cal.runs) == ["analyze", "evaluate", "gpu_step", "ingest"]
    cfg = paper()
    est = estimate(cfg, cal)
    r = est.rates
    assert r.mfu.value == 0.42 and "gpu.json" in r.mfu.source and "NVIDIA H200" in r.mfu.source
    assert r.gpu_peak_flops.value == 121e12 and r.gpu_peak_flops.source == "config estimate.gpu_peak_tflops"
    assert r.ingest_chips_per_cpu_s.value == 50.0 and r.index_chips_per_cpu_s.value == 200.0
    ingest = est.stage("ingest")
    chips = ingest.value("chips")
    assert chips == 7 * 700_000 + 100_000 + 100_000 + 20_000
    assert ingest.value("cpu_hours") == pytest.approx((chips / 50 + chips / 200) / 3600, rel=1e-12)
    # Parquet bytes per chip scaled by pixels from the bench's chips (same size here)
    assert est.per_chip["parquet"] == pytest.approx(120_000)
    assert ingest.value("bytes_written") == pytest.approx(chips * (120_000 + est.per_chip["webdataset"]))
    pre = est.stage("pretrain")
    steps = 700_000 // 4096 * 50
    assert pre.value("samples") == 7 * steps * 4096
    assert pre.value("gpu_hours") == pytest.approx(pre.value("flops") / (0.42 * 121e12) / 3600, rel=1e-12)
    assert est.stage("analyze").value("cpu_hours") == pytest.approx(7 * 700_000 / 500 / 3600)
    assert "[calibration gpu.json]" in pre.figures["gpu_hours"].source
    # without a peak, the measured samples/s of the same model
    est = estimate(parse_config({**cfg.model_dump(mode="json"), "estimate": {}}), cal)
    assert est.stage("pretrain").value("gpu_hours") == pytest.approx(7 * steps * 4096 / 500 / 3600, rel=1e-12)


def test_without_calibration_the_documented_figures_or_labelled_assumptions_are_used():
    from pw_ray.estimate import estimate
    from pw_ray.estimate.rates import ASSUMED_MFU, DOCUMENTED_MFU

    est = estimate(paper())
    r = est.rates
    assert r.mfu == (DOCUMENTED_MFU or ASSUMED_MFU)
    assert r.ingest_chips_per_cpu_s.source.startswith("docs/benchmarks.md")
    assert est.stage("pretrain").value("gpu_hours") == pytest.approx(
        est.stage("pretrain").value("flops") / (r.mfu.value * 121e12) / 3600)
    # no price anywhere: no cost, and the figure says which price is missing
    assert est.total.value("cost") is None
    assert "estimate.price_gpu_hour" in est.stage("pretrain").figures["cost"].source


def test_the_documented_mfu_is_the_one_docs_benchmarks_md_shows():
    """Whoever documents bench/gpu_step.py's MFU updates the estimate's default with it."""
    from pw_ray.estimate.rates import DOCUMENTED_MFU

    row = next(line for line in (REPO / "docs" / "benchmarks.md").read_text().splitlines()
               if line.startswith("| GPU step"))
    if "not run on a GPU yet" in row:
        assert DOCUMENTED_MFU is None
    else:
        assert DOCUMENTED_MFU is not None and f"{DOCUMENTED_MFU.value:g}" in row


def test_prices_give_the_cost():
    from pw_ray.estimate import estimate

    est = estimate(paper(price_cpu_hour=0.5, price_gpu_hour=2.0, price_storage_gb_month=0.25, storage_months=2))
    for st in est.stages:
        want = (st.value("cpu_hours") or 0) * 0.5 + (st.value("gpu_hours") or 0) * 2.0
        if want:
            assert st.value("cost") == pytest.approx(want)
    assert est.storage_cost.value == pytest.approx(est.stored.value / 1e9 * 0.25 * 2)
    assert est.total.value("cost") == pytest.approx(sum(s.value("cost") or 0 for s in est.stages)
                                                   + est.storage_cost.value)


def test_a_file_that_is_no_benchmark_output_is_refused(tmp_path):
    from pw_ray.estimate import CalibrationError, load_calibration

    with pytest.raises(CalibrationError, match="none of the benchmarks' key sets.*it has a, b"):
        load_calibration([_write(tmp_path, "x.json", {"a": 1, "b": 2})])
    log = tmp_path / "z.log"
    log.write_text("no json here\n")
    with pytest.raises(CalibrationError, match="no JSON object line"):
        load_calibration([str(log)])
    with pytest.raises(CalibrationError, match="two ingest benchmark files"):
        load_calibration([_write(tmp_path, "a.json", INGEST), _write(tmp_path, "b.json", INGEST)])


# ----------------------------------------------------------------------------- the search model
def test_search_requests_scale_with_cells_not_points():
    from pw_ray.estimate import ingest_model as IM

    europe = IM.land_area_km2("eu")
    assert 5e6 < europe < 15e6  # Europe's land, km² (pw-ray's continent geometry)
    cells = europe / IM.S2_TILE_KM**2
    assert IM.occupied_cells({"eu": 1}, IM.S2_TILE_KM) == pytest.approx(1.0, abs=1e-3)
    assert IM.occupied_cells({"eu": 10_000_000}, IM.S2_TILE_KM) == pytest.approx(cells, rel=1e-6)
    se = IM.search_estimate({"eu": 700_000}, 700_000, 4, "2023-01-01/2023-12-31", IM.S2_TILE_KM, 100)
    assert se.items_per_cell_season == pytest.approx(4.0 * 365 / 4 / 5, rel=0.01)
    assert se.pages == 1 and se.requests == pytest.approx(se.cells * 4)
    assert se.requests < 0.05 * 700_000 * 4  # issue 14's goal: ≤ 0.05 requests per point and season


def test_wds_bytes_per_chip_is_the_tar_layout():
    from pw_ray.estimate.ingest_model import wds_bytes_per_chip

    # 10 × 96 × 96 uint16 + 128-byte .npy header → 361 blocks + header; .json two blocks + header
    assert wds_bytes_per_chip(10, 96) == 512 + 512 * math.ceil((128 + 184_320) / 512) + 512 + 1024
    # docs/benchmarks.md: 47,851,520 bytes for a tar of 256 such chips, with tarfile's 10,240-byte end record
    assert 256 * wds_bytes_per_chip(10, 96) + 10_240 == 47_851_520


# ----------------------------------------------------------------------------- the command
def test_the_command_prints_every_figure_with_its_source(capsys):
    from pw_ray.cli import main

    assert main(["estimate", "--config", str(REPO / "configs" / "paper.yaml"), "--cluster",
                 str(REPO / "cluster.yaml"), "--price-gpu-hour", "2", "--mfu", "0.4"]) == 0
    out = capsys.readouterr().out
    for label in ("points", "STAC requests", "scenes", "bytes read", "chips written", "bytes written",
                  "CPU-hours", "GPU-hours", "checkpoint storage", "cost"):
        assert re.search(rf"(?m)^  {re.escape(label)} ", out), label
    for stage in ("plan", "ingest", "pretrain", "evaluate", "analyze", "total", "rates", "assumptions"):
        assert re.search(rf"(?m)^{stage}\b", out), stage
    assert "MFU 0.4 [config estimate.mfu]" in out and "gpu-hours × 2 [config estimate.price_gpu_hour]" in out
    assert "7 of 7 sets at once" in out


def test_the_command_refuses_a_bad_calibration(tmp_path, capsys):
    from pw_ray.cli import main

    bad = _write(tmp_path, "bad.json", {"x": 1})
    assert main(["estimate", "--config", str(REPO / "configs" / "paper.yaml"), "--calibration", bad]) == 2
    assert "pw-ray estimate failed: calibration" in capsys.readouterr().err


# ----------------------------------------------------------------------------- against a real run
def test_the_estimate_matches_what_the_tiny_run_wrote(tiny_run):
    import os

    import pandas as pd

    from pw_ray import storage
    from pw_ray.estimate import estimate
    from pw_ray.estimate.stages import checkpoints_kept, checkpoints_written
    from pw_ray.ingest import shards as S
    from pw_ray.models.flops import costs_for
    from pw_ray.pretrain.trainer import export_dir, run_dir

    cfg, _ = tiny_run
    est = estimate(cfg)
    names = [s.name for s in cfg.pretrain_sets] + [t.name for t in cfg.tasks]
    points = {n: storage.read_table(storage.join(cfg.root, "points", f"{n}.parquet")).num_rows for n in names}
    # points planned and chips indexed: exactly (one chip per point and season)
    assert est.stage("plan").value("points") == sum(points.values())
    index_rows = sum(storage.read_table(storage.join(cfg.root, "index", f"{n}.parquet")).num_rows for n in names)
    assert est.stage("ingest").value("chips") == index_rows
    manifests = pd.concat([storage.read_table(storage.join(cfg.root, "manifest", f"{n}.parquet")).to_pandas()
                           for n in names])
    ok = int((manifests["status"] == "ok").sum())
    assert 0 < ok <= est.stage("ingest").value("chips")  # the estimate is an upper bound

    # bytes written per chip: the tars exactly (up to the end-of-archive record), Parquet loosely
    tars = [u for n in names for u in S.wds_files(cfg.root, n)]
    tar_bytes = sum(os.path.getsize(u) for u in tars)
    wds = est.per_chip["webdataset"] * ok
    assert wds <= tar_bytes <= wds + 10_240 * len(tars)
    pq_bytes = sum(os.path.getsize(u) for n in names for u in S.shard_files(cfg.root, n))
    assert 0.2 < pq_bytes / (est.per_chip["parquet"] * ok) < 2.0  # an assumption for real S2, not this archive

    # checkpoints: the size of every state.pt, and how many each set keeps
    costs = costs_for(cfg)
    for s in cfg.pretrain_sets:
        summary = json.loads(storage.read_text(storage.join(export_dir(cfg.root, s.name), "summary.json")))
        ckpts = sorted(Path(run_dir(cfg.root, s.name, summary["run"])).glob("checkpoint_*/state.pt"))
        written = checkpoints_written(summary["total_steps"], cfg.train.checkpoint_every)
        assert written == summary["checkpoints_written"]
        assert min(cfg.train.keep_checkpoints, written) <= len(ckpts) <= checkpoints_kept(written,
                                                                                           cfg.train.keep_checkpoints)
        for c in ckpts:
            assert c.stat().st_size == pytest.approx(costs.checkpoint_bytes, rel=0.03)
        encoder = Path(export_dir(cfg.root, s.name)) / "encoder.pt"
        assert encoder.stat().st_size == pytest.approx(costs.encoder_bytes, rel=0.05)

    # with the chips the run really kept, the estimate's samples are the ones trained
    kept = {s.name: json.loads(storage.read_text(storage.join(export_dir(cfg.root, s.name), "summary.json")))
            for s in cfg.pretrain_sets}
    data = cfg.model_dump(mode="json")
    data["pretrain_sets"] = [dict(s, size=kept[s["name"]]["n_chips"]) for s in data["pretrain_sets"]]
    sized = parse_config(data)
    trained = sum(k["total_steps"] for k in kept.values()) * cfg.train.batch_size * cfg.train.accum_steps
    assert estimate(sized).stage("pretrain").value("samples") == trained
    assert estimate(sized).stage("pretrain").value("flops") == trained * costs.train_flops


def test_editing_prices_and_rates_re_enters_no_stage():
    from pw_ray.experiment import _digest

    cfg = paper()
    priced = paper(price_gpu_hour=3.0, mfu=0.5)
    assert _digest(priced) == _digest(cfg)
    data = cfg.model_dump(mode="json")
    data["train"]["epochs"] = 49
    assert _digest(parse_config(data)) != _digest(cfg)
