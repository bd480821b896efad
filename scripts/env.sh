# Sourced by demo.sh and test.sh: a venv in .venv with the CPU build of torch and this package.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
# torch first, pinned to the CPU build on disk, so axolotl's range does not pull a CUDA build
python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
python -m pip install --quiet --disable-pip-version-check -c <(echo "torch==2.13.0") -e ".[${DSKD_EXTRAS:-demo}]"
