#!/usr/bin/env bash
# Benchmarks (see BENCHMARKS.md). `make bench` measures modelmux against direct calls and its
# peers nginx (2 workers) and HAProxy (Debian's packages, installed here when missing);
# BENCH_PEERS=1 adds LiteLLM (PyPI, pinned; installed into target/bench-peers), BENCH_PEERS=0
# leaves the peers out. BENCH_BASELINE=path/to/modelmux adds another build for A/B runs.
set -euo pipefail
cd "$(dirname "$0")/.."
LITELLM_VERSION=${LITELLM_VERSION:-1.100.5}   # never 1.107.0 (compromised); newer ones need a certifi the registry lacks
if [ "${BENCH_PEERS:-}" != 0 ]; then
  missing=()
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
  command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq "${missing[@]}"
  fi
fi
if [ "${BENCH_PEERS:-}" = 1 ] && [ ! -x target/bench-peers/venv/bin/litellm ]; then
  python3 -m venv target/bench-peers/venv
  target/bench-peers/venv/bin/pip install -q "litellm[proxy]==${LITELLM_VERSION}"
fi
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
exec python3 scripts/bench.py
