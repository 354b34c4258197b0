#!/usr/bin/env bash
# The demo: modelmux with two mock-vllm models (no GPU needed). Starts it, waits for
# /health, shows a routed request, an OCI /predict call, a stream and the engines' metrics,
# then stops it with SIGTERM and shows its log. On a terminal it keeps serving (status page
# at http://127.0.0.1:$PORT/) and follows its log until Ctrl-C, which stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=${PROFILE:-release}
PORT=${PORT:-8080}
BIN=${BIN:-target/$PROFILE}
[ -x "$BIN/modelmux" ] && [ -x "$BIN/mock-vllm" ] || { echo "build first: make build" >&2; exit 1; }
BIN=$(cd "$BIN" && pwd)

root=$(mktemp -d)
log="$root/modelmux.log"
mkdir -p "$root/chat-model" "$root/embed-model"
cleanup() {
  if [ -n "${pid:-}" ] && kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; wait "$pid" || true; fi
  rm -rf "$root"
}
trap cleanup EXIT

export PORT MODELMUX_GPUS=none MODELMUX_MODEL_ROOT="$root"
export MODELMUX_ENGINE_CMD="$BIN/mock-vllm"
export MULTI_MODEL_CONFIG='{"models": [
  {"model_path": "chat-model", "params": "--served-model-name chat --max-model-len 4096",
   "env": {"MOCK_STREAM_DELAY_MS": "100"}},
  {"model_path": "embed-model", "model_task": "text_embedding", "params": "--served-model-name embed"}
]}'

echo "== the launch plan (modelmux plan)"
"$BIN/modelmux" plan 2>/dev/null

echo; echo "== modelmux serve on port $PORT (its log is shown after the requests)"
# Its own session: a Ctrl-C at the terminal reaches this script only, which then sends
# modelmux one SIGTERM (two signals would mean "kill at once").
setsid "$BIN/modelmux" 2>"$log" &
pid=$!
for _ in $(seq 1 100); do
  if curl -fsS --max-time 2 "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then break; fi
  kill -0 "$pid" 2>/dev/null || { echo "modelmux exited:" >&2; cat "$log" >&2; exit 1; }
  sleep 0.1
done
# Prints a command exactly as it can be pasted, then runs it.
show() { echo; echo "\$ $1"; eval "$1"; echo; }
url="http://127.0.0.1:$PORT"
show "curl -sS $url/health"
show "curl -sS $url/v1/chat/completions -H 'content-type: application/json' -d '{\"model\": \"chat\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'"
show "curl -sS $url/predict -H 'content-type: application/json' -d '{\"model\": \"embed\", \"input\": \"Hello\"}'"
echo; echo "(one event every 100 ms)"
show "curl -sS -N $url/v1/completions -H 'content-type: application/json' -d '{\"model\": \"chat\", \"prompt\": \"Hello\", \"stream\": true, \"mock_chunks\": 5}'"
echo "(the engines' own metrics, labelled with their model, in modelmux's scrape)"
show "curl -sS $url/metrics | grep -E '^vllm:(num_requests_waiting|generation_tokens_total)'"

if ! { [ -t 0 ] && [ -t 1 ]; }; then
  echo; echo "== stopping (SIGTERM)"
  kill -TERM "$pid"; status=0; wait "$pid" || status=$?
  pid=
  echo "== modelmux's log"; cat "$log"
  echo "modelmux exited with status $status"
  exit "$status"
fi

# On a terminal: keep serving and follow the log until Ctrl-C. Job control puts the log
# follower in a process group of its own that owns the terminal, so that Ctrl-C reaches it
# alone (not make, not this script); the script then stops modelmux with one SIGTERM. The
# follower also ends by itself if modelmux exits. (This must stay at the top level: bash
# does not hand the terminal over to a job started inside an `if` block.)
echo "modelmux is serving on $url (models: chat, embed)."
echo "Status page: open $url/ in a browser. Its log follows; Ctrl-C to stop."
echo
trap ':' INT
set -m
tail -n +1 --pid="$pid" -f "$log" || true
set +m
trap - INT
shown=$(wc -l <"$log")
kill -TERM "$pid" 2>/dev/null || true
status=0; wait "$pid" || status=$?
pid=
tail -n +$((shown + 1)) "$log"
echo; echo "modelmux exited with status $status"
exit "$status"
