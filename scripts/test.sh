#!/usr/bin/env bash
# Quick start 2/2: install the test dependencies and run the whole test suite (CPU, offline).
DSKD_EXTRAS=test source "$(dirname "$0")/env.sh"
# DeepSpeed (Axolotl's pinned range) for the ZeRO-2 test: an sdist whose build imports torch,
# so it builds against the venv's torch; its ops compile on first use only.
DS_BUILD_OPS=0 python -m pip install --quiet --disable-pip-version-check --no-build-isolation \
  -c <(echo "torch==2.13.0") "deepspeed>=0.18.6,<0.19"
ruff check .
ruff format --check .
python -m pytest "$@"
