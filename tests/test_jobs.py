"""`ray job submit` entrypoints (jobs/*.py): arguments, exit codes, the last line, resubmission.

Fast tests run the entrypoints without a cluster (argument parsing, config errors, a cluster
address that cannot work). The slow one starts a Ray head of its own in subprocesses
(``tests/ray_head.py``: own --temp-dir, free 127.0.0.1 ports, token auth off), submits
``jobs/pipeline.py`` with ``ray job submit --working-dir .`` exactly as the README does, checks
the outputs, resubmits and checks every stage was skipped, submits failing jobs and checks the
reason is the last line of their logs, then kills every process the head started.
"""

from __future__ import annotations

import copy
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_CONFIG

REPO = Path(__file__).resolve().parents[1]
JOBS = {"plan": "plan", "ingest": "ingest", "pretrain": "pretrain", "evaluate": "evaluate",
        "analyze": "analyze", "report": "report", "pipeline": "run"}


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO), **extra)
    return env


def _write_yaml(path: Path, conf: dict) -> Path:
    path.write_text(yaml.safe_dump(conf, sort_keys=False))
    return path


# --------------------------------------------------------------------------- no cluster
@pytest.mark.parametrize("job, command", sorted(JOBS.items()))
def test_job_entrypoint_runs_its_stage(job, command, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [f"jobs/{job}.py", "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(REPO / "jobs" / f"{job}.py"), run_name="__main__")
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"usage: pw-ray {command}" in out and "--config" in out and "--root" in out


def test_bad_config_exits_2_with_the_reason_last(tmp_path):
    bad = _write_yaml(tmp_path / "bad.yaml", {"root": str(tmp_path / "r"), "pretrain_sets": [
        {"name": "x", "region": "mars", "size": 5}, {"name": "y", "region": "eu", "size": -1}]})
    r = subprocess.run([sys.executable, "jobs/plan.py", "--config", f"file://{bad}"], cwd=REPO, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    last = _last_line(r.stdout + r.stderr)
    assert last.startswith("pw-ray plan failed: ConfigError: invalid config:"), last
    assert "pretrain_sets[0].region: unknown region 'mars'" in last and "pretrain_sets[1].size" in last
    r = subprocess.run([sys.executable, "jobs/ingest.py", "--config", f"file://{tmp_path}/missing.yaml"],
                       cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert _last_line(r.stderr) == ("pw-ray ingest failed: ConfigError: config file not found: "
                                    f"file://{tmp_path}/missing.yaml")


def test_dashboard_address_is_refused_with_the_reason_last(tmp_path):
    """RAY_ADDRESS=http://… is for `ray job submit`, not for a driver: say so, exit 1."""
    ok = _write_yaml(tmp_path / "ok.yaml", {"root": str(tmp_path / "r"),
                                            "pretrain_sets": [{"name": "eu", "region": "eu", "size": 5}]})
    r = subprocess.run([sys.executable, "jobs/ingest.py", "--config", str(ok)], cwd=REPO,
                       env=_env(RAY_ADDRESS="http://127.0.0.1:8265"), capture_output=True, text=True, timeout=180)
    assert r.returncode == 1, r.stderr[-2000:]
    last = _last_line(r.stdout + r.stderr)
    assert last.startswith("pw-ray ingest failed: RuntimeError: RAY_ADDRESS=http://127.0.0.1:8265 is a "
                           "dashboard (job submission) address"), last


def test_failing_stage_reason_is_last_and_a_callers_ray_survives(ray_session, tmp_path, monkeypatch, capsys):
    """In-process main(): the reason is the last line; a Ray that was up before main() stays up."""
    from pw_ray import experiment as E
    from pw_ray.cli import main

    def boom(cfg, force=False):
        raise RuntimeError("shard eu/0 unreadable\n  details on a second line")

    monkeypatch.setattr(E, "analyze", boom)
    ok = _write_yaml(tmp_path / "ok.yaml", {"root": str(tmp_path / "r"),
                                            "pretrain_sets": [{"name": "eu", "region": "eu", "size": 5}]})
    assert main(["analyze", "--config", str(ok)]) == 1
    err = capsys.readouterr().err
    assert _last_line(err) == "pw-ray analyze failed: RuntimeError: shard eu/0 unreadable; details on a second line"
    assert ray_session.is_initialized()


def test_failure_reason_is_one_line_and_unwraps_remote_errors():
    from pw_ray.runtime import failure_reason

    class RemoteError(Exception):  # the shape of ray.exceptions.RayTaskError: traceback text + .cause
        def __init__(self, cause):
            super().__init__("Traceback (most recent call last):\n  File x\nValueError: boom")
            self.cause = cause

    assert failure_reason(RemoteError(ValueError("chunk eu/3: boom"))) == "ValueError: chunk eu/3: boom"
    assert failure_reason(ValueError("header:\n  a: 1\n  b: 2")) == "ValueError: header: a: 1; b: 2"
    assert failure_reason(KeyError("x")) == "KeyError: 'x'"
    assert failure_reason(RuntimeError("")) == "RuntimeError: (no message)"
    assert len(failure_reason(RuntimeError("x" * 5000))) < 700


def test_ray_task_error_is_unwrapped():
    ray_exceptions = pytest.importorskip("ray.exceptions")
    from pw_ray.runtime import failure_reason

    try:
        raise ValueError("scene S2A_X: 3 bands missing")
    except ValueError as cause:
        err = ray_exceptions.RayTaskError("write_chunk", "Traceback ...\nmany lines", cause)
    assert failure_reason(err) == "ValueError: scene S2A_X: 3 bands missing"


# --------------------------------------------------------------------------- a real head
def _jobs_config(root: Path) -> dict:
    """TINY_CONFIG cut down: two sets, one task, kNN on the global subset (2 cells)."""
    conf = copy.deepcopy(TINY_CONFIG)
    conf["name"] = "jobs-tiny"
    conf["root"] = str(root)
    conf["pretrain_sets"] = [dict(s, size=16) for s in conf["pretrain_sets"][:2]]
    conf["tasks"] = [{"name": "landcover", "kind": "synthetic-landcover", "size": 60, "seed": 11}]
    conf["evaluation"].update(methods=["knn"], task_regions=["global"], include_zero=False)
    # Sets of 16 points keep 6-12 chips once cloudy chips are skipped and the test areas kept
    # clear: batches of 4 so that every set fills a step.
    conf["train"] = dict(conf["train"], batch_size=4)
    return conf


def _snapshot(dst: Path) -> Path:
    """A copy of the checkout as git sees it (tracked and untracked files, minus ignored ones).

    Jobs are submitted from it so that both submissions run the same code: the shared working
    tree may change in between, and a changed config schema changes every stage's digest.
    """
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = REPO / name
        if src.is_file():
            (dst / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / name)
    return dst


def _submit(head, submission_id: str, *entrypoint: str, checkout: Path, timeout: float = 900,
            log_dir: Path | None = None, submit_args: tuple[str, ...] = ()) -> tuple[str, str]:
    """`ray job submit … --working-dir . -- python …` from ``checkout``, waiting; returns (status, logs).
    ``submit_args``: more options of `ray job submit` (e.g. ``--runtime-env-json``)."""
    t0 = time.monotonic()
    sub = head.ray_cli("job", "submit", "--address", head.dashboard_url, "--submission-id", submission_id,
                       *submit_args, "--working-dir", ".", "--", "python", *entrypoint, timeout=timeout, cwd=checkout)
    from ray.job_submission import JobSubmissionClient  # HTTP only: no ray.init in this process

    client = JobSubmissionClient(head.dashboard_url)
    info = client.get_job_info(submission_id)
    state, logs = str(info.status.value), client.get_job_logs(submission_id)
    if log_dir is not None:  # kept for a failing test's post-mortem
        (log_dir / f"{submission_id}.log").write_text(logs)
    print(f"\njob {submission_id}: {state} in {time.monotonic() - t0:.0f}s (ray job submit exit {sub.returncode}); "
          f"status message: {(info.message or '')[:200]!r}")
    # `ray job submit` waits, tails the logs and exits 1 when the job failed.
    assert sub.returncode == (1 if state == "FAILED" else 0), sub.stdout[-3000:] + sub.stderr[-3000:]
    return state, logs


@pytest.mark.slow
def test_pipeline_job_on_a_local_head(tmp_path):
    import pyarrow.parquet as pq

    from tests.ray_head import RayHead

    root = tmp_path / "root"  # given with --root; the YAML names another root that must stay unused
    cfg = _write_yaml(tmp_path / "experiment.yaml", _jobs_config(tmp_path / "yaml-root"))
    (tmp_path / "yaml-root").mkdir()
    entry = ["jobs/pipeline.py", "--config", f"file://{cfg}", "--root", str(root)]
    checkout = _snapshot(tmp_path / "checkout")
    with RayHead(num_cpus=2) as head:
        # 1. The whole pipeline as one job.
        state, logs = _submit(head, "pipeline-1", *entry, checkout=checkout, log_dir=tmp_path)
        assert state == "SUCCEEDED", logs[-5000:]
        # The driver joined the job's cluster (RAY_ADDRESS from the job supervisor), not a new local Ray.
        assert re.search(rf"ray: connected to the cluster at [\d.]+:{head.port} ", logs), logs[:3000]
        assert re.search(r"done in \d+s — report: .*/report/index.html", logs)
        results = pq.read_table(root / "results" / "results.parquet").to_pandas()
        assert len(results) == 2 and set(results["pretrain_set"]) == {"europe", "africa"}
        assert (results["status"] == "ok").all(), results
        assert (root / "report" / "index.html").stat().st_size > 0
        assert not any((tmp_path / "yaml-root").iterdir()), "--root must override the config's root"
        mtime = (root / "results" / "results.parquet").stat().st_mtime_ns

        # 2. Resubmitted: every stage says it is done and skips; nothing is rewritten.
        state, logs = _submit(head, "pipeline-2", *entry, checkout=checkout, timeout=300, log_dir=tmp_path)
        assert state == "SUCCEEDED", logs[-5000:]
        for stage in ("plan", "ingest", "pretrain", "evaluate", "analyze", "report"):
            assert f"{stage}: already done for this config" in logs, (stage, logs[-3000:])
        assert "Started training worker group" not in logs and "starting a grid" not in logs
        assert (root / "results" / "results.parquet").stat().st_mtime_ns == mtime

        # 3. A bad config: exit 2, the reason last.
        bad = _write_yaml(tmp_path / "bad.yaml", {"root": str(tmp_path / "r2"),
                                                  "pretrain_sets": [{"name": "x", "region": "mars", "size": 5}]})
        state, logs = _submit(head, "bad-config", "jobs/plan.py", "--config", f"file://{bad}", checkout=checkout,
                              timeout=300, log_dir=tmp_path)
        assert state == "FAILED"
        assert _last_line(logs).startswith("pw-ray plan failed: ConfigError: invalid config: "
                                           "pretrain_sets[0].region: unknown region 'mars'"), logs[-2000:]

        # 4. A stage failing after it joined the cluster: exit 1, the reason still last
        #    (Ray is shut down before the reason is printed, so nothing of Ray's comes after it).
        state, logs = _submit(head, "evaluate-no-inputs", "jobs/evaluate.py", "--config", f"file://{cfg}",
                              "--root", str(tmp_path / "empty-root"), checkout=checkout, timeout=300,
                              log_dir=tmp_path)
        assert state == "FAILED"
        assert re.search(rf"ray: connected to the cluster at [\d.]+:{head.port} ", logs), logs[:3000]
        last = _last_line(logs)
        assert last.startswith("pw-ray evaluate failed: "), logs[-3000:]
        assert "Traceback" not in last and "RayTaskError" not in last, last
    assert not head.left_behind, f"processes left behind: {head.left_behind}"
