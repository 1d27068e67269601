#!/usr/bin/env python3
"""Control-plane benchmark (not pass/fail): against a real kube-apiserver + etcd
(hack/kube-apiserver.sh), with real kubectl, the mock provider, knoway-controller and N
data planes as processes.

  1. propagation: kubectl apply of a route change -> the new model is served by every data
     plane; p50/p99 over ROUNDS changes, with 1 and 10 data planes, measured both from the
     start of kubectl and from the moment kubectl returned;
  2. scale: controller RSS and snapshot build time with 1,000 and 10,000 resources
     (half LLMBackends, half LLMRoutes);
  3. fan-out: N simulated data planes (asyncio long-pollers speaking the discovery
     protocol, gzip accepted; each checks that the body's version is the one announced and
     acks it) on one controller: propagation of a route change to all of them, then the
     controller's CPU share, RSS and descriptors while they idle.

Usage: python3 hack/bench-controller.py [--rounds 40] [--sizes 1000,10000]
       (build first: cmake --build build; results go to stdout, summarised in
       docs/performance.md)
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(SRC, "tests", "integration"))
sys.path.insert(0, os.path.join(SRC, "tests", "e2e"))
import harness  # noqa: E402
import test_controller as e2e  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100.0 * (len(xs) - 1))))]


def propagation(ctl, token, n, rounds, mock):
    dps = [e2e.dataplane(ctl.port, token, "bench-%d-%d" % (n, i),
                         os.path.join(e2e.DIR, "bench-%d-%d.json" % (n, i))) for i in range(n)]
    try:
        e2e.apply(e2e.backend("bench", mock.url()) + e2e.route("bench", ["warm"], ["bench"]))
        for dp in dps:
            e2e.wait_for(lambda: e2e.chat(dp.port, "warm")[0] == 200, 20, "warm")
        total, after = [], []
        for i in range(rounds):
            model = "bench-%d-%d" % (n, i)
            t0 = time.time()
            e2e.apply(e2e.route("bench", ["warm", model], ["bench"]))
            t1 = time.time()
            pending = list(dps)
            while pending:
                pending = [dp for dp in pending if e2e.chat(dp.port, model)[0] != 200]
                if pending:
                    time.sleep(0.002)
            t2 = time.time()
            total.append(t2 - t0)
            after.append(t2 - t1)
        print("propagation, %2d data plane%s: from kubectl start p50 %.0f ms p99 %.0f ms; "
              "after kubectl returned p50 %.0f ms p99 %.0f ms (%d changes)"
              % (n, "" if n == 1 else "s", pct(total, 50) * 1e3, pct(total, 99) * 1e3,
                 pct(after, 50) * 1e3, pct(after, 99) * 1e3, rounds), flush=True)
    finally:
        for dp in dps:
            dp.stop()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def scale(ctl, size, mock):
    half = size // 2
    ns = "scale-%d" % size
    e2e.kubectl("create", "namespace", ns)
    docs = []
    for i in range(half):
        docs.append("apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: b%d, "
                    "namespace: %s}\nspec: {provider: vLLM, upstream: {baseURL: \"%s\"}}\n"
                    % (i, ns, mock.url()))
        docs.append("apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r%d, "
                    "namespace: %s}\nspec: {match: {models: [m%d]}, backendRefs: [{name: b%d}]}\n"
                    % (i, ns, i, i))
    t0 = time.time()
    chunks = 8
    procs = []
    for c in range(chunks):
        text = "---\n".join(docs[c::chunks])
        procs.append(subprocess.Popen(["kubectl", "create", "-f", "-"], stdin=subprocess.PIPE,
                                      stdout=subprocess.DEVNULL, env=e2e.ENV, text=True))
        procs[-1].stdin.write(text)
        procs[-1].stdin.close()
    for p in procs:
        p.wait(1800)
    created = time.time() - t0
    key = 'knoway_controller_snapshot_resources{kind="LLMRoute"}'
    e2e.wait_for(lambda: ctl.metrics().get(key, 0) >= half, 600, "all routes in the snapshot")
    time.sleep(2)
    m = ctl.metrics()
    # the build after one change (the decode cache holds the rest): change one route, read
    # the build time
    builds = []
    for i in range(3):
        e2e.apply("apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r0, "
                  "namespace: %s}\nspec: {match: {models: [m0, x%d]}, backendRefs: [{name: b0}]}\n"
                  % (ns, i))
        e2e.wait_for(lambda: ctl.metrics()["knoway_controller_snapshot_builds_total"]
                     > m["knoway_controller_snapshot_builds_total"] + i, 60, "rebuild")
        time.sleep(0.5)
        builds.append(ctl.metrics()["knoway_controller_snapshot_build_seconds"])
    print("scale %5d resources: created by kubectl in %.0f s; controller RSS %.1f MiB; "
          "snapshot build after one route changed %.0f ms (median of 3)"
          % (size, created, rss_kib(ctl.proc.pid) / 1024.0, sorted(builds)[1] * 1e3), flush=True)
    e2e.kubectl("delete", "namespace", ns, "--wait=false")


def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return int(parts[11]) + int(parts[12])  # utime + stime


async def poller(i, port, token, state):
    """One simulated data plane: long-polls, validates, acks; records when it saw each
    version and the models of its routes."""
    import asyncio
    import gzip
    import json as js
    src = "127.0.0.%d" % (2 + i // 50)  # the controller allows 64 polls per address
    node = "sim-%d" % i
    seen = ""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    while not state["stop"]:
        body = js.dumps({"node": {"id": node, "cluster": ""}, "version": seen, "nonce": seen,
                         "error": None}).encode()
        writer.write(b"POST /v1/discovery?wait=30 HTTP/1.1\r\nHost: c\r\nAuthorization: Bearer "
                     + token.encode() + b"\r\nAccept-Encoding: gzip\r\nContent-Type: "
                     b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:] if l)}
        data = await reader.readexactly(int(hdrs.get("content-length", "0")))
        if status == 304:
            continue
        if status != 200:
            raise RuntimeError("poll answered %d" % status)
        if hdrs.get("content-encoding") == "gzip":
            data = gzip.decompress(data)
            state["gzip"] += 1
        doc = js.loads(data)
        if doc["version"] != hdrs["x-knoway-version"]:
            raise RuntimeError("snapshot version differs from its header")
        seen = doc["version"]
        models = {m for r in doc.get("routes", []) for m in r["spec"]["match"]["models"]}
        state["got"][i] = (time.time(), models)
    writer.close()


def fanout(ctl, token, n, rounds, mock):
    import asyncio
    e2e.apply(e2e.backend("fan", mock.url()) + e2e.route("fan", ["fan-0"], ["fan"]))
    state = {"stop": False, "got": {}, "gzip": 0}
    out = {}

    async def run():
        tasks = [asyncio.create_task(poller(i, ctl.port, token, state)) for i in range(n)]

        async def until(pred, timeout):
            deadline = time.time() + timeout
            while not pred():
                for t in tasks:
                    if t.done() and t.exception() is not None:
                        raise t.exception()
                if time.time() > deadline:
                    raise AssertionError("simulated data planes did not converge")
                await asyncio.sleep(0.002)

        await until(lambda: len(state["got"]) == n and
                    all("fan-0" in m for _, m in state["got"].values()), 120)
        lat = []
        for k in range(1, rounds + 1):
            model = "fan-%d" % k
            await asyncio.get_running_loop().run_in_executor(
                None, e2e.apply, e2e.route("fan", ["fan-0", model], ["fan"]))
            t1 = time.time()
            await until(lambda: all(model in m for _, m in state["got"].values()), 60)
            lat.extend(t - t1 for t, _ in state["got"].values())
        pid = ctl.proc.pid
        await asyncio.sleep(2)
        c0, w0 = cpu_ticks(pid), time.time()
        await asyncio.sleep(10)
        idle = (cpu_ticks(pid) - c0) / os.sysconf("SC_CLK_TCK") / (time.time() - w0)
        out.update(lat=lat, idle=idle, rss=rss_kib(pid) / 1024.0,
                   fds=len(os.listdir("/proc/%d/fd" % pid)))
        state["stop"] = True
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(run())
    print("fan-out, %d simulated data planes: after kubectl returned p50 %.0f ms p99 %.0f ms "
          "max %.0f ms (%d changes, every plane); idle: controller %.2f %% of a core, RSS "
          "%.1f MiB, %d fds; %d snapshots gzip-compressed"
          % (n, pct(out["lat"], 50) * 1e3, pct(out["lat"], 99) * 1e3, max(out["lat"]) * 1e3,
             rounds, out["idle"] * 100, out["rss"], out["fds"], state["gzip"]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--planes", default="1,10")
    ap.add_argument("--simulated", type=int, default=1000,
                    help="simulated data planes for the fan-out (0: skip)")
    args = ap.parse_args()
    e2e.setUpModule()
    mock = harness.Mock()
    token = os.path.join(e2e.DIR, "token-bench")
    with open(token, "w") as f:
        f.write("bench-token\n")
    ctl = e2e.Controller("bench", token, leader_elect=False)
    try:
        for n in [int(x) for x in args.planes.split(",") if x]:
            propagation(ctl, token, n, args.rounds, mock)
        if args.simulated > 0:
            fanout(ctl, open(token).read().strip(), args.simulated, min(args.rounds, 20), mock)
        for size in [int(x) for x in args.sizes.split(",") if x]:
            scale(ctl, size, mock)
    finally:
        ctl.stop()
        mock.stop()
        e2e.tearDownModule()


if __name__ == "__main__":
    main()
