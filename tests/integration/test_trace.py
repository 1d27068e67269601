"""W3C trace context: a client's traceparent is joined (or a new trace started), the access
log carries trace_id and span_id, the upstream gets traceparent and tracestate."""
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Collector, Dataplane, Mock, backend, consumer, post, route,  # noqa: E402
                     sse_data)

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


class Trace(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        cls.dp = Dataplane(backend("b", cls.mock.url()) + route("demo", ["demo"], ["b"]))

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()

    def call(self, headers):
        self.mock.clear()
        r = post(self.dp.port, "/v1/chat/completions", CHAT, headers)
        self.assertEqual(r[0], 200)
        rid = r[1]["x-request-id"]
        up = self.mock.requests()[-1]["headers"]
        deadline = time.time() + 3
        while time.time() < deadline:
            lines = [json.loads(line) for line in self.dp.logs().splitlines()
                     if '"request_id":"%s"' % rid in line]
            if lines:
                return lines[-1], up
            time.sleep(0.02)
        self.fail("no access log line for %s" % rid)

    def test_joins_the_clients_trace(self):
        log, up = self.call({"traceparent": "00-%s-%s-01" % (TRACE, PARENT),
                             "tracestate": "vendor=abc"})
        self.assertEqual(log["trace_id"], TRACE)
        self.assertRegex(log["span_id"], r"^[0-9a-f]{16}$")
        self.assertNotEqual(log["span_id"], PARENT)
        # the upstream's parent is this attempt's client span: the trace, a span of its own
        m = re.match(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$", up["traceparent"])
        self.assertEqual(m.group(1), TRACE)
        self.assertNotIn(m.group(2), (PARENT, log["span_id"]))
        self.assertEqual(up["tracestate"], "vendor=abc")

    def test_an_anonymous_clients_flag_is_not_followed(self):
        # clientSampling Authenticated (the default): an anonymous client joins its trace but
        # sampleRatio (1 here) decides, in both directions
        log, up = self.call({"traceparent": "00-%s-%s-00" % (TRACE, PARENT)})
        self.assertTrue(up["traceparent"].endswith("-01"))
        self.assertEqual(log["trace_id"], TRACE)

    def test_starts_a_trace_when_absent_or_malformed(self):
        seen = set()
        for tp in (None, "00-%s-%s-01" % (TRACE.upper(), PARENT), "00-%s-%s-01" % ("0" * 32, PARENT),
                   "ff-%s-%s-01" % (TRACE, PARENT), "00-%s-%s-01-extra" % (TRACE, PARENT),
                   "garbage"):
            log, up = self.call({"traceparent": tp, "tracestate": "x=1"} if tp else {})
            self.assertRegex(log["trace_id"], r"^[0-9a-f]{32}$")
            self.assertNotEqual(log["trace_id"], TRACE, tp)
            m = re.match(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$", up["traceparent"])
            self.assertIsNotNone(m, up["traceparent"])
            self.assertEqual(m.group(1), log["trace_id"])
            self.assertNotIn("tracestate", up, "a tracestate without its trace is dropped")
            seen.add(log["trace_id"])
        self.assertEqual(len(seen), 6, "a new trace id each time")



def attrs(span):
    def value(v):
        (kind, x), = v.items()
        return [value(i) for i in x["values"]] if kind == "arrayValue" else x
    return {a["key"]: value(a["value"]) for a in span["attributes"]}


class ExportJson(unittest.TestCase):
    """Spans over OTLP/HTTP JSON (the default), content left out (the default)."""
    OTLP = ""
    ENCODING = "json"

    @classmethod
    def setUpClass(cls):
        cls.collector = Collector()
        cls.mock = Mock()
        res = (backend("b", cls.mock.url()) + backend("bad", cls.mock.url(),
                                                     headers={"x-mock-status": "503"})
               + route("demo", ["demo"], ["b"])
               + route("fallback", ["fallback"], [{"name": "bad"}, {"name": "b", "priority": 1}]))
        # these tests read the spans of traces their requests (anonymous) decide to sample
        spec = ("  telemetry: {clientSampling: Always, otlp: {endpoint: \"%s\", sampleRatio: 0%s}}\n"
                % (cls.collector.url(), cls.OTLP))
        cls.dp = Dataplane(res, extra_spec=spec)

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()
        cls.collector.stop()

    def test_server_and_client_spans(self):
        self.mock.clear()
        r = post(self.dp.port, "/v1/chat/completions", dict(CHAT, max_tokens=5),
                 {"traceparent": "00-%s-%s-01" % (TRACE, PARENT)})
        self.assertEqual(r[0], 200)
        spans = self.collector.trace(TRACE, 2)
        server = [s for s in spans if s["kind"] == 2]
        client = [s for s in spans if s["kind"] == 3]
        self.assertEqual((len(server), len(client)), (1, 1))
        self.assertEqual(server[0]["parentSpanId"], PARENT)
        self.assertEqual(client[0]["parentSpanId"], server[0]["spanId"])
        self.assertEqual(server[0]["name"], "chat demo")
        a = attrs(server[0])
        self.assertEqual(a["gen_ai.operation.name"], "chat")
        self.assertEqual(a["gen_ai.request.model"], "demo")
        self.assertEqual(a["gen_ai.usage.output_tokens"], "8")
        self.assertEqual(a["gen_ai.request.max_tokens"], "5")
        self.assertEqual(a["http.response.status_code"], "200")
        self.assertEqual(a["knoway.route"], "demo")
        self.assertLess(int(server[0]["startTimeUnixNano"]), int(client[0]["startTimeUnixNano"]))
        self.assertLessEqual(int(client[0]["endTimeUnixNano"]), int(server[0]["endTimeUnixNano"]))
        # the upstream's traceparent names the client span
        up = self.mock.requests()[-1]["headers"]["traceparent"]
        self.assertEqual(up, "00-%s-%s-01" % (TRACE, client[0]["spanId"]))

    def test_a_fallback_shows_each_attempt(self):
        trace = "5" * 31 + "1"
        r = post(self.dp.port, "/v1/chat/completions", dict(CHAT, model="fallback"),
                 {"traceparent": "00-%s-%s-01" % (trace, PARENT)})
        self.assertEqual(r[0], 200)
        spans = self.collector.trace(trace, 3)
        client = sorted((s for s in spans if s["kind"] == 3), key=lambda s: s["startTimeUnixNano"])
        self.assertEqual(len(client), 2)
        self.assertEqual(attrs(client[0])["knoway.backend"], "bad")
        self.assertEqual(client[0]["status"]["code"], 2)
        self.assertEqual(attrs(client[0])["http.response.status_code"], "503")
        self.assertEqual(attrs(client[1])["knoway.backend"], "b")
        self.assertNotIn("status", client[1])
        self.assertEqual(attrs([s for s in spans if s["kind"] == 2][0])["knoway.attempts"], "2")

    def test_sampling(self):
        # sampleRatio 0: new traces are not exported; a client's decision is kept
        time.sleep(1.2)  # what earlier tests sent has gone out (every second)
        before = len(self.collector.spans)
        unsampled = "6" * 31 + "1"
        post(self.dp.port, "/v1/chat/completions", CHAT,
             {"traceparent": "00-%s-%s-00" % (unsampled, PARENT)})
        r = post(self.dp.port, "/v1/chat/completions", CHAT)
        self.assertEqual(r[0], 200)
        time.sleep(1.5)  # the exporter sends every second
        self.assertEqual(self.collector.trace(unsampled, 1, timeout=0.1), [])
        self.assertEqual(len(self.collector.spans), before, "only sampled traces are exported")
        self.assertEqual({s["encoding"] for s in self.collector.spans}, {self.ENCODING})
        m = self.dp.metrics()
        self.assertEqual(m['knoway_trace_spans_total{result="exported"}'], len(self.collector.spans))
        self.assertEqual(m['knoway_trace_spans_total{result="failed"}'], 0)

    def test_a_stream_span(self):
        trace = "7" * 31 + "1"
        r = post(self.dp.port, "/v1/chat/completions", dict(CHAT, stream=True, temperature=0.5),
                 {"traceparent": "00-%s-%s-01" % (trace, PARENT)})
        self.assertEqual(r[0], 200)
        chunks = [json.loads(d) for d in sse_data(r[2]) if d != "[DONE]"]
        server = [s for s in self.collector.trace(trace, 2) if s["kind"] == 2]
        self.assertEqual(len(server), 1)
        a = attrs(server[0])
        self.assertEqual(a["gen_ai.response.id"], chunks[0]["id"])
        self.assertEqual(a["gen_ai.response.finish_reasons"], ["stop"])
        self.assertEqual(a["gen_ai.request.temperature"], 0.5)
        self.assertEqual(a["gen_ai.usage.output_tokens"], "8")
        events = server[0]["events"]
        self.assertEqual([e["name"] for e in events], ["gen_ai.first_token"])
        first = int(events[0]["timeUnixNano"])
        self.assertLessEqual(int(server[0]["startTimeUnixNano"]), first)
        self.assertLessEqual(first, int(server[0]["endTimeUnixNano"]))
        self.check_content(a, "hi", "".join(c["choices"][0]["delta"].get("content") or ""
                                            for c in chunks if c["choices"]))

    def test_a_response_id_and_reasons(self):
        trace = "8" * 31 + "1"
        r = post(self.dp.port, "/v1/chat/completions", CHAT,
                 {"traceparent": "00-%s-%s-01" % (trace, PARENT)})
        body = json.loads(r[2])
        server = [s for s in self.collector.trace(trace, 2) if s["kind"] == 2]
        a = attrs(server[0])
        self.assertEqual(a["gen_ai.response.id"], body["id"])
        self.assertEqual(a["gen_ai.response.finish_reasons"], [body["choices"][0]["finish_reason"]])
        self.assertEqual(server[0]["events"], [])  # not a stream: no first-token event
        self.assertEqual(server[0]["resource"]["attributes"][0]["value"]["stringValue"],
                         "knoway-dataplane")
        self.check_content(a, "hi", body["choices"][0]["message"]["content"])

    def check_content(self, a, prompt, answer):
        self.assertNotIn("gen_ai.input.messages", a, "content is off by default")
        self.assertNotIn("gen_ai.output.messages", a)


class ExportProtobuf(ExportJson):
    """The same over OTLP/HTTP protobuf, with captureContent: true."""
    OTLP = ", protocol: protobuf, captureContent: true"
    ENCODING = "protobuf"

    def check_content(self, a, prompt, answer):
        self.assertTrue(answer)
        self.assertEqual(json.loads(a["gen_ai.input.messages"]), CHAT["messages"])
        out = json.loads(a["gen_ai.output.messages"])
        self.assertEqual(out, [{"role": "assistant", "parts": [{"type": "text", "content": answer}]}])


WRK_POST = """wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"demo","messages":[{"role":"user","content":"hi"}]}'
"""


class ClientSampling(unittest.TestCase):
    """A client's sampled flag switched export on for every request anyone sent: by default
    it is followed only once the client authenticated (an API key here)."""

    def test_only_authenticated_clients_decide(self):
        collector = Collector()
        mock = Mock()
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"])
                       + consumer("team", "sk-team-0123456789"),
                       extra_spec="  telemetry: {otlp: {endpoint: \"%s\", sampleRatio: 0}}\n"
                       % collector.url())
        try:
            anon, keyed = "7" * 31 + "1", "8" * 31 + "1"
            mock.clear()
            r = post(dp.port, "/v1/chat/completions", CHAT,
                     {"traceparent": "00-%s-%s-01" % (anon, PARENT)})
            self.assertEqual(r[0], 200)
            self.assertTrue(mock.requests()[-1]["headers"]["traceparent"].endswith("-00"))
            r = post(dp.port, "/v1/chat/completions", CHAT,
                     {"traceparent": "00-%s-%s-01" % (keyed, PARENT),
                      "Authorization": "Bearer sk-team-0123456789"})
            self.assertEqual(r[0], 200)
            self.assertTrue(mock.requests()[-1]["headers"]["traceparent"].endswith("-01"))
            self.assertEqual(len(collector.trace(keyed, 2)), 2)
            self.assertEqual(collector.trace(anon, 1, timeout=1.5), [])
        finally:
            dp.stop()
            mock.stop()
            collector.stop()


class SlowCollector(unittest.TestCase):
    """A collector that answers late or not at all costs counters, never requests."""

    def test_requests_unaffected_drops_counted(self):
        collector = Collector()
        mock = Mock()
        collector.fault(delayMs=3000)
        spec = "  telemetry: {otlp: {endpoint: \"%s\", timeout: 500ms}}\n" % collector.url()
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]), extra_spec=spec)
        try:
            script = os.path.join(dp.dir, "post.lua")
            with open(script, "w") as f:
                f.write(WRK_POST)
            # until the queue (8,192 spans) overflows: a few seconds at the sanitizers' pace
            total = 0
            for _ in range(6):
                out = subprocess.run(["wrk", "-t2", "-c32", "-d3s", "-s", script,
                                      "http://127.0.0.1:%d/v1/chat/completions" % dp.port],
                                     capture_output=True, text=True, timeout=60).stdout
                total += int(re.search(r"(\d+) requests in", out).group(1))
                self.assertNotIn("Non-2xx", out, out)
                self.assertNotIn("Socket errors", out, out)
                m = dp.metrics()
                if m['knoway_trace_spans_total{result="dropped"}'] > 0:
                    break
            dropped = m['knoway_trace_spans_total{result="dropped"}']
            failed = m['knoway_trace_spans_total{result="failed"}']
            # two spans a request: what neither the queue nor the failed batches took was
            # dropped, and counted
            self.assertGreater(dropped, 0)
            self.assertGreater(failed, 0)
            self.assertEqual(m['knoway_trace_spans_total{result="exported"}'], 0)
            self.assertLessEqual(dropped + failed, 2 * total)
            # the collector down altogether: the same
            collector.stop()
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT)[0], 200)
        finally:
            self.assertEqual(dp.stop(), 0)
            mock.stop()
            collector.stop()


class HungCollector(unittest.TestCase):
    """A collector that never answers, with captureContent: the queued spans are bounded
    (32 MiB) and counted in the memory budget, and a stop waits at most 2 s for them (a hung
    collector once took the RSS from 20 to 296 MB and the shutdown to 48 s)."""

    def test_queue_bounded_and_stop_prompt(self):
        collector = Collector()
        mock = Mock()
        collector.fault(delayMs=120000)
        spec = ("  telemetry: {otlp: {endpoint: \"%s\", timeout: 30s, captureContent: true}}\n"
                % collector.url())
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]), extra_spec=spec)
        stopped = False
        try:
            # about 50 KB of content a span (captureContent keeps up to 64 KiB)
            big = dict(CHAT, messages=[{"role": "user", "content": "x" * 50000}])
            with concurrent.futures.ThreadPoolExecutor(8) as ex:
                codes = list(ex.map(lambda _: post(dp.port, "/v1/chat/completions", big)[0],
                                    range(1000)))
            self.assertEqual(set(codes), {200})
            m = dp.metrics()
            used = m['knoway_memory_budget_bytes{state="used"}']
            self.assertGreater(m['knoway_trace_spans_total{result="dropped"}'], 0)
            self.assertGreater(used, 24 << 20, "queued spans count in the memory budget")
            # 32 MiB queued, the batch in flight (256 spans) and the requests' own memory
            self.assertLess(used, (32 << 20) + (16 << 20), "at most 32 MiB of spans wait")
            t0 = time.time()
            self.assertEqual(dp.stop(), 0)
            stopped = True
            self.assertLess(time.time() - t0, 10, "the exit did not wait for the collector")
        finally:
            if not stopped:
                dp.stop()
            mock.stop()
            collector.stop()


if __name__ == "__main__":
    unittest.main()
