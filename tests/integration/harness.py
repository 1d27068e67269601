"""Process harness for integration tests: free ports, the mock provider, knoway-dataplane.

Everything runs on loopback; every wait is bounded.
"""
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

BUILD = os.environ.get("KW_BUILD", os.path.join(os.path.dirname(__file__), "..", "..", "build"))
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(_hard, 65536), _hard))

DATAPLANE = os.environ.get("KW_DATAPLANE", os.path.join(BUILD, "dataplane", "knoway-dataplane"))
MOCK = os.environ.get("KW_MOCK", os.path.join(BUILD, "tests", "knoway-mockllm"))


def wait_for(fn, timeout=5.0):
    """Poll fn until it returns something truthy (returned) or timeout (AssertionError)."""
    deadline = time.time() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.time() > deadline:
            raise AssertionError("condition not met within %.1f s" % timeout)
        time.sleep(0.05)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("port %d did not open" % port)


class Mock:
    def __init__(self, *args, threads=1):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [MOCK, "--listen", "127.0.0.1:%d" % self.port, "--threads", str(threads), *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self):
        return "http://127.0.0.1:%d/v1" % self.port

    def requests(self):
        status, _, body = request("GET", self.port, "/_mock/requests")
        return json.loads(body)

    def clear(self):
        request("DELETE", self.port, "/_mock/requests")

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)


MOCKPROVIDERS = os.path.join(os.path.dirname(__file__), "..", "tools", "mockproviders.py")


class MockProviders(Mock):
    """tests/tools/mockproviders.py (Gemini, Bedrock, Vertex AI); port may be chosen first
    (a service-account key names the mock's token endpoint)."""

    def __init__(self, *args, port=None):  # pylint: disable=super-init-not-called
        self.port = port or free_port()
        self.proc = subprocess.Popen(
            ["python3", MOCKPROVIDERS, "--listen", "127.0.0.1:%d" % self.port, *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def url(self):
        return "http://127.0.0.1:%d" % self.port


def service_account(token_uri, email="knoway@knoway-test.iam.gserviceaccount.com"):
    """A Google service-account key with a fresh RSA key (the openssl command line)."""
    key = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                          "rsa_keygen_bits:2048"], capture_output=True, check=True).stdout.decode()
    return {"type": "service_account", "project_id": "knoway-test", "private_key_id": "key-1",
            "private_key": key, "client_email": email, "client_id": "1",
            "token_uri": token_uri}


class Redis:
    def __init__(self, port=None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="kwredis-")
        self.start()

    def start(self):
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)

    def stop(self):
        self.proc.kill()
        self.proc.wait(5)

    def cmd(self, *args):
        """One command over RESP; returns the decoded reply (enough for these tests)."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        s.sendall(out)
        f = s.makefile("rb")
        reply = self._read(f)
        s.close()
        return reply

    def _read(self, f):
        line = f.readline().rstrip(b"\r\n")
        t, rest = line[:1], line[1:]
        if t in (b"+", b"-"):
            return rest.decode()
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data.decode()
        if t == b"*":
            return [self._read(f) for _ in range(int(rest))]
        raise ValueError(line)

    def url(self):
        return "redis://127.0.0.1:%d" % self.port


class Postgres:
    """A PostgreSQL server from the distribution, initialised in a temporary directory
    (as the postgres user when run as root: initdb refuses root), on a free port."""

    def __init__(self):
        import glob
        bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
        if not bins:
            raise RuntimeError("PostgreSQL is not installed (hack/install-deps.sh installs it)")
        self.bin = bins[-1]
        self.dir = tempfile.mkdtemp(prefix="kwpg-")
        os.chmod(self.dir, 0o777)
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run(self.as_user + [os.path.join(self.bin, "initdb"), "-D", self.data,
                                       "-A", "trust", "-U", "knoway", "--no-sync"],
                       check=True, capture_output=True)
        self.start()

    def start(self):
        subprocess.run(self.as_user + [
            os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-l",
            os.path.join(self.dir, "postgres.log"), "-w", "-o",
            "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off" % (self.port, self.dir),
            "start"], check=True, capture_output=True)

    def stop(self):
        subprocess.run(self.as_user + [os.path.join(self.bin, "pg_ctl"), "-D", self.data, "-m",
                                       "fast", "-w", "stop"], capture_output=True)

    def dsn(self):
        return "host=127.0.0.1 port=%d user=knoway dbname=postgres connect_timeout=2" % self.port

    def query(self, sql):
        """Rows of a query (psql -At): a list of lists of strings."""
        out = subprocess.run([os.path.join(self.bin, "psql"), "-h", "127.0.0.1", "-p",
                              str(self.port), "-U", "knoway", "-d", "postgres", "-At", "-F",
                              "\t", "-c", sql], check=True, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.splitlines() if line]

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class Dataplane:
    """knoway-dataplane on a generated config file. `resources` is YAML text."""

    def __init__(self, resources, workers=2, extra_spec="", args=(), env=None, wait=True,
                 wrap=()):
        self.port = free_port()
        self.admin = free_port()
        self.dir = tempfile.mkdtemp(prefix="kwtest-")
        self.path = os.path.join(self.dir, "knoway.yaml")
        self.workers = workers
        self.extra_spec = extra_spec
        self.write(resources)
        self.log = open(os.path.join(self.dir, "dataplane.log"), "w+")
        self.argv = [*wrap, DATAPLANE, "-c", self.path, *args]
        self.env = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        if wait:
            wait_port(self.port)
            self.wait_ready()

    def kill_and_restart(self, down_seconds=0.0):
        """SIGKILL, then the same process again on the same configuration and ports."""
        self.proc.kill()
        self.proc.wait(10)
        time.sleep(down_seconds)
        self.proc = subprocess.Popen(self.argv, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        wait_port(self.port)
        self.wait_ready()

    def bootstrap(self):
        return ("apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: t}\n"
                "spec:\n  listen: \"127.0.0.1:%d\"\n  admin: \"127.0.0.1:%d\"\n  workers: %d\n%s"
                % (self.port, self.admin, self.workers, self.extra_spec))

    def write(self, resources):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.bootstrap() + "---\n" + resources)
        os.rename(tmp, self.path)

    def wait_ready(self, timeout=10.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if request("GET", self.admin, "/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("dataplane not ready:\n" + self.logs())

    def metrics(self):
        return metrics(self.admin)

    def wait_metric(self, key, value, timeout=3.0):
        """Counters move when a request completes, which may be just after the client read
        its last byte: wait (bounded) for key to reach value; returns the last value."""
        deadline = time.time() + timeout
        while True:
            got = self.metrics().get(key, 0.0)
            if got == value or time.time() > deadline:
                return got
            time.sleep(0.02)

    def version(self):
        for k in self.metrics():
            if k.startswith("knoway_snapshot_version_info"):
                return k.split('"')[1]
        return None

    def logs(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def cpu_seconds(self):
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def hup(self):
        self.proc.send_signal(signal.SIGHUP)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(35)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()
        logs = self.logs()
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            if bad in logs:
                raise AssertionError("sanitizer report in the data plane's log:\n" + logs[-20000:])
        return self.proc.returncode


def metrics(port):
    """An admin listener's /metrics as {"name{labels}": value}."""
    body = request("GET", port, "/metrics")[2].decode()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
    return out


def request(method, port, path, body=None, headers=None, timeout=10.0):
    """One HTTP request; returns (status, headers dict (lower-case), body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, data


def post(port, path, body, headers=None, timeout=10.0):
    return request("POST", port, path, body, headers, timeout)


def sse_data(raw):
    """The data fields of an SSE byte stream, in order."""
    out = []
    for block in raw.decode().replace("\r\n", "\n").split("\n\n"):
        for line in block.split("\n"):
            if line.startswith("data: "):
                out.append(line[6:])
    return out


def backend(name, url, provider="vLLM", model=None, headers=None, extra=""):
    y = ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: %s}\n"
         "spec:\n  provider: %s\n" % (name, provider))
    if model:
        y += "  modelName: %s\n" % model
    y += "  upstream:\n    baseURL: \"%s\"\n" % url
    if headers:
        y += "    headers:\n" + "".join("      - {name: %s, value: \"%s\"}\n" % kv for kv in headers.items())
    return y + extra


def consumer(name, key, extra=""):
    """An LLMConsumer with one API key (in the Secret <name>-keys); extra: more spec lines."""
    return ("---\napiVersion: v1\nkind: Secret\nmetadata: {name: %s-keys}\nstringData: {k: %s}\n"
            "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\nmetadata: {name: %s}\n"
            "spec:\n  apiKeys: [{secretRef: {name: %s-keys}}]\n%s" % (name, key, name, name, extra))


def route(name, models, refs, extra=""):
    y = ("---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: %s}\n"
         "spec:\n  match: {models: %s}\n  backendRefs:\n" % (name, json.dumps(models)))
    for r in refs:
        if isinstance(r, str):
            r = {"name": r}
        y += "    - " + json.dumps(r) + "\n"
    return y + extra


CLIENTS = os.path.join(os.path.dirname(__file__), "clients")


def _raw(port, data, src):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(data)
    return s


def _get(port, path, src, timeout):
    """GET over a fresh connection from src: the status, 0 when nothing came in time."""
    s = socket.socket()
    try:
        s.bind((src, 0))
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        out = b""
        while b"\r\n" not in out:  # the status line
            d = s.recv(4096)
            if not d:
                break
            out += d
        return int(out.split(b" ", 2)[1]) if out.startswith(b"HTTP/1.1 ") else 0
    except (OSError, ValueError):
        return 0
    finally:
        s.close()


def slow_flood(port, seconds, conns=1100, addrs=70, probe=None):
    """conns slow connections from addrs loopback addresses (127.0.x.y), each sending part of
    its headers, reopened as soon as the server closes them, for seconds. Meanwhile probe()
    runs every 0.1 s; returns its results and how many attack connections were opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srcs = ["127.0.%d.%d" % (1 + i // 200, 2 + i % 200) for i in range(addrs)]
    socks, opened, stop = [], [0], threading.Event()

    def attack():
        i = 0
        while not stop.is_set():
            live = []
            for s in socks:
                try:
                    s.setblocking(False)
                    if s.recv(1, socket.MSG_PEEK) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except OSError:
                    s.close()
                    continue
                live.append(s)
            socks[:] = live
            while len(socks) < conns and not stop.is_set():
                try:
                    socks.append(_raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
                                     srcs[i % addrs]))
                    opened[0] += 1
                except OSError:
                    pass
                i += 1
            time.sleep(0.05)

    t = threading.Thread(target=attack)
    t.start()
    results = []
    try:
        time.sleep(1.0)  # the attack fills the listener
        deadline = time.time() + seconds
        while time.time() < deadline:
            results.append(probe())
            time.sleep(0.1)
    finally:
        stop.set()
        t.join()
        for s in socks:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return results, opened[0]


def timed_probe(port, path, src="127.0.0.1"):
    t = time.time()
    try:
        st = _get(port, path, src, 1.0)
    except OSError:
        st = 0
    return st, time.time() - t



class Collector:
    """The OTLP/HTTP receiver built on OpenTelemetry JS's protobuf definitions
    (clients/otlp_receiver.mjs): what it decoded, in OTLP JSON's shape."""

    def __init__(self):
        # stderr not inherited: a receiver left behind must not hold ctest's output pipe open
        self.proc = subprocess.Popen(["node", os.path.join(CLIENTS, "otlp_receiver.mjs"), "0"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=CLIENTS,
                                     text=True)
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line
        self.port = int(line.split()[1])

    def url(self):
        return "http://127.0.0.1:%d" % self.port

    def _call(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        c.request(method, path, json.dumps(body) if body is not None else None)
        r = c.getresponse()
        data = json.loads(r.read())
        c.close()
        return data

    @property
    def spans(self):
        return self._call("GET", "/spans")["spans"]

    def exports(self):
        return self._call("GET", "/spans")["requests"]

    def fault(self, **kw):
        self._call("POST", "/fault", kw)

    def trace(self, trace_id, n, timeout=5.0):
        deadline = time.time() + timeout
        while True:
            got = [s for s in self.spans if s["traceId"] == trace_id]
            if len(got) >= n or time.time() > deadline:
                return got
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
