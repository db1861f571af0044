#!/usr/bin/env bash
# Set up (setup.sh) and run the whole test suite on the CPU. Extra arguments go to pytest
# (bash test.sh -x -k resume). CI runs this (.ci/run).
set -euo pipefail
cd "$(dirname "$0")"
source ./setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec python -m pytest -q tests "$@"
