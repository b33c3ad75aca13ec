"""Pretrain two sets at once on a four-node ``ray.cluster_utils.Cluster``, then lose the node of
one set's worker mid-run; run as a script, in its own process.

    python tests/pretrain/parallel_sets_run.py CONFIG_JSON RESULT_JSON

Its own process and its own ``RAY_TMPDIR`` (set by the caller), because a Cluster writes
``ray_current_cluster`` into Ray's temp folder and a process can hold only one Ray. The head has
one CPU and no ``fake_gpu`` (the driver and the runs' controllers live there); three worker
nodes have one CPU and one ``fake_gpu`` each, the resource every training worker asks for (a
stand-in for a GPU: training stays on CPU). The two sets' runs take two of them; the third is
where the lost set's run comes back. ``experiment.pretrain`` runs in a thread (the Cluster must
be driven from the main thread), with the real worker loop slowed to 0.6 s per step so the node
can be removed between two checkpoints. Each worker-group start appends ``{set, node, pid}`` to
``<RESULT_JSON>.starts``; the result records the starts, every set's logged steps by TensorBoard
file with their wall times, the summaries and the removed node.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path


def slow_recording_loop(starts_path: str, seconds: float):
    def loop(config):
        import json
        import os
        import time

        import ray

        from pw_ray.pretrain import step as St
        from pw_ray.pretrain.trainer import train_loop_per_worker

        with open(starts_path, "a") as f:
            f.write(json.dumps({"set": config["set_name"], "node": ray.get_runtime_context().get_node_id(),
                                "pid": os.getpid()}) + "\n")
        real = St.train_step

        def slow_step(*args, **kwargs):
            time.sleep(seconds)
            return real(*args, **kwargs)

        St.train_step = slow_step
        train_loop_per_worker(config)
    return loop


def main(config_path: str, result_path: str, victim: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pw_ray import experiment as E
    from pw_ray.config import parse_config
    from pw_ray.pretrain.metrics import read_scalars
    from tests.pretrain.runs import registered_checkpoint_step, run_dirs

    cfg = parse_config(json.loads(Path(config_path).read_text()))
    root = Path(cfg.root)
    starts_path = result_path + ".starts"
    small = {"object_store_memory": 80 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **small})
    for _ in range(3):
        cluster.add_node(num_cpus=1, resources={"fake_gpu": 1}, **small)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    out: dict = {}

    def run():
        try:
            E.pretrain(cfg, train_loop=slow_recording_loop(starts_path, 0.6))
        except BaseException as err:  # noqa: BLE001 - reported in the result
            out["error"] = repr(err)

    try:
        fit = threading.Thread(target=run)
        fit.start()
        removed = None
        deadline = time.monotonic() + 300
        while fit.is_alive() and time.monotonic() < deadline:
            starts = [json.loads(x) for x in Path(starts_path).read_text().splitlines()] \
                if os.path.exists(starts_path) else []
            node = next((s["node"] for s in starts if s["set"] == victim), None)
            if node and registered_checkpoint_step(root, victim) >= 4:
                (target,) = [n for n in cluster.list_all_nodes() if n.node_id == node]
                out["removed_at_step"] = registered_checkpoint_step(root, victim)
                cluster.remove_node(target, allow_graceful=False)
                removed = node
                break
            time.sleep(0.2)
        fit.join(timeout=600)
        result = {"removed": removed, "error": out.get("error"), "removed_at_step": out.get("removed_at_step"),
                  "starts": [json.loads(x) for x in Path(starts_path).read_text().splitlines()], "sets": {}}
        for s in cfg.pretrain_sets:
            (run_path,) = run_dirs(root, s.name)
            files: dict[str, list] = {}
            for sc in read_scalars(str(run_path / "tensorboard")):
                if sc.tag == "loss":
                    files.setdefault(sc.file, []).append([sc.step, sc.wall_time])
            summary = root / "runs" / "pretrain" / s.name / "export" / "summary.json"
            result["sets"][s.name] = {"files": list(files.values()),
                                      "summary": json.loads(summary.read_text()) if summary.exists() else None}
        Path(result_path).write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    main(*sys.argv[1:4])
