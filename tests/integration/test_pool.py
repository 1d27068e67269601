"""Pooled upstream connections: their sockets stay registered in the worker's epoll between
requests (upstream.c parks them). An upstream that closes idle keep-alive connections (as
nginx does after keepalive_timeout) or closes after every answer must never fail a
request, and a socket number reused by a new connection must never be taken for a parked
one."""
import http.server
import json
import os
import socketserver
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, backend, free_port, post, route  # noqa: E402

ANSWER = json.dumps({"id": "x", "object": "chat.completion", "model": "m", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()


class Upstream(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def upstream(idle_timeout, close_every=False):
    conns = []

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout  # an idle keep-alive connection is closed after this

        def setup(self):
            super().setup()
            conns.append(self.client_address)

        def log_message(self, *a):
            pass

        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(ANSWER)))
            if close_every:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(ANSWER)

    port = free_port()
    srv = Upstream(("127.0.0.1", port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, port, conns


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


class PooledConnections(unittest.TestCase):
    def run_against(self, idle_timeout, close_every, gaps):
        srv, port, conns = upstream(idle_timeout, close_every)
        dp = Dataplane(backend("b", "http://127.0.0.1:%d/v1" % port) + route("r", ["m"], ["b"]),
                       workers=1)
        try:
            statuses = []
            for gap in gaps:
                statuses.append(post(dp.port, "/v1/chat/completions", CHAT)[0])
                time.sleep(gap)
            self.assertEqual(statuses, [200] * len(gaps))
            return len(conns)
        finally:
            self.assertEqual(dp.stop(), 0)
            srv.shutdown()
            srv.server_close()

    def test_idle_connections_closed_by_the_upstream_are_replaced(self):
        # every gap is longer than the upstream's idle timeout: each request finds its
        # pooled connection closed (the parked socket hung up) and opens another
        n = self.run_against(0.15, False, [0.4] * 8)
        self.assertGreaterEqual(n, 8)

    def test_back_to_back_requests_reuse_one_connection(self):
        n = self.run_against(5, False, [0] * 30)
        self.assertEqual(n, 1)

    def test_an_upstream_closing_after_every_answer(self):
        # a new socket per request: numbers come back, never mistaken for a parked socket
        n = self.run_against(5, True, [0, 0.05] * 15)
        self.assertEqual(n, 30)

    def test_concurrent_requests_over_a_churning_pool(self):
        srv, port, conns = upstream(0.05)
        dp = Dataplane(backend("b", "http://127.0.0.1:%d/v1" % port) + route("r", ["m"], ["b"]),
                       workers=2)
        results = []

        def client(k):
            for i in range(25):
                results.append(post(dp.port, "/v1/chat/completions", CHAT)[0])
                time.sleep(0.02 * ((i + k) % 5))

        try:
            threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(results, [200] * 200)
            self.assertGreater(len(conns), 8)  # connections were closed and replaced
        finally:
            self.assertEqual(dp.stop(), 0)
            srv.shutdown()
            srv.server_close()


if __name__ == "__main__":
    unittest.main()
