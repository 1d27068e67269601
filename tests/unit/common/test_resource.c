/* Every class of bad input: the exact message and its location. */
#include <stdlib.h>
#include <string.h>

#include "knoway/config.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "testutil.h"

#define HDR_B     "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata:\n  name: b\nspec:\n"
#define HDR_R     "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata:\n  name: r\nspec:\n"
#define BACKEND_B "---\n" HDR_B "  provider: vLLM\n  upstream:\n    baseURL: http://x:8000/v1\n"

static void test_valid_backend(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e = kwt_errors(HDR_B "  provider: OpenAI\n  modelName: gpt-4o\n"
                               "  upstream:\n    timeout: 90s\n    headers:\n"
                               "      - {name: X-Org, value: acme}\n"
                               "  credentials:\n    secretRef: {name: openai}\n"
                               "  params:\n    defaults: {temperature: 0.2}\n"
                               "    overrides: {user: gw}\n    remove: [logprobs]\n"
                               "---\napiVersion: v1\nkind: Secret\nmetadata: {name: openai, "
                               "namespace: default}\ndata:\n  apiKey: c2stdGVzdA==\n",
                         &cfg);
    assert_string_equal(e, "");
    free(e);
    assert_int_equal(cfg->nbackends, 1);
    const struct kw_backend *b = cfg->backends[0];
    assert_true(b->valid);
    assert_int_equal(b->provider, KW_PROVIDER_OPENAI);
    assert_string_equal(b->model_name, "gpt-4o");
    assert_string_equal(b->upstream.base_url, "https://api.openai.com/v1"); /* default */
    assert_int_equal(b->upstream.timeout_ms, 90000);
    assert_int_equal(b->upstream.connect_timeout_ms, 10000);
    assert_string_equal(b->upstream.headers[0].name, "X-Org");
    assert_string_equal(b->credentials.secret_ref.key, "apiKey"); /* default key */
    assert_int_equal(b->params.nremove, 1);
    assert_string_equal(kw_node_get(b->params.defaults, "temperature")->str, "0.2");
    const struct kw_secret *s = cfg->secrets[0];
    assert_string_equal(kw_secret_get(s, "apiKey")->value, "sk-test");
    kw_config_free(cfg);
}

static void test_unknown_field_hint(void **state)
{
    (void)state;
    kwt_assert_errors(HDR_B "  provider: vLLM\n  modleName: m\n  upstream: {baseURL: http://x}\n",
                      "t.yaml:7:3: LLMBackend/default/b: spec.modleName: unknown field "
                      "\"modleName\" (did you mean \"modelName\"?)\n");
    kwt_assert_errors(
        HDR_B "  provider: vLLM\n  upstream: {baseURL: http://x, zzz: 1}\n",
        "t.yaml:7:33: LLMBackend/default/b: spec.upstream.zzz: unknown field \"zzz\"\n");
    /* a field of a later wave is rejected like any unknown field */
    kwt_assert_errors(HDR_B "  provider: vLLM\n  upstream: {baseURL: http://x}\n"
                            "  cache: {ttl: 5m}\n",
                      "t.yaml:8:3: LLMBackend/default/b: spec.cache: unknown field "
                      "\"cache\"\n");
}

static void test_wrong_type(void **state)
{
    (void)state;
    kwt_assert_errors(HDR_B "  provider: vLLM\n  modelName: 42\n  upstream: {baseURL: http://x}\n",
                      "t.yaml:7:14: LLMBackend/default/b: spec.modelName: must be a string, not an "
                      "integer\n");
    kwt_assert_errors(BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs:\n"
                                "    - {name: b, weight: \"3\"}\n",
                      "t.yaml:18:25: LLMRoute/default/r: spec.backendRefs[0].weight: must be an "
                      "integer, not a string\n");
}

static void test_required(void **state)
{
    (void)state;
    kwt_assert_errors(
        HDR_B "  modelName: m\n  upstream: {baseURL: http://x}\n",
        "t.yaml:6:3: LLMBackend/default/b: spec.provider: required field is missing\n");
    kwt_assert_errors("apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {}\n"
                      "spec: {match: {models: [a]}}\n",
                      "t.yaml:3:11: LLMRoute/default/(unnamed): metadata.name: required field is "
                      "missing\n"
                      "t.yaml:4:7: LLMRoute/default/(unnamed): spec.backendRefs: required field is "
                      "missing\n");
    kwt_assert_errors(BACKEND_B "---\n" HDR_R "  match: {models: []}\n  backendRefs: [{name: b}]\n",
                      "t.yaml:16:19: LLMRoute/default/r: spec.match.models: must have at least "
                      "one item\n");
}

static void test_enum(void **state)
{
    (void)state;
    kwt_assert_errors(HDR_B "  provider: openai\n  upstream: {baseURL: http://x}\n",
                      "t.yaml:6:13: LLMBackend/default/b: spec.provider: unknown value \"openai\" "
                      "(did you mean \"OpenAI\"?); one of: OpenAI, AzureOpenAI, Anthropic, "
                      "AWSBedrock, Gemini, VertexAI, Cohere, Mistral, vLLM, KServe, Ollama\n");
    /* providers without a translation are refused at parse: nothing answers 501 later */
    kwt_assert_errors(HDR_B "  provider: Cohere\n  upstream: {baseURL: http://x}\n",
                      "t.yaml:6:13: LLMBackend/default/b: spec.provider: Cohere is not supported "
                      "by this version (its API is not translated yet); supported: OpenAI, "
                      "AzureOpenAI, Anthropic, AWSBedrock, Gemini, VertexAI, Mistral, vLLM, "
                      "KServe, Ollama\n");
}

static void test_ranges(void **state)
{
    (void)state;
    kwt_assert_errors(BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs:\n"
                                "    - {name: b, weight: 1001, priority: -1}\n",
                      "t.yaml:18:25: LLMRoute/default/r: spec.backendRefs[0].weight: must be "
                      "0..1000, got 1001\n"
                      "t.yaml:18:41: LLMRoute/default/r: spec.backendRefs[0].priority: must be "
                      "0..100, got -1\n");
    kwt_assert_errors(BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs:\n"
                                "    - {name: b, weight: 0}\n",
                      "t.yaml:18:5: LLMRoute/default/r: spec.backendRefs: every weight is 0: no "
                      "backend would receive traffic\n");
    kwt_assert_errors("apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: dp}\n"
                      "spec:\n  listen: \"0.0.0.0:99999\"\n  workers: 1000\n"
                      "  limits: {maxBodyBytes: 10}\n",
                      "t.yaml:5:11: DataPlane/dp: spec.listen: \"0.0.0.0:99999\" has a port "
                      "outside 1..65535\n"
                      "t.yaml:6:12: DataPlane/dp: spec.workers: must be 0..256, got 1000\n"
                      "t.yaml:7:26: DataPlane/dp: spec.limits.maxBodyBytes: must be "
                      "1024..1073741824, got 10\n");
}

static void test_durations(void **state)
{
    (void)state;
    kwt_assert_errors(BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs: [{name: b}]\n"
                                "  timeout: 30\n  streamIdleTimeout: 10ms\n",
                      "t.yaml:18:12: LLMRoute/default/r: spec.timeout: must be a duration string "
                      "like \"30s\", not an integer\n"
                      "t.yaml:19:22: LLMRoute/default/r: spec.streamIdleTimeout: must be between "
                      "1s and 24h\n");
    kwt_assert_errors(HDR_B "  provider: vLLM\n  upstream: {baseURL: http://x, timeout: 5 min}\n",
                      "t.yaml:7:42: LLMBackend/default/b: spec.upstream.timeout: invalid duration "
                      "\"5 min\" (use a number and a unit: 250ms, 30s, 5m, 1h)\n");
}

static void test_upstream_rules(void **state)
{
    (void)state;
    kwt_assert_errors(HDR_B "  provider: vLLM\n  upstream:\n    baseURL: http://x\n"
                            "    endpoints: [{url: http://y}]\n",
                      "t.yaml:8:5: LLMBackend/default/b: spec.upstream: set exactly one of "
                      "baseURL, serviceRef and endpoints\n");
    kwt_assert_errors(HDR_B "  provider: vLLM\n",
                      "t.yaml:6:3: LLMBackend/default/b: spec.upstream: provider vLLM has no "
                      "public endpoint: set baseURL, serviceRef or endpoints\n");
    kwt_assert_errors(HDR_B "  provider: vLLM\n  upstream: {baseURL: \"http://x:0/v1?a=b\"}\n",
                      "t.yaml:7:23: LLMBackend/default/b: spec.upstream.baseURL: "
                      "\"http://x:0/v1?a=b\" must not have a query or fragment\n");
    kwt_assert_errors(HDR_B
                      "  provider: vLLM\n  upstream:\n    baseURL: http://x\n    headers:\n"
                      "      - {name: Host, value: y}\n      - {name: \"bad name\", value: y}\n",
                      "t.yaml:10:16: LLMBackend/default/b: spec.upstream.headers[0].name: \"Host\" "
                      "is managed by the gateway and cannot be set\n"
                      "t.yaml:11:16: LLMBackend/default/b: spec.upstream.headers[1].name: \"bad "
                      "name\" is not a valid header name\n");
}

static void test_provider_specific(void **state)
{
    (void)state;
    kwt_assert_errors(HDR_B "  provider: vLLM\n  upstream: {baseURL: http://x}\n"
                            "  credentials:\n    azure: {apiVersion: v}\n",
                      "t.yaml:9:12: LLMBackend/default/b: spec.credentials.azure: only for "
                      "provider AzureOpenAI\n");
    kwt_assert_errors(HDR_B "  provider: AWSBedrock\n  credentials:\n    secretRef: {name: aws}\n"
                            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: aws}\n"
                            "stringData: {AWS_ACCESS_KEY_ID: a, AWS_SECRET_ACCESS_KEY: b}\n",
                      "t.yaml:8:5: LLMBackend/default/b: spec.credentials.bedrock: required for "
                      "provider AWSBedrock (region and key names)\n");
    kwt_assert_errors(HDR_B "  provider: vLLM\n  upstream: {baseURL: http://x}\n"
                            "  params:\n    overrides: {model: x}\n    remove: [stream]\n",
                      "t.yaml:9:17: LLMBackend/default/b: spec.params.overrides.model: \"model\" "
                      "is set by the gateway (use spec.modelName)\n"
                      "t.yaml:10:14: LLMBackend/default/b: spec.params.remove[0]: \"stream\" is "
                      "set by the gateway and cannot be removed\n");
}

static void test_bedrock_defaults(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e = kwt_errors(HDR_B "  provider: AWSBedrock\n  modelName: anthropic.claude-3\n"
                               "  credentials:\n    secretRef: {name: aws}\n"
                               "    bedrock: {region: eu-west-1}\n"
                               "---\napiVersion: v1\nkind: Secret\nmetadata: {name: aws}\n"
                               "stringData: {AWS_ACCESS_KEY_ID: a, AWS_SECRET_ACCESS_KEY: b}\n",
                         &cfg);
    assert_string_equal(e, "");
    free(e);
    const struct kw_backend *b = cfg->backends[0];
    assert_string_equal(b->upstream.base_url, "https://bedrock-runtime.eu-west-1.amazonaws.com");
    assert_string_equal(b->credentials.bedrock.access_key_id_key, "AWS_ACCESS_KEY_ID");
    kw_config_free(cfg);
}

static void test_vertex(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e;
    e = kwt_errors(HDR_B "  provider: VertexAI\n  credentials:\n    secretRef: {name: sa}\n"
                         "    vertex: {project: p, region: europe-west4}\n"
                         "---\napiVersion: v1\nkind: Secret\nmetadata: {name: sa}\n"
                         "stringData: {credentials.json: tok}\n",
                   &cfg);
    assert_string_equal(e, "");
    free(e);
    const struct kw_backend *b = cfg->backends[0];
    assert_string_equal(b->upstream.base_url, "https://europe-west4-aiplatform.googleapis.com");
    assert_string_equal(b->credentials.secret_ref.key, "credentials.json");
    assert_string_equal(b->credentials.vertex.project, "p");
    kw_config_free(cfg);
    e = kwt_errors(HDR_B "  provider: VertexAI\n  credentials:\n    secretRef: {name: sa, key: t}\n"
                         "    vertex: {project: p, region: global}\n"
                         "---\napiVersion: v1\nkind: Secret\nmetadata: {name: sa}\n"
                         "stringData: {t: tok}\n",
                   &cfg);
    assert_string_equal(e, "");
    free(e);
    assert_string_equal(cfg->backends[0]->upstream.base_url, "https://aiplatform.googleapis.com");
    kw_config_free(cfg);
    kwt_assert_errors(HDR_B "  provider: VertexAI\n  credentials:\n    secretRef: {name: sa}\n",
                      "t.yaml:8:5: LLMBackend/default/b: spec.credentials.vertex: required for "
                      "provider VertexAI (project and region)\n"
                      "t.yaml:8:23: LLMBackend/default/b: spec.credentials.secretRef.name: "
                      "Secret \"default/sa\" not found\n");
    kwt_assert_errors(HDR_B "  provider: VertexAI\n  upstream: {baseURL: http://x}\n"
                            "  credentials:\n    vertex: {project: My_Proj, region: us-central1}\n",
                      "t.yaml:9:23: LLMBackend/default/b: spec.credentials.vertex.project: "
                      "\"My_Proj\" is not a Google Cloud project ID\n"
                      "t.yaml:9:5: LLMBackend/default/b: spec.credentials.secretRef: required "
                      "field is missing (a Secret holding a service-account key or an access "
                      "token)\n");
    kwt_assert_errors(HDR_B "  provider: Gemini\n  upstream: {baseURL: http://x}\n"
                            "  credentials:\n    vertex: {project: p, region: r}\n",
                      "t.yaml:9:13: LLMBackend/default/b: spec.credentials.vertex: only for "
                      "provider VertexAI\n");
}

static void test_match(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e =
        kwt_errors(BACKEND_B "---\n" HDR_R "  match:\n    models: [gpt-4o, \"llama-3*\", \"*\"]\n"
                             "    headers: [{name: x-tenant, value: a}]\n"
                             "    paths: [/v1/chat/completions]\n"
                             "  backendRefs: [{name: b, modelOverride: m2}]\n",
                   &cfg);
    assert_string_equal(e, "");
    free(e);
    const struct kw_route *r = cfg->routes[0];
    assert_int_equal(r->nmodels, 3);
    assert_false(r->models[0].prefix);
    assert_true(r->models[1].prefix);
    assert_string_equal(r->models[1].value, "llama-3");
    assert_string_equal(r->models[2].value, "");
    assert_int_equal(r->timeout_ms, 300000);
    assert_int_equal(r->stream_idle_timeout_ms, 60000);
    assert_ptr_equal(r->refs[0].backend, cfg->backends[0]);
    kw_config_free(cfg);

    kwt_assert_errors(
        BACKEND_B "---\n" HDR_R "  match:\n    models: [a, a]\n"
                  "    paths: [/v1/chat/completion]\n"
                  "  backendRefs: [{name: b}, {name: b}]\n",
        "t.yaml:17:17: LLMRoute/default/r: spec.match.models[1]: \"a\" is listed "
        "twice\n"
        "t.yaml:18:13: LLMRoute/default/r: spec.match.paths[0]: must be one of "
        "/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages (did you "
        "mean "
        "\"/v1/chat/completions\"?)\n"
        "t.yaml:19:35: LLMRoute/default/r: spec.backendRefs[1].name: backend \"b\" "
        "is referenced twice\n");
}

static void test_duplicates_and_references(void **state)
{
    (void)state;
    kwt_assert_errors(BACKEND_B BACKEND_B,
                      "t.yaml:11:1: LLMBackend/default/b: metadata.name: duplicate LLMBackend "
                      "\"default/b\" (first defined at t.yaml:2:1)\n");
    kwt_assert_errors(HDR_R "  match: {models: [m]}\n  backendRefs: [{name: gone}]\n",
                      "t.yaml:7:24: LLMRoute/default/r: spec.backendRefs[0].name: LLMBackend "
                      "\"default/gone\" not found\n");
    kwt_assert_errors(HDR_B "  provider: OpenAI\n  credentials:\n    secretRef: {name: nope}\n",
                      "t.yaml:8:23: LLMBackend/default/b: spec.credentials.secretRef.name: Secret "
                      "\"default/nope\" not found\n");
    kwt_assert_errors(HDR_B "  provider: OpenAI\n  credentials:\n    secretRef: {name: s, key: k}\n"
                            "---\napiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
                            "stringData: {other: x}\n",
                      "t.yaml:8:23: LLMBackend/default/b: spec.credentials.secretRef.key: Secret "
                      "\"s\" has no key \"k\"\n");
    /* references do not cross namespaces */
    kwt_assert_errors(
        "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r, "
        "namespace: team-a}\nspec:\n  match: {models: [m]}\n  backendRefs: [{name: b}]\n" BACKEND_B,
        "t.yaml:6:24: LLMRoute/team-a/r: spec.backendRefs[0].name: LLMBackend "
        "\"team-a/b\" not found\n");
}

static void test_secret(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e = kwt_errors("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\ntype: Opaque\n"
                         "data: {a: aGVsbG8=, b: b2xk}\nstringData: {b: new}\n",
                         &cfg);
    assert_string_equal(e, "");
    free(e);
    assert_int_equal(cfg->secrets[0]->nitems, 2);
    assert_string_equal(kw_secret_get(cfg->secrets[0], "a")->value, "hello");
    assert_string_equal(kw_secret_get(cfg->secrets[0], "b")->value, "new"); /* stringData wins */
    kw_config_free(cfg);
    kwt_assert_errors("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
                      "data: {a: \"not base64!\", \"b/c\": eA==}\n",
                      "t.yaml:4:11: Secret/default/s: data.a: is not valid base64 (use stringData "
                      "for plain text)\n"
                      "t.yaml:4:26: Secret/default/s: data.b/c: invalid key (letters, digits, '-', "
                      "'_' and '.')\n");
}

static void test_secret_env(void **state)
{
    (void)state;
    struct kw_config *cfg;
    setenv("KWTEST_KEY", "sk-from-env", 1);
    unsetenv("KWTEST_UNSET");
    char *e = kwt_errors("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
                         "stringData: {a: \"${KWTEST_KEY}\", b: \"${KWTEST_UNSET:-}\", "
                         "c: \"${KWTEST_UNSET:-fallback}\", d: \"$KWTEST_KEY\"}\n",
                         &cfg);
    assert_string_equal(e, "");
    free(e);
    assert_string_equal(kw_secret_get(cfg->secrets[0], "a")->value, "sk-from-env");
    assert_string_equal(kw_secret_get(cfg->secrets[0], "b")->value, "");
    assert_string_equal(kw_secret_get(cfg->secrets[0], "c")->value, "fallback");
    assert_string_equal(kw_secret_get(cfg->secrets[0], "d")->value,
                        "$KWTEST_KEY"); /* not the form */
    kw_config_free(cfg);
    kwt_assert_errors("apiVersion: v1\nkind: Secret\nmetadata: {name: s}\n"
                      "stringData: {a: \"${KWTEST_UNSET}\", b: \"${1BAD}\"}\n",
                      "t.yaml:4:17: Secret/default/s: stringData.a: environment variable "
                      "KWTEST_UNSET is not set (write ${KWTEST_UNSET:-} to allow that)\n"
                      "t.yaml:4:39: Secret/default/s: stringData.b: \"${1BAD}\" is not ${NAME} "
                      "or ${NAME:-default}\n");
}

static void test_documents(void **state)
{
    (void)state;
    kwt_assert_errors("apiVersion: llm.knoway.dev/v1\nkind: LLMRoutes\n",
                      "t.yaml:2:7: kind: unknown kind \"LLMRoutes\" (did you mean \"LLMRoute\"?); "
                      "knoway reads LLMBackend, LLMRoute, Secret and DataPlane\n");
    kwt_assert_errors("apiVersion: llm.knoway.dev/v1\nkind: LLMBackend\nmetadata: {name: B_1}\n"
                      "spec: {provider: vLLM, upstream: {baseURL: http://x}}\n",
                      "t.yaml:1:13: LLMBackend/default/B_1: apiVersion: must be "
                      "\"llm.knoway.dev/v1alpha1\" for kind LLMBackend\n"
                      "t.yaml:3:18: LLMBackend/default/B_1: metadata.name: \"B_1\" is not a valid "
                      "name (lower-case letters, digits, '-' and '.', starting and ending with a "
                      "letter or digit)\n");
    kwt_assert_errors(
        "- a\n- b\n",
        "t.yaml:1:1: a document must be a map with apiVersion and kind, not a list\n");
    kwt_assert_errors(
        "apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: a}\n"
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: b}\n",
        "t.yaml:5:1: DataPlane: a second DataPlane document (the first is at line 1)\n");
    /* what kubectl get -o yaml adds is accepted */
    kwt_assert_errors(
        HDR_B "  provider: vLLM\n  upstream: {baseURL: http://x}\nstatus: {conditions: []}\n", "");
}

static void test_dataplane(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e =
        kwt_errors("apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: gw}\n"
                   "spec:\n  listen: \"[::1]:8081\"\n  workers: 2\n"
                   "  discovery: {url: \"http://ctl:18000\", tokenFile: /t}\n"
                   "  limits: {maxBodyBytes: 2048, maxConnections: 10}\n",
                   &cfg);
    assert_string_equal(e, "");
    free(e);
    assert_true(cfg->has_dataplane);
    assert_string_equal(cfg->dataplane.listen, "[::1]:8081");
    assert_string_equal(cfg->dataplane.admin, "127.0.0.1:9901");
    assert_string_equal(cfg->dataplane.discovery.url, "http://ctl:18000");
    assert_string_equal(cfg->dataplane.discovery.cache_file, "/var/lib/knoway/snapshot.json");
    assert_int_equal(cfg->dataplane.limits.max_body_bytes, 2048);
    assert_int_equal(cfg->dataplane.workers, 2);
    kw_config_free(cfg);

    kwt_assert_errors("apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: gw}\n"
                      "spec:\n  listen: \"::1:8080\"\n  discovery: {tokenFile: /t}\n",
                      "t.yaml:5:11: DataPlane/gw: spec.listen: \"::1:8080\" must put an IPv6 "
                      "address in brackets: [::1]:8080\n"
                      "t.yaml:6:14: DataPlane/gw: spec.discovery.url: required field is missing\n");
}

static void test_traffic(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e = kwt_errors(
        HDR_B
        "  provider: vLLM\n  upstream: {baseURL: http://x}\n"
        "  circuitBreaker: {consecutiveFailures: 3, ejectionTime: 2s}\n"
        "  limits: {requestsPerMinute: 600, tokensPerMinute: 90000, maxConcurrentRequests: 8}\n"
        "---\n" HDR_R "  match: {models: [m]}\n  backendRefs: [{name: b}]\n"
        "  loadBalancer: {strategy: Latency, clientOverride: true}\n"
        "  retry:\n    attempts: 4\n    retryOn: [429, timeout]\n"
        "    backoff: {base: 10ms, max: 1s}\n    perTryTimeout: 5s\n    budgetPercent: 50\n"
        "    midStream: Continue\n",
        &cfg);
    assert_string_equal(e, "");
    free(e);
    const struct kw_backend *b = cfg->backends[0];
    assert_int_equal(b->circuit_breaker.consecutive_failures, 3);
    assert_int_equal(b->circuit_breaker.ejection_time_ms, 2000);
    assert_int_equal(b->circuit_breaker.max_ejection_percent, 50); /* default */
    assert_int_equal(b->limits.requests_per_minute, 600);
    assert_int_equal(b->limits.tokens_per_minute, 90000);
    assert_int_equal(b->limits.max_concurrent_requests, 8);
    const struct kw_route *r = cfg->routes[0];
    assert_int_equal(r->load_balancer.strategy, KW_LB_LATENCY);
    assert_true(r->load_balancer.client_override);
    assert_int_equal(r->retry.attempts, 4);
    assert_int_equal(r->retry.retry_on, KW_RETRY_429 | KW_RETRY_TIMEOUT);
    assert_int_equal(r->retry.backoff_base_ms, 10);
    assert_int_equal(r->retry.backoff_max_ms, 1000);
    assert_int_equal(r->retry.per_try_timeout_ms, 5000);
    assert_int_equal(r->retry.budget_percent, 50);
    assert_int_equal(r->retry.mid_stream, KW_MID_STREAM_CONTINUE);
    kw_config_free(cfg);

    /* defaults: weighted random, each backend once on connect failures, resets and 5xx */
    e = kwt_errors(BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs: [{name: b}]\n",
                   &cfg);
    assert_string_equal(e, "");
    free(e);
    r = cfg->routes[0];
    assert_int_equal(r->load_balancer.strategy, KW_LB_WEIGHTED_RANDOM);
    assert_int_equal(r->retry.attempts, 0);
    assert_int_equal(r->retry.retry_on, KW_RETRY_CONNECT_FAILURE | KW_RETRY_RESET | KW_RETRY_5XX);
    assert_int_equal(cfg->backends[0]->circuit_breaker.consecutive_failures, 5); /* on */
    assert_int_equal(cfg->backends[0]->circuit_breaker.ejection_time_ms, 30000);
    kw_config_free(cfg);

    kwt_assert_errors(BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs: [{name: b}]\n"
                                "  loadBalancer: {strategy: Fastest}\n",
                      "t.yaml:18:28: LLMRoute/default/r: spec.loadBalancer.strategy: unknown value "
                      "\"Fastest\"; one of: WeightedRandom, RoundRobin, LeastRequest, Latency\n");
    kwt_assert_errors(
        BACKEND_B "---\n" HDR_R "  match: {models: [m]}\n  backendRefs: [{name: b}]\n"
                  "  retry: {retryOn: [4xx], attempts: 99, backoff: {base: 2s, max: 1s}}\n",
        "t.yaml:18:37: LLMRoute/default/r: spec.retry.attempts: must be 1..16, got 99\n"
        "t.yaml:18:21: LLMRoute/default/r: spec.retry.retryOn[0]: must be one of "
        "connect-failure, reset, timeout, 5xx, 429\n"
        "t.yaml:18:50: LLMRoute/default/r: spec.retry.backoff: max must not be below "
        "base\n");
    kwt_assert_errors(HDR_B
                      "  provider: vLLM\n  upstream: {baseURL: http://x}\n"
                      "  circuitBreaker: {consecutiveFailures: -1, maxEjectionPercent: 101}\n",
                      "t.yaml:8:41: LLMBackend/default/b: spec.circuitBreaker.consecutiveFailures: "
                      "must be 0..1000, got -1\n"
                      "t.yaml:8:65: LLMBackend/default/b: spec.circuitBreaker.maxEjectionPercent: "
                      "must be 1..100, got 101\n");
}

#define HDR_C                                                                                      \
    "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMConsumer\nmetadata:\n  name: c\nspec:\n"
#define KEYS                                                                                       \
    "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\nstringData: {a: "                  \
    "key-1-0123456789ab, b: key-2-0123456789ab}\n"

/* Keys shorter than KW_MIN_API_KEY_LEN are reported (never shown) and not accepted; the
 * consumer's other keys stay. */
static void test_short_api_keys_refused(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e = kwt_errors(HDR_C "  apiKeys:\n    - secretRef: {name: keys}\n"
                               "---\napiVersion: v1\nkind: Secret\nmetadata: {name: keys}\n"
                               "stringData: {a: x, b: key-2-0123456789ab}\n",
                         &cfg);
    assert_string_equal(e, "t.yaml:7:25: LLMConsumer/default/c: spec.apiKeys[0].secretRef: Secret "
                           "\"default/keys\" key \"a\" holds an API key of 1 characters: API keys "
                           "must have at least 16 (it is not accepted)\n");
    free(e);
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *snap = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &diag);
    assert_non_null(snap);
    assert_int_equal(snap->nconsumers, 1);
    assert_int_equal(snap->consumers[0]->nkey_hashes, 1);
    kw_snapshot_unref(snap);
    kw_diag_cleanup(&diag);
    kw_config_free(cfg);
}

static void test_consumer(void **state)
{
    (void)state;
    struct kw_config *cfg;
    char *e = kwt_errors(HDR_C "  apiKeys:\n    - secretRef: {name: keys}\n"
                               "    - secretRef: {name: keys, key: b}\n"
                               "  attributes: {team: search, costCenter: \"42\"}\n"
                               "  models: [gpt-4o, \"llama-*\"]\n" KEYS,
                         &cfg);
    assert_string_equal(e, "");
    free(e);
    assert_int_equal(cfg->nconsumers, 1);
    const struct kw_consumer *c = cfg->consumers[0];
    assert_true(c->valid);
    assert_int_equal(c->napi_keys, 2);
    assert_null(c->api_keys[0].key); /* every value of the Secret */
    assert_string_equal(c->api_keys[1].key, "b");
    assert_int_equal(c->nattributes, 2);
    assert_string_equal(c->attributes[0].name, "costCenter"); /* sorted */
    assert_string_equal(c->attributes[1].value, "search");
    assert_int_equal(c->nmodels, 2);
    assert_true(c->models[1].prefix);
    kw_config_free(cfg);
    /* references and shapes */
    kwt_assert_errors(HDR_C "  apiKeys:\n    - secretRef: {name: gone}\n"
                            "    - secretRef: {name: keys, key: z}\n" KEYS,
                      "t.yaml:7:25: LLMConsumer/default/c: spec.apiKeys[0].secretRef: Secret "
                      "\"default/gone\" not found\n"
                      "t.yaml:8:25: LLMConsumer/default/c: spec.apiKeys[1].secretRef: Secret "
                      "\"default/keys\" has no key \"z\"\n");
    kwt_assert_errors(HDR_C "  apiKeys: [{secretRef: {key: a}}, x]\n  attributes: {team: [1]}\n"
                            "  models: [\"a*b\"]\n  limitz: []\n",
                      "t.yaml:9:3: LLMConsumer/default/c: spec.limitz: unknown field "
                      "\"limitz\" (did you mean \"limits\"?)\n"
                      "t.yaml:6:25: LLMConsumer/default/c: spec.apiKeys[0].secretRef.name: "
                      "required field is missing\n"
                      "t.yaml:6:36: LLMConsumer/default/c: spec.apiKeys[1]: must be a map with "
                      "secretRef {name, key?}\n"
                      "t.yaml:7:22: LLMConsumer/default/c: spec.attributes.team: must be a "
                      "string of at most 256 printable bytes\n"
                      "t.yaml:8:12: LLMConsumer/default/c: spec.models[0]: \"*\" may only end a "
                      "prefix, as in \"llama-3*\"\n");
}

static void test_api_json(void **state)
{
    (void)state;
    /* As the API server returns it: extra metadata and status are ignored, errors carry the
     * object and the field path but no file position. */
    const char *ok =
        "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMBackend\","
        "\"metadata\":{\"name\":\"b\",\"namespace\":\"prod\",\"uid\":\"u-1\","
        "\"resourceVersion\":\"42\",\"generation\":3,\"creationTimestamp\":"
        "\"2026-01-01T00:00:00Z\",\"managedFields\":[{}]},"
        "\"spec\":{\"provider\":\"vLLM\",\"upstream\":{\"baseURL\":\"http://v:8000/v1\"}},"
        "\"status\":{\"conditions\":[]}}";
    struct kw_config *cfg = kw_config_new();
    assert_int_equal(kw_config_add_json(cfg, ok, strlen(ok)), KW_OK);
    assert_int_equal(kw_diag_count(&cfg->diag), 0);
    const struct kw_backend *b = cfg->backends[0];
    assert_string_equal(b->meta.ns, "prod");
    assert_string_equal(b->meta.uid, "u-1");
    assert_string_equal(b->meta.resource_version, "42");
    assert_int_equal(b->meta.generation, 3);

    const char *bad = "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMRoute\","
                      "\"metadata\":{\"name\":\"r\",\"namespace\":\"prod\"},"
                      "\"spec\":{\"match\":{\"models\":[\"m\"]},\"backendRefs\":[{\"name\":\"b\","
                      "\"weight\":-1}]}}";
    assert_int_equal(kw_config_add_json(cfg, bad, strlen(bad)), KW_ERROR);
    struct kw_buf out;
    kw_buf_init(&out, 4096);
    kw_diag_format_all(&cfg->diag, &out);
    assert_string_equal(out.data, "LLMRoute/prod/r: spec.backendRefs[0].weight: must be 0..1000, "
                                  "got -1\n");
    kw_buf_cleanup(&out);
    assert_int_equal(kw_config_add_json(cfg, "{\"kind\":", 8), KW_ERROR);
    kw_config_free(cfg);
}

/* Every malformed identity, limit, budget, pricing and Redis setting is reported with its
 * position and field path (what knoway-dataplane --check prints). */
/* JWT providers name their audiences (or say anyAudience) and fetch keys over https (http
 * only to loopback, when allowed): tokens the issuer made for other applications and key
 * sets anyone on the path could replace were accepted by default. */
static void test_jwt_audiences_and_https_required(void **state)
{
    (void)state;
    kwt_assert_errors(
        "apiVersion: llm.knoway.dev/v1alpha1\n"
        "kind: DataPlane\n"
        "metadata: {name: t}\n"
        "spec:\n"
        "  auth:\n"
        "    jwt:\n"
        "      - {issuer: a, jwksFile: /x}\n"
        "      - {issuer: b, jwksURL: \"http://127.0.0.1:1/j\", anyAudience: true}\n"
        "      - {issuer: c, jwksURL: \"http://idp.example.com/j\", jwksAllowHTTP: "
        "true, audiences: [x]}\n"
        "      - {issuer: d, jwksURL: \"http://[::1]:9/j\", jwksAllowHTTP: true, "
        "anyAudience: true}\n"
        "      - {issuer: e, audiences: [x], anyAudience: true, jwksFile: /x}\n"
        "      - {issuer: f, audiences: [x], jwksURL: \"https://idp.example.com/j\"}\n",
        "t.yaml:7:9: DataPlane/t: spec.auth.jwt[0].audiences: required: list the "
        "audiences (aud) this gateway accepts, or set anyAudience: true to accept "
        "tokens the issuer made for any application\n"
        "t.yaml:8:30: DataPlane/t: spec.auth.jwt[1].jwksURL: must be https:// (the "
        "keys decide who may call; plain http:// only to a loopback address with "
        "jwksAllowHTTP: true)\n"
        "t.yaml:9:30: DataPlane/t: spec.auth.jwt[2].jwksURL: must be https:// (the "
        "keys decide who may call; plain http:// only to a loopback address with "
        "jwksAllowHTTP: true)\n"
        "t.yaml:11:9: DataPlane/t: spec.auth.jwt[4]: set audiences or anyAudience, "
        "not both\n");
}

static void test_limits_budgets_redis_jwt_errors(void **state)
{
    (void)state;
    kwt_assert_errors(
        "apiVersion: llm.knoway.dev/v1alpha1\n"
        "kind: DataPlane\n"
        "metadata: {name: t}\n"
        "spec:\n"
        "  auth:\n"
        "    jwt:\n"
        "      - {issuer: a, jwksFile: /x, jwksURL: \"https://x\", anyAudience: true}\n"
        "      - {audiences: [\"\"], refresh: 1ms}\n"
        "  redis: {url: \"rediss://x\", caFile: /ca, failureMode: Half, timeout: 2m}\n"
        "---\n"
        "apiVersion: llm.knoway.dev/v1alpha1\n"
        "kind: LLMBackend\n"
        "metadata: {name: b}\n"
        "spec:\n"
        "  provider: vLLM\n"
        "  upstream: {baseURL: \"http://x/v1\"}\n"
        "  pricing: {inputPerMillion: \"1.1234567\", outputPerMillion: -1}\n"
        "---\n"
        "apiVersion: llm.knoway.dev/v1alpha1\n"
        "kind: LLMRoute\n"
        "metadata: {name: r}\n"
        "spec:\n"
        "  match: {models: [m]}\n"
        "  backendRefs: [{name: b}]\n"
        "  rateLimits:\n"
        "    - {name: Bad_Name, key: Header/, requests: {limit: 0}}\n"
        "    - {name: two, requests: {limit: 1}, tokens: {limit: 1}}\n"
        "    - {name: three, key: Tenant, tokens: {limit: 10, window: 1ms, count: Both}, scope: "
        "Everywhere}\n"
        "    - {name: four, requests: {limit: 5}, enforce: Stream}\n"
        "    - {name: four, requests: {limit: 5}, clientSelector: {consumers: [\"a/b/c\"]}}\n"
        "---\n"
        "apiVersion: llm.knoway.dev/v1alpha1\n"
        "kind: LLMConsumer\n"
        "metadata: {name: c}\n"
        "spec:\n"
        "  limits: [{name: x, key: ClientIP, requests: {limit: 1}}]\n"
        "  budget: {limit: \"ten\", currency: EUR, period: Year}\n",
        "t.yaml:7:9: DataPlane/t: spec.auth.jwt[0]: set exactly one of jwksFile or jwksURL\n"
        "t.yaml:8:9: DataPlane/t: spec.auth.jwt[1].issuer: required field is missing\n"
        "t.yaml:8:22: DataPlane/t: spec.auth.jwt[1].audiences[0]: must be a non-empty string\n"
        "t.yaml:8:9: DataPlane/t: spec.auth.jwt[1]: set exactly one of jwksFile or jwksURL\n"
        "t.yaml:8:36: DataPlane/t: spec.auth.jwt[1].refresh: must be between 1s and 24h\n"
        "t.yaml:9:16: DataPlane/t: spec.redis.url: rediss:// (TLS) is not supported: the "
        "distribution's hiredis 0.14 has no TLS; reach Redis over a trusted network or a TLS "
        "sidecar\n"
        "t.yaml:9:38: DataPlane/t: spec.redis.caFile: TLS to Redis is not supported (see url)\n"
        "t.yaml:9:71: DataPlane/t: spec.redis.timeout: must be between 1ms and 1m\n"
        "t.yaml:9:56: DataPlane/t: spec.redis.failureMode: unknown value \"Half\"; one of: Open, "
        "Closed\n"
        "t.yaml:17:30: LLMBackend/default/b: spec.pricing.inputPerMillion: must be a non-negative "
        "decimal amount of at most 1000000 with at most 6 decimals, like \"2.50\"\n"
        "t.yaml:17:61: LLMBackend/default/b: spec.pricing.outputPerMillion: must be a non-negative "
        "decimal amount of at most 1000000 with at most 6 decimals, like \"2.50\"\n"
        "t.yaml:26:14: LLMRoute/default/r: spec.rateLimits[0].name: \"Bad_Name\" must be a DNS "
        "label (a-z, 0-9, '-')\n"
        "t.yaml:26:29: LLMRoute/default/r: spec.rateLimits[0].key: Header/ must be followed by a "
        "header name\n"
        "t.yaml:26:56: LLMRoute/default/r: spec.rateLimits[0].requests.limit: must be "
        "1..1000000000000, got 0\n"
        "t.yaml:27:7: LLMRoute/default/r: spec.rateLimits[1]: set exactly one of requests {limit, "
        "window} or tokens {limit, window, count}\n"
        "t.yaml:28:26: LLMRoute/default/r: spec.rateLimits[2].key: unknown value \"Tenant\"; one "
        "of: Consumer, User, Header/<name>, ClientIP\n"
        "t.yaml:28:62: LLMRoute/default/r: spec.rateLimits[2].tokens.window: must be between 1s "
        "and 744h\n"
        "t.yaml:28:74: LLMRoute/default/r: spec.rateLimits[2].tokens.count: unknown value "
        "\"Both\"; one of: Total, Input, Output\n"
        "t.yaml:28:88: LLMRoute/default/r: spec.rateLimits[2].scope: unknown value \"Everywhere\"; "
        "one of: Local, Global\n"
        "t.yaml:29:51: LLMRoute/default/r: spec.rateLimits[3].enforce: Stream applies to token "
        "limits only (a request is counted when it starts)\n"
        "t.yaml:30:71: LLMRoute/default/r: spec.rateLimits[4].clientSelector.consumers[0]: must "
        "name an LLMConsumer as \"name\" or \"namespace/name\"\n"
        "t.yaml:36:27: LLMConsumer/default/c: spec.limits[0].key: a consumer's limit counts per "
        "Consumer or per User\n"
        "t.yaml:37:19: LLMConsumer/default/c: spec.budget.limit: must be a non-negative decimal "
        "amount of at most 1000000000 with at most 6 decimals, like \"2.50\"\n"
        "t.yaml:37:36: LLMConsumer/default/c: spec.budget.currency: only USD is supported (prices "
        "are in USD)\n"
        "t.yaml:37:49: LLMConsumer/default/c: spec.budget.period: unknown value \"Year\"; one of: "
        "Day, Week, Month\n");
    /* and the valid forms decode and survive the snapshot's encode/decode */
    struct kw_config *cfg = NULL;
    char *e = kwt_errors(
        "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: b}\nspec:\n"
        "  provider: vLLM\n  upstream: {baseURL: \"http://x/v1\"}\n"
        "  pricing: {inputPerMillion: \"2.5\", outputPerMillion: 10}\n"
        "---\n" HDR_C "  limits: [{name: t, key: User, tokens: {limit: 99, count: Output}, "
        "enforce: Stream, scope: Global}]\n  budget: {limit: \"12.34\", period: Week}\n",
        &cfg);
    assert_string_equal(e, "");
    free(e);
    const struct kw_backend *b = cfg->backends[0];
    assert_true(b->pricing.set);
    assert_int_equal(b->pricing.input_per_million, 2500000);
    assert_int_equal(b->pricing.output_per_million, 10000000);
    assert_int_equal(b->pricing.cached_input_per_million, 2500000);
    const struct kw_consumer *c = cfg->consumers[0];
    assert_int_equal(c->nlimits, 1);
    assert_true(c->limits[0].tokens && c->limits[0].global && c->limits[0].enforce_stream);
    assert_int_equal(c->limits[0].key, KW_LIMIT_KEY_USER);
    assert_int_equal(c->limits[0].count, KW_LIMIT_COUNT_OUTPUT);
    assert_int_equal(c->limits[0].window_ms, 60000);
    assert_true(c->budget.set);
    assert_int_equal(c->budget.limit_nusd, 12340000000LL);
    assert_int_equal(c->budget.period, KW_PERIOD_WEEK);
    kw_config_free(cfg);
    char usd[32];
    kw_usd_format(12340000000LL, usd, sizeof(usd));
    assert_string_equal(usd, "12.34");
    kw_usd_format(22000, usd, sizeof(usd));
    assert_string_equal(usd, "0.000022");
    char period[32];
    int64_t end;
    kw_period_name(KW_PERIOD_WEEK, 1796256000LL /* Thu 2026-12-03 */, period, sizeof(period), &end);
    assert_string_equal(period, "2026-W49");
    assert_int_equal(end, 1796601600000LL); /* Mon 2026-12-07 */
    kw_period_name(KW_PERIOD_MONTH, 1796256000LL, period, sizeof(period), &end);
    assert_string_equal(period, "2026-12");
    assert_int_equal(end, 1798761600000LL); /* 2027-01-01 */
}

/* DataPlane spec.telemetry and spec.usage: every malformed setting is reported. */
static void test_telemetry_and_usage_errors(void **state)
{
    (void)state;
    char *e =
        kwt_errors("apiVersion: llm.knoway.dev/v1alpha1\nkind: DataPlane\nmetadata: {name: t}\n"
                   "spec:\n  telemetry: {otlp: {endpoint: \"ftp://x\", protocol: grpc, "
                   "sampleRatio: 2, timeout: 1ms, captureContent: yes}}\n"
                   "  usage: {spool: {maxBytes: 10, onFull: Never}, sinks: [{jsonl: {}}, "
                   "{postgres: {table: \"Bad-Name\"}}]}\n",
                   NULL);
    static const char *const want[] = {
        "spec.telemetry.otlp.endpoint: \"ftp://x\" must start with http:// or https://",
        "spec.telemetry.otlp.protocol: unknown value \"grpc\"; one of: json, protobuf",
        "spec.telemetry.otlp.captureContent: ",
        "spec.telemetry.otlp.sampleRatio: must be a number from 0 to 1",
        "spec.telemetry.otlp.timeout: must be between 100ms and 1m",
        "spec.usage.spool.maxBytes: must be 4096..",
        "spec.usage.spool.onFull: unknown value \"Never\"",
        "spec.usage.sinks[0].jsonl: set exactly one of path or stdout: true",
        "spec.usage.sinks[1].postgres.dsnFile: required field is missing",
        "spec.usage.sinks[1].postgres.table: must be a lower-case SQL name",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(e, want[i]) == NULL)
            fail_msg("missing \"%s\" in:\n%s", want[i], e);
    free(e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_backend),
        cmocka_unit_test(test_unknown_field_hint),
        cmocka_unit_test(test_wrong_type),
        cmocka_unit_test(test_required),
        cmocka_unit_test(test_enum),
        cmocka_unit_test(test_ranges),
        cmocka_unit_test(test_durations),
        cmocka_unit_test(test_upstream_rules),
        cmocka_unit_test(test_provider_specific),
        cmocka_unit_test(test_bedrock_defaults),
        cmocka_unit_test(test_vertex),
        cmocka_unit_test(test_match),
        cmocka_unit_test(test_duplicates_and_references),
        cmocka_unit_test(test_secret),
        cmocka_unit_test(test_secret_env),
        cmocka_unit_test(test_documents),
        cmocka_unit_test(test_dataplane),
        cmocka_unit_test(test_traffic),
        cmocka_unit_test(test_consumer),
        cmocka_unit_test(test_limits_budgets_redis_jwt_errors),
        cmocka_unit_test(test_jwt_audiences_and_https_required),
        cmocka_unit_test(test_short_api_keys_refused),
        cmocka_unit_test(test_telemetry_and_usage_errors),
        cmocka_unit_test(test_api_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
