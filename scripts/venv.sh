# Sourced by test.sh and start.sh: make .venv and install requirements.txt (and the `mpesa` command) if they changed.
PYTHON=${PYTHON:-python3}
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "Python 3.11 or newer is needed (google-adk requires it); found: $("$PYTHON" --version 2>&1)."
    echo "Install it, or point PYTHON at it: PYTHON=python3.12 $0"
    exit 1
  fi
  echo "Creating .venv with $("$PYTHON" --version)..."
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv
    echo "Could not create a virtual environment. On Debian/Ubuntu: sudo apt-get install python3-venv"
    exit 1
  fi
fi
stamp=.venv/.requirements.sha256
want=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "Installing requirements.txt into .venv (first run takes about a minute)..."
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .   # the `mpesa` command
  echo "$want" > "$stamp"
fi
