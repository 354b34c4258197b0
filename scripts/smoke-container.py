#!/usr/bin/env python3
"""Runs the demo image's command line locally, without Docker, exactly as the container would.

Reads the `demo` stage of container/Dockerfile (its ENV, the model folders it creates, its
ENTRYPOINT), maps the image's paths onto this checkout (/usr/local/bin -> target/release,
/models -> a temporary folder), and starts the entrypoint as PID 1 of a new PID namespace
(as `docker run` without --init would) when this runs as root; otherwise as a plain child.
Then it checks /health, a routed request and a stream, sends SIGTERM and expects exit 0 with
no engine left behind. Bounded in time; loopback only.
"""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def demo_stage():
    env, dirs, entrypoint, in_stage = {}, [], None, False
    lines = open(os.path.join(ROOT, "container", "Dockerfile")).read().replace("\\\n", " ").splitlines()
    for line in lines:
        words = line.strip().split(None, 1)
        if not words or words[0].startswith("#"):
            continue
        op, rest = words[0].upper(), (words[1] if len(words) > 1 else "")
        if op == "FROM":
            in_stage = rest.split()[-1] == "demo"
            continue
        if not in_stage:
            continue
        if op == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
        elif op == "RUN" and rest.startswith("mkdir -p "):
            dirs += shlex.split(rest)[2:]
        elif op == "ENTRYPOINT":
            entrypoint = json.loads(rest)
    if not entrypoint:
        raise SystemExit("smoke: no demo stage with an ENTRYPOINT in container/Dockerfile")
    return env, dirs, entrypoint


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, body=None, timeout=5):
    req = urllib.request.Request(url, data=body and json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read().decode()


def main():
    env, dirs, entrypoint = demo_stage()
    root = tempfile.mkdtemp(prefix="modelmux-smoke-")
    mapping = {"/usr/local/bin/": BIN + "/", "/models": os.path.join(root, "models")}

    def local(value):
        for image_path, here in mapping.items():
            value = value.replace(image_path, here)
        return value

    for d in dirs:
        os.makedirs(local(d), exist_ok=True)
    port = free_port()
    run_env = {"PATH": BIN + ":" + os.environ.get("PATH", "/usr/bin:/bin")}
    run_env.update({k: local(v) for k, v in env.items()})
    run_env["PORT"] = str(port)
    argv = [local(a) if a.startswith("/") else a for a in entrypoint]
    as_pid1 = os.geteuid() == 0 and subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True).returncode == 0
    if as_pid1:
        # --kill-child: if this script dies, the namespace (and every engine) goes with it.
        argv = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child"] + argv
    print(f"smoke: {' '.join(argv)} (as {'PID 1' if as_pid1 else 'a child: not root'}), port {port}")
    proc = subprocess.Popen(argv, env=run_env, stdin=subprocess.DEVNULL)
    try:
        deadline = time.time() + 30
        while True:
            try:
                if get(f"http://127.0.0.1:{port}/health")[0] == 200:
                    break
            except Exception:
                pass
            if time.time() > deadline or proc.poll() is not None:
                raise SystemExit("smoke: modelmux did not become ready")
            time.sleep(0.1)
        status, body = get(f"http://127.0.0.1:{port}/v1/chat/completions",
                           {"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
        assert status == 200 and json.loads(body)["choices"][0]["message"]["content"], body
        status, body = get(f"http://127.0.0.1:{port}/predict", {"model": "embed", "input": "hi"})
        assert status == 200 and json.loads(body)["data"][0]["embedding"], body
        status, body = get(f"http://127.0.0.1:{port}/v1/completions",
                           {"model": "chat", "prompt": "hi", "stream": True, "mock_chunks": 3})
        assert status == 200 and body.endswith("data: [DONE]\n\n"), body
        # What `docker stop` does: SIGTERM to the container's PID 1 (unshare forwards nothing).
        target = proc.pid
        if as_pid1:
            children = open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()
            target = int(children[0])
        os.kill(target, signal.SIGTERM)
        code = proc.wait(timeout=30)
        assert code == 0, f"exit status {code}"
        print("smoke: ok (health, chat, /predict, stream, SIGTERM -> exit 0)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        left = subprocess.run(["pgrep", "-f", os.path.join(BIN, "mock-vllm")], capture_output=True, text=True).stdout.split()
        if left:
            raise SystemExit(f"smoke: engines left behind: {left}")


if __name__ == "__main__":
    main()
