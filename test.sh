#!/usr/bin/env bash
# Runs the whole test suite; creates .venv and installs requirements.txt when needed.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/venv.sh
exec .venv/bin/python -m pytest "$@"
