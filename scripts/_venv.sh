# Sourced by scripts/run and scripts/test: makes .venv on first use and installs the toolkit with the
# extras the caller names in $venv_extras (scripts/run: none; scripts/test: test,dev), again when
# pyproject.toml changes. Needs only a Python 3.11+ and the package registry.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "rqkit needs Python 3.11 or newer: set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
extras=${venv_extras:-}
stamp=.venv/.installed${extras:+-${extras//,/-}}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "setting up .venv${extras:+ with the $extras extras} (first run only)..." >&2
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
