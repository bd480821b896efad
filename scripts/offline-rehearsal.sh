#!/usr/bin/env bash
# A CPU rehearsal of the air-gapped GPU install: a Python 3.12 venv standing in for the GPU
# image (scripts/gpu-image.txt: torch 2.11.0, transformers 5.17.0, peft 0.21.0, accelerate
# 1.15.0, ...), the wheelhouse installed exactly as there (--no-index --no-deps --target), and
# the GPU check's first checks (DSKD same vocabulary and across tokenizers, LoRA) run on CPU
# with tiny models over the real tokenizers.
#
#   bash scripts/offline-wheelhouse.sh outputs/wheelhouse
#   bash scripts/offline-rehearsal.sh outputs/wheelhouse outputs/gpu_kit
set -euo pipefail
wheelhouse="$(cd "${1:?usage: offline-rehearsal.sh WHEELHOUSE KIT_DIR}" && pwd)"
kit="${2:?usage: offline-rehearsal.sh WHEELHOUSE KIT_DIR}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
start=$SECONDS
# the kit (real tokenizers) is packed with the project's own venv, which can fetch them
if [ ! -f "$kit/tokenizers.tar.xz" ]; then
  DSKD_AXOLOTL=0.21 bash -c 'source scripts/env.sh && python -m benchmarks.gpu_kit pack "$0"' "$kit"
fi
kit="$(cd "$kit" && pwd)"
image=.venv-gpu-image
if [ ! -x "$image/bin/python" ]; then
  "$(pyenv root 2>/dev/null || echo /nonexistent)/versions/3.12.1/bin/python3.12" -m venv "$image" 2>/dev/null \
    || python3.12 -m venv "$image"
fi
"$image/bin/python" -m pip install -q --disable-pip-version-check -r scripts/gpu-image.txt
site="$image-site"
rm -rf "$site"
"$image/bin/python" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --target "$site" \
  "$wheelhouse"/*.whl
echo "offline-rehearsal: image venv and wheelhouse ready after $((SECONDS - start)) s"
export PYTHONPATH="$repo/$site:$repo" AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2
"$image/bin/python" -m benchmarks.gpu_check --kit "$kit" --out outputs/offline-rehearsal --cpu --scale tiny \
  --steps 2 --only dskd_same,dskd_cross
echo "offline-rehearsal: passed in $((SECONDS - start)) s"
