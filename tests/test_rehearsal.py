"""A full rehearsal of the cluster run (issue 15), on one machine: a Ray head that schedules nothing
(``CPU: 0``, as cluster.yaml's) and three worker raylets on loopback, each with one CPU and one
``fake_gpu`` (the resource the pretraining workers ask for; training stays on CPU), an ``s3://``
root on a real S3 API (moto's server), and ``ray job submit -- python jobs/pipeline.py`` exactly as
docs/cloud.md runs it.

As on a cluster, the nodes hold the credentials (their environment, as an instance profile would)
and the job brings the non-secret settings (endpoint, region) in its runtime env. The synthetic
archive lives in a local cache (an ``s3://`` root keeps no fixture archive), which every raylet of
this machine shares. Checks: every stage's outputs in the bucket, work on more than one node (the
state API's task and actor node ids), the two sets' training workers on two nodes at once, and a
resubmission that skips every stage.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from pw_ray import storage
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow

STAGES = ("plan", "ingest", "pretrain", "evaluate", "analyze", "report")


def _config(root: str) -> dict:
    """Two sets of 16 points, one task, kNN on its global subset (2 cells); one worker per run."""
    conf = copy.deepcopy(TINY_CONFIG)
    conf.update(name="rehearsal", root=root)
    conf["pretrain_sets"] = [dict(s, size=16) for s in conf["pretrain_sets"][:2]]
    conf["tasks"] = [{"name": "landcover", "kind": "synthetic-landcover", "size": 60, "seed": 11}]
    conf["evaluation"].update(methods=["knn"], task_regions=["global"], include_zero=False)
    # batches of 4: a set keeps 6-12 of its 16 points' chips after cloudy skips and the exclusion zone
    conf["train"].update(num_workers=1, cpus_per_worker=1, resources_per_worker={"fake_gpu": 1}, batch_size=4)
    conf["analysis"] = {"bootstrap": 10}
    return conf


def _work_by_node(head, job_id: str) -> tuple[dict[str, set[str]], dict[str, str]]:
    """(node id → names of the job's tasks and actors that ran there, actor class → node) from the
    state API of the head's dashboard."""
    from ray.util.state import list_actors, list_tasks

    nodes: dict[str, set[str]] = {}
    kw = dict(address=head.dashboard_url, filters=[("job_id", "=", job_id)], limit=10_000,
              raise_on_missing_output=False, detail=True)
    for t in list_tasks(**kw):
        if t.node_id:
            nodes.setdefault(t.node_id, set()).add(t.name)
    actors = {}
    for a in list_actors(**kw):
        if a.node_id:
            nodes.setdefault(a.node_id, set()).add(a.class_name)
            actors.setdefault(a.class_name, set()).add(a.node_id)
    return nodes, actors


def test_the_whole_pipeline_as_a_job_on_a_head_and_three_worker_raylets_with_an_s3_root(s3_server, s3_root,
                                                                                        tmp_path):
    from ray.job_submission import JobSubmissionClient

    from tests.ray_head import RayHead
    from tests.test_jobs import _snapshot, _submit

    cfg = tmp_path / "rehearsal.yaml"
    cfg.write_text(yaml.safe_dump(_config(s3_root), sort_keys=False))
    checkout = _snapshot(tmp_path / "checkout")
    aws = s3_server.env()
    secret = {k: aws[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    job_env = {k: v for k, v in aws.items() if k not in secret} | {"PW_RAY_CACHE_DIR": str(tmp_path / "cache")}
    submit = ("--runtime-env-json", json.dumps({"env_vars": job_env}))
    entry = ["jobs/pipeline.py", "--config", str(cfg)]
    with RayHead(num_cpus=0, extra_env=secret, object_store_mb=80) as head:
        head.add_workers(3, num_cpus=1, resources={"fake_gpu": 1})
        # 1. The whole pipeline as one job.
        state, logs = _submit(head, "rehearsal-1", *entry, checkout=checkout, log_dir=tmp_path, submit_args=submit)
        assert state == "SUCCEEDED", logs[-5000:]
        assert re.search(rf"ray: connected to the cluster at [\d.]+:{head.port} ", logs), logs[:3000]
        job_id = JobSubmissionClient(head.dashboard_url).get_job_info("rehearsal-1").job_id
        nodes, actors = _work_by_node(head, job_id)

        # 2. Resubmitted: every stage is done for this config and skips.
        state, again = _submit(head, "rehearsal-2", *entry, checkout=checkout, timeout=300, log_dir=tmp_path,
                               submit_args=submit)
        assert state == "SUCCEEDED", again[-5000:]
    assert not head.left_behind, f"processes left behind: {head.left_behind}"
    for stage in STAGES:
        assert f"{stage}: already done for this config" in again, (stage, again[-3000:])
    assert "Started training worker group" not in again and "starting a grid" not in again

    # every stage's outputs, in the bucket
    rel = {u.split(s3_root + "/", 1)[1] for u in storage.listdir(s3_root, recursive=True)}
    sets = [s["name"] for s in _config(s3_root)["pretrain_sets"]]
    for name in sets + ["landcover"]:
        assert {f"points/{name}.parquet", f"index/{name}.parquet", f"manifest/{name}.parquet"} <= rel, name
        assert any(r.startswith(f"shards/{name}/parquet/") for r in rel), name
    assert "tasks/landcover.parquet" in rel
    for name in sets:
        summary = json.loads(storage.read_text(f"{s3_root}/runs/pretrain/{name}/export/summary.json"))
        assert {f"runs/pretrain/{name}/export/encoder.pt", f"runs/pretrain/{name}/export/config.json"} <= rel
        assert any(r.startswith(f"runs/pretrain/{name}/{summary['run']}/checkpoint_") for r in rel), name
        assert f"pretrain {name}: not built yet → training a new run {summary['run']}" in logs
    results = storage.read_table(f"{s3_root}/results/results.parquet").to_pandas()
    assert len(results) == 2 and (results["status"] == "ok").all(), results
    assert {"results/diversity.parquet", "report/index.html", "report/README.md"} <= rel
    assert {f"_stages/{s}.json" for s in STAGES} <= rel

    # the work ran on the worker nodes, more than one of them; each set's training worker on its own node
    assert len(nodes) >= 2, nodes
    assert len(actors.get("RayTrainWorker", ())) == 2, actors
