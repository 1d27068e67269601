"""Identity: LLMConsumer API keys (static mode), auth.required, model allow-lists."""
import json
import os
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, Mock, backend, post, request, route  # noqa: E402

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}

CONSUMERS = """---
apiVersion: v1
kind: Secret
metadata: {name: search-keys}
stringData: {a: sk-search-1-0123456789abcdef, b: "sk-search-2-0123456789abcdef\\n"}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMConsumer
metadata: {name: search}
spec:
  apiKeys: [{secretRef: {name: search-keys}}]
  attributes: {team: search}
  models: [demo]
---
apiVersion: v1
kind: Secret
metadata: {name: ops-keys}
stringData: {key: sk-ops-0123456789abcdef, other: sk-not-a-key}
---
apiVersion: llm.knoway.dev/v1alpha1
kind: LLMConsumer
metadata: {name: ops}
spec:
  apiKeys: [{secretRef: {name: ops-keys, key: key}}]
"""


def bearer(key):
    return {"Authorization": "Bearer " + key}


class Identity(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        res = (backend("b", cls.mock.url()) + route("demo", ["demo"], ["b"])
               + route("other", ["other"], ["b"]) + CONSUMERS)
        cls.dp = Dataplane(res, extra_spec="  auth: {required: true}\n")
        cls.open = Dataplane(res)  # auth not required

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        assert cls.open.stop() == 0
        cls.mock.stop()

    def error(self, resp):
        status, _, body = resp
        return status, json.loads(body)["error"]["code"]

    def test_required(self):
        self.assertEqual(self.error(post(self.dp.port, "/v1/chat/completions", CHAT)),
                         (401, "invalid_api_key"))
        self.assertEqual(self.error(post(self.dp.port, "/v1/chat/completions", CHAT,
                                         headers=bearer("sk-wrong"))), (401, "invalid_api_key"))
        # the key is checked before the body is parsed: a refused caller costs no parse
        self.assertEqual(self.error(post(self.dp.port, "/v1/chat/completions", "{not json",
                                         headers=bearer("sk-wrong"))), (401, "invalid_api_key"))
        self.assertEqual(self.error(post(self.dp.port, "/v1/chat/completions", "{not json",
                                         headers=bearer("sk-ops-0123456789abcdef")))[0], 400)
        # every value of a Secret is a key (the trailing newline is not part of it) ...
        for key in ("sk-search-1-0123456789abcdef", "sk-search-2-0123456789abcdef", "sk-ops-0123456789abcdef"):
            status, _, _ = post(self.dp.port, "/v1/chat/completions", CHAT, headers=bearer(key))
            self.assertEqual(status, 200, key)
        # ... or the one named
        self.assertEqual(self.error(post(self.dp.port, "/v1/chat/completions", CHAT,
                                         headers=bearer("sk-not-a-key"))), (401, "invalid_api_key"))

    def test_models_allowed(self):
        status, code = self.error(post(self.dp.port, "/v1/chat/completions",
                                       dict(CHAT, model="other"), headers=bearer("sk-search-1-0123456789abcdef")))
        self.assertEqual((status, code), (403, "model_not_allowed"))
        self.assertEqual(post(self.dp.port, "/v1/chat/completions", dict(CHAT, model="other"),
                              headers=bearer("sk-ops-0123456789abcdef"))[0], 200)
        ids = lambda key: sorted(m["id"] for m in json.loads(request(  # noqa: E731
            "GET", self.dp.port, "/v1/models", headers=bearer(key))[2])["data"])
        self.assertEqual(ids("sk-search-1-0123456789abcdef"), ["demo"])
        self.assertEqual(ids("sk-ops-0123456789abcdef"), ["demo", "other"])
        self.assertEqual(request("GET", self.dp.port, "/v1/models")[0], 401)

    def test_messages_takes_x_api_key(self):
        body = {"model": "demo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        status, _, raw = post(self.dp.port, "/v1/messages", body,
                              headers={"x-api-key": "sk-search-1-0123456789abcdef", "anthropic-version": "2023-06-01"})
        self.assertEqual(status, 200, raw)
        status, _, raw = post(self.dp.port, "/v1/messages", body,
                              headers={"anthropic-version": "2023-06-01"})
        self.assertEqual(status, 401)
        self.assertEqual(json.loads(raw)["type"], "error")  # Anthropic's shape

    def test_not_required(self):
        # anonymous is fine; a key that matches no consumer is refused
        self.assertEqual(post(self.open.port, "/v1/chat/completions", CHAT)[0], 200)
        self.assertEqual(self.error(post(self.open.port, "/v1/chat/completions", CHAT,
                                         headers=bearer("sk-wrong"))), (401, "invalid_api_key"))

    def test_the_log_names_the_consumer_never_the_key(self):
        post(self.dp.port, "/v1/chat/completions", CHAT, headers=bearer("sk-search-1-0123456789abcdef"))
        post(self.dp.port, "/v1/chat/completions", CHAT, headers=bearer("sk-wrong"))
        self.dp.wait_metric('knoway_requests_total{code="401",api="chat"}', 1)
        logs = self.dp.logs()
        self.assertIn('"consumer":"default/search","attributes":"team=search"', logs)
        self.assertNotIn("sk-search-1-0123456789abcdef", logs)
        self.assertNotIn("sk-wrong", logs)
        # the upstream never sees the client's key
        self.assertNotIn("sk-search-1-0123456789abcdef", json.dumps(self.mock.requests()))
        # /debug/config shows neither keys nor their digests
        config = json.loads(request("GET", self.dp.admin, "/debug/config")[2])
        search = [c for c in config["consumers"] if c["name"] == "search"][0]
        self.assertEqual(search["spec"]["keySha256"], "(2 keys, redacted)")



class Tenancy(unittest.TestCase):
    """Whoever can create an LLMConsumer and a Secret in a namespace issues keys: those keys
    call the routes of that namespace, and others only where a route admits them
    (spec.consumers). Such keys once worked on every route of every namespace."""

    def test_keys_call_their_namespace_unless_admitted(self):
        mock = Mock()
        res = (backend("b", mock.url()) + route("demo", ["demo"], ["b"])
               + route("shared", ["shared"], ["b"], "  consumers:\n    namespaces: [\"*\"]\n"
                       "    matchAttributes: {tier: gold}\n")
               + CONSUMERS +
               "---\napiVersion: v1\nkind: Secret\nmetadata: {name: k, namespace: team-x}\n"
               "stringData: {k: sk-team-x-0123456789abcdef}\n"
               "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\n"
               "metadata: {name: self-issued, namespace: team-x}\n"
               "spec:\n  apiKeys: [{secretRef: {name: k}}]\n  attributes: {tier: gold}\n")
        dp = Dataplane(res)
        try:
            own, other = bearer("sk-ops-0123456789abcdef"), bearer("sk-team-x-0123456789abcdef")
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT, headers=own)[0], 200)
            r = post(dp.port, "/v1/chat/completions", CHAT, headers=other)
            self.assertEqual(r[0], 404)
            self.assertEqual(json.loads(r[2])["error"]["code"], "model_not_found")
            shared = dict(CHAT, model="shared")
            self.assertEqual(post(dp.port, "/v1/chat/completions", shared, headers=other)[0], 200)
            # admitted from any namespace, but only with the attribute
            self.assertEqual(post(dp.port, "/v1/chat/completions", shared, headers=own)[0], 404)
            # anonymous callers are the platform's (auth not required here)
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT)[0], 200)
            models = json.loads(request("GET", dp.port, "/v1/models", headers=other)[2])
            self.assertEqual([m["id"] for m in models["data"]], ["shared"])
        finally:
            dp.stop()
            mock.stop()


class Guessing(unittest.TestCase):
    """Failed authentication is throttled per client address (it once allowed 20,000 guesses
    in half a second on one connection); a short key in a Secret is reported, not accepted."""

    def test_failed_attempts_throttled(self):
        mock = Mock()
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]) + CONSUMERS,
                       extra_spec="  auth: {failedAttempts: {limit: 5, window: 2s}}\n")
        try:
            codes = [post(dp.port, "/v1/chat/completions", CHAT,
                          headers=bearer("sk-guess-%04d-0123456789" % i))[0] for i in range(8)]
            self.assertEqual(codes, [401] * 5 + [429] * 3)
            r = post(dp.port, "/v1/chat/completions", CHAT,
                     headers=bearer("sk-search-1-0123456789abcdef"))
            self.assertEqual(r[0], 429, "a right key waits too: guessing is not told apart")
            self.assertEqual(json.loads(r[2])["error"]["code"], "too_many_auth_failures")
            self.assertGreaterEqual(int(r[1]["retry-after"]), 1)
            # anonymous requests are not held up (auth is not required here)
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT)[0], 200)
            time.sleep(4.1)  # the sliding window has passed
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT,
                                  headers=bearer("sk-search-1-0123456789abcdef"))[0], 200)
        finally:
            dp.stop()
            mock.stop()

    def test_short_keys_not_accepted(self):
        mock = Mock()
        res = (backend("b", mock.url()) + route("demo", ["demo"], ["b"]) +
               "---\napiVersion: v1\nkind: Secret\nmetadata: {name: k}\nstringData: {a: x1}\n"
               "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\n"
               "metadata: {name: tiny}\nspec:\n  apiKeys: [{secretRef: {name: k}}]\n")
        dp = Dataplane(res, wait=False)
        try:
            dp.proc.wait(10)
            self.assertNotEqual(dp.proc.returncode, 0)
            self.assertIn("holds an API key of 2 characters: API keys must have at least 16",
                          dp.logs())
            self.assertNotIn("x1\"", dp.logs())
        finally:
            dp.stop()
            mock.stop()


if __name__ == "__main__":
    unittest.main()
