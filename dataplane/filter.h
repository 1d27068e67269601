/* knoway data plane: request filters - cross-cutting behaviour (access log, metrics, later
 * auth, rate limits, usage records, tracing) as a table of callbacks the engine calls at
 * fixed points (HAProxy's flt_ops, nginx's phase handlers). A filter is one file
 * and one entry in dp_filters (filter.c); the engine never changes for a new one.
 *
 * Contract, for every callback optional:
 *   init         once at start-up on the main thread: server-wide state into *conf
 *                (dp_filter_conf), KW_OK or KW_ERROR (start-up fails)
 *   on_request   in phase `phase`, after that phase's own work: KW_OK / KW_DECLINED go on,
 *                KW_AGAIN suspends the request (the filter calls dp_engine_resume later,
 *                on the worker, and on_request runs again), KW_DONE: the filter sent a
 *                response (respond.h), KW_ERROR: r->err is sent
 *   on_response_headers  an upstream attempt's final status and headers arrived
 *   on_event     each parsed upstream stream event; KW_ERROR ends the stream with r->err
 *   on_attempt_start  an upstream attempt starts (r->backend, r->endpoint, r->attempts)
 *   on_attempt   an upstream attempt ended (r->up tells how; r->backend is its backend,
 *                r->bstate the balancer's state of it)
 *   on_chunk     each OpenAI-shaped chunk a stream sends the client (parsed), only while
 *                r->watch_chunks is set (a filter sets it: parsing costs); KW_DONE with
 *                r->err set ends the stream cleanly after this chunk (finish_reason
 *                "length", the error event, [DONE]) and cancels the upstream
 *   on_body      a buffered (not streamed) answer, OpenAI-shaped (after the provider's
 *                translation, before a front's), about to be sent
 *   on_usage     the request's token usage is known (once, before on_end)
 *   on_end       the request ends: always, exactly once, whatever happened
 *   on_wake      (not per request) the worker was woken by dp_worker_post: a filter with a
 *                thread of its own (the usage ledger) hands results back this way
 * ctx is the filter's per-request context: ctx_size zeroed bytes from the request's arena
 * (NULL when ctx_size is 0 or the arena is exhausted: filters must cope). */
#ifndef DP_FILTER_H
#define DP_FILTER_H

#include <stddef.h>

#include "request.h"

struct dp_server;

/* One parsed upstream stream event (SSE: event name and data; other framings: data). */
struct dp_event {
    const char *raw;
    size_t raw_len;
    const char *event; /* "" when unnamed */
    const char *data;
    size_t data_len;
};

struct dp_filter_ops {
    const char *name;
    enum dp_phase phase; /* where on_request runs */
    size_t ctx_size;
    int (*init)(struct dp_server *s, void **conf);
    void (*fini)(void *conf);
    int (*on_request)(struct dp_request *r, void *ctx);
    void (*on_response_headers)(struct dp_request *r, void *ctx);
    int (*on_event)(struct dp_request *r, void *ctx, const struct dp_event *ev);
    void (*on_attempt_start)(struct dp_request *r, void *ctx);
    void (*on_attempt)(struct dp_request *r, void *ctx);
    int (*on_chunk)(struct dp_request *r, void *ctx, const struct kw_node *chunk);
    void (*on_body)(struct dp_request *r, void *ctx, const char *body, size_t len);
    void (*on_usage)(struct dp_request *r, void *ctx, const struct dp_usage *u);
    void (*on_end)(struct dp_request *r, void *ctx);
    void (*on_wake)(struct dp_worker *w, void *conf);
};

extern const struct dp_filter_ops *const dp_filters[];
extern const size_t dp_nfilters;

/* The filters (filter_*.c). */
extern const struct dp_filter_ops dp_filter_metrics;
extern const struct dp_filter_ops dp_filter_genai;
extern const struct dp_filter_ops dp_filter_access_log;
extern const struct dp_filter_ops dp_filter_trace;
extern const struct dp_filter_ops dp_filter_trace_propagate;
extern const struct dp_filter_ops dp_filter_auth;
extern const struct dp_filter_ops dp_filter_models;
extern const struct dp_filter_ops dp_filter_limit;
extern const struct dp_filter_ops dp_filter_usage_admit;
extern const struct dp_filter_ops dp_filter_usage;

/* The usage ledger for the admin listener (filter_usage.c): /debug/usage as JSON
 * (KW_DECLINED without spec.usage), and its metrics appended to a scrape. */
int dp_usage_debug(struct dp_server *s, struct kw_buf *b);
void dp_usage_metrics(struct dp_server *s, struct kw_buf *b);
/* Span export counters for a scrape (filter_trace.c; nothing without OTLP). */
void dp_trace_metrics(struct dp_server *s, struct kw_buf *b);

/* OpenTelemetry GenAI names (filter_genai.c), for metrics and spans alike:
 * gen_ai.operation.name of a request, gen_ai.provider.name of a provider. */
const char *dp_genai_operation(const struct dp_request *r);
const char *dp_genai_provider(enum kw_provider p);

/* The worker was woken by a post: answer debug queries, then every filter's on_wake. */
void dp_filters_wake(struct dp_worker *w);

/* Install a filter table (dp_filters, dp_nfilters in the server; tests pass their own) and
 * run every filter's init; fini at the end (main thread). KW_OK or KW_ERROR. */
int dp_filters_init(struct dp_server *s, const struct dp_filter_ops *const *filters, size_t n);
void dp_filters_fini(struct dp_server *s);
/* A filter's server-wide state (what its init stored), found by its ops. */
void *dp_filter_conf(const struct dp_server *s, const struct dp_filter_ops *ops);
/* A filter's index in the table (r->fctx[index] is its context), or DP_MAX_FILTERS. */
unsigned dp_filter_index(const struct dp_server *s, const struct dp_filter_ops *ops);

#endif
