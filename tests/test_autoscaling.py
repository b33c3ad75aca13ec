"""Autoscaling from zero, proven on one machine with Ray's fake multi-node provider.

A head started with ``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=fake.yaml``
(no CPUs, no GPUs: like ``cluster.yaml``'s head it schedules nothing) and a ``gpu_worker`` node
type with ``resources: {CPU: 1, GPU: 1}``, ``min_workers: 0`` and a short idle timeout. The
fake GPUs are Ray resources only; torch sees no CUDA and runs on the CPU.

The real evaluate stage runs against it with ``evaluation.gpus_per_probe: 1`` (GPU embedding
tasks, then Tune trials asking for ``{"cpu": 1, "gpu": 1}``): the autoscaler must launch
``gpu_worker`` nodes for it, the grid must finish on them, and the idle nodes must be removed
after the idle timeout. Every process the head started is killed by PID afterwards.

The pure sizing rule for ingest on a cluster that starts with no worker CPUs is tested here too.
"""

from __future__ import annotations

import json

import pytest

from tests.ray_head import RayHead, fake_autoscaling_config

IDLE_TIMEOUT_MIN = 0.2  # 12 s


# --------------------------------------------------------------------------- ingest sizing
@pytest.mark.parametrize("n_units, cpus, override, expected", [
    (2, 2, None, 2),        # a laptop: as before, one task per CPU
    (10, 0, None, 10),      # a head with no CPUs: every chunk may be pending → the autoscaler sees them
    (5000, 0, None, 64),    # ... capped
    (5000, 1, None, 64),
    (3, 128, None, 128),    # a big cluster already up: use it
    (0, 0, None, 1),        # never zero
    (5000, 0, 8, 8),        # chips.ingest_parallelism wins
    (2, 64, 200, 200),
])
def test_ingest_parallelism(n_units, cpus, override, expected):
    from pw_ray.ingest.pipeline import ingest_parallelism

    assert ingest_parallelism(n_units, cpus, override) == expected


def test_ingest_parallelism_cap_and_config():
    from pw_ray.config import parse_config
    from pw_ray.ingest.pipeline import MAX_DEFAULT_PARALLELISM, ingest_parallelism

    assert ingest_parallelism(10_000, 0, cap=16) == 16
    assert MAX_DEFAULT_PARALLELISM == 64
    base = {"root": "/tmp/x", "pretrain_sets": [{"name": "eu", "region": "eu", "size": 5}]}
    assert parse_config(base).chips.ingest_parallelism is None
    assert parse_config(dict(base, chips={"ingest_parallelism": 32})).chips.ingest_parallelism == 32
    from pw_ray.config import ConfigError

    with pytest.raises(ConfigError, match="ingest_parallelism"):
        parse_config(dict(base, chips={"ingest_parallelism": 0}))


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
