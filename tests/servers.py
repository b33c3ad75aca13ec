"""Real servers on loopback for the ingest tests: PostgreSQL + pgstac, stac-fastapi-pgstac, nginx, faults.

Every helper here starts its processes on ``127.0.0.1`` with free ports and in its own
temporary folder, and stops exactly the processes it started (by PID, with bounded waits:
a polite signal first, ``SIGKILL`` after a timeout). Nothing listens on another address.

* :class:`Postgres` — PostgreSQL 15 with PostGIS (Debian ``postgresql-15``,
  ``postgresql-15-postgis-3``), run as an unprivileged user when the tests run as root.
* :func:`create_pgstac_db` — a database migrated with pypgstac, with pgstac's ``context``
  setting ``on`` (so searches return ``numberMatched``); :func:`load_archive` loads a synthetic
  archive's collections and items with their COG hrefs rewritten to an HTTP prefix.
* :class:`StacApiServer` — ``uvicorn --factory stac_fastapi.pgstac.app:create_app``.
* :class:`CogServer` — nginx (Debian ``nginx-light``) serving the archive folder with Range
  support; starlette's ``StaticFiles`` under uvicorn when nginx is missing outside CI.
* :class:`FaultProxy` — a reverse proxy (a child process, ``python -m tests.servers proxy``)
  that answers a seeded, deterministic share of requests with 429 (``Retry-After``, 0 s unless
  the plan says), 500, 503, a stall past the client timeout, a dropped connection (closed with
  no answer) or a reset one (TCP RST), and forwards the rest (after ``delay_s``). It counts
  what reached it, by request, with arrival times and the most requests in flight at once:
  with no faults it is the server-side request counter.
* :func:`stac_stack` — the whole stack for one archive, optionally behind fault proxies.

When the Debian packages are missing the helpers call ``pytest.skip`` with the ``apt-get``
command, except in CI (``CI`` set), where they raise: CI must run these tests.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import pwd
import random
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import pytest

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
PG_BIN = Path(os.environ.get("PW_RAY_PG_BIN", "/usr/lib/postgresql/15/bin"))
APT_PACKAGES = ("postgresql-15", "postgresql-15-postgis-3", "nginx-light")
APT_COMMAND = "apt-get update && apt-get install -y " + " ".join(APT_PACKAGES)
PG_SUPERUSER = "postgres"
PG_PASSWORD = "pwray"  # trust auth on loopback: any password works, stac-fastapi wants one


class ServerError(RuntimeError):
    """A test server did not start or stop as expected."""


# --------------------------------------------------------------------------- helpers

def missing(what: str) -> None:
    """Skip (locally) or fail (CI) because a system package is missing."""
    msg = f"{what} is not installed; install it with: {APT_COMMAND}"
    if os.environ.get("CI"):
        raise ServerError(msg + " (CI must provide it)")
    pytest.skip(msg)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_as() -> dict:
    """Popen arguments that drop root to an unprivileged user (postgres refuses to run as root)."""
    if not _as_root():
        return {}
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    raise ServerError("running as root and neither a 'postgres' nor a 'nobody' user exists")


def _chown_for(path: Path, popen_kw: dict) -> None:
    if popen_kw:
        os.chown(path, popen_kw["user"], popen_kw["group"])


class _Process:
    """One child process, its log file, and a bounded stop by PID."""

    def __init__(self, name: str, cmd: list[str], log_path: Path, *, env: dict | None = None,
                 cwd: Path | None = None, popen_kw: dict | None = None):
        self.name, self.cmd, self.log_path = name, cmd, log_path
        self._log = open(log_path, "ab")
        log.info("starting %s: %s", name, " ".join(cmd))
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=cwd, **(popen_kw or {}))
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"{self.name} exited with {self.proc.returncode} before {what}; "
                                  f"log {self.log_path}:\n{_tail(self.log_path)}")
            try:
                if ready():
                    return
            except Exception:  # not up yet
                pass
            time.sleep(0.1)
        self.stop()
        raise ServerError(f"{self.name} not {what} after {timeout_s:.0f} s; log {self.log_path}:\n{_tail(self.log_path)}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        """Signal the process (ours, by PID), wait up to ``timeout_s``, then SIGKILL it."""
        try:
            if self.alive():
                log.info("stopping %s (pid %d) with %s", self.name, self.pid, signal.Signals(sig).name)
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    log.warning("%s (pid %d) still running after %.0f s: SIGKILL", self.name, self.pid, timeout_s)
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            self._log.close()


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return 200 <= r.status < 300


def _start_on_free_port(make: Callable[[int], _Process], ready: Callable[[int], bool], timeout_s: float,
                        what: str, error_text: Callable[[ServerError], str] = str) -> tuple[_Process, int]:
    """Start ``make(port)`` on a free port until ``ready(port)``; try another port on a clash.

    A free port can be taken between the check and the bind: up to three ports are tried when
    the error (``error_text(err)``, e.g. with the server's own error log) says "in use".
    """
    for attempt in range(3):
        port = free_port()
        proc = make(port)
        try:
            proc.wait_until(lambda: ready(port), timeout_s, what)
            return proc, port
        except ServerError as err:
            proc.stop(signal.SIGKILL)
            text = error_text(err)
            if attempt == 2 or "in use" not in text.lower():
                raise ServerError(text) from None
    raise AssertionError("unreachable")


class _Server:
    """A server process and its temp dir: ``stop()`` (also on leaving a ``with`` block) ends both."""

    proc: _Process | None = None
    tmp: Path
    #: How the process is asked to stop, and how long it gets before SIGKILL.
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 15.0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(self.stop_signal, timeout_s=self.stop_timeout_s)
            self.proc = None
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------- PostgreSQL

class Postgres(_Server):
    """A throw-away PostgreSQL 15 cluster on 127.0.0.1 (trust auth, fsync off)."""

    stop_signal = signal.SIGINT  # "fast" shutdown
    stop_timeout_s = 20.0

    def __init__(self, bin_dir: Path = PG_BIN, startup_timeout_s: float = 30.0):
        initdb, postgres = bin_dir / "initdb", bin_dir / "postgres"
        if not (initdb.exists() and postgres.exists()):
            missing(f"PostgreSQL 15 ({bin_dir})")
        if not _postgis_installed(bin_dir):
            missing("PostGIS for PostgreSQL 15")
        self.host, self.user, self.password = HOST, PG_SUPERUSER, PG_PASSWORD
        self.tmp = Path(tempfile.mkdtemp(prefix="pwray-pg-"))
        self._kw = _run_as()
        _chown_for(self.tmp, self._kw)
        self.data = self.tmp / "data"
        try:
            out = subprocess.run([str(initdb), "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8",
                                  "--no-locale", "--no-sync"], capture_output=True, text=True, timeout=120,
                                 cwd=self.tmp, **self._kw)
            if out.returncode:
                raise ServerError(f"initdb failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
            self.proc, self.port = _start_on_free_port(
                lambda port: _Process("postgres", [
                    str(postgres), "-D", str(self.data), "-h", HOST, "-p", str(port), "-k", str(self.tmp),
                    "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                    "-c", "max_connections=100", "-c", "shared_buffers=64MB"],
                    self.tmp / "postgres.log", cwd=self.tmp, popen_kw=self._kw),
                self._ready, startup_timeout_s, "accepting connections")
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        log.info("postgres up on %s:%d (data %s)", self.host, self.port, self.data)

    def dsn(self, dbname: str = "postgres", port: int | None = None) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{port or self.port}/{dbname}"

    def _ready(self, port: int) -> bool:
        import psycopg

        with psycopg.connect(self.dsn(port=port), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)


def _postgis_installed(bin_dir: Path) -> bool:
    try:
        share = subprocess.run([str(bin_dir / "pg_config"), "--sharedir"], capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except OSError:
        share = ""
    candidates = [Path(share) / "extension"] if share else []
    candidates.append(Path("/usr/share/postgresql/15/extension"))
    return any((c / "postgis.control").exists() for c in candidates)


# --------------------------------------------------------------------------- pgstac

def create_pgstac_db(pg: Postgres, dbname: str) -> str:
    """Create ``dbname``, run ``pypgstac migrate`` on it and switch pgstac's ``context`` on."""
    from pypgstac.db import PgstacDB
    from pypgstac.migrate import Migrate

    t = time.perf_counter()
    pg.execute(f'CREATE DATABASE "{dbname}"')
    dsn = pg.dsn(dbname)
    with PgstacDB(dsn=dsn) as db:
        version = Migrate(db).run_migration()
    # context on: every search counts its matches (numberMatched), which matched() needs.
    pg.execute("INSERT INTO pgstac.pgstac_settings (name, value) VALUES ('context', 'on') "
               "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value", dbname)
    log.info("pgstac %s migrated into %s in %.1f s", version, dbname, time.perf_counter() - t)
    return dsn


def load_archive(dsn: str, info, href_prefix: str) -> dict[str, list[dict]]:
    """Load a synthetic archive's collections and items, asset hrefs rewritten to ``href_prefix``.

    Returns the loaded items per collection id (as loaded, i.e. with HTTP hrefs).
    """
    from pypgstac.db import PgstacDB
    from pypgstac.load import Loader, Methods

    from pw_ray.synthetic import rewrite_hrefs

    loaded = {}
    pairs = [(info.collection_path, info.items_path), (info.landcover_collection_path, info.landcover_items_path)]
    with PgstacDB(dsn=dsn) as db:
        loader = Loader(db)
        for coll_path, items_path in pairs:
            coll = json.loads(Path(coll_path).read_text())
            coll["links"] = []  # the static catalog's relative links mean nothing in the API
            items = [rewrite_hrefs(json.loads(line), str(info.root), href_prefix)
                     for line in Path(items_path).read_text().splitlines() if line.strip()]
            loader.load_collections(iter([coll]), Methods.upsert)
            loader.load_items(iter(items), Methods.upsert)
            loaded[coll["id"]] = items
    log.info("loaded %s into pgstac (hrefs under %s)", {k: len(v) for k, v in loaded.items()}, href_prefix)
    return loaded


# --------------------------------------------------------------------------- stac-fastapi-pgstac

class StacApiServer(_Server):
    """stac-fastapi-pgstac under uvicorn on 127.0.0.1 (all extensions, read-only)."""

    def __init__(self, pg: Postgres, dbname: str, startup_timeout_s: float = 60.0):
        self.tmp = Path(tempfile.mkdtemp(prefix="pwray-stacapi-"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "POSTGRES_"))}
        # stac-fastapi-pgstac 7.x reads PGUSER/PGPASSWORD/PGHOST/PGPORT/PGDATABASE (PostgresSettings).
        env.update(PGUSER=pg.user, PGPASSWORD=pg.password, PGHOST=pg.host, PGPORT=str(pg.port), PGDATABASE=dbname,
                   DB_MIN_CONN_SIZE="1", DB_MAX_CONN_SIZE="8", ENABLE_TRANSACTIONS_EXTENSIONS="false")
        try:
            self.proc, self.port = _start_on_free_port(
                lambda port: _Process("stac-fastapi-pgstac", [
                    sys.executable, "-m", "uvicorn", "--factory", "stac_fastapi.pgstac.app:create_app",
                    "--host", HOST, "--port", str(port), "--log-level", "warning", "--no-access-log",
                    "--timeout-graceful-shutdown", "5"], self.tmp / "uvicorn.log", env=env, cwd=self.tmp),
                lambda port: _http_ok(f"http://{HOST}:{port}/"), startup_timeout_s, "answering /")
            self.url = f"http://{HOST}:{self.port}"
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        log.info("stac-fastapi-pgstac up at %s (database %s)", self.url, dbname)


# --------------------------------------------------------------------------- COG file server

NGINX_CONF = """\
daemon off;
worker_processes 2;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
{user}
events {{ worker_connections 512; }}
http {{
    types {{ image/tiff tif tiff; application/json json; application/geo+json geojson; }}
    default_type application/octet-stream;
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    sendfile on;
    keepalive_requests 10000;
    server {{
        listen {host}:{port};
        root {root};
        location / {{ autoindex off; }}
    }}
}}
"""


class CogServer(_Server):
    """Static files (the archive's COGs) over HTTP with Range support, on 127.0.0.1.

    nginx when installed (Debian ``nginx-light``); otherwise, outside CI only, starlette's
    ``StaticFiles`` under uvicorn in a thread.
    """

    stop_timeout_s = 10.0  # nginx: TERM = fast shutdown of master + workers

    def __init__(self, root: Path, startup_timeout_s: float = 20.0, prefer: str = "nginx"):
        self.root = Path(root).resolve()
        self.tmp = Path(tempfile.mkdtemp(prefix="pwray-cogs-"))
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        try:
            if prefer == "nginx" and nginx:
                self._start_nginx(nginx, startup_timeout_s)
            else:
                if prefer == "nginx" and os.environ.get("CI"):
                    missing("nginx")
                log.warning("nginx not found: serving COGs with starlette StaticFiles (install: %s)", APT_COMMAND)
                self._start_starlette(startup_timeout_s)
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self.url = f"http://{HOST}:{self.port}"
        log.info("COG server (%s) up at %s serving %s", self.kind, self.url, self.root)

    def _start_nginx(self, nginx: str, timeout_s: float) -> None:
        self.kind = "nginx"
        # As root, workers would switch to 'nobody', which cannot read pytest's 0700 temp dirs.
        user = "user root root;" if _as_root() else ""

        def make(port: int) -> _Process:
            conf = self.tmp / "nginx.conf"
            conf.write_text(NGINX_CONF.format(tmp=self.tmp, user=user, host=HOST, port=port, root=self.root))
            return _Process("nginx", [nginx, "-p", str(self.tmp), "-c", str(conf), "-e", str(self.tmp / "error.log")],
                            self.tmp / "nginx.log", cwd=self.tmp)

        self.proc, self.port = _start_on_free_port(make, _port_open, timeout_s, "listening",
                                                   lambda err: str(err) + _tail(self.tmp / "error.log"))

    def _start_starlette(self, timeout_s: float) -> None:
        # A child process, not a thread: GDAL holds the GIL in some calls and would deadlock it.
        self.kind = "starlette"
        self.proc, self.port = _start_on_free_port(
            lambda port: _Process("starlette COG server", [sys.executable, "-m", "tests.servers", "static", "--root",
                                                           str(self.root), "--port", str(port)],
                                  self.tmp / "static.log", cwd=REPO_ROOT),
            _port_open, timeout_s, "listening")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((HOST, port)) == 0


# --------------------------------------------------------------------------- fault injection

FAULT_KINDS = ("429", "500", "503", "stall", "drop", "reset")
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
               "transfer-encoding", "upgrade", "http2-settings", "content-length"}


@dataclass(frozen=True)
class FaultPlan:
    """Which requests fail, decided from a seed, not from arrival order.

    A request's key is its method, path, query, ``Range`` header and body. The n-th time a key
    is seen it fails with probability ``rate`` (a fault kind drawn from ``kinds``), both drawn
    from ``Random(f"{seed}|{key}|{n}")``; after ``max_consecutive`` failures in a row the key
    goes through, so a client with more retries than that always gets its answer. With
    ``max_per_key`` a key fails at most that many times in all.
    """

    seed: int = 0
    rate: float = 0.3
    max_consecutive: int = 2
    kinds: tuple[str, ...] = FAULT_KINDS
    stall_s: float = 6.0  # longer than the clients' timeout in the tests
    max_per_key: int | None = None
    #: Seconds a 429 or 503 asks the client to wait (its ``Retry-After`` header).
    retry_after_s: int = 0
    #: Seconds each forwarded request waits before it goes upstream (a slow server).
    delay_s: float = 0.0

    def decide(self, key: str, n: int, consecutive: int, faulted: int = 0) -> str | None:
        if consecutive >= self.max_consecutive or not self.kinds:
            return None
        if self.max_per_key is not None and faulted >= self.max_per_key:
            return None
        rng = random.Random(f"{self.seed}|{key}|{n}")
        if rng.random() >= self.rate:
            return None
        return rng.choice(self.kinds)


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = False
    request_queue_size = 128


CONTROL_PATH = "/__pwray_proxy__/stats"


class _ProxyCore:
    """The proxy itself (threads); runs in its own process, see :class:`FaultProxy`.

    ``GET /__pwray_proxy__/stats`` answers ``{"stats": …, "log": …}`` and is never faulted.
    """

    def __init__(self, upstream: str, plan: FaultPlan, name: str, port: int = 0):
        host_port = upstream.split("://", 1)[-1].rstrip("/")
        self.upstream_host, _, up_port = host_port.partition(":")
        if self.upstream_host not in ("127.0.0.1", "localhost"):
            raise ValueError(f"the fault proxy only forwards to loopback, not {upstream}")
        self.upstream_port = int(up_port or 80)
        self.plan = plan
        self.name = name
        self.stats: dict[str, int] = {}
        self.log: list[tuple[str, str]] = []  # (key, outcome) in arrival order
        self.times: list[float] = []  # arrival time (time.time()) of each log entry
        self.in_flight = self.max_in_flight = 0
        self._seen: dict[str, int] = {}
        self._consecutive: dict[str, int] = {}
        self._faulted: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = _ProxyServer((HOST, port), self._handler_class())
        self.port = self._server.server_address[1]
        self.url = f"http://{HOST}:{self.port}"

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def snapshot(self) -> bytes:
        with self._lock:
            return json.dumps({"stats": self.stats, "log": self.log, "times": self.times,
                               "max_in_flight": self.max_in_flight}).encode()

    # -- decisions
    def _decide(self, method: str, path: str, rng_header: str | None, body: bytes) -> str | None:
        key = f"{method} {path} {rng_header or ''} {hashlib.sha1(body).hexdigest()[:12] if body else ''}"
        with self._lock:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            fault = self.plan.decide(key, n, self._consecutive.get(key, 0), self._faulted.get(key, 0))
            self._consecutive[key] = self._consecutive.get(key, 0) + 1 if fault else 0
            if fault:
                self._faulted[key] = self._faulted.get(key, 0) + 1
            outcome = fault or "ok"
            self.stats[outcome] = self.stats.get(outcome, 0) + 1
            self.log.append((key, outcome))
            self.times.append(time.time())
        if fault:
            log.debug("%s: %s → %s", self.name, key, fault)
        return fault

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] = self.stats.get(what, 0) + 1

    # -- the handler
    def _handler_class(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # idle keep-alive connections end by themselves

            def finish(self):
                with contextlib.suppress(OSError):  # the socket may have been reset on purpose
                    super().finish()

            def log_message(self, fmt, *args):  # quiet: the stats tell the story
                log.debug("%s: " + fmt, proxy.name, *args)

            def _proxy(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if self.path == CONTROL_PATH:
                    msg = proxy.snapshot()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    return
                with proxy._lock:
                    proxy.in_flight += 1
                    proxy.max_in_flight = max(proxy.max_in_flight, proxy.in_flight)
                try:
                    self._answer(body)
                finally:
                    with proxy._lock:
                        proxy.in_flight -= 1

            def _answer(self, body: bytes):
                fault = proxy._decide(self.command, self.path, self.headers.get("Range"), body)
                if fault == "drop":  # hang up without an answer: "empty reply from server"
                    self.close_connection = True
                    return
                if fault == "reset":  # abort the connection: "connection reset by peer"
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.connection.close()  # before socketserver's shutdown(SHUT_WR), which would send a FIN
                    self.close_connection = True
                    return
                if fault == "stall":  # no answer until the client gives up (or stall_s passes)
                    if self._client_hung_up(proxy.plan.stall_s):
                        proxy._count("stall_abandoned")  # the client's timeout fired first
                    self.close_connection = True
                    return
                if fault in ("429", "500", "503"):
                    msg = json.dumps({"code": fault, "description": "injected by the pw-ray fault proxy"}).encode()
                    self.send_response(int(fault))
                    if fault in ("429", "503"):
                        self.send_header("Retry-After", str(proxy.plan.retry_after_s))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(msg)
                    return
                if proxy.plan.delay_s:
                    time.sleep(proxy.plan.delay_s)
                self._forward(body)

            def _client_hung_up(self, wait_s: float) -> bool:
                deadline = time.monotonic() + wait_s
                while not proxy._stop.is_set() and time.monotonic() < deadline:
                    ready, _, _ = select.select([self.connection], [], [], 0.05)
                    if ready:
                        try:
                            return not self.connection.recv(1, socket.MSG_PEEK)
                        except OSError:
                            return True
                return False

            def _forward(self, body: bytes):
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                if body:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    self.send_response(resp.status, resp.reason)
                    for k, v in resp.getheaders():
                        if k.lower() not in _HOP_BY_HOP and k.lower() not in ("server", "date"):
                            self.send_header(k, v)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", resp.getheader("Content-Length", "0"))
                    else:
                        self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(data)
                except (OSError, http.client.HTTPException) as err:
                    log.warning("%s: upstream error for %s %s: %s", proxy.name, self.command, self.path, err)
                    msg = f"upstream error: {err}".encode()
                    self.send_response(502)
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _proxy

        return Handler


class FaultProxy(_Server):
    """A reverse proxy on 127.0.0.1 in front of one upstream, injecting faults from a :class:`FaultPlan`.

    It runs in a child process (``python -m tests.servers proxy …``): GDAL holds the GIL in
    some calls (e.g. while listing a directory over /vsicurl/), which would deadlock a proxy
    thread inside the process that reads through it. Forwarded requests keep their ``Host``
    header, so a STAC API behind it builds its links with the proxy's address. ``stats``
    counts each fault kind, ``"ok"`` (forwarded) and ``"stall_abandoned"`` (the client hung up
    during a stall); ``log`` lists ``(request key, outcome)`` in arrival order.
    """

    def __init__(self, upstream: str, plan: FaultPlan | None = None, name: str = "proxy",
                 startup_timeout_s: float = 20.0):
        self.plan = plan or FaultPlan()
        self.name = name
        self.tmp = Path(tempfile.mkdtemp(prefix="pwray-proxy-"))
        try:
            self.proc, self.port = _start_on_free_port(
                lambda port: _Process(f"fault proxy {name}", [
                    sys.executable, "-m", "tests.servers", "proxy", "--upstream", upstream, "--port", str(port),
                    "--name", name, "--plan", json.dumps(dataclasses.asdict(self.plan))],
                    self.tmp / "proxy.log", cwd=REPO_ROOT),
                lambda port: _http_ok(f"http://{HOST}:{port}{CONTROL_PATH}"), startup_timeout_s, "answering")
            self.url = f"http://{HOST}:{self.port}"
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        self._final: dict | None = None
        log.info("fault proxy %s at %s → %s (plan %s)", name, self.url, upstream, self.plan)

    def _snapshot(self) -> dict:
        if self._final is not None:
            return self._final
        with urllib.request.urlopen(self.url + CONTROL_PATH, timeout=10) as r:
            return json.loads(r.read())

    @property
    def stats(self) -> dict[str, int]:
        return self._snapshot()["stats"]

    @property
    def log(self) -> list[tuple[str, str]]:
        return [tuple(x) for x in self._snapshot()["log"]]

    @property
    def times(self) -> list[float]:
        """Arrival time (``time.time()``) of each entry of :attr:`log`."""
        return list(self._snapshot()["times"])

    @property
    def max_in_flight(self) -> int:
        """Most requests the proxy was answering at once (control requests not counted)."""
        return int(self._snapshot()["max_in_flight"])

    def requests(self, method: str = "POST", path: str = "/search") -> int:
        """Requests that reached the proxy with this method and path (answered or faulted)."""
        return sum(1 for key, _ in self.log if key.split(" ")[:2] == [method, path])

    def faults(self) -> int:
        """Requests answered with a fault (``stall_abandoned`` is a kind of ``stall``, not counted)."""
        return sum(v for k, v in self.stats.items() if k in FAULT_KINDS)

    stop_timeout_s = 10.0

    def stop(self) -> None:
        running = self.proc is not None
        if running:
            with contextlib.suppress(Exception):
                self._final = self._snapshot()  # keep the numbers readable after the stop
        super().stop()
        if running:
            log.info("fault proxy %s stopped: %s", self.name, dict(sorted((self._final or {}).get("stats", {}).items())))


# --------------------------------------------------------------------------- the whole stack

@dataclass
class StacStack:
    """A running STAC API + COG server over one synthetic archive (maybe behind fault proxies)."""

    api_url: str                 # what clients open (the proxy's URL when faulty)
    cog_url: str                 # prefix of the loaded items' asset hrefs
    collection: str
    items: list[dict]            # the sentinel-2-l2a items as loaded (HTTP hrefs)
    archive_root: Path
    api_proxy: FaultProxy | None = None
    cog_proxy: FaultProxy | None = None
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)
    landcover_collection: str = ""
    landcover_items: list[dict] = field(default_factory=list)  # synthetic-landcover as loaded (HTTP hrefs)

    @property
    def proxies(self) -> list[FaultProxy]:
        return [p for p in (self.api_proxy, self.cog_proxy) if p is not None]

    def fault_stats(self) -> dict[str, dict[str, int]]:
        return {p.name: dict(p.stats) for p in self.proxies}

    def stop(self) -> None:
        self._stack.close()


@contextlib.contextmanager
def stac_stack(info, pg: Postgres, cog: CogServer, dbname: str, plan: FaultPlan | None = None,
               api_plan: FaultPlan | None = None, cog_plan: FaultPlan | None = None) -> Iterator[StacStack]:
    """A pgstac database ``dbname`` loaded with the archive, its API server, and optional fault proxies.

    With ``plan`` (or ``api_plan``/``cog_plan``) the API and the COG server each get a
    :class:`FaultProxy`, and the items' hrefs point at the COG proxy.
    """
    from pw_ray.synthetic import LC_COLLECTION, S2_COLLECTION

    api_plan = api_plan or plan
    cog_plan = cog_plan or plan
    with contextlib.ExitStack() as stack:
        cog_proxy = None
        if cog_plan is not None:
            cog_proxy = stack.enter_context(FaultProxy(cog.url, cog_plan, name=f"{dbname}-cogs"))
        cog_url = cog_proxy.url if cog_proxy else cog.url
        dsn = create_pgstac_db(pg, dbname)
        loaded = load_archive(dsn, info, cog_url)
        api = stack.enter_context(StacApiServer(pg, dbname))
        api_proxy = None
        if api_plan is not None:
            api_proxy = stack.enter_context(FaultProxy(api.url, api_plan, name=f"{dbname}-api"))
        st = StacStack(api_proxy.url if api_proxy else api.url, cog_url, S2_COLLECTION, loaded[S2_COLLECTION],
                       Path(info.root), api_proxy, cog_proxy, stack.pop_all(),
                       landcover_collection=LC_COLLECTION, landcover_items=loaded[LC_COLLECTION])
        try:
            yield st
        finally:
            st.stop()


__all__ = [
    "APT_COMMAND", "APT_PACKAGES", "CogServer", "FaultPlan", "FaultProxy", "Postgres", "ServerError", "StacApiServer",
    "StacStack", "create_pgstac_db", "free_port", "load_archive", "missing", "stac_stack",
]


# --------------------------------------------------------------------------- child processes

def _exit_with_parent() -> None:
    """End this child process when the test process that started it is gone (e.g. SIGKILLed)."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="pwray-parent-watch", daemon=True).start()


def _serve_proxy(args) -> None:
    plan = FaultPlan(**{**json.loads(args.plan), "kinds": tuple(json.loads(args.plan)["kinds"])})
    core = _ProxyCore(args.upstream, plan, args.name, port=args.port)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # nothing to flush: the parent read the stats
    core.serve_forever()


def _serve_static(args) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles  # Range support since starlette 0.39

    app = Starlette(routes=[Mount("/", StaticFiles(directory=args.root))])
    uvicorn.run(app, host=HOST, port=args.port, log_level="warning", access_log=False, lifespan="off")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.servers", description="pw-ray test servers (loopback)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    px = sub.add_parser("proxy", help="fault-injecting reverse proxy")
    px.add_argument("--upstream", required=True)
    px.add_argument("--port", type=int, required=True)
    px.add_argument("--name", default="proxy")
    px.add_argument("--plan", required=True, help="FaultPlan as JSON")
    st = sub.add_parser("static", help="static files with Range (starlette)")
    st.add_argument("--root", required=True)
    st.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    _exit_with_parent()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    {"proxy": _serve_proxy, "static": _serve_static}[args.cmd](args)


if __name__ == "__main__":
    main()
