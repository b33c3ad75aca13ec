"""Every resource request of a config against a cluster YAML's node types (pw_ray/cluster.py).

The paper's config must be schedulable on both cluster files as they ship: each bundle (ingest
task, Ray Train worker, probe and fine-tune trials, embedding task) fits some node type, and the
types' ``max_workers`` (and the global cap) hold the concurrency the config asks for: all seven
sets training at once, ``evaluation.max_concurrent`` trials. The checks that find a misfit are
tested on configs and clusters made to fail.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from pw_ray.cluster import check_fit, config_requests, load_cluster, max_cpus, parse_cluster, place
from pw_ray.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[1]
CLUSTERS = ["cluster.yaml", "cluster-gcp.yaml"]


def paper():
    return load_config(REPO / "configs" / "paper.yaml", check_root=False)


def paper_with(**sections):
    data = paper().model_dump(mode="json")
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return parse_config(data)


def cluster_data(name: str = "cluster.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


@pytest.mark.parametrize("cluster", CLUSTERS)
def test_the_paper_recipe_fits_the_cluster_as_shipped(cluster):
    cfg, spec = paper(), load_cluster(REPO / cluster)
    report = check_fit(cfg, spec)
    assert report.problems == [] and report.shortfalls == [], "\n".join(report.lines())
    fits = {(f.request.stage, f.request.what.split(" ")[0]): f for f in report.fits}
    worker = fits[("pretrain", "Ray")]
    # all seven sets train at once, one GPU each, on gpu_spot nodes
    assert worker.request.bundle == {"CPU": 4.0, "GPU": 1.0}
    assert worker.placement.copies == 7 * cfg.train.num_workers and set(worker.placement.nodes) == {"gpu_spot"}
    # 16 fine-tunes at once, one GPU each; probes share a GPU four ways
    assert fits[("evaluate", "fine-tune")].placement.copies == cfg.evaluation.max_concurrent == 16
    assert fits[("evaluate", "knn/linear")].placement.nodes == {"gpu_spot": 4}
    # ingest takes every cpu_ingest CPU, never a GPU node's
    assert fits[("ingest", "ingest")].placement.nodes == {"cpu_ingest": 20}
    assert max_cpus(spec) == 320


def test_every_request_of_the_config_is_checked():
    got = {(r.stage, r.what.split(" ")[0]): (r.bundle, r.fields) for r in config_requests(paper())}
    assert got[("ingest", "ingest")][0] == {"CPU": 1}
    assert got[("pretrain", "Ray")] == ({"CPU": 4.0, "GPU": 1.0}, ("train.cpus_per_worker", "train.use_gpu",
                                                                   "train.resources_per_worker"))
    assert got[("evaluate", "knn/linear")][0] == {"CPU": 2.0, "GPU": 0.25}
    assert got[("evaluate", "fine-tune")][0] == {"CPU": 2.0, "GPU": 1.0}
    assert got[("evaluate", "embedding")][0] == {"CPU": 1.0, "GPU": 0.25}
    assert ("analyze", "diversity") in got


def test_the_old_recipe_on_the_old_gpu_nodes_is_a_problem_that_names_both_sides():
    """8 CPUs per worker (the docs' recipe of before) on g5.xlarge's {CPU: 4, GPU: 1} could never be placed."""
    data = cluster_data()
    data["available_node_types"]["gpu_spot"]["resources"] = {"CPU": 4, "GPU": 1}
    report = check_fit(paper_with(train={"cpus_per_worker": 8}), parse_cluster(data, "old.yaml"))
    assert len(report.problems) == 1, report.problems
    problem = report.problems[0]
    assert problem.startswith("pretrain: Ray Train worker {CPU: 8, GPU: 1}")
    for part in ("train.cpus_per_worker", "fits no node type of old.yaml", "gpu_spot {CPU: 4, GPU: 1}: CPU 8 > 4",
                 "cpu_ingest {CPU: 16}: no GPU", "head {CPU: 0}: no CPU, no GPU"):
        assert part in problem


def test_a_worker_group_larger_than_the_cluster_cannot_start():
    report = check_fit(paper_with(train={"num_workers": 20}), load_cluster(REPO / "cluster.yaml"))
    assert len(report.problems) == 1
    assert "20 × Ray Train worker" in report.problems[0] and "holds at most 16" in report.problems[0]
    assert "gpu_spot: 1 per node × 16 nodes of max_workers 16" in report.problems[0]


def test_concurrency_beyond_the_caps_is_a_shortfall_naming_the_knob():
    report = check_fit(paper_with(evaluation={"max_concurrent": 64}), load_cluster(REPO / "cluster.yaml"))
    assert report.problems == []
    short = [s for s in report.shortfalls if "fine-tune" in s]
    assert len(short) == 1 and "evaluation.max_concurrent asks for 64" in short[0]
    assert "holds at most 16" in short[0] and "lower evaluation.max_concurrent" in short[0]
    # probes: 4 per GPU node → 64 fit exactly
    assert not any("knn/linear" in s for s in report.shortfalls)


def test_the_global_max_workers_caps_the_sets_at_once():
    data = cluster_data()
    data["max_workers"] = 24  # 20 ingest + 16 gpu > 24: only 24 worker nodes in all
    data["available_node_types"]["gpu_spot"]["max_workers"] = 16
    spec = parse_cluster(data, "capped.yaml")
    assert place(spec, {"CPU": 1, "GPU": 1}).copies == 16  # a stage alone may use the 24 nodes
    data["max_workers"] = 5
    report = check_fit(paper(), parse_cluster(data, "capped.yaml"))
    short = [s for s in report.shortfalls if s.startswith("pretrain")]
    assert len(short) == 1 and "holds at most 5" in short[0] and "global max_workers 5" in short[0]


def test_a_custom_resource_no_node_type_has_is_a_problem():
    cfg = paper_with(train={"resources_per_worker": {"accelerator_type:H100": 0.001}})
    report = check_fit(cfg, load_cluster(REPO / "cluster.yaml"))
    assert any("no accelerator_type:H100" in p and "train.resources_per_worker" in p for p in report.problems)


def test_cpu_only_work_stays_off_gpu_nodes_and_memory_counts_where_declared():
    spec = load_cluster(REPO / "cluster.yaml")
    assert set(place(spec, {"CPU": 1}).nodes) == {"cpu_ingest"}
    data = cluster_data()
    del data["available_node_types"]["cpu_ingest"]
    data["available_node_types"]["gpu_spot"]["resources"]["memory"] = 32 * 2**30
    spec = parse_cluster(data)
    assert place(spec, {"CPU": 1}).nodes == {"gpu_spot": 16}      # no CPU type: GPU nodes do take it
    assert place(spec, {"CPU": 1, "memory": 20 * 2**30}).copies == 16  # one 20 GiB task per 32 GiB node


def test_the_paper_run_of_the_pretraining_page_fits():
    """docs/pretrain.md's paper recipe "on 8 GPUs", applied to configs/paper.yaml."""
    text = (REPO / "docs" / "pretrain.md").read_text()
    block = re.search(r"on 8 GPUs:\s*```yaml\n(.*?)```", text, re.S).group(1)
    snippet = yaml.safe_load(block)
    data = paper().model_dump(mode="json")
    for section, values in snippet.items():
        data[section] = {**data[section], **values}
    cfg = parse_config(data)
    assert cfg.train.num_workers == 8
    for cluster in CLUSTERS:
        report = check_fit(cfg, load_cluster(REPO / cluster))
        assert report.problems == [], report.problems


def test_validate_with_a_cluster(tmp_path, capsys):
    from pw_ray.cli import main

    assert main(["validate", "--config", str(REPO / "configs" / "paper.yaml"), "--cluster",
                 str(REPO / "cluster.yaml")]) == 0
    out = capsys.readouterr().out
    assert "pretrain: Ray Train worker {CPU: 4, GPU: 1}: up to 7 at once on 7 × gpu_spot" in out
    data = cluster_data()
    data["available_node_types"]["gpu_spot"]["resources"] = {"CPU": 2, "GPU": 1}
    bad = tmp_path / "small.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["validate", "--config", str(REPO / "configs" / "paper.yaml"), "--cluster", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pw-ray validate failed:") and "CPU 4 > 2" in err
    missing = copy.deepcopy(data)
    del missing["available_node_types"]["gpu_spot"]["resources"]
    bad.write_text(yaml.safe_dump(missing))
    assert main(["validate", "--config", str(REPO / "configs" / "paper.yaml"), "--cluster", str(bad)]) == 2
    assert "available_node_types.gpu_spot.resources is missing" in capsys.readouterr().err
