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
 * OTLP export of spans is not here yet (issue "observability"). */
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#include "filter.h"
#include "knoway/kw.h"
#include "upstream.h"

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
        random_hex(r->trace.trace_id, 16);
        r->trace.parent_id[0] = '\0';
        r->trace.sampled = true;
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
    char h[96];
    snprintf(h, sizeof(h), "traceparent: 00-%s-%s-%s", r->trace.trace_id, r->trace.span_id,
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

const struct dp_filter_ops dp_filter_trace = {
    .name = "trace",
    .phase = DP_PH_AUTH,
    .on_request = on_request,
};

const struct dp_filter_ops dp_filter_trace_propagate = {
    .name = "trace-propagate",
    .phase = DP_PH_TRANSFORM,
    .on_request = propagate,
};
