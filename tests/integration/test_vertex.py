"""Vertex AI: Gemini and Claude models through the publisher paths, access tokens exchanged
for a service-account key (the mock's token endpoint verifies the JWT's RS256 signature and
claims), refreshed before they expire, refused keys, static tokens, Vertex's errors."""
import http.server
import json
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Dataplane, Mock, MockProviders, free_port, post, route,  # noqa: E402
                     service_account, sse_data, wait_for)

PROJECT = "knoway-test"
TEXT = "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "


def secret(name, value, key="credentials.json"):
    return ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: %s}\nstringData:\n  %s: %s\n"
            % (name, key, json.dumps(value if isinstance(value, str) else json.dumps(value))))


def vertex(name, model, url, secret_name, project=PROJECT, key=None):
    ref = "{name: %s%s}" % (secret_name, ", key: %s" % key if key else "")
    return ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: %s}\n"
            "spec:\n  provider: VertexAI\n  modelName: \"%s\"\n  upstream: {baseURL: \"%s\"}\n"
            "  credentials: {secretRef: %s, vertex: {project: %s, region: us-east5}}\n"
            % (name, model, url, ref, project)) + route(name, [name], [name])


def key_file(sa):
    fd, path = tempfile.mkstemp(prefix="kw-sa-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(sa, f)
    return path


def chat(model, **kw):
    return dict({"model": model, "messages": [{"role": "user", "content": "hi"}]}, **kw)


class Vertex(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.anthropic = Mock()
        port = free_port()
        token_uri = "http://127.0.0.1:%d/token" % port
        sa = service_account(token_uri)
        cls.sa_file = key_file(sa)
        cls.mock = MockProviders("--gcp-service-account", cls.sa_file, "--gcp-project", PROJECT,
                                 "--gcp-static-token", "static-token-1", "--anthropic-upstream",
                                 "http://127.0.0.1:%d" % cls.anthropic.port, port=port)
        # the same account with another key: the token endpoint refuses its signature
        cls.forged = service_account(token_uri)
        url = cls.mock.url()
        cls.dp = Dataplane(
            extra_spec="  vertexAI: {tokenURLs: [\"%s\"]}\n" % token_uri, resources=
            secret("sa", sa) + secret("forged", cls.forged) +
            secret("user", {"type": "authorized_user", "client_id": "x"}) +
            secret("static", "static-token-1") + secret("stale", "ya29.expired") +
            vertex("gemini", "gemini-2.5-flash", url, "sa") +
            vertex("claude", "claude-3-5-haiku@20241022", url, "sa") +
            vertex("other-project", "gemini-2.5-flash", url, "sa", project="someone-else") +
            vertex("forged", "gemini-2.5-flash", url, "forged") +
            vertex("user", "gemini-2.5-flash", url, "user") +
            vertex("static", "gemini-2.5-flash", url, "static") +
            vertex("stale", "gemini-2.5-flash", url, "stale"))
        wait_for(lambda: cls.dp.metrics().get("knoway_gcp_tokens") == 1, 10)

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()
        cls.anthropic.stop()
        os.unlink(cls.sa_file)

    def upstream(self, needle):
        return [r for r in self.mock.requests() if needle in r["path"]]

    def assert_stream(self, model, method):
        """A stream of the whole text and its usage, through the publisher's stream path."""
        st, _, raw = post(self.dp.port, "/v1/chat/completions",
                          chat(model, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(st, 200)
        data = sse_data(raw)
        self.assertEqual(data[-1], "[DONE]")
        chunks = [json.loads(d) for d in data[:-1]]
        self.assertEqual("".join(c["choices"][0]["delta"].get("content", "")
                                 for c in chunks if c["choices"]), TEXT)
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 8)
        self.assertTrue(self.mock.requests()[-1]["path"].endswith(method))

    def test_gemini_through_vertex(self):
        self.mock.clear()
        st, _, body = post(self.dp.port, "/v1/chat/completions", chat("gemini"))
        self.assertEqual(st, 200, body)
        r = json.loads(body)
        self.assertEqual(r["choices"][0]["message"]["content"], TEXT)
        self.assertEqual(r["usage"]["completion_tokens"], 8)
        up = self.mock.requests()[-1]
        self.assertEqual(up["path"], "/v1/projects/%s/locations/us-east5/publishers/google/models/"
                                     "gemini-2.5-flash:generateContent" % PROJECT)
        self.assertRegex(up["headers"]["authorization"], r"^Bearer ya29\.mock-\d+$")
        self.assertNotIn("x-goog-api-key", up["headers"])
        self.assertEqual(json.loads(up["body"])["contents"], [{"role": "user", "parts": [{"text": "hi"}]}])

        self.assert_stream("gemini", ":streamGenerateContent?alt=sse")

    def test_claude_through_vertex(self):
        self.mock.clear()
        st, _, body = post(self.dp.port, "/v1/chat/completions",
                           chat("claude", max_tokens=64, temperature=0.5))
        self.assertEqual(st, 200, body)
        r = json.loads(body)
        self.assertEqual(r["choices"][0]["message"]["content"], TEXT)
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        up = self.mock.requests()[-1]
        # the version suffix keeps its '@', as Vertex's SDKs send it
        self.assertEqual(up["path"], "/v1/projects/%s/locations/us-east5/publishers/anthropic/models/"
                                     "claude-3-5-haiku@20241022:rawPredict" % PROJECT)
        sent = json.loads(up["body"])
        self.assertEqual(sent["anthropic_version"], "vertex-2023-10-16")
        self.assertNotIn("model", sent)
        self.assertEqual(sent["max_tokens"], 64)
        self.assertEqual(sent["temperature"], 0.5)

        self.assert_stream("claude", ":streamRawPredict")

    def test_one_exchange_serves_many_requests(self):
        before = self.dp.metrics()['knoway_gcp_token_exchanges_total{result="ok"}']
        for _ in range(20):
            self.assertEqual(post(self.dp.port, "/v1/chat/completions", chat("gemini"))[0], 200)
        self.assertEqual(self.dp.metrics()['knoway_gcp_token_exchanges_total{result="ok"}'], before)
        self.assertEqual(before, 1)

    def test_a_refused_key_is_a_502_saying_why(self):
        st, _, body = post(self.dp.port, "/v1/chat/completions", chat("forged"))
        wait_for(lambda: post(self.dp.port, "/v1/chat/completions", chat("forged"))[0] == 502
                 and "invalid_grant" in self.dp.logs(), 5)
        st, _, body = post(self.dp.port, "/v1/chat/completions", chat("forged"))
        self.assertEqual(st, 502)
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], "upstream_auth_failed")
        # the client learns that the exchange failed, not what the endpoint said
        self.assertIn("backend forged (VertexAI) has no access token: its credential could not "
                      "be exchanged", err["message"])
        self.assertNotIn("invalid_grant", err["message"])
        self.assertIn("the token endpoint answered 400: invalid_grant: Invalid JWT Signature.",
                      self.dp.logs())
        self.assertGreaterEqual(self.dp.metrics()['knoway_gcp_token_exchanges_total{result="error"}'], 1)

    def test_a_json_credential_that_is_not_a_service_account_key(self):
        def answer():
            r = post(self.dp.port, "/v1/chat/completions", chat("user"))
            return r if r[0] == 502 else None
        st, _, body = wait_for(answer, 5)
        self.assertIn("its credential could not be exchanged", json.loads(body)["error"]["message"])
        self.assertIn('of type \\"authorized_user\\", not a service-account key', self.dp.logs())

    def test_a_static_access_token(self):
        self.mock.clear()
        st, _, body = post(self.dp.port, "/v1/chat/completions", chat("static"))
        self.assertEqual(st, 200, body)
        self.assertEqual(self.mock.requests()[-1]["headers"]["authorization"], "Bearer static-token-1")
        # one Vertex refuses: its error in OpenAI's shape, Google's status as the code
        st, _, body = post(self.dp.port, "/v1/chat/completions", chat("stale"))
        self.assertEqual(st, 401)
        err = json.loads(body)["error"]
        self.assertEqual(err["code"], "UNAUTHENTICATED")
        self.assertIn("invalid authentication credentials", err["message"])

    def test_vertex_errors_keep_their_status(self):
        st, _, body = post(self.dp.port, "/v1/chat/completions", chat("other-project"))
        self.assertEqual(st, 403)
        self.assertEqual(json.loads(body)["error"]["code"], "PERMISSION_DENIED")
        # Claude's own errors come in Anthropic's shape through Vertex
        st, _, body = post(self.dp.port, "/v1/chat/completions",
                           chat("claude", messages=[{"role": "assistant", "content": "x"}]))
        self.assertEqual(st // 100, 4, body)
        self.assertIn("error", json.loads(body))

    def test_only_chat_is_served(self):
        st, _, body = post(self.dp.port, "/v1/embeddings", {"model": "gemini", "input": "x"})
        self.assertEqual(st, 400)
        self.assertEqual(json.loads(body)["error"]["code"], "unsupported_endpoint")

    def test_keys_and_tokens_are_never_logged(self):
        post(self.dp.port, "/v1/chat/completions", chat("gemini"))
        logs = self.dp.logs()
        self.assertIn("Vertex AI access token obtained", logs)
        self.assertNotIn("PRIVATE KEY", logs)
        self.assertNotIn("ya29.mock", logs)
        self.assertNotIn("static-token-1", logs)


class TokenEndpoints(unittest.TestCase):
    """A tenant's service-account key names where the data plane posts: only Google's token
    endpoints and those the DataPlane lists are used, and nothing of the attempt reaches the
    client (it once echoed connect errors and answers: a scanner of the data plane's
    network)."""

    def test_an_unlisted_token_uri_is_never_contacted(self):
        hits = []

        class Endpoint(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                hits.append(self.path)
                self.send_response(500)
                self.end_headers()

            def log_message(self, *a):
                pass

        srv = http.server.HTTPServer(("127.0.0.1", 0), Endpoint)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        sa = service_account("http://127.0.0.1:%d/token" % srv.server_address[1])
        dp = Dataplane(secret("sa", sa) + vertex("gemini", "gemini-2.5-flash",
                                                 "http://127.0.0.1:9", "sa"))
        try:
            def answer():
                r = post(dp.port, "/v1/chat/completions", chat("gemini"))
                return r if r[0] == 502 else None
            st, _, body = wait_for(answer, 5)
            msg = json.loads(body)["error"]["message"]
            self.assertNotIn("127.0.0.1", msg)
            self.assertNotIn("token_uri", msg)
            self.assertEqual(hits, [], "the endpoint was never contacted")
            self.assertIn("is not one of Google's token endpoints", dp.logs())
        finally:
            dp.stop()
            srv.shutdown()


class Refresh(unittest.TestCase):
    """Tokens that live 4 s, issued after 1 s: the first request finds none yet (503), later
    ones never see a gap while the token is refreshed at half its life."""

    def test_pending_then_refreshed_without_a_gap(self):
        port = free_port()
        sa = service_account("http://127.0.0.1:%d/token" % port)
        path = key_file(sa)
        mock = MockProviders("--gcp-service-account", path, "--gcp-token-ttl", "4",
                             "--gcp-token-delay", "1", port=port)
        dp = Dataplane(secret("sa", sa) + vertex("gemini", "gemini-2.5-flash", mock.url(), "sa"),
                       extra_spec="  vertexAI: {tokenURLs: [\"http://127.0.0.1:%d/token\"]}\n"
                       % port)
        try:
            st, _, body = post(dp.port, "/v1/chat/completions", chat("gemini"))
            self.assertEqual(st, 503, body)
            err = json.loads(body)["error"]
            self.assertEqual(err["code"], "credentials_pending")
            self.assertIn("is still obtaining its access token", err["message"])
            wait_for(lambda: post(dp.port, "/v1/chat/completions", chat("gemini"))[0] == 200, 5)
            statuses = []
            end = time.time() + 6
            while time.time() < end:
                statuses.append(post(dp.port, "/v1/chat/completions", chat("gemini"))[0])
                time.sleep(0.1)
            self.assertEqual(set(statuses), {200})
            tokens = {r["headers"]["authorization"] for r in mock.requests()
                      if r["path"].startswith("/v1/projects/")}
            self.assertGreaterEqual(len(tokens), 2)  # refreshed, and the new one used
            self.assertGreaterEqual(len([r for r in mock.requests() if r["path"] == "/token"]), 3)
        finally:
            self.assertEqual(dp.stop(), 0)
            mock.stop()
            os.unlink(path)


if __name__ == "__main__":
    unittest.main()
