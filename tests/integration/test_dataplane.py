"""knoway-dataplane against knoway-mockllm, processes on loopback."""
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import (Dataplane, Mock, backend, free_port, post, request, route,  # noqa: E402
                     sse_data, wait_for, wait_port)

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hello there friend"}]}


def resources(mock):
    dead = "http://127.0.0.1:%d/v1" % free_port()
    return (backend("mock", mock.url(), model="mock-upstream")
            + backend("passthrough", mock.url())
            + backend("mock-params", mock.url(), extra=(
                "  params:\n    defaults: {temperature: 0.3, max_tokens: 5}\n"
                "    overrides: {user: gateway}\n    remove: [logit_bias]\n"))
            + backend("dead", dead)
            + backend("slow", mock.url(), headers={"x-mock-latency-ms": "3000"},
                      extra="")
            + backend("reset", mock.url(), headers={"x-mock-fault": "reset", "x-mock-fault-after": "2",
                                                    "x-mock-chunks": "5"})
            + backend("reset-early", mock.url(), headers={"x-mock-fault": "reset", "x-mock-fault-after": "-1"})
            + backend("limited", mock.url(), headers={"x-mock-status": "429", "x-mock-retry-after": "7"})
            + backend("broken", mock.url(), headers={"x-mock-status": "500"})
            + backend("waiting", mock.url(), headers={"x-mock-ttft-ms": "10000"})
            + backend("ticking", mock.url(), headers={"x-mock-interval-ms": "300", "x-mock-chunks": "50"})
            + backend("long", mock.url(), headers={"x-mock-chunks": "100000"})
            + backend("quiet", mock.url(), headers={"x-mock-ttft-ms": "16000", "x-mock-chunks": "1"})
            + backend("stall", mock.url(), headers={"x-mock-fault": "stall", "x-mock-fault-after": "2"})
            + route("demo", ["demo", "demo-alias"], ["mock"])
            + route("params", ["params"], ["mock-params"])
            + route("dead", ["dead"], ["dead"])
            + route("slow", ["slow"], ["slow"], extra="  timeout: 500ms\n")
            + route("reset", ["reset"], ["reset"])
            + route("reset-early", ["reset-early"], ["reset-early"])
            + route("limited", ["limited"], ["limited"])
            + route("broken", ["broken"], ["broken"])
            + route("waiting", ["waiting"], ["waiting"])
            + route("ticking", ["ticking"], ["ticking"])
            + route("long", ["long"], ["long"])
            + route("stall", ["stall"], ["stall"], extra="  streamIdleTimeout: 1s\n")
            + route("quiet", ["quiet"], ["quiet"])
            + route("fallback", ["fallback"], [{"name": "dead"}, {"name": "mock", "priority": 1}])
            + route("weighted", ["weighted"], [{"name": "mock", "weight": 3},
                                              {"name": "mock-params", "weight": 1}])
            + route("prefix2", ["fam-*"], ["passthrough"])
            + ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: tenant}\n"
               "spec:\n  match:\n    models: [demo]\n    headers: [{name: x-tenant, value: research}]\n"
               "  backendRefs: [{name: mock-params}]\n"))


def setUpModule():
    global MOCK, DP
    MOCK = Mock(threads=2)
    DP = Dataplane(resources(MOCK), extra_spec="  limits: {maxBodyBytes: 65536}\n")


def tearDownModule():
    rc = DP.stop()
    MOCK.stop()
    if rc != 0:
        raise RuntimeError("dataplane exited %s" % rc)


def last_upstream():
    return MOCK.requests()[-1]


class Endpoints(unittest.TestCase):
    def test_models(self):
        status, h, body = request("GET", DP.port, "/v1/models")
        self.assertEqual(status, 200)
        doc = json.loads(body)
        self.assertEqual(doc["object"], "list")
        ids = [m["id"] for m in doc["data"]]
        self.assertIn("demo", ids)
        self.assertIn("demo-alias", ids)
        self.assertNotIn("fam-*", ids)  # a prefix names no model
        self.assertTrue(all(m["object"] == "model" for m in doc["data"]))
        self.assertEqual(len(ids), len(set(ids)))

    def test_chat_identical_to_upstream(self):
        status, h, via = post(DP.port, "/v1/chat/completions", CHAT)
        self.assertEqual(status, 200)
        self.assertIn("x-request-id", h)
        sent = json.loads(last_upstream()["body"])
        self.assertEqual(sent["model"], "mock-upstream")  # the backend's modelName
        self.assertEqual(sent["messages"], CHAT["messages"])
        _, _, direct = post(MOCK.port, "/v1/chat/completions", dict(CHAT, model="mock-upstream"))
        self.assertEqual(via, direct)

    def test_completions_and_embeddings(self):
        for path, body in [("/v1/completions", {"model": "demo", "prompt": "one two three"}),
                           ("/v1/embeddings", {"model": "demo", "input": ["a b", "c"]})]:
            status, _, via = post(DP.port, path, body)
            self.assertEqual(status, 200, via)
            self.assertEqual(last_upstream()["path"], path)
            _, _, direct = post(MOCK.port, path, dict(body, model="mock-upstream"))
            self.assertEqual(via, direct)

    def test_prefix_match(self):
        status, _, body = post(DP.port, "/v1/chat/completions", dict(CHAT, model="fam-7b"))
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(last_upstream()["body"])["model"], "fam-7b")  # passed through

    def test_header_match(self):
        post(DP.port, "/v1/chat/completions", CHAT, headers={"x-tenant": "research"})
        self.assertEqual(json.loads(last_upstream()["body"]).get("user"), "gateway")
        post(DP.port, "/v1/chat/completions", CHAT, headers={"x-tenant": "other"})
        self.assertNotIn("user", json.loads(last_upstream()["body"]))

    def test_params(self):
        body = dict(CHAT, model="params", temperature=0.9, logit_bias={"1": 2}, user="me")
        status, _, _ = post(DP.port, "/v1/chat/completions", body)
        self.assertEqual(status, 200)
        sent = json.loads(last_upstream()["body"])
        self.assertEqual(sent["temperature"], 0.9)   # the client's value beats a default
        self.assertEqual(sent["max_tokens"], 5)      # a default fills a gap
        self.assertEqual(sent["user"], "gateway")    # an override always wins
        self.assertNotIn("logit_bias", sent)         # removed
        self.assertEqual(sent["model"], "params")    # no modelName: the client's model

    def test_weights(self):
        MOCK.clear()
        for _ in range(200):
            post(DP.port, "/v1/chat/completions", dict(CHAT, model="weighted"))
        users = sum(1 for r in MOCK.requests() if '"user":"gateway"' in r["body"])
        self.assertTrue(25 <= users <= 80, users)  # 1 in 4 goes to mock-params

    def test_fallback_to_lower_priority(self):
        status, _, body = post(DP.port, "/v1/chat/completions", dict(CHAT, model="fallback"))
        self.assertEqual(status, 200, body)
        self.assertEqual(json.loads(body)["object"], "chat.completion")


class Streaming(unittest.TestCase):
    def test_stream_identical_to_upstream(self):
        req = dict(CHAT, stream=True)
        status, h, via = post(DP.port, "/v1/chat/completions", req)
        self.assertEqual(status, 200)
        self.assertTrue(h["content-type"].startswith("text/event-stream"))
        sent = json.loads(last_upstream()["body"])
        self.assertEqual(sent["stream_options"], {"include_usage": True})  # asked on the client's behalf
        _, _, direct = post(MOCK.port, "/v1/chat/completions", dict(req, model="mock-upstream"))
        self.assertEqual(via, direct)  # the extra usage chunk is stripped
        self.assertEqual(sse_data(via)[-1], "[DONE]")

    def test_stream_with_client_usage(self):
        req = dict(CHAT, stream=True, stream_options={"include_usage": True})
        _, _, via = post(DP.port, "/v1/chat/completions", req)
        _, _, direct = post(MOCK.port, "/v1/chat/completions", dict(req, model="mock-upstream"))
        self.assertEqual(via, direct)
        usage = json.loads(sse_data(via)[-2])["usage"]
        self.assertEqual(usage["prompt_tokens"], 6)
        self.assertEqual(usage["completion_tokens"], 8)

    def test_usage_accounted(self):
        before = DP.metrics()
        post(DP.port, "/v1/chat/completions", CHAT)                          # 6 + 8
        post(DP.port, "/v1/chat/completions", dict(CHAT, stream=True))       # 6 + 8, from the stream
        post(DP.port, "/v1/embeddings", {"model": "demo", "input": "a b c"})  # 3 + 0
        key = 'knoway_tokens_total{gen_ai_token_type="%s"}'
        self.assertEqual(DP.wait_metric(key % "input", before[key % "input"] + 15) - before[key % "input"], 15)
        self.assertEqual(DP.wait_metric(key % "output", before[key % "output"] + 16) - before[key % "output"], 16)

    def test_error_after_start_is_an_event(self):
        status, _, body = post(DP.port, "/v1/chat/completions", dict(CHAT, model="reset", stream=True))
        self.assertEqual(status, 200)
        events = sse_data(body)
        self.assertEqual(len(events), 3, events)  # two chunks, then the error
        err = json.loads(events[-1])["error"]
        self.assertEqual(err["type"], "server_error")
        self.assertIn("upstream failed after the response started", err["message"])

    def test_stream_idle_timeout(self):
        t = time.time()
        status, _, body = post(DP.port, "/v1/chat/completions", dict(CHAT, model="stall", stream=True))
        self.assertEqual(status, 200)
        events = sse_data(body)
        self.assertEqual(len(events), 3, events)  # two chunks, then the stall ends in an error
        err = json.loads(events[-1])["error"]
        self.assertEqual(err["code"], "upstream_timeout")
        self.assertIn("sent nothing for 1000 ms", err["message"])
        self.assertLess(time.time() - t, 3.0)

    def test_keepalive_comment_on_idle_stream(self):
        # the upstream answers 200 at once and holds its only chunk for 16 s: after 15 s of
        # silence the client gets an SSE comment, so proxies in between keep the stream open
        s = raw_stream_request(DP.port, "quiet")
        s.settimeout(25)
        data = b""
        t0 = time.time()
        while b"data: [DONE]" not in data and time.time() - t0 < 22:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        self.assertIn(b": keepalive\n\n", data)
        self.assertLess(data.index(b": keepalive"), data.index(b"tok0"))
        self.assertIn(b"data: [DONE]", data)

    def test_hundreds_of_concurrent_streams(self):
        async def one(i):
            r, w = await asyncio.open_connection("127.0.0.1", DP.port)
            body = json.dumps(dict(CHAT, model="demo", stream=True)).encode()
            w.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            await w.drain()
            data = await asyncio.wait_for(r.read(), 30)
            w.close()
            return data

        async def main():
            return await asyncio.gather(*(one(i) for i in range(400)))

        results = asyncio.run(main())
        ok = sum(1 for d in results if d.startswith(b"HTTP/1.1 200") and b"data: [DONE]" in d
                 and d.count(b"chat.completion.chunk") == 9)
        self.assertEqual(ok, 400)


class Errors(unittest.TestCase):
    def check(self, status, body, want_status, want_type, want_code=None, want_param=None):
        self.assertEqual(status, want_status, body)
        err = json.loads(body)["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"})
        self.assertEqual(err["type"], want_type)
        self.assertEqual(err["code"], want_code)
        self.assertEqual(err["param"], want_param)
        return err

    def test_bad_requests(self):
        s, _, b = post(DP.port, "/v1/chat/completions", "{not json")
        self.check(s, b, 400, "invalid_request_error")
        s, _, b = post(DP.port, "/v1/chat/completions", {"messages": []})
        self.check(s, b, 400, "invalid_request_error", None, "model")
        s, _, b = post(DP.port, "/v1/chat/completions", {"model": "demo"})
        self.check(s, b, 400, "invalid_request_error", None, "messages")
        s, _, b = post(DP.port, "/v1/chat/completions", dict(CHAT, stream="yes"))
        self.check(s, b, 400, "invalid_request_error", None, "stream")
        s, _, b = post(DP.port, "/v1/chat/completions", [1, 2])
        self.check(s, b, 400, "invalid_request_error")

    def test_unknown_model(self):
        s, _, b = post(DP.port, "/v1/chat/completions", dict(CHAT, model="gpt-99"))
        err = self.check(s, b, 404, "invalid_request_error", "model_not_found", "model")
        self.assertIn("gpt-99", err["message"])

    def test_path_and_method(self):
        s, _, b = post(DP.port, "/v1/nothing", CHAT)
        self.check(s, b, 404, "invalid_request_error", "unknown_url")
        s, h, b = request("GET", DP.port, "/v1/chat/completions")
        self.check(s, b, 405, "invalid_request_error", "method_not_allowed")
        self.assertEqual(h["allow"], "POST")

    def test_body_too_large(self):
        big = dict(CHAT, messages=[{"role": "user", "content": "x" * 70000}])
        s, _, b = post(DP.port, "/v1/chat/completions", big)
        self.check(s, b, 413, "invalid_request_error", "request_too_large")
        s, _, b = post(DP.port, "/v1/chat/completions", CHAT)  # the connection pool is fine after it
        self.assertEqual(s, 200)

    def test_header_limit(self):
        # 8 KiB of libmicrohttpd memory per connection bounds the headers; its 431 is HTML.
        # One write, then read: the server may close before a client sends its body.
        body = json.dumps(CHAT).encode()
        sock = socket.create_connection(("127.0.0.1", DP.port), timeout=5)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nx-big: %s\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (b"a" * 9000, len(body), body))
        status = b""
        try:
            while b"\r\n" not in status:
                d = sock.recv(4096)
                if not d:
                    break
                status += d
        except ConnectionResetError:
            pass
        sock.close()
        self.assertTrue(status.startswith(b"HTTP/1.1 431"), status[:80])
        s, _, _ = post(DP.port, "/v1/chat/completions", CHAT, headers={"x-big": "a" * 5000})
        self.assertEqual(s, 200)

    def test_upstream_connect_failure(self):
        s, h, b = post(DP.port, "/v1/chat/completions", dict(CHAT, model="dead"))
        err = self.check(s, b, 502, "server_error", "upstream_unavailable")
        # the client gets a generic message with the request id; the address, the backend
        # and curl's text are in the access log only
        rid = h["x-request-id"]
        self.assertEqual(err["message"], "the upstream service is unavailable (request id %s)" % rid)
        line = wait_for(lambda: [l for l in DP.logs().splitlines() if rid in l and '"status":502' in l])
        self.assertIn('"backend":"dead"', line[0])
        self.assertIn("127.0.0.1 port", line[0])

    def test_upstream_reset_before_response(self):
        s, _, b = post(DP.port, "/v1/chat/completions", dict(CHAT, model="reset-early", stream=True))
        self.check(s, b, 502, "server_error", "upstream_unavailable")

    def test_upstream_timeout(self):
        t = time.time()
        s, _, b = post(DP.port, "/v1/chat/completions", dict(CHAT, model="slow"))
        self.check(s, b, 504, "server_error", "upstream_timeout")
        self.assertLess(time.time() - t, 2.0)  # the route's 500ms, not the mock's 3s

    def test_upstream_errors_pass_through(self):
        s, h, b = post(DP.port, "/v1/chat/completions", dict(CHAT, model="limited"))
        err = self.check(s, b, 429, "rate_limit_exceeded", "rate_limit_exceeded")
        self.assertEqual(h["retry-after"], "7")
        self.assertEqual(err["message"], "mock error with status 429")
        s, _, b = post(DP.port, "/v1/chat/completions", dict(CHAT, model="broken", stream=True))
        self.check(s, b, 500, "server_error")


def raw_stream_request(port, model, read_first=False, rcvbuf=None):
    """Send a streaming request on a raw socket; returns the socket."""
    body = json.dumps(dict(CHAT, model=model, stream=True)).encode()
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    if read_first:
        data = b""
        while b"data: " not in data:
            data += s.recv(65536)
    return s


def wait_cancelled(model, since, timeout=2.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        reqs = [r for r in MOCK.requests() if r["id"] > since and model in r["body"]]
        if reqs and reqs[-1]["cancelled"]:
            return time.time()
        time.sleep(0.005)
    return None


class Azure(unittest.TestCase):
    """provider AzureOpenAI: deployment URL, api-version, api-key; errors in OpenAI's shape."""

    @classmethod
    def setUpClass(cls):
        base = "http://127.0.0.1:%d" % MOCK.port  # the resource root, no /v1
        azure = ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: %s}\n"
                 "spec:\n  provider: AzureOpenAI\n  upstream:\n    baseURL: \"%s\"\n%s"
                 "  credentials:\n    secretRef: {name: %s}\n    azure: {deployment: gpt4o-prod}\n")
        cls.dp = Dataplane(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: az}\nstringData: {apiKey: az-key-1}\n"
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: empty}\nstringData: {apiKey: \"\"}\n"
            + azure % ("az", base, "", "az") + route("az", ["gpt-4o"], ["az"])
            + azure % ("az-nokey", base, "", "empty") + route("az-nokey", ["nokey"], ["az-nokey"])
            + azure % ("az-filter", base, "    headers: [{name: x-mock-fault, value: content_filter}]\n", "az")
            + route("az-filter", ["filtered"], ["az-filter"]))

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0

    def test_chat_stream_embeddings(self):
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(CHAT, model="gpt-4o"))
        self.assertEqual(s, 200, body)
        sent = last_upstream()
        self.assertEqual(sent["path"], "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21")
        self.assertEqual(sent["headers"]["api-key"], "az-key-1")
        self.assertNotIn("authorization", sent["headers"])
        self.assertEqual(json.loads(body)["choices"][0]["message"]["content"],
                         "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ")
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(CHAT, model="gpt-4o", stream=True))
        self.assertEqual(s, 200)
        self.assertEqual(sse_data(body)[-1], "[DONE]")
        self.assertEqual(len(sse_data(body)), 10)  # the usage chunk asked for knoway is stripped
        s, _, body = post(self.dp.port, "/v1/embeddings", {"model": "gpt-4o", "input": "a b"})
        self.assertEqual(s, 200, body)
        self.assertEqual(last_upstream()["path"], "/openai/deployments/gpt4o-prod/embeddings?api-version=2024-10-21")

    def test_errors_mapped_to_openai_shape(self):
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(CHAT, model="nokey"))
        self.assertEqual(s, 401)
        err = json.loads(body)["error"]
        self.assertEqual(set(err), {"message", "type", "param", "code"})
        # Azure's body has no type: the status gives it, by the one table (dp_error_type)
        self.assertEqual((err["type"], err["code"]), ("authentication_error", "401"))
        self.assertIn("Access denied", err["message"])
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(CHAT, model="filtered"))
        self.assertEqual(s, 400)
        err = json.loads(body)["error"]
        self.assertEqual((err["type"], err["param"], err["code"]), ("invalid_request_error", "prompt", "content_filter"))


class Anthropic(unittest.TestCase):
    """provider Anthropic: OpenAI chat in, Messages API out, translated back, streams too."""

    @classmethod
    def setUpClass(cls):
        base = "http://127.0.0.1:%d" % MOCK.port  # API root; the gateway adds /v1/messages
        claude = ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: %s}\n"
                  "spec:\n  provider: Anthropic\n  modelName: claude-x\n  upstream:\n    baseURL: \"%s\"\n%s"
                  "  credentials:\n    secretRef: {name: %s}\n")
        cls.dp = Dataplane(
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: ant}\nstringData: {apiKey: sk-ant-1}\n"
            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: none}\nstringData: {apiKey: \"\"}\n"
            + claude % ("claude", base, "", "ant") + route("claude", ["claude"], ["claude"])
            + claude % ("claude-nokey", base, "", "none") + route("claude-nokey", ["nokey"], ["claude-nokey"])
            + claude % ("claude-busy", base, "    headers: [{name: x-mock-status, value: \"529\"}]\n", "ant")
            + route("claude-busy", ["busy"], ["claude-busy"]))

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0

    REQ = {"model": "claude", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello there"},
        {"role": "assistant", "content": [{"type": "text", "text": "hi"}]},
        {"role": "user", "content": [{"type": "text", "text": "look"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0K"}}]}],
        "stop": "END", "temperature": 0.2, "user": "u-7"}

    def test_request_translation(self):
        s, _, body = post(self.dp.port, "/v1/chat/completions", self.REQ)
        self.assertEqual(s, 200, body)
        up = last_upstream()
        self.assertEqual(up["path"], "/v1/messages")
        self.assertEqual(up["headers"]["x-api-key"], "sk-ant-1")
        self.assertEqual(up["headers"]["anthropic-version"], "2023-06-01")
        sent = json.loads(up["body"])
        self.assertEqual(sent["system"], "be brief")  # lifted out of messages
        self.assertEqual([m["role"] for m in sent["messages"]], ["user", "assistant", "user"])
        self.assertEqual(sent["messages"][2]["content"][1],
                         {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0K"}})
        self.assertEqual(sent["max_tokens"], 4096)  # Anthropic requires it
        self.assertEqual(sent["stop_sequences"], ["END"])
        self.assertEqual(sent["metadata"], {"user_id": "u-7"})
        self.assertEqual(sent["model"], "claude-x")
        self.assertNotIn("stream_options", sent)

    def test_response_translation(self):
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(self.REQ, max_tokens=50))
        self.assertEqual(s, 200, body)
        self.assertEqual(json.loads(last_upstream()["body"])["max_tokens"], 50)
        r = json.loads(body)
        self.assertEqual(r["object"], "chat.completion")
        self.assertEqual(r["model"], "claude-x")
        self.assertEqual(r["choices"][0]["message"], {"role": "assistant", "content": "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 "})
        self.assertEqual(r["choices"][0]["finish_reason"], "stop")
        # the mock's input: 3+2 (user) + 3+1 (assistant parts) + 3+1 (user parts) + 2 (system) = 15,
        # plus 2 cache-read and 1 cache-creation tokens
        self.assertEqual(r["usage"], {"prompt_tokens": 18, "completion_tokens": 8, "total_tokens": 26,
                                      "prompt_tokens_details": {"cached_tokens": 2}})

    def test_stream_translation(self):
        s, h, body = post(self.dp.port, "/v1/chat/completions",
                          dict(self.REQ, stream=True, stream_options={"include_usage": True}))
        self.assertEqual(s, 200, body)
        events = sse_data(body)
        self.assertEqual(events[-1], "[DONE]")
        chunks = [json.loads(e) for e in events[:-1]]
        self.assertTrue(all(c["object"] == "chat.completion.chunk" for c in chunks))
        self.assertEqual(chunks[0]["choices"][0]["delta"], {"role": "assistant", "content": ""})
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        self.assertEqual(text, "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ")
        self.assertEqual(chunks[-2]["choices"][0]["finish_reason"], "stop")
        self.assertEqual(chunks[-1]["choices"], [])
        self.assertEqual(chunks[-1]["usage"]["prompt_tokens"], 18)
        self.assertEqual(chunks[-1]["usage"]["completion_tokens"], 8)
        # without include_usage: no usage chunk, usage still accounted
        before = self.dp.metrics()['knoway_tokens_total{gen_ai_token_type="output"}']
        _, _, body = post(self.dp.port, "/v1/chat/completions", dict(self.REQ, stream=True))
        self.assertTrue(all(json.loads(e)["choices"] for e in sse_data(body)[:-1]))
        key = 'knoway_tokens_total{gen_ai_token_type="output"}'
        self.assertEqual(self.dp.wait_metric(key, before + 8) - before, 8)

    def test_errors(self):
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(self.REQ, model="nokey"))
        self.assertEqual(s, 401)
        self.assertEqual(json.loads(body), {"error": {"message": "x-api-key header is required",
                                                      "type": "authentication_error", "param": None, "code": None}})
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(self.REQ, model="busy"))
        self.assertEqual((s, json.loads(body)["error"]["type"]), (529, "overloaded_error"))
        s, _, body = post(self.dp.port, "/v1/embeddings", {"model": "claude", "input": "x"})
        self.assertEqual(s, 400)
        self.assertEqual(json.loads(body)["error"]["code"], "unsupported_endpoint")
        s, _, body = post(self.dp.port, "/v1/chat/completions", dict(self.REQ, tools=[{"type": "function"}]))
        self.assertEqual((s, json.loads(body)["error"]["param"]), (400, "tools"))


class Cancellation(unittest.TestCase):
    def last_id(self):
        reqs = MOCK.requests()
        return reqs[-1]["id"] if reqs else 0

    def test_disconnect_while_suspended_waiting_for_upstream(self):
        since = self.last_id()
        s = raw_stream_request(DP.port, "waiting")  # the mock holds the first byte for 10 s
        time.sleep(0.3)
        t0 = time.time()
        s.close()
        t1 = wait_cancelled("waiting", since)
        self.assertIsNotNone(t1, "upstream transfer not cancelled")
        self.assertLess(t1 - t0, 0.1)

    def test_disconnect_mid_stream(self):
        since = self.last_id()
        s = raw_stream_request(DP.port, "ticking", read_first=True)  # a chunk every 300 ms
        t0 = time.time()
        s.close()
        t1 = wait_cancelled("ticking", since)
        self.assertIsNotNone(t1, "upstream transfer not cancelled")
        self.assertLess(t1 - t0, 0.1)
        deadline = time.time() + 3  # counted when the request completes, just after the cancel
        while DP.metrics()["knoway_streams_cancelled_total"] < 1 and time.time() < deadline:
            time.sleep(0.02)
        self.assertGreaterEqual(DP.metrics()["knoway_streams_cancelled_total"], 1)

    def test_slow_reader_memory_is_bounded(self):
        # 100000 chunks (~18 MB, more than socket buffers hold) sent as fast as the mock can;
        # the client does not read, so knoway must pause the upstream.
        rss0 = DP.rss_kib()
        s = raw_stream_request(DP.port, "long", rcvbuf=4096)
        time.sleep(1.5)
        grown = DP.rss_kib() - rss0
        self.assertLess(grown, 2048, "RSS grew by %d KiB with a stalled reader" % grown)
        total = 0
        s.settimeout(10)
        while True:  # now read it all: nothing was lost
            d = s.recv(1 << 16)
            if not d:
                break
            total += len(d)
            if total > 1000 and b"data: [DONE]" in d[-64:]:
                break
        s.close()
        self.assertGreater(total, 17_000_000)


class Reload(unittest.TestCase):
    def test_sighup_and_file_change(self):
        mock = Mock()
        dp = Dataplane(backend("m", mock.url()) + route("r1", ["one"], ["m"]))
        try:
            v1 = dp.version()
            self.assertEqual(post(dp.port, "/v1/chat/completions", dict(CHAT, model="two"))[0], 404)
            # an invalid file: every error logged, the old configuration kept
            with open(dp.path, "a") as f:
                f.write("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: x}\n"
                        "spec: {match: {models: [two]}, backendRefs: [{name: missing}], timeout: 1y}\n")
            dp.hup()
            time.sleep(0.5)
            self.assertEqual(dp.version(), v1)
            logs = dp.logs()
            self.assertIn("spec.timeout: invalid duration", logs)
            self.assertIn('LLMBackend \\"default/missing\\" not found', logs)
            self.assertIn("reload failed: keeping the running configuration", logs)
            self.assertEqual(post(dp.port, "/v1/chat/completions", dict(CHAT, model="one"))[0], 200)
            # a valid change written to the file is picked up without a signal
            dp.write(backend("m", mock.url()) + route("r1", ["one"], ["m"]) + route("r2", ["two"], ["m"]))
            deadline = time.time() + 3
            while dp.version() == v1 and time.time() < deadline:
                time.sleep(0.05)
            self.assertNotEqual(dp.version(), v1)
            self.assertEqual(post(dp.port, "/v1/chat/completions", dict(CHAT, model="two"))[0], 200)
            self.assertGreaterEqual(dp.metrics()['knoway_config_reloads_total{result="failure"}'], 1)
        finally:
            self.assertEqual(dp.stop(), 0)
            mock.stop()

    def test_reload_under_load_loses_nothing(self):
        mock = Mock(threads=2)
        base = backend("m", mock.url()) + route("r", ["m"], ["m"])
        dp = Dataplane(base)
        stop = threading.Event()
        results = {"ok": 0, "bad": []}
        lock = threading.Lock()

        def load(stream):
            while not stop.is_set():
                try:
                    s, _, b = post(dp.port, "/v1/chat/completions", dict(CHAT, model="m", stream=stream))
                    good = s == 200 and (not stream or b.endswith(b"data: [DONE]\n\n"))
                except Exception as e:  # noqa: BLE001
                    good, b = False, repr(e).encode()
                with lock:
                    if good:
                        results["ok"] += 1
                    else:
                        results["bad"].append(b[:200])

        threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(8)]
        for t in threads:
            t.start()
        try:
            for i in range(20):
                dp.write(base + route("extra", ["extra-%d" % i], ["m"]))
                dp.hup()
                time.sleep(0.1)
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            code = dp.stop()
            mock.stop()
        self.assertEqual(results["bad"], [])
        self.assertGreater(results["ok"], 100)
        self.assertEqual(code, 0)


class Capacity(unittest.TestCase):
    def test_idle_streams_cost_no_cpu(self):
        mock = Mock("--ttft-ms", "60000")
        dp = Dataplane(backend("m", mock.url()) + route("r", ["m"], ["m"]))
        socks = []
        try:
            for _ in range(1000):
                socks.append(raw_stream_request(dp.port, "m"))
            deadline = time.time() + 10
            while dp.metrics()["knoway_active_requests"] < 1000 and time.time() < deadline:
                time.sleep(0.1)
            self.assertEqual(dp.metrics()["knoway_active_requests"], 1000)
            c0, t0 = dp.cpu_seconds(), time.time()
            time.sleep(2.0)
            share = (dp.cpu_seconds() - c0) / (time.time() - t0)
            self.assertLess(share, 0.05, "%.1f%% of a core with 1000 idle streams" % (share * 100))
        finally:
            for s in socks:
                s.close()
            dp.stop()
            mock.stop()


class Http2(unittest.TestCase):
    """protocol: HTTP/2 against a real h2c peer: nginx (listen ... http2) in front of the mock."""

    def test_h2c_upstream(self):
        mock = Mock()
        tmp = tempfile.mkdtemp(prefix="kwh2-")
        port = free_port()
        conf = os.path.join(tmp, "nginx.conf")
        with open(conf, "w") as f:
            f.write("worker_processes 1; daemon off; pid %(t)s/nginx.pid; error_log %(t)s/error.log;\n"
                    "events {}\nhttp {\n  log_format proto '$server_protocol $status';\n"
                    "  access_log %(t)s/access.log proto;\n  client_body_temp_path %(t)s;\n"
                    "  proxy_temp_path %(t)s;\n  fastcgi_temp_path %(t)s;\n  uwsgi_temp_path %(t)s;\n"
                    "  scgi_temp_path %(t)s;\n  server {\n    listen 127.0.0.1:%(p)d http2;\n"
                    "    location / { proxy_pass http://127.0.0.1:%(m)d; proxy_http_version 1.1;"
                    " proxy_buffering off; }\n  }\n}\n" % {"t": tmp, "p": port, "m": mock.port})
        nginx = subprocess.Popen(["nginx", "-c", conf, "-p", tmp], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        wait_port(port)
        dp = Dataplane("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: h2}\n"
                       "spec:\n  provider: vLLM\n  upstream:\n    baseURL: \"http://127.0.0.1:%d/v1\"\n"
                       "    protocol: HTTP/2\n" % port + route("h2", ["h2"], ["h2"]))
        try:
            s, _, body = post(dp.port, "/v1/chat/completions", dict(CHAT, model="h2"))
            self.assertEqual(s, 200, body)
            self.assertEqual(json.loads(body)["choices"][0]["message"]["content"],
                             "tok0 tok1 tok2 tok3 tok4 tok5 tok6 tok7 ")
            s, _, body = post(dp.port, "/v1/chat/completions", dict(CHAT, model="h2", stream=True))
            self.assertEqual(s, 200)
            events = sse_data(body)
            self.assertEqual(events[-1], "[DONE]")
            self.assertEqual(len(events), 10)
            time.sleep(0.2)
            with open(os.path.join(tmp, "access.log")) as f:
                lines = f.read().split("\n")
            self.assertEqual([ln for ln in lines if ln], ["HTTP/2.0 200", "HTTP/2.0 200"])
        finally:
            self.assertEqual(dp.stop(), 0)
            nginx.send_signal(signal.SIGQUIT)
            nginx.wait(10)
            mock.stop()


class Limits(unittest.TestCase):
    def test_connect_timeout(self):
        # a listener whose accept queue is full drops new SYNs: connects hang, on loopback
        lst = socket.socket()
        lst.bind(("127.0.0.1", 0))
        lst.listen(0)
        port = lst.getsockname()[1]
        fillers = []
        for _ in range(4):
            f = socket.socket()
            f.setblocking(False)
            f.connect_ex(("127.0.0.1", port))
            fillers.append(f)
        time.sleep(0.1)
        dp = Dataplane(backend("hang", "http://127.0.0.1:%d/v1" % port,
                               extra="") .replace("    baseURL:", "    connectTimeout: 300ms\n    baseURL:")
                       + route("r", ["hang"], ["hang"]))
        try:
            t = time.time()
            s, _, body = post(dp.port, "/v1/chat/completions", dict(CHAT, model="hang"))
            took = time.time() - t
            self.assertEqual(s, 504, body)
            self.assertEqual(json.loads(body)["error"]["code"], "upstream_timeout")
            self.assertLess(took, 1.5)
            self.assertGreaterEqual(took, 0.25)
        finally:
            dp.stop()
            for f in fillers:
                f.close()
            lst.close()

    def test_max_connections(self):
        mock = Mock()
        dp = Dataplane(backend("m", mock.url()) + route("r", ["m"], ["m"]), workers=1,
                       extra_spec="  limits: {maxConnections: 4}\n")
        held = []
        try:
            for _ in range(5):  # 4 / 1 worker + 1: the per-worker share
                held.append(socket.create_connection(("127.0.0.1", dp.port), timeout=2))
            time.sleep(0.2)
            # one more is not served while the limit is reached: it waits in the backlog
            extra = socket.create_connection(("127.0.0.1", dp.port), timeout=2)
            body = json.dumps(dict(CHAT, model="m")).encode()
            extra.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                          b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            extra.settimeout(0.5)
            with self.assertRaises(socket.timeout):
                extra.recv(100)
            self.assertEqual(dp.metrics()["knoway_open_connections"], 5)
            held.pop().close()  # a slot frees: the waiting request is served
            extra.settimeout(3)
            self.assertTrue(extra.recv(100).startswith(b"HTTP/1.1 200"))
            extra.close()
        finally:
            for h in held:
                h.close()
            dp.stop()
            mock.stop()


class Drain(unittest.TestCase):
    def test_sigterm_finishes_streams_in_flight(self):
        mock = Mock()
        dp = Dataplane(backend("m", mock.url(), headers={"x-mock-interval-ms": "100", "x-mock-chunks": "10"})
                       + route("r", ["m"], ["m"]))
        s = raw_stream_request(dp.port, "m", read_first=True)
        dp.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with self.assertRaises(OSError):  # no longer accepting
            socket.create_connection(("127.0.0.1", dp.port), timeout=1).close()
        data = b""
        s.settimeout(5)
        while b"data: [DONE]" not in data:
            d = s.recv(65536)
            if not d:
                break
            data += d
        s.close()
        self.assertIn(b"data: [DONE]", data)  # the stream in flight completed
        self.assertEqual(dp.proc.wait(10), 0)
        self.assertEqual(dp.stop(), 0)
        mock.stop()


if __name__ == "__main__":
    unittest.main(verbosity=2)
