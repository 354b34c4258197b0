#!/usr/bin/env python3
"""c=64 latency spread, side by side (BENCHMARKS.md, "c=64: the spread ..." sections).

Runs modelmux (this build, with its two mock engines), optionally a second build (`B`) with
engines of its own, nginx and HAProxy (served by the first build's engines), in alternating
order, and prints per round: the latency spread (p1 and p10 over p50, from
`mmx-loadgen --samples`), the rate, p50/p90/p99, and the proxy's scheduler statistics per
request from /proc/PID/task/*/schedstat (time running, time waiting on the run queue, turns
on a CPU), and what the engines (schedstat again) and the load generator (getrusage of
the child over its 6 s, warm-up included, over 6/5 of the requests of the 5 measured) spend
per request. Then the medians. Nothing is
asserted: numbers to read, measured in one run.

Environment: R rounds (default 6), C concurrency (default 64), B path of a second modelmux
build to compare against (labelled `b`), PEERS=0 to leave nginx and HAProxy out, DIRECT=1 to
add the load generator against one engine with no proxy at all (`direct`: the ceiling that
no proxy, however cheap, can reach, since it adds a hop).
Build first: `cargo build --release --bins`; raise the open-files limit (`ulimit -n 20000`).
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

EXTRA = {"MODELMUX_MAX_CONNECTIONS": "11000"}
BODIES = [{"model": m, "prompt": "Hello", "max_tokens": 16} for m in ("m0", "m1")]


def schedstat(pids):
    """Run time, run-queue wait (ns) and CPU turns, summed over every thread of `pids`."""
    total = [0, 0, 0]
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    values = list(map(int, f.read().split()))
            except OSError:
                continue
            for i in range(3):
                total[i] += values[i]
    return total


def proxy_pids(name, proc):
    """modelmux alone (its children are guardians and engines); nginx with its workers."""
    if proc is None:
        return []
    pids = [proc.pid]
    if name == "nginx":
        with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    return pids


def main():
    rounds = int(os.environ.get("R", "6"))
    concurrency = int(os.environ.get("C", "64"))
    work = tempfile.mkdtemp(prefix="bench-spread-")
    targets, procs = {}, {}
    mm, port = bench.start_modelmux(work, "mm", os.path.join(bench.BIN, "modelmux"), EXTRA)
    _, health = bench.http_json(f"http://127.0.0.1:{port}/health")
    ports = [m["port"] for m in health["models"]]
    engines = [m["pid"] for m in health["models"]]
    targets["modelmux"], procs["modelmux"] = port, mm
    if os.environ.get("B"):
        b, bport = bench.start_modelmux(work, "b", os.environ["B"], EXTRA)
        targets["b"], procs["b"] = bport, b
    if os.environ.get("PEERS", "1") != "0":
        for name, start in (("nginx", bench.start_nginx), ("haproxy", bench.start_haproxy)):
            p, pport = start(ports, work)
            targets[name], procs[name] = pport, p
    if os.environ.get("DIRECT") == "1":
        targets["direct"], procs["direct"] = None, None
    results = {n: [] for n in targets}
    try:
        for r in range(rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for name in order:
                kind = "modelmux" if name == "b" else name
                urls, bodies = bench.target_urls(kind, targets, ports, targets[name],
                                                 "/v1/completions", BODIES)
                if name == "direct":
                    # Both engines, each with its own model, as the proxies use them.
                    urls = [f"http://127.0.0.1:{p}/v1/completions" for p in ports]
                    bodies = BODIES
                samples = os.path.join(work, f"{name}-{r}.txt")
                cmd = [os.path.join(bench.BIN, "mmx-loadgen"), "--concurrency", str(concurrency),
                       "--label", name, "--duration", "5", "--warmup", "1", "--samples", samples]
                for u in urls:
                    cmd += ["--url", u]
                for body in bodies:
                    cmd += ["--body", json.dumps(body)]
                pids = proxy_pids(name, procs[name])
                before, engines_before = schedstat(pids), schedstat(engines)
                usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                out = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout)
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                run, wait, turns = [b - a for a, b in zip(before, schedstat(pids))]
                engines_run = schedstat(engines)[0] - engines_before[0]
                loadgen = (usage.ru_utime + usage.ru_stime
                           - usage_before.ru_utime - usage_before.ru_stime)
                with open(samples) as f:
                    totals = sorted(int(line.split()[2]) for line in f if line.strip())
                n, q = len(totals), out["requests"]
                p1, p10 = totals[n // 100] / totals[n // 2], totals[n // 10] / totals[n // 2]
                results[name].append((out["rps"], out["p99_ms"]))
                print(f"{r} {name:8} p1/p50 {p1:.2f} p10/p50 {p10:.2f} rps {out['rps']:.0f} "
                      f"p50 {out['p50_ms']:.2f} p90 {out['p90_ms']:.2f} p99 {out['p99_ms']:.2f} ms | "
                      f"run {run / q / 1e3:.1f} µs wait {wait / q / 1e3:.1f} µs "
                      f"turns {turns / q * 1e3:.0f} per 1k requests | engines "
                      f"{engines_run / q / 1e3:.1f} µs, load generator {loadgen / (q * 6 / 5) * 1e6:.1f} µs",
                      flush=True)
    finally:
        for p in procs.values():
            if p is not None:
                bench.stop(p)
        bench.cleanup()
    for name, rows in results.items():
        print(f"{name:8} median rps {statistics.median(x[0] for x in rows):.0f} "
              f"p99 {statistics.median(x[1] for x in rows):.2f} ms")


if __name__ == "__main__":
    main()
