#!/usr/bin/env python3
"""Time to first token of on-demand models (SPEC §9), on mock-vllm, and modelmux's share.

Cases, through modelmux (release build), one streaming completion each, time from the
request to its first SSE event:
  ready     an always-loaded, ready model (the proxy alone)
  sleeping  an on-demand model with "unload": "sleep", asleep after its idle_unload
  stopped   an on-demand model with "unload": "stop", stopped after its idle_unload
  unloaded  an on-demand model never loaded since modelmux started

and the engine's own share, measured on mock-vllm engines started by this script:
  direct    the first event of a stream straight from a ready engine
  wake      POST /wake_up of a sleeping engine, then a stream straight from it
  start     spawn an engine, poll its /health every 1 ms until 200, then a stream

modelmux's share is the median through modelmux minus the median of the engine's own part
(ready - direct, sleeping - wake, stopped and unloaded - start). The cases take turns, trial by
trial, so that the machine's noise falls on all of them. BENCH_TRIALS (default 30).
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
MODELMUX = os.path.join(BIN, "modelmux")
MOCK = os.path.join(BIN, "mock-vllm")
TRIALS = int(os.environ.get("BENCH_TRIALS", "30"))
IDLE = 0.3
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except OSError:
        return 0, None


def post(port, path, body=b""):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
    )
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1])


def ttft(port, model):
    """Seconds from sending a streaming completion to its first SSE event; then the rest is
    read and the connection closed."""
    body = json.dumps({"model": model, "prompt": "hi", "stream": True, "mock_chunks": 4}).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    t0 = time.perf_counter()
    s.sendall(head + body)
    data = b""
    first = None
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
        if first is None and b"data: " in data:
            first = time.perf_counter() - t0
        if b"[DONE]" in data:
            break
    s.close()
    status = int(data.split(b" ", 2)[1]) if data else 0
    if status != 200 or first is None:
        raise RuntimeError(f"{model}: status {status}: {data[:300]!r}")
    return first


def state(port, name):
    _, h = get_json(port, "/health")
    for m in (h or {}).get("models", []):
        if m["name"] == name:
            return m["state"]
    return None


def wait_state(port, name, want, timeout=30):
    end = time.time() + timeout
    while state(port, name) != want:
        if time.time() > end:
            raise RuntimeError(f"{name} not {want} within {timeout} s")
        time.sleep(0.01)


def spawn_mock(port, name, env=None, args=()):
    e = dict(os.environ, **(env or {}))
    p = subprocess.Popen(
        [MOCK, "--model", name, "--served-model-name", name, "--port", str(port), *args],
        env=e,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    PROCS.append(p)
    return p


def wait_health(port):
    """Polls /health every 1 ms; seconds until 200."""
    t0 = time.perf_counter()
    while get_json(port, "/health")[0] != 200:
        time.sleep(0.001)
    return time.perf_counter() - t0


def stats(xs):
    xs = sorted(xs)
    return {
        "median_ms": round(statistics.median(xs) * 1e3, 3),
        "p90_ms": round(xs[int(len(xs) * 0.9) - 1] * 1e3, 3),
        "min_ms": round(xs[0] * 1e3, 3),
        "n": len(xs),
    }


def main():
    for b in (MODELMUX, MOCK):
        if not os.path.exists(b):
            sys.exit(f"{b} missing: run `cargo build --release --bins` first")
    fresh = [f"fresh{i}" for i in range(TRIALS)]
    models = [{"model_path": "org/ready", "params": "--served-model-name ready"}]
    models += [
        {"model_path": "org/nap", "params": "--served-model-name nap", "load": "on_demand",
         "unload": "sleep", "idle_unload": IDLE},
        {"model_path": "org/cold", "params": "--served-model-name cold", "load": "on_demand",
         "unload": "stop", "idle_unload": IDLE},
    ]
    models += [
        {"model_path": f"org/{f}", "params": f"--served-model-name {f}", "load": "on_demand",
         "idle_unload": IDLE}
        for f in fresh
    ]
    port = free_port()
    tmp = tempfile.mkdtemp()
    env = dict(os.environ, MULTI_MODEL_CONFIG=json.dumps({"models": models}),
               MODELMUX_ENGINE_CMD=MOCK, MODELMUX_GPUS="none", MODELMUX_MODEL_ROOT=tmp,
               MODELMUX_ENGINE_BASE_PORT=str(free_port() + 1000), PORT=str(port),
               MODELMUX_SHUTDOWN_GRACE="2", RUST_LOG="warn")
    mm = subprocess.Popen([MODELMUX], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    PROCS.append(mm)
    end = time.time() + 60
    while get_json(port, "/health")[0] != 200:
        if time.time() > end:
            sys.exit("modelmux not ready")
        time.sleep(0.05)

    # The engine's own parts, on engines of this script's.
    direct_port, wake_port = free_port(), free_port()
    spawn_mock(direct_port, "direct")
    spawn_mock(wake_port, "wake", {"VLLM_SERVER_DEV_MODE": "1"}, ["--enable-sleep-mode"])
    wait_health(direct_port)
    wait_health(wake_port)

    r = {k: [] for k in ("ready", "sleeping", "stopped", "unloaded", "direct", "wake", "start")}
    ttft(port, "ready")
    ttft(direct_port, "direct")
    for i in range(TRIALS):
        r["ready"].append(ttft(port, "ready"))
        r["direct"].append(ttft(direct_port, "direct"))

        ttft(port, "nap")  # loaded (first trial) or woken
        wait_state(port, "nap", "sleeping")
        r["sleeping"].append(ttft(port, "nap"))

        ttft(port, "cold")
        wait_state(port, "cold", "unloaded")
        r["stopped"].append(ttft(port, "cold"))

        r["unloaded"].append(ttft(port, fresh[i]))

        assert post(wake_port, "/sleep?level=1") == 200
        t0 = time.perf_counter()
        assert post(wake_port, "/wake_up") == 200
        woke = time.perf_counter() - t0
        r["wake"].append(woke + ttft(wake_port, "wake"))

        start_port = free_port()
        t0 = time.perf_counter()
        p = spawn_mock(start_port, "start")
        wait_health(start_port)
        up = time.perf_counter() - t0
        r["start"].append(up + ttft(start_port, "start"))
        p.terminate()
        p.wait()
    out = {k: stats(v) for k, v in r.items()}
    share = lambda a, b: round(out[a]["median_ms"] - out[b]["median_ms"], 3)
    out["modelmux_share_ms"] = {
        "ready (over direct)": share("ready", "direct"),
        "sleeping (over the engine's wake)": share("sleeping", "wake"),
        "stopped (over the engine's start)": share("stopped", "start"),
        "unloaded (over the engine's start)": share("unloaded", "start"),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    try:
        main()
    finally:
        for p in PROCS:
            p.terminate()
        for p in PROCS:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
