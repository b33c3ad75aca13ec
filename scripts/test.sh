#!/usr/bin/env bash
# Command 2: install what the tests need and run them. System packages through apt (sudo only
# when not root, skipped when already installed): PostgreSQL 15 + PostGIS for a real STAC API
# (pgstac), nginx-light serving COGs with Range requests, headless Chromium for the report.
# Then .venv with pw-ray[dev] at the tested versions (constraints.txt), then `python -m pytest`
# with any extra arguments (e.g. `bash scripts/test.sh -x tests/test_config.py`). Idempotent:
# a second call installs nothing when nothing changed. `.ci/run` calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

ensure_debs postgresql-15 postgresql-15-postgis-3 nginx-light chromium
ensure_venv "[dev]"
. "$VENV/bin/activate"
exec python -m pytest "$@"
