#!/usr/bin/env bash
# Benchmarks (see BENCHMARKS.md). `make bench` runs direct vs modelmux; BENCH_PEERS=1 adds
# nginx (Debian's package) and LiteLLM (PyPI, pinned; installed into target/bench-peers).
set -euo pipefail
cd "$(dirname "$0")/.."
LITELLM_VERSION=${LITELLM_VERSION:-1.100.5}   # never 1.107.0 (compromised); newer ones need a certifi the registry lacks
if [ "${BENCH_PEERS:-0}" = 1 ]; then
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { apt-get update -qq && apt-get install -y -qq nginx; }
  if [ ! -x target/bench-peers/venv/bin/litellm ]; then
    python3 -m venv target/bench-peers/venv
    target/bench-peers/venv/bin/pip install -q "litellm[proxy]==${LITELLM_VERSION}"
  fi
fi
ulimit -n 65536 2>/dev/null || true
exec python3 scripts/bench.py
