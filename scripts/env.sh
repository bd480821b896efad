# Sourced by demo.sh and test.sh: a venv with this package, Axolotl and a torch that fits.
#
# DSKD_AXOLOTL picks the Axolotl release: 0.19 (Python 3.11), 0.20 or 0.21 (Python 3.12).
# Unset, it is the newest release that `python3` allows. Each release gets its own venv
# (.venv-axolotl-X.Y) with the torch it pins:
#   0.19: torch 2.13.0, the CPU build (pip takes it from this machine's disk);
#   0.20: torch 2.14.0, 0.21: torch 2.14.1: PyPI's builds for Python 3.12 are CUDA builds
#         (about 4 GB with their nvidia wheels); they run on the CPU as well.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export AXOLOTL_DO_NOT_TRACK=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

_python_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }

# The first interpreter of this minor version: on PATH, else one that pyenv installed.
_find_python() {
  local candidate
  for candidate in "python$1" "$(pyenv root 2>/dev/null || echo /nonexistent)/versions/$1".*/bin/"python$1"; do
    if [ "$(_python_version "$candidate")" = "$1" ]; then
      command -v "$candidate"
      return
    fi
  done
  echo "error: DSKD_AXOLOTL=$DSKD_AXOLOTL needs Python $1, which is not installed" >&2
  return 1
}

if [ -z "${DSKD_AXOLOTL:-}" ]; then
  case "$(_python_version python3)" in
    3.11) DSKD_AXOLOTL=0.19 ;;
    3.12) DSKD_AXOLOTL=0.21 ;;
    *) echo "error: python3 is $(_python_version python3); axolotl-dskd needs Python 3.11 or 3.12" >&2; exit 1 ;;
  esac
fi
case "$DSKD_AXOLOTL" in
  0.19) python_minor=3.11 torch_pin=2.13.0 axolotl_pin="axolotl==0.19.*" deepspeed_pin="deepspeed>=0.18.6,<0.19" ;;
  0.20) python_minor=3.12 torch_pin=2.14.0 axolotl_pin="axolotl==0.20.*" deepspeed_pin="deepspeed>=0.18.6,<0.20" ;;
  0.21) python_minor=3.12 torch_pin=2.14.1 axolotl_pin="axolotl==0.21.*" deepspeed_pin="deepspeed>=0.18.6,<0.20" ;;
  *) echo "error: DSKD_AXOLOTL=$DSKD_AXOLOTL; use 0.19, 0.20 or 0.21" >&2; exit 1 ;;
esac
export DSKD_AXOLOTL DSKD_TORCH_PIN="torch==$torch_pin" DSKD_DEEPSPEED_PIN="$deepspeed_pin"

venv=".venv-axolotl-$DSKD_AXOLOTL"
if [ ! -x "$venv/bin/python" ]; then
  "$(_find_python "$python_minor")" -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
# torch first and pinned, so that Axolotl's range does not pull another build
python -m pip install --quiet --disable-pip-version-check "$DSKD_TORCH_PIN"
# under a lock: the editable install writes axolotl_dskd.egg-info into this checkout, and CI
# builds two releases' venvs at once
flock .install.lock python -m pip install --quiet --disable-pip-version-check -c <(echo "$DSKD_TORCH_PIN") \
  "$axolotl_pin" -e ".[${DSKD_EXTRAS:-demo}]"
