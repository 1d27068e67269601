"""The usage ledger against a real PostgreSQL (initialised and started here): exactly one
row per answered request through a database outage and a killed data plane; spool
recovery; onFull Reject and Drop."""
import concurrent.futures
import glob
import http.client
import json
import os
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(__file__))
from harness import (DATAPLANE, Dataplane, Mock, MockProviders, Postgres, backend,  # noqa: E402
                     post, request, route, wait_for, wait_port)

CHAT = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
KW_OUTAGE = float(os.environ.get("KW_PG_OUTAGE_SECONDS", "30"))


def usage_spec(dir_, dsn_file, extra_spool="", extra_sink=""):
    return ("  usage:\n    spool: {dir: \"%s\"%s}\n"
            "    sinks: [{postgres: {dsnFile: \"%s\", flushInterval: 200ms%s}}]\n"
            % (dir_, extra_spool, dsn_file, extra_sink))


def debug_usage(dp):
    return json.loads(request("GET", dp.admin, "/debug/usage")[2])


def wait_shipped(dps, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if all(debug_usage(dp)["spool"]["bytes"] == 0 and debug_usage(dp)["queueDepth"] == 0
               for dp in dps):
            return
        time.sleep(0.2)
    raise AssertionError("not shipped: %s" % [debug_usage(dp) for dp in dps])


class Exactly(unittest.TestCase):
    """20,000 requests through two data planes; PostgreSQL stopped for 30 s and restarted;
    one data plane SIGKILLed and restarted."""

    def test_rows_equal_answers(self):
        pg = Postgres()
        mock = Mock(threads=2)
        dsn = os.path.join(pg.dir, "dsn")
        with open(dsn, "w") as f:
            f.write(pg.dsn() + "\n")
        res = (backend("b", mock.url()) + route("demo", ["demo"], ["b"]))
        dps = [Dataplane(res, extra_spec=usage_spec(os.path.join(pg.dir, "spool-%d" % i), dsn))
               for i in range(2)]
        received, failed = {}, set()
        lock = threading.Lock()
        total = 20000
        counter = iter(range(total))

        def client(n):
            conns = [None, None]
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                rid = uuid.uuid4().hex
                which = i % 2
                stream = i % 10 == 0
                body = dict(CHAT, stream=True, stream_options={"include_usage": True}) \
                    if stream else CHAT
                try:
                    if conns[which] is None:
                        conns[which] = http.client.HTTPConnection("127.0.0.1", dps[which].port,
                                                                  timeout=30)
                    c = conns[which]
                    c.request("POST", "/v1/chat/completions", json.dumps(body),
                              {"Content-Type": "application/json", "x-request-id": rid})
                    r = c.getresponse()
                    data = r.read()  # complete only with the body's last chunk
                    if r.status != 200:
                        raise RuntimeError(r.status)
                    if stream:
                        chunks = [json.loads(line[6:]) for line in data.decode().split("\n")
                                  if line.startswith("data: {")]
                        u = [ch["usage"] for ch in chunks if ch.get("usage")][-1]
                    else:
                        u = json.loads(data)["usage"]
                    with lock:
                        received[rid] = (u["prompt_tokens"], u["completion_tokens"])
                except Exception:  # noqa: BLE001 - a request the client did not get
                    with lock:
                        failed.add(rid)
                    if conns[which] is not None:
                        conns[which].close()
                    conns[which] = None
                    time.sleep(0.01)

        try:
            threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
            t0 = time.time()
            for t in threads:
                t.start()
            time.sleep(1.0)
            pg.stop()  # the database goes away ...
            t_stop = time.time()
            time.sleep(2.0)
            dps[1].kill_and_restart(0.5)  # ... and a data plane is killed mid-traffic
            while time.time() - t_stop < KW_OUTAGE:
                time.sleep(0.2)
            lag = debug_usage(dps[0])["sinks"][0]
            self.assertGreater(lag["lagSeconds"], 0.0)
            self.assertIsNotNone(lag["lastError"])
            pg.start()  # ... and comes back
            for t in threads:
                t.join()
            took = time.time() - t0
            wait_shipped(dps)
            rows = pg.query("SELECT client_request_id, input_tokens, output_tokens, status "
                            "FROM knoway_usage")
            ids = [r[0] for r in rows]
            self.assertEqual(len(ids), len(set(ids)), "no duplicate rows")
            self.assertEqual(len(received) + len(failed), total)
            self.assertGreater(len(received), total * 0.9)
            missing = set(received) - set(ids)
            self.assertEqual(missing, set(), "every answered request has its row")
            extra = set(ids) - set(received)
            self.assertTrue(extra <= failed, "rows beyond the answers belong to requests cut by "
                                             "the kill: %d of %d" % (len(extra - failed), len(extra)))
            by_id = {r[0]: (int(r[1]), int(r[2])) for r in rows}
            self.assertEqual(sum(by_id[i][0] for i in received), sum(v[0] for v in received.values()))
            self.assertEqual(sum(by_id[i][1] for i in received), sum(v[1] for v in received.values()))
            print("\n    %d answered, %d cut by the kill, %d rows (%d of the cut ones), "
                  "%.1f s, PostgreSQL down %.0f s" % (len(received), len(failed), len(ids),
                                                       len(extra), took, KW_OUTAGE))
        finally:
            for dp in dps:
                dp.stop()
            mock.stop()
            pg.cleanup()


class SameSecondPid1(unittest.TestCase):
    """Replicas started together as PID 1 (each in its own PID namespace, as in containers):
    the request ids they issue never collide, so every answer keeps its row. With a boot id
    made of the time and the pid, 100 answers became 50 rows."""

    def test_rows_equal_answers(self):
        pg = Postgres()
        mock = Mock()
        dsn = os.path.join(pg.dir, "dsn")
        with open(dsn, "w") as f:
            f.write(pg.dsn() + "\n")
        res = backend("b", mock.url()) + route("demo", ["demo"], ["b"])
        wrap = ("unshare", "--pid", "--fork", "--kill-child=SIGTERM")
        time.sleep(1.05 - time.time() % 1.0)  # both start early in the same second
        dps = [Dataplane(res, workers=1, wrap=wrap, wait=False,
                         extra_spec=usage_spec(os.path.join(pg.dir, "spool-%d" % i), dsn))
               for i in range(2)]
        try:
            for dp in dps:
                wait_port(dp.port)
                dp.wait_ready()
            ids = set()
            for dp in dps:
                for _ in range(50):
                    status, headers, _body = post(dp.port, "/v1/chat/completions", CHAT)
                    self.assertEqual(status, 200)
                    ids.add(headers["x-request-id"])
            self.assertEqual(len(ids), 100, "request ids are unique across the replicas")
            wait_shipped(dps)
            rows = pg.query("SELECT request_id FROM knoway_usage")
            self.assertEqual(len(rows), 100)
            self.assertEqual({r[0] for r in rows}, ids)
        finally:
            for dp in dps:
                # unshare does not pass SIGTERM on: the data plane (PID 1 inside) gets it
                try:
                    with open("/proc/%d/task/%d/children" % (dp.proc.pid, dp.proc.pid)) as f:
                        for pid in f.read().split():
                            os.kill(int(pid), signal.SIGTERM)
                except OSError:
                    pass
                dp.stop()
            mock.stop()
            pg.cleanup()


class OneInstance(unittest.TestCase):
    """A second data plane on the same file would bind the same listeners (SO_REUSEPORT) and
    append to the same spool: it is refused, and the first keeps serving."""

    def test_second_instance_refused(self):
        mock = Mock()
        spool = tempfile.mkdtemp(prefix="kwspool-")
        res = backend("b", mock.url()) + route("demo", ["demo"], ["b"])
        spec = ("  usage:\n    spool: {dir: \"%s\"}\n"
                "    sinks: [{jsonl: {path: \"%s/usage.jsonl\"}}]\n" % (spool, spool))
        first = Dataplane(res, extra_spec=spec)
        try:
            # the same file: the same listeners and spool
            again = subprocess.run([DATAPLANE, "-c", first.path], capture_output=True,
                                   text=True, timeout=20)
            self.assertNotEqual(again.returncode, 0)
            self.assertIn("in use by another process", again.stdout + again.stderr)
            # another file, same listeners, no usage: refused at the listener
            other = first.path + ".nospool.yaml"
            with open(first.path) as f:
                text = f.read()
            with open(other, "w") as f:
                f.write(text.replace(spec, ""))
            again = subprocess.run([DATAPLANE, "-c", other], capture_output=True, text=True,
                                   timeout=20)
            self.assertNotEqual(again.returncode, 0)
            self.assertIn("cannot listen", again.stdout + again.stderr)
            self.assertIn("Address already in use", again.stdout + again.stderr)
            self.assertEqual(post(first.port, "/v1/chat/completions", CHAT)[0], 200)
        finally:
            first.stop()
            mock.stop()


class DiskFull(unittest.TestCase):
    """The spool on a tmpfs that fills up: no answer goes out without its record (503
    usage_spool_unavailable instead, with the true errno), and a sink that cannot save its
    offset is failing (counted, in /debug/usage) but never ships a record twice. It once
    answered 200 to requests it recorded 8 of, logged "Success" and wrote 73 copies of each
    record to the JSON-lines file."""

    def test_enospc(self):
        mnt = tempfile.mkdtemp(prefix="kwfull-")
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", mnt], check=True)
        out = tempfile.mkdtemp(prefix="kwfull-out-")
        mock = Mock()
        dp = None
        try:
            spool = os.path.join(mnt, "spool")
            dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]),
                           extra_spec=("  usage:\n    spool: {dir: \"%s\"}\n"
                                       "    sinks: [{jsonl: {path: \"%s/usage.jsonl\"}}]\n"
                                       % (spool, out)))
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT)[0], 200)
            filler = os.path.join(mnt, "filler")
            fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # the disk fills up
            try:
                while os.write(fd, b"\0" * 512) > 0:
                    pass
            except OSError:
                pass
            os.close(fd)
            answers = [post(dp.port, "/v1/chat/completions", CHAT) for _ in range(200)]
            codes = [a[0] for a in answers]
            self.assertIn(503, codes, "the disk is full: some records cannot be written")
            for a in answers:
                if a[0] == 503:
                    e = json.loads(a[2])["error"]
                    self.assertEqual(e["code"], "usage_spool_unavailable")
                    self.assertIn("No space left on device", e["message"])
            self.assertNotIn('"error":"Success"', dp.logs())
            # the sink shipped what was spooled but cannot save where it got to: failing
            deadline = time.time() + 10
            while time.time() < deadline:
                sink = debug_usage(dp)["sinks"][0]
                if sink["lastError"] and "shipped offset" in sink["lastError"]:
                    break
                time.sleep(0.1)
            self.assertIn("cannot save the shipped offset: No space left on device",
                          sink["lastError"])
            self.assertGreater(sink["failures"], 0)
            time.sleep(1.0)  # retries with backoff: nothing is shipped again
            os.unlink(filler)  # space comes back
            wait_shipped([dp])
            self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT)[0], 200)
            wait_shipped([dp])
            with open(os.path.join(out, "usage.jsonl")) as f:
                ids = [json.loads(line)["request_id"] for line in f if line.strip()]
            self.assertEqual(len(ids), len(set(ids)), "no record shipped twice")
            answered = {a[1]["x-request-id"] for a in answers if a[0] == 200}
            self.assertEqual(answered - set(ids), set(), "every 200 has its record")
        finally:
            if dp is not None:
                dp.stop()
            mock.stop()
            subprocess.run(["umount", "-l", mnt], check=False)


class Recovery(unittest.TestCase):
    def test_torn_tail_and_corrupted_record(self):
        pg = Postgres()
        mock = Mock()
        dsn = os.path.join(pg.dir, "dsn")
        with open(dsn, "w") as f:
            f.write(pg.dsn() + "\n")
        spool = os.path.join(pg.dir, "spool")
        pg.stop()  # records stay in the spool
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]),
                       extra_spec=usage_spec(spool, dsn))
        try:
            for i in range(10):
                r = post(dp.port, "/v1/chat/completions", CHAT, {"x-request-id": "rec-%d" % i})
                self.assertEqual(r[0], 200)
            dp.proc.kill()
            dp.proc.wait(5)
            seg = sorted(glob.glob(os.path.join(spool, "seg-*.log")))[-1]
            with open(seg, "r+b") as f:
                data = f.read()
                at = data.index(b'"client_request_id":"rec-4"')
                f.seek(at + 5)
                f.write(b"X")  # record rec-4 damaged
                f.seek(0, 2)
                f.write(b"KWL1\x40\x00\x00\x00partial")  # a torn last record
            pg.start()
            dp.kill_and_restart()
            wait_shipped([dp])
            ids = sorted(r[0] for r in pg.query("SELECT client_request_id FROM knoway_usage"))
            self.assertEqual(ids, sorted("rec-%d" % i for i in range(10) if i != 4))
            logs = dp.logs()
            self.assertIn("torn record", logs)
            self.assertIn("corrupted record was skipped", logs)
            self.assertGreaterEqual(debug_usage(dp)["spool"]["repairs"], 1)
        finally:
            dp.stop()
            mock.stop()
            pg.cleanup()


class OnFull(unittest.TestCase):
    """A tiny spool and a database that is down."""

    def run_full(self, mode):
        pg = Postgres()
        mock = Mock()
        dsn = os.path.join(pg.dir, "dsn")
        with open(dsn, "w") as f:
            f.write(pg.dsn() + "\n")
        pg.stop()
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]),
                       extra_spec=usage_spec(os.path.join(pg.dir, "spool"), dsn,
                                             ", maxBytes: 4096, onFull: %s" % mode))
        try:
            answers = [post(dp.port, "/v1/chat/completions", CHAT) for _ in range(30)]
            return [a[0] for a in answers], debug_usage(dp), answers
        finally:
            dp.stop()
            mock.stop()
            pg.cleanup()

    def test_reject(self):
        codes, st, answers = self.run_full("Reject")
        self.assertIn(503, codes)
        first = codes.index(503)
        self.assertTrue(all(c == 200 for c in codes[:first]))
        self.assertTrue(all(c == 503 for c in codes[first:]))
        self.assertEqual(st["records"]["dropped"], 0, "Reject keeps every record")
        self.assertEqual(st["records"]["written"], first)
        e = json.loads(answers[-1][2])["error"]
        self.assertEqual(e["code"], "usage_spool_full")
        self.assertIn("usage spool is full", e["message"])

    def test_drop(self):
        codes, st, _ = self.run_full("Drop")
        self.assertEqual(codes, [200] * 30)
        self.assertGreater(st["records"]["dropped"], 0)
        self.assertEqual(st["records"]["dropped"] + st["records"]["written"], 30)


class ApiLabels(unittest.TestCase):
    """Each API the client called is labelled as such in the usage record the JSON-lines sink
    ships and in knoway_requests_total: it once said "messages" for every front and "chat"
    for a /v1/responses request passed through to OpenAI."""

    def test_each_api(self):
        mock = Mock()  # OpenAI-compatible (vLLM) and Anthropic's Messages API
        providers = MockProviders()  # OpenAI's own Responses API
        out = tempfile.mkdtemp(prefix="kwjsonl-")
        res = (backend("b", mock.url()) + route("demo", ["demo"], ["b"])
               + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: k}\n"
                 "stringData: {apiKey: k-1}\n"
               + backend("claude", "http://127.0.0.1:%d" % mock.port, provider="Anthropic",
                         extra="  credentials: {secretRef: {name: k}}\n")
               + route("claude", ["claude"], ["claude"])
               + backend("oai", providers.url() + "/v1", provider="OpenAI",
                         extra="  credentials: {secretRef: {name: k}}\n")
               + route("oai", ["oai"], ["oai"]))
        dp = Dataplane(res, extra_spec=("  usage:\n    spool: {dir: \"%s/spool\"}\n"
                                        "    sinks: [{jsonl: {path: \"%s/usage.jsonl\"}}]\n"
                                        % (out, out)))
        calls = [  # (method, path, body, the API the record and the metric must name)
            ("POST", "/v1/chat/completions", CHAT, "chat"),
            ("POST", "/v1/completions", {"model": "demo", "prompt": "hi"}, "completions"),
            ("POST", "/v1/embeddings", {"model": "demo", "input": "hi"}, "embeddings"),
            ("GET", "/v1/models", None, "models"),
            ("POST", "/v1/messages", {"model": "demo", "max_tokens": 16,
                                      "messages": [{"role": "user", "content": "hi"}]},
             "messages"),
            ("POST", "/v1/responses", {"model": "claude", "input": "hi"}, "responses"),
            ("POST", "/v1/responses", {"model": "oai", "input": "hi"}, "responses"),
            ("POST", "/v1/responses", {"model": "demo", "input": "hi", "stream": True},
             "responses"),
        ]
        try:
            want, count = {}, {}
            for method, path, body, api in calls:
                rid = uuid.uuid4().hex
                st, _, data = request(method, dp.port, path, body, {"x-request-id": rid})
                self.assertEqual(st, 200, (path, body, data[:300]))
                if api != "models":  # answered by the gateway itself: nothing to bill
                    want[rid] = api
                count[api] = count.get(api, 0) + 1
            wait_shipped([dp])

            def shipped():
                with open(os.path.join(out, "usage.jsonl")) as f:
                    recs = [json.loads(line) for line in f if line.strip()]
                return len(recs) >= len(want) and recs
            recs = wait_for(shipped, 10)
            got = {r["client_request_id"]: r["api"] for r in recs}
            self.assertEqual(got, want)
            for r in recs:  # the shipped record is the whole record
                self.assertEqual(r["status"], 200)
                self.assertGreater(r["input_tokens"], 0, r)
            for api, n in count.items():
                self.assertEqual(dp.wait_metric('knoway_requests_total{code="200",api="%s"}' % api,
                                                n), n, api)
        finally:
            dp.stop()
            mock.stop()
            providers.stop()


class StreamLeft(unittest.TestCase):
    """A stream the client leaves: the provider billed its input, so the record has it: the
    count the stream reported at its start (Anthropic's message_start), else an estimate
    from the body, flagged (input_tokens_estimated). It once recorded 0."""

    def test_left_streams_record_their_input(self):
        mock = Mock()
        out = tempfile.mkdtemp(prefix="kwleft-")
        slow = {"x-mock-chunks": "40", "x-mock-interval-ms": "50"}
        res = (backend("b", mock.url(), headers=slow) + route("demo", ["demo"], ["b"])
               + "---\napiVersion: v1\nkind: Secret\nmetadata: {name: k}\n"
                 "stringData: {apiKey: k-1}\n"
               + backend("claude", "http://127.0.0.1:%d" % mock.port, provider="Anthropic",
                         headers=slow, extra="  credentials: {secretRef: {name: k}}\n")
               + route("claude", ["claude"], ["claude"]))
        dp = Dataplane(res, extra_spec=("  usage:\n    spool: {dir: \"%s/spool\"}\n"
                                        "    sinks: [{jsonl: {path: \"%s/usage.jsonl\"}}]\n"
                                        % (out, out)))
        text = "count the words in this sentence please " * 50
        try:
            sent = {}
            for model in ("demo", "claude"):
                body = json.dumps({"model": model, "stream": True,
                                   "messages": [{"role": "user", "content": text}]})
                rid = uuid.uuid4().hex
                c = http.client.HTTPConnection("127.0.0.1", dp.port, timeout=10)
                c.request("POST", "/v1/chat/completions", body,
                          {"Content-Type": "application/json", "x-request-id": rid})
                r = c.getresponse()
                self.assertEqual(r.status, 200)
                got = b""
                while got.count(b"data: {") < 3:  # a few chunks, then the client leaves
                    got += r.read1(4096)
                c.sock.shutdown(socket.SHUT_RDWR)
                c.close()
                sent[model] = (rid, len(body))
            # ... and one stream read to its end: the provider's own counts, not estimated
            st, _, data = request("POST", dp.port, "/v1/chat/completions",
                                  {"model": "claude", "stream": True,
                                   "messages": [{"role": "user", "content": "hi"}]},
                                  {"x-request-id": "whole-stream"})
            self.assertEqual(st, 200)

            def shipped():
                wait_shipped([dp])
                with open(os.path.join(out, "usage.jsonl")) as f:
                    recs = {json.loads(l)["client_request_id"]: json.loads(l) for l in f if l.strip()}
                return len(recs) >= 3 and recs
            recs = wait_for(shipped, 15)
            demo = recs[sent["demo"][0]]
            self.assertTrue(demo["input_tokens_estimated"], demo)
            self.assertEqual(demo["input_tokens"], sent["demo"][1] // 4)
            self.assertGreaterEqual(demo["output_tokens"], 2)
            self.assertLess(demo["output_tokens"], 40)
            claude = recs[sent["claude"][0]]
            # the mock: 3 per message and a token a word, plus 2 cache reads and 1 write
            words = len(text.split())
            self.assertEqual((claude["input_tokens"], claude["input_tokens_estimated"]),
                             (3 + words + 3, False), claude)
            whole = recs["whole-stream"]
            self.assertFalse(whole["input_tokens_estimated"])
            self.assertEqual(whole["provider_usage"],
                             {"input_tokens": 4, "cache_read_input_tokens": 2,
                              "cache_creation_input_tokens": 1, "output_tokens": 40})
            self.assertEqual(whole["input_tokens"], 4 + 2 + 1)
            self.assertEqual(whole["cached_tokens"], 2)
        finally:
            dp.stop()
            mock.stop()


class SinksIndependent(unittest.TestCase):
    """One failing sink never blocks another: PostgreSQL is down while the JSON-lines sink
    ships every record; when it comes back its rows arrive exactly once, with the
    provider's own counts (provider_usage, jsonb)."""

    def test_jsonl_ships_while_postgres_is_down(self):
        pg = Postgres()
        mock = Mock()
        out = tempfile.mkdtemp(prefix="kwsinks-")
        dsn = os.path.join(pg.dir, "dsn")
        with open(dsn, "w") as f:
            f.write(pg.dsn() + "\n")
        pg.stop()
        dp = Dataplane(backend("b", mock.url()) + route("demo", ["demo"], ["b"]),
                       extra_spec=("  usage:\n    spool: {dir: \"%s/spool\"}\n"
                                   "    sinks:\n"
                                   "      - {postgres: {dsnFile: \"%s\", flushInterval: 200ms}}\n"
                                   "      - {jsonl: {path: \"%s/usage.jsonl\"}}\n"
                                   % (out, dsn, out)))
        try:
            ids = set()
            for i in range(50):
                rid = "req-%d" % i
                self.assertEqual(post(dp.port, "/v1/chat/completions", CHAT,
                                      {"x-request-id": rid})[0], 200)
                ids.add(rid)

            def jsonl_ids():
                with open(os.path.join(out, "usage.jsonl")) as f:
                    got = [json.loads(line)["client_request_id"] for line in f if line.strip()]
                return len(got) >= 50 and got
            got = wait_for(jsonl_ids, 10)  # shipped while the database is down
            self.assertEqual(sorted(got), sorted(ids))
            sinks = debug_usage(dp)["sinks"]
            pg_sink = [k for k in sinks if k.get("lastError")]
            self.assertEqual(len(pg_sink), 1, sinks)  # the database sink is failing meanwhile
            self.assertIn("PostgreSQL", pg_sink[0]["lastError"])
            pg.start()
            wait_shipped([dp], 30)
            rows = pg.query("SELECT client_request_id, input_tokens, input_tokens_estimated, "
                            "provider_usage->>'prompt_tokens' FROM knoway_usage")
            self.assertEqual(sorted(r[0] for r in rows), sorted(ids), "exactly once")
            for r in rows:
                self.assertEqual(str(r[2]).lower()[0], "f")
                self.assertEqual(int(r[3]), int(r[1]))
        finally:
            dp.stop()
            mock.stop()
            pg.cleanup()


if __name__ == "__main__":
    unittest.main()
