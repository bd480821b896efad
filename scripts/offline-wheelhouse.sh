#!/usr/bin/env bash
# Build OUT_DIR: the wheels an air-gapped GPU machine (Python 3.12, x86-64, CUDA 13, with torch,
# transformers 5.17.0, peft 0.21.0 and accelerate 1.15.0 preinstalled) needs to run
# `axolotl train` with this plugin. Pinned and hash-checked by scripts/offline-wheelhouse.lock.
#
#   bash scripts/offline-wheelhouse.sh OUT_DIR
#
# There, with no network:
#   pip install --no-index --no-deps --target /opt/dskd-site OUT_DIR/*.whl
#   export PYTHONPATH=/opt/dskd-site AXOLOTL_DO_NOT_TRACK=1 WANDB_MODE=disabled HF_HUB_OFFLINE=1
set -euo pipefail
out="${1:?usage: bash scripts/offline-wheelhouse.sh OUT_DIR}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
lock="$repo/scripts/offline-wheelhouse.lock"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
downloads="$out/.downloads"
mkdir -p "$downloads"

# 1. every artifact of the lock, for CPython 3.12 on manylinux x86-64, without dependencies
platforms=(--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_24_x86_64
  --platform manylinux_2_28_x86_64 --platform any)
grep -v '^#' "$lock" | while read -r file sha; do
  [ -n "$file" ] || continue
  if [ ! -f "$downloads/$file" ]; then
    case "$file" in
      *.tar.gz) requirement="${file%.tar.gz}"; python3 -m pip download -q --disable-pip-version-check --no-deps \
        --no-binary=:all: -d "$downloads" "${requirement%-*}==${requirement##*-}" ;;
      *) name="${file%%-*}"; rest="${file#*-}"; python3 -m pip download -q --disable-pip-version-check --no-deps \
        --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 "${platforms[@]}" \
        -d "$downloads" "${name//_/-}==${rest%%-*}" ;;
    esac
  fi
  echo "$sha  $downloads/$file" | sha256sum --check --quiet \
    || { echo "offline-wheelhouse: $file does not match its pinned sha256" >&2; exit 1; }
done

# 2. sdists into wheels, and this plugin itself, with a Python 3.12 that has torch (DeepSpeed's
#    setup imports it; DS_BUILD_OPS=0 compiles nothing, so its wheel is pure Python)
builder="${DSKD_WHEELHOUSE_PYTHON:-}"
if [ -z "$builder" ]; then
  builder="$(DSKD_AXOLOTL=0.21 DSKD_EXTRAS=demo bash -c 'source scripts/env.sh >/dev/null && command -v python')"
fi
find "$out" -maxdepth 1 -name '*.whl' -delete
cp "$downloads"/*.whl "$out"/
for sdist in "$downloads"/*.tar.gz; do
  DS_BUILD_OPS=0 "$builder" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
    -w "$out" "$sdist"
done
"$builder" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation -w "$out" "$repo"

# 3. trimmed: bitsandbytes keeps its CUDA 13 and CPU libraries; wandb (imported by Axolotl's
#    callbacks, disabled by WANDB_MODE) loses its bundled service binaries
python3 "$repo/scripts/wheelhouse_trim.py" "$out"/bitsandbytes-*.whl 'bitsandbytes/libbitsandbytes_cuda1[0-2]*' \
  'bitsandbytes/libbitsandbytes_cuda132*' 'bitsandbytes/libbitsandbytes_rocm*' 'bitsandbytes/libbitsandbytes_xpu*'
python3 "$repo/scripts/wheelhouse_trim.py" "$out"/wandb-*.whl 'wandb/bin/*'

(cd "$out" && sha256sum ./*.whl >SHA256SUMS)
echo "offline-wheelhouse: $(find "$out" -maxdepth 1 -name '*.whl' | wc -l) wheels in $out," \
  "$(du -cb "$out"/*.whl | tail -1 | awk '{printf "%.1f MiB", $1 / 1048576}')"
