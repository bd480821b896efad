#!/usr/bin/env bash
# Quick start 2/2: install the test dependencies and run the whole test suite (CPU, offline).
# DSKD_AXOLOTL=0.19|0.20|0.21 picks the Axolotl release (see env.sh).
DSKD_EXTRAS=test source "$(dirname "$0")/env.sh"
# DeepSpeed (the chosen Axolotl's range) for the ZeRO tests: an sdist whose build imports
# torch, so it builds against the venv's torch; its ops compile on first use only.
DS_BUILD_OPS=0 python -m pip install --quiet --disable-pip-version-check --no-build-isolation \
  -c <(echo "$DSKD_TORCH_PIN") "$DSKD_DEEPSPEED_PIN"
ruff check .
ruff format --check .
# Two workers (pytest-xdist), one torch thread each: two default-threaded torch processes
# on two cores slow each other down ~10x. Tests sharing a trained run stay on one worker.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -n "${DSKD_TEST_WORKERS:-2}" --dist loadgroup "$@"
