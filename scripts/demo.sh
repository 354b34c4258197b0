#!/usr/bin/env bash
# The demo: modelmux with two mock-vllm models (no GPU needed). Starts it, waits for
# /health, shows a routed request, an OCI /predict call and a stream, then stops it with
# SIGTERM. On a terminal it keeps serving until Ctrl-C so that you can try it yourself.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
PORT=${PORT:-8080}
BIN=target/$PROFILE
[ -x "$BIN/modelmux" ] && [ -x "$BIN/mock-vllm" ] || { echo "build first: make build" >&2; exit 1; }

root=$(mktemp -d)
mkdir -p "$root/chat-model" "$root/embed-model"
cleanup() {
  if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  rm -rf "$root"
}
trap cleanup EXIT

export PORT MODELMUX_GPUS=none MODELMUX_MODEL_ROOT="$root"
export MODELMUX_ENGINE_CMD="$PWD/$BIN/mock-vllm"
export MULTI_MODEL_CONFIG='{"models": [
  {"model_path": "chat-model", "params": "--served-model-name chat --max-model-len 4096",
   "env": {"MOCK_STREAM_DELAY_MS": "100"}},
  {"model_path": "embed-model", "model_task": "text_embedding", "params": "--served-model-name embed"}
]}'

echo "== the launch plan (modelmux plan)"
"$BIN/modelmux" plan 2>/dev/null

echo; echo "== modelmux serve on port $PORT"
"$BIN/modelmux" &
pid=$!
for _ in $(seq 1 100); do
  if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "modelmux exited" >&2; exit 1; }
  sleep 0.1
done
show() { echo; echo "\$ $*"; "$@"; echo; }
show curl -sS "http://127.0.0.1:$PORT/health"
show curl -sS "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "chat", "messages": [{"role": "user", "content": "Hello"}]}'
show curl -sS "http://127.0.0.1:$PORT/predict" -H 'content-type: application/json' -d '{"model": "embed", "input": "Hello"}'
echo; echo "\$ curl -N .../v1/completions -d '{\"model\": \"chat\", \"stream\": true, ...}'   (one event every 100 ms)"
curl -sS -N "http://127.0.0.1:$PORT/v1/completions" -H 'content-type: application/json' \
  -d '{"model": "chat", "prompt": "Hello", "stream": true, "mock_chunks": 5}'

if [ -t 0 ]; then
  echo; echo "modelmux is serving on http://127.0.0.1:$PORT (models: chat, embed). Ctrl-C to stop."
  trap 'kill -TERM "$pid"; wait "$pid"; echo "stopped cleanly"; rm -rf "$root"; exit 0' INT
  wait "$pid"
else
  echo; echo "== stopping (SIGTERM)"
  kill -TERM "$pid"; wait "$pid"; echo "modelmux exited with status $?"
  pid=
fi
