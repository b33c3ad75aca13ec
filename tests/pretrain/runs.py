"""Helpers of the pretraining-run tests: a one-set tiny config, a root holding a copy of ingested
shards, and where a run leaves its checkpoints, TensorBoard logs and Ray Train snapshot.

The shards come from the ``shards_root`` fixture (tests/pretrain/conftest.py): plan + ingest of
the real pipeline, once per test session; each run copies them into a root of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from pw_ray.pretrain import trainer as T
from pw_ray.pretrain.metrics import read_scalars
from tests.conftest import TINY_CONFIG

SET = "eu"
CHIPS = 48


def config(root: Path, normalization: str = "fmow", sets: tuple[str, ...] = (SET,), **train) -> dict:
    """A tiny experiment: 48 chips of 32 px per set; 2 workers × batch 2 = 12 steps per epoch.
    Extra sets (``sets``) train on copies of the same shards (:func:`root_with_shards`)."""
    return dict(
        TINY_CONFIG, root=str(root), tasks=[], evaluation={"include_zero": False},
        model={"preset": "tiny", "patch_size": 8, "normalization": normalization},
        stac={**TINY_CONFIG["stac"], "synthetic": {**TINY_CONFIG["stac"]["synthetic"], "cloudy_fraction": 0.0}},
        pretrain_sets=[{"name": s, "region": "eu", "size": CHIPS, "seed": 1 + i} for i, s in enumerate(sets)],
        train={"epochs": 20, "batch_size": 2, "num_workers": 2, "cpus_per_worker": 0.5, "blr": 0.05,
               "checkpoint_every": 4, "keep_checkpoints": 2, "log_every": 1, "max_failures": 2, **train},
    )


def root_with_shards(shards_root: Path, tmp_path: Path, sets: tuple[str, ...] = (SET,)) -> Path:
    """A fresh root with set ``eu``'s shards copied under each name of ``sets``."""
    root = tmp_path / "root"
    for s in sets:
        shutil.copytree(shards_root / "shards" / SET, root / "shards" / s)
    return root


def run_dirs(root: Path, set_name: str = SET) -> list[Path]:
    """The set's Ray Train run dirs (one per lineage: ``<set>-<digest8>``)."""
    return sorted(p for p in (root / "runs" / "pretrain" / set_name).glob(f"{set_name}-*") if p.is_dir())


def run_dir(root: Path, set_name: str = SET) -> Path:
    """The set's one run dir (fails when there are several)."""
    (only,) = run_dirs(root, set_name)
    return only


def checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in run.glob("checkpoint_*") if p.is_dir())


def ckpt_step(path: Path) -> int:
    return T.load_state(path / T.STATE_FILE)["step"]


def steps_by_file(run: Path, tag: str = "loss") -> list[list[int]]:
    """The steps logged by each worker-group start of a run, in order."""
    by_file = defaultdict(list)
    for s in read_scalars(str(run / "tensorboard")):
        if s.tag == tag:
            by_file[s.file].append(s.step)
    return list(by_file.values())


def registered_checkpoint_step(root: Path, set_name: str = SET) -> int:
    """The step of the latest checkpoint Ray Train has registered in the set's run (0: none yet)."""
    for run in run_dirs(root, set_name):
        try:
            snap = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
            return int((snap.get("latest_checkpoint_result") or {}).get("metrics", {}).get("step", 0))
        except (FileNotFoundError, json.JSONDecodeError):
            pass
    return 0


def run_cluster_script(script: Path, args: list[str], tmp_path: Path, timeout: int) -> dict:
    """Run a test driver that starts its own ``ray.cluster_utils.Cluster`` (``multinode_run.py``,
    ``parallel_sets_run.py``) in a process of its own, with its own short ``RAY_TMPDIR`` (Ray's
    socket paths must fit 107 bytes); ``args`` follow the config path written by the caller, and
    the driver writes ``result.json``. Returns that result; the driver's log on failure."""
    ray_tmp = tempfile.mkdtemp(prefix="pwcl-")
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    log_path = tmp_path / f"{script.stem}.log"
    try:
        with open(log_path, "w") as log_file:
            proc = subprocess.run([sys.executable, str(script), str(tmp_path / "config.json"),
                                   str(tmp_path / "result.json"), *args], env=env, stdout=log_file,
                                  stderr=subprocess.STDOUT, timeout=timeout, cwd=Path(__file__).resolve().parents[2])
        assert proc.returncode == 0, log_path.read_text()[-4000:]
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    return json.loads((tmp_path / "result.json").read_text())
