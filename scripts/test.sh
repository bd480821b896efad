#!/usr/bin/env bash
# Quick start 2/2: install the test dependencies and run the whole test suite (CPU, offline).
DSKD_EXTRAS=test source "$(dirname "$0")/env.sh"
ruff check .
ruff format --check .
python -m pytest "$@"
