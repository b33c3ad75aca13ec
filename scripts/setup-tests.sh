#!/usr/bin/env bash
# The install step of command 2 (README): what the tests need, nothing run. System packages
# through apt (sudo only when not root, skipped when already installed): PostgreSQL 15 + PostGIS
# for a real STAC API (pgstac), nginx-light serving COGs with Range requests, headless Chromium
# for the report. Then .venv with pw-ray[dev] at the tested versions (constraints.txt).
# Idempotent: a second call installs nothing when nothing changed. Command 2 then runs
# `.venv/bin/python -m pytest`; `.ci/run` runs exactly command 2.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

ensure_debs postgresql-15 postgresql-15-postgis-3 nginx-light chromium
ensure_venv "[dev]"
