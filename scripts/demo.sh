#!/usr/bin/env bash
# The main job on the embedded default (ephemeral Prefect, local Ray, tiny models): set up if needed, then run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
exec .venv/bin/durian demo "$@"
