"""W3C trace context: a client's traceparent is joined (or a new trace started), the access
log carries trace_id and span_id, the upstream gets traceparent and tracestate."""
import json
import os
import re
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, Mock, backend, post, route  # noqa: E402

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
        self.assertEqual(up["traceparent"], "00-%s-%s-01" % (TRACE, log["span_id"]))
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


if __name__ == "__main__":
    unittest.main()
