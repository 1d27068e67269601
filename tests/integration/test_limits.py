"""Rate limits and budgets: local and global (a real redis-server started here), token
reservations, budgets, mid-stream enforcement, Redis failure modes."""
import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, Mock, Redis, backend, consumer, post, route, sse_data  # noqa: E402

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key):
    return {"Authorization": "Bearer " + key}


def err(resp):
    return json.loads(resp[2])["error"]


def fire(port, n, body=CHAT, headers=None, threads=50):
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        return list(ex.map(lambda _: post(port, "/v1/chat/completions", body, headers, timeout=30),
                           range(n)))


class Local(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        limits = ("  rateLimits:\n"
                  "    - {name: per-user, key: Header/x-user, requests: {limit: 20, window: 1m}}\n"
                  "    - name: vip\n      key: Header/x-user\n"
                  "      clientSelector: {headers: [{name: x-tier, value: vip}]}\n"
                  "      requests: {limit: 2, window: 1h}\n")
        cls.dp = Dataplane(backend("b", cls.mock.url()) + route("demo", ["demo"], ["b"], limits))

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()

    def test_exact_under_concurrency(self):
        res = fire(self.dp.port, 60, headers={"x-user": "burst"})
        ok = [r for r in res if r[0] == 200]
        refused = [r for r in res if r[0] == 429]
        self.assertEqual(len(ok), 20)
        self.assertEqual(len(refused), 40)
        e = err(refused[0])
        self.assertEqual((e["type"], e["code"]), ("requests", "rate_limit_exceeded"))
        h = refused[0][1]
        self.assertEqual(h["x-ratelimit-limit-requests"], "20")
        self.assertEqual(h["x-ratelimit-remaining-requests"], "0")
        self.assertGreaterEqual(int(h["retry-after"]), 1)
        self.assertTrue(h["x-ratelimit-reset-requests"].endswith("s"))
        remaining = sorted(int(r[1]["x-ratelimit-remaining-requests"]) for r in ok)
        self.assertEqual(remaining, list(range(20)))
        # another key has its own bucket
        self.assertEqual(post(self.dp.port, "/v1/chat/completions", CHAT, {"x-user": "x"})[0], 200)

    def test_client_selector(self):
        vip = {"x-user": "v", "x-tier": "vip"}
        codes = [post(self.dp.port, "/v1/chat/completions", CHAT, vip)[0] for _ in range(3)]
        self.assertEqual(codes, [200, 200, 429])
        r = post(self.dp.port, "/v1/chat/completions", CHAT, {"x-user": "v"})
        self.assertEqual(r[0], 200)  # without the header the vip limit does not apply
        self.assertIn("vip", err(post(self.dp.port, "/v1/chat/completions", CHAT, vip))["message"])


class TrustedProxies(unittest.TestCase):
    """Behind an ingress every connection comes from the ingress: with trustedProxies the
    right-most X-Forwarded-For address that is not a trusted proxy is the client (ClientIP
    limits; IPv6 by its /64), and the proxies' own connections are not capped per client.
    Without it the header is ignored (a client cannot pick its bucket)."""

    LIMIT = ("  rateLimits:\n"
             "    - {name: per-ip, key: ClientIP, requests: {limit: 2, window: 1m}}\n")

    def test_forwarded_client_is_the_key(self):
        mock = Mock()
        res = backend("b", mock.url()) + route("demo", ["demo"], ["b"], self.LIMIT)
        dp = Dataplane(res, extra_spec="  trustedProxies: [\"127.0.0.0/8\", \"10.0.0.0/8\"]\n"
                       "  limits: {maxConnectionsPerClient: 4}\n")
        plain = Dataplane(res)
        try:
            def codes(d, xff, n=3):
                return [post(d.port, "/v1/chat/completions", CHAT,
                             {"X-Forwarded-For": xff})[0] for _ in range(n)]
            self.assertEqual(codes(dp, "203.0.113.7"), [200, 200, 429])
            self.assertEqual(codes(dp, "203.0.113.8", 1), [200])
            # a second trusted hop is skipped; what the client wrote on the left is not read
            self.assertEqual(codes(dp, "198.51.100.1, 203.0.113.7, 10.1.2.3", 1), [429])
            self.assertEqual(codes(dp, "203.0.113.7, 203.0.113.9", 2), [200, 200])
            # IPv6: one /64 is one client
            self.assertEqual(codes(dp, "2001:db8:1:2::1", 2), [200, 200])
            self.assertEqual(codes(dp, "2001:db8:1:2:ffff::9", 1), [429])
            self.assertEqual(codes(dp, "2001:db8:1:3::1", 1), [200])
            # not trusted: the header is ignored, everyone is 127.0.0.1
            self.assertEqual(codes(plain, "203.0.113.1", 1) + codes(plain, "203.0.113.2", 2),
                             [200, 200, 429])
            # the proxy's own connections are not capped at maxConnectionsPerClient (4)
            socks = [socket.create_connection(("127.0.0.1", dp.port)) for _ in range(12)]
            time.sleep(0.3)
            for s in socks:
                s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            for s in socks:
                s.settimeout(5)
                self.assertTrue(s.recv(64).startswith(b"HTTP/1.1 200"))
                s.close()
        finally:
            dp.stop()
            plain.stop()
            mock.stop()


class Global(unittest.TestCase):
    """Two data planes, one Redis."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.mock = Mock(threads=2)
        cls.failing = Mock("--behaviour", json.dumps({"status": 500}))
        # exactness is the claim here, not the timeout: a Redis answer later than the
        # timeout falls back to local counting (failureMode Open) and may admit one more
        # (seen once in CI, 101 of 100); the timeout leaves room for a loaded machine
        spec = "  redis: {url: \"%s\", timeout: 2s}\n" % cls.redis.url()
        res = (backend("b", cls.mock.url(), extra="  pricing: {inputPerMillion: \"1\", "
                       "outputPerMillion: \"2\"}\n")
               + backend("bad", cls.failing.url())
               + backend("slow", cls.mock.url(), extra="  pricing: {inputPerMillion: \"1\", "
                         "outputPerMillion: \"2\"}\n",
                         headers={"x-mock-chunks": "100", "x-mock-interval-ms": "5"})
               + route("spend", ["spend"], ["slow"])
               + route("demo", ["demo"], ["b"],
                       "  rateLimits:\n"
                       "    - {name: rpm, key: Header/x-user, scope: Global,"
                       " requests: {limit: 100, window: 1m}}\n"
                       "    - {name: tpm, key: Header/x-t, scope: Global,"
                       " clientSelector: {headers: [{name: x-tok, value: \"1\"}]},"
                       " tokens: {limit: 1000, window: 1m}}\n")
               + route("bad", ["bad"], ["bad"],
                       "  rateLimits:\n"
                       "    - {name: tpm, scope: Global, tokens: {limit: 100000, window: 1h}}\n")
               + consumer("payer", "sk-payer-0123456789abcdef", "  budget: {limit: \"0.001\", period: Day}\n")
               + consumer("whale", "sk-whale-0123456789")
               + consumer("spender", "sk-spender-0123456789", "  budget: {limit: \"0.001\", "
                          "period: Day}\n"))
        cls.a = Dataplane(res, extra_spec=spec)
        cls.b = Dataplane(res, extra_spec=spec)

    @classmethod
    def tearDownClass(cls):
        assert cls.a.stop() == 0
        assert cls.b.stop() == 0
        cls.mock.stop()
        cls.failing.stop()
        cls.redis.stop()

    def redis_failures(self):
        return sum(v for dp in (self.a, self.b) for k, v in dp.metrics().items()
                   if k.startswith("knoway_ratelimit_redis_failures_total"))

    def test_exactly_100_of_300_across_two(self):
        hdr = {"x-user": "shared"}
        failures = self.redis_failures()
        with concurrent.futures.ThreadPoolExecutor(60) as ex:
            res = list(ex.map(lambda i: post((self.a if i % 2 else self.b).port,
                                             "/v1/chat/completions", CHAT, hdr, timeout=30),
                              range(300)))
        codes = [r[0] for r in res]
        self.assertEqual(self.redis_failures(), failures,
                         "a Redis answer came after the timeout: counted locally")
        self.assertEqual(codes.count(200), 100, codes)
        self.assertEqual(codes.count(429), 200)
        served = {r[1]["x-request-id"].split("-")[1] for r in res if r[0] == 200}
        self.assertEqual(len(served), 2, "both data planes served")

    def test_token_limit_never_overshoots(self):
        hdr = {"x-t": "tok", "x-tok": "1", "x-user": "tokens"}
        body = dict(CHAT, max_tokens=40)
        used = 0
        reserve = 0
        for _ in range(200):
            r = post(self.a.port if used % 2 else self.b.port, "/v1/chat/completions", body, hdr)
            if r[0] == 429:
                self.assertEqual(err(r)["code"], "rate_limit_exceeded")
                self.assertEqual(err(r)["type"], "tokens")
                break
            self.assertEqual(r[0], 200)
            u = json.loads(r[2])["usage"]
            used += u["total_tokens"]
            reserve = len(json.dumps(body)) // 4 + 40
            # the correction (the reservation's unused part given back) is sent to Redis
            # after the answer: let it land, so each request sees the exact count
            time.sleep(0.05)
        else:
            self.fail("never limited")
        # corrected by the real usage: at most one reservation's error past the limit
        self.assertLessEqual(used, 1000)
        self.assertGreater(used, 1000 - reserve - 20)

    def test_refund_after_failure(self):
        def remaining():
            r = post(self.a.port, "/v1/chat/completions", dict(CHAT, model="bad", max_tokens=50))
            self.assertEqual(r[0], 500)
            return int(r[1]["x-ratelimit-remaining-tokens"])
        first = remaining()
        time.sleep(0.2)  # the refund is sent after the answer
        second = remaining()
        self.assertEqual(first, second, "the failed request's reservation was refunded")

    def test_budget(self):
        key = bearer("sk-payer-0123456789abcdef")
        statuses = []
        body = dict(CHAT, max_tokens=10)  # the reservation: the input estimate and 10 tokens
        for i in range(200):
            r = post((self.a, self.b)[i % 2].port, "/v1/chat/completions", body, key)
            statuses.append(r[0])
            if r[0] == 429:
                e = err(r)
                self.assertEqual((e["type"], e["code"]), ("insufficient_quota", "insufficient_quota"))
                break
            time.sleep(0.02)  # the charge lands after the answer
        self.assertEqual(statuses[-1], 429)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        h = self.redis.cmd("HGETALL", "knoway:usage:{default/payer}:" + day)
        usage = dict(zip(h[::2], h[1::2]))
        cost = int(usage["cost"])  # nano-USD
        per_request = cost // int(usage["requests"])
        reserve = (len(json.dumps(body)) // 4 * 1_000_000 + 10 * 2_000_000) // 1000
        self.assertLessEqual(cost, 1_000_000, "never past the budget: the worst case is reserved")
        self.assertGreater(cost, 1_000_000 - reserve - per_request, "stopped within one request")
        self.assertEqual(int(usage["requests"]), statuses.count(200))


    def test_concurrent_streams_stay_within_the_budget(self):
        """60 concurrent streams on one budget: each reserves its worst case (the input
        estimate and max_tokens at the priciest backend) when admitted and settles to the
        real cost, so together they cannot pass the budget (60 concurrent streams on a 50 USD
        budget once spent 576 USD: all were admitted while nothing was spent yet)."""
        key = bearer("sk-spender-0123456789")
        body = dict(CHAT, model="spend", stream=True, max_tokens=100)
        with concurrent.futures.ThreadPoolExecutor(60) as ex:
            res = list(ex.map(lambda i: post((self.a, self.b)[i % 2].port,
                                             "/v1/chat/completions", body, key, timeout=60),
                              range(60)))
        codes = [r[0] for r in res]
        self.assertGreater(codes.count(200), 0)
        self.assertGreater(codes.count(429), 0)
        time.sleep(0.3)  # the last settlements land after the answers
        day = time.strftime("%Y-%m-%d", time.gmtime())
        cost = int(self.redis.cmd("HGET", "knoway:usage:{default/spender}:" + day, "cost"))
        one = (4 * 1_000_000 + 100 * 2_000_000) // 1000  # a stream's real cost
        self.assertLessEqual(cost, 1_000_000, "spent %d nano-USD of 1,000,000" % cost)
        self.assertEqual(cost, one * codes.count(200), "settled to the real cost")

    def test_int64_extremes(self):
        """max_tokens at and past the INT64 extremes is refused before any arithmetic (it
        once passed a 1,000-token limit as a negative cost and then pinned the bucket at
        2^40 for the window); the bucket stays usable; the usage hash saturates instead of
        failing half-way through the script."""
        hdr = {"x-t": "extreme", "x-tok": "1", "x-user": "extreme"}
        cases = [(9223372036854775807, "integer_above_max_value"),
                 (10000001, "integer_above_max_value"),
                 (0, "integer_below_min_value"),
                 (-9223372036854775808, "integer_below_min_value"),
                 (1e300, "invalid_type"), ("40", "invalid_type")]
        for value, code in cases:
            for field in ("max_tokens", "max_completion_tokens"):
                r = post(self.a.port, "/v1/chat/completions", dict(CHAT, **{field: value}), hdr)
                self.assertEqual(r[0], 400, (field, value, r[2]))
                e = err(r)
                self.assertEqual((e["type"], e["code"], e["param"]),
                                 ("invalid_request_error", code, field))
        r = post(self.a.port, "/v1/chat/completions", dict(CHAT, max_tokens=10), hdr)
        self.assertEqual(r[0], 200, "the bucket was not pinned")
        self.assertEqual(r[1]["x-ratelimit-limit-tokens"], "1000")
        # a usage hash near Lua's exact range: saturated, and every field still written
        month = time.strftime("%Y-%m", time.gmtime())  # no budget: the month's counters
        k = "knoway:usage:{default/whale}:" + month
        self.redis.cmd("HSET", k, "cost", "9007199254740990", "requests", "5")
        r = post(self.a.port, "/v1/chat/completions", CHAT, bearer("sk-whale-0123456789"))
        self.assertEqual(r[0], 200)
        deadline = time.time() + 5
        while time.time() < deadline and self.redis.cmd("HGET", k, "requests") == "5":
            time.sleep(0.05)
        self.assertEqual(self.redis.cmd("HGET", k, "requests"), "6")
        self.assertEqual(self.redis.cmd("HGET", k, "cost"), "9007199254740992")


class Stream(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        slow = {"x-mock-chunks": "2000", "x-mock-interval-ms": "1"}
        cls.dp = Dataplane(
            backend("b", cls.mock.url(), headers=slow)
            + route("demo", ["demo"], ["b"],
                    "  rateLimits:\n"
                    "    - {name: out, key: Header/x-user, enforce: Stream,"
                    " tokens: {limit: 600, window: 1h, count: Output}}\n"))

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()

    def test_cut_at_the_limit(self):
        self.mock.clear()
        # 100 reserved, 500 left besides: the stream may produce 600 in all
        body = dict(CHAT, stream=True, max_tokens=100)
        r = post(self.dp.port, "/v1/chat/completions", body, {"x-user": "s"}, timeout=30)
        self.assertEqual(r[0], 200)
        events = sse_data(r[2])
        self.assertEqual(events[-1], "[DONE]")
        e = json.loads(events[-2])["error"]
        self.assertEqual(e["code"], "rate_limit_exceeded")
        self.assertEqual(json.loads(events[-3])["choices"][0]["finish_reason"], "length")
        tokens = sum(1 for d in events[:-3] if json.loads(d)["choices"]
                     and json.loads(d)["choices"][0]["delta"].get("content"))
        self.assertGreaterEqual(tokens, 590)
        self.assertLessEqual(tokens, 601, "at most the limit plus one chunk")
        time.sleep(0.2)
        req = self.mock.requests()[-1]
        self.assertTrue(req["cancelled"], "the upstream transfer was cancelled")
        # the bucket is spent: the next stream is refused before it starts
        r = post(self.dp.port, "/v1/chat/completions", body, {"x-user": "s"})
        self.assertEqual(r[0], 429)

    def test_anthropic_front(self):
        body = {"model": "demo", "max_tokens": 100, "stream": True,
                "messages": [{"role": "user", "content": "hi"}]}
        r = post(self.dp.port, "/v1/messages", body,
                 {"x-user": "anth", "x-api-key": "x", "anthropic-version": "2023-06-01"},
                 timeout=30)
        self.assertEqual(r[0], 200)
        text = r[2].decode()
        self.assertIn('"stop_reason":"max_tokens"', text)
        self.assertIn("event: message_stop", text)
        self.assertTrue(text.rstrip().endswith("}"))
        last = text.strip().split("\n\n")[-1]
        self.assertIn("event: error", last)
        self.assertIn("rate_limit_error", last)


class RedisFailure(unittest.TestCase):
    """Redis killed under load: Open serves with local limits, Closed answers 503; both
    recover; nothing waits past the timeout; no socket leaks."""

    @classmethod
    def setUpClass(cls):
        cls.redis = Redis()
        cls.mock = Mock()
        res = (backend("b", cls.mock.url())
               + route("demo", ["demo"], ["b"],
                       "  rateLimits:\n"
                       "    - {name: g, key: Header/x-user, scope: Global,"
                       " requests: {limit: 100000, window: 1m}}\n"))
        cls.open = Dataplane(res, extra_spec="  redis: {url: \"%s\", timeout: 200ms}\n"
                             % cls.redis.url())
        cls.closed = Dataplane(res, extra_spec="  redis: {url: \"%s\", timeout: 200ms, "
                               "failureMode: Closed}\n" % cls.redis.url())

    @classmethod
    def tearDownClass(cls):
        assert cls.open.stop() == 0
        assert cls.closed.stop() == 0
        cls.mock.stop()
        cls.redis.stop()

    def redis_sockets(self, dp):
        """The data plane's TCP sockets to Redis (ss -tanp: one per worker at most)."""
        out = subprocess.run(["ss", "-tanp"], capture_output=True, text=True).stdout
        return sum(1 for line in out.splitlines()
                   if ":%d " % self.redis.port in line and "pid=%d," % dp.proc.pid in line)

    def timed(self, dp, n):
        def one(_):
            t = time.monotonic()
            r = post(dp.port, "/v1/chat/completions", CHAT, {"x-user": "u"}, timeout=10)
            return r[0], time.monotonic() - t, r
        with concurrent.futures.ThreadPoolExecutor(20) as ex:
            return list(ex.map(one, range(n)))

    def test_kill_and_return(self):
        for dp in (self.open, self.closed):
            self.assertTrue(all(s == 200 for s, _, _ in self.timed(dp, 40)))
        self.redis.stop()
        res_open = self.timed(self.open, 200)
        res_closed = self.timed(self.closed, 200)
        self.assertTrue(all(s == 200 for s, _, _ in res_open), "Open keeps serving")
        self.assertTrue(all(s == 503 for s, _, _ in res_closed), "Closed refuses")
        e = err(res_closed[0][2])
        self.assertEqual(e["code"], "rate_limit_unavailable")
        self.assertIn("Redis", e["message"])
        slowest = max(t for _, t, _ in res_open + res_closed)
        self.assertLess(slowest, 0.2 + 0.8, "no request waits past the timeout (with slack)")
        self.assertIn('knoway_ratelimit_redis_failures_total{mode="open"}', self.open.metrics())
        self.redis.start()
        deadline = time.time() + 15  # the reconnect backoff is at most 5 s
        while time.time() < deadline:
            if all(s == 200 for s, _, _ in self.timed(self.closed, 4)):
                break
            time.sleep(0.3)
        self.assertTrue(all(s == 200 for s, _, _ in self.timed(self.closed, 40)), "recovered")
        self.assertTrue(all(s == 200 for s, _, _ in self.timed(self.open, 40)))
        for dp in (self.open, self.closed):
            self.assertLessEqual(self.redis_sockets(dp), dp.workers, "no leaked sockets")
            self.assertGreaterEqual(self.redis_sockets(dp), 1)
        self.assertIsNone(self.open.proc.poll())
        self.assertIsNone(self.closed.proc.poll())


class RedisOpenFallsBackToLocal(unittest.TestCase):
    def test_local_limit_enforced_while_redis_is_down(self):
        """failureMode: Open with Redis killed during a run: the Global limit is still
        enforced, counted by the data plane alone (30 of 120 concurrent requests), not
        waved through."""
        redis = Redis()
        mock = Mock(threads=2)
        res = (backend("b", mock.url())
               + route("demo", ["demo"], ["b"],
                       "  rateLimits:\n"
                       "    - {name: g, key: Header/x-user, scope: Global,"
                       " requests: {limit: 30, window: 1m}}\n"))
        dp = Dataplane(res, extra_spec="  redis: {url: \"%s\", timeout: 200ms, failureMode: Open}\n"
                       % redis.url())
        try:
            def burst(user, n):
                with concurrent.futures.ThreadPoolExecutor(20) as ex:
                    return [r[0] for r in ex.map(
                        lambda i: post(dp.port, "/v1/chat/completions", CHAT, {"x-user": user},
                                       timeout=10), range(n))]
            before = burst("alice", 40)  # Redis counts: 30 pass
            self.assertEqual((before.count(200), before.count(429)), (30, 10))
            stop = threading.Event()
            during = []

            def load():  # traffic goes on while Redis dies
                while not stop.is_set():
                    during.append(post(dp.port, "/v1/chat/completions", CHAT,
                                       {"x-user": "bob"}, timeout=10)[0])
            t = threading.Thread(target=load)
            t.start()
            time.sleep(0.2)
            redis.stop()
            codes = burst("carol", 120)
            stop.set()
            t.join()
            self.assertEqual((codes.count(200), codes.count(429)), (30, 90),
                             "the limit counted locally while Redis is down")
            self.assertEqual(set(during) - {200, 429}, set(), "no 503 in Open mode")
            self.assertLessEqual(during.count(200), 60, "bob: at most 30 by Redis, 30 locally")
            self.assertIn('knoway_ratelimit_redis_failures_total{mode="open"}', dp.metrics())
        finally:
            dp.stop()
            mock.stop()
            redis.stop()


if __name__ == "__main__":
    unittest.main()
