"""A Ray head of its own for cluster tests, in processes the test starts and stops itself.

``ray start --head`` daemonises (GCS, raylet, dashboard, job server, autoscaler monitor, and,
with the fake multi-node provider, whole worker nodes), so its processes outlive the
``ray start`` command. :class:`RayHead` therefore

* starts it in a new session (``start_new_session``), with its own ``--temp-dir`` (a short path
  under /tmp: Ray's socket paths must stay under 107 characters), on free ports (GCS,
  dashboard, client server and dashboard agent: the ones with fixed defaults that another
  test's head would collide with), the dashboard and job server bound to 127.0.0.1, token auth
  off (``RAY_AUTH_MODE=disabled``) and usage stats off. (GCS and raylet listen on every
  interface whatever one asks: Ray rewrites a 127.0.0.1 ``--node-ip-address`` to the host's
  address. ``self.gcs_address`` uses 127.0.0.1, which reaches them.)
* stops it by SIGKILL of exactly its processes: those whose command line names its temp dir,
  those in its session, and every descendant of either (a job's entrypoint runs in a session
  of its own under the job supervisor). Never ``ray stop``, which would kill every Ray on the
  machine, and nothing by name.

Nothing here calls ``ray.init``: the pytest process keeps its one local Ray (``ray_session``).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def _proc_table() -> dict[int, tuple[int, int, str]]:
    """pid → (parent pid, session id, command line) of every live, non-zombie process."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        state, ppid, sid = fields[0], int(fields[1]), int(fields[3])
        if state not in ("Z", "X"):
            out[int(entry)] = (ppid, sid, cmd)
    return out


def _sigterm_to_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fake_autoscaling_config(idle_timeout_minutes: float = 0.1, max_gpu_workers: int = 2,
                            head_cpus: int = 0) -> dict:
    """A fake multi-node cluster: a head with no GPU and a ``gpu_worker`` type (1 CPU, 1 GPU) from zero.

    :meth:`RayHead.start` fills in ``provider.gcs_address``.
    """
    return {
        "cluster_name": "pw-ray-fake",
        "max_workers": max_gpu_workers,
        "idle_timeout_minutes": idle_timeout_minutes,
        "upscaling_speed": 1.0,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": None,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": head_cpus}, "node_config": {}, "max_workers": 0},
            "gpu_worker": {"resources": {"CPU": 1, "GPU": 1}, "node_config": {},
                           "min_workers": 0, "max_workers": max_gpu_workers},
        },
        "head_node_type": "ray.head.default",
        "auth": {"ssh_user": "nobody"},
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


class RayHead:
    """``with RayHead(num_cpus=2) as head:`` — a running head; ``head.env`` for Ray CLI calls."""

    def __init__(self, num_cpus: int = 2, num_gpus: int = 0, fake_autoscaling: dict | None = None,
                 start_timeout_s: float = 240, extra_env: dict | None = None, object_store_mb: int | None = None):
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.object_store_mb = object_store_mb
        self.worker_sids: list[int] = []  # the sessions of `ray start --address` (worker raylets)
        self.worker_temp_dirs: list[str] = []  # a temp dir per worker raylet (see add_worker)
        self.fake_autoscaling = fake_autoscaling
        self.start_timeout_s = start_timeout_s
        self.temp_dir = tempfile.mkdtemp(prefix="pwh-", dir="/tmp")
        self.port, self.dashboard_port = free_port(), free_port()
        self.client_port, self.agent_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.sid: int | None = None  # the session of `ray start` and its daemons
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
                   PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        if fake_autoscaling is not None:
            env["RAY_FAKE_CLUSTER"] = "1"
        env.update(extra_env or {})  # e.g. a node's credentials: every process of the cluster inherits them
        self.env = env

    # ------------------------------------------------------------------ start / stop
    def start(self) -> RayHead:
        cmd = [RAY, "start", "--head", f"--port={self.port}",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={self.client_port}",
               f"--dashboard-agent-listen-port={self.agent_port}",
               "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}"]
        if self.object_store_mb:
            cmd.append(f"--object-store-memory={self.object_store_mb * 2**20}")
        if self.fake_autoscaling is not None:
            path = Path(self.temp_dir) / "fake-cluster.yaml"
            conf = copy.deepcopy(self.fake_autoscaling)
            conf["provider"]["gcs_address"] = self.gcs_address
            path.write_text(yaml.safe_dump(conf))
            cmd.append(f"--autoscaling-config={path}")
        proc = subprocess.Popen(cmd, env=self.env, cwd=self.temp_dir, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.sid = proc.pid
        try:
            self.start_output = self._output_of_start(proc, "ray start")
        except RuntimeError:
            self.stop()
            raise
        self._wait_for_job_server()
        return self

    def add_workers(self, count: int, num_cpus: int, resources: dict | None = None) -> None:
        """Start ``count`` more raylets on this machine that join the head (worker nodes), at once:
        each with its own free ports, its own session (stopped with the head) and its own temp dir
        (raylets sharing one would share ``runtime_resources/``, where each node's runtime-env agent
        deletes the job's unpacked working dir when its own reference to it ends: the cwd of a
        driver on another node)."""
        procs = []
        for _ in range(count):
            temp_dir = tempfile.mkdtemp(prefix="pww-", dir="/tmp")
            self.worker_temp_dirs.append(temp_dir)
            cmd = [RAY, "start", f"--address={self.gcs_address}", f"--num-cpus={num_cpus}", "--num-gpus=0",
                   f"--resources={json.dumps(resources or {})}", f"--temp-dir={temp_dir}",
                   "--disable-usage-stats", f"--dashboard-agent-listen-port={free_port()}",
                   f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
            if self.object_store_mb:
                cmd.append(f"--object-store-memory={self.object_store_mb * 2**20}")
            proc = subprocess.Popen(cmd, env=self.env, cwd=temp_dir, start_new_session=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            self.worker_sids.append(proc.pid)
            procs.append(proc)
        for proc in procs:
            self._output_of_start(proc, "ray start --address (a worker node)")

    def _output_of_start(self, proc: subprocess.Popen, what: str) -> str:
        """The output of a ``ray start`` that has ended; RuntimeError with it if it failed or hung."""
        try:
            out, _ = proc.communicate(timeout=self.start_timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed ({proc.returncode}):\n{out}")
        return out

    def _wait_for_job_server(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5) as r:
                    json.loads(r.read())
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"the job server at {self.dashboard_url} never answered")
                time.sleep(1)

    def processes(self) -> dict[int, str]:
        """This head's live processes (pid → command line): its temp dir in the command line,
        its session, and their descendants. Read from /proc (Linux)."""
        table = _proc_table()
        sids = {self.sid, *self.worker_sids} - {None}
        dirs = [self.temp_dir, *self.worker_temp_dirs]
        ours = {pid for pid, (ppid, sid, cmd) in table.items() if sid in sids or any(d in cmd for d in dirs)}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(ours)
        while todo:
            for c in children.get(todo.pop(), []):
                if c not in ours:
                    ours.add(c)
                    todo.append(c)
        ours.discard(os.getpid())
        return {pid: table[pid][2] for pid in ours}

    def stop(self) -> list[str]:
        """SIGKILL every process of this head; returns those still alive afterwards (none expected)."""
        for _ in range(10):
            procs = self.processes()
            if not procs:
                break
            for pid in procs:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            time.sleep(1)  # let them die (and a dying parent's last fork show up)
        left = [f"{pid} {cmd[:200]}" for pid, cmd in self.processes().items()]
        for d in [self.temp_dir, *self.worker_temp_dirs]:
            shutil.rmtree(d, ignore_errors=True)
        return left

    def __enter__(self) -> RayHead:
        # A SIGTERM (a CI timeout, `timeout …`) would end the test without running __exit__ and
        # leave the head running: turn it into KeyboardInterrupt so the `with` unwinds.
        self._old_sigterm = None
        if threading.current_thread() is threading.main_thread():
            self._old_sigterm = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        try:
            return self.start()
        except BaseException:  # a failed or interrupted start: kill what did start, remove the temp dir
            self.left_behind = self.stop()
            self._restore_sigterm()
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.left_behind = self.stop()
        finally:
            self._restore_sigterm()

    def _restore_sigterm(self) -> None:
        if self._old_sigterm is not None:
            signal.signal(signal.SIGTERM, self._old_sigterm)
            self._old_sigterm = None

    # ------------------------------------------------------------------ helpers
    def ray_cli(self, *args: str, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=self.env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)

    def python(self, *args: str, timeout: float = 600, cwd: Path = REPO,
               extra_env: dict | None = None) -> subprocess.CompletedProcess:
        """A Python process connected to this head (``RAY_ADDRESS`` set to its GCS)."""
        env = dict(self.env, RAY_ADDRESS=self.gcs_address, PYTHONPATH=str(REPO), **(extra_env or {}))
        return subprocess.run([sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout)
