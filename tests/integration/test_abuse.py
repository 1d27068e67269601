"""Abuse and exhaustion, tried as an attacker or an unlucky operator would (issue #12):
slow clients on every listener with probes answering throughout, many large bodies at
once under the memory budget, memory given back after a burst, pathological JSON, per-IP
connection limits, fd exhaustion and recovery."""
import json
import os
import socket
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Dataplane, Mock, backend, post, request, route,  # noqa: E402
                     slow_flood, timed_probe, wait_for)

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def raw(port, data, host="127.0.0.1", src="127.0.0.1"):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect((host, port))
    if data:
        s.sendall(data)
    return s


def read_all(s, timeout=10.0):
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (ConnectionResetError, socket.timeout):
        pass
    return out


def big_body(nbytes, model="demo"):
    """A chat request of about nbytes: one long user message."""
    filler = "x" * max(0, nbytes - 100)
    return json.dumps({"model": model, "messages": [{"role": "user", "content": filler}]})


class ReadTimeoutAndMemory(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        cls.dp = Dataplane(
            backend("demo", cls.mock.url())
            + backend("held", cls.mock.url(), headers={"x-mock-latency-ms": "1500"})
            + route("demo", ["demo"], ["demo"]) + route("held", ["held"], ["held"]),
            workers=2,
            extra_spec="  limits: {readTimeout: 1s, maxMemoryBytes: 41943040}\n")

    @classmethod
    def tearDownClass(cls):
        cls.dp.stop()
        cls.mock.stop()

    def test_slow_body_gets_408(self):
        """Regression: a body trickling in held the request (and its memory) until the 75 s
        idle timeout; readTimeout bounds headers + body."""
        t = time.time()
        s = raw(self.dp.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"mo")
        for _ in range(4):  # a byte every 300 ms: never idle, never done
            time.sleep(0.3)
            try:
                s.send(b"d")
            except OSError:
                break
        resp = read_all(s)
        s.close()
        self.assertTrue(resp.startswith(b"HTTP/1.1 408 "), resp[:200])
        err = json.loads(resp.split(b"\r\n\r\n", 1)[1])["error"]
        self.assertEqual(err["code"], "request_timeout")
        self.assertLess(time.time() - t, 3.0)
        wait_for(lambda: '"status":408' in self.dp.logs())

    def test_slow_headers_closed(self):
        t = time.time()
        s = raw(self.dp.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        for _ in range(5):
            time.sleep(0.3)
            try:
                s.send(b"X-A: b\r\n")
            except OSError:
                break
        read_all(s)  # the server closed it
        s.close()
        self.assertLess(time.time() - t, 3.5)
        # a prompt client on the same listener was never held up
        self.assertEqual(post(self.dp.port, "/v1/chat/completions", CHAT)[0], 200)

    def test_pathological_json_gets_413_with_a_body(self):
        """Regression: an exhausted arena answered 400 with an empty body and no log field."""
        body = '{"model":"demo","messages":[{"role":"user","content":"hi"}],"x":[' + \
               ",".join(["0"] * 400000) + "]}"
        s, h, b = post(self.dp.port, "/v1/chat/completions", body)
        self.assertEqual(s, 413, b)
        err = json.loads(b)["error"]
        self.assertEqual(err["code"], "request_too_large")
        self.assertIn("times its size", err["message"])
        rid = h["x-request-id"]
        line = wait_for(lambda: [l for l in self.dp.logs().splitlines() if rid in l])
        self.assertIn('"error":"the request body needs more memory', line[0])

    def test_memory_budget_admission(self):
        """Many large bodies at once: the 40 MiB budget admits what fits, the rest get 503
        with Retry-After; every admitted request completes; the budget is given back."""
        results = []
        peak = [0]
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                m = self.dp.metrics()
                peak[0] = max(peak[0], m.get('knoway_memory_budget_bytes{state="used"}', 0))
                time.sleep(0.05)

        def one(i):
            st, h, b = post(self.dp.port, "/v1/chat/completions", big_body(4 << 20, "held"),
                            timeout=30)
            results.append((st, h, b))

        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        stop.set()
        sampler.join()
        codes = sorted(r[0] for r in results)
        self.assertEqual(len(codes), 8)
        self.assertTrue(set(codes) <= {200, 503}, codes)
        self.assertIn(200, codes)
        self.assertIn(503, codes)
        for st, h, b in results:
            if st == 503:
                self.assertEqual(json.loads(b)["error"]["code"], "memory_limit")
                self.assertEqual(h["retry-after"], "1")
        # admission keeps the budget: what is admitted may overshoot it by one request at most
        self.assertLess(peak[0], 40 * 1024 * 1024 + 2 * (4 << 20) + (2 << 20), peak)
        used = wait_for(lambda: self.dp.metrics()['knoway_memory_budget_bytes{state="used"}']
                        < 2 * 1024 * 1024 or None, 5)
        self.assertTrue(used)
        self.assertGreaterEqual(self.dp.metrics()['knoway_requests_rejected_total{reason="memory"}'], 1)
        self.assertEqual(post(self.dp.port, "/v1/chat/completions", CHAT)[0], 200)

    def test_per_client_connection_limit(self):
        """A limit of 4 per client IP (one worker): idle connections from one address stop
        being accepted past it; another address is still served."""
        dp = Dataplane(backend("demo", self.mock.url()) + route("demo", ["demo"], ["demo"]),
                       workers=1, extra_spec="  limits: {maxConnectionsPerClient: 4}\n")
        held = [raw(dp.port, b"") for _ in range(12)]
        try:
            time.sleep(0.3)
            closed = 0
            for s in held:
                s.settimeout(0.5)
                try:
                    if s.recv(1) == b"":
                        closed += 1
                except socket.timeout:
                    pass
                except ConnectionResetError:
                    closed += 1
            self.assertEqual(closed, 8)
            s = raw(dp.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    src="127.0.0.2")
            self.assertTrue(read_all(s).startswith(b"HTTP/1.1 200"))
            s.close()
        finally:
            for s in held:
                s.close()
            dp.stop()


def get_from(port, path, src="127.0.0.1", timeout=2.0):
    s = raw(port, ("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode(),
            src=src)
    out = read_all(s, timeout)
    s.close()
    return int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else 0


class Probes(unittest.TestCase):
    def test_probes_answer_under_slow_connections_and_debug_is_local(self):
        """Regression: 64 slow connections to the admin listener made /healthz and /readyz
        time out for 32 s (and the chart's liveness probe would restart the pod); /debug/*
        was readable by anything that reached the admin port."""
        mock = Mock()
        dp = Dataplane(backend("demo", mock.url()) + route("demo", ["demo"], ["demo"]),
                       extra_spec='  adminDebugFrom: ["127.0.0.1/32"]\n')
        slow = []
        try:
            for i in range(96):  # from six other addresses: each gets at most 16 slots
                try:
                    slow.append(raw(dp.admin, b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                                    src="127.0.0.%d" % (2 + i % 6)))
                except OSError:
                    pass
            # ... and as many slow clients on the API listener
            slow += [raw(dp.port, b"POST /v1/chat/completions HTTP/1.1\r\n") for _ in range(64)]
            time.sleep(0.2)
            for _ in range(5):
                t = time.time()
                self.assertEqual(get_from(dp.admin, "/healthz"), 200)
                self.assertEqual(get_from(dp.admin, "/readyz"), 200)
                self.assertLess(time.time() - t, 1.0)
                time.sleep(0.1)
            self.assertEqual(get_from(dp.admin, "/debug/config"), 200)
            self.assertEqual(get_from(dp.admin, "/debug/config", src="127.0.0.9"), 403)
            self.assertEqual(get_from(dp.admin, "/metrics", src="127.0.0.9"), 200)
        finally:
            for s in slow:
                s.close()
            dp.stop()
            mock.stop()


class ProbesUnderAFlood(unittest.TestCase):
    def test_1100_slow_connections_from_70_addresses(self):
        """Regression: 1,100 slow connections from 70 addresses (16 allowed per address,
        1,024 in all) kept /healthz and /readyz from answering for the whole attack. The
        listener now closes the connection that waited longest for its headers."""
        mock = Mock()
        dp = Dataplane(backend("demo", mock.url()) + route("demo", ["demo"], ["demo"]))
        try:
            res, opened = slow_flood(dp.admin, 5.0, probe=lambda: (
                timed_probe(dp.admin, "/healthz"), timed_probe(dp.admin, "/readyz")))
            flat = [p for pair in res for p in pair]
            slow = [p for p in flat if p[0] != 200 or p[1] >= 1.0]
            print("\n    %d probes, %d attack connections opened, slowest probe %.3f s"
                  % (len(flat), opened, max(p[1] for p in flat)))
            self.assertGreaterEqual(opened, 1100, "the attack filled the listener")
            self.assertEqual(slow, [], "every probe answered 200 within 1 s")
        finally:
            dp.stop()
            mock.stop()


class OversizedEvent(unittest.TestCase):
    """An upstream SSE event over the 4 MiB limit ends the stream with a well-framed error
    event: none of the oversized event reaches the client (4 MiB of it once did, without
    its terminator, and the error event was glued to it)."""

    def test_the_stream_ends_framed(self):
        import http.server

        class Upstream(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers["content-length"]))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()

                def chunk(b):
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                ev = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "demo",
                      "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
                chunk(b"data: " + json.dumps(ev).encode() + b"\n\n")
                ev["choices"][0]["delta"]["content"] = "x" * (5 << 20)
                data = b"data: " + json.dumps(ev).encode() + b"\n\n"
                try:
                    for i in range(0, len(data), 65536):
                        chunk(data[i:i + 65536])
                    chunk(b"data: [DONE]\n\n")
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    pass  # the gateway gave up on it

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        dp = Dataplane(backend("b", "http://127.0.0.1:%d/v1" % srv.server_address[1])
                       + route("demo", ["demo"], ["b"]))
        try:
            status, _, body = post(dp.port, "/v1/chat/completions",
                                   {"model": "demo", "stream": True,
                                    "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
            self.assertEqual(status, 200)
            self.assertLess(len(body), 4096, "nothing of the oversized event was relayed")
            self.assertTrue(body.endswith(b"\n\n"))
            events = [e for e in body.decode().split("\n\n") if e]
            self.assertEqual(len(events), 2, events)
            self.assertIn('"content": "hi"', events[0])
            err = json.loads(events[1][len("data: "):])["error"]
            self.assertEqual(err["code"], "upstream_error")
            self.assertIn("too large", err["message"])
        finally:
            dp.stop()
            srv.shutdown()


class Liveness(unittest.TestCase):
    """/healthz reflects the worker loops: a stuck loop (here one stopped by ptrace, as a
    loop spinning in a pathological request or a blocking call would be) fails liveness
    within DP_LIVENESS_MS (5 s), and it passes again once the loop runs. It once answered
    200 while both workers were stuck for 93 s."""

    def test_healthz_fails_while_a_worker_is_stuck(self):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        PTRACE_SEIZE, PTRACE_INTERRUPT, PTRACE_DETACH = 0x4206, 0x4207, 17
        dp = Dataplane(backend("b", "http://127.0.0.1:9") + route("demo", ["demo"], ["b"]))
        try:
            self.assertEqual(request("GET", dp.admin, "/healthz")[0], 200)
            task = "/proc/%d/task" % dp.proc.pid
            tids = [int(t) for t in os.listdir(task)
                    if open("%s/%s/comm" % (task, t)).read().strip() == "knoway-w1"]
            self.assertEqual(len(tids), 1, "worker threads are named")
            tid = tids[0]
            self.assertEqual(libc.ptrace(PTRACE_SEIZE, tid, None, None), 0, ctypes.get_errno())
            self.assertEqual(libc.ptrace(PTRACE_INTERRUPT, tid, None, None), 0)
            os.waitpid(tid, 0x40000000)  # __WALL: the stop has happened
            t0 = time.time()
            status = 200
            while status == 200 and time.time() - t0 < 15:
                status, _, body = request("GET", dp.admin, "/healthz")
                time.sleep(0.2)
            self.assertEqual(status, 503)
            self.assertIn(b"worker 1 has not answered", body)
            self.assertLess(time.time() - t0, 8)
            self.assertEqual(libc.ptrace(PTRACE_DETACH, tid, None, None), 0)
            deadline = time.time() + 5
            while request("GET", dp.admin, "/healthz")[0] != 200 and time.time() < deadline:
                time.sleep(0.1)
            self.assertEqual(request("GET", dp.admin, "/healthz")[0], 200)
        finally:
            dp.stop()


class FileDescriptors(unittest.TestCase):
    def test_accepts_again_as_soon_as_descriptors_are_free(self):
        """Regression: after EMFILE the data plane stopped accepting for tens of seconds,
        until one of the worker's own connections closed. Descriptors run out here by
        lowering the process's limit below what it holds, then come back."""
        import resource
        mock = Mock()
        dp = Dataplane(backend("demo", mock.url()) + route("demo", ["demo"], ["demo"]), workers=1)
        try:
            idle = [raw(dp.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(4)]
            for s in idle:  # keep-alive connections that stay open
                self.assertIn(b"200", s.recv(65536))
            soft, hard = resource.prlimit(dp.proc.pid, resource.RLIMIT_NOFILE)
            used = len(os.listdir("/proc/%d/fd" % dp.proc.pid))
            resource.prlimit(dp.proc.pid, resource.RLIMIT_NOFILE, (used, hard))
            waiting = raw(dp.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            time.sleep(0.5)  # accept fails with EMFILE meanwhile
            resource.prlimit(dp.proc.pid, resource.RLIMIT_NOFILE, (soft, hard))
            t = time.time()
            resp = read_all(waiting, timeout=5)
            self.assertTrue(resp.startswith(b"HTTP/1.1 200"), resp[:100])
            self.assertLess(time.time() - t, 1.0)
            self.assertIn("out of file descriptors", dp.logs())
            for s in idle + [waiting]:
                s.close()
        finally:
            dp.stop()
            mock.stop()


    def test_connection_limit_clamped_to_the_fd_limit(self):
        dp = Dataplane(route("demo", ["demo"], ["demo"]) + backend("demo", "http://127.0.0.1:1/v1"),
                       workers=2, wrap=("prlimit", "--nofile=600:600", "--"))
        try:
            line = [l for l in dp.logs().splitlines() if "maxConnections lowered" in l]
            self.assertEqual(len(line), 1, dp.logs())
            # (600 - 128 reserved - 8 per worker) / 2
            self.assertIn('"configured":"20000","effective":"228","nofile":"600"', line[0])
        finally:
            dp.stop()


class MemoryGivenBack(unittest.TestCase):
    @unittest.skipIf(os.environ.get("KW_SANITIZE") == "ON",
                     "ASan's allocator keeps freed memory in its quarantine: RSS says nothing")
    def test_rss_returns_after_a_burst_of_slow_uploads(self):
        """Regression: 30 slow 10 MB uploads took RSS from 24 to 318 MB, never given back."""
        mock = Mock()
        dp = Dataplane(backend("demo", mock.url()) + route("demo", ["demo"], ["demo"]), workers=2,
                       extra_spec="  limits: {maxBodyBytes: 12582912}\n")
        try:
            post(dp.port, "/v1/chat/completions", CHAT)
            base = dp.rss_kib()
            body = big_body(7 << 20).encode()
            hdr = ("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                   "\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)).encode()
            socks = [raw(dp.port, hdr, src="127.0.0.%d" % (2 + i % 8)) for i in range(30)]
            step = len(body) // 10
            for k in range(10):  # all 30 upload in parallel, slowly
                for s in socks:
                    s.sendall(body[k * step:(k + 1) * step if k < 9 else len(body)])
                time.sleep(0.05)
            during = dp.rss_kib()
            for s in socks:
                self.assertTrue(read_all(s).startswith(b"HTTP/1.1 200"))
                s.close()
            after = wait_for(lambda: dp.rss_kib() < base + 40 * 1024 and dp.rss_kib(), 8)
            print("\n    RSS: %d KiB before, %d during 30 uploads of 7 MiB, %d after"
                  % (base, during, after))
            self.assertGreater(during, base + 100 * 1024)  # the burst was real
        finally:
            dp.stop()
            mock.stop()


if __name__ == "__main__":
    unittest.main()
