"""W3C trace context: a client's traceparent is joined (or a new trace started), the access
log carries trace_id and span_id, the upstream gets traceparent and tracestate."""
import http.server
import json
import os
import re
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, Mock, backend, free_port, post, route  # noqa: E402

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

    def test_keeps_the_sampled_flag(self):
        log, up = self.call({"traceparent": "00-%s-%s-00" % (TRACE, PARENT)})
        self.assertTrue(up["traceparent"].endswith("-00"))
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



class Collector:
    """An OTLP/HTTP receiver (JSON): the spans it was sent."""

    def __init__(self):
        self.spans = []
        spans = self.spans

        class H(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                assert self.path == "/v1/traces"
                for rs in body["resourceSpans"]:
                    for ss in rs["scopeSpans"]:
                        spans.extend(ss["spans"])
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), H)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def trace(self, trace_id, n, timeout=5.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            got = [s for s in self.spans if s["traceId"] == trace_id]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        return [s for s in self.spans if s["traceId"] == trace_id]


def attrs(span):
    return {a["key"]: list(a["value"].values())[0] for a in span["attributes"]}


class Export(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.collector = Collector()
        cls.mock = Mock()
        res = (backend("b", cls.mock.url()) + backend("bad", cls.mock.url(),
                                                     headers={"x-mock-status": "503"})
               + route("demo", ["demo"], ["b"])
               + route("fallback", ["fallback"], [{"name": "bad"}, {"name": "b", "priority": 1}]))
        spec = "  telemetry: {otlp: {endpoint: \"%s\", sampleRatio: 0}}\n" % cls.collector.url()
        cls.dp = Dataplane(res, extra_spec=spec)

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()
        cls.collector.server.shutdown()

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
        unsampled = "6" * 31 + "1"
        post(self.dp.port, "/v1/chat/completions", CHAT,
             {"traceparent": "00-%s-%s-00" % (unsampled, PARENT)})
        r = post(self.dp.port, "/v1/chat/completions", CHAT)
        self.assertEqual(r[0], 200)
        time.sleep(1.5)  # the exporter sends every second
        self.assertEqual(self.collector.trace(unsampled, 1, timeout=0.1), [])
        mine = {s["traceId"] for s in self.collector.spans}
        self.assertTrue(mine <= {TRACE, "5" * 31 + "1"}, "only the sampled traces were exported")
        m = self.dp.metrics()
        self.assertEqual(m['knoway_trace_spans_total{result="exported"}'], len(self.collector.spans))
        self.assertEqual(m['knoway_trace_spans_total{result="failed"}'], 0)


if __name__ == "__main__":
    unittest.main()
