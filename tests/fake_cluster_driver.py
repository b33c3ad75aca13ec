"""Run the real evaluate stage with GPU probes on a fake autoscaling cluster; report what the nodes did.

Used by ``test_autoscaling.py`` in a subprocess, connected to a head started with
``RAY_FAKE_CLUSTER=1 ray start --head --autoscaling-config=…`` whose only GPUs are on
``gpu_worker`` nodes that start from zero:

    RAY_ADDRESS=<gcs> python -m tests.fake_cluster_driver ROOT OUT_JSON

It builds a small evaluate root (task shards + exported encoders, no pretraining), sets
``evaluation.gpus_per_probe: 1`` and runs :func:`pw_ray.experiment.evaluate` — the GPU
embedding tasks, then the Tune grid whose trials ask for ``{"cpu": 1, "gpu": 1}``. Meanwhile a
thread samples ``ray.nodes()``. Afterwards it waits (bounded) until no GPU node is alive.
``OUT_JSON``: the samples' summary, the results, and when the GPU nodes went away.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def _gpu_nodes(ray) -> list[str]:
    return sorted(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU", 0) > 0)


def main(root: str, out: str, idle_wait_s: float = 240) -> int:
    import ray

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from pw_ray.runtime import ensure_ray, setup_logging
    from tests.evaluate.data import EVAL_CONFIG, make_eval_root

    setup_logging("INFO")
    conf = dict(EVAL_CONFIG, root=root)
    conf["tasks"] = [t for t in EVAL_CONFIG["tasks"] if t["name"] == "landcover"]
    conf["evaluation"] = dict(EVAL_CONFIG["evaluation"], methods=["knn"], task_regions=["global"],
                              gpus_per_probe=1, cpus_per_trial=1, max_concurrent=2)
    cfg = parse_config(conf)
    make_eval_root(cfg)

    t0 = time.monotonic()
    ensure_ray()  # RAY_ADDRESS: the fake cluster's head
    summary: dict = {"gpu_nodes_at_start": _gpu_nodes(ray), "samples": []}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                summary["samples"].append([round(time.monotonic() - t0, 1), _gpu_nodes(ray)])
            except Exception as err:  # a sample lost to a node going away is not a failure
                summary.setdefault("sample_errors", []).append(str(err))
            stop.wait(0.5)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        df = E.evaluate(cfg)
        summary["rows"] = len(df)
        summary["ok"] = int((df["status"] == "ok").sum())
    except Exception as err:
        summary["error"] = f"{type(err).__name__}: {err}"
    summary["evaluate_s"] = round(time.monotonic() - t0, 1)
    stop.set()
    thread.join()
    seen = sorted({n for _, nodes in summary["samples"] for n in nodes})
    summary["gpu_nodes_seen"] = seen
    summary["max_gpu_nodes_alive"] = max((len(nodes) for _, nodes in summary["samples"]), default=0)

    # Idle GPU nodes must go away after the autoscaler's idle timeout.
    t1 = time.monotonic()
    while _gpu_nodes(ray) and time.monotonic() - t1 < idle_wait_s:
        time.sleep(1)
    summary["gpu_nodes_after_idle_wait"] = _gpu_nodes(ray)
    summary["gpu_nodes_gone_after_s"] = round(time.monotonic() - t1, 1)
    with open(out, "w") as f:
        json.dump(summary, f)
    ray.shutdown()
    return 0 if "rows" in summary else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
