"""Reports written once per test session from the fabricated inputs (tests/analyze/fabricated.py)."""

import pytest

from pw_ray.analyze import report as R
from tests.analyze.fabricated import make_inputs


@pytest.fixture(scope="session")
def full_report(tmp_path_factory):
    """index.html of a report with every input, measured sets only."""
    out = tmp_path_factory.mktemp("report")
    return R.write_report(out / "report", **make_inputs(out))


@pytest.fixture(scope="session")
def external_report(tmp_path_factory):
    """index.html of a report with every input and the two external sets of EXTERNAL_CSV."""
    out = tmp_path_factory.mktemp("report-ext")
    return R.write_report(out / "report", **make_inputs(out, external=True))
