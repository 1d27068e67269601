/* The phase engine (phases.h).
 *
 *   body -> auth -> route -> limit -> cache -> transform -> upstream -> respond -> log
 *                    ^                                         |
 *                    +------- retry / fallback (backoff) ------+
 *
 * Each phase runs its own work, then the on_request of the filters attached to it. The
 * request keeps its phase (r->phase) and, within it, the next filter (r->filter_ix: 0 is
 * the phase's own work, k > 0 filter k-1), so KW_AGAIN resumes exactly there.
 *
 * The upstream phase starts an attempt and returns KW_AGAIN; the transport's callbacks
 * relay the stream as it comes (provider -> filters' on_event -> front -> respond) and, at
 * the end, resume the phase, which judges the attempt: success goes on to respond, a
 * retryable failure goes back to route (another backend at once, the same one after a
 * jittered backoff) while the policy, the budget and the route's timeout allow and nothing
 * reached the client yet; anything else answers. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "balancer.h"
#include "continue.h"
#include "filter.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/snapshot.h"
#include "phases.h"
#include "provider.h"
#include "respond.h"
#include "server.h"

#define PH_RETRY 1 /* the upstream phase's private outcome: go back to route */

/* The filter table in use (the server's: dp_filters, or a test's). */
#define F(r)  ((r)->w->server->filters)
#define NF(r) ((r)->w->server->nfilters)

static int ph_body(struct dp_request *r);
static int ph_route(struct dp_request *r);
static int ph_transform(struct dp_request *r);
static int ph_upstream(struct dp_request *r);
static int ph_respond(struct dp_request *r);

static const struct {
    const char *name;
    int (*run)(struct dp_request *r); /* NULL: filters only */
} phases[DP_PH_COUNT] = {
    [DP_PH_BODY] = {"body", ph_body},
    [DP_PH_AUTH] = {"auth", NULL},
    [DP_PH_ROUTE] = {"route", ph_route},
    [DP_PH_LIMIT] = {"limit", NULL},
    [DP_PH_CACHE] = {"cache", NULL},
    [DP_PH_TRANSFORM] = {"transform", ph_transform},
    [DP_PH_UPSTREAM] = {"upstream", ph_upstream},
    [DP_PH_RESPOND] = {"respond", ph_respond},
    [DP_PH_LOG] = {"log", NULL},
};

const char *dp_phase_name(enum dp_phase p)
{
    return (unsigned)p < DP_PH_COUNT ? phases[p].name : "?";
}

static void *ctx_of(struct dp_request *r, size_t i)
{
    if (r->fctx[i] == NULL && F(r)[i]->ctx_size > 0) {
        r->fctx[i] = kw_arena_alloc(r->arena, F(r)[i]->ctx_size);
        if (r->fctx[i] != NULL)
            memset(r->fctx[i], 0, F(r)[i]->ctx_size);
    }
    return r->fctx[i];
}

static bool retry_decide(struct dp_request *r, unsigned cls, int64_t *backoff_ms);
static void on_backoff(struct dp_timer *t);

/* Run from r->phase until the request suspends or has its response. */
static void run(struct dp_request *r)
{
    if (r->in_engine) {
        /* resumed from inside a phase (a filter whose event came at once): the running
         * loop goes on instead of suspending */
        r->resume_pending = true;
        return;
    }
    r->in_engine = true;
    r->resume_pending = false;
    while (r->phase < DP_PH_LOG) {
        int rc;
        if (r->filter_ix == 0) {
            if (r->phase == DP_PH_RESPOND && r->commit)
                r->hold = true; /* the answer waits for the respond filters (a commit) */
            rc = phases[r->phase].run != NULL ? phases[r->phase].run(r) : KW_DECLINED;
            if (rc == KW_OK || rc == KW_DECLINED) {
                r->filter_ix = 1;
                continue;
            }
        } else {
            size_t i = r->filter_ix - 1;
            while (i < NF(r) && (F(r)[i]->phase != r->phase || F(r)[i]->on_request == NULL))
                i++;
            if (i >= NF(r)) {
                r->phase++;
                r->filter_ix = 0;
                continue;
            }
            r->filter_ix = (unsigned)i + 1; /* KW_AGAIN runs this filter again */
            rc = F(r)[i]->on_request(r, ctx_of(r, i));
            if (rc == KW_OK || rc == KW_DECLINED) {
                r->filter_ix = (unsigned)i + 2;
                continue;
            }
        }
        if (rc == KW_AGAIN && r->resume_pending) {
            r->resume_pending = false;
            continue; /* the same phase or filter again, as dp_engine_resume would */
        }
        if (rc == KW_AGAIN)
            break;
        if (rc == PH_RETRY) {
            r->phase = DP_PH_ROUTE;
            r->filter_ix = 0;
            continue;
        }
        if (rc == KW_ERROR) {
            r->commit = false; /* an error is not held: it goes out now */
            dp_respond_error(r);
            dp_respond_release(r);
        }
        r->phase = DP_PH_LOG; /* KW_DONE, KW_ERROR: the response is prepared */
    }
    if (r->phase == DP_PH_LOG && r->hold)
        dp_respond_release(r); /* every respond filter agreed */
    r->in_engine = false;
}

void dp_engine_start(struct dp_request *r)
{
    r->phase = DP_PH_BODY;
    r->filter_ix = 0;
    run(r);
}

void dp_engine_resume(struct dp_request *r)
{
    if (r->phase < DP_PH_LOG && !r->client_gone)
        run(r);
}

/* ---- body ---------------------------------------------------------------------------------- */

/* /v1/models: every model a route serves, or those the consumer may call. */
static int respond_models(struct dp_request *r)
{
    int rc;
    if (r->consumer != NULL) { /* its models, on the routes that admit it */
        struct kw_buf b;
        rc = dp_table_models_for(r->table, r->consumer, &b);
        if (rc == KW_OK)
            rc = dp_respond_buffer(r, 200, "application/json", b.data, b.len, NULL);
        kw_buf_cleanup(&b);
    } else {
        rc = dp_respond_buffer(r, 200, "application/json", r->table->models_json,
                               r->table->models_len, NULL);
    }
    if (rc != KW_OK)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    return KW_DONE;
}

static int ph_body(struct dp_request *r)
{
    if (r->early_status == 404)
        return dp_error_set(r, 404, "invalid_request_error", "unknown_url", NULL,
                            "Invalid URL (%s %s)", r->method, r->path);
    if (r->early_status == 405)
        return dp_error_set(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                            "method not allowed for %s", r->path);
    if (r->body_too_large)
        return dp_error_set(r, 413, "invalid_request_error", "request_too_large", NULL,
                            "request body is larger than %llu bytes",
                            (unsigned long long)r->w->server->max_body_bytes);
    if (r->over_budget) {
        atomic_fetch_add_explicit(&r->w->server->rejected_memory, 1, memory_order_relaxed);
        return dp_error_set(r, 503, "server_error", "memory_limit", NULL,
                            "the gateway is at its memory limit (limits.maxMemoryBytes): retry "
                            "shortly");
    }
    if (r->table == NULL)
        return dp_error_set(r, 503, "server_error", "not_ready", NULL,
                            "no configuration applied yet");
    return KW_OK; /* parsed in route: a caller auth refuses costs no parse */
}

/* ---- route --------------------------------------------------------------------------------- */

static const char *header_of(void *ud, const char *name)
{
    return dp_request_header(ud, name);
}

/* Tokens this request may use: its text (4 bytes a token) and what it may generate (its
 * max_tokens, checked in range when routed). */
static int64_t estimate_tokens(const struct dp_request *r, int64_t max_out)
{
    return (int64_t)(r->body_len / 4) + max_out;
}

static int ph_route(struct dp_request *r)
{
    if (r->api == DP_API_MODELS)
        return respond_models(r);
    if (r->json == NULL && dp_request_parse_body(r) != KW_OK)
        return KW_ERROR;
    if (r->route == NULL) {
        r->route = dp_table_route(r->table, r->model, r->path, header_of, r);
        if (r->route == NULL)
            return dp_error_set(r, 404, "invalid_request_error", "model_not_found", "model",
                                "The model `%s` does not exist or you do not have access to it.",
                                r->model);
        r->tried = kw_arena_alloc(r->arena, r->route->nrefs * sizeof(bool) + 1);
        if (r->tried == NULL)
            return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
        memset(r->tried, 0, r->route->nrefs * sizeof(bool) + 1);
        r->strategy = r->route->load_balancer.strategy;
        const char *want = r->route->load_balancer.client_override
                               ? dp_request_header(r, "x-knoway-routing-strategy")
                               : NULL;
        int s = want != NULL ? dp_lb_strategy_parse(want) : -1;
        if (s >= 0)
            r->strategy = s;
        int64_t cap =
            r->route->max_output_tokens > 0 ? r->route->max_output_tokens : KW_MAX_OUTPUT_TOKENS;
        const char *field = NULL;
        int64_t max_out = dp_request_max_output(r, cap, &field);
        if (max_out < 0) {
            const struct kw_node *n = kw_node_get(r->json, field);
            if (n->type != KW_NODE_INT)
                return dp_error_set(r, 400, "invalid_request_error", "invalid_type", field,
                                    "Invalid type for '%s': expected an integer.", field);
            bool above = n->i > cap;
            return dp_error_set(r, 400, "invalid_request_error",
                                above ? "integer_above_max_value" : "integer_below_min_value",
                                field,
                                "Invalid '%s': integer %s value. Expected a value %s %lld, but "
                                "got %lld instead.",
                                field, above ? "above maximum" : "below minimum",
                                above ? "<=" : ">=", (long long)(above ? cap : 1), (long long)n->i);
        }
        r->est_tokens = estimate_tokens(r, max_out);
    }
    int64_t now = dp_now_ms();
    const struct kw_backend_ref *ref =
        dp_lb_pick(r->w->lb, r->route, r->strategy, r->tried, r->est_tokens, now);
    if (ref == NULL)
        return dp_error_set(r, 503, "server_error", "no_backend", NULL, "no backend available");
    r->tried[ref - r->route->refs] = true;
    if (dp_request_bind(r, ref) != KW_OK)
        return KW_ERROR;
    if (dp_cont_bind(r) != KW_OK)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    const struct kw_upstream *u = &r->backend->upstream;
    struct dp_backend_state *bs = dp_lb_backend(r->w->lb, r->backend);
    if (r->ep_backend != r->backend) {
        r->ep_backend = r->backend;
        r->ep_tried = 0;
    }
    r->endpoint = bs != NULL
                      ? dp_lb_pick_endpoint(r->w->lb, bs, r->backend, r->strategy, r->ep_tried, now)
                  : u->base_url == NULL && u->nendpoints > 0 ? 0
                                                             : -1;
    if (r->endpoint >= 0 && r->endpoint < 64)
        r->ep_tried |= 1ull << r->endpoint;
    r->base_url = r->endpoint >= 0 ? u->endpoints[r->endpoint].url : u->base_url;
    size_t n = r->base_url != NULL ? strlen(r->base_url) : 0;
    while (n > 0 && r->base_url[n - 1] == '/')
        n--;
    r->base_len = n;
    return KW_OK;
}

/* ---- transform ----------------------------------------------------------------------------- */

static int ph_transform(struct dp_request *r)
{
    kw_buf_init(&r->url, 8192);
    kw_buf_reset(&r->up_body);
    curl_slist_free_all(r->up_headers);
    r->up_headers = NULL;
    r->err.status = 0;
    if (r->provider->build(r, &r->url, &r->up_headers) != KW_OK) {
        if (r->err.status == 0)
            dp_error_set(r, 500, "server_error", NULL, NULL, "cannot build the upstream request");
        return KW_ERROR;
    }
    dp_request_account(r); /* the upstream body */
    char rid[64];
    snprintf(rid, sizeof(rid), "x-request-id: %s", r->id);
    struct curl_slist *h = curl_slist_append(r->up_headers, "Expect:");
    h = h != NULL ? curl_slist_append(h, rid) : NULL;
    if (h == NULL)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    r->up_headers = h;
    return KW_OK;
}

/* ---- upstream: the transport's callbacks ---------------------------------------------------- */

static void run_filters_attempt(struct dp_request *r)
{
    for (size_t i = 0; i < NF(r); i++)
        if (F(r)[i]->on_attempt != NULL)
            F(r)[i]->on_attempt(r, ctx_of(r, i));
}

static int64_t parse_retry_after(const char *v, size_t n, bool ms)
{
    int64_t x = 0;
    size_t i = 0;
    for (; i < n && v[i] >= '0' && v[i] <= '9' && x < 86400000; i++)
        x = x * 10 + (v[i] - '0');
    if (i == 0)
        return -1;
    return ms ? x : x * 1000;
}

static void on_up_header(struct dp_transfer *t, const char *name, size_t nlen, const char *value,
                         size_t vlen)
{
    struct dp_request *r = t->ud;
    if (nlen == 11 && strncasecmp(name, "retry-after", 11) == 0)
        r->retry_after_ms = parse_retry_after(value, vlen, false);
    else if (nlen == 14 && strncasecmp(name, "retry-after-ms", 14) == 0)
        r->retry_after_ms = parse_retry_after(value, vlen, true);
    if (r->bstate != NULL)
        dp_lb_header(r->bstate, r->endpoint, name, nlen, value, vlen, dp_now_ms());
}

static void on_idle(struct dp_timer *t);

static int on_up_headers(struct dp_transfer *t)
{
    struct dp_request *r = t->ud;
    r->ttfb_ms = dp_now_ms() - r->start_ms;
    for (size_t i = 0; i < NF(r); i++)
        if (F(r)[i]->on_response_headers != NULL)
            F(r)[i]->on_response_headers(r, ctx_of(r, i));
    const char *want =
        r->provider->stream_ctype != NULL ? r->provider->stream_ctype : "text/event-stream";
    bool streams = t->status == 200 && strncasecmp(t->ctype, want, strlen(want)) == 0;
    if (r->state == DP_ST_STREAM) {
        /* a continuation: its stream joins the one the client has */
        if (!streams) {
            snprintf(t->write_err, sizeof(t->write_err),
                     "the continuation was refused (status %ld)", t->status);
            return KW_ERROR;
        }
        r->last_up_ms = dp_now_ms();
        r->attempt_timer.on_fire = on_idle;
        dp_timer_arm(r->w, &r->attempt_timer, r->last_up_ms + r->route->stream_idle_timeout_ms);
        return KW_OK;
    }
    if (!r->stream || !streams)
        return KW_OK;
    if (dp_respond_stream_begin(r) != KW_OK) {
        snprintf(t->write_err, sizeof(t->write_err), "out of memory starting the stream");
        return KW_ERROR;
    }
    r->last_up_ms = dp_now_ms();
    r->attempt_timer.on_fire = on_idle;
    dp_timer_arm(r->w, &r->attempt_timer, r->last_up_ms + r->route->stream_idle_timeout_ms);
    return KW_OK;
}

static int on_sse_event(void *ud, const char *raw, size_t raw_len, const char *event,
                        const char *data, size_t data_len, bool has_data)
{
    struct dp_request *r = ud;
    if (!has_data)
        return KW_OK; /* upstream comments: the gateway sends its own keep-alives */
    struct dp_event ev = {raw, raw_len, event != NULL ? event : "", data, data_len};
    for (size_t i = 0; i < NF(r); i++)
        if (F(r)[i]->on_event != NULL && F(r)[i]->on_event(r, ctx_of(r, i), &ev) != KW_OK)
            return KW_ERROR;
    return r->provider->on_event(r, raw, raw_len, event, data, data_len, dp_stream_sink(r));
}

/* ---- filters that watch a stream's chunks (on_chunk) ------------------------------------- */

struct chunk_walk {
    struct dp_request *r;
    bool cut;
    char id[128], model[128];
    int64_t created;
};

static int on_client_chunk(void *ud, const char *raw, size_t raw_len, const char *event,
                           const char *data, size_t data_len, bool has_data)
{
    (void)raw;
    (void)raw_len;
    (void)event;
    struct chunk_walk *cw = ud;
    struct dp_request *r = cw->r;
    if (cw->cut || !has_data || (data_len == 6 && memcmp(data, "[DONE]", 6) == 0))
        return KW_OK;
    struct kw_node *root = NULL;
    char err[64];
    kw_arena_reset(r->scratch);
    if (kw_json_parse(r->scratch, data, data_len, &root, err, sizeof(err)) != KW_OK ||
        root->type != KW_NODE_MAP)
        return KW_OK;
    const struct kw_node *id = kw_node_get(root, "id"), *model = kw_node_get(root, "model"),
                         *created = kw_node_get(root, "created");
    if (id != NULL && id->type == KW_NODE_STRING)
        snprintf(cw->id, sizeof(cw->id), "%s", id->str);
    if (model != NULL && model->type == KW_NODE_STRING)
        snprintf(cw->model, sizeof(cw->model), "%s", model->str);
    if (created != NULL && created->type == KW_NODE_INT)
        cw->created = created->i;
    for (size_t i = 0; i < NF(r); i++)
        if (F(r)[i]->on_chunk != NULL && F(r)[i]->on_chunk(r, ctx_of(r, i), root) == KW_DONE) {
            cw->cut = true;
            break;
        }
    return KW_OK;
}

/* Show the chunks the provider just wrote (sink from `from`) to the filters; KW_DONE when
 * one ends the stream: the chunk that ends it (finish_reason "length") is appended. */
static int walk_chunks(struct dp_request *r, struct kw_buf *sink, size_t from)
{
    struct chunk_walk cw = {.r = r};
    struct dp_sse p;
    dp_sse_init(&p, DP_MAX_SSE_EVENT);
    int rc = dp_sse_feed(&p, sink->data + from, sink->len - from, on_client_chunk, &cw);
    if (rc == KW_OK)
        rc = dp_sse_finish(&p, on_client_chunk, &cw);
    dp_sse_cleanup(&p);
    if (!cw.cut)
        return KW_OK;
    kw_buf_puts(sink, "data: {\"id\":");
    kw_json_write_string(sink, cw.id, strlen(cw.id));
    kw_buf_printf(sink, ",\"object\":\"chat.completion.chunk\",\"created\":%lld,\"model\":",
                  (long long)cw.created);
    kw_json_write_string(sink, cw.model, strlen(cw.model));
    kw_buf_puts(sink,
                ",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n");
    return KW_DONE;
}

static size_t on_up_body(struct dp_transfer *t, const char *ptr, size_t n)
{
    struct dp_request *r = t->ud;
    r->last_up_ms = dp_now_ms();
    if (r->state != DP_ST_STREAM) {
        if (kw_buf_append(&r->up_resp, ptr, n) != KW_OK) {
            snprintf(t->write_err, sizeof(t->write_err), "upstream response larger than %u bytes",
                     DP_MAX_UPSTREAM_RESPONSE);
            return 0;
        }
        dp_request_account(r);
        return n;
    }
    if (r->client_gone)
        return 0;
    if (r->out.len - r->out_off >= DP_STREAM_HIGH_WATER) {
        if (!t->http2)
            return DP_TRANSFER_PAUSE; /* redelivered on resume */
        /* libcurl 7.88 pauses HTTP/2 streams unreliably: buffer up to a bound instead */
        if (r->out.len - r->out_off >= DP_H2_STREAM_BUFFER) {
            snprintf(t->write_err, sizeof(t->write_err),
                     "the client reads too slowly (%u bytes waiting)", DP_H2_STREAM_BUFFER);
            return 0;
        }
    }
    size_t before = r->out.len;
    struct kw_buf *sink = dp_stream_sink(r);
    size_t from = sink->len;
    if ((r->provider->feed != NULL ? r->provider->feed(r, ptr, n, sink)
                                   : dp_sse_feed(&r->sse, ptr, n, on_sse_event, r)) != KW_OK) {
        if (t->write_err[0] == '\0')
            snprintf(t->write_err, sizeof(t->write_err),
                     "upstream stream event too large or invalid");
        return 0;
    }
    if (r->watch_chunks && sink->len > from && walk_chunks(r, sink, from) == KW_DONE) {
        r->cut = true;
        snprintf(t->write_err, sizeof(t->write_err), "the stream was ended by a limit");
    }
    if (dp_cont_enabled(r) && !r->cut) {
        int rc = dp_cont_track(r, sink, from);
        if (rc != KW_OK) {
            snprintf(t->write_err, sizeof(t->write_err), "%s",
                     rc == KW_DECLINED ? "the upstream sent an error event"
                                       : "out of memory tracking the stream");
            return 0;
        }
    }
    if (dp_front_flush(r) != KW_OK) {
        if (t->write_err[0] == '\0')
            snprintf(t->write_err, sizeof(t->write_err),
                     "upstream stream event too large or invalid");
        return 0;
    }
    if (r->out.len != before) {
        r->last_out_ms = r->last_up_ms;
        dp_respond_wake(r);
    }
    dp_request_account(r);
    return r->cut ? 0 : n; /* cut: the transfer stops here */
}

/* How the attempt went, for the balancer. */
static enum dp_lb_outcome outcome_of(const struct dp_request *r)
{
    const struct dp_transfer *t = &r->up;
    if (r->client_gone || (t->error == DP_UPERR_OTHER && t->write_err[0] != '\0'))
        return DP_LB_CANCELLED; /* the gateway's or the client's doing */
    if (t->error != DP_UPERR_NONE)
        return DP_LB_FAILURE;
    if (t->status == 429)
        return DP_LB_RATE_LIMITED;
    return t->status >= 500 ? DP_LB_FAILURE : DP_LB_SUCCESS;
}

/* The attempt is over (the transport said so, or the stream went idle). */
static void attempt_ended(struct dp_request *r)
{
    if (r->attempt != DP_ATT_RUNNING)
        return;
    r->attempt = DP_ATT_DONE;
    dp_timer_cancel(r->w, &r->attempt_timer);
    int64_t now = dp_now_ms();
    if (r->bstate != NULL) {
        enum dp_lb_outcome o = outcome_of(r);
        int64_t ttfb = r->up.ttfb_ms >= 0 && o != DP_LB_CANCELLED ? r->up.ttfb_ms : -1;
        int64_t cooldown = r->retry_after_ms;
        if (o == DP_LB_RATE_LIMITED && cooldown < 0)
            cooldown = 1000; /* a 429 without a hint: a second's rest */
        dp_lb_attempt_end(r->bstate, r->endpoint, r->backend, o, ttfb, cooldown, now);
    }
    run_filters_attempt(r);
    r->bstate = NULL; /* it may be swept once nothing is in flight */
}

static void on_up_done(struct dp_transfer *t)
{
    struct dp_request *r = t->ud;
    attempt_ended(r);
    dp_engine_resume(r);
}

static void on_idle(struct dp_timer *tm)
{
    struct dp_request *r =
        (struct dp_request *)((char *)tm - offsetof(struct dp_request, attempt_timer));
    if (r->attempt != DP_ATT_RUNNING)
        return;
    int64_t idle = r->route->stream_idle_timeout_ms;
    if (dp_now_ms() - r->last_up_ms < idle) {
        dp_timer_arm(r->w, &r->attempt_timer, r->last_up_ms + idle);
        return;
    }
    dp_transfer_stop(&r->up);
    r->up.error = DP_UPERR_TIMEOUT;
    snprintf(r->up.errmsg, sizeof(r->up.errmsg), "the upstream sent nothing for %lld ms",
             (long long)idle);
    r->idle_timeout = true;
    attempt_ended(r);
    dp_engine_resume(r);
}

static const struct dp_transfer_ops transfer_ops = {
    .on_header = on_up_header,
    .on_headers = on_up_headers,
    .on_body = on_up_body,
    .on_done = on_up_done,
};

/* ---- upstream: the phase -------------------------------------------------------------------- */

static int start_attempt(struct dp_request *r)
{
    const struct kw_backend *b = r->backend;
    int64_t now = dp_now_ms();
    int64_t timeout = r->route->timeout_ms - (now - r->start_ms);
    if (timeout < 1)
        timeout = 1;
    if (b->upstream.timeout_ms > 0 && b->upstream.timeout_ms < timeout)
        timeout = b->upstream.timeout_ms;
    if (r->route->retry.per_try_timeout_ms > 0 && r->route->retry.per_try_timeout_ms < timeout)
        timeout = r->route->retry.per_try_timeout_ms;
    struct dp_transfer_req req = {
        .url = r->url.data,
        .headers = r->up_headers,
        .body = r->up_body.data,
        .len = r->up_body.len,
        .http2 = b->upstream.http2,
        .insecure = b->upstream.tls.insecure_skip_verify,
        .timeout_ms = timeout,
        .connect_timeout_ms = b->upstream.connect_timeout_ms,
        .buffer_size = r->stream ? DP_CURL_STREAM_BUFFER : DP_CURL_BUFFER,
    };
    r->up_headers = NULL; /* the transfer's now */
    const struct kw_secret_ref *ca = &b->upstream.tls.ca_secret_ref;
    if (ca->name != NULL) {
        const struct kw_credential *c =
            kw_snapshot_credential(r->table->snap, b->meta.ns, ca->name, ca->key);
        if (c != NULL) {
            req.ca = c->value;
            req.ca_len = c->len;
        }
    }
    kw_buf_reset(&r->up_resp);
    r->resp_json = NULL;
    r->retry_after_ms = -1;
    r->idle_timeout = false;
    r->attempt_cancelled = false;
    int rc = dp_transfer_start(&r->up, r->w, &req, &transfer_ops, r);
    kw_buf_cleanup(&r->url);
    if (rc != KW_OK)
        return dp_error_set(r, 500, "server_error", NULL, NULL,
                            "cannot start the upstream transfer");
    r->attempts++;
    r->attempt = DP_ATT_RUNNING;
    r->bstate = dp_lb_backend(r->w->lb, b);
    if (r->bstate != NULL) {
        dp_lb_attempt_start(r->bstate, r->endpoint, now);
        if (r->attempts > 1)
            dp_lb_retry_taken(r->bstate);
    }
    for (size_t i = 0; i < NF(r); i++)
        if (F(r)[i]->on_attempt_start != NULL)
            F(r)[i]->on_attempt_start(r, ctx_of(r, i));
    return KW_AGAIN;
}

/* The failure's retryOn class (0: not a failure a retry may fix). */
static unsigned failure_class(const struct dp_request *r)
{
    const struct dp_transfer *t = &r->up;
    switch (t->error) {
    case DP_UPERR_CONNECT:
        return KW_RETRY_CONNECT_FAILURE;
    case DP_UPERR_RESET:
        return t->headers_done ? 0 : KW_RETRY_RESET;
    case DP_UPERR_TIMEOUT:
        return r->idle_timeout ? 0 : KW_RETRY_TIMEOUT;
    case DP_UPERR_OTHER:
        return 0;
    case DP_UPERR_NONE:
        break;
    }
    if (t->status == 429)
        return KW_RETRY_429;
    return t->status >= 500 ? KW_RETRY_5XX : 0;
}

/* What the provider kept of a finished attempt goes before the next one. */
static void forget_attempt(struct dp_request *r)
{
    if (r->provider->cleanup != NULL && r->provider_state != NULL)
        r->provider->cleanup(r);
    r->provider_state = NULL;
    dp_sse_cleanup(&r->sse);
    dp_sse_init(&r->sse, DP_MAX_SSE_EVENT);
    r->saw_done = false;
}

static int ph_upstream(struct dp_request *r)
{
    if (r->attempt == DP_ATT_NONE)
        return start_attempt(r);
    if (r->attempt == DP_ATT_RUNNING)
        return KW_AGAIN;
    r->attempt = DP_ATT_NONE;
    struct dp_transfer *t = &r->up;
    if (r->state == DP_ST_STREAM && r->provider->feed == NULL) {
        /* an event cut by a failure (too large, a reset) never reaches the client: the
         * error event that follows must not run into half an event */
        if (t->error == DP_UPERR_NONE)
            dp_sse_finish(&r->sse, on_sse_event, r);
        else
            dp_sse_discard(&r->sse);
    }
    if (t->error == DP_UPERR_OTHER && t->write_err[0] != '\0')
        snprintf(t->errmsg, sizeof(t->errmsg), "%s", t->write_err);
    if (t->error != DP_UPERR_NONE && t->errmsg[0] == '\0')
        snprintf(t->errmsg, sizeof(t->errmsg), "upstream transfer failed");
    if (r->cut)
        return KW_ERROR; /* a filter ended the stream: r->err is its final event */
    unsigned cls = failure_class(r);
    int64_t backoff = 0;
    if (cls != 0 && retry_decide(r, cls, &backoff)) {
        kw_log(KW_LOG_WARN, "upstream failed, trying again", "request_id", r->id, "backend",
               r->backend->meta.name, NULL);
        forget_attempt(r);
        if (backoff <= 0)
            return PH_RETRY;
        r->backoff = true;
        r->phase = DP_PH_ROUTE;
        r->filter_ix = 0;
        r->attempt_timer.on_fire = on_backoff;
        dp_timer_arm(r->w, &r->attempt_timer, dp_now_ms() + backoff);
        return KW_AGAIN;
    }
    if (r->state == DP_ST_STREAM && t->error != DP_UPERR_NONE && dp_cont_prepare(r)) {
        kw_log(KW_LOG_WARN, "the stream broke: another backend continues it", "request_id", r->id,
               "backend", r->backend->meta.name, "error", t->errmsg, NULL);
        forget_attempt(r);
        return PH_RETRY;
    }
    if (r->state == DP_ST_STREAM) {
        if (t->error == DP_UPERR_NONE)
            return KW_OK; /* respond ends it */
        /* the gateway's own reasons (a bad frame, a too slow client) are the client's to
         * know; curl's text (addresses) stays in the log */
        if (r->idle_timeout)
            return dp_error_set(r, 500, "server_error", "upstream_timeout", NULL,
                                "the upstream sent nothing for %lld ms",
                                (long long)r->route->stream_idle_timeout_ms);
        return dp_error_set(r, 500, "server_error",
                            t->error == DP_UPERR_TIMEOUT ? "upstream_timeout" : "upstream_error",
                            NULL,
                            "the upstream failed after the response started%s%s (request id %s)",
                            t->write_err[0] != '\0' ? ": " : "", t->write_err, r->id);
    }
    /* the client learns what kind of failure it was and the request id; backend names,
     * addresses and curl's text go to the access log only (upstream_error, backend) */
    switch (t->error) {
    case DP_UPERR_CONNECT:
    case DP_UPERR_RESET:
        return dp_error_set(r, 502, "server_error", "upstream_unavailable", NULL,
                            "the upstream service is unavailable (request id %s)", r->id);
    case DP_UPERR_TIMEOUT:
        return dp_error_set(r, 504, "server_error", "upstream_timeout", NULL,
                            "the upstream service timed out (request id %s)", r->id);
    case DP_UPERR_OTHER:
        return dp_error_set(r, 502, "server_error", "upstream_error", NULL,
                            "the upstream service failed (request id %s)", r->id);
    case DP_UPERR_NONE:
        break;
    }
    return KW_OK;
}

static void on_backoff(struct dp_timer *t)
{
    struct dp_request *r =
        (struct dp_request *)((char *)t - offsetof(struct dp_request, attempt_timer));
    r->backoff = false;
    dp_engine_resume(r);
}

/* Whether to try again after a failure of class cls, and after how long. */
static bool retry_decide(struct dp_request *r, unsigned cls, int64_t *backoff_ms)
{
    const struct kw_route *rt = r->route;
    if (r->state == DP_ST_STREAM || r->client_gone)
        return false; /* never after the first byte reached the client */
    unsigned on = rt->retry.retry_on != 0
                      ? rt->retry.retry_on
                      : KW_RETRY_CONNECT_FAILURE | KW_RETRY_RESET | KW_RETRY_5XX;
    bool other = false;
    for (size_t i = 0; i < rt->nrefs && !other; i++)
        other = !r->tried[i] && rt->refs[i].weight > 0 && rt->refs[i].backend != NULL;
    /* another endpoint of the same backend counts as another target */
    const struct kw_upstream *u = &r->backend->upstream;
    bool other_ep = false;
    for (size_t i = 0; u->base_url == NULL && i < u->nendpoints && i < 64 && !other_ep; i++)
        other_ep = !((r->ep_tried >> i) & 1) && (u->endpoints[i].weight > 0 || u->nendpoints == 1);
    if (!other && other_ep) {
        r->tried[r->ref - rt->refs] = false; /* the same backend, another endpoint, at once */
        other = true;
    }
    /* a 429 puts its backend in cooldown: the request fails over at once when another
     * backend is left, whatever retryOn says (retryOn: [429] also retries the same one) */
    if (!(cls & on) && !(cls == KW_RETRY_429 && other))
        return false;
    if (r->attempts >= dp_route_attempts(rt))
        return false;
    if (!other && rt->retry.attempts == 0)
        return false; /* without a retry policy each backend is tried once */
    int64_t now = dp_now_ms();
    int64_t wait = 0;
    if (!other) {
        /* the same backends again: jittered exponential backoff ("equal jitter") */
        int64_t base = rt->retry.backoff_base_ms > 0 ? rt->retry.backoff_base_ms : 25;
        int64_t cap = rt->retry.backoff_max_ms > 0 ? rt->retry.backoff_max_ms : 250;
        int64_t exp = base;
        for (unsigned i = 1; i < r->attempts && exp < cap; i++)
            exp *= 2;
        if (exp > cap)
            exp = cap;
        wait = exp / 2 + (int64_t)(dp_lb_rand(r->w->lb) % (uint32_t)(exp / 2 + 1));
    }
    if (now + wait - r->start_ms >= rt->timeout_ms)
        return false;
    if (!other)
        memset(r->tried, 0, rt->nrefs * sizeof(bool));
    /* the retry budget: backends that took their share of retries are left out */
    uint32_t pct = rt->retry.budget_percent > 0 ? rt->retry.budget_percent : 20;
    bool any = false;
    for (size_t i = 0; i < rt->nrefs; i++) {
        if (r->tried[i] || rt->refs[i].weight == 0 || rt->refs[i].backend == NULL)
            continue;
        struct dp_backend_state *bs = dp_lb_backend(r->w->lb, rt->refs[i].backend);
        if (bs != NULL && !dp_lb_retry_budget_ok(bs, pct, now))
            r->tried[i] = true;
        else
            any = true;
    }
    if (!any)
        return false;
    *backoff_ms = wait;
    return true;
}

/* ---- respond ------------------------------------------------------------------------------- */

/* An OpenAI error body in r->up_resp rewritten into the front's shape. False when it has
 * no message (the caller wraps it like any other body). */
static bool front_error(struct dp_request *r)
{
    struct kw_node *root;
    char err[128];
    dp_request_arena_grow(r, r->up_resp.len);
    if (kw_json_parse(r->arena, r->up_resp.data, r->up_resp.len, &root, err, sizeof(err)) != KW_OK)
        return false;
    const struct kw_node *e = kw_node_get(root, "error");
    const struct kw_node *msg =
        e != NULL && e->type == KW_NODE_STRING ? e : kw_node_get(e, "message");
    if (msg == NULL || msg->type != KW_NODE_STRING)
        return false;
    struct kw_buf b;
    kw_buf_init(&b, DP_MAX_UPSTREAM_RESPONSE);
    bool ok = r->front->error_body(r, (unsigned)r->up.status, msg->str, msg->len, &b) == KW_OK;
    if (ok) {
        kw_buf_reset(&r->up_resp);
        ok = kw_buf_append(&r->up_resp, b.data, b.len) == KW_OK;
    }
    kw_buf_cleanup(&b);
    return ok;
}

/* An upstream error response relayed: its status and body when it is an OpenAI-style
 * error (in the front's shape for a front), else wrapped into one. */
static int relay_error(struct dp_request *r)
{
    long status = r->up.status;
    dp_request_arena_grow(r, r->up_resp.len);
    if (r->provider->on_error != NULL) {
        struct kw_buf mapped;
        kw_buf_init(&mapped, DP_MAX_UPSTREAM_RESPONSE);
        if (r->provider->on_error(r, status, r->up_resp.data != NULL ? r->up_resp.data : "",
                                  r->up_resp.len, &mapped) == KW_OK &&
            mapped.len > 0) {
            kw_buf_reset(&r->up_resp);
            kw_buf_append(&r->up_resp, mapped.data, mapped.len);
        }
        kw_buf_cleanup(&mapped);
    }
    const char *body = r->up_resp.data != NULL ? r->up_resp.data : "";
    bool json = r->up_resp.len > 0 && body[0] == '{' && strstr(body, "\"error\"") != NULL;
    if (json && r->front != NULL)
        json = front_error(r);
    if (json) {
        if (dp_respond_buffer(r, (unsigned)status, "application/json", r->up_resp.data,
                              r->up_resp.len, r->up.retry_after) != KW_OK)
            return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
        return KW_DONE;
    }
    /* an upstream's body is the client's to see, not the log's: it may echo what was sent,
     * credentials included; so it goes into the response only, not into r->err */
    struct dp_error saved = r->err;
    dp_error_set(r, (unsigned)status, dp_error_type(status), "upstream_error", NULL,
                 "upstream answered %ld: %.200s", status, body);
    dp_respond_error(r);
    if (r->pending != NULL && r->up.retry_after[0] != '\0')
        MHD_add_response_header(r->pending, "Retry-After", r->up.retry_after);
    r->err = saved;
    return KW_DONE;
}

static int relay_body(struct dp_request *r)
{
    dp_request_arena_grow(r, r->up_resp.len); /* in flight: never refused for memory */
    struct kw_buf translated, fronted;
    kw_buf_init(&translated, DP_MAX_UPSTREAM_RESPONSE);
    kw_buf_init(&fronted, DP_MAX_UPSTREAM_RESPONSE);
    int rc = KW_DONE;
    if (r->provider->on_response(r, r->up_resp.data != NULL ? r->up_resp.data : "", r->up_resp.len,
                                 &translated) != KW_OK) {
        rc = dp_error_set(r, 502, "server_error", "upstream_invalid_response", NULL,
                          "the upstream's response could not be translated");
        goto out;
    }
    struct kw_buf *src = translated.len > 0 ? &translated : &r->up_resp;
    for (size_t i = 0; i < NF(r); i++)
        if (F(r)[i]->on_body != NULL)
            F(r)[i]->on_body(r, ctx_of(r, i), src->data != NULL ? src->data : "", src->len);
    if (r->front != NULL) {
        if (r->front->response(r, src->data != NULL ? src->data : "", src->len, &fronted) !=
            KW_OK) {
            rc = dp_error_set(r, 502, "server_error", "upstream_invalid_response", NULL,
                              "the upstream's response could not be translated");
            goto out;
        }
        src = &fronted;
    }
    if (dp_respond_buffer(r, (unsigned)r->up.status,
                          r->up.ctype[0] != '\0' && r->front == NULL ? r->up.ctype
                                                                     : "application/json",
                          src->data, src->len, NULL) != KW_OK)
        rc = dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
out:
    kw_buf_cleanup(&translated);
    kw_buf_cleanup(&fronted);
    return rc;
}

static int respond(struct dp_request *r);

/* The answer is prepared: KW_OK, so the respond phase's filters run on it (a commit holds
 * it until they agree: respond.h). */
static int ph_respond(struct dp_request *r)
{
    int rc = respond(r);
    return rc == KW_DONE ? KW_OK : rc;
}

static int respond(struct dp_request *r)
{
    if (r->state == DP_ST_STREAM) {
        dp_cont_finish(r); /* usage counts the broken attempts' tokens */
        struct kw_buf *sink = dp_stream_sink(r);
        size_t from = sink->len;
        if (r->provider->on_stream_end != NULL)
            r->provider->on_stream_end(r, sink);
        if (dp_cont_active(r))
            dp_cont_track(r, sink, from); /* the last chunks carry the first identity too */
        dp_front_flush(r);
        if (r->front != NULL)
            r->front->stream_end(r, &r->out);
        dp_respond_stream_end(r);
        return KW_DONE;
    }
    if (r->up.status >= 200 && r->up.status < 300)
        return relay_body(r);
    return relay_error(r);
}

/* ---- the end ------------------------------------------------------------------------------- */

static void stop_attempt(struct dp_request *r)
{
    if (r->attempt == DP_ATT_RUNNING) {
        dp_transfer_stop(&r->up);
        r->attempt_cancelled = true;
        if (r->bstate != NULL)
            dp_lb_attempt_end(r->bstate, r->endpoint, r->backend, DP_LB_CANCELLED, -1, -1,
                              dp_now_ms());
        run_filters_attempt(r);
        r->bstate = NULL;
        r->attempt = DP_ATT_NONE;
    }
    dp_transfer_stop(&r->up);
    dp_timer_cancel(r->w, &r->attempt_timer);
}

void dp_engine_client_gone(struct dp_request *r)
{
    if (r->client_gone)
        return;
    r->client_gone = true;
    stop_attempt(r); /* cancel the upstream at once, not at the next MHD pass */
    dp_respond_wake(r);
}

void dp_engine_end(struct dp_request *r, enum MHD_RequestTerminationCode toe)
{
    if (r->ended)
        return;
    stop_attempt(r);
    curl_slist_free_all(r->up_headers);
    r->up_headers = NULL;
    kw_buf_cleanup(&r->url);
    r->toe = toe;
    dp_cont_finish(r); /* a continued stream the client left: what it got counts */
    if (r->usage.have) {
        dp_request_usage_clamp(r);
        struct dp_backend_state *bs = r->backend != NULL ? dp_lb_find(r->w->lb, r->backend) : NULL;
        if (bs != NULL)
            dp_lb_tokens(bs, r->usage.prompt + r->usage.completion, dp_now_ms());
        for (size_t i = 0; i < NF(r); i++)
            if (F(r)[i]->on_usage != NULL)
                F(r)[i]->on_usage(r, ctx_of(r, i), &r->usage);
    }
    for (size_t i = NF(r); i-- > 0;)
        if (F(r)[i]->on_end != NULL)
            F(r)[i]->on_end(r, ctx_of(r, i));
    r->ended = true;
    dp_cont_cleanup(r);
}
