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
 * are exported (otlp.h): a server span per request and a client span per upstream attempt
 * (retries and fallbacks visible), with OpenTelemetry's GenAI attributes. New traces are
 * sampled at sampleRatio; a client's trace keeps its sampled flag (parent-based). Message
 * content is never exported. */
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include <stdlib.h>
#include <time.h>

#include "filter.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "otlp.h"
#include "server.h"
#include "upstream.h"

struct conf {
    struct dp_otlp *otlp;
    double ratio;
};

static int init(struct dp_server *s, void **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KW_ERROR;
    *out = c;
    c->ratio = s->dp->telemetry.sample_ratio;
    const char *ep = s->dp->telemetry.endpoint;
    if (ep == NULL)
        ep = getenv("OTEL_EXPORTER_OTLP_ENDPOINT");
    if (ep == NULL || ep[0] == '\0')
        return KW_OK;
    c->otlp = dp_otlp_start(ep, s->dp->telemetry.headers, s->dp->telemetry.nheaders,
                            s->dp->telemetry.timeout_ms);
    if (c->otlp == NULL)
        return KW_ERROR;
    kw_log(KW_LOG_INFO, "exporting spans over OTLP/HTTP", "endpoint", ep, NULL);
    return KW_OK;
}

static void fini(void *p)
{
    struct conf *c = p;
    if (c == NULL)
        return;
    dp_otlp_stop(c->otlp);
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

static void random_hex(char *out, size_t bytes)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[16];
    if (RAND_bytes(b, (int)bytes) != 1)
        memset(b, 0x5a, bytes);
    for (size_t i = 0; i < bytes; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * bytes] = '\0';
    if (!hex_of(out, 2 * bytes))
        out[0] = '1'; /* all zero is invalid */
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
    r->trace.sampled = (strtoul(flags, NULL, 16) & 1) != 0;
    return true;
}

static int on_request(struct dp_request *r, void *ctx)
{
    (void)ctx;
    if (r->trace.trace_id[0] != '\0')
        return KW_DECLINED; /* a retry comes back through the phases: once */
    const char *tp = dp_request_header(r, "traceparent");
    if (tp == NULL || !parse(tp, r)) {
        struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
        random_hex(r->trace.trace_id, 16);
        r->trace.parent_id[0] = '\0';
        unsigned char b[4];
        uint32_t x = RAND_bytes(b, 4) == 1
                         ? (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3]
                         : 0;
        r->trace.sampled = c == NULL || (double)x / 4294967296.0 < c->ratio;
    }
    random_hex(r->trace.span_id, 8);
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
    random_hex(r->trace.attempt_id, 8); /* this attempt's client span */
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

/* ---- spans (OTLP JSON) -------------------------------------------------------------------- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void attr_str(struct kw_buf *b, bool *first, const char *k, const char *v)
{
    if (v == NULL || v[0] == '\0')
        return;
    kw_buf_puts(b, *first ? "{\"key\":\"" : ",{\"key\":\"");
    kw_buf_puts(b, k);
    kw_buf_puts(b, "\",\"value\":{\"stringValue\":");
    kw_json_write_string(b, v, strlen(v));
    kw_buf_puts(b, "}}");
    *first = false;
}

static void attr_int(struct kw_buf *b, bool *first, const char *k, int64_t v)
{
    kw_buf_printf(b, "%s{\"key\":\"%s\",\"value\":{\"intValue\":\"%lld\"}}", *first ? "" : ",", k,
                  (long long)v);
    *first = false;
}

/* kind 2 SERVER, 3 CLIENT; status code 2 ERROR */
static void span_head(struct kw_buf *b, const struct dp_request *r, const char *span,
                      const char *parent, int kind, int64_t start, int64_t end)
{
    kw_buf_printf(b, "{\"traceId\":\"%s\",\"spanId\":\"%s\"", r->trace.trace_id, span);
    if (parent != NULL && parent[0] != '\0')
        kw_buf_printf(b, ",\"parentSpanId\":\"%s\"", parent);
    kw_buf_puts(b, ",\"name\":");
    char name[320];
    snprintf(name, sizeof(name), "%s %s", dp_genai_operation(r), r->model != NULL ? r->model : "");
    kw_json_write_string(b, name, strlen(name));
    kw_buf_printf(b,
                  ",\"kind\":%d,\"startTimeUnixNano\":\"%lld\",\"endTimeUnixNano\":\"%lld\","
                  "\"attributes\":[",
                  kind, (long long)start, (long long)end);
}

static void common_attrs(struct kw_buf *b, bool *first, const struct dp_request *r)
{
    attr_str(b, first, "gen_ai.operation.name", dp_genai_operation(r));
    if (r->backend != NULL)
        attr_str(b, first, "gen_ai.provider.name", dp_genai_provider(r->backend->provider));
    attr_str(b, first, "gen_ai.request.model", r->model);
    attr_str(b, first, "gen_ai.response.model", r->upstream_model);
    if (r->route != NULL)
        attr_str(b, first, "knoway.route", r->route->meta.name);
    if (r->backend != NULL)
        attr_str(b, first, "knoway.backend", r->backend->meta.name);
    const struct kw_node *mt = kw_node_get(r->json, "max_tokens");
    if (mt != NULL && mt->type == KW_NODE_INT)
        attr_int(b, first, "gen_ai.request.max_tokens", mt->i);
}

static void submit(struct conf *c, const struct kw_buf *b)
{
    if (b->data != NULL)
        dp_otlp_submit(c->otlp, b->data, b->len); /* a full queue drops and counts it */
}

static void on_attempt_start(struct dp_request *r, void *ctx)
{
    (void)ctx;
    r->trace.attempt_start_ns = now_ns();
}

/* A client span per upstream attempt. */
static void on_attempt(struct dp_request *r, void *ctx)
{
    (void)ctx;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    if (c == NULL || c->otlp == NULL || !r->trace.sampled || r->trace.attempt_id[0] == '\0')
        return;
    struct kw_buf b;
    kw_buf_init(&b, 64 * 1024);
    span_head(&b, r, r->trace.attempt_id, r->trace.span_id, 3, r->trace.attempt_start_ns, now_ns());
    bool first = true;
    common_attrs(&b, &first, r);
    if (r->up.status > 0)
        attr_int(&b, &first, "http.response.status_code", r->up.status);
    bool failed = r->up.error != DP_UPERR_NONE || r->up.status >= 500 || r->up.status == 429;
    static const char *const kinds[] = {"", "connect", "timeout", "reset", "other"};
    if (r->up.error != DP_UPERR_NONE && (unsigned)r->up.error < 5)
        attr_str(&b, &first, "error.type", kinds[r->up.error]);
    else if (failed)
        attr_str(&b, &first, "error.type", r->up.status == 429 ? "429" : "5xx");
    kw_buf_puts(&b, "]");
    if (failed)
        kw_buf_puts(&b, ",\"status\":{\"code\":2}");
    kw_buf_puts(&b, "}");
    submit(c, &b);
    kw_buf_cleanup(&b);
}

/* The server span, when the request ends. */
static void on_end(struct dp_request *r, void *ctx)
{
    (void)ctx;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_trace);
    if (c == NULL || c->otlp == NULL || !r->trace.sampled || r->trace.trace_id[0] == '\0')
        return;
    int64_t end = now_ns();
    struct timespec mono;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    /* start_ms is the monotonic clock in whole ms (rounded down): the span starts no later
     * than the request did */
    int64_t start =
        end - ((int64_t)mono.tv_sec * 1000000000 + mono.tv_nsec - r->start_ms * 1000000);
    struct kw_buf b;
    kw_buf_init(&b, 64 * 1024);
    span_head(&b, r, r->trace.span_id, r->trace.parent_id, 2, start, end);
    bool first = true;
    common_attrs(&b, &first, r);
    if (r->consumer != NULL) {
        char who[320];
        snprintf(who, sizeof(who), "%s/%s", r->consumer->meta.ns, r->consumer->meta.name);
        attr_str(&b, &first, "knoway.consumer", who);
    }
    if (r->usage.have) {
        attr_int(&b, &first, "gen_ai.usage.input_tokens", r->usage.prompt);
        attr_int(&b, &first, "gen_ai.usage.output_tokens", r->usage.completion);
    }
    attr_int(&b, &first, "http.response.status_code", r->status);
    attr_str(&b, &first, "http.route", r->path);
    attr_int(&b, &first, "knoway.attempts", r->attempts);
    kw_buf_puts(&b, "]");
    if (r->status >= 500)
        kw_buf_puts(&b, ",\"status\":{\"code\":2}");
    kw_buf_puts(&b, "}");
    submit(c, &b);
    kw_buf_cleanup(&b);
}

const struct dp_filter_ops dp_filter_trace = {
    .name = "trace",
    .phase = DP_PH_AUTH,
    .init = init,
    .fini = fini,
    .on_request = on_request,
    .on_attempt_start = on_attempt_start,
    .on_attempt = on_attempt,
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
    struct dp_otlp_stats st;
    dp_otlp_stats(c->otlp, &st);
    kw_buf_printf(b,
                  "# HELP knoway_trace_spans_total Spans by what became of them: exported, "
                  "dropped (the exporter's queue was full), failed (the collector refused or "
                  "was unreachable).\n"
                  "# TYPE knoway_trace_spans_total counter\n"
                  "knoway_trace_spans_total{result=\"exported\"} %llu\n"
                  "knoway_trace_spans_total{result=\"dropped\"} %llu\n"
                  "knoway_trace_spans_total{result=\"failed\"} %llu\n",
                  (unsigned long long)st.exported, (unsigned long long)st.dropped,
                  (unsigned long long)st.failed);
}
