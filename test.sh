#!/usr/bin/env bash
# Runs the whole test suite; creates .venv and installs requirements.txt (and Chromium, for the
# dashboard's browser tests) when needed.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
source scripts/chromium.sh
exec .venv/bin/python -m pytest "$@"
