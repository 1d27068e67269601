"""OpenTelemetry GenAI metrics on /metrics: names, labels from configuration only (a prefix
route's pattern, not the client's model), histogram buckets, promtool's check."""
import json
import os
import subprocess
import sys
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, Mock, backend, consumer, post, request, route  # noqa: E402

LABELS = ('gen_ai_operation_name="chat",gen_ai_provider_name="vllm",gen_ai_request_model="%s",'
          'gen_ai_response_model="%s",knoway_route="%s",knoway_backend="b",knoway_consumer="%s",'
          'error_type="%s"')


class GenAI(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        cls.dp = Dataplane(backend("b", cls.mock.url())
                           + backend("bad", cls.mock.url(), headers={"x-mock-status": "503"})
                           + route("exact", ["demo"], ["b"])
                           + route("family", ["llama-*"], ["b"])
                           + route("broken", ["broken"], ["bad"]) + consumer("team", "sk-a-0123456789abcdef"))

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()

    def test_metrics(self):
        key = {"Authorization": "Bearer sk-a-0123456789abcdef"}
        for _ in range(3):
            self.assertEqual(post(self.dp.port, "/v1/chat/completions",
                                  {"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
                                  key)[0], 200)
        # many client models under one prefix route: one label value, the pattern
        for i in range(5):
            self.assertEqual(post(self.dp.port, "/v1/chat/completions",
                                  {"model": "llama-%d" % i,
                                   "messages": [{"role": "user", "content": "hi"}]}, key)[0], 200)
        r = post(self.dp.port, "/v1/chat/completions",
                 {"model": "demo", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                 key)
        self.assertEqual(r[0], 200)
        self.assertEqual(post(self.dp.port, "/v1/chat/completions",
                              {"model": "broken", "messages": [{"role": "user", "content": "x"}]},
                              key)[0], 503)
        text = request("GET", self.dp.admin, "/metrics")[2].decode()
        check = subprocess.run(["promtool", "check", "metrics"], input=text.encode(),
                               capture_output=True)
        self.assertEqual(check.returncode, 0, check.stderr.decode() + check.stdout.decode())
        demo = LABELS % ("demo", "demo", "exact", "default/team", "")
        fam = LABELS % ("llama-*", "llama-*", "family", "default/team", "")
        # 3 buffered + 1 stream answers of 8 output tokens each (the mock's), 4 input each
        self.assertIn('gen_ai_client_token_usage_count{%s,gen_ai_token_type="output"} 4' % demo,
                      text)
        self.assertIn('gen_ai_client_token_usage_bucket{%s,gen_ai_token_type="output",le="16"} 4'
                      % demo, text)
        self.assertIn('gen_ai_client_token_usage_bucket{%s,gen_ai_token_type="output",le="4"} 0'
                      % demo, text)
        self.assertIn('gen_ai_client_inference_usage_output_tokens_total{%s} 32' % demo, text)
        self.assertIn('gen_ai_client_inference_usage_input_tokens_total{%s} 16' % demo, text)
        self.assertIn('gen_ai_server_request_duration_seconds_count{%s} 4' % demo, text)
        self.assertIn('gen_ai_server_time_to_first_token_seconds_count{%s} 1' % demo, text)
        self.assertIn('gen_ai_server_request_duration_seconds_count{%s} 5' % fam, text)
        self.assertNotIn("llama-3", text)  # client strings never become label values
        self.assertIn('gen_ai_server_request_duration_seconds_count{%s} 1'
                      % (LABELS % ("broken", "broken", "broken", "default/team", "5xx"))
                      .replace('knoway_backend="b"', 'knoway_backend="bad"'), text)


if __name__ == "__main__":
    unittest.main()
