# Shared by scripts/start and scripts/test: create .venv and install the project once per
# change of pyproject.toml (a stamp file records what was installed).
ensure_venv() {
  local extras="$1"
  local python="${PYTHON:-python3}"
  if ! "$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
    echo "trading-backend needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 2
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "creating virtualenv in .venv" >&2
    "$python" -m venv .venv
  fi
  local stamp=".venv/.installed$(echo "$extras" | tr -cd 'a-z')-$(sha256sum pyproject.toml | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    echo "installing trading-backend$extras into .venv" >&2
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".$extras"
    touch "$stamp"
  fi
}
