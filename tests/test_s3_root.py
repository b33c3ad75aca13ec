"""The whole pipeline on an ``s3://`` root, against a real S3 API on loopback (moto's server).

``pw-ray run`` runs in a process of its own, with the S3 endpoint and made-up credentials in its
environment only (the standard AWS variables), so that the local Ray it starts hands them to its
workers as a cluster's nodes would have them. Another Ray instance (the session's) runs on the
machine meanwhile, which used to put a traceback of Ray Train's ``PlacementGroupCleaner`` on the
console. The run must leave every stage's outputs in the bucket, upload the report, say where to
fetch it, keep Ray's internals off the console, and never show the secret key anywhere: not on
the console, not in Ray's logs, not in any stored object.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from pw_ray import storage
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

#: Console lines that are Ray's internals, never pw-ray's: tracebacks of Ray's helper actors,
#: output forwarded from workers (``(pid=…)``, ``(RayTrainWorker pid=…)``), Ray Data's progress
#: bars and per-dataset lines, Tune's experiment table, Python warnings from inside Ray, ray.init's notices.
RAY_INTERNALS = re.compile(
    r"PlacementGroupCleaner|Traceback|\(pid=|\(\w+ pid=\d+\)|ReadFilesParquet|MapBatches\(|Running Dataset"
    r"|Configuration for experiment|View detailed results|UserWarning|site-packages/ray/"
    r"|registers for logging|Progress bars disabled|Token authentication")


@pytest.fixture
def s3_run(s3_server, ray_session, tmp_path):
    """``pw-ray run`` of the tiny config on ``s3://<bucket>/exp``; yields (root, completed process, Ray's temp dir)."""
    root = s3_server.create_bucket("pwray-whole-pipeline") + "/exp"
    conf = tmp_path / "tiny.yaml"
    conf.write_text(yaml.safe_dump(dict(TINY_CONFIG, root=root), sort_keys=False))
    ray_tmp = tempfile.mkdtemp(prefix="pwr-s3-")  # short: Ray's socket paths must stay < 108 bytes
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
    env.update(s3_server.env(), PYTHONPATH=str(REPO), RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", PW_RAY_CACHE_DIR=str(tmp_path / "cache"))
    try:
        run = subprocess.run([sys.executable, "-m", "pw_ray.cli", "run", "--config", str(conf)], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=1800)
        yield root, run, Path(ray_tmp), tmp_path
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_whole_pipeline_runs_on_an_s3_root(s3_run, s3_root, s3_server):
    root, run, ray_tmp, workdir = s3_run  # s3_root: this process's AWS settings point at the server
    console = run.stdout + run.stderr
    assert run.returncode == 0, console[-6000:]

    # Every stage finished on the bucket.
    for stage in ("plan", "ingest", "pretrain", "evaluate", "analyze", "report"):
        assert storage.exists(storage.join(root, "_stages", f"{stage}.json")), stage
    files = storage.listdir(root, recursive=True)
    rel = [f[len(root) + 1:] for f in files]
    sets = [s["name"] for s in TINY_CONFIG["pretrain_sets"]]
    for s in sets:
        assert any(r.startswith(f"shards/{s}/parquet/") and r.endswith(".parquet") for r in rel), s
        # Ray Train's run dir (checkpoints) and the encoder export live in the bucket.
        assert any(r.startswith(f"runs/pretrain/{s}/{s}-") and "/checkpoint_" in r for r in rel), s
        assert f"runs/pretrain/{s}/export/encoder.pt" in rel and f"runs/pretrain/{s}/export/config.json" in rel
        for task in ("landcover", "population"):
            assert f"runs/embeddings/{s}/{task}.parquet" in rel
    for s in sets:  # the cards, beside what they describe, and the leakage audit: in the bucket too
        assert {f"shards/{s}/README.md", f"shards/{s}/card.json", f"runs/pretrain/{s}/export/README.md",
                f"runs/pretrain/{s}/export/card.json"} <= set(rel), s
    audit = storage.read_table(storage.join(root, "results", "leakage.parquet")).to_pandas()
    assert len(audit) == len(sets) * 2 and (audit["n_held_out_within"] == 0).all()
    assert any(r.startswith("runs/grid/") for r in rel)  # Tune's experiment, restorable from the bucket
    cells = [r for r in rel if r.startswith("runs/cells/") and not r.endswith("/_expected.json")]
    assert len(cells) == 4 * 2 * 3 * 2  # sets+zero × tasks × regions × methods
    results = storage.read_table(storage.join(root, "results", "results.parquet")).to_pandas()
    assert len(results) == 48 and (results["status"] == "ok").sum() > 0.8 * 48
    diversity = storage.read_table(storage.join(root, "results", "diversity.parquet")).to_pandas()
    assert list(diversity["pretrain_set"]) == sets

    # The report: rendered locally, every file uploaded, and the console says where and how to fetch it.
    report = [r for r in rel if r.startswith("report/")]
    assert {"report/index.html", "report/README.md"} <= set(report)
    assert sum(r.endswith(".png") for r in report) >= 4
    assert "europe" in storage.read_text(storage.join(root, "report", "index.html"))
    assert f"report: {root}/report/index.html" in run.stdout
    assert f"aws s3 cp --recursive --endpoint-url {s3_server.url} {root}/report/ ./report/" in run.stdout

    # The synthetic archive was built in the local cache, not in the bucket nor in the working folder.
    assert not any(r.startswith("archive/") for r in rel)
    assert (workdir / "cache" / "s3" / "pwray-whole-pipeline" / "exp" / "archive" / "archive.json").exists()
    assert not (workdir / "s3:").exists()

    # The console: pw-ray's line per stage and set, none of Ray's internals, and where Ray's logs are.
    for s in sets:
        assert re.search(rf"^ingest {s}: \d+/24 chips ok", run.stdout, re.M), run.stdout
        assert re.search(rf"^pretrain {s}: \d+ steps", run.stdout, re.M), run.stdout
    assert re.search(r"^evaluate: \d+ cells scored", run.stdout, re.M)
    internals = [line for line in console.splitlines() if RAY_INTERNALS.search(line)]
    assert not internals, "\n".join(internals[:20])
    logs = re.search(r"Ray's own output .* is in (\S+)", run.stderr)
    assert logs and Path(logs.group(1)).is_dir() and str(logs.group(1)).startswith(str(ray_tmp))
    assert (Path(logs.group(1)) / "pw-ray-driver.log").exists()

    # No credentials anywhere: console, Ray's logs (workers included), stored objects.
    secret = s3_server.secret_key.encode()
    assert secret not in console.encode()
    leaks = [str(p) for p in ray_tmp.rglob("*") if p.is_file() and not p.is_symlink() and secret in p.read_bytes()]
    leaks += [f for f in files if secret in storage.read_bytes(f)]
    assert not leaks, leaks

