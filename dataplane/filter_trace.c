/* W3C Trace Context (https://www.w3.org/TR/trace-context/) as filters: the trace a request
 * belongs to, carried into the access log and to the upstream.
 *
 * "trace" (auth phase, the first thing after the body): a valid `traceparent` from the
 * client joins its trace (its trace id, its span as the parent, its sampled flag); an
 * absent or malformed one starts a new trace (random ids, sampled). The request gets a
 * span id of its own. `tracestate` is kept as it came (at most 512 bytes).
 *
 * "trace-propagate" (transform phase, every attempt): the upstream gets `traceparent`
 * with the request's trace id and span id, and the client's `tracestate`.
 *
 * With DataPlane spec.telemetry.otlp (or OTEL_EXPORTER_OTLP_ENDPOINT) sampled requests
 * are exported (knoway/otlp.h): a server span per request and a client span per upstream attempt
 * (retries and fallbacks visible), with OpenTelemetry's GenAI attributes, the response's
 * id and finish reasons (a sampled stream's chunks are parsed for them) and an event at
 * the first token. New traces are sampled at sampleRatio; a client's trace keeps its
 * sampled flag (parent-based) when telemetry.clientSampling says so: Authenticated (the
 * default: once an API key or a token was verified), Always or Never; other requests of a
 * client's trace are sampled at sampleRatio. Message content only with captureContent:
 * true. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dp_limits.h"
#include "filter.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/otlp.h"
#include "server.h"
#include "upstream.h"

#define CAPTURE_MAX (64 * 1024) /* captured output text per span */

struct conf {
    struct kw_otlp *otlp;
    double ratio;
    bool capture;
    enum kw_client_sampling sampling;
};

/* Per request: what the answer said (spans only). */
struct ctx {
    char resp_id[128];
    char reasons[4][24];
    unsigned nreasons;
    struct kw_buf out; /* captured output text (captureContent) */
    bool out_init;
};

static int init(struct dp_server *s, void **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KW_ERROR;
    *out = c;
    c->ratio = s->dp->telemetry.sample_ratio;
    c->sampling = s->dp->telemetry.client_sampling;
    c->capture = s->dp->telemetry.capture_content;
    struct kw_otlp_config oc = {
        .endpoint = s->dp->telemetry.endpoint,
        .headers = s->dp->telemetry.headers,
        .nheaders = s->dp->telemetry.nheaders,
        .timeout_ms = s->dp->telemetry.timeout_ms,
        .protocol = s->dp->telemetry.protobuf ? KW_OTLP_PROTOBUF : KW_OTLP_JSON,
        .service = "knoway-dataplane",
        /* queued spans are memory like requests' (a hung collector held 280 MB) */
        .account = &s->mem_used,
        .budget = (long long)s->dp->limits.max_memory_bytes,
    };
    bool full;
    kw_otlp_from_env(&oc, &full);
    if (oc.endpoint == NULL || oc.endpoint[0] == '\0')
        return KW_OK;
    c->otlp = kw_otlp_start(&oc, full);
    if (c->otlp == NULL)
        return KW_ERROR;
    kw_log(KW_LOG_INFO, "exporting spans over OTLP/HTTP", "endpoint", oc.endpoint, "protocol",
           oc.protocol == KW_OTLP_PROTOBUF ? "protobuf" : "json", NULL);
    return KW_OK;
}

static void fini(void *p)
{
    struct conf *c = p;
    if (c == NULL)
        return;
    kw_otlp_stop(c->otlp, DP_SPAN_DRAIN_MS); /* a hung collector cannot hold up the exit */
    free(c);
}

static bool hex_of(const char *s, size_t n)
{
    bool nonzero = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        nonzero |= c != '0';
    }
    return nonzero;
}

/* 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>; a later version may append
 * fields after a '-' (the spec's forward compatibility). */
static bool parse(const char *tp, struct dp_request *r)
{
    size_t len = strlen(tp);
    if (len < 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-')
        return false;
    bool hexver = (tp[0] >= '0' && tp[0] <= '9') || (tp[0] >= 'a' && tp[0] <= 'f');
    hexver &= (tp[1] >= '0' && tp[1] <= '9') || (tp[1] >= 'a' && tp[1] <= 'f');
    if (!hexver || (tp[0] == 'f' && tp[1] == 'f'))
        return false;
    if (tp[0] == '0' && tp[1] == '0' && len != 55)
        return false; /* version 00 has exactly these fields */
    if (len > 55 && tp[55] != '-')
        return false;
    if (!hex_of(tp + 3, 32) || !hex_of(tp + 36, 16))
        return false;
    char flags[3] = {tp[53], tp[54], '\0'};
    bool fhex = (flags[0] >= '0' && flags[0] <= '9') || (flags[0] >= 'a' && flags[0] <= 'f');
    fhex &= (flags[1] >= '0' && flags[1] <= '9') || (flags[1] >= 'a' && flags[1] <= 'f');
    if (!fhex)
        return false;
    memcpy(r->trace.trace_id, tp + 3, 32);
    r->trace.trace_id[32] = '\0';
    memcpy(r->trace.parent_id, tp + 36, 16);
    r->trace.parent_id[16] = '\0';
    r->trace.client_sampled = (strtoul(flags, NULL, 16) & 1) != 0;
    return true;
}

static int on_request(struct dp_request *r, void *ctx)
{
    (void)ctx;
    if (r->trace.trace_id[0] != '\0')
        return KW_DECLINED; /* a retry comes back through the phases: once */
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    const char *tp = dp_request_header(r, "traceparent");
    /* sampled at sampleRatio unless the client's flag is followed: always, or once the
     * client authenticated (decided at the first attempt, after the auth filter) - an
     * anonymous client must not switch tracing on for every request it sends */
    uint32_t x = (uint32_t)(kw_trace_random() >> 32);
    r->trace.sampled = c == NULL || (double)x / 4294967296.0 < c->ratio;
    if (tp == NULL || !parse(tp, r)) {
        kw_trace_random_hex(r->trace.trace_id, 16);
        r->trace.parent_id[0] = '\0';
        r->trace.decided = true;
    } else if (c != NULL && c->sampling == KW_CLIENT_SAMPLING_ALWAYS) {
        r->trace.sampled = r->trace.client_sampled;
        r->trace.decided = true;
    } else if (c != NULL && c->sampling == KW_CLIENT_SAMPLING_NEVER) {
        r->trace.decided = true;
    }
    kw_trace_random_hex(r->trace.span_id, 8);
    const char *ts = dp_request_header(r, "tracestate");
    if (ts != NULL && tp != NULL && r->trace.parent_id[0] != '\0' && strlen(ts) <= 512)
        r->trace.state = kw_arena_strdup(r->arena, ts);
    return KW_OK;
}

static int propagate(struct dp_request *r, void *ctx)
{
    (void)ctx;
    if (r->trace.trace_id[0] == '\0')
        return KW_DECLINED;
    kw_trace_random_hex(r->trace.attempt_id, 8); /* this attempt's client span */
    if (!r->trace.decided) { /* the client's flag: followed when it authenticated */
        if (r->authenticated)
            r->trace.sampled = r->trace.client_sampled;
        r->trace.decided = true;
    }
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    if (c != NULL && c->otlp != NULL && r->trace.sampled && r->stream)
        r->watch_chunks = true; /* the response id, finish reasons (and content) of a stream */
    char h[96];
    snprintf(h, sizeof(h), "traceparent: 00-%s-%s-%s", r->trace.trace_id, r->trace.attempt_id,
             r->trace.sampled ? "01" : "00");
    struct curl_slist *l = curl_slist_append(r->up_headers, h);
    if (l == NULL)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    r->up_headers = l;
    if (r->trace.state != NULL) {
        char *st = kw_arena_printf(r->arena, "tracestate: %s", r->trace.state);
        l = st != NULL ? curl_slist_append(r->up_headers, st) : NULL;
        if (l != NULL)
            r->up_headers = l;
    }
    return KW_OK;
}

/* ---- spans ----------------------------------------------------------------------------- */

/* Unix time minus the monotonic clock, in ns: a span converts all its monotonic times
 * (the request's clocks, in ms) with one offset, so their order is kept. */
static int64_t clock_offset(void)
{
    struct timespec mono;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    return kw_now_unix_ns() - ((int64_t)mono.tv_sec * 1000000000 + mono.tv_nsec);
}

static void span_start(struct kw_span *s, const struct dp_request *r, const char *id,
                       const char *parent, enum kw_span_kind kind)
{
    char name[320];
    snprintf(name, sizeof(name), "%s %s", dp_genai_operation(r), r->model != NULL ? r->model : "");
    kw_span_init(s, r->trace.trace_id, id, parent, name, kind);
}

static void param(struct kw_span *s, const struct dp_request *r, const char *field, const char *key)
{
    const struct kw_node *n = kw_node_get(r->json, field);
    if (n == NULL)
        return;
    if (n->type == KW_NODE_INT)
        kw_span_int(s, key, n->i);
    else if (n->type == KW_NODE_FLOAT && n->str != NULL)
        kw_span_double(s, key, strtod(n->str, NULL));
}

static void common_attrs(struct kw_span *s, const struct dp_request *r)
{
    kw_span_str(s, "gen_ai.operation.name", dp_genai_operation(r));
    if (r->backend != NULL)
        kw_span_str(s, "gen_ai.provider.name", dp_genai_provider(r->backend->provider));
    kw_span_str(s, "gen_ai.request.model", r->model);
    kw_span_str(s, "gen_ai.response.model", r->upstream_model);
    if (r->route != NULL)
        kw_span_str(s, "knoway.route", r->route->meta.name);
    if (r->backend != NULL)
        kw_span_str(s, "knoway.backend", r->backend->meta.name);
    param(s, r, "max_tokens", "gen_ai.request.max_tokens");
    param(s, r, "max_completion_tokens", "gen_ai.request.max_tokens");
    param(s, r, "temperature", "gen_ai.request.temperature");
    param(s, r, "top_p", "gen_ai.request.top_p");
    param(s, r, "frequency_penalty", "gen_ai.request.frequency_penalty");
    param(s, r, "presence_penalty", "gen_ai.request.presence_penalty");
    param(s, r, "seed", "gen_ai.request.seed");
}

static void on_attempt_start(struct dp_request *r, void *ctx)
{
    (void)ctx;
    r->trace.attempt_start_ns = kw_now_unix_ns();
}

/* A client span per upstream attempt. */
static void on_attempt(struct dp_request *r, void *ctx)
{
    (void)ctx;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    if (c == NULL || c->otlp == NULL || !r->trace.sampled || r->trace.attempt_id[0] == '\0')
        return;
    struct kw_span s;
    span_start(&s, r, r->trace.attempt_id, r->trace.span_id, KW_SPAN_CLIENT);
    s.start_ns = r->trace.attempt_start_ns;
    s.end_ns = kw_now_unix_ns();
    common_attrs(&s, r);
    if (r->up.status > 0)
        kw_span_int(&s, "http.response.status_code", r->up.status);
    bool failed = r->up.error != DP_UPERR_NONE || r->up.status >= 500 || r->up.status == 429;
    static const char *const kinds[] = {"", "connect", "timeout", "reset", "other"};
    if (r->up.error != DP_UPERR_NONE && (unsigned)r->up.error < 5)
        kw_span_str(&s, "error.type", kinds[r->up.error]);
    else if (failed)
        kw_span_str(&s, "error.type", r->up.status == 429 ? "429" : "5xx");
    if (r->up.ttfb_ms >= 0)
        kw_span_event(&s, "first_byte",
                      (r->up.start_ms + r->up.ttfb_ms) * 1000000 + clock_offset());
    s.error = failed;
    kw_otlp_submit(c->otlp, &s); /* a full queue drops and counts it */
    kw_span_cleanup(&s);
}

static void note_reason(struct ctx *x, const char *fr)
{
    for (unsigned i = 0; i < x->nreasons; i++)
        if (strcmp(x->reasons[i], fr) == 0)
            return;
    if (x->nreasons < 4)
        snprintf(x->reasons[x->nreasons++], sizeof(x->reasons[0]), "%s", fr);
}

static void capture(struct ctx *x, const char *text, size_t len)
{
    if (!x->out_init) {
        kw_buf_init(&x->out, CAPTURE_MAX);
        x->out_init = true;
    }
    kw_buf_append(&x->out, text, len); /* past the limit: the rest is left out */
}

/* The id, finish reasons and (captureContent) output of a response or chunk. */
static void take_answer(struct dp_request *r, struct ctx *x, const struct kw_node *root,
                        bool stream)
{
    const struct kw_node *id = kw_node_get(root, "id"), *choices = kw_node_get(root, "choices");
    if (id != NULL && id->type == KW_NODE_STRING && x->resp_id[0] == '\0')
        snprintf(x->resp_id, sizeof(x->resp_id), "%s", id->str);
    if (choices == NULL || choices->type != KW_NODE_SEQ)
        return;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    for (size_t i = 0; i < choices->n; i++) {
        const struct kw_node *ch = choices->items[i];
        const struct kw_node *fr = kw_node_get(ch, "finish_reason");
        if (fr != NULL && fr->type == KW_NODE_STRING)
            note_reason(x, fr->str);
        if (c == NULL || !c->capture)
            continue;
        const struct kw_node *m = kw_node_get(ch, stream ? "delta" : "message");
        const struct kw_node *t = kw_node_get(m, "content");
        if (t == NULL)
            t = kw_node_get(ch, "text"); /* /v1/completions */
        if (t != NULL && t->type == KW_NODE_STRING)
            capture(x, t->str, t->len);
    }
}

static int on_chunk(struct dp_request *r, void *ctx, const struct kw_node *chunk)
{
    if (ctx != NULL)
        take_answer(r, ctx, chunk, true);
    return KW_OK;
}

static void on_body(struct dp_request *r, void *ctx, const char *body, size_t len)
{
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    if (ctx == NULL || c == NULL || c->otlp == NULL || !r->trace.sampled)
        return;
    if (r->resp_json != NULL && body == r->up_resp.data) { /* parsed once by the provider */
        take_answer(r, ctx, r->resp_json, false);
        return;
    }
    struct kw_node *root;
    char err[64];
    kw_arena_reset(r->scratch);
    if (kw_json_parse(r->scratch, body, len, &root, err, sizeof(err)) == KW_OK)
        take_answer(r, ctx, root, false);
}

/* captureContent: what the client sent (messages, prompt or input) as JSON. */
static void input_content(struct kw_span *s, const struct dp_request *r)
{
    static const char *const fields[] = {"messages", "prompt", "input"};
    for (size_t i = 0; i < 3; i++) {
        const struct kw_node *n = kw_node_get(r->json, fields[i]);
        if (n == NULL)
            continue;
        struct kw_buf b;
        kw_buf_init(&b, CAPTURE_MAX);
        if (kw_json_write(n, &b) == KW_OK)
            kw_span_strn(s, "gen_ai.input.messages", b.data, b.len);
        kw_buf_cleanup(&b);
        return;
    }
}

/* The server span, when the request ends. */
static void on_end(struct dp_request *r, void *ctx)
{
    struct ctx *x = ctx;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    if (c == NULL || c->otlp == NULL || !r->trace.sampled || r->trace.trace_id[0] == '\0')
        goto out;
    struct kw_span s;
    span_start(&s, r, r->trace.span_id, r->trace.parent_id, KW_SPAN_SERVER);
    int64_t off = clock_offset();
    s.end_ns = kw_now_unix_ns();
    /* start_ms is the monotonic clock in whole ms (rounded down): the span starts no later
     * than the request did */
    s.start_ns = r->start_ms * 1000000 + off;
    common_attrs(&s, r);
    if (r->consumer != NULL) {
        char who[320];
        snprintf(who, sizeof(who), "%s/%s", r->consumer->meta.ns, r->consumer->meta.name);
        kw_span_str(&s, "knoway.consumer", who);
    }
    if (x != NULL) {
        kw_span_str(&s, "gen_ai.response.id", x->resp_id);
        const char *fr[4];
        for (unsigned i = 0; i < x->nreasons; i++)
            fr[i] = x->reasons[i];
        if (x->nreasons > 0)
            kw_span_strs(&s, "gen_ai.response.finish_reasons", fr, x->nreasons);
    }
    if (r->usage.have) {
        kw_span_int(&s, "gen_ai.usage.input_tokens", r->usage.prompt);
        kw_span_int(&s, "gen_ai.usage.output_tokens", r->usage.completion);
        if (r->usage.cached > 0)
            kw_span_int(&s, "gen_ai.usage.cache_read.input_tokens", r->usage.cached);
    }
    if (r->method != NULL)
        kw_span_str(&s, "http.request.method", r->method);
    kw_span_int(&s, "http.response.status_code", r->status);
    kw_span_str(&s, "http.route", r->path);
    kw_span_int(&s, "knoway.attempts", r->attempts);
    kw_span_str(&s, "knoway.request_id", r->id);
    if (r->stream && r->up.ttfb_ms >= 0 && r->attempts > 0)
        kw_span_event(&s, "gen_ai.first_token", (r->up.start_ms + r->up.ttfb_ms) * 1000000 + off);
    if (c->capture) {
        input_content(&s, r);
        if (x != NULL && x->out_init && x->out.len > 0) {
            struct kw_buf b; /* [{"role":"assistant","parts":[{"type":"text","content":...}]}] */
            kw_buf_init(&b, CAPTURE_MAX * 2);
            kw_buf_puts(&b, "[{\"role\":\"assistant\",\"parts\":[{\"type\":\"text\",\"content\":");
            kw_json_write_string(&b, x->out.data, x->out.len);
            kw_buf_puts(&b, "}]}]");
            kw_span_strn(&s, "gen_ai.output.messages", b.data, b.len);
            kw_buf_cleanup(&b);
        }
    }
    s.error = r->status >= 500;
    kw_otlp_submit(c->otlp, &s);
    kw_span_cleanup(&s);
out:
    if (x != NULL && x->out_init)
        kw_buf_cleanup(&x->out);
}

const struct dp_filter_ops dp_filter_trace = {
    .name = "trace",
    .phase = DP_PH_AUTH,
    .ctx_size = sizeof(struct ctx),
    .init = init,
    .fini = fini,
    .on_request = on_request,
    .on_attempt_start = on_attempt_start,
    .on_attempt = on_attempt,
    .on_chunk = on_chunk,
    .on_body = on_body,
    .on_end = on_end,
};

const struct dp_filter_ops dp_filter_trace_propagate = {
    .name = "trace-propagate",
    .phase = DP_PH_TRANSFORM,
    .on_request = propagate,
};

void dp_trace_metrics(struct dp_server *s, struct kw_buf *b)
{
    struct conf *c = dp_filter_conf(s, &dp_filter_trace);
    if (c == NULL || c->otlp == NULL)
        return;
    kw_otlp_write_metrics(c->otlp, b);
}
