"""The grid survives what preemption does to it: a driver killed with SIGKILL, a node lost.

Each scenario runs its own local Ray in a subprocess with its own temp folder (``RAY_TMPDIR``),
so nothing joins or disturbs another Ray on the machine; afterwards every process that
belongs to that folder is killed by PID (a ``kill -9``'d driver leaves agents behind).
Trials sleep a little (``PW_RAY_CELL_SLEEP_S``) so that they are in flight when we strike.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pw_ray import storage
from pw_ray.config import dump_config, parse_config
from pw_ray.evaluate import grid as G
from tests.evaluate.data import EVAL_CONFIG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# 2 sets × 2 tasks × 2 regions × 2 methods = 16 cells
CONFIG = dict(EVAL_CONFIG, evaluation=dict(EVAL_CONFIG["evaluation"], task_regions=["global", "eu"]))


@pytest.fixture
def resume_cfg(eval_base, tmp_path):
    """16 cells on a copy of ``eval_base`` (embeddings already cached: this is about the grid)."""
    root = tmp_path / "root"
    shutil.copytree(eval_base, root)
    cfg = parse_config(dict(CONFIG, root=str(root)))
    path = tmp_path / "experiment.yaml"
    path.write_text(dump_config(cfg))
    return cfg, str(path)


@pytest.fixture
def ray_tmp():
    """A short private Ray temp folder (socket paths must stay < 108 chars); cleaned up by PID."""
    d = tempfile.mkdtemp(prefix="pwr", dir="/tmp")
    yield d
    _kill_processes_of(d)
    shutil.rmtree(d, ignore_errors=True)


def _env(ray_tmp: str, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               TUNE_GLOBAL_CHECKPOINT_S="1", PYTHONPATH=str(REPO), **extra)
    return env


def _kill_processes_of(ray_tmp: str) -> list[int]:
    """SIGKILL every process whose command line names our Ray temp folder (ours only)."""
    killed = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().decode(errors="replace")
        except OSError:
            continue
        if ray_tmp in cmd:
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
            except ProcessLookupError:
                pass
    return killed


def _finished(cfg, cells) -> list[str]:
    return [G.cell_id(c) for c in cells if storage.exists(G.cell_uri(cfg.root, c))]


def _running(cfg, cells) -> list[str]:
    return [G.cell_id(c) for c in cells
            if G.cell_starts(cfg.root, c) and not storage.exists(G.cell_uri(cfg.root, c))]


def _starts(cfg, cell_name: str) -> int:
    cell = next(c for c in G.grid_cells(cfg) if G.cell_id(c) == cell_name)
    return G.cell_starts(cfg.root, cell)


def _assert_grid_complete(cfg, cells, finished_before):
    df = pq.read_table(storage.join(cfg.root, "results", "results.parquet")).to_pandas()
    assert len(df) == len(cells) == 16
    assert not df[["pretrain_set", "task", "task_region", "method", "seed"]].duplicated().any()
    for c in cells:
        assert storage.exists(G.cell_uri(cfg.root, c))
        assert _starts(cfg, G.cell_id(c)) >= 1
    # a cell that had its result before the interruption never ran again
    assert finished_before and {name: _starts(cfg, name) for name in finished_before} == \
        {name: 1 for name in finished_before}


def test_kill_9_of_the_driver_then_the_same_command_finishes_without_rerunning_a_cell(resume_cfg, ray_tmp,
                                                                                    tmp_path):
    cfg, config_path = resume_cfg
    cells = G.grid_cells(cfg)
    cmd = [sys.executable, "-m", "pw_ray.cli", "evaluate", "--config", config_path]
    env = _env(ray_tmp, PW_RAY_CELL_SLEEP_S="1.5")
    log1 = tmp_path / "first.log"
    with open(log1, "w") as out:
        driver = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 420  # generous: the 2 shared cores are often overloaded
        while time.monotonic() < deadline and driver.poll() is None:
            if len(_finished(cfg, cells)) >= 3 and _running(cfg, cells):
                break
            time.sleep(0.1)
        assert driver.poll() is None, f"driver ended before it could be killed:\n{log1.read_text()[-3000:]}"
        finished_before, running_before = _finished(cfg, cells), _running(cfg, cells)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    assert running_before and len(finished_before) < len(cells)
    _kill_processes_of(ray_tmp)  # the agents a SIGKILLed driver leaves behind

    second = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=480)
    log2 = second.stdout + second.stderr
    assert second.returncode == 0, log2[-4000:]
    assert "restoring the grid" in log2
    assert "cells 16/16" in log2
    _assert_grid_complete(cfg, cells, finished_before)


def test_a_node_lost_mid_grid_loses_no_cell(resume_cfg, ray_tmp, tmp_path):
    cfg, config_path = resume_cfg
    cells = G.grid_cells(cfg)
    out = tmp_path / "cluster.json"
    run = subprocess.run([sys.executable, "-m", "tests.evaluate.cluster_driver", config_path, str(out)],
                         env=_env(ray_tmp, PW_RAY_CELL_SLEEP_S="1.5"), cwd=REPO, capture_output=True,
                         text=True, timeout=420)
    log = run.stdout + run.stderr
    assert run.returncode == 0 and out.exists(), log[-4000:]
    summary = json.loads(out.read_text())
    assert summary["rows"] == 16 and not summary["timed_out"]
    assert summary["running_at_removal"], "no trial was in flight when the node went away"
    assert summary["alive_after"] == summary["alive_before"] - 1
    _assert_grid_complete(cfg, cells, summary["finished_before"])
