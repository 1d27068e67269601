"""knoway-controller against a real kube-apiserver + etcd (hack/kube-apiserver.sh) with real
kubectl: the controller and two data planes run as processes with the mock provider.

The cases run in order (test_NN_) and share one cluster: each builds on the state the
previous ones left, as an operator's session would.
"""
import gzip
import http.client
import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.error
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import harness  # noqa: E402
from harness import (Dataplane, Mock, Redis, free_port, metrics, post, request,  # noqa: E402
                     wait_port)

SRC = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CONTROLLER = os.environ.get("KW_CONTROLLER",
                            os.path.join(harness.BUILD, "controller", "knoway-controller"))
API = "llm.knoway.dev/v1alpha1"
DIR = None
ENV = None


def kubectl(*args, stdin=None, check=True):
    p = subprocess.run(["kubectl", "--request-timeout=20s", *args], input=stdin, env=ENV,
                       capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError("kubectl %s: %s%s" % (" ".join(args), p.stdout, p.stderr))
    return p


def apply(yaml_text):
    return kubectl("apply", "-f", "-", stdin=yaml_text)


def backend(name, url, extra=""):
    return ("---\napiVersion: %s\nkind: LLMBackend\nmetadata: {name: %s, namespace: default}\n"
            "spec:\n  provider: vLLM\n  upstream: {baseURL: \"%s\"}\n%s" % (API, name, url, extra))


def route(name, models, refs, extra=""):
    return ("---\napiVersion: %s\nkind: LLMRoute\nmetadata: {name: %s, namespace: default}\n"
            "spec:\n  match: {models: %s}\n  backendRefs: %s\n%s"
            % (API, name, json.dumps(models), json.dumps([{"name": r} for r in refs]), extra))


def chat(port, model, timeout=10.0):
    return post(port, "/v1/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": "hi"}]},
                timeout=timeout)


def conditions(kind, name):
    out = kubectl("get", kind, name, "-o", "json").stdout
    obj = json.loads(out)
    st = obj.get("status", {})
    return {c["type"]: c for c in st.get("conditions", [])}, st.get("observedGeneration"), obj


def wait_for(pred, timeout=10.0, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.02)
    raise AssertionError("timed out waiting for %s (last: %r)" % (what, last))


class Controller:
    def __init__(self, ident, token_file, leader_elect=True, extra=(), env=None, kubeconfig=True):
        self.port = free_port()
        self.admin = free_port()
        self.ident = ident
        self.log = open(os.path.join(DIR, "controller-%s.log" % ident), "a+")
        args = [CONTROLLER, "--listen", "127.0.0.1:%d" % self.port, "--admin",
                "127.0.0.1:%d" % self.admin, "--token-file", token_file, "--id", ident,
                "--lease-namespace", "default", *extra]
        if kubeconfig:
            args += ["--kubeconfig", os.path.join(DIR, "kubeconfig")]
        if leader_elect:
            args.append("--leader-elect")
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(ENV, **(env or {})))
        wait_port(self.admin)
        wait_for(lambda: self.ready(), 20, "controller %s ready" % ident)

    def ready(self):
        try:
            return request("GET", self.admin, "/readyz")[0] == 200
        except OSError:
            return False

    def metrics(self):
        return metrics(self.admin)

    def nodes(self):
        return json.loads(request("GET", self.admin, "/debug/nodes")[2])

    def logs(self):
        if not self.log.closed:
            self.log.flush()
        with open(self.log.name) as f:
            return f.read()

    def stop(self, kill=False):
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(20)
        self.log.close()
        for bad in ("AddressSanitizer", "runtime error:", "LeakSanitizer"):
            assert bad not in self.logs(), self.logs()[-20000:]


def dataplane(controller_port, token_file, node, cache, redis=None):
    spec = ("  discovery:\n    url: \"http://127.0.0.1:%d\"\n    tokenFile: %s\n    nodeId: %s\n"
            "    cacheFile: %s\n" % (controller_port, token_file, node, cache))
    if redis is not None:
        spec += "  redis: {url: \"%s\"}\n" % redis.url()
    return Dataplane("", workers=1, extra_spec=spec)


def setUpModule():
    global DIR, ENV
    DIR = tempfile.mkdtemp(prefix="kw-e2e-ctl-")
    subprocess.run(["bash", os.path.join(SRC, "hack", "kube-apiserver.sh"), "start", DIR],
                   check=True, timeout=900)
    ENV = dict(os.environ, KUBECONFIG=os.path.join(DIR, "kubeconfig"))
    kubectl("apply", "--validate=false", "-f", os.path.join(SRC, "crds"))
    kubectl("wait", "--for", "condition=established", "--timeout=30s",
            "crd/llmbackends.llm.knoway.dev", "crd/llmroutes.llm.knoway.dev",
            "crd/llmconsumers.llm.knoway.dev")


def tearDownModule():
    subprocess.run(["bash", os.path.join(SRC, "hack", "kube-apiserver.sh"), "stop", DIR],
                   timeout=120)
    shutil.rmtree(DIR, ignore_errors=True)


class ControlPlane(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.mock = Mock()
        cls.token = os.path.join(DIR, "discovery-token")
        with open(cls.token, "w") as f:
            f.write("e2e-discovery-token-%d\n" % os.getpid())
        cls.redis = Redis()  # shared limits and the usage counters status.usage shows
        cls.ctl = Controller("a", cls.token,
                             extra=("--redis", cls.redis.url(), "--usage-interval", "1"))
        cls.dps = [dataplane(cls.ctl.port, cls.token, "dp%d" % i,
                             os.path.join(DIR, "dp%d-snapshot.json" % i), cls.redis)
                   for i in range(2)]
        cls.extra = []

    @classmethod
    def tearDownClass(cls):
        for dp in cls.dps:
            dp.stop()
        for c in [cls.ctl] + cls.extra:
            c.stop()
        cls.mock.stop()
        cls.redis.stop()

    def serve_all(self, model, status=200, timeout=5.0):
        def ok():
            return all(chat(dp.port, model)[0] == status for dp in self.dps)
        wait_for(ok, timeout, "model %s -> %d on every data plane" % (model, status))

    def test_01_requests_route(self):
        apply("---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: default, "
              "labels: {llm.knoway.dev/secret: \"true\"}}\n"
              "stringData: {token: sk-e2e-secret}\n" +
              backend("mock", self.mock.url(),
                      "  credentials: {secretRef: {name: keys, key: token}}\n") +
              route("chat", ["gpt-e2e"], ["mock"]))
        self.serve_all("gpt-e2e")
        st, _, body = chat(self.dps[0].port, "gpt-e2e")
        self.assertEqual(json.loads(body)["object"], "chat.completion")
        # the Secret's value reached the upstream as the credential
        self.assertEqual(self.mock.requests()[-1]["headers"].get("authorization"),
                         "Bearer sk-e2e-secret")
        conds = wait_for(lambda: (lambda c: c if c.get("Programmed", {}).get("status") == "True" else None)(
            conditions("llmroute", "chat")[0]), 10, "Programmed=True")
        self.assertEqual(conds["Accepted"]["status"], "True")
        self.assertEqual(conds["ResolvedRefs"]["status"], "True")
        self.assertEqual(conds["Programmed"]["message"], "applied by 2 of 2 data planes")
        nodes = self.ctl.nodes()
        self.assertEqual(sorted(n["id"] for n in nodes["nodes"]), ["dp0", "dp1"])
        self.assertTrue(all(n["acked"] == nodes["version"] for n in nodes["nodes"]))
        for dp in self.dps:
            self.assertEqual(dp.version(), nodes["version"])

    def test_02_change_reaches_every_data_plane_within_1s(self):
        worst = 0.0
        for i in range(5):
            model = "gpt-e2e-%d" % i
            apply(route("chat", ["gpt-e2e", model], ["mock"]))
            t0 = time.time()
            for dp in self.dps:
                wait_for(lambda: chat(dp.port, model)[0] == 200, 5, model)
            worst = max(worst, time.time() - t0)
        self.assertLess(worst, 1.0, "slowest propagation after kubectl apply returned")
        print("\n    propagation after kubectl apply returned: worst %.3f s of 5" % worst)

    def test_03_delete_gives_404(self):
        apply(route("doomed", ["gpt-doomed"], ["mock"]))
        self.serve_all("gpt-doomed")
        kubectl("delete", "llmroute", "doomed")
        self.serve_all("gpt-doomed", 404)
        st, _, body = chat(self.dps[1].port, "gpt-doomed")
        self.assertEqual(json.loads(body)["error"]["code"], "model_not_found")

    def test_04_invalid_resource_reported_others_keep_working(self):
        # the 1.20 API server ignores the CRDs' CEL rules, so this reaches the controller:
        # a vLLM backend needs an address
        apply("---\napiVersion: %s\nkind: LLMBackend\nmetadata: {name: bad, namespace: default}\n"
              "spec:\n  provider: vLLM\n" % API +
              backend("nosecret", self.mock.url(),
                      "  credentials: {secretRef: {name: missing, key: k}}\n") +
              route("badroute", ["gpt-bad"], ["bad"]))
        conds = wait_for(lambda: (lambda c: c if "Accepted" in c else None)(
            conditions("llmbackend", "bad")[0]), 10, "status on the bad backend")
        self.assertEqual(conds["Accepted"]["status"], "False")
        self.assertEqual(conds["Accepted"]["reason"], "Invalid")
        self.assertIn("spec.upstream", conds["Accepted"]["message"])
        self.assertEqual(conds["Programmed"]["status"], "False")
        conds = wait_for(lambda: (lambda c: c if "ResolvedRefs" in c else None)(
            conditions("llmbackend", "nosecret")[0]), 10, "status on nosecret")
        self.assertEqual(conds["ResolvedRefs"]["status"], "False")
        self.assertEqual(conds["ResolvedRefs"]["message"],
                         'spec.credentials.secretRef.name: Secret "default/missing" not found '
                         '(the controller reads only Secrets labelled llm.knoway.dev/secret)')
        conds, gen, _ = conditions("llmroute", "badroute")
        self.assertEqual(conds["ResolvedRefs"]["status"], "False")
        self.assertIn('LLMBackend "default/bad"', conds["ResolvedRefs"]["message"])
        self.assertEqual(gen, 1)
        self.serve_all("gpt-e2e")
        self.serve_all("gpt-bad", 404)
        # a Secret without the label is not read (the controller watches labelled ones only)
        apply("---\napiVersion: v1\nkind: Secret\nmetadata: {name: missing, namespace: default}\n"
              "stringData: {k: v}\n")
        time.sleep(1.0)
        self.assertEqual(conditions("llmbackend", "nosecret")[0]["ResolvedRefs"]["status"], "False")
        # labelling it programs it
        kubectl("label", "secret", "missing", "llm.knoway.dev/secret=true")
        wait_for(lambda: conditions("llmbackend", "nosecret")[0]["ResolvedRefs"]["status"] == "True",
                 10, "ResolvedRefs=True after the Secret appeared")
        kubectl("delete", "llmroute", "badroute")
        kubectl("delete", "llmbackend", "bad", "nosecret")

    def test_04b_deeply_nested_object_reported_others_flow(self):
        """Regression: one LLMBackend whose params nest 70 levels deep made every LIST of
        LLMBackends fail: the controller never became ready and no namespace got updates."""
        deep = {"apiVersion": API, "kind": "LLMBackend",
                "metadata": {"name": "deep", "namespace": "default"},
                "spec": {"provider": "vLLM", "upstream": {"baseURL": self.mock.url()},
                         "params": {"defaults": {"a": json.loads("[" * 70 + "]" * 70)}}}}
        kubectl("apply", "-f", "-", stdin=json.dumps(deep))
        conds = wait_for(lambda: (lambda c: c if "Accepted" in c else None)(
            conditions("llmbackend", "deep")[0]), 10, "status on the deep backend")
        self.assertEqual(conds["Accepted"]["status"], "False")
        self.assertIn("nesting deeper than 64 levels", conds["Accepted"]["message"])
        self.assertTrue(conds["Accepted"]["message"].startswith("spec.params.defaults.a[0]"))
        apply(backend("after-deep", self.mock.url()) + route("after-deep", ["gpt-after-deep"],
                                                             ["after-deep"]))
        self.serve_all("gpt-after-deep")
        # a controller starting now LISTs the deep object with the others and serves them
        fresh = Controller("deep-list", self.token)  # a follower: it writes no status
        try:
            st, _, body = post(fresh.port, "/v1/discovery?wait=0",
                               {"node": {"id": "probe"}, "version": ""},
                               headers={"Authorization": "Bearer " + open(self.token).read().strip()})
        finally:
            fresh.stop()
        self.assertEqual(st, 200)
        names = [r["name"] for r in json.loads(body)["routes"]]
        self.assertIn("after-deep", names)
        kubectl("delete", "llmbackend", "deep", "after-deep")
        kubectl("delete", "llmroute", "after-deep")
        self.serve_all("gpt-after-deep", 404)

    def test_04c2_a_tenants_wildcard_and_keys_stay_in_its_namespace(self):
        """A tenant's older "*" once made the platform's later exact route Conflicted (the
        tenant kept its prompts), and a tenant's self-issued key worked on every route of
        every namespace. Now the platform's route is Accepted and serves, and the key calls
        only its own namespace's routes."""
        kubectl("create", "namespace", "squat")
        apply(("---\napiVersion: %s\nkind: LLMBackend\nmetadata: {name: thief, namespace: squat}\n"
               "spec:\n  provider: vLLM\n  upstream: {baseURL: \"http://127.0.0.1:9/v1\"}\n"
               "---\napiVersion: %s\nkind: LLMRoute\nmetadata: {name: all, namespace: squat}\n"
               "spec:\n  match: {models: [\"*\"]}\n  backendRefs: [{name: thief}]\n"
               "---\napiVersion: v1\nkind: Secret\nmetadata: {name: mine, namespace: squat, "
               "labels: {llm.knoway.dev/secret: \"true\"}}\n"
               "stringData: {k: sk-self-issued-0123456789}\n"
               "---\napiVersion: %s\nkind: LLMConsumer\nmetadata: {name: me, namespace: squat}\n"
               "spec:\n  apiKeys: [{secretRef: {name: mine}}]\n") % (API, API, API))

        def accepted(ns, name):
            obj = json.loads(kubectl("-n", ns, "get", "llmroute", name, "-o", "json").stdout)
            c = {x["type"]: x for x in obj.get("status", {}).get("conditions", [])}
            return c["Accepted"] if "Accepted" in c else None
        self.assertEqual(wait_for(lambda: accepted("squat", "all"), 10, "status")["status"], "True")
        apply(route("later", ["gpt-later"], ["mock"]))
        out = wait_for(lambda: accepted("default", "later"), 10, "status on the platform's route")
        self.assertEqual(out["status"], "True", out)
        self.serve_all("gpt-later")  # the platform's backend (the mock), not the thief's
        key = {"Authorization": "Bearer sk-self-issued-0123456789"}
        wait_for(lambda: all(post(dp.port, "/v1/chat/completions",
                                  {"model": "gpt-e2e", "messages": [{"role": "user",
                                                                     "content": "hi"}]},
                                  headers=key)[0] == 404 for dp in self.dps), 10,
                 "the tenant's key refused on the platform's route")
        kubectl("-n", "default", "delete", "llmroute", "later")
        # (no namespace controller runs here: what is in it goes first)
        kubectl("-n", "squat", "delete", "llmroute", "all")
        kubectl("-n", "squat", "delete", "llmconsumer", "me")
        kubectl("-n", "squat", "delete", "secret", "mine")
        kubectl("-n", "squat", "delete", "llmbackend", "thief")
        kubectl("delete", "namespace", "squat", "--wait=false")
        self.serve_all("gpt-later", 404, 10)

    def test_04c_younger_claim_from_another_namespace_is_conflicted(self):
        """Regression: routes of every namespace competed on specificity, so a tenant could
        outrank the platform's route for a model and receive everyone's prompts."""
        kubectl("create", "namespace", "tenant")
        apply(("---\napiVersion: %s\nkind: LLMBackend\nmetadata: {name: thief, namespace: tenant}\n"
               "spec:\n  provider: vLLM\n  upstream: {baseURL: \"http://127.0.0.1:9/v1\"}\n"
               "---\napiVersion: %s\nkind: LLMRoute\nmetadata: {name: steal, namespace: tenant}\n"
               "spec:\n  match: {models: [gpt-e2e]}\n  backendRefs: [{name: thief}]\n") % (API, API))
        def conds():
            obj = json.loads(kubectl("-n", "tenant", "get", "llmroute", "steal", "-o", "json").stdout)
            c = {x["type"]: x for x in obj.get("status", {}).get("conditions", [])}
            return c if "Accepted" in c else None
        out = wait_for(conds, 10, "status on the conflicting route")
        self.assertEqual(out["Accepted"]["status"], "False")
        self.assertEqual(out["Accepted"]["reason"], "Conflicted")
        self.assertIn("default/chat", out["Accepted"]["message"])
        self.serve_all("gpt-e2e")  # still the platform's backend (the mock), not the thief's
        kubectl("-n", "tenant", "delete", "llmroute", "steal")
        kubectl("-n", "tenant", "delete", "llmbackend", "thief")
        kubectl("delete", "namespace", "tenant", "--wait=false")

        def quiet():  # status writes settle before the next test counts them
            key = 'knoway_controller_status_writes_total{result="written"}'
            a = self.ctl.metrics()[key]
            time.sleep(1.0)
            return self.ctl.metrics()[key] == a
        wait_for(quiet, 15, "status writes settled")

    def test_04d_consumer_keys_work_and_are_revoked_within_1s(self):
        apply("---\napiVersion: v1\nkind: Secret\nmetadata: {name: consumer-keys, namespace: "
              "default, labels: {llm.knoway.dev/secret: \"true\"}}\n"
              "stringData: {k: sk-consumer-e2e-0123456789abcdef}\n"
              "---\napiVersion: %s\nkind: LLMConsumer\nmetadata: {name: e2e-user, namespace: "
              "default}\nspec:\n  apiKeys: [{secretRef: {name: consumer-keys}}]\n"
              "  attributes: {team: e2e}\n" % API)

        def with_key(dp, key):
            return post(dp.port, "/v1/chat/completions",
                        {"model": "gpt-e2e", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": "Bearer " + key})[0]
        # with a consumer in the snapshot a key that matches none is refused
        wait_for(lambda: all(with_key(dp, "sk-wrong") == 401 for dp in self.dps), 5,
                 "consumers programmed on every data plane")
        self.assertTrue(all(with_key(dp, "sk-consumer-e2e-0123456789abcdef") == 200 for dp in self.dps))
        conds = wait_for(lambda: (lambda c: c if c.get("Programmed", {}).get("status") == "True" else None)(
            conditions("llmconsumer", "e2e-user")[0]), 10, "consumer Programmed=True")
        self.assertEqual(conds["ResolvedRefs"]["status"], "True")
        # the key itself never reached a data plane: its cache holds the digest only
        for i in range(2):
            with open(os.path.join(DIR, "dp%d-snapshot.json" % i)) as f:
                self.assertNotIn("sk-consumer-e2e-0123456789abcdef", f.read())
        # revocation: deleting the Secret refuses the key everywhere within a second
        kubectl("delete", "secret", "consumer-keys")
        t0 = time.time()
        for dp in self.dps:
            wait_for(lambda: with_key(dp, "sk-consumer-e2e-0123456789abcdef") == 401, 5, "key revoked")
        took = time.time() - t0
        self.assertLess(took, 1.0, "revocation after kubectl delete returned")
        print("\n    key revocation after kubectl delete returned: %.3f s" % took)
        conds = wait_for(lambda: (lambda c: c if c.get("ResolvedRefs", {}).get("status") == "False" else None)(
            conditions("llmconsumer", "e2e-user")[0]), 10, "consumer ResolvedRefs=False")
        kubectl("delete", "llmconsumer", "e2e-user")
        wait_for(lambda: all(with_key(dp, "sk-wrong") == 200 for dp in self.dps), 5,
                 "no consumer left: keys are not checked")

        def settled():  # the status writes this test caused are done
            key = 'knoway_controller_status_writes_total{result="written"}'
            a = self.ctl.metrics()[key]
            time.sleep(0.7)
            return a == self.ctl.metrics()[key]
        wait_for(settled, 10, "status writes settled")

    def test_04e_consumer_usage_and_budget_in_status(self):
        apply("---\napiVersion: v1\nkind: Secret\nmetadata: {name: payer-keys, namespace: "
              "default, labels: {llm.knoway.dev/secret: \"true\"}}\n"
              "stringData: {k: sk-payer-e2e-0123456789abcdef}\n"
              "---\napiVersion: %s\nkind: LLMConsumer\nmetadata: {name: payer, namespace: "
              "default}\nspec:\n  apiKeys: [{secretRef: {name: payer-keys}}]\n"
              "  budget: {limit: \"5\", period: Day}\n"
              "  limits: [{name: rpm, scope: Global, requests: {limit: 3, window: 1h}}]\n" % API)

        def call(dp):
            return post(dp.port, "/v1/chat/completions",
                        {"model": "gpt-e2e", "messages": [{"role": "user", "content": "hi"}]},
                        headers={"Authorization": "Bearer sk-payer-e2e-0123456789abcdef"})[0]
        def models(dp, key):  # /v1/models answers before the limit phase: nothing counted
            return request("GET", dp.port, "/v1/models",
                           headers={"Authorization": "Bearer " + key})[0]

        def programmed(dp):  # keys are checked (a consumer exists) and payer's is known
            return models(dp, "sk-wrong") == 401 and models(dp, "sk-payer-e2e-0123456789abcdef") == 200
        wait_for(lambda: all(programmed(dp) for dp in self.dps), 5, "payer programmed")
        # a Global limit of 3 requests across both data planes
        codes = [call(self.dps[0]), call(self.dps[1]), call(self.dps[0]), call(self.dps[1])]
        self.assertEqual(codes, [200, 200, 200, 429], "the global limit holds across replicas")

        def usage():
            st = conditions("llmconsumer", "payer")[2].get("status", {})
            return st.get("usage") if st.get("usage", {}).get("requests") == 3 else None
        u = wait_for(usage, 10, "status.usage written by the leader")
        self.assertEqual(u["period"], time.strftime("%Y-%m-%d", time.gmtime()))
        self.assertGreater(u["inputTokens"], 0)
        self.assertGreater(u["outputTokens"], 0)
        self.assertIn(".", u["cost"])
        out = kubectl("get", "llmconsumers", "payer").stdout
        self.assertIn("SPEND", out.splitlines()[0])
        # unchanged counters are not written again
        key = 'knoway_controller_usage_writes_total{result="written"}'
        a = self.ctl.metrics()[key]
        time.sleep(2.5)
        self.assertEqual(self.ctl.metrics()[key], a)
        kubectl("delete", "llmconsumer", "payer")
        kubectl("delete", "secret", "payer-keys")

    def test_05_unauthorized_poll_is_refused(self):
        st, _, body = post(self.ctl.port, "/v1/discovery", {"node": {"id": "x"}, "version": ""},
                           headers={"Authorization": "Bearer wrong"})
        self.assertEqual(st, 401)
        st, _, _ = post(self.ctl.port, "/v1/discovery", {"node": {"id": "x"}, "version": ""})
        self.assertEqual(st, 401)
        self.assertNotIn("x", [n["id"] for n in self.ctl.nodes()["nodes"]])

    def test_06_status_written_only_when_changed(self):
        m0 = self.ctl.metrics()
        time.sleep(1.5)
        m1 = self.ctl.metrics()
        key = 'knoway_controller_status_writes_total{result="written"}'
        self.assertEqual(m0[key], m1[key], "status written although nothing changed")

    def test_07_controller_killed_data_planes_keep_serving_restart_same_version(self):
        cls = type(self)
        version = self.dps[0].version()
        applied = [dp.logs().count("configuration applied") for dp in self.dps]
        cls.ctl.stop(kill=True)
        for _ in range(20):
            for dp in self.dps:
                self.assertEqual(chat(dp.port, "gpt-e2e")[0], 200)
            time.sleep(0.05)
        # restarted on the same port: same inputs, same version, nothing pushed again
        cls.ctl = ControllerOnPorts("a", self.token, cls.ctl.port, cls.ctl.admin)
        m = wait_for(lambda: (lambda m: m if m[
            'knoway_controller_discovery_nodes{state="acked"}'] == 2 else None)(
            cls.ctl.metrics()), 40, "both data planes back on the restarted controller")
        self.assertEqual(m['knoway_snapshot_version_info{version="%s"}' % version], 1)
        self.assertEqual(m["knoway_controller_discovery_pushes_total"], 0)
        self.assertEqual([dp.logs().count("configuration applied") for dp in self.dps], applied)

    def test_08_data_plane_restarted_while_controller_down_serves_from_cache(self):
        cls = type(self)
        cls.ctl.stop(kill=True)
        old = self.dps[1]
        old.stop()
        cache = os.path.join(DIR, "dp1-snapshot.json")
        with open(cache) as f:
            self.assertEqual(json.load(f)["version"], self.dps[0].version())
        cls.dps[1] = dataplane(cls.ctl.port, self.token, "dp1", cache)
        self.assertEqual(chat(self.dps[1].port, "gpt-e2e")[0], 200)
        self.assertIn("cache file", self.dps[1].logs())
        cls.ctl = ControllerOnPorts("a", self.token, cls.ctl.port, cls.ctl.admin)
        wait_for(lambda: self.ctl.metrics()['knoway_controller_discovery_nodes{state="acked"}'] == 2,
                 40, "reconnected")

    def test_09_watch_expiry_relists_and_converges(self):
        before = self.ctl.metrics()
        subprocess.run(["bash", os.path.join(SRC, "hack", "kube-apiserver.sh"), "restart", DIR,
                        "compact"], check=True, timeout=300)
        apply(route("after-410", ["gpt-after-410"], ["mock"]))
        self.serve_all("gpt-after-410", timeout=60)
        m = self.ctl.metrics()
        expired = sum(v for k, v in m.items() if k.startswith("knoway_controller_informer_expired_total"))
        expired0 = sum(v for k, v in before.items() if k.startswith("knoway_controller_informer_expired_total"))
        lists = sum(v for k, v in m.items() if k.startswith("knoway_controller_informer_lists_total"))
        lists0 = sum(v for k, v in before.items() if k.startswith("knoway_controller_informer_lists_total"))
        self.assertGreater(expired, expired0, "no watch ended with 410 Gone")
        self.assertGreater(lists, lists0, "no relist after 410")
        kubectl("delete", "llmroute", "after-410")
        self.serve_all("gpt-after-410", 404)

    def test_10_two_replicas_one_leader_writes_status(self):
        cls = type(self)
        b = Controller("b", self.token)
        cls.extra.append(b)
        time.sleep(2.5)  # a retry period: b has looked at the Lease
        ma, mb = self.ctl.metrics(), b.metrics()
        self.assertEqual(ma["knoway_controller_leader"] + mb["knoway_controller_leader"], 1)
        leader, follower = (self.ctl, b) if ma["knoway_controller_leader"] == 1 else (b, self.ctl)
        w0 = follower.metrics()['knoway_controller_status_writes_total{result="written"}']
        l0 = leader.metrics()['knoway_controller_status_writes_total{result="written"}']
        apply(route("two", ["gpt-two"], ["mock"]))
        wait_for(lambda: conditions("llmroute", "two")[0].get("Programmed", {}).get("status") == "True",
                 10, "status of the new route")
        self.assertEqual(follower.metrics()['knoway_controller_status_writes_total{result="written"}'], w0)
        self.assertGreater(leader.metrics()['knoway_controller_status_writes_total{result="written"}'], l0)
        # both replicas serve the same version
        self.assertEqual(
            [k for k in leader.metrics() if k.startswith("knoway_snapshot_version_info")],
            [k for k in wait_for(lambda: (lambda m: m if [k for k in m if k.startswith(
                "knoway_snapshot_version_info")] == [k for k in leader.metrics() if k.startswith(
                    "knoway_snapshot_version_info")] else None)(follower.metrics()), 5, "same version")
             if k.startswith("knoway_snapshot_version_info")])
        lease = json.loads(kubectl("get", "lease", "knoway-controller", "-o", "json").stdout)
        self.assertEqual(lease["spec"]["holderIdentity"], leader.ident)
        self.assertEqual(lease["spec"]["leaseDurationSeconds"], 15)
        # the leader stops: it releases the Lease and the other one takes over
        transitions = lease["spec"].get("leaseTransitions", 0)
        leader.stop()
        wait_for(lambda: follower.metrics()["knoway_controller_leader"] == 1, 10, "takeover")
        lease = json.loads(kubectl("get", "lease", "knoway-controller", "-o", "json").stdout)
        self.assertEqual(lease["spec"]["holderIdentity"], follower.ident)
        self.assertEqual(lease["spec"]["leaseTransitions"], transitions + 1)
        if leader is self.ctl:  # keep a running controller as cls.ctl for the data planes
            cls.ctl = ControllerOnPorts("a", self.token, leader.port, leader.admin)
        kubectl("delete", "llmroute", "two")

    def test_11_nack_keeps_last_good_snapshot(self):
        # a snapshot whose content no longer matches its version, served by a test double
        good = post(self.ctl.port, "/v1/discovery?wait=0", {"node": {"id": "probe"}, "version": ""},
                    headers={"Authorization": "Bearer " + open(self.token).read().strip()})[2]
        doc = json.loads(good)
        doc["routes"][0]["spec"]["timeout"] = "1s"  # tampered: the version is stale
        bad = json.dumps(doc).encode()
        polls = []

        class Fake(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                polls.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                body = good if len(polls) == 1 else bad if len(polls) == 2 else b""
                self.send_response(200 if body else 304)
                self.send_header("X-Knoway-Version", doc["version"] if len(polls) == 2 else json.loads(good)["version"])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if not body:
                    time.sleep(0.2)

            def log_message(self, *a):
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Fake)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        cache = os.path.join(DIR, "nack-snapshot.json")
        dp = dataplane(srv.server_address[1], self.token, "nacker", cache)
        try:
            wait_for(lambda: len(polls) >= 3, 10, "third poll")
            self.assertEqual(polls[0]["version"], "")
            self.assertEqual(polls[1]["version"], json.loads(good)["version"])  # ACK
            self.assertIsNone(polls[1]["error"])
            self.assertEqual(polls[2]["version"], json.loads(good)["version"])  # NACK: old version
            self.assertIn("does not match the content", polls[2]["error"]["message"])
            self.assertEqual(chat(dp.port, "gpt-e2e")[0], 200)
            self.assertEqual(dp.version(), json.loads(good)["version"])
            with open(cache, "rb") as f:
                self.assertEqual(f.read(), good)
        finally:
            dp.stop()
            srv.shutdown()

    def test_11b_snapshots_travel_gzip_compressed_when_accepted(self):
        # the node of test_11's probe: a new node id would change the data-plane counts in
        # statuses (test_06 checks that nothing writes them while nothing changes)
        auth = {"Authorization": "Bearer " + open(self.token).read().strip()}
        poll = {"node": {"id": "probe"}, "version": ""}
        st, h, plain = post(self.ctl.port, "/v1/discovery?wait=0", poll, headers=auth)
        self.assertEqual(st, 200)
        self.assertNotIn("content-encoding", h)
        st, h, packed = post(self.ctl.port, "/v1/discovery?wait=0", poll,
                             headers=dict(auth, **{"Accept-Encoding": "gzip, deflate"}))
        self.assertEqual(st, 200)
        self.assertEqual(h["content-encoding"], "gzip")
        self.assertEqual(gzip.decompress(packed), plain)
        self.assertLess(len(packed), len(plain))
        st, h, _ = post(self.ctl.port, "/v1/discovery?wait=0", poll,
                        headers=dict(auth, **{"Accept-Encoding": "gzip;q=0"}))
        self.assertNotIn("content-encoding", h)

    def test_12_in_cluster_configuration(self):
        sa = os.path.join(DIR, "serviceaccount")
        os.makedirs(sa, exist_ok=True)
        shutil.copy(os.path.join(DIR, "certs", "apiserver.crt"), os.path.join(sa, "ca.crt"))
        with open(os.path.join(DIR, "token")) as f, open(os.path.join(sa, "token"), "w") as o:
            o.write(f.read())
        with open(os.path.join(sa, "namespace"), "w") as f:
            f.write("default")
        port = open(os.path.join(DIR, "kube-apiserver.port")).read().strip()
        c = Controller("incluster", self.token, leader_elect=False, kubeconfig=False,
                       env={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
                            "KNOWAY_SERVICEACCOUNT_DIR": sa})
        try:
            self.assertIn("in-cluster https://127.0.0.1:%s" % port, c.logs())
            va = [k for k in self.ctl.metrics() if k.startswith("knoway_snapshot_version_info")]
            wait_for(lambda: [k for k in c.metrics() if k.startswith("knoway_snapshot_version_info")] == va,
                     10, "same snapshot as the kubeconfig controller")
        finally:
            c.stop()

    def test_13_service_ref_resolves_endpoint_slices(self):
        mock_port = self.mock.port
        apply("---\napiVersion: v1\nkind: Service\nmetadata: {name: vllm, namespace: default}\n"
              "spec:\n  ports: [{name: http, port: 8000, targetPort: %d}]\n"
              "---\napiVersion: discovery.k8s.io/v1beta1\nkind: EndpointSlice\n"
              "metadata:\n  name: vllm-1\n  namespace: default\n"
              "  labels: {kubernetes.io/service-name: vllm}\n"
              "addressType: IPv4\nports: [{name: http, port: %d, protocol: TCP}]\n"
              "endpoints: [{addresses: [127.0.0.1], conditions: {ready: true}}]\n"
              % (mock_port, mock_port) +
              "---\napiVersion: %s\nkind: LLMBackend\nmetadata: {name: svc, namespace: default}\n"
              "spec:\n  provider: vLLM\n  upstream: {serviceRef: {name: vllm, port: 8000}}\n" % API +
              route("svc", ["gpt-svc"], ["svc"]))
        self.serve_all("gpt-svc")
        self.assertEqual(self.mock.requests()[-1]["path"], "/v1/chat/completions")
        # endpoints gone -> the backend is unresolved and the route leaves the snapshot
        kubectl("delete", "endpointslice", "vllm-1")
        self.serve_all("gpt-svc", 404)
        conds = wait_for(lambda: (lambda c: c if c.get("ResolvedRefs", {}).get("status") == "False"
                                  else None)(conditions("llmbackend", "svc")[0]), 10, "unresolved")
        self.assertIn('Service "default/vllm" has no EndpointSlices', conds["ResolvedRefs"]["message"])
        kubectl("delete", "llmroute", "svc")
        kubectl("delete", "llmbackend", "svc")

    def test_14_fifty_changes_under_load_zero_failures(self):
        stop = threading.Event()
        results = {"ok": 0, "fail": []}
        lock = threading.Lock()

        def load(dp):
            while not stop.is_set():
                try:
                    st, _, body = chat(dp.port, "gpt-e2e", timeout=10)
                except OSError as e:
                    st, body = 0, str(e).encode()
                with lock:
                    if st == 200:
                        results["ok"] += 1
                    else:
                        results["fail"].append((st, body[:200]))

        threads = [threading.Thread(target=load, args=(dp,)) for dp in self.dps for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(50):
                apply(route("chat", ["gpt-e2e", "gpt-load-%d" % i], ["mock"]))
            for dp in self.dps:
                wait_for(lambda: chat(dp.port, "gpt-load-49")[0] == 200, 5, "last change")
        finally:
            stop.set()
            for t in threads:
                t.join(20)
        print("\n    50 changes under load: %d requests, %d failed" % (results["ok"], len(results["fail"])))
        self.assertEqual(results["fail"], [])
        self.assertGreater(results["ok"], 100)


def idle_conn(port, src):
    s = socket.socket()
    s.bind((src, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def closed_by_peer(s):
    try:
        s.settimeout(0.01)
        return s.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


class Abuse(unittest.TestCase):
    def test_idle_connections_do_not_starve_discovery_or_probes(self):
        """Regression: 200 idle unauthenticated connections starved real polls and /healthz.
        One address holds at most 64 discovery connections, connections that send no poll
        are closed after 10 s, and /debug/* is served to --debug-from only."""
        token = os.path.join(DIR, "abuse-token")
        with open(token, "w") as f:
            f.write("abuse-token\n")
        ctl = Controller("abuse", token, leader_elect=False, extra=("--debug-from", "127.0.0.1/32"))
        idle = []
        try:
            for i in range(200):
                try:
                    idle.append(idle_conn(ctl.port, "127.0.0.%d" % (2 + i % 2)))
                except OSError:
                    pass
            time.sleep(0.5)
            refused = sum(1 for s in idle if closed_by_peer(s))
            self.assertGreaterEqual(refused, 200 - 2 * 64)
            t = time.time()
            st, _, _ = post(ctl.port, "/v1/discovery?wait=0", {"node": {"id": "real"}, "version": ""},
                            headers={"Authorization": "Bearer abuse-token"})
            self.assertEqual(st, 200)
            self.assertEqual(request("GET", ctl.admin, "/healthz")[0], 200)
            self.assertLess(time.time() - t, 2.0)
            self.assertEqual(request("GET", ctl.admin, "/debug/nodes")[0], 200)
            s = idle_conn(ctl.admin, "127.0.0.9")
            s.sendall(b"GET /debug/nodes HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            self.assertTrue(s.recv(100).startswith(b"HTTP/1.1 403"))
            s.close()
            # the idle ones are closed by the controller within its 10 s timeout
            wait_for(lambda: all(closed_by_peer(s) for s in idle), 15, "idle connections closed")
        finally:
            for s in idle:
                s.close()
            ctl.stop()


class ProbesUnderAFlood(unittest.TestCase):
    def test_1100_slow_connections_from_70_addresses(self):
        """Regression: 1,100 slow connections from 70 addresses filled the controller's admin
        listener (128 slots, 16 per address) and its probes went unanswered for the whole
        attack. It now closes the connection that waited longest for its headers."""
        token = os.path.join(DIR, "flood-token")
        with open(token, "w") as f:
            f.write("flood-token\n")
        ctl = Controller("flood", token, leader_elect=False)
        try:
            res, opened = harness.slow_flood(ctl.admin, 5.0, probe=lambda: (
                harness.timed_probe(ctl.admin, "/healthz"),
                harness.timed_probe(ctl.admin, "/readyz")))
            flat = [p for pair in res for p in pair]
            print("\n    %d probes, %d attack connections opened, slowest probe %.3f s"
                  % (len(flat), opened, max(p[1] for p in flat)))
            self.assertGreaterEqual(opened, 1100, "the attack filled the listener")
            self.assertEqual([p for p in flat if p[0] != 200 or p[1] >= 1.0], [],
                             "every probe answered 200 within 1 s")
        finally:
            ctl.stop()


class DiscoveryTLS(unittest.TestCase):
    def test_data_planes_verify_the_controller_certificate(self):
        """The chart serves discovery over TLS by default (the token and every referenced
        credential cross it): a data plane with the CA gets snapshots; one with another CA
        refuses the controller and never applies anything from it."""
        d = os.path.join(DIR, "disc-tls")
        os.makedirs(d, exist_ok=True)

        def ossl(*a):
            subprocess.run(["openssl", *a], cwd=d, check=True, capture_output=True)
        for ca in ("ca", "other"):
            ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                 "/CN=" + ca, "-keyout", ca + ".key", "-out", ca + ".crt")
        with open(os.path.join(d, "san.cnf"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "tls.key",
             "-out", "tls.csr")
        ossl("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.cnf", "-out", "tls.crt")
        token = os.path.join(d, "token")
        with open(token, "w") as f:
            f.write("tls-token\n")
        mock = Mock()
        apply(backend("tls-mock", mock.url()) + route("tls-route", ["gpt-tls"], ["tls-mock"]))
        ctl = Controller("tls", token, leader_elect=False,
                         extra=("--tls-cert-file", os.path.join(d, "tls.crt"),
                                "--tls-key-file", os.path.join(d, "tls.key")))
        dps = []
        try:
            def dp(ca, node, wait):
                spec = ("  discovery:\n    url: \"https://127.0.0.1:%d\"\n    tokenFile: %s\n"
                        "    nodeId: %s\n    cacheFile: %s\n    caFile: %s\n"
                        % (ctl.port, token, node, os.path.join(d, node + ".json"),
                           os.path.join(d, ca)))
                x = Dataplane("", workers=1, extra_spec=spec, wait=wait)
                dps.append(x)
                return x
            good = dp("ca.crt", "tls-good", True)
            wait_for(lambda: chat(good.port, "gpt-tls")[0] == 200, 10, "gpt-tls over TLS discovery")
            bad = dp("other.crt", "tls-bad", False)
            wait_port(bad.admin)
            time.sleep(2.0)
            self.assertEqual(request("GET", bad.admin, "/readyz")[0], 503)
            self.assertIn("certificate", bad.logs().lower())
            self.assertNotIn("tls-bad", [n["id"] for n in ctl.nodes()["nodes"]])
        finally:
            for x in dps:
                x.stop()
            ctl.stop()
            mock.stop()
            kubectl("delete", "llmroute", "tls-route")
            kubectl("delete", "llmbackend", "tls-mock")


class NodeChurn(unittest.TestCase):
    def test_node_ids_of_departed_pods_are_forgotten(self):
        """Regression: the node table never forgot a node, so after 10,000 distinct node ids
        (ordinary pod churn) every new data plane got 400 until a restart. Nodes that stop
        polling are evicted after --node-grace; a full table of live nodes answers 503."""
        token = os.path.join(DIR, "churn-token")
        with open(token, "w") as f:
            f.write("churn-token\n")
        grace = 15  # longer than the 10,000 polls take, even under ASan
        ctl = Controller("churn", token, leader_elect=False, extra=("--node-grace", str(grace)))
        try:
            conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=10)
            hdr = {"Authorization": "Bearer churn-token", "Content-Type": "application/json"}

            def poll(node):
                nonlocal conn
                conn.request("POST", "/v1/discovery?wait=0",
                             json.dumps({"node": {"id": node}, "version": ""}), hdr)
                r = conn.getresponse()
                r.read()
                return r.status

            t0 = time.time()
            statuses = [poll("pod-%d" % i) for i in range(10000)]
            took = time.time() - t0
            print("\n    10,000 node ids polled in %.1f s" % took)
            self.assertLess(took, grace)
            self.assertEqual(set(statuses), {200})
            self.assertEqual(poll("pod-new"), 503)  # the table is full of live nodes
            time.sleep(grace + 1.5)  # every one of them stopped polling: past the grace period
            conn.close()  # idle longer than the controller keeps a connection between polls
            conn = http.client.HTTPConnection("127.0.0.1", ctl.port, timeout=10)
            self.assertEqual(poll("pod-new"), 200)
            nodes = ctl.nodes()["nodes"]
            self.assertEqual([n["id"] for n in nodes], ["pod-new"])
            self.assertGreaterEqual(ctl.metrics()["knoway_controller_discovery_nodes_evicted_total"],
                                    10000)
            conn.close()
        finally:
            ctl.stop()


class Prometheus:
    """The distribution's prometheus, scraping the given admin ports every second."""

    def __init__(self, targets):
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="kw-prom-", dir=DIR)
        cfg = os.path.join(self.dir, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write("global: {scrape_interval: 1s, evaluation_interval: 1s}\nscrape_configs:\n")
            for job, port in targets.items():
                f.write("  - job_name: %s\n    static_configs: [{targets: ['127.0.0.1:%d']}]\n"
                        % (job, port))
        self.log = open(os.path.join(self.dir, "prometheus.log"), "w")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file", cfg, "--storage.tsdb.path", os.path.join(self.dir, "data"),
             "--web.listen-address", "127.0.0.1:%d" % self.port], stdout=self.log,
            stderr=subprocess.STDOUT)
        wait_port(self.port, 30)
        wait_for(self.ready, 60, "prometheus ready")  # the port opens before the TSDB

    def ready(self):
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port, timeout=5) as r:
                return r.status == 200
        except (OSError, urllib.error.HTTPError):
            return False

    def query(self, expr):
        url = "http://127.0.0.1:%d/api/v1/query?%s" % (
            self.port, urllib.parse.urlencode({"query": expr}))
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def dashboard_queries():
    """Every query of the chart's Grafana dashboard, as Prometheus gets it from Grafana with
    the variables at "All"."""
    with open(os.path.join(SRC, "charts", "knoway", "dashboards", "knoway.json")) as f:
        dash = json.load(f)
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            e = t["expr"].replace("$__rate_interval", "1m").replace("$model", ".*")
            out.append((p["title"], e.replace("$consumer", ".*")))
    return out


class Observability(unittest.TestCase):
    """A real Prometheus scrapes a controller and a data plane under traffic: the numbers
    it holds match what the mock produced, and every query of the chart's dashboard returns
    data. The controller and the data plane export spans to an OTLP receiver built on
    OpenTelemetry JS's protobuf definitions. (KW_KEEP_PROMETHEUS=1 leaves Prometheus
    running at the end, with its address printed: docs/observability.md.)"""

    def test_prometheus_dashboard_and_spans(self):
        ns = "obs"
        kubectl("create", "namespace", ns, check=False)
        token = os.path.join(DIR, "obs-token")
        with open(token, "w") as f:
            f.write("obs-discovery-token\n")
        mock = Mock()
        self.addCleanup(mock.stop)
        collector = harness.Collector()
        self.addCleanup(collector.stop)
        apply("---\napiVersion: v1\nkind: Secret\nmetadata: {name: obs-keys, namespace: obs, "
              "labels: {llm.knoway.dev/secret: \"true\"}}\nstringData: {a: sk-obs-a-0123456789abcdef, b: sk-obs-b-0123456789abcdef}\n"
              "---\napiVersion: %s\nkind: LLMConsumer\nmetadata: {name: team-a, namespace: obs}\n"
              "spec:\n  apiKeys: [{secretRef: {name: obs-keys, key: a}}]\n"
              "---\napiVersion: %s\nkind: LLMConsumer\nmetadata: {name: team-b, namespace: obs}\n"
              "spec:\n  apiKeys: [{secretRef: {name: obs-keys, key: b}}]\n"
              "  limits: [{name: one, key: Consumer, requests: {limit: 1, window: 1h}}]\n"
              "---\napiVersion: %s\nkind: LLMBackend\nmetadata: {name: priced, namespace: obs}\n"
              "spec:\n  provider: vLLM\n  upstream: {baseURL: \"%s\"}\n"
              "  pricing: {inputPerMillion: \"1\", outputPerMillion: \"2\"}\n"
              "---\napiVersion: %s\nkind: LLMRoute\nmetadata: {name: obs-chat, namespace: obs}\n"
              "spec:\n  match: {models: [obs-model]}\n  backendRefs: [{name: priced}]\n"
              % (API, API, API, mock.url(), API))
        ctl = Controller("obs", token, leader_elect=False,
                         extra=("--namespace", ns, "--otlp-endpoint", collector.url(),
                                "--otlp-protocol", "protobuf"))
        spec = ("  discovery: {url: \"http://127.0.0.1:%d\", tokenFile: %s, nodeId: obs-dp}\n"
                "  telemetry: {otlp: {endpoint: \"%s\"}}\n" % (ctl.port, token, collector.url()))
        dp = Dataplane("", workers=1, extra_spec=spec)
        prom = None
        try:
            key = {"Authorization": "Bearer sk-obs-a-0123456789abcdef"}
            body = {"model": "obs-model", "messages": [{"role": "user", "content": "hi there"}]}
            first = wait_for(lambda: (lambda r: r if r[0] == 200 else None)(
                post(dp.port, "/v1/chat/completions", body, key)), 10, "the route served")
            prom = Prometheus({"knoway-dataplane": dp.admin, "knoway-controller": ctl.admin})
            wait_for(lambda: len(prom.query("up == 1")) == 2, 20, "both targets scraped")
            usage = json.loads(first[2])["usage"]
            want = {"input": usage["prompt_tokens"], "output": usage["completion_tokens"]}
            for i in range(30):
                stream = i % 3 != 0
                r = post(dp.port, "/v1/chat/completions",
                         dict(body, stream=True, stream_options={"include_usage": True})
                         if stream else body, key)
                self.assertEqual(r[0], 200)
                if stream:
                    usage = [json.loads(d) for d in harness.sse_data(r[2]) if d != "[DONE]"][-1]["usage"]
                else:
                    usage = json.loads(r[2])["usage"]
                want["input"] += usage["prompt_tokens"]
                want["output"] += usage["completion_tokens"]
                time.sleep(0.1)  # over a few scrapes: rates see it grow
            b = {"Authorization": "Bearer sk-obs-b-0123456789abcdef"}
            self.assertEqual(post(dp.port, "/v1/chat/completions", body, b)[0], 200)
            self.assertEqual(post(dp.port, "/v1/chat/completions", body, b)[0], 429)
            for port in (dp.admin, ctl.admin):  # the exposition format, under load
                text = request("GET", port, "/metrics")[2]
                p = subprocess.run(["promtool", "check", "metrics"], input=text,
                                   capture_output=True)
                self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
            # Prometheus has scraped the last of it
            wait_for(lambda: prom.query('sum(knoway_requests_total{code="200"})') and
                     float(prom.query('sum(knoway_requests_total{code="200"})')[0]["value"][1]) == 32,
                     20, "the scrape after the traffic")
            time.sleep(1.5)  # and one more
            rate = float(prom.query("sum(rate(knoway_requests_total[1m]))")[0]["value"][1])
            self.assertGreater(rate, 0)
            ttft = prom.query("histogram_quantile(0.5, sum by (le, gen_ai_request_model) "
                              "(rate(gen_ai_server_time_to_first_token_seconds_bucket[1m])))")
            self.assertEqual([s["metric"]["gen_ai_request_model"] for s in ttft], ["obs-model"])
            self.assertGreater(float(ttft[0]["value"][1]), 0)
            tokens = {s["metric"]["gen_ai_token_type"]: float(s["value"][1]) for s in prom.query(
                'sum by (gen_ai_token_type) (gen_ai_client_token_usage_sum{knoway_consumer="obs/team-a"})')}
            self.assertEqual(tokens, {"input": want["input"], "output": want["output"]})
            spend = float(prom.query('sum(knoway_cost_nano_usd_total{knoway_consumer="obs/team-a"})')[0]["value"][1])
            self.assertEqual(spend, want["input"] * 1000 + want["output"] * 2000)  # nano-USD
            nodes = {s["metric"]["state"]: float(s["value"][1])
                     for s in prom.query("knoway_controller_discovery_nodes")}
            self.assertEqual(nodes, {"acked": 1, "nacked": 0, "stale": 0})
            acks = prom.query('knoway_controller_push_ack_duration_seconds_count{result="ack"}')
            self.assertGreaterEqual(float(acks[0]["value"][1]), 1)
            empty = [(t, e) for t, e in dashboard_queries() if not prom.query(e)]
            self.assertEqual(empty, [], "dashboard queries without data")
            # spans: the build's trace holds the push to this data plane
            deadline = time.time() + 10
            while time.time() < deadline:
                spans = collector.spans
                builds = [s for s in spans if s["name"] == "snapshot build"]
                pushes = [s for s in spans if s["name"] == "snapshot push"]
                if builds and pushes and any(s["name"].startswith("chat ") for s in spans):
                    break
                time.sleep(0.1)
            by_id = {s["spanId"]: s for s in builds}
            push = pushes[-1]
            self.assertIn(push["parentSpanId"], by_id)
            self.assertEqual(push["traceId"], by_id[push["parentSpanId"]]["traceId"])
            a = {x["key"]: list(x["value"].values())[0] for x in push["attributes"]}
            self.assertEqual(a["knoway.node.id"], "obs-dp")
            self.assertEqual(a["knoway.push.result"], "ack")
            self.assertEqual(push["resource"]["attributes"][0]["value"]["stringValue"],
                             "knoway-controller")
            self.assertEqual({s["encoding"] for s in builds + pushes}, {"protobuf"})
            self.assertTrue(any(s["name"] == "chat obs-model" and s["encoding"] == "json"
                                for s in spans))
            if os.environ.get("KW_KEEP_PROMETHEUS"):
                print("\n    Prometheus kept at http://127.0.0.1:%d (data in %s)"
                      % (prom.port, prom.dir))
                prom = None
        finally:
            if prom is not None:
                prom.stop()
            dp.stop()
            ctl.stop()
            kubectl("delete", "namespace", ns, "--wait=false", check=False)


class ControllerOnPorts(Controller):
    """A controller restarted on the ports its predecessor had (data planes keep their URL)."""

    def __init__(self, ident, token_file, port, admin):
        self.port, self.admin, self.ident = port, admin, ident
        self.log = open(os.path.join(DIR, "controller-%s.log" % ident), "a+")
        args = [CONTROLLER, "--listen", "127.0.0.1:%d" % port, "--admin", "127.0.0.1:%d" % admin,
                "--token-file", token_file, "--id", ident, "--lease-namespace", "default",
                "--kubeconfig", os.path.join(DIR, "kubeconfig"), "--leader-elect"]
        deadline = time.time() + 10
        while True:  # the old process's sockets may linger a moment
            self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, env=ENV)
            try:
                wait_for(lambda: self.ready() or self.proc.poll() is not None, 20, "ready")
            except AssertionError:
                pass
            if self.proc.poll() is None or time.time() > deadline:
                break
            time.sleep(0.2)
        wait_for(lambda: self.ready(), 20, "controller %s ready" % ident)


if __name__ == "__main__":
    unittest.main()
