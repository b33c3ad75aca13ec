"""Autoscaling from zero, proven on one machine with Ray's fake multi-node provider.

A head started with ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=fake.yaml``
(no CPUs, no GPUs: like ``cluster.yaml``'s head it schedules nothing) and a ``gpu_worker`` node
type with ``resources: {CPU: 1, GPU: 1}``, ``min_workers: 0`` and a short idle timeout. The
fake GPUs are Ray resources only; torch sees no CUDA and runs on the CPU.

The real evaluate stage runs against it with ``evaluation.gpus_per_probe: 1`` (GPU embedding
tasks, then Tune trials asking for ``{"cpu": 1, "gpu": 1}``): the autoscaler must launch
``gpu_worker`` nodes for it, the grid must finish on them, and the idle nodes must be removed
after the idle timeout. Every process the head started is killed by PID afterwards.

The pure sizing rule for ingest (no fixed ceiling: the work, up to the CPUs the cluster YAML lets the
autoscaler grow to) is tested here too.
"""

from __future__ import annotations

import json

import pytest

from tests.ray_head import RayHead, fake_autoscaling_config

IDLE_TIMEOUT_MIN = 0.2  # 12 s


# --------------------------------------------------------------------------- ingest sizing
@pytest.mark.parametrize("n_units, cpus, override, max_cpus, expected", [
    (2, 2, None, None, 2),          # a laptop: one task per unit
    (10, 0, None, None, 10),        # a head with no CPUs: every chunk may be pending → the autoscaler sees them
    (5000, 0, None, None, 5000),    # ... how far it may grow unknown: no fixed ceiling (it was 64)
    (5000, 0, None, 320, 320),      # cluster.yaml's 20 cpu_ingest nodes × 16 CPUs: all of them, no more
    (5000, 1, None, 320, 320),
    (5000, 400, None, 320, 400),    # more CPUs up now than the YAML said: use them
    (3, 128, None, 320, 3),         # a big cluster already up: bounded by the work
    (0, 0, None, None, 1),          # never zero
    (5000, 0, 8, 320, 8),           # chips.ingest_parallelism wins
    (2, 64, 200, None, 200),
])
def test_ingest_parallelism(n_units, cpus, override, max_cpus, expected):
    from pw_ray.ingest.pipeline import ingest_parallelism

    assert ingest_parallelism(n_units, cpus, override, max_cpus=max_cpus) == expected


def test_ingest_parallelism_bounds_and_config():
    from pw_ray.config import parse_config
    from pw_ray.ingest.pipeline import ingest_parallelism

    assert ingest_parallelism(10_000, 0, cap=16) == 16
    # the index phase: no more searches in flight than the STAC API's request limit
    assert ingest_parallelism(10_000, 0, max_cpus=320, request_limit=8) == 8
    assert ingest_parallelism(4, 0, max_cpus=320, request_limit=8) == 4
    base = {"root": "/tmp/x", "pretrain_sets": [{"name": "eu", "region": "eu", "size": 5}]}
    assert parse_config(base).chips.ingest_parallelism is None
    assert parse_config(dict(base, chips={"ingest_parallelism": 32})).chips.ingest_parallelism == 32
    assert parse_config(dict(base, chips={"ingest_max_cpus": 320})).chips.ingest_max_cpus == 320
    from pw_ray.config import ConfigError

    with pytest.raises(ConfigError, match="ingest_parallelism"):
        parse_config(dict(base, chips={"ingest_parallelism": 0}))


def test_ingest_width_follows_the_cluster_yaml(monkeypatch, tmp_path):
    """The default pool grows to what the autoscaler's YAML allows: cluster.yaml's cpu_ingest."""
    from pathlib import Path

    from pw_ray.cluster import CLUSTER_YAML_ENV, discover_max_cpus, load_cluster, max_cpus
    from pw_ray.ingest.pipeline import ingest_parallelism

    repo = Path(__file__).resolve().parents[1]
    spec = load_cluster(repo / "cluster.yaml")
    ingest = next(t for t in spec.node_types if t.name == "cpu_ingest")
    expected = int(ingest.resources["CPU"]) * ingest.max_workers
    assert max_cpus(spec) == expected  # CPU-only work never counts the GPU nodes' CPUs
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/ray_bootstrap_config.yaml here
    monkeypatch.delenv(CLUSTER_YAML_ENV, raising=False)
    assert discover_max_cpus()[0] is None
    assert discover_max_cpus(48) == (48.0, "chips.ingest_max_cpus")
    monkeypatch.setenv(CLUSTER_YAML_ENV, str(repo / "cluster.yaml"))
    cpus, source = discover_max_cpus()
    assert cpus == expected and CLUSTER_YAML_ENV in source
    assert ingest_parallelism(100_000, 0, max_cpus=cpus) == expected
    monkeypatch.delenv(CLUSTER_YAML_ENV)
    (tmp_path / "ray_bootstrap_config.yaml").write_text((repo / "cluster-gcp.yaml").read_text())
    assert discover_max_cpus()[0] == max_cpus(load_cluster(repo / "cluster-gcp.yaml"))


# --------------------------------------------------------------------------- fake cluster
@pytest.mark.slow
def test_gpu_workers_scale_from_zero_and_back(tmp_path):
    pytest.importorskip("tests.evaluate.data")
    fake = fake_autoscaling_config(idle_timeout_minutes=IDLE_TIMEOUT_MIN, max_gpu_workers=2, head_cpus=0)
    head = RayHead(num_cpus=0, num_gpus=0, fake_autoscaling=fake)
    out = tmp_path / "summary.json"
    with head:
        assert "gpu_worker" not in _active(head), "no GPU worker may exist before work asks for one"
        run = head.python("-m", "tests.fake_cluster_driver", str(tmp_path / "root"), str(out), timeout=540,
                          extra_env={"PW_RAY_CELL_SLEEP_S": "4", "TUNE_GLOBAL_CHECKPOINT_S": "1"})
        status_after = _active(head)
    assert not head.left_behind, f"processes left behind: {head.left_behind}"
    assert run.returncode == 0 and out.exists(), run.stdout[-3000:] + run.stderr[-5000:]
    s = json.loads(out.read_text())
    # Started from zero, launched GPU workers for the GPU work, finished every cell on them.
    assert s["gpu_nodes_at_start"] == []
    assert s["max_gpu_nodes_alive"] >= 1 and s["gpu_nodes_seen"], s
    assert s["rows"] == 2 and s["ok"] == 2, s
    # ... and removed them once idle (bounded wait in the driver), as `ray status` agrees.
    assert s["gpu_nodes_after_idle_wait"] == [], s
    assert "gpu_worker" not in status_after, status_after
    print(f"\nautoscaling: evaluate {s['evaluate_s']}s on up to {s['max_gpu_nodes_alive']} gpu_worker nodes "
          f"({len(s['gpu_nodes_seen'])} launched); idle ones gone {s['gpu_nodes_gone_after_s']}s after the grid")


def _active(head: RayHead) -> str:
    """The "Active:" block of `ray status` (node types that are up)."""
    r = head.ray_cli("status", "--address", head.gcs_address)
    assert r.returncode == 0, r.stdout + r.stderr
    text = r.stdout
    return text[text.index("Active:"):text.index("Pending:")] if "Active:" in text else text
