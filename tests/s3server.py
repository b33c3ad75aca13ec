"""A real S3 API on loopback for the tests: moto's standalone server (``moto[server]``).

:class:`S3Server` starts ``python -m moto.server`` on ``127.0.0.1`` and a free port, in its own
temporary folder, and stops exactly the process it started (SIGTERM by PID, SIGKILL after a
timeout), like the servers in ``tests/servers.py``. Its :meth:`S3Server.env` is what a client
needs to use it through the standard AWS settings (``AWS_ENDPOINT_URL``, region, credentials):
the same settings pw-ray reads in production (``pw_ray/storage.py``). The credentials are made up
per server; tests assert that the secret key never shows up in any output.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

from tests.servers import HOST, _http_ok, _Process, _Server, _start_on_free_port

log = logging.getLogger(__name__)

REGION = "us-east-1"


def _moto_installed() -> bool:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


class S3Server(_Server):
    """moto's S3-compatible server on 127.0.0.1 (in-memory: buckets go when it stops)."""

    def __init__(self, startup_timeout_s: float = 60.0):
        if not _moto_installed():
            pytest.skip("moto's server is not installed; install the dev extra: pip install -e '.[dev]'")
        self.tmp = Path(tempfile.mkdtemp(prefix="pwray-s3-"))
        # Made-up credentials, fresh per server: moto accepts any, the secret doubles as a canary in logs.
        self.access_key = "PWRAYTEST" + secrets.token_hex(6).upper()
        self.secret_key = "pwray-secret-" + secrets.token_hex(16)
        try:
            self.proc, self.port = _start_on_free_port(
                lambda port: _Process("moto s3", [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(port)],
                                      self.tmp / "moto.log", cwd=self.tmp),
                lambda port: _http_ok(f"http://{HOST}:{port}/moto-api/data.json"), startup_timeout_s, "answering")
            self.url = f"http://{HOST}:{self.port}"
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        log.info("moto S3 server up at %s", self.url)

    def env(self) -> dict[str, str]:
        """Environment variables that point an AWS client (pyarrow, boto3, the aws CLI) at this server."""
        return {"AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION,
                "AWS_EC2_METADATA_DISABLED": "true"}

    def create_bucket(self, name: str) -> str:
        """Create a bucket; returns ``s3://<name>``."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"{HOST}:{self.port}", scheme="http", region=REGION,
                               access_key=self.access_key, secret_key=self.secret_key, allow_bucket_creation=True)
        fs.create_dir(name)
        return f"s3://{name}"
