#!/usr/bin/env python3
"""modelmux benchmark: router overhead, memory, CPU, startup and scale.

Targets, measured in one run against the same mock-vllm engines (zero delay, so that the
router is what is measured):
  direct    straight to one engine
  modelmux  through modelmux, requests alternating between two models
  nginx     (BENCH_PEERS=1) nginx proxy_pass with upstream keep-alive, routing by path
  litellm   (BENCH_PEERS=1) LiteLLM proxy with the engines as hosted_vllm/ models

Writes bench-results/results.json and bench-results/results.md. Loopback only; every run
is bounded in time. Environment: BENCH_DURATION (5), BENCH_WARMUP (1), BENCH_ROUNDS (3: the
targets take turns this many times and each one's median round is reported), BENCH_PEERS (0),
BENCH_CONCURRENCY ("1,16,64,256"),
BENCH_TARGETS, BENCH_MODES ("completions,chat"), BENCH_STREAMS ("plain,stream"), BENCH_QUICK=1
(the matrix alone).
"""

import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")
OUT = os.path.join(ROOT, "bench-results")
DURATION = float(os.environ.get("BENCH_DURATION", "5"))
WARMUP = float(os.environ.get("BENCH_WARMUP", "1"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
PEERS = os.environ.get("BENCH_PEERS") == "1"
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16,64,256").split(",")]
TARGETS = os.environ.get("BENCH_TARGETS", "direct,modelmux,nginx,litellm").split(",")
MODES = os.environ.get("BENCH_MODES", "completions,chat").split(",")
STREAMS = [s == "stream" for s in os.environ.get("BENCH_STREAMS", "plain,stream").split(",")]
QUICK = os.environ.get("BENCH_QUICK") == "1"  # the matrix only: no startup, scale or 1,000 streams
VENV = os.path.join(ROOT, "target", "bench-peers", "venv")
PROCS = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_json(url, timeout=2.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")
    except Exception:
        return None, None


def wait_for(cond, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise SystemExit(f"bench: timed out waiting for {what}")


def proc_status(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0  # MiB
    return 0.0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid):
    """CPU time of a process and its direct children (nginx's workers, LiteLLM's worker)."""
    total = cpu_seconds(pid)
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        kids = []
    for k in kids:
        try:
            total += cpu_seconds(k)
        except OSError:
            pass
    return total


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def spawn(cmd, env=None, log=None):
    p = subprocess.Popen(cmd, env=env, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    PROCS.append(p)
    return p


def stop(p, sig=signal.SIGTERM, timeout=15):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def cleanup():
    for p in PROCS:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def modelmux_env(models, port, extra=None):
    env = dict(os.environ)
    env.update({
        "MULTI_MODEL_CONFIG": json.dumps({"models": models}),
        "MODELMUX_ENGINE_CMD": os.path.join(BIN, "mock-vllm"),
        "MODELMUX_GPUS": "none",
        "PORT": str(port),
        "MODELMUX_SHUTDOWN_GRACE": "5",
    })
    env.pop("RUST_LOG", None)
    env.update(extra or {})
    return env


def mock_model(name, env=None):
    e = {"MOCK_THREADS": "1", "MOCK_STREAM_CHUNKS": "16"}
    e.update(env or {})
    return {"model_path": f"bench/{name}", "params": f"--served-model-name {name}", "env": e}


def loadgen(urls, bodies, concurrency, stream, label, duration=None, warmup=None):
    cmd = [os.path.join(BIN, "mmx-loadgen"), "--concurrency", str(concurrency), "--label", label,
           "--duration", str(duration or DURATION), "--warmup", str(WARMUP if warmup is None else warmup)]
    for u in urls:
        cmd += ["--url", u]
    for b in bodies:
        cmd += ["--body", json.dumps(b)]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=(duration or DURATION) + 120)
    if out.returncode != 0:
        raise SystemExit(f"bench: loadgen failed: {out.stderr}")
    return json.loads(out.stdout)


def start_nginx(ports, workdir):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    port = free_port()
    conf = os.path.join(workdir, "nginx.conf")
    ups = "\n".join(
        f"upstream m{i} {{ server 127.0.0.1:{p}; keepalive 512; }}" for i, p in enumerate(ports))
    locs = "\n".join(
        f"location /m{i}/ {{ proxy_pass http://m{i}/; proxy_http_version 1.1; "
        f"proxy_set_header Connection \"\"; proxy_buffering off; }}" for i in range(len(ports)))
    with open(conf, "w") as f:
        f.write(f"""worker_processes auto;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log warn;
events {{ worker_connections 8192; }}
http {{
  access_log {workdir}/nginx-access.log;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  keepalive_requests 1000000;
  {ups}
  server {{ listen 127.0.0.1:{port}; {locs} }}
}}
""")
    p = spawn([nginx, "-c", conf, "-p", workdir, "-g", "daemon off;"])
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/m0/health")[0] == 200, 20, "nginx")
    return p, port


def start_litellm(ports, workdir):
    exe = os.path.join(VENV, "bin", "litellm")
    port = free_port()
    conf = os.path.join(workdir, "litellm.yaml")
    with open(conf, "w") as f:
        f.write("model_list:\n")
        for i, p in enumerate(ports):
            f.write(f"  - model_name: m{i}\n    litellm_params:\n      model: hosted_vllm/m{i}\n"
                    f"      api_base: http://127.0.0.1:{p}/v1\n      api_key: none\n")
        f.write("litellm_settings:\n  telemetry: false\n  drop_params: true\n")
    env = dict(os.environ, LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_TELEMETRY="False",
               NO_PROXY="*", no_proxy="*")
    log = open(os.path.join(workdir, "litellm.log"), "w")
    p = spawn([exe, "--config", conf, "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"], env=env, log=log)
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/health/liveliness")[0] == 200, 180, "litellm")
    return p, port


def one_run(target, targets, ports, port, path, bodies, c, stream, pids):
    """One loadgen run against one target; the proxy's CPU time per request when known."""
    if target == "direct":
        urls, bodies = [f"http://127.0.0.1:{ports[0]}{path}"], bodies[:1]
    elif target == "modelmux":
        urls = [f"http://127.0.0.1:{port}{path}"]
    elif target == "nginx":
        urls = [f"http://127.0.0.1:{targets['nginx']}/m{i}{path}" for i in (0, 1)]
    else:
        urls = [f"http://127.0.0.1:{targets['litellm']}{path}"]
    cpu0 = tree_cpu_seconds(pids[target]) if target in pids else 0.0
    r = loadgen(urls, bodies, c, stream, target)
    if target in pids and r["requests"]:
        r["cpu_us_per_req"] = (tree_cpu_seconds(pids[target]) - cpu0) / r["requests"] * 1e6
    return r


def matrix(work, results):
    models = [mock_model("m0"), mock_model("m1")]
    port = free_port()
    log = open(os.path.join(work, "modelmux.log"), "w")
    mm = spawn([os.path.join(BIN, "modelmux")], env=modelmux_env(models, port), log=log)
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/health")[0] == 200, 30, "modelmux ready")
    time.sleep(1.0)
    results["rss_idle_mib"] = proc_status(mm.pid, "VmRSS")
    _, health = http_json(f"http://127.0.0.1:{port}/health")
    ports = [m["port"] for m in health["models"]]
    targets = {"direct": None, "modelmux": None}
    pids = {"modelmux": mm.pid}
    peers = []
    if PEERS and "nginx" in TARGETS:
        n, nport = start_nginx(ports, work)
        peers.append(n)
        targets["nginx"] = nport
        pids["nginx"] = n.pid
    if PEERS and "litellm" in TARGETS:
        try:
            l, lport = start_litellm(ports, work)
            peers.append(l)
            targets["litellm"] = lport
            pids["litellm"] = l.pid
        except SystemExit as e:
            print(f"bench: LiteLLM did not start ({e}); see {work}/litellm.log", file=sys.stderr)
    reset_peak(mm.pid)
    runs = []
    targets = {t: targets[t] for t in TARGETS if t in targets}
    for mode, path in (("completions", "/v1/completions"), ("chat", "/v1/chat/completions")):
        if mode not in MODES:
            continue
        for stream in STREAMS:
            for c in CONCURRENCY:
                bodies = []
                for name in ("m0", "m1"):
                    b = {"model": name, "max_tokens": 16}
                    if mode == "chat":
                        b["messages"] = [{"role": "user", "content": "Hello"}]
                    else:
                        b["prompt"] = "Hello"
                    if stream:
                        b["stream"] = True
                    bodies.append(b)
                # Targets take turns, round after round, so that the machine's slow and fast
                # moments fall on all of them; each target's median round is reported.
                rounds = {t: [] for t in targets}
                for rnd in range(ROUNDS):
                    for target in targets:
                        if target == "litellm" and rnd > 0:
                            continue  # hundreds of times slower: one round says enough
                        r = one_run(target, targets, ports, port, path, bodies, c, stream, pids)
                        r.update(mode=mode, target=target, round=rnd)
                        rounds[target].append(r)
                        print(json.dumps(r), flush=True)
                for target, rs in rounds.items():
                    median = sorted(rs, key=lambda r: r["rps"])[len(rs) // 2]
                    median["rps_rounds"] = [round(r["rps"]) for r in rs]
                    runs.append(median)
    results["runs"] = runs
    results["rss_peak_load_mib"] = proc_status(mm.pid, "VmHWM")

    if QUICK:
        for p in peers:
            stop(p)
        stop(mm)
        return
    # 1,000 concurrent streams held open through modelmux.
    reset_peak(mm.pid)
    bodies = [{"model": m, "prompt": "x", "stream": True, "mock_delay_ms": 50} for m in ("m0", "m1")]
    r = loadgen([f"http://127.0.0.1:{port}/v1/completions"], bodies, 1000, True, "modelmux-1000-streams", duration=5, warmup=1)
    results["streams_1000"] = r
    results["rss_peak_1000_streams_mib"] = proc_status(mm.pid, "VmHWM")
    print(json.dumps(r), flush=True)
    for p in peers:
        stop(p)
    stop(mm)


def startup(work, results):
    reports = [os.path.join(work, f"ready-{i}.json") for i in range(2)]
    models = [mock_model(f"s{i}", {"MOCK_STARTUP_DELAY_MS": "1500", "MOCK_REPORT_FILE": reports[i]}) for i in range(2)]
    port = free_port()
    logpath = os.path.join(work, "startup.log")
    log = open(logpath, "w")
    env = modelmux_env(models, port, {"MODELMUX_LOG_FORMAT": "json"})
    t0 = time.time()
    mm = spawn([os.path.join(BIN, "modelmux")], env=env, log=log)
    url = f"http://127.0.0.1:{port}/health"
    ready = None
    deadline = time.time() + 30
    while time.time() < deadline:
        if http_json(url, timeout=0.5)[0] == 200:
            ready = time.time()
            break
        time.sleep(0.002)
    stop(mm)
    spawned = []
    with open(logpath) as f:
        for line in f:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("message") == "engine started":
                ts = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00")).timestamp()
                spawned.append(ts)
    engine_ready = max(json.load(open(r))["ready_unix"] for r in reports)
    results["startup"] = {
        "exec_to_all_spawned_ms": (max(spawned) - t0) * 1e3 if len(spawned) == 2 else None,
        "engine_ready_to_modelmux_ready_ms": (ready - engine_ready) * 1e3 if ready else None,
    }
    print(json.dumps(results["startup"]), flush=True)


def scale(work, results, n=32):
    models = [mock_model(f"x{i}") for i in range(n)]
    port = free_port()
    log = open(os.path.join(work, "scale.log"), "w")
    t0 = time.time()
    mm = spawn([os.path.join(BIN, "modelmux")], env=modelmux_env(models, port), log=log)
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/health")[0] == 200, 60, f"{n} models ready")
    ready_s = time.time() - t0
    ok = 0
    for i in range(n):
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions",
                                     data=json.dumps({"model": f"x{i}", "prompt": "x"}).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            body = json.loads(r.read())
            ok += int(r.status == 200 and body["model"] == f"x{i}")
    results["scale"] = {"models": n, "all_ready_s": ready_s, "routed_ok": ok,
                        "rss_mib": proc_status(mm.pid, "VmRSS")}
    print(json.dumps(results["scale"]), flush=True)
    stop(mm)


def table(results):
    runs = results["runs"]
    lines = []
    by = {(r["mode"], r["stream"], r["concurrency"], r["target"]): r for r in runs}
    targets = [t for t in ("direct", "modelmux", "nginx", "litellm") if any(r["target"] == t for r in runs)]
    for mode in MODES:
        for stream in STREAMS:
            lines.append(f"\n### {mode}, {'streaming (16 chunks)' if stream else 'non-streaming'}\n")
            head = "| conc | target | req/s | rounds (k req/s) | p50 ms | p90 ms | p99 ms | max ms |"
            sep = "|---:|---|---:|---|---:|---:|---:|---:|"
            if stream:
                head += " TTFB p50 | TTFB p99 |"
                sep += "---:|---:|"
            head += " errors | CPU µs/req | added p50 / p99 vs direct | modelmux req/s ÷ this |"
            sep += "---:|---:|---|---:|"
            lines += [head, sep]
            for c in CONCURRENCY:
                d = by.get((mode, stream, c, "direct"))
                mm = by.get((mode, stream, c, "modelmux"))
                for t in targets:
                    r = by.get((mode, stream, c, t))
                    if not r:
                        continue
                    rr = " / ".join(f"{x / 1000:.1f}" for x in r.get("rps_rounds", []))
                    row = f"| {c} | {t} | {r['rps']:.0f} | {rr} | {r['p50_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['max_ms']:.1f} |"
                    if stream:
                        row += f" {r['ttfb_p50_ms']:.3f} | {r['ttfb_p99_ms']:.3f} |"
                    added = "" if t == "direct" or not d else f"+{r['p50_ms'] - d['p50_ms']:.3f} / +{r['p99_ms'] - d['p99_ms']:.3f}"
                    ratio = "" if t in ("direct", "modelmux") or not mm or not r["rps"] else f"{mm['rps'] / r['rps']:.2f}×"
                    cpu = f"{r['cpu_us_per_req']:.1f}" if r.get("cpu_us_per_req") else ""
                    row += f" {r['errors']} | {cpu} | {added} | {ratio} |"
                    lines.append(row)
    return "\n".join(lines)


def main():
    for exe in ("modelmux", "mock-vllm", "mmx-loadgen"):
        if not os.access(os.path.join(BIN, exe), os.X_OK):
            raise SystemExit(f"bench: build first (make build): {exe} missing")
    os.makedirs(OUT, exist_ok=True)
    work = tempfile.mkdtemp(prefix="modelmux-bench-")
    results = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
                   f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "duration_s": DURATION, "warmup_s": WARMUP, "peers": PEERS,
    }
    try:
        if not QUICK:
            startup(work, results)
            scale(work, results)
        matrix(work, results)
    finally:
        cleanup()
    if QUICK:
        print(table(results))
        return
    with open(os.path.join(OUT, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    md = [f"Run {results['date']} on {results['machine']}; {DURATION:.0f} s per run after {WARMUP:.0f} s warm-up.",
          f"\nmodelmux RSS: idle {results['rss_idle_mib']:.1f} MiB (two models), peak under the matrix "
          f"{results['rss_peak_load_mib']:.1f} MiB, peak with 1,000 concurrent streams "
          f"{results['rss_peak_1000_streams_mib']:.1f} MiB ({results['streams_1000']['requests']} streams, "
          f"{results['streams_1000']['errors']} errors).",
          f"\nStartup: exec to every engine spawned {results['startup']['exec_to_all_spawned_ms']:.1f} ms; "
          f"engine /health 200 to modelmux /health 200: {results['startup']['engine_ready_to_modelmux_ready_ms']:.0f} ms.",
          f"\nScale: {results['scale']['models']} models ready in {results['scale']['all_ready_s']:.2f} s, "
          f"{results['scale']['routed_ok']} routed correctly, RSS {results['scale']['rss_mib']:.1f} MiB.",
          table(results)]
    md.append(f"\nEach row is the target's median of {ROUNDS} rounds (LiteLLM: one), the targets taking "
              "turns; *rounds* lists every round's req/s. CPU µs/req: the proxy's user+system CPU "
              "time (nginx: master and workers) per request.")
    text = "\n".join(md) + "\n"
    with open(os.path.join(OUT, "results.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
