"""The two commands of the README (scripts/demo.sh; scripts/setup-tests.sh then pytest), .ci/run and constraints.txt.

The scripts run here against stand-ins on PATH (``dpkg-query``, ``sudo``, ``apt-get``, ``id``)
and a stand-in ``.venv/bin/python`` that records pip calls, so the tests check what the scripts
decide (what to install, when to skip) without installing anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
TEST_DEBS = ["postgresql-15", "postgresql-15-postgis-3", "nginx-light", "chromium"]


def _exe(path: Path, text: str) -> None:
    path.write_text("#!/usr/bin/env bash\n" + text)
    path.chmod(0o755)


@pytest.fixture
def checkout(tmp_path):
    """A copy of what the scripts read, a stand-in .venv, and stand-in system tools on PATH."""
    work = tmp_path / "repo"
    (work / "scripts").mkdir(parents=True)
    for name in ("pyproject.toml", "constraints.txt"):
        shutil.copy(REPO / name, work / name)
    for name in ("setup-lib.sh", "setup-tests.sh", "demo.sh"):
        shutil.copy(REPO / "scripts" / name, work / "scripts" / name)
    venv_bin = work / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    log = tmp_path / "calls.log"
    # python -I -c '...pw_ray...' → "installed from this checkout"; anything else is logged.
    _exe(venv_bin / "python", f'if [[ $1 == -I ]]; then echo "{work}"; else echo "python $*" >> "{log}"; fi\n')
    (venv_bin / "activate").write_text(f'export PATH="{venv_bin}:$PATH"\n')
    _exe(venv_bin / "pw-ray", f'echo "pw-ray $*" >> "{log}"\n')
    tools = tmp_path / "bin"
    tools.mkdir()
    installed = tmp_path / "installed"
    installed.write_text("\n".join(TEST_DEBS) + "\n")
    _exe(tools / "dpkg-query", f'grep -qx "${{@: -1}}" "{installed}" && printf "install ok installed"; true\n')
    _exe(tools / "id", "echo 1000\n")  # not root: apt must go through sudo
    _exe(tools / "sudo", f'echo "sudo $*" >> "{log}"\n')
    _exe(tools / "apt-get", f'echo "apt-get (without sudo) $*" >> "{log}"\n')
    env = {"PATH": f"{tools}:/usr/bin:/bin", "HOME": str(tmp_path)}
    return work, log, installed, env


def _run(work: Path, env: dict, script: str, *args: str) -> list[str]:
    log = work.parent / "calls.log"
    log.write_text("")
    subprocess.run(["bash", f"scripts/{script}", *args], cwd=work, env=env, check=True, capture_output=True,
                   text=True)
    return log.read_text().splitlines()


def _readme_command(number: int) -> str:
    """The README's command ``number`` of "The two commands", without its comment."""
    lines = [ln for ln in (REPO / "README.md").read_text().splitlines() if f"# {number}. " in ln]
    assert len(lines) == 1, lines
    return lines[0].split(f"# {number}. ")[0].strip()


def test_ci_runs_exactly_the_readme_test_command():
    lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
             if ln.strip() and not ln.lstrip().startswith("#")]
    assert _readme_command(2) == "bash scripts/setup-tests.sh && .venv/bin/python -m pytest"
    assert lines == ["set -euo pipefail", 'cd "$(dirname "$0")/.."', _readme_command(2)]
    assert _readme_command(1) == "bash scripts/demo.sh"


def test_test_setup_installs_with_constraints_then_reuses(checkout):
    work, _, _, env = checkout
    assert _run(work, env, "setup-tests.sh") == ["python -m pip install -q -c constraints.txt -e .[dev]"]
    assert _run(work, env, "setup-tests.sh") == []  # nothing changed: no install, no apt
    (work / "constraints.txt").write_text((work / "constraints.txt").read_text() + "# changed\n")
    assert _run(work, env, "setup-tests.sh") == ["python -m pip install -q -c constraints.txt -e .[dev]"]


def test_demo_script_reuses_a_test_install_and_passes_its_arguments(checkout):
    work, _, _, env = checkout
    _run(work, env, "setup-tests.sh")
    assert _run(work, env, "demo.sh", "--out", "d") == ["pw-ray demo --out d"]  # [dev] includes the base


def test_demo_script_installs_the_project_without_dev_extras(checkout):
    work, _, _, env = checkout
    assert _run(work, env, "demo.sh") == ["python -m pip install -q -c constraints.txt -e .", "pw-ray demo"]
    assert _run(work, env, "demo.sh") == ["pw-ray demo"]


def test_apt_runs_through_sudo_only_for_missing_packages(checkout):
    work, _, installed, env = checkout
    installed.write_text("postgresql-15\nchromium\n")
    calls = _run(work, env, "setup-tests.sh")
    apt = [c for c in calls if "apt-get" in c]
    assert apt == ["sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q",
                   "sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15-postgis-3 nginx-light"]


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt line {line!r} is not name==version"
            pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_every_dependency_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = _pins()
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]]
    unpinned = [str(r) for r in reqs if canonicalize_name(r.name) not in pins]
    assert unpinned == [], "run scripts/freeze-constraints.sh after a green command 2 of the README (docs/development.md)"
    outside = [f"{r} vs {pins[canonicalize_name(r.name)]}" for r in reqs
               if not r.specifier.contains(pins[canonicalize_name(r.name)], prereleases=True)]
    assert outside == []
    assert "pw-ray" not in pins
    assert (pins["torch"], pins["torchvision"], pins["ray"]) == ("2.14.1", "0.29.1", "2.60.0")
    assert not any(re.search(r"\s@\s", v) for v in pins.values())
