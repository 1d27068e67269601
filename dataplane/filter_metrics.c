/* Request metrics as a filter: counters in the registry (knoway/metrics.h), this worker's
 * shard. Label values come from configuration or fixed sets, never raw client input. */
#include <stdio.h>
#include <stdlib.h>

#include "balancer.h"
#include "continue.h"
#include "filter.h"
#include "knoway/kw.h"
#include "knoway/metrics.h"
#include "server.h"

struct conf {
    struct kw_metric *requests, *upstream_errors, *tokens, *streams_cancelled, *attempts;
    struct kw_metric *retries, *ejections, *cooldowns, *in_flight, *ewma, *continuations;
};

static int init(struct dp_server *s, void **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KW_ERROR;
    struct kw_metrics *m = s->metrics;
    c->requests = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_requests_total",
                                 "Client requests answered, by HTTP status and the API called.",
                                 (const char *const[]){"code", "api", NULL}, 2048, NULL, 0);
    c->upstream_errors = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_upstream_errors_total",
                                        "Failed upstream transfers, by kind.",
                                        (const char *const[]){"kind", NULL}, 8, NULL, 0);
    c->tokens = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_tokens_total",
                               "Tokens accounted from upstream usage, by type.",
                               (const char *const[]){"gen_ai_token_type", NULL}, 8, NULL, 0);
    c->streams_cancelled =
        kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_streams_cancelled_total",
                       "Streams the client left before the end.", NULL, 1, NULL, 0);
    c->attempts = kw_metrics_add(
        m, KW_METRIC_COUNTER, "knoway_upstream_attempts_total",
        "Upstream attempts by backend and result (HTTP status, or the transport error).",
        (const char *const[]){"knoway_backend", "result", NULL}, 4096, NULL, 0);
    static const char *const by_backend[] = {"knoway_backend", NULL};
    static const char *const by_worker[] = {"knoway_backend", "worker", NULL};
    c->retries = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_upstream_retries_total",
                                "Retries and fallbacks an upstream backend received.", by_backend,
                                4096, NULL, 0);
    c->ejections = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_upstream_ejections_total",
                                  "Circuit-breaker ejections of a backend or one of its endpoints.",
                                  by_backend, 4096, NULL, 0);
    c->cooldowns =
        kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_upstream_cooldowns_total",
                       "429 answers that put a backend in cooldown.", by_backend, 4096, NULL, 0);
    c->in_flight =
        kw_metrics_add(m, KW_METRIC_GAUGE, "knoway_upstream_in_flight",
                       "Upstream attempts in flight, by backend.", by_backend, 4096, NULL, 0);
    c->ewma = kw_metrics_add(m, KW_METRIC_GAUGE_DOUBLE, "knoway_upstream_ttfb_ewma_seconds",
                             "Peak EWMA of time to first byte the Latency strategy reads, by "
                             "backend and worker (each worker keeps its own).",
                             by_worker, 4096, NULL, 0);
    c->continuations = kw_metrics_add(
        m, KW_METRIC_COUNTER, "knoway_stream_continuations_total",
        "Streams continued by another backend after breaking (retry.midStream: Continue), by "
        "how the continued stream ended.",
        (const char *const[]){"result", NULL}, 2, NULL, 0);
    *out = c;
    if (c->continuations == NULL || c->retries == NULL || c->ejections == NULL ||
        c->cooldowns == NULL || c->in_flight == NULL || c->ewma == NULL || c->requests == NULL ||
        c->upstream_errors == NULL || c->tokens == NULL || c->streams_cancelled == NULL ||
        c->attempts == NULL)
        return KW_ERROR;
    /* the error kinds exist from the start (zero), as before the registry */
    static const char *const kinds[] = {"connect", "timeout", "reset", "other"};
    for (size_t i = 0; i < KW_ARRAY_LEN(kinds); i++)
        kw_metric_add(c->upstream_errors, 0, (const char *const[]){kinds[i]}, 0);
    static const char *const types[] = {"input", "output", "cached_input"};
    for (size_t i = 0; i < KW_ARRAY_LEN(types); i++)
        kw_metric_add(c->tokens, 0, (const char *const[]){types[i]}, 0);
    kw_metric_add(c->streams_cancelled, 0, NULL, 0);
    return KW_OK;
}

static void fini(void *conf)
{
    free(conf);
}

static struct conf *conf_of(const struct dp_request *r)
{
    return dp_filter_conf(r->w->server, &dp_filter_metrics);
}

static const char *const error_kinds[] = {"", "connect", "timeout", "reset", "other"};

static void backend_label(const struct dp_request *r, char *dst, size_t cap)
{
    snprintf(dst, cap, "%s/%s", r->backend->meta.ns, r->backend->meta.name);
}

/* The balancer's per-backend numbers, as this worker sees them: each set where it moves
 * (in flight and retries as an attempt starts; in flight, ejections, cooldowns and the
 * latency estimate as it ends), so an attempt costs no lookup for what did not change. */
static void backend_state(struct conf *c, struct dp_request *r, const char *backend, bool start)
{
    const struct dp_backend_state *bs = r->bstate;
    if (bs == NULL)
        return;
    unsigned shard = r->w->index + 1;
    const char *const v[] = {backend};
    kw_series_set(kw_metric_series(c->in_flight, shard, v), bs->t.in_flight);
    if (start) {
        if (r->attempts > 1)
            kw_series_set(kw_metric_series(c->retries, shard, v), (int64_t)bs->retries_total);
        return;
    }
    kw_series_set(kw_metric_series(c->ejections, shard, v), (int64_t)bs->ejections_total);
    kw_series_set(kw_metric_series(c->cooldowns, shard, v), (int64_t)bs->cooldowns_total);
    char worker[16];
    snprintf(worker, sizeof(worker), "%u", r->w->index);
    kw_series_setf(kw_metric_series(c->ewma, shard, (const char *const[]){backend, worker}),
                   bs->t.ewma_ms / 1000.0);
}

static void on_attempt_start(struct dp_request *r, void *ctx)
{
    (void)ctx;
    char backend[512];
    backend_label(r, backend, sizeof(backend));
    backend_state(conf_of(r), r, backend, true);
}

static void on_attempt(struct dp_request *r, void *ctx)
{
    (void)ctx;
    struct conf *c = conf_of(r);
    unsigned shard = r->w->index + 1;
    char result[16], backend[512];
    backend_label(r, backend, sizeof(backend));
    backend_state(c, r, backend, false);
    if (r->attempt_cancelled) {
        snprintf(result, sizeof(result), "cancelled");
    } else if (r->up.error != DP_UPERR_NONE) {
        kw_metric_add(c->upstream_errors, shard, (const char *const[]){error_kinds[r->up.error]},
                      1);
        snprintf(result, sizeof(result), "%s", error_kinds[r->up.error]);
    } else {
        snprintf(result, sizeof(result), "%ld", r->up.status);
    }
    kw_metric_add(c->attempts, shard, (const char *const[]){backend, result}, 1);
}

static void on_usage(struct dp_request *r, void *ctx, const struct dp_usage *u)
{
    (void)ctx;
    struct conf *c = conf_of(r);
    unsigned shard = r->w->index + 1;
    kw_metric_add(c->tokens, shard, (const char *const[]){"input"}, u->prompt);
    kw_metric_add(c->tokens, shard, (const char *const[]){"output"}, u->completion);
    kw_metric_add(c->tokens, shard, (const char *const[]){"cached_input"}, u->cached);
}

static void on_end(struct dp_request *r, void *ctx)
{
    (void)ctx;
    struct conf *c = conf_of(r);
    unsigned shard = r->w->index + 1;
    if (r->state == DP_ST_STREAM && r->toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        kw_metric_add(c->streams_cancelled, shard, NULL, 1);
    if (dp_cont_count(r) > 0)
        kw_metric_add(c->continuations, shard,
                      (const char *const[]){
                          r->up.error == DP_UPERR_NONE && !r->client_gone ? "completed" : "failed"},
                      1);
    if (r->status >= 100 && r->status < 600) {
        char code[8];
        snprintf(code, sizeof(code), "%u", r->status);
        kw_metric_add(c->requests, shard, (const char *const[]){code, r->api_name}, 1);
    }
}

const struct dp_filter_ops dp_filter_metrics = {
    .name = "metrics",
    .phase = DP_PH_LOG,
    .init = init,
    .fini = fini,
    .on_attempt_start = on_attempt_start,
    .on_attempt = on_attempt,
    .on_usage = on_usage,
    .on_end = on_end,
};
