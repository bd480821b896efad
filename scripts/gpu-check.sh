#!/usr/bin/env bash
# The one prepared GPU call: on a lent GPU machine (no network), with the wheelhouse and the
# kit carried as ignored paths:
#   bash scripts/offline-wheelhouse.sh outputs/wheelhouse && python -m benchmarks.gpu_kit pack outputs/gpu_kit
#   device run: command "bash scripts/gpu-check.sh", carry ["outputs/wheelhouse", "outputs/gpu_kit"]
# What comes back from $OUT: gpu_record.json (rewritten after each check) and gpu_check.log.
set -uo pipefail
out="${OUT:-outputs/gpu_check_out}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/dskd-site \
  outputs/wheelhouse/*.whl >"$out/install.log" 2>&1 || { tail -n 20 "$out/install.log"; exit 1; }
export PYTHONPATH="/tmp/dskd-site:$PWD" PATH="/tmp/dskd-site/bin:$PATH" PYTHONUNBUFFERED=1
export AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu_check.log"
python3 -m benchmarks.gpu_check --kit outputs/gpu_kit --out /tmp/gpu_check --record "$out/gpu_record.json" \
  "$@" 2>&1 | tee -a "$out/gpu_check.log"
