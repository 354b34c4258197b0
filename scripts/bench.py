#!/usr/bin/env python3
"""modelmux benchmark: router overhead, memory, CPU, startup and scale.

Targets, measured in one run against the same mock-vllm engines (zero delay, so that the
router is what is measured):
  direct    straight to one engine
  modelmux  through modelmux, requests alternating between two models
  base      (BENCH_BASELINE=path/to/modelmux) another modelmux build, for A/B comparisons
  nginx     nginx (2 workers) proxy_pass with upstream keep-alive, routing by path
  haproxy   HAProxy (2 threads, http-reuse always, option http-no-delay), routing by path
  litellm   (BENCH_PEERS=1) LiteLLM proxy with the engines as hosted_vllm/ models

The targets phase (BENCH_TARGETS_ROUNDS rounds, 5 by default; 0 skips it) checks the
front's performance targets round by round: c=64 throughput and p99 against the best peer,
1,000-stream time to first byte against nginx, A/B against BENCH_BASELINE, and RSS idle,
with 1,000 streams and with 10,000 idle keep-alive connections.

Writes bench-results/results.json and bench-results/results.md. Loopback only; every run
is bounded in time. Environment: BENCH_DURATION (5), BENCH_WARMUP (1), BENCH_ROUNDS (3: the
targets take turns this many times and each one's median round is reported), BENCH_PEERS (nginx and HAProxy; 1 adds LiteLLM, 0 none),
BENCH_CONCURRENCY ("1,16,64,256"), BENCH_TARGETS_ROUNDS (5), BENCH_FOREIGN_LIMIT (0.1), BENCH_BASELINE, BENCH_AB_ROUNDS (20),
BENCH_TARGETS, BENCH_MODES ("completions,chat"), BENCH_STREAMS ("plain,stream"), BENCH_QUICK=1
(the matrix alone), BENCH_ONLY_TARGETS=1 (the A/B and targets phases alone).
"""

import json
import os
import platform
import random
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
# nginx and HAProxy always (bench.sh installs them); BENCH_PEERS=1 adds LiteLLM, 0 none.
PEERS = os.environ.get("BENCH_PEERS", "") != "0"
LITELLM = os.environ.get("BENCH_PEERS") == "1"
BASELINE = os.environ.get("BENCH_BASELINE")
TARGETS_ROUNDS = int(os.environ.get("BENCH_TARGETS_ROUNDS", "5"))
# Rounds of the side-by-side A/B against BENCH_BASELINE (both loaded at once).
AB_ROUNDS = int(os.environ.get("BENCH_AB_ROUNDS", "20"))
# A targets round during which other processes used more than this share of the CPUs is
# measured again.
FOREIGN_LIMIT = float(os.environ.get("BENCH_FOREIGN_LIMIT", "0.1"))
CONCURRENCY = [int(c) for c in os.environ.get("BENCH_CONCURRENCY", "1,16,64,256").split(",")]
TARGETS = os.environ.get("BENCH_TARGETS", "direct,modelmux,base,nginx,haproxy,litellm").split(",")
MODES = os.environ.get("BENCH_MODES", "completions,chat").split(",")
STREAMS = [s == "stream" for s in os.environ.get("BENCH_STREAMS", "plain,stream").split(",")]
QUICK = os.environ.get("BENCH_QUICK") == "1"  # the matrix only: no startup, scale or 1,000 streams
VENV = os.path.join(ROOT, "target", "bench-peers", "venv")
PROCS = []


def free_port(span=40):
    """A port with the `span` ports after it free as well (modelmux gives its engines
    PORT+1, PORT+2, ...), below the ephemeral range: the benchmark's own client connections
    leave ephemeral ports in TIME_WAIT, where an engine could not bind."""
    for _ in range(200):
        base = random.randrange(20000, 32000 - span)
        try:
            for p in range(base, base + span + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
    raise SystemExit("bench: no free run of ports found below 32000")


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


def all_cpu_seconds(pid):
    """CPU time of a process and all its descendants (modelmux's guardians and engines)."""
    total = cpu_seconds(pid)
    kids = []
    # Every thread's children: modelmux spawns from a thread of its own.
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(k) for k in f.read().split()]
        except OSError:
            pass
    for k in kids:
        try:
            total += all_cpu_seconds(k)
        except OSError:
            pass
    return total


def proxy_cpu_seconds(target, pid):
    """The proxy's own CPU time: modelmux alone (its children are guardians and engines),
    the peers with their workers."""
    return cpu_seconds(pid) if target in ("modelmux", "base") else tree_cpu_seconds(pid)


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
        f.write(f"""worker_processes 2;
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


def start_haproxy(ports, workdir):
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    port = free_port()
    conf = os.path.join(workdir, "haproxy.cfg")
    backends = "\n".join(
        f"backend m{i}\n  http-reuse always\n  http-request replace-path /m{i}(/.*) \\1\n"
        f"  server s{i} 127.0.0.1:{p} maxconn 10000\n" for i, p in enumerate(ports))
    rules = "\n".join(f"  use_backend m{i} if {{ path_beg /m{i}/ }}" for i in range(len(ports)))
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 2
  maxconn 8000
  pidfile {workdir}/haproxy.pid
defaults
  mode http
  option http-no-delay
  timeout connect 5s
  timeout client 120s
  timeout server 120s
frontend fe
  bind 127.0.0.1:{port}
{rules}
{backends}
""")
    log = open(os.path.join(workdir, "haproxy.log"), "w")
    p = spawn([haproxy, "-f", conf, "-db"], log=log)
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/m0/health")[0] == 200, 20, "haproxy")
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


def target_urls(target, targets, ports, port, path, bodies):
    """The URLs (and bodies) a target is driven with."""
    if target == "direct":
        return [f"http://127.0.0.1:{ports[0]}{path}"], bodies[:1]
    if target == "modelmux":
        return [f"http://127.0.0.1:{port}{path}"], bodies
    if target == "base":
        return [f"http://127.0.0.1:{targets['base']}{path}"], bodies
    if target in ("nginx", "haproxy"):
        return [f"http://127.0.0.1:{targets[target]}/m{i}{path}" for i in (0, 1)], bodies
    return [f"http://127.0.0.1:{targets['litellm']}{path}"], bodies


def one_run(target, targets, ports, port, path, bodies, c, stream, pids, duration=None, warmup=None):
    """One loadgen run against one target; the proxy's CPU time per request when known."""
    urls, bodies = target_urls(target, targets, ports, port, path, bodies)
    cpu0 = proxy_cpu_seconds(target, pids[target]) if target in pids else 0.0
    r = loadgen(urls, bodies, c, stream, target, duration, warmup)
    if target in pids and r["requests"]:
        r["cpu_us_per_req"] = (proxy_cpu_seconds(target, pids[target]) - cpu0) / r["requests"] * 1e6
    return r


def start_modelmux(work, label, binary, extra=None):
    """A modelmux (this build or BENCH_BASELINE) with its own two mock engines."""
    models = [mock_model("m0"), mock_model("m1")]
    port = free_port()
    log = open(os.path.join(work, f"{label}.log"), "w")
    p = spawn([binary], env=modelmux_env(models, port, extra), log=log)
    wait_for(lambda: http_json(f"http://127.0.0.1:{port}/health")[0] == 200, 30, f"{label} ready")
    return p, port


def read_answer(sock):
    """Reads one Content-Length response off a blocking socket."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("bench: connection closed before an answer")
        buf += chunk
    head, body = buf.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(65536)
    return head.split(b" ")[1]


def idle_connections(port, n):
    """n keep-alive connections, each after one answered request, left open."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 1000)), hard))
    body = json.dumps({"model": "m0", "prompt": "x"}).encode()
    req = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        status = read_answer(s)
        if status != b"200":
            raise SystemExit(f"bench: idle connection {len(socks)} got {status!r}")
        socks.append(s)
    return socks


def busy_seconds():
    """CPU time the whole machine spent in processes (user, nice, system) or lost to the
    hypervisor (steal). Interrupt time is left out: much of it is the benchmark's own
    loopback traffic."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[7]) / os.sysconf("SC_CLK_TCK")


def own_seconds(pids):
    """CPU time of the benchmark's own processes: the targets (with their engines and
    workers) and the load generators that already finished."""
    import resource
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = ru.ru_utime + ru.ru_stime
    for pid in pids:
        try:
            total += all_cpu_seconds(pid)
        except OSError:
            pass
    return total


def targets_phase(work, results):
    """The front's targets, round by round: c=64 against the best peer, 1,000 streams against
    nginx, A/B against the baseline; then memory with 10,000 idle connections."""
    extra = {"MODELMUX_MAX_CONNECTIONS": "11000"}
    mm, port = start_modelmux(work, "targets-modelmux", os.path.join(BIN, "modelmux"), extra)
    time.sleep(1.0)
    results["targets_rss_idle_mib"] = proc_status(mm.pid, "VmRSS")
    _, health = http_json(f"http://127.0.0.1:{port}/health")
    ports = [m["port"] for m in health["models"]]
    targets, pids, procs = {"modelmux": port}, {"modelmux": mm.pid}, [mm]
    if BASELINE:
        b, bport = start_modelmux(work, "targets-base", BASELINE, extra)
        targets["base"], pids["base"] = bport, b.pid
        procs.append(b)
    if PEERS:
        for name, start in (("nginx", start_nginx), ("haproxy", start_haproxy)):
            p, pport = start(ports, work)
            targets[name], pids[name] = pport, p.pid
            procs.append(p)
    names = list(targets)
    plain = [{"model": m, "prompt": "Hello", "max_tokens": 16} for m in ("m0", "m1")]
    streams = [{"model": m, "prompt": "x", "stream": True, "mock_delay_ms": 50} for m in ("m0", "m1")]
    rounds, peak_streams, attempt = [], 0.0, 0
    while len(rounds) < TARGETS_ROUNDS and attempt < 3 * TARGETS_ROUNDS:
        rnd, attempt = len(rounds), attempt + 1
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        row = {n: {} for n in names}
        # Other work on the machine (this one is shared) skews a round; such a round is
        # measured again (at most three times as many attempts as rounds).
        def foreign_since(t0, busy0, own0):
            spent = busy_seconds() - busy0 - (own_seconds(pids.values()) - own0)
            return max(0.0, spent / ((time.time() - t0) * os.cpu_count()))

        last_try = attempt >= 3 * TARGETS_ROUNDS
        mark = (time.time(), busy_seconds(), own_seconds(pids.values()))
        for n in order:
            r = one_run(n, targets, ports, port, "/v1/completions", plain, 64, False, pids)
            row[n]["c64"] = r
            print(json.dumps({"round": rnd, "target": n, "run": "c64", **r}), flush=True)
        row["foreign_cpu"] = foreign_since(*mark)
        print(json.dumps({"round": rnd, "attempt": attempt, "foreign_c64": row["foreign_cpu"]}), flush=True)
        if row["foreign_cpu"] > FOREIGN_LIMIT and not last_try:
            continue
        mark = (time.time(), busy_seconds(), own_seconds(pids.values()))
        for n in order:
            if n == "modelmux":
                reset_peak(mm.pid)
            r = one_run(n, targets, ports, port, "/v1/completions", streams, 1000, True, pids, 5, 1)
            if n == "modelmux":
                peak_streams = max(peak_streams, proc_status(mm.pid, "VmHWM"))
            row[n]["streams"] = r
            print(json.dumps({"round": rnd, "target": n, "run": "streams", **r}), flush=True)
        row["foreign_cpu_streams"] = foreign_since(*mark)
        print(json.dumps({"round": rnd, "attempt": attempt, "foreign_streams": row["foreign_cpu_streams"]}), flush=True)
        if row["foreign_cpu_streams"] > FOREIGN_LIMIT and not last_try:
            continue
        rounds.append(row)
    results["targets_rounds"] = rounds
    results["targets_rss_1000_streams_mib"] = peak_streams
    idle = {}
    for n in ("modelmux", "base"):
        if n not in targets:
            continue
        socks = idle_connections(targets[n], 10000)
        time.sleep(1.0)
        idle[n] = proc_status(pids[n], "VmRSS")
        for s in socks:
            s.close()
        print(json.dumps({"target": n, "rss_10000_idle_mib": idle[n]}), flush=True)
    results["targets_rss_10000_idle_mib"] = idle
    for p in procs:
        stop(p)


def ab_phase(work, results):
    """This build against BENCH_BASELINE, both loaded at the same time (c=32 each), so that
    whatever else the machine does falls on both alike; per round the ratio of req/s and
    of CPU per request, and their medians."""
    import statistics
    mm, port = start_modelmux(work, "ab-modelmux", os.path.join(BIN, "modelmux"))
    b, bport = start_modelmux(work, "ab-base", BASELINE)
    out = {}
    for mode in ("plain", "stream"):
        stream = mode == "stream"
        bodies = [json.dumps({"model": m, "prompt": "x", "stream": stream}) for m in ("m0", "m1")]
        rps, cpu = [], []
        for rnd in range(AB_ROUNDS):
            c0 = [cpu_seconds(p.pid) for p in (mm, b)]
            procs = [None, None]
            for i in ([0, 1] if rnd % 2 == 0 else [1, 0]):
                cmd = [os.path.join(BIN, "mmx-loadgen"), "--url",
                       f"http://127.0.0.1:{(port, bport)[i]}/v1/completions", "--concurrency", "32",
                       "--duration", "4", "--warmup", "1", "--label", ("modelmux", "base")[i]]
                for body in bodies:
                    cmd += ["--body", body]
                if stream:
                    cmd.append("--stream")
                procs[i] = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            rs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
            per = [(cpu_seconds(p.pid) - c) / max(1, r["requests"] * 1.25) * 1e6
                   for p, c, r in zip((mm, b), c0, rs)]
            rps.append(rs[0]["rps"] / rs[1]["rps"])
            cpu.append(per[0] / per[1])
            print(json.dumps({"ab": mode, "round": rnd, "rps": [rs[0]["rps"], rs[1]["rps"]], "cpu_us": per}),
                  flush=True)
        out[mode] = {"rps_ratio_median": statistics.median(rps), "cpu_ratio_median": statistics.median(cpu),
                     "rounds": AB_ROUNDS}
    results["ab"] = out
    stop(mm)
    stop(b)
    print(json.dumps({"ab_summary": out}), flush=True)


def targets_table(results):
    """Markdown: every round's numbers and which targets it met."""
    rounds = results.get("targets_rounds") or []
    if not rounds:
        return ""
    names = [n for n in rounds[0] if not n.startswith("foreign")]
    peers = [n for n in ("nginx", "haproxy") if n in names]
    lines = ["\n### Targets, round by round (c=64 completions; 1,000 streams, 50 ms between events)\n",
             "| round | " + " | ".join(f"{n} req/s · p99 ms · CPU µs/req" for n in names) + " | "
             + " | ".join(f"{n} 1k-stream TTFB p99 ms" for n in names) + " | other load | targets met |",
             "|---:|" + "---|" * (2 * len(names)) + "---:|---|"]
    met = {"throughput ≥ 1.2× best peer": 0, "p99 ≤ best peer": 0, "TTFB p99 ≤ nginx": 0,
           "≥ 0.98× baseline": 0}
    for i, row in enumerate(rounds):
        mm = row["modelmux"]
        ok = []
        if peers:
            best_rps = max(row[p]["c64"]["rps"] for p in peers)
            best_p99 = min(row[p]["c64"]["p99_ms"] for p in peers)
            if mm["c64"]["rps"] >= 1.2 * best_rps:
                ok.append("throughput ≥ 1.2× best peer")
            if mm["c64"]["p99_ms"] <= best_p99:
                ok.append("p99 ≤ best peer")
        if "nginx" in row and mm["streams"]["ttfb_p99_ms"] <= row["nginx"]["streams"]["ttfb_p99_ms"]:
            ok.append("TTFB p99 ≤ nginx")
        if "base" in row and mm["c64"]["rps"] >= 0.98 * row["base"]["c64"]["rps"]:
            ok.append("≥ 0.98× baseline")
        for k in ok:
            met[k] += 1
        cells = [f"{row[n]['c64']['rps']:.0f} · {row[n]['c64']['p99_ms']:.2f} · "
                 f"{row[n]['c64'].get('cpu_us_per_req', 0):.1f}" for n in names]
        cells += [f"{row[n]['streams']['ttfb_p99_ms']:.2f} ({row[n]['streams']['errors']} err)" for n in names]
        other = f"{100 * row.get('foreign_cpu', 0):.0f} % / {100 * row.get('foreign_cpu_streams', 0):.0f} %"
        lines.append(f"| {i + 1} | " + " | ".join(cells) + f" | {other} | " + ", ".join(ok) + " |")
    cpu = {n: sorted(r[n]["c64"].get("cpu_us_per_req", 0) for r in rounds) for n in names}
    lines.append("\nMedian CPU per request at c=64 (the proxy's user+system time, nginx with its workers): "
                 + ", ".join(f"{n} {v[len(v) // 2]:.1f} µs" for n, v in cpu.items()) + ".")
    lines.append("\nRounds meeting each target: " + "; ".join(f"{k}: {v} of {len(rounds)}" for k, v in met.items())
                 + ".")
    lines.append(f"\nOther load: the share of both CPUs used by processes outside the benchmark during the "
                 f"round's c=64 runs / its stream runs (rounds above {100 * FOREIGN_LIMIT:.0f} % were measured again).")
    ab = results.get("ab")
    if ab:
        lines.append("\nSide by side with the baseline (both loaded at once, c=32 each, "
                     f"{ab['plain']['rounds']} rounds per mode), medians of this build ÷ baseline: "
                     + "; ".join(f"{m}: req/s {v['rps_ratio_median']:.3f}, CPU per request {v['cpu_ratio_median']:.3f}"
                                 for m, v in ab.items()) + ".")
    lines.append(f"\nmodelmux RSS: idle {results['targets_rss_idle_mib']:.1f} MiB, peak with 1,000 streams "
                 f"{results['targets_rss_1000_streams_mib']:.1f} MiB, with 10,000 idle keep-alive connections "
                 + ", ".join(f"{n} {v:.1f} MiB" for n, v in results["targets_rss_10000_idle_mib"].items()) + ".")
    return "\n".join(lines)


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
    if BASELINE and "base" in TARGETS:
        b, bport = start_modelmux(work, "base", BASELINE)
        peers.append(b)
        targets["base"] = bport
        pids["base"] = b.pid
    if PEERS and "nginx" in TARGETS:
        n, nport = start_nginx(ports, work)
        peers.append(n)
        targets["nginx"] = nport
        pids["nginx"] = n.pid
    if PEERS and "haproxy" in TARGETS:
        h, hport = start_haproxy(ports, work)
        peers.append(h)
        targets["haproxy"] = hport
        pids["haproxy"] = h.pid
    if LITELLM and "litellm" in TARGETS:
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
    targets = [t for t in ("direct", "modelmux", "base", "nginx", "haproxy", "litellm") if any(r["target"] == t for r in runs)]
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
        if BASELINE and AB_ROUNDS > 0:
            ab_phase(work, results)
        if TARGETS_ROUNDS > 0:
            targets_phase(work, results)
            print(targets_table(results), flush=True)
        if os.environ.get("BENCH_ONLY_TARGETS") == "1":
            with open(os.path.join(OUT, "targets.json"), "w") as f:
                json.dump(results, f, indent=1)
            return
        if not QUICK:
            startup(work, results)
            scale(work, results)
        matrix(work, results)
    finally:
        cleanup()
    if QUICK:
        print(targets_table(results))
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
          targets_table(results),
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
