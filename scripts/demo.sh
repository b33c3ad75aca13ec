#!/usr/bin/env bash
# Command 1: create .venv (Python 3.11) if missing, install pw-ray with the tested versions
# (constraints.txt), and run every stage on the embedded synthetic archive: `pw-ray demo`.
# Extra arguments go to `pw-ray demo` (e.g. --out DIR). Rerun it to resume; a second call
# reuses .venv and skips the install when pyproject.toml and constraints.txt are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup-lib.sh

ensure_venv ""
. "$VENV/bin/activate"
exec pw-ray demo "$@"
