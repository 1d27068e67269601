#!/usr/bin/env python3
"""knoway-mockproviders: mocks of Gemini (Generative Language API) and AWS Bedrock
(Converse / ConverseStream) for the integration tests, faithful to their documented wire
formats, validating requests the way the real APIs reject them, with fault injection.

Gemini:
  POST /v1beta/models/{model}:generateContent
  POST /v1beta/models/{model}:streamGenerateContent?alt=sse  (SSE, CRLF, ends by closing)
  POST /v1beta/models/{model}:embedContent | :batchEmbedContents
  key in x-goog-api-key: missing -> 403 PERMISSION_DENIED, "invalid" -> 400 API key not valid;
  unknown fields -> 400 INVALID_ARGUMENT ('Invalid JSON payload received. Unknown name ...').
Bedrock:
  POST /model/{modelId}/converse | /converse-stream (application/vnd.amazon.eventstream)
  SigV4 verified independently of knoway (service bedrock, region from --aws-region, keys
  from --aws-access-key/--aws-secret-key, session token from --aws-session-token when set):
  403 with x-amzn-ErrorType as Bedrock answers; roles must alternate and start with user;
  unknown fields -> 400 ValidationException.

Vertex AI (--gcp-service-account KEY.json, --gcp-project):
  POST /token  Google's OAuth2 token endpoint for service accounts (RFC 7523 jwt-bearer): the
  JWT's RS256 signature is checked with `openssl dgst` against the key file's public key,
  and its claims (iss = client_email, aud = this URL, scope cloud-platform, kid =
  private_key_id, exp - iat <= 3600, not expired); 400 invalid_grant as Google answers.
  Tokens live --gcp-token-ttl seconds (issued after --gcp-token-delay); --gcp-static-token
  is accepted as well.
  POST /v1/projects/{p}/locations/{l}/publishers/google/models/{m}:generateContent |
       :streamGenerateContent?alt=sse    served as Gemini above, Bearer auth
  POST .../publishers/anthropic/models/{m}:rawPredict | :streamRawPredict  the body must
       carry anthropic_version "vertex-2023-10-16" and no model; served by the Anthropic
       mock at --anthropic-upstream (knoway-mockllm), relayed as it answers.
  A missing, unknown or expired token: 401 UNAUTHENTICATED; another project: 403.

Both: content "tok0 tok1 ..." in x-mock-chunks pieces (default 8); prompt tokens = 3 per
message + 1 per word of text. When tools are declared and the last turn is not a tool
result, the model calls the first tool with {"city": "Paris"}; after a tool result it
answers "tool said: <result text>". Faults by header: x-mock-status: N (the provider's
error shape), x-mock-fault: reset | exception | badcrc, x-mock-fault-after: N chunks.
GET /_mock/requests lists what was received (method, path, headers, body)."""
import argparse
import base64
import datetime
import http.client
import os
import subprocess
import tempfile
import time
import hashlib
import hmac
import json
import re
import socketserver
import struct
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, HTTPServer

LOG = []
LOG_MU = threading.Lock()
ARGS = None
TOKENS = {}  # access token -> expiry (time.time())
TOKENS_MU = threading.Lock()
GCP = {}     # the service account: client_email, private_key_id, public key file


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_problem(assertion, token_url):
    """Why Google would refuse this service-account JWT, or None."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return "Invalid JWT: Token must be a short-lived token and in a reasonable timeframe"
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except ValueError:
        return "Invalid JWT: malformed"
    if header.get("alg") != "RS256":
        return "Invalid JWT: unsupported algorithm"
    with tempfile.TemporaryDirectory() as d:
        data, sigf = os.path.join(d, "data"), os.path.join(d, "sig")
        open(data, "wb").write((parts[0] + "." + parts[1]).encode())
        open(sigf, "wb").write(sig)
        ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", GCP["pub"], "-signature", sigf,
                             data], capture_output=True).returncode == 0
    if not ok:
        return "Invalid JWT Signature."
    if header.get("kid") not in (None, GCP["kid"]):
        return "Invalid JWT Signature."
    if claims.get("iss") != GCP["email"]:
        return "Invalid JWT Signature."  # another account's key
    if claims.get("aud") != token_url:
        return "Invalid JWT: Failed audience check."
    if "https://www.googleapis.com/auth/cloud-platform" not in str(claims.get("scope", "")).split():
        return "Invalid OAuth scope or ID token audience provided."
    now = time.time()
    iat, exp = claims.get("iat"), claims.get("exp")
    if (not isinstance(iat, int) or not isinstance(exp, int) or exp - iat > 3600 or exp < now
            or abs(iat - now) > 300):
        return ("Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable "
                "timeframe. Check your iat and exp values in the JWT claim.")
    return None


def words(s):
    return len(s.split())


# ---- the model's behaviour, shared by both schemas -------------------------------------

def schema_instance(sc, depth=0):
    """A JSON instance of a JSON Schema (the subset structured outputs use), as a model under
    constrained decoding could answer."""
    if not isinstance(sc, dict) or depth > 8:
        return None
    if "const" in sc:
        return sc["const"]
    if sc.get("enum"):
        return sc["enum"][0]
    for k in ("anyOf", "oneOf"):
        if sc.get(k):
            return schema_instance(sc[k][0], depth + 1)
    t = sc.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    t = (t or "object" if "properties" in sc else t or "string").lower()  # Gemini: "OBJECT"
    if t == "object":
        return {k: schema_instance(v, depth + 1) for k, v in sc.get("properties", {}).items()}
    if t == "array":
        return [schema_instance(sc.get("items", {}), depth + 1)]
    return {"integer": 7, "number": 1.5, "boolean": True, "null": None}.get(t, "tok0")


class Turn:
    """What the mock model answers: text pieces or one tool call, and token counts. json:
    the answer is this JSON value (structured outputs), in two pieces."""

    def __init__(self, chunks, prompt_tokens, tool=None, tool_result=None, args=None, json_value=None):
        self.prompt_tokens = prompt_tokens
        self.tool = tool  # the tool name to call
        if tool_result is not None:
            self.pieces = ["tool said: ", tool_result]
        elif json_value is not None:
            text = json.dumps(json_value)
            self.pieces = [text[:len(text) // 2], text[len(text) // 2:]]
        else:
            self.pieces = ["tok%d " % i for i in range(chunks)]
        self.completion_tokens = 5 if tool else len(self.pieces)
        self.args = args if args is not None else {"city": "Paris"}


# ---- event stream ---------------------------------------------------------------------

def es_message(headers, payload, bad_crc=False):
    hb = b""
    for name, value in headers.items():
        n, v = name.encode(), value.encode()
        hb += bytes([len(n)]) + n + b"\x07" + struct.pack(">H", len(v)) + v
    total = 16 + len(hb) + len(payload)
    prelude = struct.pack(">II", total, len(hb))
    prelude += struct.pack(">I", zlib.crc32(prelude))
    msg = prelude + hb + payload
    crc = zlib.crc32(msg) ^ (1 if bad_crc else 0)
    return msg + struct.pack(">I", crc)


def es_event(kind, obj, bad_crc=False):
    obj = dict(obj, p="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0"[: 1 + len(kind) % 20])
    return es_message({":event-type": kind, ":content-type": "application/json",
                       ":message-type": "event"}, json.dumps(obj).encode(), bad_crc)


# ---- SigV4 verification (independent of knoway's signer) --------------------------------

def _hmac(key, msg):
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_problem(method, raw_path, query, headers, body):
    """None when the request is signed correctly, else (status, error type, message)."""
    auth = headers.get("authorization")
    if not auth:
        return 403, "MissingAuthenticationTokenException", "Missing Authentication Token"
    m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                 r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$", auth)
    if not m:
        return 403, "IncompleteSignatureException", "Authorization header requires 'Credential', 'Signature' and 'SignedHeaders' parameters."
    akid, date, region, service, signed, sig = m.groups()
    if akid != ARGS.aws_access_key:
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    if region != ARGS.aws_region or service != "bedrock":
        return 403, "InvalidSignatureException", "Credential should be scoped to a valid region."
    amz_date = headers.get("x-amz-date", "")
    try:
        t = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    except ValueError:
        return 403, "IncompleteSignatureException", "Date must be in ISO-8601 'basic format'."
    if abs((datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()) > 300 or amz_date[:8] != date:
        return 403, "InvalidSignatureException", "Signature expired or not yet current."
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return 403, "InvalidSignatureException", "'Host' and 'X-Amz-Date' must be signed."
    if ARGS.aws_session_token and (headers.get("x-amz-security-token") != ARGS.aws_session_token
                                   or "x-amz-security-token" not in names):
        return 403, "UnrecognizedClientException", "The security token included in the request is invalid."
    canon_uri = urllib.parse.quote(raw_path, safe="/-_.~")
    params = sorted((urllib.parse.quote(urllib.parse.unquote(k), safe="-_.~"),
                     urllib.parse.quote(urllib.parse.unquote(v), safe="-_.~"))
                    for k, _, v in (p.partition("=") for p in query.split("&") if p))
    canon_query = "&".join("%s=%s" % kv for kv in params)
    canon_headers = "".join("%s:%s\n" % (n, " ".join(headers.get(n, "").split())) for n in names)
    creq = "\n".join([method, canon_uri, canon_query, canon_headers, signed,
                      hashlib.sha256(body).hexdigest()])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, "%s/%s/%s/aws4_request" % (date, region, service),
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = _hmac(("AWS4" + ARGS.aws_secret_key).encode(), date)
    for part in (region, service, "aws4_request"):
        k = _hmac(k, part)
    if not hmac.compare_digest(hmac.new(k, sts.encode(), hashlib.sha256).hexdigest(), sig):
        return 403, "InvalidSignatureException", (
            "The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.")
    return None


# ---- the HTTP handler -------------------------------------------------------------------

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def send_json(self, status, obj, extra=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def start_stream(self, ctype):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def reset(self):
        self.wfile.flush()
        self.connection.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER,
                                   struct.pack("ii", 1, 0))
        self.close_connection = True
        self.connection.close()

    def do_GET(self):
        if self.path == "/_mock/requests":
            with LOG_MU:
                self.send_json(200, LOG)
            return
        self.send_json(404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}})

    def do_DELETE(self):
        with LOG_MU:
            LOG.clear()
        self.send_json(200, {})

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        hdrs = {k.lower(): v for k, v in self.headers.items()}
        with LOG_MU:
            LOG.append({"method": "POST", "path": self.path, "headers": hdrs,
                        "body": body.decode("utf-8", "replace")})
            del LOG[:-500]
        self.fault = hdrs.get("x-mock-fault", "")
        self.fault_after = int(hdrs.get("x-mock-fault-after", "1"))
        self.nchunks = int(hdrs.get("x-mock-chunks", "8"))
        self.status = int(hdrs.get("x-mock-status", "0"))
        path, _, query = self.path.partition("?")
        if path == "/token":
            self.gcp_token(hdrs, body)
        elif path.startswith("/v1/projects/"):
            self.vertex(path, query, hdrs, body)
        elif path.startswith("/v1beta/models/"):
            self.gemini(path[len("/v1beta/models/"):], query, hdrs, body)
        elif path.startswith("/model/"):
            self.bedrock(path, query, hdrs, body)
        elif path == "/v1/responses":
            self.openai_responses(hdrs, body)
        elif path == "/openai/responses":  # Azure OpenAI's: api-key, api-version, model = deployment
            if "api-version=" not in query or not hdrs.get("api-key"):
                return self.send_json(401, {"error": {"code": "401", "message": "Access denied due to invalid subscription key or wrong API endpoint."}})
            self.openai_responses(dict(hdrs, authorization="Bearer " + hdrs["api-key"]), body)
        else:
            self.send_json(404, {"message": "unknown path"})

    # ---- Vertex AI ----

    def gcp_token(self, hdrs, body):
        time.sleep(ARGS.gcp_token_delay)
        form = urllib.parse.parse_qs(body.decode())
        grant = form.get("grant_type", [""])[0]
        if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return self.send_json(400, {"error": "unsupported_grant_type",
                                        "error_description": "Invalid grant_type: " + grant})
        url = "http://%s/token" % hdrs.get("host", "")
        problem = jwt_problem(form.get("assertion", [""])[0], url) if GCP else "no service account"
        if problem:
            return self.send_json(400, {"error": "invalid_grant", "error_description": problem})
        with TOKENS_MU:
            tok = "ya29.mock-%d" % (len(TOKENS) + 1)
            TOKENS[tok] = time.time() + ARGS.gcp_token_ttl
        self.send_json(200, {"access_token": tok, "expires_in": ARGS.gcp_token_ttl,
                             "token_type": "Bearer"})

    def vertex(self, path, query, hdrs, body):
        m = re.match(r"^/v1/projects/([^/]+)/locations/([^/]+)/publishers/(google|anthropic)/models/([^/:]+):(\w+)$", path)
        if not m:
            return self.gemini_error(404, "The requested URL was not found on this server.", "NOT_FOUND")
        project, _, publisher, model, method = m.groups()
        auth = hdrs.get("authorization", "")
        tok = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        with TOKENS_MU:
            valid = TOKENS.get(tok, 0) > time.time() or (ARGS.gcp_static_token and tok == ARGS.gcp_static_token)
        if not valid:
            return self.gemini_error(401, "Request had invalid authentication credentials. Expected OAuth 2 "
                                     "access token, login cookie or other valid authentication credential.",
                                     "UNAUTHENTICATED")
        if project != ARGS.gcp_project:
            return self.gemini_error(403, "Permission 'aiplatform.endpoints.predict' denied on resource "
                                     "'//aiplatform.googleapis.com/projects/%s' (or it may not exist)." % project,
                                     "PERMISSION_DENIED")
        if publisher == "google":
            return self.gemini_serve(model, method, query, body)
        try:
            req = json.loads(body)
        except ValueError:
            return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error", "message": "invalid JSON"}})
        if method not in ("rawPredict", "streamRawPredict"):
            return self.gemini_error(404, "Method not found.", "NOT_FOUND")
        if req.get("anthropic_version") != "vertex-2023-10-16":
            return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                  "message": "anthropic_version: Input should be 'vertex-2023-10-16'"}})
        if "model" in req:
            return self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                  "message": "model: Extra inputs are not permitted"}})
        if bool(req.get("stream")) != (method == "streamRawPredict"):
            return self.gemini_error(400, "stream must be true with streamRawPredict only", "INVALID_ARGUMENT")
        del req["anthropic_version"]
        req["model"] = model
        up = urllib.parse.urlsplit(ARGS.anthropic_upstream)
        conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
        fwd = {"content-type": "application/json", "x-api-key": "vertex", "anthropic-version": "2023-06-01"}
        fwd.update({k: v for k, v in hdrs.items() if k.startswith("x-mock-")})
        conn.request("POST", "/v1/messages", json.dumps(req), fwd)
        resp = conn.getresponse()
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.getheader("Content-Type", "application/json"))
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        while True:
            data = resp.read1(65536)
            if not data:
                break
            self.chunk(data)
        self.chunk(b"")
        conn.close()

    # ---- Gemini ----

    def gemini_error(self, status, message, st):
        self.send_json(status, {"error": {"code": status, "message": message, "status": st}})

    GEN_FIELDS = {"contents", "systemInstruction", "generationConfig", "tools", "toolConfig",
                  "safetySettings", "cachedContent", "labels"}
    GC_FIELDS = {"temperature", "topP", "topK", "maxOutputTokens", "stopSequences", "candidateCount",
                 "presencePenalty", "frequencyPenalty", "seed", "responseMimeType", "responseSchema",
                 "responseJsonSchema",
                 "responseLogprobs", "logprobs", "thinkingConfig", "responseModalities"}
    PART_FIELDS = {"text", "inlineData", "fileData", "functionCall", "functionResponse",
                   "executableCode", "codeExecutionResult", "thought", "thoughtSignature"}

    def gemini_validate(self, req):
        for k in req:
            if k not in self.GEN_FIELDS:
                return 'Invalid JSON payload received. Unknown name "%s": Cannot find field.' % k
        for k in req.get("generationConfig", {}):
            if k not in self.GC_FIELDS:
                return ('Invalid JSON payload received. Unknown name "%s" at \'generation_config\': '
                        'Cannot find field.' % k)
        contents = req.get("contents")
        if not isinstance(contents, list) or not contents:
            return "* GenerateContentRequest.contents: contents is not specified"
        for i, c in enumerate(contents):
            if c.get("role") not in ("user", "model"):
                return ("Please use a valid role: user, model.")
            if not c.get("parts"):
                return "* GenerateContentRequest.contents[%d].parts: contents.parts must not be empty." % i
            for p in c["parts"]:
                data = [k for k in p if k in self.PART_FIELDS and k not in ("thought", "thoughtSignature")]
                unknown = [k for k in p if k not in self.PART_FIELDS]
                if unknown:
                    return 'Invalid JSON payload received. Unknown name "%s" at \'contents[%d].parts[0]\': Cannot find field.' % (unknown[0], i)
                if len(data) != 1:
                    return "* GenerateContentRequest.contents[%d].parts[0].data: required oneof field 'data' must have one initialized field" % i
                fr = p.get("functionResponse")
                if fr is not None and not isinstance(fr.get("response"), dict):
                    return "* GenerateContentRequest.contents[%d].parts[0].function_response.response: must be an object" % i
        gc = req.get("generationConfig", {})
        if "responseSchema" in gc and "responseJsonSchema" in gc:
            return "* GenerateContentRequest.generation_config: response_schema and response_json_schema cannot both be set"
        if ("responseSchema" in gc or "responseJsonSchema" in gc) and gc.get("responseMimeType") != "application/json":
            return ("* GenerateContentRequest.generation_config.response_mime_type: response_mime_type must be "
                    "application/json when a response schema is set")
        si = req.get("systemInstruction")
        if si is not None and not (isinstance(si, dict) and si.get("parts")):
            return "* GenerateContentRequest.system_instruction.parts: must not be empty"
        for t in req.get("tools", []):
            for d in t.get("functionDeclarations", []):
                if not re.match(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$", d.get("name", "")):
                    return "* GenerateContentRequest.tools[0].function_declarations[0].name: Invalid function name."
        return None

    def gemini_turn(self, req):
        tokens = 0
        last = None
        for c in req["contents"]:
            tokens += 3
            for p in c["parts"]:
                tokens += words(p.get("text", ""))
            last = c
        si = req.get("systemInstruction")
        if si:
            tokens += sum(words(p.get("text", "")) for p in si["parts"])
        fresp = [p["functionResponse"] for p in last["parts"] if "functionResponse" in p]
        if fresp:
            return Turn(self.nchunks, tokens, tool_result=json.dumps(fresp[0]["response"], sort_keys=True))
        decls = [d for t in req.get("tools", []) for d in t.get("functionDeclarations", [])]
        mode = req.get("toolConfig", {}).get("functionCallingConfig", {}).get("mode", "AUTO")
        if decls and mode != "NONE":
            return Turn(self.nchunks, tokens, tool=decls[0]["name"])
        gc = req.get("generationConfig", {})
        schema = gc.get("responseJsonSchema", gc.get("responseSchema"))
        if schema is not None:
            return Turn(self.nchunks, tokens, json_value=schema_instance(schema))
        if gc.get("responseMimeType") == "application/json":
            return Turn(self.nchunks, tokens, json_value={"answer": "tok0"})
        return Turn(self.nchunks, tokens)

    def gemini(self, rest, query, hdrs, body):
        model, _, method = rest.partition(":")
        key = hdrs.get("x-goog-api-key")
        if not key:
            return self.gemini_error(403, "Method doesn't allow unregistered callers (callers without "
                                     "established identity). Please use API Key or other form of API "
                                     "consumer identity to call this API.", "PERMISSION_DENIED")
        if key == "invalid":
            return self.gemini_error(400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT")
        self.gemini_serve(model, method, query, body)

    def gemini_serve(self, model, method, query, body):
        if self.status:
            st = {429: "RESOURCE_EXHAUSTED", 500: "INTERNAL", 503: "UNAVAILABLE"}.get(self.status, "INVALID_ARGUMENT")
            return self.gemini_error(self.status, "mock error", st)
        try:
            req = json.loads(body)
        except ValueError:
            return self.gemini_error(400, "Invalid JSON payload received.", "INVALID_ARGUMENT")
        if method in ("embedContent", "batchEmbedContents"):
            return self.gemini_embed(model, method, req)
        if method == "streamGenerateContent" and "alt=sse" not in query:
            return self.gemini_error(400, "mock: only alt=sse streams are served", "INVALID_ARGUMENT")
        if method not in ("generateContent", "streamGenerateContent"):
            return self.gemini_error(404, "Method not found.", "NOT_FOUND")
        problem = self.gemini_validate(req)
        if problem:
            return self.gemini_error(400, problem, "INVALID_ARGUMENT")
        turn = self.gemini_turn(req)
        usage = lambda n: {"promptTokenCount": turn.prompt_tokens, "candidatesTokenCount": n,
                           "totalTokenCount": turn.prompt_tokens + n}
        ident = {"modelVersion": model, "responseId": "mock-resp-1"}
        if method == "generateContent":
            parts = ([{"functionCall": {"name": turn.tool, "args": turn.args}}] if turn.tool
                     else [{"text": "".join(turn.pieces)}])
            return self.send_json(200, dict({"candidates": [{"content": {"parts": parts, "role": "model"},
                                                             "finishReason": "STOP", "index": 0}],
                                             "usageMetadata": usage(turn.completion_tokens)}, **ident))
        self.start_stream("text/event-stream")
        events = ([[{"functionCall": {"name": turn.tool, "args": turn.args}}]] if turn.tool
                  else [[{"text": p}] for p in turn.pieces])
        for i, parts in enumerate(events):
            if self.fault == "reset" and i == self.fault_after:
                return self.reset()
            last = i == len(events) - 1
            cand = {"content": {"parts": parts, "role": "model"}, "index": 0}
            if last:
                cand["finishReason"] = "STOP"
            n = turn.completion_tokens if last else i + 1
            ev = dict({"candidates": [cand], "usageMetadata": usage(n)}, **ident)
            self.chunk(b"data: " + json.dumps(ev).encode() + b"\r\n\r\n")
        self.chunk(b"")
        self.close_connection = True  # Gemini ends its streams by closing

    def gemini_embed(self, model, method, req):
        def values(text):
            h = hashlib.sha256(text.encode()).digest()
            return [round((b - 128) / 128.0, 6) for b in h[:8]]
        if method == "embedContent":
            parts = req.get("content", {}).get("parts")
            if not parts:
                return self.gemini_error(400, "* EmbedContentRequest.content: contents must not be empty", "INVALID_ARGUMENT")
            return self.send_json(200, {"embedding": {"values": values(parts[0].get("text", ""))}})
        out = []
        for i, r in enumerate(req.get("requests", [])):
            if r.get("model") != "models/" + model:
                return self.gemini_error(400, "* BatchEmbedContentsRequest.requests[%d].model: model must match the parent model." % i, "INVALID_ARGUMENT")
            out.append({"values": values(r["content"]["parts"][0].get("text", ""))})
        if not out:
            return self.gemini_error(400, "* BatchEmbedContentsRequest.requests: requests must not be empty", "INVALID_ARGUMENT")
        self.send_json(200, {"embeddings": out})

    # ---- OpenAI's Responses API (POST /v1/responses) ----

    RESP_FIELDS = {"model", "input", "instructions", "tools", "tool_choice", "max_output_tokens",
                   "temperature", "top_p", "stream", "reasoning", "text", "store", "metadata",
                   "user", "parallel_tool_calls", "previous_response_id", "include", "truncation",
                   "service_tier", "background", "safety_identifier", "prompt_cache_key"}

    def openai_responses(self, hdrs, body):  # (BaseHTTPRequestHandler.responses is taken)
        if not hdrs.get("authorization", "").startswith("Bearer ") or len(hdrs["authorization"]) < 8:
            return self.send_json(401, {"error": {"message": "You didn't provide an API key.", "type": "invalid_request_error", "param": None, "code": None}})
        try:
            req = json.loads(body)
        except ValueError:
            return self.send_json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error", "param": None, "code": None}})
        for k in req:
            if k not in self.RESP_FIELDS:
                return self.send_json(400, {"error": {"message": "Unsupported parameter: '%s'." % k, "type": "invalid_request_error", "param": k, "code": "unsupported_parameter"}})
        if "input" not in req or "model" not in req:
            return self.send_json(400, {"error": {"message": "Missing required parameter: 'input'.", "type": "invalid_request_error", "param": "input", "code": "missing_required_parameter"}})
        inp = req["input"]
        text = inp if isinstance(inp, str) else json.dumps(inp)
        answer = "native: %d words" % words(text)
        fmt = (req.get("text") or {}).get("format") or {}
        if fmt.get("type") == "json_schema":  # structured outputs: an instance of the schema
            answer = json.dumps(schema_instance(fmt.get("schema", {})))
        elif fmt.get("type") == "json_object":
            answer = '{"answer": "tok0"}'
        usage = {"input_tokens": words(text) + 3, "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": 3, "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": words(text) + 6}
        msg = {"type": "message", "id": "msg_native", "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": answer, "annotations": []}]}
        resp = {"id": "resp_native", "object": "response", "created_at": 1700000000,
                "status": "completed", "error": None, "incomplete_details": None,
                "instructions": req.get("instructions"), "model": req["model"], "output": [msg],
                "parallel_tool_calls": True, "store": req.get("store", True), "temperature": 1,
                "tool_choice": "auto", "tools": [], "top_p": 1, "usage": usage, "metadata": {}}
        if not req.get("stream"):
            return self.send_json(200, resp)
        self.start_stream("text/event-stream")
        seq = [0]

        def ev(obj):
            obj["sequence_number"] = seq[0]
            seq[0] += 1
            self.chunk(("event: %s\ndata: %s\n\n" % (obj["type"], json.dumps(obj))).encode())
        pending = dict(resp, status="in_progress", output=[], usage=None)
        ev({"type": "response.created", "response": pending})
        ev({"type": "response.in_progress", "response": pending})
        ev({"type": "response.output_item.added", "output_index": 0, "item": dict(msg, status="in_progress", content=[])})
        ev({"type": "response.content_part.added", "item_id": "msg_native", "output_index": 0, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}})
        for piece in answer.split(" "):
            ev({"type": "response.output_text.delta", "item_id": "msg_native", "output_index": 0, "content_index": 0, "delta": piece + " ", "logprobs": []})
        full = "".join(p + " " for p in answer.split(" "))
        msg["content"][0]["text"] = full
        ev({"type": "response.output_text.done", "item_id": "msg_native", "output_index": 0, "content_index": 0, "text": full, "logprobs": []})
        ev({"type": "response.content_part.done", "item_id": "msg_native", "output_index": 0, "content_index": 0, "part": msg["content"][0]})
        ev({"type": "response.output_item.done", "output_index": 0, "item": msg})
        ev({"type": "response.completed", "response": dict(resp, output=[msg])})
        self.chunk(b"")

    # ---- Bedrock ----

    def bedrock_error(self, status, etype, message):
        self.send_json(status, {"message": message}, {"x-amzn-ErrorType": etype + ":http://internal.amazon.com/coral/com.amazon.bedrock/"})

    CONVERSE_FIELDS = {"messages", "system", "inferenceConfig", "toolConfig", "guardrailConfig",
                       "additionalModelRequestFields", "promptVariables",
                       "additionalModelResponseFieldPaths", "requestMetadata", "performanceConfig",
                       "serviceTier", "outputConfig"}
    IC_FIELDS = {"maxTokens", "temperature", "topP", "stopSequences"}
    BLOCK_FIELDS = {"text", "image", "document", "video", "toolUse", "toolResult", "guardContent",
                    "reasoningContent", "cachePoint"}

    def bedrock_validate(self, req):
        for k in req:
            if k not in self.CONVERSE_FIELDS:
                return "Malformed input request: extraneous key [%s] is not permitted, please reformat your input and try again." % k
        for k in req.get("inferenceConfig", {}):
            if k not in self.IC_FIELDS:
                return "Malformed input request: extraneous key [%s] is not permitted" % k
        tier = req.get("serviceTier")
        if tier is not None and (not isinstance(tier, dict) or tier.get("type") not in ("priority", "default", "flex", "reserved")):
            return "1 validation error detected: Value at 'serviceTier.type' failed to satisfy constraint: Member must satisfy enum value set: [priority, default, flex, reserved]"
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            return "The model returned the following errors: messages: at least one message is required"
        if msgs[0].get("role") != "user":
            return "A conversation must start with a user message. Try again with a conversation that starts with a user message."
        for i, m in enumerate(msgs):
            if m.get("role") not in ("user", "assistant"):
                return "1 validation error detected: Value at 'messages.%d.member.role' failed to satisfy constraint" % (i + 1)
            if i > 0 and msgs[i - 1]["role"] == m["role"]:
                return "A conversation must alternate between user and assistant roles. Make sure the conversation alternates between user and assistant roles and try again."
            if not m.get("content"):
                return "The content field in the Message object at messages.%d is empty. Add a ContentBlock object to the content field and try again." % i
            for b in m["content"]:
                if len(b) != 1 or next(iter(b)) not in self.BLOCK_FIELDS:
                    return "Malformed input request: content block must have exactly one member"
                if "text" in b and not b["text"].strip():
                    return "The text field in the ContentBlock object at messages.%d.content.0 is blank. Add text to the text field, and try again." % i
                if "toolUse" in b and not isinstance(b["toolUse"].get("input"), dict):
                    return "toolUse.input must be an object"
        uses = any("toolUse" in b or "toolResult" in b for m in msgs for b in m["content"])
        if uses and not req.get("toolConfig"):
            return "The toolConfig field must be defined when using toolUse and toolResult content blocks."
        return None

    def bedrock_turn(self, req):
        tokens = 0
        for m in req["messages"]:
            tokens += 3 + sum(words(b.get("text", "")) for b in m["content"])
        tokens += sum(words(s.get("text", "")) for s in req.get("system", []))
        results = [b["toolResult"] for b in req["messages"][-1]["content"] if "toolResult" in b]
        if results:
            text = "".join(c.get("text", json.dumps(c.get("json"))) for c in results[0]["content"])
            return Turn(self.nchunks, tokens, tool_result=text)
        specs = [t["toolSpec"] for t in req.get("toolConfig", {}).get("tools", []) if "toolSpec" in t]
        choice = req.get("toolConfig", {}).get("toolChoice", {})
        if "tool" in choice:  # forced: that tool, its input an instance of its schema
            spec = next((t for t in specs if t["name"] == choice["tool"].get("name")), None)
            if spec is None:
                return None
            return Turn(self.nchunks, tokens, tool=spec["name"],
                        args=schema_instance(spec.get("inputSchema", {}).get("json", {})))
        if specs:
            return Turn(self.nchunks, tokens, tool=specs[0]["name"])
        fmt = req.get("outputConfig", {}).get("textFormat", {})
        if fmt.get("type") == "json_schema":
            schema = json.loads(fmt.get("structure", {}).get("jsonSchema", {}).get("schema", "{}"))
            return Turn(self.nchunks, tokens, json_value=schema_instance(schema))
        return Turn(self.nchunks, tokens)

    def bedrock(self, path, query, hdrs, body):
        m = re.match(r"^/model/([^/]+)/(converse|converse-stream)$", path)
        if not m:
            return self.bedrock_error(404, "UnknownOperationException", "Unknown operation")
        problem = sigv4_problem("POST", path, query, hdrs, body)
        if problem:
            return self.bedrock_error(problem[0], problem[1], problem[2])
        if self.status:
            etype = {429: "ThrottlingException", 503: "ServiceUnavailableException"}.get(self.status, "InternalServerException")
            return self.bedrock_error(self.status, etype, "mock error")
        try:
            req = json.loads(body)
        except ValueError:
            return self.bedrock_error(400, "SerializationException", "Malformed request body")
        problem = self.bedrock_validate(req)
        if problem:
            return self.bedrock_error(400, "ValidationException", problem)
        turn = self.bedrock_turn(req)
        if turn is None:
            return self.bedrock_error(400, "ValidationException",
                                      "The tool named in toolChoice is not in toolConfig.tools.")
        usage = {"inputTokens": turn.prompt_tokens, "outputTokens": turn.completion_tokens,
                 "totalTokens": turn.prompt_tokens + turn.completion_tokens}
        stop = "tool_use" if turn.tool else "end_turn"
        tool_id = "tooluse_mock0000000000000001"
        if m.group(2) == "converse":
            content = ([{"toolUse": {"toolUseId": tool_id, "name": turn.tool, "input": turn.args}}] if turn.tool
                       else [{"text": "".join(turn.pieces)}])
            out = {"output": {"message": {"role": "assistant", "content": content}},
                   "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 12}}
            if "serviceTier" in req:  # the tier that served it (here: the one asked for)
                out["serviceTier"] = req["serviceTier"]
            return self.send_json(200, out)
        self.start_stream("application/vnd.amazon.eventstream")
        frames = [es_event("messageStart", {"role": "assistant"})]
        if turn.tool:
            frames.append(es_event("contentBlockStart", {"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": tool_id, "name": turn.tool}}}))
            js = json.dumps(turn.args)
            frames += [es_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": js[:5]}}}),
                       es_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": js[5:]}}})]
        else:
            frames += [es_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}) for p in turn.pieces]
        frames += [es_event("contentBlockStop", {"contentBlockIndex": 0}),
                   es_event("messageStop", {"stopReason": stop}),
                   es_event("metadata", dict({"usage": usage, "metrics": {"latencyMs": 12}},
                                             **({"serviceTier": req["serviceTier"]} if "serviceTier" in req else {})))]
        for i, f in enumerate(frames):
            if i == self.fault_after + 1 and self.fault == "exception":
                self.chunk(es_message({":exception-type": "modelStreamErrorException", ":content-type": "application/json",
                                       ":message-type": "exception"},
                                      json.dumps({"message": "The model stream failed", "originalStatusCode": 500}).encode()))
                self.chunk(b"")
                return
            if i == self.fault_after + 1 and self.fault == "badcrc":
                f = f[:-1] + bytes([f[-1] ^ 1])
            if i == self.fault_after + 1 and self.fault == "reset":
                return self.reset()
            self.chunk(f)
        self.chunk(b"")


class Server(socketserver.ThreadingMixIn, HTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        pass  # clients that hang up (the gateway cancelling a stream) are expected


def main():
    global ARGS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:8091")
    ap.add_argument("--aws-region", default="us-east-1")
    ap.add_argument("--aws-access-key", default="AKIDEXAMPLE")
    ap.add_argument("--aws-secret-key", default="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    ap.add_argument("--aws-session-token", default="")
    ap.add_argument("--gcp-service-account", help="the key file whose JWTs /token accepts")
    ap.add_argument("--gcp-project", default="knoway-test")
    ap.add_argument("--gcp-token-ttl", type=int, default=3599)
    ap.add_argument("--gcp-static-token", default="")
    ap.add_argument("--gcp-token-delay", type=float, default=0.0, help="seconds before /token answers")
    ap.add_argument("--anthropic-upstream", default="http://127.0.0.1:8090")
    ARGS = ap.parse_args()
    if ARGS.gcp_service_account:
        sa = json.load(open(ARGS.gcp_service_account))
        pub = tempfile.NamedTemporaryFile(prefix="mock-gcp-", suffix=".pem", delete=False)
        pub.write(subprocess.run(["openssl", "pkey", "-pubout"], input=sa["private_key"].encode(),
                                 capture_output=True, check=True).stdout)
        pub.close()
        GCP.update(email=sa["client_email"], kid=sa.get("private_key_id"), pub=pub.name)
    host, port = ARGS.listen.rsplit(":", 1)
    Server((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()
