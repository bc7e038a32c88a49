#!/usr/bin/env bash
# The test command: set up (if needed), then the whole suite on CPU.
# Two pytest workers by default (DURIAN_TEST_WORKERS=0 for one process): the end-to-end tests wait on
# process start-ups much of the time, so two share a 2-core machine well. A worker takes whole modules.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/python -m pytest -n "${DURIAN_TEST_WORKERS:-2}" --dist loadscope "$@"
