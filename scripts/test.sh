#!/usr/bin/env bash
# The test command: set up (if needed), then the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
