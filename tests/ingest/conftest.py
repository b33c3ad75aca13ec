"""Session fixtures: a small synthetic archive served by a real STAC API (pgstac) and nginx.

``stac_api`` and ``flaky_stac_api`` share one PostgreSQL cluster and one COG server; each has
its own pgstac database and stac-fastapi-pgstac process. The flaky one sits behind two fault
proxies (API and COGs) and its items' hrefs point at the COG proxy. See ``tests/servers.py``.
"""

from __future__ import annotations

import os

import pytest

from tests.servers import CogServer, FaultPlan, Postgres, stac_stack

# Short HTTP timeouts in every GDAL of this session (Ray workers included: they inherit the
# environment when the session's Ray starts, after collection), so that a request the fault
# proxy stalls costs seconds, not GDAL's default 30 s. chips.gdal_env lets the environment win
# over its defaults. Only network reads notice it; the rest of the suite reads local files.
os.environ.setdefault("GDAL_HTTP_TIMEOUT", "2")

#: Client timeout of ApiSearch against the flaky API; the proxy stalls for longer.
API_TIMEOUT_S = 2.0
STALL_S = 4.0
# The API sees one search per cell (a handful of requests): a high rate still injects several faults.
API_FAULTS = FaultPlan(seed=7, rate=0.6, max_consecutive=2, stall_s=STALL_S)
COG_FAULTS = FaultPlan(seed=11, rate=0.2, max_consecutive=2, stall_s=STALL_S)


@pytest.fixture(scope="session")
def stac_archive(tmp_path_factory):
    """A small synthetic archive (six scenes of 192 px, one per continent)."""
    from pw_ray.config import SyntheticArchive
    from pw_ray.synthetic import build_archive

    return build_archive(tmp_path_factory.mktemp("stac-archive"),
                         SyntheticArchive(seed=0, scenes_per_region=1, scene_px=192))


@pytest.fixture(scope="session")
def pg_server():
    """PostgreSQL 15 + PostGIS on 127.0.0.1 (skips locally, fails in CI, when not installed)."""
    with Postgres() as pg:
        yield pg


@pytest.fixture(scope="session")
def cog_server(stac_archive):
    """nginx serving the archive folder (HTTP Range) on 127.0.0.1."""
    with CogServer(stac_archive.root) as cog:
        yield cog


@pytest.fixture(scope="session")
def stac_api(stac_archive, pg_server, cog_server):
    """stac-fastapi-pgstac over the archive's items, hrefs on the COG server.

    Yields a :class:`tests.servers.StacStack`: ``api_url``, ``cog_url``, ``items``, ``stop()``.
    """
    with stac_stack(stac_archive, pg_server, cog_server, "pgstac") as stack:
        yield stack


@pytest.fixture(scope="session")
def flaky_stac_api(stac_archive, pg_server, cog_server):
    """The same stack behind fault proxies (429/500/503/stalls/drops/resets on API and COGs)."""
    with stac_stack(stac_archive, pg_server, cog_server, "pgstac_flaky", api_plan=API_FAULTS,
                    cog_plan=COG_FAULTS) as stack:
        yield stack
