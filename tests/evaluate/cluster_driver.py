"""Run the evaluate stage on a ``ray.cluster_utils.Cluster`` and remove a node mid-grid.

Used by ``test_resume.py`` in a subprocess (never a second Ray in the pytest process):

    RAY_TMPDIR=<own dir> python -m tests.evaluate.cluster_driver CONFIG OUT_JSON

The head schedules nothing (0 CPUs); two 1-CPU worker nodes run the trials. Once some cells
have finished and others are running, one worker node is removed without a graceful
shutdown. The grid must still finish. ``OUT_JSON`` gets the cells finished before the
removal and what was running on the lost node.
"""

from __future__ import annotations

import json
import sys
import threading
import time


def main(config: str, out: str) -> int:
    import ray
    from ray.cluster_utils import Cluster

    from pw_ray import experiment as E
    from pw_ray import storage
    from pw_ray.config import load_config
    from pw_ray.evaluate import grid as G
    from pw_ray.runtime import setup_logging

    setup_logging("INFO")
    cfg = load_config(config)
    cells = G.grid_cells(cfg)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    cluster.wait_for_nodes()
    cluster.connect()

    result: dict = {}

    def run():
        try:
            result["rows"] = len(E.evaluate(cfg))
        except Exception as err:  # reported to the test through OUT_JSON
            result["error"] = f"{type(err).__name__}: {err}"

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def finished():
        return [G.cell_id(c) for c in cells if storage.exists(G.cell_uri(cfg.root, c))]

    def running():
        return [G.cell_id(c) for c in cells
                if G.cell_starts(cfg.root, c) and not storage.exists(G.cell_uri(cfg.root, c))]

    deadline = time.monotonic() + 420
    while time.monotonic() < deadline and not (len(finished()) >= 3 and len(running()) >= 2):
        time.sleep(0.2)
    before, in_flight = finished(), running()
    alive_before = len([n for n in ray.nodes() if n["Alive"]])
    cluster.remove_node(workers[1], allow_graceful=False)  # the main thread, as Cluster requires
    print(f"cluster_driver: removed a worker node with {len(before)} cells finished, "
          f"{len(in_flight)} running", flush=True)
    thread.join(timeout=300)
    summary = {"finished_before": before, "running_at_removal": in_flight, "alive_before": alive_before,
               "alive_after": len([n for n in ray.nodes() if n["Alive"]]), **result,
               "timed_out": thread.is_alive()}
    with open(out, "w") as f:
        json.dump(summary, f)
    ray.shutdown()
    cluster.shutdown()
    return 0 if "rows" in result else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
