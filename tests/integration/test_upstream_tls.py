"""TLS to upstreams (issue #12 item 13): verified by default; tls.caSecretRef replaces the
system CA bundle for that upstream (the Secret holds every CA it may present); and
insecureSkipVerify turns verification off. A real TLS server (Python's ssl) with a
certificate from a CA made here by openssl."""
import json
import os
import ssl
import subprocess
import sys
import tempfile
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, backend, post, route, wait_for  # noqa: E402

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=" + name,
            "-keyout", name + ".key", "-out", name + ".crt", cwd=d)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = json.dumps({"id": "x", "object": "chat.completion", "model": "m",
                           "choices": [{"index": 0, "finish_reason": "stop",
                                        "message": {"role": "assistant", "content": "tls ok"}}],
                           "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                     "total_tokens": 3}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def secret(name, pem):
    return ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: %s}\nstringData:\n  ca.crt: |\n%s"
            % (name, "".join("    " + line + "\n" for line in pem.strip().splitlines())))


class UpstreamTLS(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kw-tls-")
        d = cls.dir
        make_ca(d, "ca-a")
        make_ca(d, "ca-b")
        with open(os.path.join(d, "san.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout",
                "srv.key", "-out", "srv.csr", cwd=d)
        openssl("x509", "-req", "-in", "srv.csr", "-CA", "ca-a.crt", "-CAkey", "ca-a.key",
                "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "srv.crt", cwd=d)
        cls.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(os.path.join(d, "srv.crt"), os.path.join(d, "srv.key"))
        cls.httpd.socket = ctx.wrap_socket(cls.httpd.socket, server_side=True)
        threading.Thread(target=cls.httpd.serve_forever, daemon=True).start()
        url = "https://127.0.0.1:%d/v1" % cls.httpd.server_address[1]
        ca_a = open(os.path.join(d, "ca-a.crt")).read()
        ca_b = open(os.path.join(d, "ca-b.crt")).read()
        tls = "    tls: {%s}\n"
        cls.dp = Dataplane(
            secret("ca-a", ca_a) + secret("ca-b", ca_b)
            + backend("plain", url) + route("plain", ["plain"], ["plain"])
            + backend("ca-a", url, extra=tls % "caSecretRef: {name: ca-a}")
            + route("ca-a", ["ca-a"], ["ca-a"])
            + backend("ca-b", url, extra=tls % "caSecretRef: {name: ca-b}")
            + route("ca-b", ["ca-b"], ["ca-b"])
            + backend("skip", url, extra=tls % "insecureSkipVerify: true")
            + route("skip", ["skip"], ["skip"]))

    @classmethod
    def tearDownClass(cls):
        cls.dp.stop()
        cls.httpd.shutdown()

    def chat(self, model):
        s, _, b = post(self.dp.port, "/v1/chat/completions", dict(CHAT, model=model))
        return s, json.loads(b)

    def test_verified_by_default(self):
        s, b = self.chat("plain")  # the system bundle does not know ca-a
        self.assertEqual(s, 502, b)
        self.assertEqual(b["error"]["code"], "upstream_unavailable")

    def test_ca_secret_verifies(self):
        s, b = self.chat("ca-a")
        self.assertEqual(s, 200, b)
        self.assertEqual(b["choices"][0]["message"]["content"], "tls ok")

    def test_ca_secret_replaces_the_system_bundle(self):
        s, b = self.chat("ca-b")  # trusts only ca-b: the server's ca-a chain fails
        self.assertEqual(s, 502, b)
        # the access line (written as the request completes, just after the response)
        wait_for(lambda: "certificate" in self.dp.logs())

    def test_insecure_skip_verify(self):
        self.assertEqual(self.chat("skip")[0], 200)


class CaSecretReplacesTheSystemBundle(unittest.TestCase):
    def test_system_bundle_trusted_but_not_by_a_backend_with_its_own_ca(self):
        """The server's CA (ca-a) is in the system bundle (bind-mounted over libcurl's
        /etc/ssl/certs/ca-certificates.crt in a mount namespace of the data plane): the
        backend without tls trusts it, the backend whose caSecretRef holds only ca-b must
        refuse it. The test above cannot tell "replaces" from "adds to"; this one can."""
        UpstreamTLS.setUpClass()  # the CAs and the server
        try:
            d = UpstreamTLS.dir
            bundle = os.path.join(d, "system-bundle.crt")
            with open("/etc/ssl/certs/ca-certificates.crt") as f, open(bundle, "w") as out:
                out.write(f.read() + open(os.path.join(d, "ca-a.crt")).read())
            UpstreamTLS.dp.stop()
            url = "https://127.0.0.1:%d/v1" % UpstreamTLS.httpd.server_address[1]
            ca_b = open(os.path.join(d, "ca-b.crt")).read()
            wrap = ["unshare", "-m", "sh", "-c",
                    "mount --bind \"$0\" /etc/ssl/certs/ca-certificates.crt && exec \"$@\"",
                    bundle]
            dp = Dataplane(secret("ca-b", ca_b)
                           + backend("plain", url) + route("plain", ["plain"], ["plain"])
                           + backend("ca-b", url, extra="    tls: {caSecretRef: {name: ca-b}}\n")
                           + route("ca-b", ["ca-b"], ["ca-b"]), wrap=wrap)
            try:
                chat = lambda m: post(dp.port, "/v1/chat/completions", dict(CHAT, model=m))[0]
                self.assertEqual(chat("plain"), 200, "the system bundle trusts ca-a")
                self.assertEqual(chat("ca-b"), 502, "caSecretRef replaces the system bundle")
            finally:
                dp.stop()
        finally:
            UpstreamTLS.httpd.shutdown()


if __name__ == "__main__":
    unittest.main()
