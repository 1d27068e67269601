/* A client request, from the first access-handler call to the access-log line.
 *
 *   access(first call)  -> create; the API is known from method and path
 *   access(upload data) -> body appended (past maxBodyBytes: dropped, 413 later); all of it
 *                          is always consumed (libmicrohttpd 0.9.75 hangs on leftovers)
 *   access(final call)  -> phases: parse body once -> route -> rewrite -> upstream start,
 *                          then suspend; the client's socket is watched for RDHUP
 *   upstream headers    -> stream: a callback response is prepared; else the body is
 *                          buffered; either way the connection is resumed and the response
 *                          queued at the next access call (r->pending)
 *   reader              -> copies r->out to MHD; when empty it suspends (returning 0 only
 *                          right after MHD_suspend_connection, else MHD spins a core)
 *   completed           -> upstream cancelled if still running, log line, metrics, free
 *
 * Errors before a response use the OpenAI shape {"error":{"message","type","param","code"}};
 * after a stream started they become a final SSE error event (upstream.c). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>

#include "dp.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "server.h"

static const char *header_of(void *ud, const char *name)
{
    struct dp_request *r = ud;
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

void dp_request_headers(struct dp_request *r, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "x-request-id", r->id);
    if (r->front != NULL && r->front->id_header != NULL)
        MHD_add_response_header(resp, r->front->id_header, r->id);
}

/* The error body in the client's API shape into b (malloc'd: the arena may be the very
 * thing that ran out). */
static void error_body(struct dp_request *r, unsigned status, const char *message, const char *type,
                       const char *param, const char *code, struct kw_buf *b)
{
    kw_buf_init(b, 64 * 1024);
    if (r->front != NULL) {
        r->front->error_body(r, status, message, strlen(message), b);
        return;
    }
    kw_buf_puts(b, "{\"error\":{\"message\":");
    kw_json_write_string(b, message, strlen(message));
    kw_buf_puts(b, ",\"type\":");
    kw_json_write_string(b, type, strlen(type));
    kw_buf_puts(b, ",\"param\":");
    if (param != NULL)
        kw_json_write_string(b, param, strlen(param));
    else
        kw_buf_puts(b, "null");
    kw_buf_puts(b, ",\"code\":");
    if (code != NULL)
        kw_json_write_string(b, code, strlen(code));
    else
        kw_buf_puts(b, "null");
    kw_buf_puts(b, "}}");
}

void dp_request_wake(struct dp_request *r)
{
    if (r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    }
}

static void suspend(struct dp_request *r)
{
    if (!r->suspended) {
        r->suspended = true;
        MHD_suspend_connection(r->conn);
    }
}

static void set_pending(struct dp_request *r, struct MHD_Response *resp, unsigned status)
{
    if (r->pending != NULL)
        MHD_destroy_response(r->pending);
    r->pending = resp;
    r->pending_status = status;
    dp_request_wake(r);
}

void dp_request_fail(struct dp_request *r, unsigned status, const char *type, const char *code,
                     const char *param, const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(r->fail_buf, sizeof(r->fail_buf), "%.*s", (int)sizeof(r->fail_buf) - 1, msg);
    r->fail_msg = r->fail_buf;
    struct kw_buf body;
    error_body(r, status, msg, type, param, code, &body);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        body.len, body.data != NULL ? body.data : (char *)"", MHD_RESPMEM_MUST_COPY);
    kw_buf_cleanup(&body);
    if (resp == NULL)
        return;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    dp_request_headers(r, resp);
    if (status == 405)
        MHD_add_response_header(resp, "Allow", r->api == DP_API_MODELS ? "GET" : "POST");
    if (status == 503 && r->over_budget)
        MHD_add_response_header(resp, "Retry-After", "1");
    set_pending(r, resp, status);
}

static enum MHD_Result queue_pending(struct dp_request *r)
{
    struct MHD_Response *resp = r->pending;
    r->pending = NULL;
    r->status = r->pending_status;
    enum MHD_Result rc = MHD_queue_response(r->conn, r->status, resp);
    MHD_destroy_response(resp);
    if (r->state != DP_ST_STREAM) {
        r->state = DP_ST_DONE;
        dp_timer_cancel(r->w, &r->watch_timer);
        /* MHD sees a disconnect itself from here on: the client may close at once */
        if (r->client_watched)
            dp_worker_unwatch(r->w, &r->client_watch);
        r->client_watched = false;
    }
    return rc;
}

void dp_request_account(struct dp_request *r)
{
    long long now =
        (long long)(r->body.cap + r->up_body.cap + r->up_resp.cap + r->out.cap + r->stage.cap);
    if (now != r->accounted) {
        atomic_fetch_add_explicit(&r->w->server->mem_used, now - r->accounted,
                                  memory_order_relaxed);
        r->accounted = now;
    }
}

void dp_request_arena_grow(struct dp_request *r, size_t extra)
{
    r->arena_bytes += extra;
    kw_arena_set_max(r->arena, DP_ARENA_BASE + DP_ARENA_PER_BYTE * r->arena_bytes);
}

/* Whether more bytes fit in the memory budget now (admission control: requests already in
 * flight are never cut; new ones wait for the budget). */
static bool admit(struct dp_request *r, uint64_t more)
{
    const struct dp_server *s = r->w->server;
    long long used = atomic_load_explicit(&r->w->server->mem_used, memory_order_relaxed);
    return used < 0 || (uint64_t)used + more <= s->dp->limits.max_memory_bytes;
}

void dp_request_usage(struct dp_request *r, const struct kw_node *usage)
{
    if (usage == NULL || usage->type != KW_NODE_MAP)
        return;
    const struct kw_node *p = kw_node_get(usage, "prompt_tokens");
    const struct kw_node *c = kw_node_get(usage, "completion_tokens");
    const struct kw_node *d =
        kw_node_get(kw_node_get(usage, "prompt_tokens_details"), "cached_tokens");
    if (p != NULL && p->type == KW_NODE_INT)
        r->prompt_tokens = p->i;
    if (c != NULL && c->type == KW_NODE_INT)
        r->completion_tokens = c->i;
    if (d != NULL && d->type == KW_NODE_INT)
        r->cached_tokens = d->i;
    r->have_usage = p != NULL || c != NULL;
}

void dp_request_client_gone(struct dp_request *r)
{
    if (r->client_gone)
        return;
    r->client_gone = true;
    dp_upstream_stop(r); /* cancel the upstream at once, not at the next MHD pass */
    dp_request_wake(r);
}

/* ---- streaming response ------------------------------------------------------------------ */

static ssize_t on_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct dp_request *r = cls;
    if (r->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = r->out.len - r->out_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->out.data + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out.len) {
            kw_buf_reset(&r->out);
            r->out_off = 0;
        } else if (r->out_off > DP_STREAM_LOW_WATER) {
            memmove(r->out.data, r->out.data + r->out_off, r->out.len - r->out_off);
            r->out.len -= r->out_off;
            r->out_off = 0;
        }
        dp_upstream_drained(r); /* may append to r->out re-entrantly */
        return (ssize_t)n;
    }
    if (r->stream_end)
        return MHD_CONTENT_READER_END_OF_STREAM;
    suspend(r);
    return 0;
}

static void on_stream_timer(struct dp_timer *t);

void dp_request_begin_stream(struct dp_request *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, on_read, r, NULL);
    if (resp == NULL) {
        dp_request_fail(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    dp_request_headers(r, resp);
    if (r->front != NULL && r->front->stream_begin(r, &r->out) != KW_OK) {
        MHD_destroy_response(resp);
        dp_request_fail(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    r->state = DP_ST_STREAM;
    atomic_fetch_add_explicit(&r->w->stats.active_streams, 1, memory_order_relaxed);
    r->last_out_ms = r->last_up_ms = dp_now_ms();
    r->timer.on_fire = on_stream_timer;
    int64_t due = r->last_out_ms + DP_KEEPALIVE_MS;
    if (r->last_up_ms + r->route->stream_idle_timeout_ms < due)
        due = r->last_up_ms + r->route->stream_idle_timeout_ms;
    dp_timer_arm(r->w, &r->timer, due);
    set_pending(r, resp, 200);
}

struct kw_buf *dp_stream_sink(struct dp_request *r)
{
    return r->front != NULL ? &r->stage : &r->out;
}

int dp_front_flush(struct dp_request *r)
{
    if (r->front == NULL || r->stage.len == 0)
        return KW_OK;
    int rc = r->front->stream(r, r->stage.data, r->stage.len, &r->out);
    kw_buf_reset(&r->stage);
    return rc;
}

/* Append bytes for the client and wake it. */
int dp_request_emit(struct dp_request *r, const char *data, size_t len)
{
    if (kw_buf_append(&r->out, data, len) != KW_OK)
        return KW_ERROR;
    r->last_out_ms = dp_now_ms();
    dp_request_wake(r);
    return KW_OK;
}

/* End the stream with an OpenAI-style error event: never a silent cut. */
void dp_request_stream_error(struct dp_request *r, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (r->front != NULL) {
        r->front->stream_error(r, msg, &r->out);
        r->stream_end = true;
        dp_request_wake(r);
        return;
    }
    struct kw_buf body;
    error_body(r, 500, msg, "server_error", NULL, code, &body);
    if (body.data != NULL) {
        kw_buf_puts(&r->out, "data: ");
        kw_buf_append(&r->out, body.data, body.len);
        kw_buf_puts(&r->out, "\n\n");
    }
    kw_buf_cleanup(&body);
    r->stream_end = true;
    dp_request_wake(r);
}

static void on_stream_timer(struct dp_timer *t)
{
    struct dp_request *r = (struct dp_request *)((char *)t - offsetof(struct dp_request, timer));
    if (r->state != DP_ST_STREAM || r->stream_end)
        return;
    int64_t now = dp_now_ms();
    int64_t idle = r->route->stream_idle_timeout_ms;
    if (!r->up_done && now - r->last_up_ms >= idle) {
        dp_upstream_stop(r);
        atomic_fetch_add_explicit(&r->w->stats.upstream_errors[DP_UPERR_TIMEOUT], 1,
                                  memory_order_relaxed);
        dp_request_stream_error(r, "upstream_timeout", "the upstream sent nothing for %lld ms",
                                (long long)idle);
        return;
    }
    const char *ka = r->front != NULL ? r->front->keepalive : ": keepalive\n\n";
    if (now - r->last_out_ms >= DP_KEEPALIVE_MS && r->out.len == r->out_off)
        dp_request_emit(r, ka, strlen(ka));
    int64_t due = r->last_out_ms + DP_KEEPALIVE_MS;
    if (!r->up_done && r->last_up_ms + idle < due)
        due = r->last_up_ms + idle;
    dp_timer_arm(r->w, &r->timer, due);
}

/* ---- phases --------------------------------------------------------------------------------- */

static enum dp_api api_of(const char *url, const char *method, unsigned *status,
                          const struct dp_front_ops **front)
{
    static const struct {
        const char *path, *method;
        enum dp_api api;
        const struct dp_front_ops *front;
    } apis[] = {
        {"/v1/chat/completions", "POST", DP_API_CHAT, NULL},
        {"/v1/completions", "POST", DP_API_COMPLETIONS, NULL},
        {"/v1/embeddings", "POST", DP_API_EMBEDDINGS, NULL},
        {"/v1/models", "GET", DP_API_MODELS, NULL},
        {"/v1/messages", "POST", DP_API_CHAT, &dp_front_anthropic},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(apis); i++) {
        if (strcmp(url, apis[i].path) != 0)
            continue;
        *status = strcmp(method, apis[i].method) == 0 ? 0 : 405;
        *front = apis[i].front;
        return apis[i].api;
    }
    *status = 404;
    return DP_API_NONE;
}

/* A shallow copy of map m whose pairs may be replaced without touching m. */
static struct kw_node *map_copy(struct kw_arena *a, const struct kw_node *m)
{
    struct kw_node *c = kw_node_new(a, KW_NODE_MAP);
    if (c == NULL)
        return NULL;
    for (size_t i = 0; i < m->n; i++)
        if (kw_node_map_add(a, c, m->pairs[i].key, m->pairs[i].val) != KW_OK)
            return NULL;
    return c;
}

static int map_set(struct kw_arena *a, struct kw_node *m, const char *key, struct kw_node *v)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < m->n; i++)
        if (m->pairs[i].key->len == klen && memcmp(m->pairs[i].key->str, key, klen) == 0) {
            m->pairs[i].val = v;
            return v != NULL ? KW_OK : KW_ERROR;
        }
    return kw_node_map_put(a, m, key, v);
}

static void map_del(struct kw_node *m, const char *key)
{
    size_t klen = strlen(key);
    for (size_t i = 0; i < m->n; i++)
        if (m->pairs[i].key->len == klen && memcmp(m->pairs[i].key->str, key, klen) == 0) {
            memmove(&m->pairs[i], &m->pairs[i + 1], (m->n - i - 1) * sizeof(*m->pairs));
            m->n--;
            return;
        }
}

/* The body for the chosen backend: model, params {defaults, overrides, remove}, and
 * stream_options.include_usage so usage is always known. The client's tree is kept. */
static struct kw_node *rewrite(struct dp_request *r)
{
    struct kw_arena *a = r->arena;
    struct kw_node *j = map_copy(a, r->json);
    if (j == NULL || map_set(a, j, "model", kw_node_cstring(a, r->upstream_model)) != KW_OK)
        return NULL;
    const struct kw_params *p = &r->backend->params;
    for (size_t i = 0; p->defaults != NULL && i < p->defaults->n; i++)
        if (kw_node_get(j, p->defaults->pairs[i].key->str) == NULL &&
            kw_node_map_add(a, j, p->defaults->pairs[i].key, p->defaults->pairs[i].val) != KW_OK)
            return NULL;
    for (size_t i = 0; p->overrides != NULL && i < p->overrides->n; i++)
        if (map_set(a, j, p->overrides->pairs[i].key->str, p->overrides->pairs[i].val) != KW_OK)
            return NULL;
    for (size_t i = 0; i < p->nremove; i++)
        map_del(j, p->remove[i]);
    if (r->stream && !r->client_usage) {
        const struct kw_node *so = kw_node_get(j, "stream_options");
        struct kw_node *nso =
            so != NULL && so->type == KW_NODE_MAP ? map_copy(a, so) : kw_node_new(a, KW_NODE_MAP);
        if (nso == NULL || map_set(a, nso, "include_usage", kw_node_bool(a, true)) != KW_OK ||
            map_set(a, j, "stream_options", nso) != KW_OK)
            return NULL;
    }
    return j;
}

int dp_request_parse_body(struct dp_request *r)
{
    char err[256];
    dp_request_arena_grow(r, r->body.len);
    if (kw_json_parse(r->arena, r->body.data != NULL ? r->body.data : "", r->body.len, &r->json,
                      err, sizeof(err)) != KW_OK &&
        strncmp(err, "out of memory", 13) == 0) {
        dp_request_fail(r, 413, "invalid_request_error", "request_too_large", NULL,
                        "the request body needs more memory to parse than a request may use "
                        "(%u MiB plus %u times its size): send fewer, larger JSON values",
                        DP_ARENA_BASE >> 20, DP_ARENA_PER_BYTE);
        return KW_ERROR;
    }
    if (r->json == NULL || r->json->type != KW_NODE_MAP) {
        dp_request_fail(r, 400, "invalid_request_error", NULL, NULL,
                        "We could not parse the JSON body of your request: %s",
                        r->json == NULL ? err : "the body must be a JSON object");
        return KW_ERROR;
    }
    if (r->front != NULL && r->front->request(r) != KW_OK)
        return KW_ERROR;
    const struct kw_node *model = kw_node_get(r->json, "model");
    if (model == NULL || model->type != KW_NODE_STRING || model->len == 0 ||
        strlen(model->str) != model->len) {
        dp_request_fail(r, 400, "invalid_request_error", NULL, "model",
                        model == NULL ? "you must provide a model parameter"
                                      : "model must be a non-empty string");
        return KW_ERROR;
    }
    r->model = model->str;
    static const struct {
        enum dp_api api;
        const char *field;
        enum kw_node_type t1, t2;
    } need[] = {
        {DP_API_CHAT, "messages", KW_NODE_SEQ, KW_NODE_SEQ},
        {DP_API_COMPLETIONS, "prompt", KW_NODE_STRING, KW_NODE_SEQ},
        {DP_API_EMBEDDINGS, "input", KW_NODE_STRING, KW_NODE_SEQ},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(need); i++) {
        if (need[i].api != r->api)
            continue;
        const struct kw_node *v = kw_node_get(r->json, need[i].field);
        if (v == NULL || (v->type != need[i].t1 && v->type != need[i].t2)) {
            dp_request_fail(r, 400, "invalid_request_error", NULL, need[i].field,
                            v == NULL ? "'%s' is a required property" : "'%s' has the wrong type",
                            need[i].field);
            return KW_ERROR;
        }
    }
    if (r->api != DP_API_EMBEDDINGS) {
        const struct kw_node *s = kw_node_get(r->json, "stream");
        if (s != NULL && s->type != KW_NODE_BOOL && s->type != KW_NODE_NULL) {
            dp_request_fail(r, 400, "invalid_request_error", NULL, "stream",
                            "stream must be a boolean");
            return KW_ERROR;
        }
        r->stream = s != NULL && s->type == KW_NODE_BOOL && s->b;
        const struct kw_node *u =
            kw_node_get(kw_node_get(r->json, "stream_options"), "include_usage");
        r->client_usage = u != NULL && u->type == KW_NODE_BOOL && u->b;
    }
    return KW_OK;
}

/* Choose a backend among the route's refs not yet tried and prepare its body. */
int dp_request_choose(struct dp_request *r, bool *tried)
{
    r->w->rnd ^= r->w->rnd << 13;
    r->w->rnd ^= r->w->rnd >> 17;
    r->w->rnd ^= r->w->rnd << 5;
    const struct kw_backend_ref *ref = dp_route_pick(r->route, r->w->rnd, tried);
    if (ref == NULL)
        return KW_DECLINED;
    tried[ref - r->route->refs] = true;
    r->ref = ref;
    r->backend = ref->backend;
    if (r->provider != NULL && r->provider->cleanup != NULL && r->provider_state != NULL)
        r->provider->cleanup(r);
    r->provider = dp_provider_for(r->backend);
    r->provider_state = NULL; /* a fallback may switch providers */
    if (r->provider == NULL) {
        dp_request_fail(r, 501, "server_error", "provider_not_supported", NULL,
                        "backend %s uses provider %s, which this build cannot translate yet",
                        r->backend->meta.name, kw_provider_name(r->backend->provider));
        return KW_ERROR;
    }
    r->upstream_model = ref->model_override != NULL      ? ref->model_override
                        : r->backend->model_name != NULL ? r->backend->model_name
                                                         : r->model;
    r->up_json = rewrite(r);
    if (r->up_json == NULL) {
        dp_request_fail(r, 500, "server_error", NULL, NULL, "out of memory");
        return KW_ERROR;
    }
    return KW_OK;
}

static enum MHD_Result respond_models(struct dp_request *r)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        r->table->models_len, r->table->models_json, MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    dp_request_headers(r, resp);
    r->pending = resp;
    r->pending_status = 200;
    return queue_pending(r);
}

static void on_watch_timer(struct dp_timer *t)
{
    struct dp_request *r =
        (struct dp_request *)((char *)t - offsetof(struct dp_request, watch_timer));
    if (r->client_watched || r->state == DP_ST_DONE || r->client_gone)
        return;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return;
    r->client_watch = (struct dp_watch){.kind = DP_WATCH_CLIENT, .fd = ci->connect_fd, .ptr = r};
    r->client_watched =
        dp_worker_watch(r->w, &r->client_watch, EPOLLRDHUP | EPOLLET, true) == KW_OK;
    /* a client that left before the watch began: its RDHUP is already pending */
    char c;
    if (r->client_watched && recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
        dp_request_client_gone(r);
}

static enum MHD_Result run_phases(struct dp_request *r, unsigned early_status)
{
    dp_conn_body_done(r);
    r->state = DP_ST_UPSTREAM;
    if (early_status == 404) {
        dp_request_fail(r, 404, "invalid_request_error", "unknown_url", NULL, "Invalid URL (%s %s)",
                        r->method, r->path);
        return queue_pending(r);
    }
    if (early_status == 405) {
        dp_request_fail(r, 405, "invalid_request_error", "method_not_allowed", NULL,
                        "method not allowed for %s", r->path);
        return queue_pending(r);
    }
    if (r->body_too_large) {
        dp_request_fail(r, 413, "invalid_request_error", "request_too_large", NULL,
                        "request body is larger than %llu bytes",
                        (unsigned long long)r->w->server->max_body_bytes);
        return queue_pending(r);
    }
    if (r->over_budget) {
        atomic_fetch_add_explicit(&r->w->server->rejected_memory, 1, memory_order_relaxed);
        dp_request_fail(r, 503, "server_error", "memory_limit", NULL,
                        "the gateway is at its memory limit (limits.maxMemoryBytes): retry "
                        "shortly");
        return queue_pending(r);
    }
    if (r->table == NULL) {
        dp_request_fail(r, 503, "server_error", "not_ready", NULL, "no configuration applied yet");
        return queue_pending(r);
    }
    if (r->api == DP_API_MODELS)
        return respond_models(r);
    if (dp_request_parse_body(r) != KW_OK)
        return queue_pending(r);
    r->route = dp_table_route(r->table, r->model, r->path, header_of, r);
    if (r->route == NULL) {
        dp_request_fail(r, 404, "invalid_request_error", "model_not_found", "model",
                        "The model `%s` does not exist or you do not have access to it.", r->model);
        return queue_pending(r);
    }
    r->tried = kw_arena_alloc(r->arena, r->route->nrefs * sizeof(bool) + 1);
    int rc = r->tried != NULL ? dp_request_choose(r, r->tried) : KW_ERROR;
    if (rc == KW_DECLINED)
        dp_request_fail(r, 503, "server_error", "no_backend", NULL, "no backend available");
    if (rc != KW_OK || dp_upstream_start(r) != KW_OK)
        return queue_pending(r);
    /* wait for the upstream; a request still waiting after DP_WATCH_AFTER_MS gets its client
     * fd watched, so a client leaving a suspended connection is noticed (MHD would not);
     * quick requests never pay the two epoll_ctl calls */
    r->watch_timer.on_fire = on_watch_timer;
    dp_timer_arm(r->w, &r->watch_timer, dp_now_ms() + DP_WATCH_AFTER_MS);
    suspend(r);
    return MHD_YES;
}

static struct dp_request *request_new(struct dp_worker *w, struct MHD_Connection *conn,
                                      const char *url, const char *method)
{
    struct dp_request *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->arena = dp_worker_arena(w);
    if (r->arena == NULL) {
        free(r);
        return NULL;
    }
    kw_arena_set_max(r->arena, DP_ARENA_BASE);
    r->w = w;
    r->conn = conn;
    r->start_ms = dp_now_ms();
    kw_heap_node_init(&r->timer.node);
    kw_heap_node_init(&r->watch_timer.node);
    r->path = kw_arena_strdup(r->arena, url);
    r->method = kw_arena_strdup(r->arena, method);
    const char *rid = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "x-request-id");
    bool ok = rid != NULL && strlen(rid) < sizeof(r->id) && strlen(rid) > 0;
    for (const char *p = rid; ok && *p; p++)
        ok = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
             *p == '-' || *p == '_' || *p == '.';
    if (ok)
        snprintf(r->id, sizeof(r->id), "%s", rid);
    else
        snprintf(r->id, sizeof(r->id), "%x-%llx-%llx", w->index,
                 (unsigned long long)w->server->boot_id, (unsigned long long)++w->next_id);
    kw_buf_init(&r->body, w->server->max_body_bytes);
    kw_buf_init(&r->up_body, w->server->max_body_bytes * 2 + 65536);
    kw_buf_init(&r->up_resp, DP_MAX_UPSTREAM_RESPONSE);
    kw_buf_init(&r->out, DP_MAX_STREAM_BUFFER);
    kw_buf_init(&r->stage, DP_MAX_STREAM_BUFFER);
    dp_sse_init(&r->sse, DP_MAX_SSE_EVENT);
    r->table = dp_table_ref(w->table);
    atomic_fetch_add_explicit(&w->stats.active_requests, 1, memory_order_relaxed);
    dp_worker_track(w, r);
    return r;
}

enum MHD_Result dp_on_access(void *cls, struct MHD_Connection *conn, const char *url,
                             const char *method, const char *version, const char *upload_data,
                             size_t *upload_data_size, void **con_cls)
{
    (void)version;
    struct dp_worker *w = cls;
    struct dp_request *r = *con_cls;
    if (r == NULL) {
        r = request_new(w, conn, url, method);
        if (r == NULL)
            return MHD_NO;
        unsigned early = 0;
        r->api = api_of(url, method, &early, &r->front);
        r->early_status = early;
        *con_cls = r;
        dp_conn_request_started(conn, r);
        const char *cl = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Content-Length");
        unsigned long long announced = cl != NULL ? strtoull(cl, NULL, 10) : 0;
        if (announced > w->server->max_body_bytes)
            r->body_too_large = true; /* refused without buffering any of it */
        else if (!admit(r, announced + DP_ARENA_BASE))
            r->over_budget = true;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        r->body_len += *upload_data_size;
        if (r->body_too_large || r->over_budget) {
            /* dropped */
        } else if (!admit(r, *upload_data_size)) {
            r->over_budget = true;
            kw_buf_cleanup(&r->body);
        } else if (kw_buf_append(&r->body, upload_data, *upload_data_size) != KW_OK) {
            r->body_too_large = true;
            kw_buf_cleanup(&r->body);
        }
        dp_request_account(r);
        *upload_data_size = 0; /* always consume everything */
        return MHD_YES;
    }
    if (r->pending != NULL)
        return queue_pending(r);
    if (r->client_gone)
        return MHD_NO;
    if (r->state == DP_ST_BODY)
        return run_phases(r, r->early_status);
    suspend(r); /* woken with nothing to send yet */
    return MHD_YES;
}

static void access_log(struct dp_request *r, enum MHD_RequestTerminationCode toe)
{
    if (!kw_log_enabled(KW_LOG_INFO))
        return;
    struct kw_buf *b = &r->w->logbuf;
    kw_log_begin(b, KW_LOG_INFO, "request");
    kw_log_field(b, "request_id", r->id);
    kw_log_field(b, "path", r->path);
    kw_log_field_int(b, "status", r->status);
    kw_log_field_int(b, "duration_ms", dp_now_ms() - r->start_ms);
    if (r->model != NULL)
        kw_log_field(b, "model", r->model);
    if (r->route != NULL)
        kw_log_field(b, "route", r->route->meta.name);
    if (r->backend != NULL) {
        kw_log_field(b, "backend", r->backend->meta.name);
        kw_log_field(b, "upstream_model", r->upstream_model);
    }
    if (r->stream)
        kw_log_field(b, "stream", "true");
    if (r->have_usage) {
        kw_log_field_int(b, "prompt_tokens", r->prompt_tokens);
        kw_log_field_int(b, "completion_tokens", r->completion_tokens);
        kw_log_field_int(b, "cached_tokens", r->cached_tokens);
    }
    if (r->up_error != DP_UPERR_NONE)
        kw_log_field(b, "upstream_error", r->up_errmsg);
    else if (r->fail_msg != NULL && r->status >= 400)
        kw_log_field(b, "error", r->fail_msg);
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        kw_log_field(b, "client",
                     r->client_gone || toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT ? "disconnected"
                                                                                  : "error");
    kw_log_emit(b);
}

void dp_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                     enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    struct dp_request *r = *con_cls;
    if (r == NULL)
        return;
    *con_cls = NULL;
    struct dp_worker *w = r->w;
    if (r->state == DP_ST_STREAM && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        atomic_fetch_add_explicit(&w->stats.streams_cancelled, 1, memory_order_relaxed);
    dp_upstream_stop(r);
    dp_conn_request_done(r);
    dp_timer_cancel(w, &r->timer);
    dp_timer_cancel(w, &r->watch_timer);
    if (r->client_watched)
        dp_worker_unwatch(w, &r->client_watch);
    if (r->status > 0 && r->status < DP_STATUS_SLOTS)
        atomic_fetch_add_explicit(&w->stats.requests_by_status[r->status], 1, memory_order_relaxed);
    if (r->have_usage) {
        atomic_fetch_add_explicit(&w->stats.tokens_prompt, (uint_fast64_t)r->prompt_tokens,
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&w->stats.tokens_completion, (uint_fast64_t)r->completion_tokens,
                                  memory_order_relaxed);
        atomic_fetch_add_explicit(&w->stats.tokens_cached, (uint_fast64_t)r->cached_tokens,
                                  memory_order_relaxed);
    }
    if (r->state == DP_ST_STREAM)
        atomic_fetch_sub_explicit(&w->stats.active_streams, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->stats.active_requests, 1, memory_order_relaxed);
    access_log(r, toe);
    if (r->pending != NULL)
        MHD_destroy_response(r->pending);
    dp_worker_untrack(w, r);
    dp_sse_cleanup(&r->sse);
    if (r->provider != NULL && r->provider->cleanup != NULL && r->provider_state != NULL)
        r->provider->cleanup(r);
    if (r->front != NULL && r->front->cleanup != NULL)
        r->front->cleanup(r);
    kw_buf_cleanup(&r->body);
    kw_buf_cleanup(&r->up_body);
    kw_buf_cleanup(&r->up_resp);
    kw_buf_cleanup(&r->out);
    kw_buf_cleanup(&r->stage);
    dp_request_account(r); /* every buffer is freed: gives back what r counted */
    dp_table_unref(r->table);
    dp_worker_arena_done(w, r->arena);
    free(r);
}
