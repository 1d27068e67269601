/* Golden translation vectors for every translating provider (tests/golden/providers/NAME.json):
 *
 *   {"backend": NAME, "request": {client body, model = the upstream model},
 *    "api": "chat" | "embeddings"                          (default chat)
 *    "upstream": {"url", "headers": ["Name: value", ...], "body": {...}}  request translation
 *    "fail": STATUS                                        the request is refused instead
 *    "response": {...}, "translated": {...}                response translation
 *    "stream_in": "SSE text" | [{"headers": {...}, "payload": {...}}, ...] (event stream)
 *    "stream_out": [chunk, ..., "[DONE]"]                  stream translation
 *    "usage": [prompt, completion, cached]                 after the response or stream
 *    "provider_usage": {name: count, ...}                  the provider's own counts kept
 *    (a vector without "translated" checks the usage of its response only)
 *    "error_in": {"status", "body", "headers": {...}}, "error_out": {...}}   error mapping
 *
 * With "front": "anthropic" the request is Anthropic's (POST /v1/messages), with "front":
 * "responses" OpenAI's Responses API (POST /v1/responses), and goes through the front first:
 *    "openai_request": {...}        what the front makes of it (then the provider's request;
 *                                   the upstream body defaults to it)
 *    "refusals": [[request, "message"], ...]  requests the front refuses with a 400
 *    "translated"                   the client's (Anthropic) body after provider and front
 *    "stream_out": [{"event", "data"}, ...]   the client's events after provider and front
 *                                   ("sequence_number" compared too; "created_at" left out)
 *
 * Streams are also fed split at every byte boundary and one byte at a time: the output must
 * be identical. "created" is time-dependent and left out of every comparison. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "respond.h"
#include "eventstream.h"
#include "knoway/config.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/provider.h"
#include "knoway/snapshot.h"
#include "router.h"
#include "sigv4.h"
#include "testutil.h"

#define SECRETS                                                                                    \
    "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: t}\nstringData:\n"            \
    "  apiKey: sk-test\n  AWS_ACCESS_KEY_ID: AKIDEXAMPLE\n"                                        \
    "  AWS_SECRET_ACCESS_KEY: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n"                          \
    "  AWS_SESSION_TOKEN: session-token\n  vertexToken: ya29.static-token\n"

#define BACKEND(name, provider, extra)                                                             \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: " name           \
    ", namespace: t}\nspec:\n  provider: " provider "\n  upstream: {baseURL: "                     \
    "\"http://up.example:8080\"}\n  credentials:\n" extra

static const char CONFIG[] = SECRETS BACKEND("openai", "OpenAI", "    secretRef: {name: keys}\n")
    BACKEND("anthropic", "Anthropic", "    secretRef: {name: keys}\n")
        BACKEND("anthropic-omit", "Anthropic",
                "    secretRef: {name: keys}\n  reasoning: {content: Omit}\n")
            BACKEND("azure", "AzureOpenAI",
                    "    secretRef: {name: keys}\n    azure: {deployment: dep-1}\n")
                BACKEND("anthropic-native", "Anthropic",
                        "    secretRef: {name: keys}\n  structuredOutputs: Native\n")
                    BACKEND("bedrock-native", "AWSBedrock",
                            "    secretRef: {name: keys}\n    bedrock: {region: eu-west-1, "
                            "sessionTokenKey: AWS_SESSION_TOKEN}\n  structuredOutputs: Native\n")
                        BACKEND("gemini", "Gemini", "    secretRef: {name: keys}\n")
                            BACKEND("bedrock", "AWSBedrock",
                                    "    secretRef: {name: keys}\n    bedrock: {region: eu-west-1, "
                                    "sessionTokenKey: AWS_SESSION_TOKEN}\n")
                                BACKEND("vertex", "VertexAI",
                                        "    secretRef: {name: keys, key: vertexToken}\n"
                                        "    vertex: {project: proj-1, region: us-east5}\n");

/* The front a vector names: "anthropic" (POST /v1/messages) or "responses". */
static const struct dp_front_ops *front_of(const struct kw_node *c)
{
    const struct kw_node *f = kw_node_get(c, "front");
    if (f == NULL)
        return NULL;
    return strcmp(f->str, "responses") == 0 ? &dp_front_responses : &dp_front_anthropic;
}

struct fixture {
    struct kw_snapshot *snap;
    struct dp_table table;
    struct kw_arena *scratch;
};

static struct fixture *fixture(void)
{
    struct fixture *f = calloc(1, sizeof(*f));
    f->snap = kwt_snapshot(CONFIG, NULL);
    assert_int_equal(f->snap->nbackends, 9);
    f->table.snap = f->snap;
    f->scratch = kw_arena_new(64u << 20);
    return f;
}

static void fixture_free(struct fixture *f)
{
    kw_arena_free(f->scratch);
    kw_snapshot_unref(f->snap);
    free(f);
}

static const struct kw_backend *backend(struct fixture *f, const char *name)
{
    for (size_t i = 0; i < f->snap->nbackends; i++)
        if (strcmp(f->snap->backends[i]->meta.name, name) == 0)
            return f->snap->backends[i];
    fail_msg("no backend %s", name);
    return NULL;
}

/* A request as the request phase leaves it before dp_upstream_start. */
static struct dp_request *request(struct fixture *f, const struct kw_node *c, struct kw_arena *a)
{
    struct dp_request *r = kw_arena_alloc(a, sizeof(*r));
    memset(r, 0, sizeof(*r));
    r->thinking_budget = -1;
    r->scratch = f->scratch;
    r->arena = a;
    snprintf(r->id, sizeof(r->id), "golden");
    const struct kw_node *api = kw_node_get(c, "api");
    r->api = api != NULL && strcmp(api->str, "embeddings") == 0 ? DP_API_EMBEDDINGS : DP_API_CHAT;
    r->json = r->up_json = kw_node_get(c, "request");
    kw_buf_init(&r->stage, 1 << 24);
    if (kw_node_get(c, "front") != NULL) {
        r->front = front_of(c);
        r->model = kw_node_get(r->json, "model")->str;
        r->up_json = NULL;
        if (r->front->request(r) != KW_OK)
            return r; /* the refusal is in r->err */
        r->up_json = r->json;
    }
    const struct kw_node *stream = kw_node_get(r->json, "stream");
    r->stream = stream != NULL && stream->type == KW_NODE_BOOL && stream->b;
    const struct kw_node *u = kw_node_get(kw_node_get(r->json, "stream_options"), "include_usage");
    r->client_usage = u != NULL && u->type == KW_NODE_BOOL && u->b;
    r->upstream_model = kw_node_get(r->json, "model")->str;
    if (r->model == NULL)
        r->model = r->upstream_model;
    r->table = &f->table;
    r->backend = backend(f, kw_node_get(c, "backend")->str);
    r->base_url = r->backend->upstream.base_url; /* what the balancer picks */
    r->base_len = r->base_url != NULL ? strlen(r->base_url) : 0;
    r->provider = dp_provider_for(r->backend);
    assert_non_null(r->provider);
    kw_buf_init(&r->up_body, 1 << 24);
    kw_buf_init(&r->out, 1 << 24);
    return r;
}

static void request_done(struct dp_request *r)
{
    if (r->provider->cleanup != NULL && r->provider_state != NULL)
        r->provider->cleanup(r);
    if (r->front != NULL && r->front->cleanup != NULL)
        r->front->cleanup(r);
    kw_buf_cleanup(&r->stage);
    kw_buf_cleanup(&r->up_body);
    kw_buf_cleanup(&r->out);
}

/* Canonical JSON of n without "created" (and "created_at") members (at any depth). */
static void strip_created(struct kw_node *n)
{
    if (n->type == KW_NODE_MAP) {
        for (size_t i = 0; i < n->n;) {
            if (strcmp(n->pairs[i].key->str, "created") == 0 ||
                strcmp(n->pairs[i].key->str, "created_at") == 0) {
                memmove(&n->pairs[i], &n->pairs[i + 1], (n->n - i - 1) * sizeof(*n->pairs));
                n->n--;
                continue;
            }
            strip_created(n->pairs[i].val);
            i++;
        }
    } else if (n->type == KW_NODE_SEQ) {
        for (size_t i = 0; i < n->n; i++)
            strip_created(n->items[i]);
    }
}

static char *canon(struct kw_node *n)
{
    struct kw_buf b;
    kw_buf_init(&b, 1 << 24);
    strip_created(n);
    assert_int_equal(kw_json_write_canonical(n, &b), KW_OK);
    return b.data;
}

static void assert_json_equal(const char *what, const char *file, struct kw_node *expected,
                              const char *actual, size_t len, struct kw_arena *a)
{
    struct kw_node *got;
    char err[128];
    if (kw_json_parse(a, actual, len, &got, err, sizeof(err)) != KW_OK)
        fail_msg("%s: %s: not JSON (%s): %.*s", file, what, err, (int)len, actual);
    char *e = canon(expected), *g = canon(got);
    if (strcmp(e, g) != 0)
        fail_msg("%s: %s differs\n  expected: %s\n  got:      %s", file, what, e, g);
    free(e);
    free(g);
}

static void check_front(const char *file, struct fixture *f, const struct kw_node *c,
                        struct kw_arena *a)
{
    if (kw_node_get(c, "front") == NULL)
        return;
    const struct kw_node *want = kw_node_get(c, "openai_request");
    if (want != NULL) {
        struct dp_request *r = request(f, c, a);
        if (r->up_json == NULL)
            fail_msg("%s: the front refused the request (status %u)", file, r->err.status);
        struct kw_buf got;
        kw_buf_init(&got, 1 << 24);
        assert_int_equal(kw_json_write(r->json, &got), KW_OK);
        assert_json_equal("OpenAI request", file, (struct kw_node *)want, got.data, got.len, a);
        kw_buf_cleanup(&got);
        request_done(r);
    }
    const struct kw_node *refusals = kw_node_get(c, "refusals");
    for (size_t i = 0; refusals != NULL && i < refusals->n; i++) {
        struct dp_request *r = kw_arena_alloc(a, sizeof(*r));
        memset(r, 0, sizeof(*r));
        r->scratch = f->scratch;
        r->arena = a;
        snprintf(r->id, sizeof(r->id), "golden");
        r->front = front_of(c);
        r->json = refusals->items[i]->items[0];
        const char *msg = refusals->items[i]->items[1]->str;
        if (r->front->request(r) != KW_ERROR || r->err.status != 400 ||
            strcmp(r->err.msg, msg) != 0)
            fail_msg("%s: refusal %zu: expected 400 \"%s\", got status %u \"%s\"", file, i, msg,
                     r->err.status, r->err.msg);
    }
}

static void check_request(const char *file, struct fixture *f, const struct kw_node *c,
                          struct kw_arena *a)
{
    const struct kw_node *up = kw_node_get(c, "upstream"), *fail = kw_node_get(c, "fail");
    if (up == NULL && fail == NULL)
        return;
    struct dp_request *r = request(f, c, a);
    struct kw_buf url;
    kw_buf_init(&url, 8192);
    struct curl_slist *headers = NULL;
    int rc = r->provider->build(r, &url, &headers);
    if (fail != NULL) {
        if (rc != KW_ERROR || r->err.status != (unsigned)fail->i)
            fail_msg("%s: expected a %lld refusal, got rc %d status %u", file, (long long)fail->i,
                     rc, r->err.status);
    } else {
        if (rc != KW_OK)
            fail_msg("%s: build failed (status %u)", file, r->err.status);
        const struct kw_node *eu = kw_node_get(up, "url");
        if (strcmp(eu->str, url.data) != 0)
            fail_msg("%s: url\n  expected: %s\n  got:      %s", file, eu->str, url.data);
        const struct kw_node *eh = kw_node_get(up, "headers");
        for (size_t i = 0; eh != NULL && i < eh->n; i++) {
            bool found = false;
            for (struct curl_slist *h = headers; h != NULL && !found; h = h->next)
                found = strcmp(h->data, eh->items[i]->str) == 0;
            if (!found)
                fail_msg("%s: header \"%s\" not sent", file, eh->items[i]->str);
        }
        const struct kw_node *body = kw_node_get(up, "body"); /* else relayed as translated */
        assert_json_equal(
            "upstream body", file,
            (struct kw_node *)(body != NULL ? body : kw_node_get(c, "openai_request")),
            r->up_body.data, r->up_body.len, a);
    }
    curl_slist_free_all(headers);
    kw_buf_cleanup(&url);
    request_done(r);
}

static void check_usage(const char *file, const struct kw_node *c, const struct dp_request *r)
{
    const struct kw_node *u = kw_node_get(c, "usage");
    if (u == NULL)
        return;
    if (!r->usage.have || r->usage.prompt != u->items[0]->i ||
        r->usage.completion != u->items[1]->i || r->usage.cached != u->items[2]->i)
        fail_msg("%s: usage [%lld, %lld, %lld], expected [%lld, %lld, %lld]", file,
                 (long long)r->usage.prompt, (long long)r->usage.completion,
                 (long long)r->usage.cached, (long long)u->items[0]->i, (long long)u->items[1]->i,
                 (long long)u->items[2]->i);
    /* the provider's own counts, as the usage record keeps them */
    const struct kw_node *raw = kw_node_get(c, "provider_usage");
    for (size_t i = 0; raw != NULL && i < raw->n; i++) {
        unsigned k = 0;
        while (k < r->usage.nraw && strcmp(r->usage.raw[k].name, raw->pairs[i].key->str) != 0)
            k++;
        if (k == r->usage.nraw || r->usage.raw[k].value != raw->pairs[i].val->i)
            fail_msg("%s: provider_usage.%s: %lld, expected %lld", file, raw->pairs[i].key->str,
                     k < r->usage.nraw ? (long long)r->usage.raw[k].value : -1LL,
                     (long long)raw->pairs[i].val->i);
    }
    if (raw != NULL && raw->n != r->usage.nraw)
        fail_msg("%s: %u provider counts kept, expected %zu", file, r->usage.nraw, raw->n);
}

/* Some providers keep what build decided (the structured output's answer tool): the
 * response and stream vectors run after the request's translation, as requests do. */
static void build(struct dp_request *r)
{
    if (r->provider->build == NULL)
        return;
    struct kw_buf url;
    struct curl_slist *h = NULL;
    kw_buf_init(&url, 8192);
    assert_int_equal(r->provider->build(r, &url, &h), KW_OK);
    curl_slist_free_all(h);
    kw_buf_cleanup(&url);
}

static void check_response(const char *file, struct fixture *f, const struct kw_node *c,
                           struct kw_arena *a)
{
    const struct kw_node *resp = kw_node_get(c, "response");
    if (resp == NULL)
        return;
    struct dp_request *r = request(f, c, a);
    struct kw_buf body, out;
    kw_buf_init(&body, 1 << 24);
    kw_buf_init(&out, 1 << 24);
    assert_int_equal(kw_json_write(resp, &body), KW_OK);
    build(r);
    assert_int_equal(r->provider->on_response(r, body.data, body.len, &out), KW_OK);
    if (r->front != NULL) {
        struct kw_buf client;
        kw_buf_init(&client, 1 << 24);
        const struct kw_buf *src = out.len > 0 ? &out : &body;
        assert_int_equal(r->front->response(r, src->data, src->len, &client), KW_OK);
        kw_buf_cleanup(&out);
        out = client;
    }
    if (kw_node_get(c, "translated") != NULL) /* usage-only vectors leave it out */
        assert_json_equal("translated response", file, kw_node_get(c, "translated"), out.data,
                          out.len, a);
    check_usage(file, c, r);
    kw_buf_cleanup(&body);
    kw_buf_cleanup(&out);
    request_done(r);
}

/* ---- streams ------------------------------------------------------------------------- */

static int on_sse(void *ud, const char *raw, size_t raw_len, const char *event, const char *data,
                  size_t data_len, bool has_data)
{
    struct dp_request *r = ud;
    if (!has_data)
        return KW_OK;
    return r->provider->on_event(r, raw, raw_len, event, data, data_len, dp_stream_sink(r));
}

/* The upstream stream bytes of a case (SSE text, or event-stream frames encoded). */
static void stream_bytes(const struct kw_node *in, struct kw_buf *out)
{
    if (in->type == KW_NODE_STRING) {
        kw_buf_append(out, in->str, in->len);
        return;
    }
    for (size_t i = 0; i < in->n; i++) {
        const struct kw_node *h = kw_node_get(in->items[i], "headers");
        const char *names[8], *values[8];
        size_t n = 0;
        for (size_t j = 0; j < h->n && n < 8; j++, n++) {
            names[n] = h->pairs[j].key->str;
            values[n] = h->pairs[j].val->str;
        }
        struct kw_buf payload;
        kw_buf_init(&payload, 1 << 20);
        kw_json_write(kw_node_get(in->items[i], "payload"), &payload);
        assert_int_equal(dp_es_encode(out, names, values, n, payload.data, payload.len), KW_OK);
        kw_buf_cleanup(&payload);
    }
}

/* Run the stream through the provider in pieces of the given cut points; the output in
 * *result (malloc'd). */
static char *run_stream(struct fixture *f, const struct kw_node *c, struct kw_arena *a,
                        const struct kw_buf *in, const size_t *cuts, size_t ncuts,
                        struct dp_request **rout)
{
    struct dp_request *r = request(f, c, a);
    build(r);
    struct dp_sse sse;
    dp_sse_init(&sse, DP_MAX_SSE_EVENT);
    if (r->front != NULL) /* as dp_request_begin_stream does */
        assert_int_equal(r->front->stream_begin(r, &r->out), KW_OK);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) { /* as upstream.c's write callback does */
        size_t end = cuts != NULL && i < ncuts ? cuts[i] : in->len;
        int rc = r->provider->feed != NULL
                     ? r->provider->feed(r, in->data + at, end - at, dp_stream_sink(r))
                     : dp_sse_feed(&sse, in->data + at, end - at, on_sse, r);
        assert_int_equal(rc, KW_OK);
        assert_int_equal(dp_front_flush(r), KW_OK);
        at = end;
    }
    if (r->provider->feed == NULL)
        assert_int_equal(dp_sse_finish(&sse, on_sse, r), KW_OK);
    if (r->provider->on_stream_end != NULL)
        assert_int_equal(r->provider->on_stream_end(r, dp_stream_sink(r)), KW_OK);
    assert_int_equal(dp_front_flush(r), KW_OK);
    if (r->front != NULL)
        assert_int_equal(r->front->stream_end(r, &r->out), KW_OK);
    dp_sse_cleanup(&sse);
    char *res = strndup(r->out.data != NULL ? r->out.data : "", r->out.len);
    /* "created" is the clock's: runs straddling a second must still compare equal */
    for (char *p = res; (p = strstr(p, "\"created\":")) != NULL;) {
        p += 10;
        while (*p >= '0' && *p <= '9')
            *p++ = '1';
    }
    for (char *p = res; (p = strstr(p, "\"created_at\":")) != NULL;) {
        p += 13;
        while (*p >= '0' && *p <= '9')
            *p++ = '1';
    }
    *rout = r;
    return res;
}

static void check_stream(const char *file, struct fixture *f, const struct kw_node *c,
                         struct kw_arena *a)
{
    const struct kw_node *in = kw_node_get(c, "stream_in"), *exp = kw_node_get(c, "stream_out");
    if (in == NULL)
        return;
    struct kw_buf bytes;
    kw_buf_init(&bytes, 1 << 24);
    stream_bytes(in, &bytes);
    struct dp_request *r;
    char *whole = run_stream(f, c, a, &bytes, NULL, 0, &r);
    check_usage(file, c, r);
    request_done(r);
    /* the chunks, as JSON, against the expected ones */
    size_t n = 0;
    for (char *p = whole; *p != '\0'; n++) {
        char *end = strstr(p, "\n\n");
        assert_non_null(end);
        if (n >= exp->n)
            fail_msg("%s: more chunks than expected; extra: %.*s", file, (int)(end - p), p);
        const struct kw_node *ev = kw_node_get(exp->items[n], "event");
        if (ev != NULL) { /* a front's events: "event: NAME\ndata: JSON" */
            char *nl = memchr(p, '\n', (size_t)(end - p));
            if (strncmp(p, "event: ", 7) != 0 || nl == NULL || strncmp(nl + 1, "data: ", 6) != 0 ||
                (size_t)(nl - p - 7) != ev->len || memcmp(p + 7, ev->str, ev->len) != 0)
                fail_msg("%s: event %zu: expected %s, got %.*s", file, n, ev->str, (int)(end - p),
                         p);
            char what[32];
            snprintf(what, sizeof(what), "event %zu", n);
            assert_json_equal(what, file, kw_node_get(exp->items[n], "data"), nl + 7,
                              (size_t)(end - nl - 7), a);
            p = end + 2;
            continue;
        }
        if (strncmp(p, "data: ", 6) != 0)
            fail_msg("%s: chunk %zu is not a data line: %.*s", file, n, (int)(end - p), p);
        const struct kw_node *e = exp->items[n];
        if (e->type == KW_NODE_STRING) {
            if ((size_t)(end - p - 6) != e->len || memcmp(p + 6, e->str, e->len) != 0)
                fail_msg("%s: chunk %zu: expected %s, got %.*s", file, n, e->str,
                         (int)(end - p - 6), p + 6);
        } else {
            char what[32];
            snprintf(what, sizeof(what), "chunk %zu", n);
            assert_json_equal(what, file, (struct kw_node *)e, p + 6, (size_t)(end - p - 6), a);
        }
        p = end + 2;
    }
    if (n != exp->n)
        fail_msg("%s: %zu chunks, expected %zu", file, n, exp->n);
    /* every split point, and one byte at a time, give the same bytes */
    for (size_t k = 1; k < bytes.len; k++) {
        kw_arena_reset(f->scratch);
        char *split = run_stream(f, c, a, &bytes, &k, 1, &r);
        request_done(r);
        if (strcmp(split, whole) != 0)
            fail_msg("%s: split at byte %zu differs:\n%s\nvs\n%s", file, k, split, whole);
        free(split);
    }
    size_t *cuts = malloc(bytes.len * sizeof(*cuts));
    for (size_t k = 0; k + 1 < bytes.len; k++)
        cuts[k] = k + 1;
    char *bytewise = run_stream(f, c, a, &bytes, cuts, bytes.len > 0 ? bytes.len - 1 : 0, &r);
    request_done(r);
    assert_string_equal(bytewise, whole);
    free(bytewise);
    free(cuts);
    free(whole);
    kw_buf_cleanup(&bytes);
}

static void check_error(const char *file, struct fixture *f, const struct kw_node *c,
                        struct kw_arena *a)
{
    const struct kw_node *in = kw_node_get(c, "error_in");
    if (in == NULL)
        return;
    struct dp_request *r = request(f, c, a);
    struct kw_buf body, out;
    kw_buf_init(&body, 1 << 20);
    kw_buf_init(&out, 1 << 20);
    const struct kw_node *b = kw_node_get(in, "body");
    const struct kw_node *et = kw_node_get(kw_node_get(in, "headers"), "x-amzn-errortype");
    if (et != NULL && et->type == KW_NODE_STRING)
        snprintf(r->up.amzn_errortype, sizeof(r->up.amzn_errortype), "%s", et->str);
    if (b->type == KW_NODE_STRING)
        kw_buf_append(&body, b->str, b->len);
    else
        kw_json_write(b, &body);
    assert_non_null(r->provider->on_error);
    assert_int_equal(
        r->provider->on_error(r, kw_node_get(in, "status")->i, body.data, body.len, &out), KW_OK);
    assert_json_equal("mapped error", file, kw_node_get(c, "error_out"), out.data, out.len, a);
    kw_buf_cleanup(&body);
    kw_buf_cleanup(&out);
    request_done(r);
}

static void test_golden(void **state)
{
    (void)state;
    struct fixture *f = fixture();
    const char *dir = KW_SOURCE_DIR "/tests/golden/providers";
    struct dirent **names;
    int n = scandir(dir, &names, NULL, alphasort);
    assert_true(n > 2);
    int cases = 0;
    for (int i = 0; i < n; i++) {
        const char *name = names[i]->d_name;
        size_t len = strlen(name);
        if (len < 6 || strcmp(name + len - 5, ".json") != 0) {
            free(names[i]);
            continue;
        }
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        struct kw_buf text;
        kw_buf_init(&text, 1 << 24);
        char chunk[4096];
        size_t got;
        while ((got = fread(chunk, 1, sizeof(chunk), fp)) > 0)
            kw_buf_append(&text, chunk, got);
        fclose(fp);
        struct kw_arena *a = kw_arena_new(256u << 20);
        struct kw_node *c;
        char err[256];
        if (kw_json_parse(a, text.data, text.len, &c, err, sizeof(err)) != KW_OK)
            fail_msg("%s: %s", name, err);
        check_front(name, f, c, a);
        check_request(name, f, c, a);
        check_response(name, f, c, a);
        check_stream(name, f, c, a);
        check_error(name, f, c, a);
        cases++;
        kw_arena_free(a);
        kw_buf_cleanup(&text);
        free(names[i]);
    }
    free(names);
    print_message("%d golden cases\n", cases);
    fixture_free(f);
}

/* ---- SigV4: AWS's published test suite (aws-sig-v4-test-suite) ---------------------- */

static char *sign(const char *method, const char *path, const char *query, const char *payload)
{
    struct dp_sigv4_header hs[] = {{"Host", "example.amazonaws.com"},
                                   {"X-Amz-Date", "20150830T123600Z"}};
    struct dp_sigv4 s = {
        .method = method,
        .path = path,
        .query = query,
        .headers = hs,
        .nheaders = 2,
        .payload = payload,
        .payload_len = strlen(payload),
        .amz_date = "20150830T123600Z",
        .region = "us-east-1",
        .service = "service",
        .access_key_id = "AKIDEXAMPLE",
        .secret_access_key = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
    };
    struct kw_buf out;
    kw_buf_init(&out, 4096);
    assert_int_equal(dp_sigv4_authorization(&s, &out), KW_OK);
    return out.data;
}

#define CRED                                                                                       \
    "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "            \
    "SignedHeaders=host;x-amz-date, Signature="

static void test_sigv4_vectors(void **state)
{
    (void)state;
    static const struct {
        const char *name, *method, *path, *query, *payload, *signature;
    } v[] = {
        {"get-vanilla", "GET", "/", NULL, "",
         "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"},
        {"get-vanilla-query-order-key-case", "GET", "/", "Param2=value2&Param1=value1", "",
         "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"},
        {"post-vanilla", "POST", "/", NULL, "",
         "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"},
        {"get-utf8", "GET", "/\xe1\x88\xb4", NULL, "",
         "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(v); i++) {
        char *got = sign(v[i].method, v[i].path, v[i].query, v[i].payload);
        char want[512];
        snprintf(want, sizeof(want), "%s%s", CRED, v[i].signature);
        if (strcmp(got, want) != 0)
            fail_msg("%s:\n  expected %s\n  got      %s", v[i].name, want, got);
        free(got);
    }
}

/* The canonical request of a Bedrock path: the model id's %3A is encoded again. */
static void test_sigv4_bedrock_path(void **state)
{
    (void)state;
    struct dp_sigv4_header hs[] = {{"host", "bedrock-runtime.us-east-1.amazonaws.com"},
                                   {"x-amz-date", "20240101T000000Z"}};
    struct dp_sigv4 s = {.method = "POST",
                         .path = "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                         .headers = hs,
                         .nheaders = 2,
                         .payload = "{}",
                         .payload_len = 2};
    struct kw_buf out;
    kw_buf_init(&out, 4096);
    assert_int_equal(dp_sigv4_canonical_request(&s, &out), KW_OK);
    char hash[65];
    dp_sigv4_sha256_hex("{}", 2, hash);
    char want[1024];
    snprintf(want, sizeof(want),
             "POST\n/model/anthropic.claude-3-haiku-20240307-v1%%253A0/converse\n\n"
             "host:bedrock-runtime.us-east-1.amazonaws.com\nx-amz-date:20240101T000000Z\n\n"
             "host;x-amz-date\n%s",
             hash);
    assert_string_equal(out.data, want);
    kw_buf_cleanup(&out);
}

/* ---- the event-stream decoder ---------------------------------------------------------- */

struct seen {
    struct kw_buf text;
};

static int on_msg(void *ud, const struct dp_es_message *m)
{
    struct seen *s = ud;
    kw_buf_printf(&s->text, "%s|%s|%s|%.*s\n", m->message_type, m->event_type, m->exception_type,
                  (int)m->payload_len, m->payload);
    return KW_OK;
}

static void frames(struct kw_buf *b)
{
    const char *n1[] = {":event-type", ":content-type", ":message-type"};
    const char *v1[] = {"contentBlockDelta", "application/json", "event"};
    const char *n2[] = {":exception-type", ":content-type", ":message-type"};
    const char *v2[] = {"throttlingException", "application/json", "exception"};
    const char p1[] = "{\"contentBlockIndex\":0,\"delta\":{\"text\":\"Hi\"},\"p\":\"abcd\"}";
    const char p2[] = "{\"message\":\"Too many requests\"}";
    assert_int_equal(dp_es_encode(b, n1, v1, 3, p1, sizeof(p1) - 1), KW_OK);
    assert_int_equal(dp_es_encode(b, n1, v1, 3, "", 0), KW_OK); /* an empty payload */
    assert_int_equal(dp_es_encode(b, n2, v2, 3, p2, sizeof(p2) - 1), KW_OK);
}

static char *decode(const struct kw_buf *b, const size_t *cuts, size_t ncuts, int *rc, char *err)
{
    struct dp_es p;
    struct seen s;
    kw_buf_init(&s.text, 1 << 20);
    dp_es_init(&p, 1 << 16);
    size_t at = 0;
    *rc = KW_OK;
    for (size_t i = 0; i <= ncuts && *rc == KW_OK; i++) {
        size_t end = cuts != NULL && i < ncuts ? cuts[i] : b->len;
        *rc = dp_es_feed(&p, b->data + at, end - at, on_msg, &s, err, 160);
        at = end;
    }
    dp_es_cleanup(&p);
    return s.text.data != NULL ? s.text.data : strdup("");
}

static void test_eventstream_splits(void **state)
{
    (void)state;
    struct kw_buf b;
    kw_buf_init(&b, 1 << 20);
    frames(&b);
    int rc;
    char err[160];
    char *whole = decode(&b, NULL, 0, &rc, err);
    assert_int_equal(rc, KW_OK);
    assert_string_equal(
        whole, "event|contentBlockDelta||{\"contentBlockIndex\":0,\"delta\":{\"text\":\"Hi\"},"
               "\"p\":\"abcd\"}\nevent|contentBlockDelta||\n"
               "exception||throttlingException|{\"message\":\"Too many requests\"}\n");
    for (size_t i = 1; i < b.len; i++)
        for (size_t j = i + 1; j < b.len; j += 7) {
            size_t cuts[2] = {i, j};
            char *got = decode(&b, cuts, 2, &rc, err);
            assert_int_equal(rc, KW_OK);
            assert_string_equal(got, whole);
            free(got);
        }
    free(whole);
    kw_buf_cleanup(&b);
}

static void test_eventstream_errors(void **state)
{
    (void)state;
    struct kw_buf b;
    int rc;
    char err[160];
    /* every single-bit flip is caught by one of the two CRCs (or a length check) */
    kw_buf_init(&b, 1 << 20);
    frames(&b);
    size_t first = (size_t)((unsigned char)b.data[0] << 24 | (unsigned char)b.data[1] << 16 |
                            (unsigned char)b.data[2] << 8 | (unsigned char)b.data[3]);
    for (size_t i = 0; i < first; i++) {
        b.data[i] ^= 0x10;
        free(decode(&b, NULL, 0, &rc, err));
        assert_int_equal(rc, KW_ERROR);
        b.data[i] ^= 0x10;
    }
    b.data[9] ^= 1; /* the prelude CRC itself */
    free(decode(&b, NULL, 0, &rc, err));
    assert_int_equal(rc, KW_ERROR);
    assert_string_equal(err, "event stream: prelude CRC mismatch");
    b.data[9] ^= 1;
    b.data[first - 1] ^= 1; /* the message CRC */
    free(decode(&b, NULL, 0, &rc, err));
    assert_string_equal(err, "event stream: message CRC mismatch");
    kw_buf_cleanup(&b);
    /* a message longer than the limit is refused from its prelude */
    kw_buf_init(&b, 1 << 20);
    char big[70000];
    memset(big, 'x', sizeof(big));
    const char *n[] = {":message-type"}, *v[] = {"event"};
    assert_int_equal(dp_es_encode(&b, n, v, 1, big, sizeof(big)), KW_OK);
    free(decode(&b, NULL, 0, &rc, err));
    assert_int_equal(rc, KW_ERROR);
    assert_non_null(strstr(err, "out of range"));
    kw_buf_cleanup(&b);
}

struct es_chunked {
    struct kw_buf *text;
    size_t step;
};

static int count_message(void *ud, const struct dp_es_message *m)
{
    (void)m;
    (*(size_t *)ud)++;
    return KW_OK;
}

struct es_run {
    struct dp_es p;
    size_t n;
    char err[128];
};

static int es_piece(void *ud, const char *p, size_t n)
{
    struct es_run *run = ud;
    return dp_es_feed(&run->p, p, n, count_message, &run->n, run->err, sizeof(run->err));
}

static void es_feed_chunked(void *arg)
{
    const struct es_chunked *c = arg;
    struct es_run run = {.n = 0};
    dp_es_init(&run.p, 8u << 20);
    assert_int_equal(kwt_feed_chunked(c->text->data, c->text->len, c->step, es_piece, &run), KW_OK);
    assert_true(run.n > 0);
    dp_es_cleanup(&run.p);
}

/* One event-stream message near the limit, arriving in 4 KiB reads, costs what the same
 * bytes as small messages cost (the decoder neither rescans nor recopies what it holds). */
static void test_eventstream_linear(void **state)
{
    (void)state;
    const char *names[] = {":message-type", ":event-type"}, *values[] = {"event", "chunk"};
    size_t plen = (4u << 20) - 1024;
    char *payload = malloc(plen);
    memset(payload, 'p', plen);
    struct kw_buf big, small;
    kw_buf_init(&big, 16u << 20);
    kw_buf_init(&small, 16u << 20);
    assert_int_equal(dp_es_encode(&big, names, values, 2, payload, plen), KW_OK);
    while (small.len < big.len)
        assert_int_equal(dp_es_encode(&small, names, values, 2, payload, 200), KW_OK);
    struct es_chunked a = {&big, 4096}, b = {&small, 4096};
    kwt_assert_linear("one 4 MiB event-stream message vs 240-byte messages", es_feed_chunked, &a,
                      es_feed_chunked, &b, 8.0);
    kw_buf_cleanup(&big);
    kw_buf_cleanup(&small);
    free(payload);
}

/* Every provider has its row in both tables, and they agree: a name that parses back, a
 * GenAI name, ops exactly when it is supported (the OpenAI pass-through for the compatible
 * ones), an https default address when it has one, a backend of it that --check accepts
 * (or refuses by name when unsupported). */
static void test_provider_registry(void **state)
{
    (void)state;
    for (int p = 0; p < KW_PROVIDER__COUNT; p++) {
        const struct kw_provider_info *in = kw_provider_info((enum kw_provider)p);
        const struct dp_provider_desc *d = dp_provider_desc((enum kw_provider)p);
        assert_non_null(in->name);
        assert_int_equal(kw_provider_parse(in->name), p);
        assert_true(in->genai_name != NULL && in->genai_name[0] != '\0');
        assert_true(in->supported == (d->ops != NULL));
        if (in->openai_compatible)
            assert_ptr_equal(d->ops, &dp_provider_openai);
        if (in->default_base_url != NULL)
            assert_int_equal(strncmp(in->default_base_url, "https://", 8), 0);
        char yaml[1024];
        snprintf(yaml, sizeof(yaml),
                 SECRETS "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\n"
                         "metadata: {name: b, namespace: t}\nspec:\n  provider: %s\n"
                         "  upstream: {baseURL: \"http://up.example:8080\"}\n"
                         "  credentials:\n    secretRef: {name: keys%s}\n%s",
                 in->name, p == KW_PROVIDER_VERTEX_AI ? ", key: vertexToken" : "",
                 p == KW_PROVIDER_AWS_BEDROCK    ? "    bedrock: {region: eu-west-1}\n"
                 : p == KW_PROVIDER_VERTEX_AI    ? "    vertex: {project: p, region: us-east5}\n"
                 : p == KW_PROVIDER_AZURE_OPENAI ? "    azure: {deployment: d}\n"
                                                 : "");
        struct kw_config *cfg = kw_config_new();
        bool refused = kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml)) != KW_OK ||
                       kw_config_check(cfg) != KW_OK;
        if (refused != !in->supported)
            fail_msg("provider %s: %s", in->name, refused ? "refused" : "accepted");
        kw_config_free(cfg);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigv4_vectors),      cmocka_unit_test(test_sigv4_bedrock_path),
        cmocka_unit_test(test_eventstream_splits), cmocka_unit_test(test_eventstream_errors),
        cmocka_unit_test(test_eventstream_linear), cmocka_unit_test(test_golden),
        cmocka_unit_test(test_provider_registry),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
