#!/usr/bin/env python3
"""The same load against direct-to-mock, nginx proxy_pass and knoway, in one run.

Reports ratios, not absolute pass/fail (hack/bench.sh builds and calls this):
  1. small non-streaming chat completions at fixed concurrency (wrk): RPS, and the latency
     added over direct at low concurrency (p50/p99)
  2. concurrent SSE streams held open: RSS per stream
  3. streamed chunks relayed: CPU per chunk; for knoway also through POST /v1/messages
     (every OpenAI chunk translated into Anthropic events) and from an Anthropic backend
     (every Anthropic event translated into OpenAI chunks)
Equal worker counts: nginx worker_processes 1, knoway workers 1, mock 1 thread.
"""
import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
from harness import free_port, wait_port  # noqa: E402  (the same helpers as the tests)
BODY = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "hello there"}],
                   "max_tokens": 8})

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def tree_rss_kib(pid):
    """RSS of a process and its children (nginx: master + worker)."""
    total = rss_kib(pid)
    for c in children(pid):
        total += rss_kib(c)
    return total


def children(pid):
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def cpu_seconds(pid):
    total = 0.0
    for p in [pid] + children(pid):
        with open("/proc/%d/stat" % p) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class Target:
    def __init__(self, name, port, proc):
        self.name, self.port, self.proc = name, port, proc


def start_mock(build, args):
    port = free_port()
    p = subprocess.Popen([os.path.join(build, "tests", "knoway-mockllm"), "--listen",
                          "127.0.0.1:%d" % port, "--threads", "1", "--no-log", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Target("mock", port, p)


def start_nginx(tmp, upstream_port):
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        f.write("""
worker_processes 1;
worker_rlimit_nofile 200000;
daemon off;
pid %(tmp)s/nginx.pid;
error_log %(tmp)s/nginx-error.log warn;
events { worker_connections 50000; use epoll; multi_accept on; }
http {
  access_log %(tmp)s/nginx-access.log;  # on, as by default: knoway logs every request too
  client_body_temp_path %(tmp)s/body; proxy_temp_path %(tmp)s/proxy;
  fastcgi_temp_path %(tmp)s/fcgi; uwsgi_temp_path %(tmp)s/uwsgi; scgi_temp_path %(tmp)s/scgi;
  upstream mock { server 127.0.0.1:%(up)d; keepalive 256; }
  server {
    listen 127.0.0.1:%(port)d backlog=4096;
    keepalive_requests 1000000;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_read_timeout 3600s;
    }
  }
}
""" % {"tmp": tmp, "up": upstream_port, "port": port})
    p = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_port(port)
    return Target("nginx", port, p)


def start_knoway(build, tmp, upstream_port):
    port, admin = free_port(), free_port()
    cfg = os.path.join(tmp, "knoway.yaml")
    with open(cfg, "w") as f:
        f.write("""apiVersion: llm.knoway.dev/v1alpha1
kind: DataPlane
metadata: {name: bench}
spec: {listen: "127.0.0.1:%d", admin: "127.0.0.1:%d", workers: 1, limits: {maxConnections: 100000}}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: mock}
spec: {provider: vLLM, upstream: {baseURL: "http://127.0.0.1:%d/v1"}}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bench}
spec: {match: {models: [bench]}, backendRefs: [{name: mock}], timeout: 1h, streamIdleTimeout: 1h}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: mock2}
spec: {provider: vLLM, upstream: {baseURL: "http://127.0.0.1:%d/v1/"}}
%s---
apiVersion: v1
kind: Secret
metadata: {name: bench-key}
stringData: {apiKey: k}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMBackend
metadata: {name: mock-anthropic}
spec:
  provider: Anthropic
  upstream: {baseURL: "http://127.0.0.1:%d"}
  credentials: {secretRef: {name: bench-key}}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMRoute
metadata: {name: bench-anthropic}
spec: {match: {models: [bench-anthropic]}, backendRefs: [{name: mock-anthropic}], timeout: 1h, streamIdleTimeout: 1h}
""" % (port, admin, upstream_port, upstream_port, "".join(
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: lb-%s}\n"
        "spec: {match: {models: [lb-%s]}, backendRefs: [{name: mock}, {name: mock2}], "
        "loadBalancer: {strategy: %s}, timeout: 1h}\n" % (s.lower(), s.lower(), s)
        for s in STRATEGIES), upstream_port))
    log = open(os.path.join(tmp, "knoway.log"), "w")
    env = dict(os.environ)
    p = subprocess.Popen([os.path.join(build, "dataplane", "knoway-dataplane"), "-c", cfg],
                         stdout=log, stderr=log, env=env)
    wait_port(port)
    return Target("knoway", port, p)


STRATEGIES = ("WeightedRandom", "RoundRobin", "LeastRequest", "Latency")


def stop(t):
    t.proc.send_signal(signal.SIGTERM if t.name != "nginx" else signal.SIGQUIT)
    try:
        t.proc.wait(10)
    except subprocess.TimeoutExpired:
        t.proc.kill()
        t.proc.wait()


def wrk(port, conns, seconds, lua):
    out = subprocess.run(["wrk", "-t1", "-c%d" % conns, "-d%ds" % seconds, "--latency", "-s", lua,
                          "http://127.0.0.1:%d/v1/chat/completions" % port],
                         capture_output=True, text=True, timeout=seconds + 30).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, out)
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: (.*)", out)
    non2xx = int(errors.group(1)) if errors else 0
    if non2xx > 0 or sock:  # an error answer is not throughput: no number from this run
        raise SystemExit("bench: port %d answered %d requests with an error status%s; "
                         "its numbers would count them as throughput"
                         % (port, non2xx, " (socket errors: %s)" % sock.group(1) if sock else ""))
    return {"rps": rps, "p50_ms": pct(50), "p99_ms": pct(99), "non2xx": 0, "socket_errors": ""}


async def hold_streams(port, n, body):
    """Open n streaming requests and wait until each has its response headers."""
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    conns = []

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req)
        await w.drain()
        conns.append((r, w))

    for i in range(0, n, 500):
        await asyncio.gather(*(one() for _ in range(min(500, n - i))))
    return conns


async def relay_streams(port, n, body, path=b"/v1/chat/completions", end=b"data: [DONE]"):
    """n concurrent streams read to the end; returns bytes received and streams completed."""
    req = (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (path, len(body), body))

    async def one():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(req)
        await w.drain()
        data = await r.read()
        w.close()
        return data

    res = await asyncio.gather(*(one() for _ in range(n)))
    return sum(len(d) for d in res), sum(d.count(end) for d in res)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build-release"))
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--streams", type=int, default=10000)
    ap.add_argument("--relay-streams", type=int, default=200)
    ap.add_argument("--relay-chunks", type=int, default=500)
    ap.add_argument("--baseline-build", default="",
                    help="shipping phase: also run this build's knoway-dataplane (a before)")
    ap.add_argument("--phases",
                    default="nonstream,shipping,latency,held,relay,strategies,limits,usage,telemetry")
    ap.add_argument("--guard", type=float, default=0.0,
                    help="exit 1 when knoway's non-stream RPS is below this ratio of nginx's "
                         "(a gross-regression guard for CI; noise must never trip it)")
    a = ap.parse_args()
    phases = a.phases.split(",")
    tmp = tempfile.mkdtemp(prefix="kwbench-")
    for d in ("body", "proxy", "fcgi", "uwsgi", "scgi"):
        os.makedirs(os.path.join(tmp, d), exist_ok=True)
    lua = os.path.join(tmp, "post.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n'
                % json.dumps(BODY))
    results = {"cpu_count": os.cpu_count()}

    # 1. non-streaming: saturation RPS and low-concurrency latency
    if "nonstream" in phases:
        nonstream(a, tmp, lua, results)
    if "shipping" in phases:
        shipping_phase(a, tmp, results)
    if "latency" in phases:
        latency_phase(a, tmp, results)
    if "held" in phases:
        held_phase(a, tmp, results)
    if "relay" in phases:
        relay_phase(a, tmp, results)
    if "strategies" in phases:
        strategies_phase(a, tmp, results)
    if "limits" in phases:
        limits_phase(a, tmp, results)
    if "usage" in phases:
        usage_phase(a, tmp, results)
    if "telemetry" in phases:
        telemetry_phase(a, tmp, results)
    results["ratios"] = ratios(a, results)
    print(json.dumps(results, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
    if a.guard > 0 and "knoway_rps_over_nginx" in results["ratios"]:
        got = results["ratios"]["knoway_rps_over_nginx"]
        if got < a.guard:
            print("bench guard: knoway did %.3fx nginx's RPS, below the guard of %.2fx"
                  % (got, a.guard), file=sys.stderr)
            sys.exit(1)
        print("bench guard: %.3fx nginx's RPS (guard %.2fx)" % (got, a.guard), file=sys.stderr)


def nonstream(a, tmp, lua, results):
    mock = start_mock(a.build, ["--chunks", "8"])
    nginx = start_nginx(tmp, mock.port)
    knoway = start_knoway(a.build, tmp, mock.port)
    try:
        for t in (mock, nginx, knoway):  # warm up keep-alive pools
            wrk(t.port, 8, 1, lua)
        rps = {}
        for t in (mock, nginx, knoway):
            rps[t.name] = wrk(t.port, a.conns, a.seconds, lua)
        lat = {}
        for t in (mock, nginx, knoway):
            lat[t.name] = wrk(t.port, 1, max(3, a.seconds // 2), lua)
        results["nonstream"] = {"saturation_c%d" % a.conns: rps, "latency_c1": lat}
    finally:
        for t in (knoway, nginx, mock):
            stop(t)



def strategies_phase(a, tmp, results):
    """The balancing strategies over two backendRefs (one upstream), interleaved rounds:
    what each costs against WeightedRandom."""
    mock = start_mock(a.build, ["--chunks", "8", "--no-log"])
    knoway = start_knoway(a.build, tmp, mock.port)
    luas = {}
    for s in STRATEGIES:
        luas[s] = os.path.join(tmp, "lb-%s.lua" % s.lower())
        with open(luas[s], "w") as f:
            f.write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = '
                    '"application/json"\n' % json.dumps(json.dumps(dict(json.loads(BODY),
                                                                          model="lb-" + s.lower()))))
    try:
        for s in STRATEGIES:
            wrk(knoway.port, 8, 1, luas[s])
        # RPS on 2 shared cores swings by 20 % between runs; the gateway's CPU time per
        # request is what a strategy can change, and it is steadier
        runs = {s: [] for s in STRATEGIES}
        cpu = {s: [] for s in STRATEGIES}
        secs = max(2, a.seconds // 2)
        for _ in range(5):
            for s in STRATEGIES:
                c0 = cpu_seconds(knoway.proc.pid)
                rps = wrk(knoway.port, a.conns, secs, luas[s])["rps"]
                runs[s].append(rps)
                cpu[s].append(round((cpu_seconds(knoway.proc.pid) - c0) / (rps * secs) * 1e6, 2))
        med = {s: sorted(v)[2] for s, v in runs.items()}
        us = {s: sorted(v)[2] for s, v in cpu.items()}
        results["strategies"] = {
            "rps_median_of_5": med, "rps_runs": runs,
            "cpu_us_per_request_median_of_5": us, "cpu_us_runs": cpu,
            "rps_over_weighted_random": {
                s: round(med[s] / med["WeightedRandom"], 3) for s in STRATEGIES},
            "cpu_per_request_over_weighted_random": {
                s: round(us[s] / us["WeightedRandom"], 3) for s in STRATEGIES}}
        # the decision itself, in a loop: what a strategy adds to a request's ~100 us
        for n in (2, 8):
            out = subprocess.run([os.path.join(a.build, "tests", "knoway-bench-lb"), str(n)],
                                 capture_output=True, text=True, check=True).stdout
            results["strategies"]["decision_ns_%d_refs" % n] = json.loads(out)["ns_per_decision"]
    finally:
        stop(knoway)
        stop(mock)


def held_phase(a, tmp, results):
    """Held streams: the mock holds every first chunk for an hour."""
    mock = start_mock(a.build, ["--ttft-ms", "3600000"])
    nginx = start_nginx(tmp, mock.port)
    knoway = start_knoway(a.build, tmp, mock.port)
    body = json.dumps({"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    held = {}
    try:
        for t in (nginx, knoway):
            time.sleep(0.5)
            base = tree_rss_kib(t.proc.pid)
            c0 = cpu_seconds(t.proc.pid)
            t0 = time.time()
            loop = asyncio.new_event_loop()
            conns = loop.run_until_complete(hold_streams(t.port, a.streams, body))
            time.sleep(2.0)
            rss = tree_rss_kib(t.proc.pid)
            c1, t1 = cpu_seconds(t.proc.pid), time.time()
            time.sleep(3.0)
            idle_cpu = (cpu_seconds(t.proc.pid) - c1) / 3.0
            held[t.name] = {"streams": a.streams, "rss_base_kib": base, "rss_kib": rss,
                            "kib_per_stream": round((rss - base) / a.streams, 2),
                            "open_seconds": round(t1 - t0, 2), "idle_cpu_share": round(idle_cpu, 4)}
            for r, w in conns:
                w.close()
            loop.run_until_complete(asyncio.sleep(0.5))
            loop.close()
        results["held_streams"] = held
    finally:
        for t in (knoway, nginx, mock):
            stop(t)



def relay_phase(a, tmp, results):
    """CPU per relayed chunk."""
    body = json.dumps({"model": "bench", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    mock = start_mock(a.build, ["--chunks", str(a.relay_chunks), "--interval-ms", "5"])
    nginx = start_nginx(tmp, mock.port)
    knoway = start_knoway(a.build, tmp, mock.port)
    messages = json.dumps({"model": "bench", "stream": True, "max_tokens": 1024,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
    anthropic = json.dumps({"model": "bench-anthropic", "stream": True,
                            "messages": [{"role": "user", "content": "hi"}]}).encode()
    relay = {}
    try:
        for name, t, args in (("nginx", nginx, (body,)), ("knoway", knoway, (body,)),
                              ("knoway_messages", knoway,
                               (messages, b"/v1/messages", b"event: message_stop")),
                              ("knoway_from_anthropic", knoway, (anthropic,))):
            c0, t0 = cpu_seconds(t.proc.pid), time.time()
            nbytes, done = asyncio.run(relay_streams(t.port, a.relay_streams, *args))
            cpu = cpu_seconds(t.proc.pid) - c0
            chunks = a.relay_streams * (a.relay_chunks + 2)
            relay[name] = {"streams": a.relay_streams, "completed": done, "chunks": chunks,
                             "bytes": nbytes, "cpu_s": round(cpu, 3),
                             "us_per_chunk": round(cpu / chunks * 1e6, 2),
                             "wall_s": round(time.time() - t0, 2)}
        results["relay"] = relay
    finally:
        for t in (knoway, nginx, mock):
            stop(t)



def interleaved(a, targets, lua):
    """Five interleaved rounds at a.conns connections over targets: RPS and each target's
    own CPU time per request (steadier than RPS on 2 shared cores), medians; then one
    connection for latency."""
    rounds = {n: [] for n in targets}
    cpu = {n: [] for n in targets}
    secs = max(2, a.seconds // 2)
    for _ in range(5):
        for n, t in targets.items():
            c0 = cpu_seconds(t.proc.pid)
            w = wrk(t.port, a.conns, secs, lua)
            rounds[n].append(w["rps"])
            cpu[n].append(round((cpu_seconds(t.proc.pid) - c0) / (w["rps"] * secs) * 1e6, 2))
    lat = {n: wrk(t.port, 1, max(3, a.seconds // 2), lua) for n, t in targets.items()}
    return {
        "rps_median_c%d" % a.conns: {n: sorted(v)[2] for n, v in rounds.items()},
        "rps_rounds": rounds,
        "cpu_us_per_request_median": {n: sorted(v)[2] for n, v in cpu.items()},
        "cpu_us_rounds": cpu,
        "latency_c1": lat,
    }


def start_config(build, tmp, name, spec="", route="spec: {match: {models: [bench]}, backendRefs: [{name: mock}]}\n",
                 extra="", upstream_port=0, env=None):
    """knoway (one worker) on a bench route to the mock, with DataPlane spec lines, the
    route's spec and more documents as given."""
    port, admin = free_port(), free_port()
    cfg = os.path.join(tmp, "%s.yaml" % name)
    with open(cfg, "w") as f:
        f.write("apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: b}\n"
                "spec:\n  listen: \"127.0.0.1:%d\"\n  admin: \"127.0.0.1:%d\"\n  workers: 1\n"
                "  limits: {maxConnections: 100000}\n%s"
                "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: mock}\n"
                "spec: {provider: vLLM, upstream: {baseURL: \"http://127.0.0.1:%d/v1\"}}\n"
                "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: bench}\n"
                "%s%s" % (port, admin, spec, upstream_port, route, extra))
    log = open(os.path.join(tmp, "%s.log" % name), "w")
    p = subprocess.Popen([os.path.join(build, "dataplane", "knoway-dataplane"), "-c", cfg],
                         stdout=log, stderr=log, env=dict(os.environ, **(env or {})))
    wait_port(port)
    return Target(name, port, p)


def key_lua(tmp):
    """wrk's script for the bench body with the bench consumer's API key."""
    lua = os.path.join(tmp, "post-key.lua")
    with open(lua, "w") as f:
        f.write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n'
                'wrk.headers["Authorization"] = "Bearer sk-bench-0123456789abcdef"\n' % json.dumps(BODY))
    return lua


def warm(targets, lua):
    """A second of traffic to each target (keep-alive pools), which must all answer 2xx."""
    for t in targets.values():
        wrk(t.port, 8, 1, lua)


def limits_phase(a, tmp, results):
    """What identity and limits cost: the same route plain, with an API key and a local
    limit, and with a Global (Redis) limit; saturation RPS in interleaved rounds, and the
    latency one connection sees."""
    mock = start_mock(a.build, ["--chunks", "8", "--no-log"])
    rport = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(rport)
    consumer = ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {k: sk-bench-0123456789abcdef}\n"
                "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\nmetadata: {name: bench}\n"
                "spec: {apiKeys: [{secretRef: {name: keys}}]}\n")
    limit = ("  rateLimits: [{name: rpm, key: Consumer, requests: {limit: 1000000000, window: 1m}%s}]\n")
    configs = {
        "plain": ("", "", ""),
        "key_local_limit": ("", limit % "", consumer),
        "key_global_limit": ("  redis: {url: \"redis://127.0.0.1:%d\"}\n" % rport,
                             limit % ", scope: Global", consumer),
    }
    targets = {name: start_config(a.build, tmp, "limits-" + name, spec,
                                  "spec:\n  match: {models: [bench]}\n  backendRefs: [{name: mock}]\n"
                                  + rl, extra, mock.port)
               for name, (spec, rl, extra) in configs.items()}
    lua = key_lua(tmp)
    try:
        warm(targets, lua)
        results["limits"] = interleaved(a, targets, lua)
    finally:
        for t in targets.values():
            stop(t)
        stop(mock)
        redis.kill()
        redis.wait()


def compare_configs(a, tmp, prefix, configs, mock):
    """knoway once per DataPlane spec in configs (name -> spec lines) on the bench route to
    mock: warmed up, then interleaved rounds of small chat completions (interleaved())."""
    targets = {name: start_config(a.build, tmp, "%s-%s" % (prefix, name), spec,
                                  upstream_port=mock.port)
               for name, spec in configs.items()}
    lua = os.path.join(tmp, "post.lua")
    try:
        for t in targets.values():
            wrk(t.port, 8, 1, lua)
        return interleaved(a, targets, lua)
    finally:
        for t in targets.values():
            stop(t)


def usage_phase(a, tmp, results):
    """What the usage ledger costs: the same route without and with the ledger shipping to
    a PostgreSQL started here; interleaved rounds, RPS and CPU per request (the data
    plane's own; PostgreSQL's CPU is reported beside it), medians of 5."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
    from harness import Postgres  # noqa: E402 - the tests' helper: initdb, pg_ctl
    mock = start_mock(a.build, ["--chunks", "8", "--no-log"])
    pg = Postgres()
    dsn = os.path.join(pg.dir, "dsn")
    with open(dsn, "w") as f:
        f.write(pg.dsn() + "\n")
    configs = {
        "plain": "",
        "ledger_postgres": "  usage:\n    spool: {dir: \"%s\"}\n"
                           "    sinks: [{postgres: {dsnFile: \"%s\"}}]\n"
                           % (os.path.join(tmp, "usage-spool"), dsn),
    }
    try:
        results["usage"] = compare_configs(a, tmp, "usage", configs, mock)
        results["usage"]["rows_in_postgres"] = int(pg.query("SELECT count(*) FROM knoway_usage")[0][0])
    finally:
        stop(mock)
        pg.cleanup()


class Sink:
    """An OTLP/HTTP endpoint that counts and discards (the collector's cost stays out)."""

    def __init__(self):
        import http.server
        import threading
        self.posts = 0
        sink = self

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                sink.posts += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]


def telemetry_phase(a, tmp, results):
    """What tracing costs on top of the metrics (always on): no export, spans at
    sampleRatio 1.0 and at 0.01 (OTLP/HTTP JSON to a sink that discards); interleaved
    rounds, RPS and the data plane's CPU per request, medians of 5."""
    mock = start_mock(a.build, ["--chunks", "8", "--no-log"])
    sink = Sink()
    configs = {
        "metrics_only": "",
        "trace_1.0": "  telemetry: {otlp: {endpoint: \"%s\", sampleRatio: 1}}\n" % sink.url(),
        "trace_0.01": "  telemetry: {otlp: {endpoint: \"%s\", sampleRatio: 0.01}}\n" % sink.url(),
    }
    try:
        results["telemetry"] = compare_configs(a, tmp, "telemetry", configs, mock)
        results["telemetry"]["otlp_posts"] = sink.posts
    finally:
        stop(mock)
        sink.server.shutdown()


ALLOCATORS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
              "mimalloc": "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"}


def shipping_phase(a, tmp, results):
    """The request path as it ships, against nginx in the same interleaved rounds: knoway
    with the default configuration, knoway with an API key (LLMConsumer), a local request
    limit, metrics and spans at sampleRatio 0.01, and the default configuration under
    other allocators (LD_PRELOAD, when the distribution's library is installed)."""
    mock = start_mock(a.build, ["--chunks", "8", "--no-log"])
    sink = Sink()
    consumer = ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {k: sk-bench-0123456789abcdef}\n"
                "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\nmetadata: {name: bench}\n"
                "spec: {apiKeys: [{secretRef: {name: keys}}]}\n")
    route = ("spec:\n  match: {models: [bench]}\n  backendRefs: [{name: mock}]\n"
             "  rateLimits: [{name: rpm, key: Consumer, requests: {limit: 1000000000, window: 1m}}]\n")
    targets = {"nginx": start_nginx(tmp, mock.port),
               "knoway": start_config(a.build, tmp, "ship-default", upstream_port=mock.port),
               "knoway_key_limit_trace": start_config(
                   a.build, tmp, "ship-full",
                   "  telemetry: {otlp: {endpoint: \"%s\", sampleRatio: 0.01}}\n" % sink.url(),
                   route, consumer, mock.port)}
    if a.baseline_build:
        targets["knoway_baseline"] = start_config(a.baseline_build, tmp, "ship-baseline",
                                                  upstream_port=mock.port)
    for name, lib in ALLOCATORS.items():
        if os.path.exists(lib):
            targets["knoway_" + name] = start_config(a.build, tmp, "ship-" + name,
                                                     upstream_port=mock.port,
                                                     env={"LD_PRELOAD": lib})
    lua = key_lua(tmp)
    try:
        warm(targets, lua)
        r = interleaved(a, targets, lua)
        med = r["rps_median_c%d" % a.conns]
        r["rps_over_nginx"] = {n: round(v / med["nginx"], 3) for n, v in med.items()}
        results["shipping"] = r
    finally:
        for t in targets.values():
            stop(t)
        stop(mock)
        sink.server.shutdown()


LATENCY_LOADS = [(1000, 1, 1), (1000, 50, 1), (1000, 50, 50),
                 (5000, 1, 1), (5000, 50, 1), (5000, 50, 50)]


def latency_phase(a, tmp, results):
    """Added latency below saturation, as TensorZero and agentgateway publish it: a fixed
    rate (tests/tools/loadgen.c: latency from the scheduled time, so queueing counts) of
    small chat completions over 1 and 50 connections, steady and in bursts of 50, against
    the mock directly, nginx and knoway in turn; added = through the proxy minus direct."""
    mock = start_mock(a.build, ["--chunks", "8", "--no-log"])
    nginx = start_nginx(tmp, mock.port)
    knoway = start_config(a.build, tmp, "latency", upstream_port=mock.port)
    loadgen = os.path.join(a.build, "tests", "knoway-loadgen")
    body = BODY
    out = []
    try:
        for t in (mock, nginx, knoway):
            wrk(t.port, 8, 1, os.path.join(tmp, "post.lua"))
        secs = max(2, a.seconds // 2)
        for rate, conns, burst in LATENCY_LOADS:
            row = {"rate": rate, "conns": conns, "burst": burst}
            for label, t in (("mock", mock), ("nginx", nginx), ("knoway", knoway)):
                r = json.loads(subprocess.run(
                    [loadgen, "--port", str(t.port), "--body", body, "--rate", str(rate),
                     "--conns", str(conns), "--burst", str(burst), "--seconds", str(secs),
                     "--warmup", "1"], capture_output=True, text=True, check=True).stdout)
                row[label] = {k: r[k] for k in ("p50_ms", "p99_ms", "completed", "errors")}
            for n in ("nginx", "knoway"):
                row[n + "_added_p50_ms"] = round(row[n]["p50_ms"] - row["mock"]["p50_ms"], 3)
                row[n + "_added_p99_ms"] = round(row[n]["p99_ms"] - row["mock"]["p99_ms"], 3)
            out.append(row)
        results["latency"] = out
    finally:
        for t in (knoway, nginx, mock):
            stop(t)


def ratios(a, results):
    out = {}
    if "nonstream" in results:
        sat = results["nonstream"]["saturation_c%d" % a.conns]
        lc = results["nonstream"]["latency_c1"]
        out.update({
        "knoway_rps_over_nginx": round(sat["knoway"]["rps"] / sat["nginx"]["rps"], 3),
        "knoway_rps_over_direct": round(sat["knoway"]["rps"] / sat["mock"]["rps"], 3),
        "nginx_rps_over_direct": round(sat["nginx"]["rps"] / sat["mock"]["rps"], 3),
        "knoway_added_p50_ms": round(lc["knoway"]["p50_ms"] - lc["mock"]["p50_ms"], 3),
        "knoway_added_p99_ms": round(lc["knoway"]["p99_ms"] - lc["mock"]["p99_ms"], 3),
        "nginx_added_p50_ms": round(lc["nginx"]["p50_ms"] - lc["mock"]["p50_ms"], 3),
        "nginx_added_p99_ms": round(lc["nginx"]["p99_ms"] - lc["mock"]["p99_ms"], 3)})
    if "limits" in results:
        med = results["limits"]["rps_median_c%d" % a.conns]
        lat = results["limits"]["latency_c1"]
        out["key_and_local_limit_rps_over_plain"] = round(med["key_local_limit"] / med["plain"], 3)
        out["key_and_global_limit_rps_over_plain"] = round(med["key_global_limit"] / med["plain"], 3)
        cpu = results["limits"]["cpu_us_per_request_median"]
        out["key_and_local_limit_cpu_per_request_over_plain"] = round(
            cpu["key_local_limit"] / cpu["plain"], 3)
        out["key_and_global_limit_cpu_per_request_over_plain"] = round(
            cpu["key_global_limit"] / cpu["plain"], 3)
        out["global_limit_added_p50_ms"] = round(lat["key_global_limit"]["p50_ms"] - lat["plain"]["p50_ms"], 3)
        out["global_limit_added_p99_ms"] = round(lat["key_global_limit"]["p99_ms"] - lat["plain"]["p99_ms"], 3)
    if "usage" in results:
        med = results["usage"]["rps_median_c%d" % a.conns]
        cpu = results["usage"]["cpu_us_per_request_median"]
        lat = results["usage"]["latency_c1"]
        out["ledger_rps_over_plain"] = round(med["ledger_postgres"] / med["plain"], 3)
        out["ledger_cpu_per_request_over_plain"] = round(cpu["ledger_postgres"] / cpu["plain"], 3)
        out["ledger_added_p50_ms"] = round(lat["ledger_postgres"]["p50_ms"] - lat["plain"]["p50_ms"], 3)
    if "telemetry" in results:
        med = results["telemetry"]["rps_median_c%d" % a.conns]
        cpu = results["telemetry"]["cpu_us_per_request_median"]
        for k in ("trace_1.0", "trace_0.01"):
            out["%s_rps_over_metrics_only" % k] = round(med[k] / med["metrics_only"], 3)
            out["%s_cpu_per_request_over_metrics_only" % k] = round(cpu[k] / cpu["metrics_only"], 3)
    if "held_streams" in results:
        held = results["held_streams"]
        out["knoway_kib_per_stream"] = held["knoway"]["kib_per_stream"]
        out["nginx_kib_per_stream"] = held["nginx"]["kib_per_stream"]
    if "relay" in results:
        relay = results["relay"]
        out["knoway_cpu_per_chunk_over_nginx"] = round(
            relay["knoway"]["us_per_chunk"] / max(relay["nginx"]["us_per_chunk"], 0.001), 3)
        out["knoway_messages_cpu_per_chunk_over_nginx"] = round(
            relay["knoway_messages"]["us_per_chunk"] / max(relay["nginx"]["us_per_chunk"], 0.001), 3)
        out["knoway_messages_cpu_per_chunk_over_passthrough"] = round(
            relay["knoway_messages"]["us_per_chunk"] / max(relay["knoway"]["us_per_chunk"], 0.001), 3)
        out["knoway_from_anthropic_cpu_per_chunk_over_passthrough"] = round(
            relay["knoway_from_anthropic"]["us_per_chunk"] / max(relay["knoway"]["us_per_chunk"], 0.001), 3)
    return out


if __name__ == "__main__":
    main()
