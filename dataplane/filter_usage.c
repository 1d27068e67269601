/* The usage record as filters (docs/usage.md): one record for every request that reached
 * routing, handed to the ledger (ledger.h).
 *
 * "usage-admit" (limit phase): with a full spool (maxBytes not yet shipped) onFull: Reject
 * answers 503 so billing stays whole, Drop lets the request through (its record is
 * dropped and counted). It also marks the request for a commit.
 *
 * "usage" (respond phase): the answer is held (respond.h) while the record goes to the
 * ledger; when the ledger has written it (the spool's file: it survives a killed process)
 * the worker is woken and the answer released. So a client never holds a complete answer
 * whose record could be lost to a crash of the data plane. Answers that end otherwise
 * (an error, a stream the client left) are recorded when the request ends, without
 * waiting. */
#include <arpa/inet.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "filter.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/metrics.h"
#include "ledger.h"
#include "phases.h"
#include "provider.h"
#include "ratelimit.h"
#include "server.h"

struct conf {
    struct dp_ledger *ledger;
    char node[256];
    struct kw_metric *records;
};

struct ctx {
    struct dp_ledger_item *item; /* submitted, waiting for the ledger */
    bool recorded;               /* a record was handed over */
    bool acked;
    int error; /* the ledger could not write it: the answer is not released */
    int64_t chunks;
};

static int init(struct dp_server *s, void **out)
{
    *out = NULL;
    if (!s->dp->usage.enabled)
        return KW_OK;
    struct conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KW_ERROR;
    *out = c;
    const char *id = s->dp->discovery.node_id;
    if (id != NULL)
        snprintf(c->node, sizeof(c->node), "%s", id);
    else if (gethostname(c->node, sizeof(c->node) - 1) != 0)
        snprintf(c->node, sizeof(c->node), "knoway-dataplane-%d", (int)getpid());
    c->records = kw_metrics_add(s->metrics, KW_METRIC_COUNTER, "knoway_usage_records_total",
                                "Usage records by what became of them on this data plane.",
                                (const char *const[]){"result", NULL}, 4, NULL, 0);
    char err[512];
    if (dp_ledger_start(&c->ledger, s->dp, s->workers, s->nworkers, err, sizeof(err)) != KW_OK) {
        kw_log(KW_LOG_ERROR, "cannot start the usage ledger", "error", err, NULL);
        return KW_ERROR;
    }
    return KW_OK;
}

static void fini(void *p)
{
    struct conf *c = p;
    if (c == NULL)
        return;
    dp_ledger_stop(c->ledger);
    free(c);
}

static struct conf *conf_of(struct dp_request *r)
{
    return dp_filter_conf(r->w->server, &dp_filter_usage);
}

/* ---- admission (limit phase) ------------------------------------------------------------ */

static int admit(struct dp_request *r, void *p)
{
    struct conf *c = conf_of(r);
    (void)p;
    if (c == NULL)
        return KW_DECLINED;
    /* onFull: Drop lets it through: the ledger drops (and counts) records while full */
    if (dp_ledger_full(c->ledger) && !dp_ledger_drop_when_full(c->ledger))
        return dp_error_set(r, 503, "server_error", "usage_spool_full", NULL,
                            "The usage spool is full (its sinks are behind); the request is "
                            "refused so that no usage goes unrecorded. Try again later.");
    r->commit = true;
    if (r->stream)
        r->watch_chunks = true; /* a stream the client leaves is recorded with what it got */
    return KW_OK;
}

/* ---- the record --------------------------------------------------------------------------- */

/* Records are built for every request: appends and a digit loop, no printf (it was most
 * of a record's cost, callgrind). */
static void key(struct kw_buf *b, const char *k)
{
    kw_buf_append(b, ",\"", 2);
    kw_buf_append(b, k, strlen(k));
    kw_buf_append(b, "\":", 2);
}

static void field_str(struct kw_buf *b, const char *k, const char *v)
{
    key(b, k);
    if (v == NULL)
        kw_buf_append(b, "null", 4);
    else
        kw_json_write_string(b, v, strlen(v));
}

static void field_int(struct kw_buf *b, const char *k, int64_t v)
{
    char n[24];
    key(b, k);
    kw_buf_append(b, n, dp_rl_format_int(v, n));
}

static char *digits(char *p, unsigned v, int width)
{
    for (int i = width - 1; i >= 0; i--, v /= 10)
        p[i] = (char)('0' + v % 10);
    return p + width;
}

/* 2026-12-02T05:16:40.004Z */
static void rfc3339(int64_t unix_ms, char out[32])
{
    time_t t = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char *p = out;
    p = digits(p, (unsigned)tm.tm_year + 1900, 4);
    *p++ = '-';
    p = digits(p, (unsigned)tm.tm_mon + 1, 2);
    *p++ = '-';
    p = digits(p, (unsigned)tm.tm_mday, 2);
    *p++ = 'T';
    p = digits(p, (unsigned)tm.tm_hour, 2);
    *p++ = ':';
    p = digits(p, (unsigned)tm.tm_min, 2);
    *p++ = ':';
    p = digits(p, (unsigned)tm.tm_sec, 2);
    *p++ = '.';
    p = digits(p, (unsigned)(unix_ms % 1000), 3);
    *p++ = 'Z';
    *p = '\0';
}

static void build(struct dp_request *r, struct ctx *x, struct conf *c, unsigned status,
                  struct kw_buf *b)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    int64_t now_real = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    int64_t dur = dp_now_ms() - r->start_ms;
    char t0[32], t1[32];
    rfc3339(now_real - dur, t0);
    rfc3339(now_real, t1);
    /* the primary key is always the gateway's: a client's x-request-id (which r->id adopts
     * for tracing) could repeat and would collapse rows */
    const char *crid = dp_request_header(r, "x-request-id");
    bool client_id = crid != NULL && strcmp(crid, r->id) == 0;
    char own[48];
    if (client_id)
        snprintf(own, sizeof(own), "%x-%llx-%llx", r->w->index,
                 (unsigned long long)r->w->server->boot_id, (unsigned long long)++r->w->next_id);
    kw_buf_puts(b, "{\"request_id\":");
    kw_json_write_string(b, client_id ? own : r->id, strlen(client_id ? own : r->id));
    field_str(b, "client_request_id", client_id ? r->id : NULL);
    field_str(b, "start_time", t0);
    field_str(b, "end_time", t1);
    field_str(b, "node", c->node);
    key(b, "consumer");
    if (r->consumer != NULL) {
        const struct kw_meta *m = &r->consumer->meta;
        kw_buf_append(b, "\"", 1);
        kw_buf_append(b, m->ns, strlen(m->ns)); /* DNS names: nothing to escape */
        kw_buf_append(b, "/", 1);
        kw_buf_append(b, m->name, strlen(m->name));
        kw_buf_append(b, "\"", 1);
    } else {
        kw_buf_append(b, "null", 4);
    }
    key(b, "user");
    if (r->user != NULL) /* client input: at most 128 bytes */
        kw_json_write_string(b, r->user, strnlen(r->user, 128));
    else
        kw_buf_append(b, "null", 4);
    key(b, "attributes");
    if (r->consumer == NULL || r->consumer->nattributes == 0) {
        kw_buf_puts(b, "null");
    } else {
        kw_buf_puts(b, "{");
        for (size_t i = 0; i < r->consumer->nattributes; i++) {
            const struct kw_header *a = &r->consumer->attributes[i];
            if (i > 0)
                kw_buf_puts(b, ",");
            kw_json_write_string(b, a->name, strlen(a->name));
            kw_buf_puts(b, ":");
            kw_json_write_string(b, a->value, strlen(a->value));
        }
        kw_buf_puts(b, "}");
    }
    field_str(b, "route", r->route != NULL ? r->route->meta.name : NULL);
    field_str(b, "backend", r->backend != NULL ? r->backend->meta.name : NULL);
    field_str(b, "provider", r->backend != NULL ? kw_provider_name(r->backend->provider) : NULL);
    field_str(b, "model", r->model);
    field_str(b, "upstream_model", r->upstream_model);
    field_str(b, "api", r->api_name);
    key(b, "stream");
    kw_buf_puts(b, r->stream ? "true" : "false");
    field_int(b, "status", status);
    field_str(b, "error_type",
              status >= 400 && r->err.code[0] != '\0' ? r->err.code
              : status >= 400                         ? r->err.type
                                                      : NULL);
    /* Without the provider's usage (a stream the client left, or one cut) an upstream that
     * started answering has billed the input: the count it reported at the stream's start,
     * else an estimate from the body (4 bytes a token, as the limits reserve), flagged */
    int64_t in = r->usage.have ? r->usage.prompt : 0;
    int64_t out = r->usage.have ? r->usage.completion : x->chunks; /* a stream left: what it got */
    int64_t cached = r->usage.have ? r->usage.cached : 0;
    bool estimated = false;
    if (!r->usage.have && r->attempts > 0 && (r->client_gone || x->chunks > 0)) {
        estimated = r->usage.input_seen < 0;
        in = estimated ? (int64_t)(r->body_len / 4) : r->usage.input_seen;
    }
    field_int(b, "attempts", r->attempts);
    field_int(b, "input_tokens", in);
    key(b, "input_tokens_estimated");
    kw_buf_puts(b, estimated ? "true" : "false");
    field_int(b, "output_tokens", out);
    field_int(b, "cached_tokens", cached);
    if (r->usage.have)
        field_int(b, "reasoning_tokens", r->usage.reasoning);
    else
        field_str(b, "reasoning_tokens", NULL);
    char cost[48];
    kw_usd_format(dp_cost_nano(r->backend, in, cached, out), cost, sizeof(cost));
    field_str(b, "cost", cost);
    key(b, "provider_usage");
    if (r->usage.nraw == 0) {
        kw_buf_puts(b, "null");
    } else {
        for (unsigned i = 0; i < r->usage.nraw; i++)
            kw_buf_printf(b, "%s\"%s\":%lld", i == 0 ? "{" : ",", r->usage.raw[i].name,
                          (long long)r->usage.raw[i].value);
        kw_buf_puts(b, "}");
    }
    field_int(b, "duration_ms", dur);
    if (r->up.ttfb_ms >= 0 && r->attempts > 0)
        field_int(b, "ttft_ms", r->up.ttfb_ms);
    else
        field_str(b, "ttft_ms", NULL);
    kw_buf_append(b, "}", 1);
}

static bool submit(struct dp_request *r, struct ctx *x, unsigned status, bool wait)
{
    struct conf *c = conf_of(r);
    x->recorded = true;
    struct kw_buf b;
    kw_buf_init(&b, 64 * 1024);
    build(r, x, c, status, &b);
    struct dp_ledger_item *it =
        b.data != NULL ? dp_ledger_submit(c->ledger, r->w->index, b.data, b.len, wait ? r : NULL)
                       : NULL;
    kw_buf_cleanup(&b);
    kw_metric_add(c->records, 1 + r->w->index,
                  (const char *const[]){it != NULL ? "submitted" : "dropped"}, 1);
    if (it != NULL && wait)
        x->item = it;
    return it != NULL && wait;
}

/* Respond phase, after the answer is prepared (and held). */
static int on_request(struct dp_request *r, void *p)
{
    struct ctx *x = p;
    if (conf_of(r) == NULL || x == NULL || !r->commit)
        return KW_DECLINED;
    if (x->error != 0)
        return dp_error_set(r, 503, "server_error", "usage_spool_unavailable", NULL,
                            "The usage record of this request could not be written (%s); the "
                            "answer is withheld so that no usage goes unrecorded. Try again "
                            "later.",
                            strerror(x->error));
    if (x->acked || x->recorded)
        return x->item != NULL && !x->acked ? KW_AGAIN : KW_OK;
    unsigned status = r->state == DP_ST_STREAM ? 200 : r->pending_status;
    return submit(r, x, status, true) ? KW_AGAIN : KW_OK;
}

static int on_chunk(struct dp_request *r, void *p, const struct kw_node *chunk)
{
    struct ctx *x = p;
    (void)r;
    const struct kw_node *ch = kw_node_get(chunk, "choices");
    const struct kw_node *d = ch != NULL && ch->type == KW_NODE_SEQ && ch->n > 0
                                  ? kw_node_get(ch->items[0], "delta")
                                  : NULL;
    const struct kw_node *t = kw_node_get(d, "content");
    if (x != NULL && t != NULL && t->type == KW_NODE_STRING && t->len > 0)
        x->chunks++;
    return KW_OK;
}

static void on_end(struct dp_request *r, void *p)
{
    struct ctx *x = p;
    if (conf_of(r) == NULL || x == NULL)
        return;
    if (x->item != NULL && !x->acked)
        atomic_store(&x->item->waiter, NULL); /* the request goes: the ack frees the item */
    x->item = NULL;
    if (x->recorded || r->route == NULL)
        return; /* recorded, or never reached routing */
    if (strcmp(r->err.code, "usage_spool_full") == 0)
        return; /* refused because the spool is full: it would only fill it further */
    submit(r, x, r->status != 0 ? r->status : 499, false);
}

/* The ledger wrote records this worker waits for: release their answers. */
static void on_wake(struct dp_worker *w, void *p)
{
    struct conf *c = p;
    if (c == NULL)
        return;
    unsigned ix = dp_filter_index(w->server, &dp_filter_usage);
    struct dp_ledger_item *it = dp_ledger_take_acked(c->ledger, w->index);
    while (it != NULL) {
        struct dp_ledger_item *next = it->next;
        struct dp_request *r = atomic_load(&it->waiter); /* NULL once its request ended */
        int error = it->error;
        free(it);
        struct ctx *x = r != NULL && ix < DP_MAX_FILTERS ? r->fctx[ix] : NULL;
        if (x != NULL) {
            x->acked = true;
            x->error = error;
            x->item = NULL;
            dp_engine_resume(r);
        }
        it = next;
    }
}

const struct dp_filter_ops dp_filter_usage_admit = {
    .name = "usage-admit",
    .phase = DP_PH_LIMIT,
    .on_request = admit,
};

const struct dp_filter_ops dp_filter_usage = {
    .name = "usage",
    .phase = DP_PH_RESPOND,
    .ctx_size = sizeof(struct ctx),
    .init = init,
    .fini = fini,
    .on_request = on_request,
    .on_chunk = on_chunk,
    .on_end = on_end,
    .on_wake = on_wake,
};

/* ---- reading it: /debug/usage and metrics (admin thread) ----------------------------------- */

int dp_usage_debug(struct dp_server *s, struct kw_buf *b)
{
    struct conf *c = dp_filter_conf(s, &dp_filter_usage);
    if (c == NULL)
        return KW_DECLINED;
    struct dp_ledger_stats st;
    dp_ledger_stats(c->ledger, &st);
    kw_buf_printf(b,
                  "{\"spool\":{\"dir\":\"%s\",\"bytes\":%llu,\"maxBytes\":%llu,\"end\":%llu,"
                  "\"repairs\":%llu},\"queueDepth\":%llu,\"records\":{\"submitted\":%llu,"
                  "\"written\":%llu,\"dropped\":%llu},\"sinks\":[",
                  s->dp->usage.dir, (unsigned long long)st.spool_bytes,
                  (unsigned long long)s->dp->usage.max_bytes, (unsigned long long)st.spool_end,
                  (unsigned long long)st.repairs, (unsigned long long)st.queue_depth,
                  (unsigned long long)st.submitted, (unsigned long long)st.written,
                  (unsigned long long)st.dropped);
    for (size_t i = 0; i < st.nsinks; i++) {
        const struct dp_ledger_sink_stats *k = &st.sinks[i];
        kw_buf_printf(b,
                      "%s{\"name\":\"%s\",\"shippedOffset\":%llu,\"shippedRecords\":%llu,"
                      "\"failures\":%llu,\"lagSeconds\":%.3f,\"lastError\":",
                      i > 0 ? "," : "", k->name, (unsigned long long)k->shipped_offset,
                      (unsigned long long)k->shipped_records, (unsigned long long)k->failures,
                      (double)k->lag_ms / 1000.0);
        if (k->last_error[0] != '\0')
            kw_json_write_string(b, k->last_error, strlen(k->last_error));
        else
            kw_buf_puts(b, "null");
        kw_buf_puts(b, "}");
    }
    return kw_buf_puts(b, "]}\n");
}

void dp_usage_metrics(struct dp_server *s, struct kw_buf *b)
{
    struct conf *c = dp_filter_conf(s, &dp_filter_usage);
    if (c == NULL)
        return;
    struct dp_ledger_stats st;
    dp_ledger_stats(c->ledger, &st);
    kw_buf_printf(b,
                  "# HELP knoway_usage_records_written_total Usage records written to the spool.\n"
                  "# TYPE knoway_usage_records_written_total counter\n"
                  "knoway_usage_records_written_total %llu\n"
                  "# HELP knoway_usage_records_dropped_total Usage records lost: onFull: Drop, "
                  "or a spool write that failed.\n"
                  "# TYPE knoway_usage_records_dropped_total counter\n"
                  "knoway_usage_records_dropped_total %llu\n"
                  "# HELP knoway_usage_spool_bytes Spooled bytes not yet shipped by every sink.\n"
                  "# TYPE knoway_usage_spool_bytes gauge\n"
                  "knoway_usage_spool_bytes %llu\n"
                  "# HELP knoway_usage_queue_depth Records handed over, not yet written.\n"
                  "# TYPE knoway_usage_queue_depth gauge\n"
                  "knoway_usage_queue_depth %llu\n"
                  "# HELP knoway_usage_spool_repairs_total Torn or corrupted records recovered "
                  "from.\n"
                  "# TYPE knoway_usage_spool_repairs_total counter\n"
                  "knoway_usage_spool_repairs_total %llu\n",
                  (unsigned long long)st.written, (unsigned long long)st.dropped,
                  (unsigned long long)st.spool_bytes, (unsigned long long)st.queue_depth,
                  (unsigned long long)st.repairs);
    kw_buf_puts(b, "# HELP knoway_usage_records_shipped_total Usage records shipped, by sink.\n"
                   "# TYPE knoway_usage_records_shipped_total counter\n");
    for (size_t i = 0; i < st.nsinks; i++)
        kw_buf_printf(b, "knoway_usage_records_shipped_total{sink=\"%s\"} %llu\n", st.sinks[i].name,
                      (unsigned long long)st.sinks[i].shipped_records);
    kw_buf_puts(b, "# HELP knoway_usage_sink_lag_seconds How long a sink has been failing to "
                   "ship (0: it is keeping up).\n"
                   "# TYPE knoway_usage_sink_lag_seconds gauge\n");
    for (size_t i = 0; i < st.nsinks; i++)
        kw_buf_printf(b, "knoway_usage_sink_lag_seconds{sink=\"%s\"} %.3f\n", st.sinks[i].name,
                      (double)st.sinks[i].lag_ms / 1000.0);
}
