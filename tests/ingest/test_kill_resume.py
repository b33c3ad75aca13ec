"""Ingest killed with SIGKILL mid-shard-writing, then rerun: the same chips as an uninterrupted run.

The killed ingest runs as ``python -m pw_ray.cli ingest`` in a subprocess with its own local Ray
(``RAY_TMPDIR`` → its own temp dir, so it never joins the test session's Ray). After the kill,
every process of that Ray (the driver's descendants, and anything whose command line names its
temp dir: ``DashboardAgent``/``RuntimeEnvAgent`` outlive the driver) is SIGKILLed by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pw_ray import storage
from pw_ray.config import parse_config
from pw_ray.ingest import shards as S
from tests.conftest import TINY_CONFIG
from tests.ingest.truth import assert_manifest_matches_shards

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # two CLI ingests, each starting its own Ray (≈1–2 min on 2 cores)


def _cfg_dict(root, serial: bool = True):
    d = dict(TINY_CONFIG, root=str(root), tasks=[])
    d["pretrain_sets"] = [{"name": "kill", "region": "global", "size": 48, "seed": 21}]
    # Two chips per shard and (in the killed run) one task at a time: many shard writes, one after
    # the other, so the kill lands among them. Parallelism changes no file's content.
    d["chips"] = dict(TINY_CONFIG["chips"], chunk_size=2, **({"ingest_parallelism": 1} if serial else {}))
    return d


def _procs() -> dict[int, tuple[int, str]]:
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        out[int(d)] = (ppid, cmd)
    return out


def _ray_pids(root_pid: int, marker: str) -> set[int]:
    """The driver, its descendants, and every process whose command line names ``marker``."""
    procs = _procs()
    keep = {root_pid} | {p for p, (_, cmd) in procs.items() if marker in cmd}
    changed = True
    while changed:
        changed = False
        for p, (pp, _) in procs.items():
            if pp in keep and p not in keep:
                keep.add(p)
                changed = True
    return {p for p in keep if p in procs and p not in (os.getpid(), -1)}


def _kill(pids: set[int]) -> None:
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def reference(ray_session, tmp_path_factory):
    """An uninterrupted ingest of the same config (in the session's Ray)."""
    from pw_ray import experiment as E

    cfg = parse_config(_cfg_dict(tmp_path_factory.mktemp("ref") / "root", serial=False))
    src = E.source(cfg)
    E.plan(cfg, src=src)
    E.ingest(cfg, src=src)
    return cfg


def test_sigkill_mid_shards_then_rerun_gives_the_uninterrupted_result(reference, tmp_path):
    from pw_ray import experiment as E

    expected = S.shard_files(reference.root, "kill")
    assert len(expected) >= 8
    root = tmp_path / "root"
    cfg_d = _cfg_dict(root)
    cfg = parse_config(cfg_d)
    E.plan(cfg)  # no Ray needed; the subprocess does the ingest
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg_d))

    import tempfile

    ray_tmp = Path(tempfile.mkdtemp(prefix="pwk-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="disabled",
               PYTHONPATH=str(REPO))
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pw_ray.cli", "ingest", "--config", str(cfg_path), "--log-level", "WARNING"]

    log1 = open(tmp_path / "run1.log", "w")
    proc = subprocess.Popen(cmd, env=env, cwd=str(REPO), stdout=log1, stderr=subprocess.STDOUT,
                            start_new_session=True)
    killed_at = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            n = len(S.shard_files(str(root), "kill"))
            if 1 <= n < len(expected):
                killed_at = n
                pids = _ray_pids(proc.pid, str(ray_tmp))
                _kill(pids)
                break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=30)
        # What the SIGKILL left behind (agents, workers re-parented to init): kill by PID.
        time.sleep(0.5)
        _kill(_ray_pids(proc.pid, str(ray_tmp)))
        log1.close()
    assert killed_at is not None, "the ingest finished (or never wrote a shard) before it could be killed: " + \
        (tmp_path / "run1.log").read_text()[-2000:]
    assert not (root / "_stages" / "ingest.json").exists()
    time.sleep(0.5)
    assert not _ray_pids(proc.pid, str(ray_tmp)) - {proc.pid}, "processes of the killed Ray survive"

    # A temp file of a write in flight, as a kill can leave it: never a shard, removed on rerun.
    region_dir = Path(S.shard_files(str(root), "kill")[0]).parent
    stale = region_dir / "kill-xx-99999.parquet.tmp-deadbeef"
    stale.write_bytes(b"PAR1 partial")
    assert str(stale) not in S.shard_files(str(root), "kill")

    rerun = subprocess.run(cmd, env=env, cwd=str(REPO), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, timeout=300, start_new_session=True)
    time.sleep(0.5)
    _kill(_ray_pids(-1, str(ray_tmp)))  # anything of that Ray still alive after a clean exit
    assert rerun.returncode == 0, rerun.stdout[-3000:]

    got = S.shard_files(str(root), "kill")
    assert [Path(f).relative_to(root) for f in got] == [Path(f).relative_to(reference.root) for f in expected]
    leftovers = [p for p in root.rglob("*") if S.TMP_MARK in p.name]
    assert not leftovers
    a, b = S.read_set(str(root), "kill"), S.read_set(reference.root, "kill")
    ids = a.column("chip_id").to_pylist()
    assert len(ids) == len(set(ids))
    assert ids == b.column("chip_id").to_pylist()
    np.testing.assert_array_equal(S.read_pixels(a), S.read_pixels(b))
    m = storage.read_table(storage.join(str(root), "manifest", "kill.parquet")).to_pandas()
    m_ref = storage.read_table(storage.join(reference.root, "manifest", "kill.parquet")).to_pandas()
    assert m["point_id"].is_unique and len(m) == len(m_ref)
    assert (m.sort_values("point_id")["status"].tolist() == m_ref.sort_values("point_id")["status"].tolist())
    assert_manifest_matches_shards(str(root), "kill")
    # The same number of WebDataset tars as the uninterrupted run, none partial.
    tars = sorted(p.name for p in (root / "shards" / "kill" / "wds").glob("*.tar"))
    ref_tars = sorted(p.name for p in (Path(reference.root) / "shards" / "kill" / "wds").glob("*.tar"))
    assert tars == ref_tars
    import shutil

    shutil.rmtree(ray_tmp, ignore_errors=True)
