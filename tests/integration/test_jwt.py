"""JWT authentication: keys generated with the openssl command line, JWKS from a file,
every refusal the issue lists, consumer and user claims, rotation without restart."""
import base64
import hashlib
import hmac
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(__file__))
from harness import Dataplane, Mock, backend, free_port, post, route  # noqa: E402

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
ISS = "https://idp.example.com"
ISS2 = "https://other-idp.example.com"  # its keys come from a URL
AUD = "knoway"


def run(*args, data=None):
    return subprocess.run(args, check=True, capture_output=True, input=data).stdout


def b64u(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def der_ints(der):
    """r, s of a DER ECDSA signature."""
    assert der[0] == 0x30
    i = 2 if der[1] < 0x80 else 2 + (der[1] & 0x7f)
    out = []
    for _ in range(2):
        assert der[i] == 0x02
        n = der[i + 1]
        out.append(int.from_bytes(der[i + 2:i + 2 + n], "big"))
        i += 2 + n
    return out


class Key:
    def __init__(self, alg, kid, d):
        self.alg, self.kid = alg, kid
        self.path = os.path.join(d, kid + ".pem")
        spec = {"RS256": ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                "ES256": ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                "EdDSA": ["-algorithm", "ed25519"]}[alg]
        run("openssl", "genpkey", *spec, "-out", self.path)
        self.pub_pem = run("openssl", "pkey", "-in", self.path, "-pubout")
        der = run("openssl", "pkey", "-in", self.path, "-pubout", "-outform", "DER")
        if alg == "RS256":
            mod = run("openssl", "rsa", "-in", self.path, "-noout", "-modulus").decode()
            n = bytes.fromhex(mod.strip().split("=", 1)[1])
            self.jwk = {"kty": "RSA", "n": b64u(n), "e": b64u(b"\x01\x00\x01")}
        elif alg == "ES256":
            pt = der[-65:]
            self.jwk = {"kty": "EC", "crv": "P-256", "x": b64u(pt[1:33]), "y": b64u(pt[33:])}
        else:
            self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": b64u(der[-32:])}
        self.jwk.update(kid=kid, use="sig")
        self.dir = d

    def sign(self, claims, header=None):
        h = {"alg": self.alg, "typ": "JWT", "kid": self.kid}
        h.update(header or {})
        si = b64u(json.dumps(h)) + "." + b64u(json.dumps(claims))
        if self.alg == "RS256":
            sig = run("openssl", "dgst", "-sha256", "-sign", self.path, data=si.encode())
        elif self.alg == "ES256":
            r, s = der_ints(run("openssl", "dgst", "-sha256", "-sign", self.path, data=si.encode()))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        else:
            f = os.path.join(self.dir, "si.bin")
            with open(f, "wb") as fh:
                fh.write(si.encode())
            sig = run("openssl", "pkeyutl", "-sign", "-rawin", "-inkey", self.path, "-in", f)
        return si + "." + b64u(sig)


def claims(**kw):
    now = int(time.time())
    c = {"iss": ISS, "aud": AUD, "sub": "user-1", "exp": now + 300, "iat": now,
         "knoway/consumer": "default/team-a"}
    c.update(kw)
    return {k: v for k, v in c.items() if v is not None}


def bearer(t):
    return {"Authorization": "Bearer " + t}


class JWT(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.mkdtemp(prefix="kwjwt-")
        cls.keys = {a: Key(a, "k-" + a.lower(), cls.dir) for a in ("RS256", "ES256", "EdDSA")}
        cls.jwks = os.path.join(cls.dir, "jwks.json")
        cls.write_jwks(list(cls.keys.values()))
        cls.mock = Mock()
        # a second issuer whose JWK Set is served over HTTP (jwksURL)
        cls.url_key = Key("EdDSA", "k-url", cls.dir)
        body = json.dumps({"keys": [cls.url_key.jwk]}).encode()
        cls.jwks_hits = 0

        class JWKS(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                cls.jwks_hits += 1  # the test class (a closure)
                self.send_response(200 if self.path == "/jwks" else 404)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        cls.idp = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), JWKS)
        threading.Thread(target=cls.idp.serve_forever, daemon=True).start()
        consumer = ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\n"
                    "metadata: {name: team-a}\nspec:\n  models: [demo]\n")
        res = (backend("b", cls.mock.url())
               + route("demo", ["demo"], ["b"],
                       "  rateLimits:\n"
                       "    - {name: per-user, key: User, requests: {limit: 3, window: 1h}}\n")
               + route("other", ["other"], ["b"]) + consumer)
        spec = ("  auth:\n    required: true\n    failedAttempts: {limit: 0}\n    jwt:\n"
                "      - {issuer: \"%s\", audiences: [%s], jwksFile: \"%s\", refresh: 1s,"
                " consumerClaim: knoway/consumer}\n"
                "      - {issuer: \"%s\", jwksURL: \"http://127.0.0.1:%d/jwks\", jwksAllowHTTP: true,"
                " anyAudience: true}\n"
                % (ISS, AUD, cls.jwks, ISS2, cls.idp.server_address[1]))
        cls.dp = Dataplane(res, extra_spec=spec)

    @classmethod
    def write_jwks(cls, keys):
        tmp = cls.jwks + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"keys": [k.jwk for k in keys]}, f)
        os.rename(tmp, cls.jwks)

    @classmethod
    def tearDownClass(cls):
        assert cls.dp.stop() == 0
        cls.mock.stop()
        cls.idp.shutdown()

    def call(self, token, body=CHAT):
        return post(self.dp.port, "/v1/chat/completions", body, bearer(token))

    def refused(self, token, why):
        r = self.call(token)
        self.assertEqual(r[0], 401, r[2])
        e = json.loads(r[2])["error"]
        self.assertEqual(e["code"], "invalid_api_key")
        self.assertIn(why, e["message"])

    def test_valid_tokens(self):
        for alg, k in self.keys.items():
            with self.subTest(alg=alg):
                r = self.call(k.sign(claims(sub="valid-" + alg)))
                self.assertEqual(r[0], 200, r[2])
        # the consumer claim maps to the LLMConsumer: its allow-list applies
        r = self.call(self.keys["RS256"].sign(claims()), dict(CHAT, model="other"))
        self.assertEqual(r[0], 403)
        self.assertEqual(json.loads(r[2])["error"]["code"], "model_not_allowed")

    def test_user_claim_keys_limits(self):
        k = self.keys["ES256"]
        codes = [self.call(k.sign(claims(sub="limited")))[0] for _ in range(4)]
        self.assertEqual(codes, [200, 200, 200, 429])
        self.assertEqual(self.call(k.sign(claims(sub="someone-else")))[0], 200)

    def test_refusals(self):
        k = self.keys["RS256"]
        now = int(time.time())
        self.refused(k.sign(claims(exp=now - 120)), "expired")
        self.assertEqual(self.call(k.sign(claims(exp=now - 30)))[0], 200, "60 s of leeway")
        self.refused(k.sign(claims(nbf=now + 600)), "not valid yet")
        self.refused(k.sign(claims(exp=None)), "no exp")
        self.refused(k.sign(claims(iss="https://evil.example.com")), "issuer")
        self.refused(k.sign(claims(aud="someone-else")), "audience")
        t = k.sign(claims())
        bad = t[:-6] + ("AAAAAA" if not t.endswith("AAAAAA") else "BBBBBB")
        self.refused(bad, "signature")
        # a token signed by one key but naming another's kid
        other = self.keys["EdDSA"]
        forged = other.sign(claims(), header={"kid": "k-rs256", "alg": "EdDSA"})
        self.refused(forged, "kid")
        self.refused(k.sign(claims(), header={"kid": "unknown"}), "kid")
        self.refused(k.sign(claims(**{"knoway/consumer": "nobody"})), "names no LLMConsumer")

    def test_alg_none_and_hmac(self):
        c = claims()
        none = b64u(json.dumps({"alg": "none", "typ": "JWT"})) + "." + b64u(json.dumps(c)) + "."
        self.refused(none, "alg")
        for key in (self.keys["RS256"], self.keys["ES256"]):
            si = (b64u(json.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid})) + "."
                  + b64u(json.dumps(c)))
            mac = hmac.new(key.pub_pem, si.encode(), hashlib.sha256).digest()
            self.refused(si + "." + b64u(mac), "alg")

    def test_rotation(self):
        new = Key("ES256", "k-rotated", self.dir)
        n = [0]

        def status():  # a fresh user each time: the per-user limit stays out of it
            n[0] += 1
            return self.call(new.sign(claims(sub="rotated-%d" % n[0])))[0]
        self.assertEqual(status(), 401)
        self.write_jwks(list(self.keys.values()) + [new])
        deadline = time.time() + 5
        while time.time() < deadline and status() != 200:
            time.sleep(0.2)
        self.assertEqual(status(), 200, "the new key was picked up without a restart")
        self.write_jwks(list(self.keys.values()))  # revoked again
        deadline = time.time() + 5
        while time.time() < deadline and status() == 200:
            time.sleep(0.2)
        self.assertEqual(status(), 401)

    def test_jwks_from_a_url(self):
        self.assertGreaterEqual(self.jwks_hits, 1, "fetched at start")
        t = self.url_key.sign(claims(iss=ISS2, sub="url-user", aud=None))
        self.assertEqual(self.call(t)[0], 200, "a token of the URL issuer, no consumer claim")
        # the issuer picks the key set: the file issuer's keys do not verify it
        other = self.keys["EdDSA"].sign(claims(iss=ISS2, aud=None), header={"kid": "k-url"})
        self.refused(other, "signature")

    def test_missing_token(self):
        r = post(self.dp.port, "/v1/chat/completions", CHAT)
        self.assertEqual(r[0], 401)


if __name__ == "__main__":
    unittest.main()
