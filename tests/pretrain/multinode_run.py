"""Pretrain one set on a two-node ``ray.cluster_utils.Cluster``; run as a script, in its own process.

    python tests/pretrain/multinode_run.py CONFIG_JSON RESULT_JSON

Its own process and its own ``RAY_TMPDIR`` (set by the caller), because a Cluster writes
``ray_current_cluster`` into Ray's temp folder and a process can hold only one Ray. Each node
has one ``train_slot``, and each worker asks for one, so the two workers land on two nodes;
each node has 2 CPUs, so a Ray Data read task (1 CPU) still fits beside a worker's half CPU.
The result file records each worker's node.
"""

from __future__ import annotations

import json
import os
import sys


def main(config_path: str, result_path: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pw_ray.config import parse_config
    from pw_ray.pretrain.trainer import pretrain_set

    cfg = parse_config(json.loads(open(config_path).read()))
    node_args = {"num_cpus": 2, "resources": {"train_slot": 1}, "object_store_memory": 100 * 1024**2}
    cluster = Cluster(initialize_head=True, head_node_args={**node_args, "include_dashboard": False})
    cluster.add_node(**node_args)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        summary = pretrain_set(cfg, cfg.pretrain_sets[0].name)
        workers = [a for a in ray._private.state.actors().values() if a["ActorClassName"] == "RayTrainWorker"]
        result = {"summary": summary, "nodes": len(ray.nodes()),
                  "worker_nodes": sorted({a["Address"]["NodeID"] for a in workers})}
        with open(result_path, "w") as f:
            json.dump(result, f)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main(*sys.argv[1:3])
