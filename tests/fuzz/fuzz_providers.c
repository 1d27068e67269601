/* libFuzzer: everything a provider reads from outside, for every provider (OpenAI, Azure,
 * Anthropic, Gemini, Bedrock, Vertex AI with both publishers). Byte 0 picks the provider, byte 1
 * the input, byte 2 a split point and a random seed: 0  a client's request body: parsed, routed to
 * the backend, rewritten (params) and built into the upstream request (URL, headers, body; SigV4
 * for Bedrock) 1  an upstream's response body, translated 2  an upstream's stream in two pieces:
 * the SSE parser and on_event, or Bedrock's event-stream decoder with its CRCs; then the stream's
 * end 3  an upstream's error body, mapped 4  upstream header lines (libcurl's header callback) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "knoway/config.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "balancer.h"
#include "router.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define B(name, provider, extra)                                                                   \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: " name           \
    ", namespace: t}\nspec:\n  provider: " provider "\n  upstream: {baseURL: "                     \
    "\"http://up.example:8080\"}\n  params: {defaults: {temperature: 0.1}, overrides: {n: 1},"     \
    " remove: [user]}\n  credentials:\n    secretRef: {name: keys}\n" extra
#define R(name)                                                                                    \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: " name             \
    ", namespace: t}\nspec: {match: {models: [" name "]}, backendRefs: [{name: " name "}]}\n"

static const char CONFIG[] =
    "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: t}\nstringData:\n"
    "  apiKey: sk-test\n  AWS_ACCESS_KEY_ID: AKIDEXAMPLE\n"
    "  AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n"
    "  AWS_SESSION_TOKEN: tok\n  credentials.json: ya29.tok\n" B("openai", "OpenAI", "") R("openai")
        B("azure", "AzureOpenAI", "    azure: {deployment: d}\n") R("azure")
            B("anthropic", "Anthropic", "") R("anthropic") B("gemini", "Gemini", "") R("gemini")
                B("bedrock", "AWSBedrock",
                  "    bedrock: {region: eu-west-1, sessionTokenKey: "
                  "AWS_SESSION_TOKEN}\n") R("bedrock")
                    B("vertex-gemini", "VertexAI",
                      "    vertex: {project: p, region: us-east5}\n  modelName: gemini-2.5-flash\n")
                        R("vertex-gemini")
                            B("vertex-claude", "VertexAI",
                              "    vertex: {project: p, region: global}\n  modelName: "
                              "claude-sonnet-4-5@20250929\n") R("vertex-claude");

static struct dp_table table;
static struct kw_arena *scratch;

static int on_sse(void *ud, const char *raw, size_t raw_len, const char *event, const char *d,
                  size_t dlen, bool has_data)
{
    struct dp_request *r = ud;
    return has_data ? r->provider->on_event(r, raw, raw_len, event, d, dlen, dp_stream_sink(r))
                    : KW_OK;
}

/* The engine's header hooks read rate-limit and retry headers: fed through a balancer
 * state the way an attempt would. */
static struct dp_lb *lb;
static void on_header(struct dp_transfer *t, const char *name, size_t nlen, const char *value,
                      size_t vlen)
{
    struct dp_request *r = t->ud;
    struct dp_backend_state *bs = dp_lb_backend(lb, r->backend);
    if (bs != NULL)
        dp_lb_header(bs, -1, name, nlen, value, vlen, 1000);
}
static int on_headers(struct dp_transfer *t)
{
    (void)t;
    return KW_OK;
}
static const struct dp_transfer_ops header_ops = {.on_header = on_header, .on_headers = on_headers};

static void setup(void)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_add_yaml(cfg, "f.yaml", CONFIG, strlen(CONFIG));
    kw_config_check(cfg);
    struct kw_diag diag;
    kw_diag_init(&diag);
    table.snap = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &diag);
    kw_diag_cleanup(&diag);
    kw_config_free(cfg);
    if (table.snap == NULL || table.snap->nroutes != 7)
        abort();
    scratch = kw_arena_new(1u << 26);
    lb = dp_lb_new(1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    if (table.snap == NULL)
        setup();
    const struct kw_route *route = table.snap->routes[data[0] % table.snap->nroutes];
    struct dp_request r;
    memset(&r, 0, sizeof(r));
    r.scratch = scratch;
    r.arena = kw_arena_new(1u << 26);
    r.table = &table;
    r.route = route;
    r.api = data[2] & 1 ? DP_API_CHAT : DP_API_EMBEDDINGS;
    strcpy(r.id, "fuzz");
    r.model = "m";
    r.stream = data[2] & 2;
    kw_buf_init(&r.out, 1u << 24);
    kw_buf_init(&r.stage, 1u << 24);
    kw_buf_init(&r.up_body, 1u << 24);
    dp_sse_init(&r.sse, 1u << 20);
    /* as the route phase leaves it: the route's (only) backend, its baseURL */
    const struct kw_backend_ref *ref = &route->refs[0];
    r.base_url = ref->backend->upstream.base_url;
    r.base_len = strlen(r.base_url);
    const char *in = (const char *)data + 3;
    size_t len = size - 3;
    struct kw_buf out, url;
    kw_buf_init(&out, 1u << 24);
    kw_buf_init(&url, 8192);
    struct curl_slist *headers = NULL;
    int mode = data[1] % 5;
    if (mode == 0) {
        /* as the request phase does it: parse and check, route, rewrite, build */
        kw_buf_init(&r.body, 1u << 24);
        kw_buf_append(&r.body, in, len);
        if (data[2] & 4)
            r.front = &dp_front_anthropic;
        if (dp_request_parse_body(&r) == KW_OK && dp_request_bind(&r, ref) == KW_OK)
            r.provider->build(&r, &url, &headers);
        kw_buf_cleanup(&r.body);
    } else {
        r.json = kw_node_new(r.arena, KW_NODE_MAP);
        if (dp_request_bind(&r, ref) == KW_OK) {
            size_t cut = len > 0 ? data[2] % (len + 1) : 0;
            if (mode == 1) {
                r.provider->on_response(&r, in, len, &out);
            } else if (mode == 2) {
                bool ok = r.provider->feed != NULL
                              ? r.provider->feed(&r, in, cut, &r.out) == KW_OK &&
                                    r.provider->feed(&r, in + cut, len - cut, &r.out) == KW_OK
                              : dp_sse_feed(&r.sse, in, cut, on_sse, &r) == KW_OK &&
                                    dp_sse_feed(&r.sse, in + cut, len - cut, on_sse, &r) == KW_OK &&
                                    dp_sse_finish(&r.sse, on_sse, &r) == KW_OK;
                if (ok && r.provider->on_stream_end != NULL)
                    r.provider->on_stream_end(&r, &r.out);
            } else if (mode == 3) {
                if (r.provider->on_error != NULL)
                    r.provider->on_error(&r, 400 + data[2], in, len, &out);
            } else {
                r.up.ops = &header_ops;
                r.up.ud = &r;
                for (size_t off = 0; off < len;) { /* lines as libcurl hands them over */
                    const char *nl = memchr(in + off, '\n', len - off);
                    size_t n = nl != NULL ? (size_t)(nl - (in + off)) + 1 : len - off;
                    char line[512];
                    size_t k = n < sizeof(line) ? n : sizeof(line);
                    memcpy(line, in + off, k);
                    if (k > 2 || (line[0] != '\r' && line[0] != '\n'))
                        dp_transfer_on_header(line, 1, k, &r.up);
                    off += n;
                }
            }
        }
    }
    if (r.front != NULL && r.front->cleanup != NULL)
        r.front->cleanup(&r);
    if (r.provider != NULL && r.provider->cleanup != NULL && r.provider_state != NULL)
        r.provider->cleanup(&r);
    curl_slist_free_all(headers);
    dp_sse_cleanup(&r.sse);
    kw_buf_cleanup(&url);
    kw_buf_cleanup(&out);
    kw_buf_cleanup(&r.out);
    kw_buf_cleanup(&r.stage);
    kw_buf_cleanup(&r.up_body);
    kw_arena_free(r.arena);
    kw_arena_reset(scratch);
    return 0;
}
