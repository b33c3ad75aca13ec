# Shared by scripts/demo.sh and scripts/setup-tests.sh (sourced, not run): system packages through apt,
# and the project's virtual environment .venv with the tested versions (constraints.txt).
# Both steps are idempotent: what is already there is reused, so a second call is quick.

VENV=.venv
STAMP=$VENV/.pw-ray-installed   # lines "<hash of pyproject.toml + constraints.txt> <extras>"

say() { printf '%s\n' "setup: $*" >&2; }

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

# Install the Debian packages named, unless every one is installed already (no apt-get update then).
ensure_debs() {
  local missing=() p
  if ! command -v dpkg-query >/dev/null 2>&1; then
    say "not a Debian system (no dpkg-query): install these yourself if the tests need them: $*"
    return 0
  fi
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if [[ ${#missing[@]} -eq 0 ]]; then
    say "system packages present: $*"
    return 0
  fi
  say "installing system packages: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
}

# A Python that pyproject.toml accepts (3.11 or 3.12) to build the venv with; $PYTHON overrides.
pick_python() {
  local ok='import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] < (3, 13)))' c
  if [[ -n ${PYTHON:-} ]]; then
    "$PYTHON" -c "$ok" 2>/dev/null && { echo "$PYTHON"; return 0; }
    say "PYTHON=$PYTHON is not Python 3.11 or 3.12 (pyproject.toml: requires-python >=3.11,<3.13)"
    return 1
  fi
  for c in python3.11 python3 python3.12; do
    command -v "$c" >/dev/null 2>&1 && "$c" -c "$ok" 2>/dev/null && { echo "$c"; return 0; }
  done
  say "no Python 3.11 or 3.12 on PATH (pyproject.toml: requires-python >=3.11,<3.13); set PYTHON=/path/to/python3.11"
  return 1
}

# Create .venv when missing and install the project into it, editable, with constraints.txt;
# $1: the extras, e.g. "" or "[dev]". Skipped when pyproject.toml and constraints.txt are
# unchanged since the last install of those extras (or of "[dev]", which includes the base).
ensure_venv() {
  local extras=${1:-} py hash here
  if [[ ! -x $VENV/bin/python ]]; then
    py=$(pick_python)
    if ! "$py" -c 'import ensurepip, venv' 2>/dev/null; then
      ensure_debs python3-venv  # Debian ships venv's pip bootstrap separately
    fi
    say "creating $VENV with $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    rm -rf "$VENV"
    "$py" -m venv "$VENV"
  fi
  hash=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  # -I: ignore PYTHONPATH and the current folder, so only an install into .venv counts.
  here=$("$VENV/bin/python" -I -c 'import os, pw_ray; print(os.path.dirname(os.path.dirname(pw_ray.__file__)))' \
         2>/dev/null || true)
  if [[ $here == "$PWD" && -f $STAMP ]] && grep -qxF -e "$hash $extras" -e "$hash [dev]" "$STAMP"; then
    say "$VENV is up to date (pyproject.toml and constraints.txt unchanged): nothing to install"
    return 0
  fi
  say "installing pw-ray$extras into $VENV with the tested versions (constraints.txt; the first time takes minutes)"
  "$VENV/bin/python" -m pip install -q -c constraints.txt -e ".$extras"
  # A line for this hash and these extras; lines of older hashes go, other extras of this hash stay.
  { grep "^$hash " "$STAMP" 2>/dev/null | grep -vxF "$hash $extras" || true; echo "$hash $extras"; } > "$STAMP.tmp"
  mv "$STAMP.tmp" "$STAMP"
}
