#!/usr/bin/env bash
# Quick start: set up, then serve the default avatar on http://localhost:8080.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" server.py "$@"
