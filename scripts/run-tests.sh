#!/usr/bin/env bash
# The test command (README): the whole suite, widget tests on a virtual X screen.
set -euo pipefail
cd "$(dirname "$0")/.."
export QT_QPA_PLATFORM=xcb OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -m pytest -p xvfb --timeout=600 "$@"
