"""Traffic management: balancing strategies, retries and their budget, circuit breaking,
429 cooldowns, quota-aware routing, state across a hot swap. Several knoway-mockllm
instances, each with its own behaviour (PUT /_mock/behaviour); attempts are counted at the
mocks (/_mock/stats), never inferred from the gateway's own numbers."""
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Dataplane, Mock, backend, free_port, post, request, route,  # noqa: E402
                     sse_data)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello"}]}


class Instance(Mock):
    """A mock provider instance with its own behaviour and counters."""

    def __init__(self, behaviour=None):
        super().__init__("--no-log", "--behaviour", json.dumps(behaviour or {}))

    def behave(self, **behaviour):
        status, _, _ = request("PUT", self.port, "/_mock/behaviour", behaviour)
        assert status == 200

    def stats(self):
        return json.loads(request("GET", self.port, "/_mock/stats")[2])

    def reset(self):
        request("DELETE", self.port, "/_mock/stats")

    def served(self):
        s = self.stats()
        return s["requests"] - s["errors"]


def chat(dp, model="m", headers=None, stream=False):
    body = dict(CHAT, model=model)
    if stream:
        body["stream"] = True
    return post(dp.port, "/v1/chat/completions", body, headers=headers, timeout=30)


def many(dp, n, concurrency, model="m", headers=None):
    """n requests over `concurrency` connections; the statuses."""
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(lambda _: chat(dp, model, headers)[0], range(n)))


class Base(unittest.TestCase):
    def setUp(self):
        self.mocks = []
        self.dp = None

    def tearDown(self):
        if self.dp is not None:
            self.assertEqual(self.dp.stop(), 0)
        for m in self.mocks:
            m.stop()

    def instances(self, *behaviours):
        out = [Instance(b) for b in behaviours]
        self.mocks += out
        return out

    def start(self, resources, workers=1):
        self.dp = Dataplane(resources, workers=workers)
        return self.dp


class Strategies(Base):
    def three(self, strategy, breaker=""):
        fast, slow, failing = self.instances({}, {"latency_ms": 150}, {"status": 500})
        res = (backend("fast", fast.url()) + backend("slow", slow.url())
               + backend("failing", failing.url(), extra=breaker)
               + route("r", ["m"], ["fast", "slow", "failing"],
                       extra="  loadBalancer: {strategy: %s, clientOverride: true}\n" % strategy))
        return fast, slow, failing, self.start(res)

    def check_mostly_fast(self, strategy):
        breaker = "  circuitBreaker: {consecutiveFailures: 2, ejectionTime: 30s}\n"
        fast, slow, failing, dp = self.three(strategy, breaker)
        statuses = many(dp, 200, 8)
        self.assertEqual(statuses.count(200), 200, statuses)  # failures fall over
        served = fast.served() + slow.served()
        self.assertEqual(served, 200)
        self.assertGreaterEqual(fast.served() / served, 0.8,
                                "fast %d slow %d" % (fast.served(), slow.served()))
        # the failing one was ejected after 2 failures: besides those, only requests already
        # on their way (at most one per connection) reach it, of 200
        self.assertLessEqual(failing.stats()["requests"], 2 + 8)

    def test_latency_prefers_the_fast_instance(self):
        self.check_mostly_fast("Latency")

    def test_least_request_prefers_the_fast_instance(self):
        self.check_mostly_fast("LeastRequest")

    def test_round_robin_is_exact_by_weight(self):
        a, b = self.instances({}, {})
        dp = self.start(backend("a", a.url()) + backend("b", b.url())
                        + route("r", ["m"], [{"name": "a", "weight": 1}, {"name": "b", "weight": 2}],
                                extra="  loadBalancer: {strategy: RoundRobin}\n"))
        for _ in range(30):
            self.assertEqual(chat(dp)[0], 200)
        self.assertEqual((a.served(), b.served()), (10, 20))

    def test_client_override(self):
        fast, slow, failing, dp = self.three("WeightedRandom")
        failing.behave()  # healthy: only the strategy differs
        statuses = many(dp, 60, 4, headers={"x-knoway-routing-strategy": "RoundRobin"})
        self.assertEqual(statuses.count(200), 60)
        self.assertEqual((fast.served(), slow.served(), failing.served()), (20, 20, 20))

    def test_endpoints_are_balanced_and_ejected(self):
        good, bad = self.instances({}, {"status": 503})
        dp = self.start(
            "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: pool}\n"
            "spec:\n  provider: vLLM\n  upstream:\n    endpoints:\n"
            "      - {url: \"%s\"}\n      - {url: \"%s\"}\n"
            "  circuitBreaker: {consecutiveFailures: 2, ejectionTime: 30s, maxEjectionPercent: 50}\n"
            % (good.url(), bad.url())
            + route("r", ["m"], ["pool"], extra="  retry: {attempts: 3}\n"))
        statuses = many(dp, 40, 2)
        self.assertEqual(statuses.count(200), 40, statuses)
        self.assertLessEqual(bad.stats()["requests"], 3)  # ejected after 2 in a row
        self.assertEqual(good.served(), 40)


    def test_a_failed_endpoint_is_retried_on_another(self):
        good, = self.instances({})
        dead = "http://127.0.0.1:%d/v1" % free_port()
        dp = self.start(
            "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: pool}\n"
            "spec:\n  provider: vLLM\n  upstream:\n    endpoints:\n"
            "      - {url: \"%s\"}\n      - {url: \"%s\"}\n" % (dead, good.url())
            + route("r", ["m"], ["pool"]))  # no retry policy: each endpoint once
        for _ in range(20):
            self.assertEqual(chat(dp)[0], 200)
        self.assertEqual(good.served(), 20)


class Breaker(Base):
    def test_ejection_probe_and_recovery(self):
        ok, bad = self.instances({}, {"status": 500})
        dp = self.start(backend("ok", ok.url()) + backend(
            "bad", bad.url(),
            extra="  circuitBreaker: {consecutiveFailures: 3, ejectionTime: 400ms}\n")
            + route("r", ["m"], ["ok", "bad"]))
        t0 = time.time()
        for _ in range(100):
            self.assertEqual(chat(dp)[0], 200)  # every failure falls over to ok
            time.sleep(0.01)
        elapsed = time.time() - t0
        # 3 failures, then only probes: at most one per ejection period, which doubles
        # (0.4 s, 0.8 s, 1.6 s, ...) over the elapsed time
        self.assertGreaterEqual(bad.stats()["requests"], 3)
        self.assertLessEqual(bad.stats()["requests"], 3 + 1 + int(elapsed / 0.4))
        # it recovers: the next probe succeeds and traffic comes back
        bad.behave()
        bad.reset()
        deadline = time.time() + 10
        while time.time() < deadline and bad.served() < 10:
            self.assertEqual(chat(dp)[0], 200)
        self.assertGreaterEqual(bad.served(), 10)
        metrics = dp.metrics()
        self.assertGreaterEqual(metrics.get('knoway_upstream_attempts_total{knoway_backend="default/bad",result="500"}', 0), 3)

    def test_429_storm_fails_over_with_no_client_error(self):
        storm, room = self.instances({"status": 429, "retry_after": 30}, {})
        dp = self.start(backend("storm", storm.url()) + backend("room", room.url())
                        + route("r", ["m"], ["storm", "room"]))
        statuses = many(dp, 100, 4)
        self.assertEqual(statuses.count(200), 100, statuses)
        # the first 429 puts it in cooldown for 30 s: only requests already on their way
        # (at most one per client connection) reach it
        self.assertLessEqual(storm.stats()["requests"], 4)

    def test_cooldown_from_retry_after_ms(self):
        """A 429 with retry-after-ms: 3000 (OpenAI's and Azure's millisecond hint) rests the
        backend 3 s, not the default second of a 429 without a hint."""
        storm, room = self.instances({"status": 429, "retry_after_ms": 3000}, {})
        dp = self.start(backend("storm", storm.url()) + backend("room", room.url())
                        + route("r", ["m"], ["storm", "room"]))
        t0 = time.time()
        while time.time() - t0 < 2.0:  # one connection: requests one after another
            self.assertEqual(chat(dp)[0], 200)
        self.assertEqual(storm.stats()["requests"], 1, "resting for the 3 s it asked for")
        time.sleep(max(0.0, t0 + 3.3 - time.time()))
        deadline = time.time() + 5
        while storm.stats()["requests"] < 2 and time.time() < deadline:
            self.assertEqual(chat(dp)[0], 200)
        self.assertEqual(storm.stats()["requests"], 2, "back in rotation after it")

    def test_429_alone_is_relayed_with_retry_after(self):
        storm, = self.instances({"status": 429, "retry_after": 7})
        dp = self.start(backend("storm", storm.url()) + route("r", ["m"], ["storm"]))
        status, headers, _ = chat(dp)
        self.assertEqual(status, 429)
        self.assertEqual(headers.get("retry-after"), "7")


class Retries(Base):
    def test_budget_caps_attempts_under_total_failure(self):
        a, b = self.instances({"status": 500}, {"status": 503})
        dp = self.start(backend("a", a.url()) + backend("b", b.url())
                        + route("r", ["m"], ["a", "b"],
                                extra="  retry: {attempts: 5, backoff: {base: 1ms, max: 2ms}}\n"))
        n = 200
        statuses = many(dp, n, 4)
        self.assertTrue(all(s >= 500 for s in statuses), statuses)
        attempts = a.stats()["requests"] + b.stats()["requests"]
        # without a budget: 5 per request (1000); with 20 % over 10 s per backend (and a
        # floor of 10 retries per backend and window) about 1.25 per request
        self.assertLessEqual(attempts, int(n * 1.25) + 20, attempts)
        self.assertGreater(attempts, n)

    def test_retries_on_the_same_backend_with_backoff(self):
        flaky, = self.instances({"fail_rate": 0.5, "fail_status": 502})
        dp = self.start(backend("flaky", flaky.url())
                        + route("r", ["m"], ["flaky"],
                                extra="  retry: {attempts: 6, backoff: {base: 5ms, max: 20ms}, "
                                      "budgetPercent: 100}\n"))
        statuses = [chat(dp)[0] for _ in range(40)]
        # 0.5^6: a request failing six times in a row is rare; most are rescued
        self.assertGreaterEqual(statuses.count(200), 36, statuses)
        self.assertGreater(flaky.stats()["requests"], 40)

    def test_no_retry_after_the_first_byte(self):
        cut, spare = self.instances({"fault": "reset", "fault_after": 2}, {})
        dp = self.start(backend("cut", cut.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "cut"}, {"name": "spare", "priority": 1}],
                                extra="  retry: {attempts: 3, retryOn: [reset, 5xx]}\n"))
        status, _, body = chat(dp, stream=True)
        self.assertEqual(status, 200)
        events = sse_data(body)
        self.assertIn("error", events[-1])  # the stream ends with an error event
        self.assertEqual(spare.stats()["requests"], 0)

    def test_reset_before_the_response_is_retried(self):
        early, spare = self.instances({"fault": "reset", "fault_after": -1}, {})
        dp = self.start(backend("early", early.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "early"}, {"name": "spare", "priority": 1}]))
        status, _, body = chat(dp, stream=True)
        self.assertEqual(status, 200)
        self.assertEqual(sse_data(body)[-1], "[DONE]")
        self.assertEqual(spare.served(), 1)

    def test_per_try_timeout(self):
        slow, fast = self.instances({"latency_ms": 3000}, {})
        dp = self.start(backend("slow", slow.url()) + backend("fast", fast.url())
                        + route("r", ["m"], [{"name": "slow"}, {"name": "fast", "priority": 1}],
                                extra="  retry: {perTryTimeout: 200ms, retryOn: [timeout]}\n"))
        t0 = time.time()
        self.assertEqual(chat(dp)[0], 200)
        self.assertLess(time.time() - t0, 2.0)
        self.assertEqual(fast.served(), 1)


class Quota(Base):
    def test_quota_headers_steer_traffic_before_any_429(self):
        metered, spare = self.instances({"quota_requests": 5, "quota_reset_ms": 60000}, {})
        dp = self.start(backend("metered", metered.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "metered"}, {"name": "spare", "priority": 1}]))
        for _ in range(20):
            self.assertEqual(chat(dp)[0], 200)
        self.assertEqual(metered.stats(), {"requests": 5, "errors": 0})  # never a 429
        self.assertEqual(spare.served(), 15)

    def test_backend_limits(self):
        capped, spare = self.instances({}, {})
        dp = self.start(backend("capped", capped.url(), extra="  limits: {requestsPerMinute: 4}\n")
                        + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "capped"}, {"name": "spare", "priority": 1}]))
        for _ in range(10):
            self.assertEqual(chat(dp)[0], 200)
        self.assertEqual((capped.served(), spare.served()), (4, 6))

    def test_max_concurrent_requests(self):
        slow, spare = self.instances({"latency_ms": 300}, {})
        dp = self.start(backend("slow", slow.url(), extra="  limits: {maxConcurrentRequests: 2}\n")
                        + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "slow"}, {"name": "spare", "priority": 1}]))
        statuses = many(dp, 6, 6)
        self.assertEqual(statuses.count(200), 6)
        self.assertEqual(slow.served(), 2)
        self.assertEqual(spare.served(), 4)


def content_of(body):
    """The text of an OpenAI chat stream, its finish reason, usage, ids, and errors."""
    text, finish, usage, ids, errors = "", None, None, set(), []
    for d in sse_data(body):
        if d == "[DONE]":
            continue
        j = json.loads(d)
        if "error" in j:
            errors.append(j["error"])
            continue
        ids.add(j.get("id"))
        if j.get("usage"):
            usage = j["usage"]
        for ch in j.get("choices", []):
            text += ch.get("delta", {}).get("content") or ""
            finish = ch.get("finish_reason") or finish
    return text, finish, usage, ids, errors


class MidStream(Base):
    CONT = "  retry: {midStream: Continue}\n"
    FULL = "".join("tok%d " % i for i in range(8))

    def stream(self, dp, **extra):
        body = dict(CHAT, stream=True, stream_options={"include_usage": True}, **extra)
        status, _, raw = post(dp.port, "/v1/chat/completions", body, timeout=30)
        self.assertEqual(status, 200)
        return raw

    def test_a_reset_is_continued_by_the_next_backend(self):
        cut, spare = self.instances({"fault": "reset", "fault_after": 3}, {})
        dp = self.start(backend("cut", cut.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "cut"}, {"name": "spare", "priority": 1}],
                                extra=self.CONT))
        raw = self.stream(dp)
        text, finish, usage, ids, errors = content_of(raw)
        self.assertEqual(errors, [])
        self.assertEqual(text, self.FULL)  # one complete, coherent text
        self.assertEqual(finish, "stop")
        self.assertEqual(len(ids), 1, ids)  # the chunks of both attempts carry one id
        self.assertEqual(sse_data(raw)[-1], "[DONE]")
        self.assertEqual(sse_data(raw).count("[DONE]"), 1)
        # the spare got the prefill the client had (the mock checks it: 400 otherwise)
        self.assertEqual(spare.stats(), {"requests": 1, "errors": 0})
        # usage of both: 3 chunks before the cut, 5 after
        self.assertEqual(usage["completion_tokens"], 8)
        self.assertEqual(usage["total_tokens"], usage["prompt_tokens"] + 8)
        m = dp.metrics()
        self.assertEqual(m.get('knoway_stream_continuations_total{result="completed"}'), 1)
        self.assertIn('"continued":1', dp.logs())

    def test_anthropic_continues_a_vllm_stream(self):
        cut, claude = self.instances({"fault": "reset", "fault_after": 3}, {})
        dp = self.start(
            backend("cut", cut.url())
            + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: k}\nstringData: {apiKey: sk}\n"
            + backend("claude", "http://127.0.0.1:%d" % claude.port, provider="Anthropic",
                      extra="  credentials: {secretRef: {name: k}}\n")
            + route("r", ["m"], [{"name": "cut"}, {"name": "claude", "priority": 1}],
                    extra=self.CONT))
        text, finish, usage, ids, errors = content_of(self.stream(dp))
        # the prefill lost its trailing space (Anthropic refuses it); the space Claude
        # starts with is not repeated
        self.assertEqual((text, finish, errors), (self.FULL, "stop", []))
        self.assertEqual(len(ids), 1, ids)
        self.assertEqual(claude.stats(), {"requests": 1, "errors": 0})
        self.assertEqual(usage["completion_tokens"], 8)

    def test_an_error_event_is_continued(self):
        bad, spare = self.instances({"fault": "error", "fault_after": 2}, {})
        dp = self.start(backend("bad", bad.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "bad"}, {"name": "spare", "priority": 1}],
                                extra=self.CONT))
        text, finish, _, _, errors = content_of(self.stream(dp))
        self.assertEqual((text, finish, errors), (self.FULL, "stop", []))

    def test_an_idle_stream_is_continued(self):
        stall, spare = self.instances({"fault": "stall", "fault_after": 4}, {})
        dp = self.start(backend("stall", stall.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "stall"}, {"name": "spare", "priority": 1}],
                                extra="  streamIdleTimeout: 1s\n" + self.CONT))
        text, _, _, _, errors = content_of(self.stream(dp))
        self.assertEqual((text, errors), (self.FULL, []))

    def test_no_capable_backend_ends_with_the_error_event(self):
        cut, hosted = self.instances({"fault": "reset", "fault_after": 3}, {})
        # an OpenAI backend cannot continue a prefill: skipped, the stream ends as before
        dp = self.start(backend("cut", cut.url()) + backend("hosted", hosted.url(), provider="OpenAI")
                        + route("r", ["m"], [{"name": "cut"}, {"name": "hosted", "priority": 1}],
                                extra=self.CONT))
        text, _, _, _, errors = content_of(self.stream(dp))
        self.assertEqual(text, "tok0 tok1 tok2 ")
        self.assertEqual(len(errors), 1)
        self.assertEqual(hosted.stats()["requests"], 0)

    def test_without_the_option_nothing_is_continued(self):
        cut, spare = self.instances({"fault": "reset", "fault_after": 3}, {})
        dp = self.start(backend("cut", cut.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "cut"}, {"name": "spare", "priority": 1}]))
        text, _, _, _, errors = content_of(self.stream(dp))
        self.assertEqual((text, len(errors)), ("tok0 tok1 tok2 ", 1))
        self.assertEqual(spare.stats()["requests"], 0)

    def test_the_anthropic_api_sees_one_message(self):
        cut, spare = self.instances({"fault": "reset", "fault_after": 3}, {})
        dp = self.start(backend("cut", cut.url()) + backend("spare", spare.url())
                        + route("r", ["m"], [{"name": "cut"}, {"name": "spare", "priority": 1}],
                                extra=self.CONT))
        status, _, raw = post(dp.port, "/v1/messages",
                              {"model": "m", "max_tokens": 100, "stream": True,
                               "messages": [{"role": "user", "content": "hello"}]},
                              headers={"anthropic-version": "2023-06-01"}, timeout=30)
        self.assertEqual(status, 200)
        text, starts = "", 0
        for d in sse_data(raw):
            j = json.loads(d)
            starts += j["type"] == "message_start"
            if j["type"] == "content_block_delta":
                text += j["delta"]["text"]
            self.assertNotEqual(j["type"], "error")
        self.assertEqual((text, starts), (self.FULL, 1))


class DebugRoutes(Base):
    def test_explains_the_decision_with_state(self):
        ok, bad = self.instances({"latency_ms": 5}, {"status": 500})
        dp = self.start(
            backend("ok", ok.url()) + backend(
                "bad", bad.url(), extra="  circuitBreaker: {consecutiveFailures: 1, ejectionTime: 60s}\n")
            + route("r", ["m", "fam-*"], ["ok", {"name": "bad", "weight": 3}],
                    extra="  loadBalancer: {strategy: LeastRequest}\n")
            + ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: blue}\n"
               "spec:\n  match:\n    models: [m]\n    headers: [{name: x-tenant, value: blue}]\n"
               "  backendRefs: [{name: ok}]\n"), workers=2)
        for _ in range(10):
            self.assertEqual(chat(dp)[0], 200)
        status, _, body = request("GET", dp.admin, "/debug/routes?model=m")
        self.assertEqual(status, 200, body)
        doc = json.loads(body)
        self.assertEqual(doc["answered"], 2)
        ejected = 0
        for w in doc["workers"]:
            self.assertEqual(w["route"]["name"], "r")
            self.assertEqual(w["route"]["matchedBy"], {"model": "m", "kind": "exact",
                                                       "headers": 0, "paths": 0})
            self.assertEqual(w["strategy"], "LeastRequest")
            cands = {c["backendRef"]: c for c in w["candidates"]}
            self.assertEqual(cands["bad"]["weight"], 3)
            if cands["bad"]["ejectedForMs"] > 0:  # each worker judges for itself
                ejected += 1
                self.assertFalse(cands["bad"]["healthy"])
                self.assertEqual(w["wouldPick"], {"backendRef": "ok"})
            self.assertTrue(cands["ok"]["healthy"])
        self.assertGreaterEqual(ejected, 1)
        # headers as query parameters; prefixes; the strategy a client would ask for
        doc = json.loads(request("GET", dp.admin, "/debug/routes?model=m&x-tenant=blue")[2])
        self.assertEqual(doc["workers"][0]["route"]["name"], "blue")
        doc = json.loads(request("GET", dp.admin,
                                 "/debug/routes?model=fam-7&strategy=RoundRobin")[2])
        self.assertEqual(doc["workers"][0]["route"]["matchedBy"]["kind"], "prefix")
        self.assertEqual(doc["workers"][0]["strategy"], "RoundRobin")
        doc = json.loads(request("GET", dp.admin, "/debug/routes?model=none")[2])
        self.assertIsNone(doc["workers"][0]["route"])
        self.assertEqual(request("GET", dp.admin, "/debug/routes")[0], 400)
        # the per-backend metrics
        m = dp.metrics()
        self.assertGreaterEqual(m.get('knoway_upstream_ejections_total{knoway_backend="default/bad"}', 0), 1)
        self.assertEqual(m.get('knoway_upstream_in_flight{knoway_backend="default/ok"}'), 0)
        self.assertGreater(m.get('knoway_upstream_retries_total{knoway_backend="default/ok"}', 0), 0)
        ewma = [v for k, v in m.items() if k.startswith('knoway_upstream_ttfb_ewma_seconds{knoway_backend="default/ok"')]
        self.assertTrue(ewma and all(0.004 < v < 1.0 for v in ewma if v > 0), ewma)
        # the registry's text passes Prometheus's own checker
        text = request("GET", dp.admin, "/metrics")[2]
        check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)


class HotSwap(Base):
    def test_state_survives_a_swap_under_load(self):
        ok, bad = self.instances({}, {"status": 500})
        breaker = "  circuitBreaker: {consecutiveFailures: 2, ejectionTime: 60s}\n"

        def config(extra_model):
            return (backend("ok", ok.url()) + backend("bad", bad.url(), extra=breaker)
                    + route("r", ["m", extra_model], ["ok", "bad"]))

        dp = self.start(config("x1"))
        for _ in range(20):
            self.assertEqual(chat(dp)[0], 200)
        ejected_after = bad.stats()["requests"]
        self.assertLessEqual(ejected_after, 2)
        failures = []
        stop = threading.Event()

        def load():
            while not stop.is_set():
                s = chat(dp)[0]
                if s != 200:
                    failures.append(s)

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        before = dp.version()
        for i in range(5):  # five swaps: the route changes, the backends do not
            dp.write(config("x%d" % (i + 2)))
            dp.hup()
            deadline = time.time() + 5
            while dp.version() == before and time.time() < deadline:
                time.sleep(0.02)
            self.assertNotEqual(dp.version(), before)
            before = dp.version()
            time.sleep(0.1)
        stop.set()
        for t in threads:
            t.join()
        self.assertEqual(failures, [])
        # still ejected across every swap: the failing backend saw nothing new
        self.assertEqual(bad.stats()["requests"], ejected_after)


if __name__ == "__main__":
    unittest.main()
