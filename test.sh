#!/usr/bin/env bash
# Set up (setup.sh) and run the whole test suite on the CPU. Extra arguments go to pytest
# (bash test.sh -x -k resume). CI runs this (.ci/run).
#   TEST_WORKERS=N   test processes (pytest-xdist, each test file whole in one of them; default 2, CI's cores:
#                    about 8 minutes there instead of 13 in one process); 0 runs the suite in this process
set -euo pipefail
cd "$(dirname "$0")"
source ./setup.sh
workers="${TEST_WORKERS:-2}"
if [ "$workers" = 0 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
    exec python -m pytest -q tests "$@"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # one thread a worker: the workers share the cores
exec python -m pytest -q -n "$workers" --dist loadfile tests "$@"
