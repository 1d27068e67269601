/* A client request: libmicrohttpd's side of it (request.h).
 *
 *   access(first call)  -> create; the API is known from method and path
 *   access(upload data) -> body appended (past maxBodyBytes: dropped, 413 later); all of it
 *                          is always consumed (libmicrohttpd 0.9.75 hangs on leftovers)
 *   access(final call)  -> the engine runs the phases (phases.c); unless a response is
 *                          ready, the connection is suspended; a request still waiting
 *                          after DP_WATCH_AFTER_MS gets its client fd watched for RDHUP
 *   access(woken)       -> the prepared response is queued (respond.c)
 *   completed           -> the engine ends the request (filters' on_end), then it is freed
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "conn.h"
#include "phases.h"
#include "provider.h"
#include "request.h"
#include "respond.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/net.h"
#include "server.h"

const char *dp_request_header(struct dp_request *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

int dp_error_set(struct dp_request *r, unsigned status, const char *type, const char *code,
                 const char *param, const char *fmt, ...)
{
    struct dp_error *e = &r->err;
    e->status = status;
    snprintf(e->type, sizeof(e->type), "%s", type);
    snprintf(e->code, sizeof(e->code), "%s", code != NULL ? code : "");
    snprintf(e->param, sizeof(e->param), "%s", param != NULL ? param : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return KW_ERROR;
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

static int64_t clamp_tokens(int64_t n)
{
    return n < 0 ? 0 : n > KW_MAX_USAGE_TOKENS ? KW_MAX_USAGE_TOKENS : n;
}

int64_t dp_cost_nano(const struct kw_backend *b, int64_t in, int64_t cached, int64_t out)
{
    if (b == NULL || !b->pricing.set)
        return 0;
    in = clamp_tokens(in);
    out = clamp_tokens(out);
    int64_t c0 = cached > 0 && cached <= in ? cached : 0;
    /* micro-USD per million tokens = nano-USD per thousand tokens; prices are bounded by
     * the decoder, counts here, so 128 bits cannot overflow */
    __int128 n = ((__int128)(in - c0) * b->pricing.input_per_million +
                  (__int128)c0 * b->pricing.cached_input_per_million +
                  (__int128)out * b->pricing.output_per_million) /
                 1000;
    return n < 0 ? 0 : n > KW_MAX_COST_NUSD ? KW_MAX_COST_NUSD : (int64_t)n;
}

void dp_request_usage_clamp(struct dp_request *r)
{
    r->usage.prompt = clamp_tokens(r->usage.prompt);
    r->usage.completion = clamp_tokens(r->usage.completion);
    r->usage.cached = clamp_tokens(r->usage.cached);
    r->usage.reasoning = clamp_tokens(r->usage.reasoning);
}

int64_t dp_request_max_output(const struct dp_request *r, int64_t max, const char **field)
{
    static const char *const keys[] = {"max_completion_tokens", "max_tokens"};
    for (size_t i = 0; i < KW_ARRAY_LEN(keys); i++) {
        const struct kw_node *n = kw_node_get(r->json, keys[i]);
        if (n == NULL || n->type == KW_NODE_NULL)
            continue;
        *field = keys[i];
        if (n->type != KW_NODE_INT || n->i < 1 || n->i > max)
            return -1;
        return n->i;
    }
    return 0;
}

void dp_usage_raw(struct dp_usage *u, const char *name, int64_t value)
{
    unsigned i = 0;
    while (i < u->nraw && strcmp(u->raw[i].name, name) != 0)
        i++;
    if (i == DP_USAGE_RAW)
        return;
    u->raw[i].name = name;
    u->raw[i].value = value;
    if (i == u->nraw)
        u->nraw++;
}

void dp_request_usage(struct dp_request *r, const struct kw_node *usage)
{
    if (usage == NULL || usage->type != KW_NODE_MAP)
        return;
    /* chat's names, else the Responses API's */
    bool chat = kw_node_get(usage, "prompt_tokens") != NULL ||
                kw_node_get(usage, "completion_tokens") != NULL;
    const struct kw_node *p = kw_node_get(usage, chat ? "prompt_tokens" : "input_tokens");
    const struct kw_node *c = kw_node_get(usage, chat ? "completion_tokens" : "output_tokens");
    const struct kw_node *d =
        kw_node_get(kw_node_get(usage, chat ? "prompt_tokens_details" : "input_tokens_details"),
                    "cached_tokens");
    const struct kw_node *rt = kw_node_get(
        kw_node_get(usage, chat ? "completion_tokens_details" : "output_tokens_details"),
        "reasoning_tokens");
    /* OpenAI's prompt_tokens (input_tokens) include the cached ones */
    if (p != NULL && p->type == KW_NODE_INT) {
        r->usage.prompt = p->i;
        dp_usage_raw(&r->usage, chat ? "prompt_tokens" : "input_tokens", p->i);
    }
    if (c != NULL && c->type == KW_NODE_INT) {
        r->usage.completion = c->i;
        dp_usage_raw(&r->usage, chat ? "completion_tokens" : "output_tokens", c->i);
    }
    if (d != NULL && d->type == KW_NODE_INT) {
        r->usage.cached = d->i;
        dp_usage_raw(&r->usage, "cached_tokens", d->i);
    }
    if (rt != NULL && rt->type == KW_NODE_INT) {
        r->usage.reasoning = rt->i;
        dp_usage_raw(&r->usage, "reasoning_tokens", rt->i);
    }
    r->usage.have = p != NULL || c != NULL;
}

/* ---- the body and the backend --------------------------------------------------------------- */

static enum dp_api api_of(const char *url, const char *method, unsigned *status,
                          const struct dp_front_ops **front, const char **name)
{
    /* name: the API the client called, as the usage record and the metrics label it */
    static const struct {
        const char *path, *method, *name;
        enum dp_api api;
        const struct dp_front_ops *front;
    } apis[] = {
        {"/v1/chat/completions", "POST", "chat", DP_API_CHAT, NULL},
        {"/v1/completions", "POST", "completions", DP_API_COMPLETIONS, NULL},
        {"/v1/embeddings", "POST", "embeddings", DP_API_EMBEDDINGS, NULL},
        {"/v1/models", "GET", "models", DP_API_MODELS, NULL},
        {"/v1/messages", "POST", "messages", DP_API_CHAT, &dp_front_anthropic},
        {"/v1/responses", "POST", "responses", DP_API_CHAT, &dp_front_responses},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(apis); i++) {
        if (strcmp(url, apis[i].path) != 0)
            continue;
        *status = strcmp(method, apis[i].method) == 0 ? 0 : 405;
        *front = apis[i].front;
        *name = apis[i].name;
        return apis[i].api;
    }
    *status = 404;
    *name = "other";
    return DP_API_NONE;
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
    struct kw_node *j = kw_node_map_copy(a, r->json);
    if (j == NULL || kw_node_map_set(a, j, "model", kw_node_cstring(a, r->upstream_model)) != KW_OK)
        return NULL;
    const struct kw_params *p = &r->backend->params;
    for (size_t i = 0; p->defaults != NULL && i < p->defaults->n; i++)
        if (kw_node_get(j, p->defaults->pairs[i].key->str) == NULL &&
            kw_node_map_add(a, j, p->defaults->pairs[i].key, p->defaults->pairs[i].val) != KW_OK)
            return NULL;
    for (size_t i = 0; p->overrides != NULL && i < p->overrides->n; i++)
        if (kw_node_map_set(a, j, p->overrides->pairs[i].key->str, p->overrides->pairs[i].val) !=
            KW_OK)
            return NULL;
    for (size_t i = 0; i < p->nremove; i++)
        map_del(j, p->remove[i]);
    if (r->stream && !r->client_usage && !r->responses_native) {
        const struct kw_node *so = kw_node_get(j, "stream_options");
        struct kw_node *nso = so != NULL && so->type == KW_NODE_MAP ? kw_node_map_copy(a, so)
                                                                    : kw_node_new(a, KW_NODE_MAP);
        if (nso == NULL ||
            kw_node_map_set(a, nso, "include_usage", kw_node_bool(a, true)) != KW_OK ||
            kw_node_map_set(a, j, "stream_options", nso) != KW_OK)
            return NULL;
    }
    return j;
}

int dp_request_parse_body(struct dp_request *r)
{
    char err[256];
    dp_request_arena_grow(r, r->body.len);
    if (kw_json_parse(r->arena, r->body.data != NULL ? r->body.data : "", r->body.len, &r->json,
                      err, sizeof(err)) == KW_NOMEM) {
        dp_error_set(r, 413, "invalid_request_error", "request_too_large", NULL,
                     "the request body needs more memory to parse than a request may use "
                     "(%u MiB plus %u times its size): send fewer, larger JSON values",
                     DP_ARENA_BASE >> 20, DP_ARENA_PER_BYTE);
        return KW_ERROR;
    }
    if (r->json == NULL || r->json->type != KW_NODE_MAP) {
        dp_error_set(r, 400, "invalid_request_error", NULL, NULL,
                     "We could not parse the JSON body of your request: %s",
                     r->json == NULL ? err : "the body must be a JSON object");
        return KW_ERROR;
    }
    if (r->front != NULL && r->front->request(r) != KW_OK)
        return KW_ERROR;
    const struct kw_node *model = kw_node_get(r->json, "model");
    if (model == NULL || model->type != KW_NODE_STRING || model->len == 0 ||
        strlen(model->str) != model->len) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "model",
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
            dp_error_set(r, 400, "invalid_request_error", NULL, need[i].field,
                         v == NULL ? "'%s' is a required property" : "'%s' has the wrong type",
                         need[i].field);
            return KW_ERROR;
        }
    }
    if (r->api != DP_API_EMBEDDINGS) {
        const struct kw_node *s = kw_node_get(r->json, "stream");
        if (s != NULL && s->type != KW_NODE_BOOL && s->type != KW_NODE_NULL) {
            dp_error_set(r, 400, "invalid_request_error", NULL, "stream",
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

int dp_request_bind(struct dp_request *r, const struct kw_backend_ref *ref)
{
    r->ref = ref;
    r->backend = ref->backend;
    if (r->provider != NULL && r->provider->cleanup != NULL && r->provider_state != NULL)
        r->provider->cleanup(r);
    r->provider = dp_provider_for(r->backend);
    r->provider_state = NULL; /* a fallback may switch providers */
    if (r->provider == NULL)
        return dp_error_set(r, 501, "server_error", "provider_not_supported", NULL,
                            "backend %s uses provider %s, which this build cannot translate yet",
                            r->backend->meta.name, kw_provider_name(r->backend->provider));
    r->upstream_model = ref->model_override != NULL      ? ref->model_override
                        : r->backend->model_name != NULL ? r->backend->model_name
                                                         : r->model;
    dp_responses_bind(r);
    r->up_json = rewrite(r);
    if (r->up_json == NULL)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    return KW_OK;
}

static void on_client_hup(struct dp_watch *watch, uint32_t events)
{
    (void)events;
    dp_engine_client_gone(watch->ptr);
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
    r->client_watch = (struct dp_watch){.fd = ci->connect_fd, .on_event = on_client_hup, .ptr = r};
    r->client_watched =
        dp_worker_watch(r->w, &r->client_watch, EPOLLRDHUP | EPOLLET, true) == KW_OK;
    /* a client that left before the watch began: its RDHUP is already pending */
    char c;
    if (r->client_watched && recv(ci->connect_fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0)
        dp_engine_client_gone(r);
}

/* The body is complete: run the phases; wait unless an answer is ready. */
static enum MHD_Result body_done(struct dp_request *r)
{
    dp_conn_body_done(r);
    r->state = DP_ST_UPSTREAM;
    dp_engine_start(r);
    if (r->pending != NULL && !r->hold)
        return dp_respond_queue(r); /* answered at once (errors, /v1/models) */
    /* wait for the upstream; a request still waiting after DP_WATCH_AFTER_MS gets its client
     * fd watched, so a client leaving a suspended connection is noticed (MHD would not);
     * quick requests never pay the two epoll_ctl calls */
    r->watch_timer.on_fire = on_watch_timer;
    dp_timer_arm(r->w, &r->watch_timer, dp_now_ms() + DP_WATCH_AFTER_MS);
    dp_respond_suspend(r);
    return MHD_YES;
}

static void track(struct dp_worker *w, struct dp_request *r)
{
    r->prev = NULL;
    r->next = w->requests;
    if (w->requests != NULL)
        w->requests->prev = r;
    w->requests = r;
}

static void untrack(struct dp_worker *w, struct dp_request *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        w->requests = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
}

void dp_request_abort_all(struct dp_worker *w)
{
    for (struct dp_request *r = w->requests; r != NULL; r = r->next)
        dp_engine_client_gone(r);
}

static struct dp_request *request_new(struct dp_worker *w, struct MHD_Connection *conn,
                                      const char *url, const char *method)
{
    struct dp_request *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->arena = dp_worker_arena(w);
    r->scratch = w->scratch;
    if (r->arena == NULL) {
        free(r);
        return NULL;
    }
    kw_arena_set_max(r->arena, DP_ARENA_BASE);
    r->w = w;
    r->conn = conn;
    r->start_ms = dp_now_ms();
    r->thinking_budget = -1;
    r->api_name = "other";
    r->usage.input_seen = -1;
    kw_heap_node_init(&r->timer.node);
    kw_heap_node_init(&r->watch_timer.node);
    kw_heap_node_init(&r->attempt_timer.node);
    r->endpoint = -1;
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
    atomic_fetch_add_explicit(&w->active_requests, 1, memory_order_relaxed);
    track(w, r);
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
        r->api = api_of(url, method, &early, &r->front, &r->api_name);
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
    if (r->pending != NULL && !r->hold) /* a held answer waits for dp_respond_release */
        return dp_respond_queue(r);
    if (r->client_gone)
        return MHD_NO;
    if (r->state == DP_ST_BODY)
        return body_done(r);
    dp_respond_suspend(r); /* woken with nothing to send yet */
    return MHD_YES;
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
    dp_engine_end(r, toe); /* the transfer stops; usage and on_end of every filter */
    dp_conn_request_done(r);
    dp_timer_cancel(w, &r->timer);
    dp_timer_cancel(w, &r->watch_timer);
    if (r->client_watched)
        dp_worker_unwatch(w, &r->client_watch);
    if (r->state == DP_ST_STREAM)
        atomic_fetch_sub_explicit(&w->active_streams, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&w->active_requests, 1, memory_order_relaxed);
    if (r->pending != NULL)
        MHD_destroy_response(r->pending);
    untrack(w, r);
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

int dp_request_add_header(struct dp_request *r, const char *name, const char *value)
{
    unsigned i = 0;
    while (i < r->nhdrs && strcasecmp(r->hdrs[i].name, name) != 0)
        i++;
    if (i == DP_MAX_RESPONSE_HEADERS)
        return KW_ERROR;
    const char *v = kw_arena_strdup(r->arena, value);
    if (v == NULL)
        return KW_ERROR;
    r->hdrs[i].name = name;
    r->hdrs[i].value = v;
    if (i == r->nhdrs)
        r->nhdrs++;
    return KW_OK;
}

size_t dp_addr_key(const struct sockaddr *sa, unsigned char out[16])
{
    if (sa == NULL)
        return 0;
    if (sa->sa_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)sa)->sin_addr, 4);
        return 4;
    }
    if (sa->sa_family != AF_INET6)
        return 0;
    const unsigned char *a = ((const struct sockaddr_in6 *)sa)->sin6_addr.s6_addr;
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (memcmp(a, mapped, 12) == 0) {
        memcpy(out, a + 12, 4);
        return 4;
    }
    memcpy(out, a, 8); /* a host holds a whole /64: keyed by it */
    return 8;
}

/* One X-Forwarded-For entry (spaces trimmed) as an address; false when it is none. */
static bool forwarded_addr(const char *s, size_t n, struct sockaddr_storage *ss)
{
    while (n > 0 && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    char buf[64];
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return kw_addr_parse(buf, ss);
}

size_t dp_request_client_addr(struct dp_request *r, unsigned char out[16])
{
    const union MHD_ConnectionInfo *ci =
        r->conn != NULL ? MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS)
                        : NULL;
    if (ci == NULL || ci->client_addr == NULL)
        return 0;
    const struct sockaddr *peer = ci->client_addr;
    const struct kw_dataplane *dp = r->w->server->dp;
    if (dp->ntrusted_proxies == 0 ||
        !kw_cidr_match(dp->trusted_proxies, dp->ntrusted_proxies, peer))
        return dp_addr_key(peer, out);
    /* the peer is a trusted proxy: the client is the right-most address of X-Forwarded-For
     * that is not one (each proxy appends whom it heard from; what is left of the first
     * untrusted entry is the client's to invent) */
    const char *xff = dp_request_header(r, "x-forwarded-for");
    struct sockaddr_storage ss;
    size_t len = xff != NULL ? strlen(xff) : 0;
    while (len > 0) {
        const char *comma = NULL;
        for (size_t i = len; i-- > 0;)
            if (xff[i] == ',') {
                comma = xff + i;
                break;
            }
        const char *start = comma != NULL ? comma + 1 : xff;
        if (!forwarded_addr(start, (size_t)(xff + len - start), &ss))
            break; /* not an address: the last trusted hop is what is known */
        peer = (const struct sockaddr *)&ss;
        if (!kw_cidr_match(dp->trusted_proxies, dp->ntrusted_proxies, peer))
            break;
        len = comma != NULL ? (size_t)(comma - xff) : 0;
    }
    return dp_addr_key(peer, out);
}
