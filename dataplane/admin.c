/* The admin listener: /healthz, /readyz, /metrics (Prometheus text), /debug/config (the
 * current snapshot, credentials redacted). Its own libmicrohttpd thread: never a worker. */
#include <stdio.h>
#include <string.h>

#include "dp.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/net.h"
#include "server.h"

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *ctype,
                             const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}

static uint64_t sum(struct dp_server *s, size_t off)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < s->nworkers; i++)
        v += atomic_load_explicit((atomic_uint_fast64_t *)((char *)&s->workers[i].stats + off),
                                  memory_order_relaxed);
    return v;
}

static int64_t sum_signed(struct dp_server *s, size_t off)
{
    int64_t v = 0;
    for (unsigned i = 0; i < s->nworkers; i++)
        v += atomic_load_explicit((atomic_int_fast64_t *)((char *)&s->workers[i].stats + off),
                                  memory_order_relaxed);
    return v;
}

#define STAT(field) offsetof(struct dp_stats, field)

static void metrics(struct dp_server *s, struct kw_buf *b)
{
    kw_buf_puts(b, "# HELP knoway_requests_total Client requests answered, by HTTP status.\n"
                   "# TYPE knoway_requests_total counter\n");
    for (unsigned code = 100; code < DP_STATUS_SLOTS; code++) {
        uint64_t v = sum(s, STAT(requests_by_status) + code * sizeof(atomic_uint_fast64_t));
        if (v > 0)
            kw_buf_printf(b, "knoway_requests_total{code=\"%u\"} %llu\n", code,
                          (unsigned long long)v);
    }
    static const char *const kinds[] = {"connect", "timeout", "reset", "other"};
    kw_buf_puts(b, "# HELP knoway_upstream_errors_total Failed upstream transfers, by kind.\n"
                   "# TYPE knoway_upstream_errors_total counter\n");
    for (unsigned k = 0; k < 4; k++)
        kw_buf_printf(
            b, "knoway_upstream_errors_total{kind=\"%s\"} %llu\n", kinds[k],
            (unsigned long long)sum(s, STAT(upstream_errors) + k * sizeof(atomic_uint_fast64_t)));
    kw_buf_printf(b,
                  "# HELP knoway_tokens_total Tokens accounted from upstream usage, by type.\n"
                  "# TYPE knoway_tokens_total counter\n"
                  "knoway_tokens_total{gen_ai_token_type=\"input\"} %llu\n"
                  "knoway_tokens_total{gen_ai_token_type=\"output\"} %llu\n"
                  "knoway_tokens_total{gen_ai_token_type=\"cached_input\"} %llu\n",
                  (unsigned long long)sum(s, STAT(tokens_prompt)),
                  (unsigned long long)sum(s, STAT(tokens_completion)),
                  (unsigned long long)sum(s, STAT(tokens_cached)));
    kw_buf_printf(b,
                  "# HELP knoway_streams_cancelled_total Streams the client left before the end.\n"
                  "# TYPE knoway_streams_cancelled_total counter\n"
                  "knoway_streams_cancelled_total %llu\n"
                  "# HELP knoway_active_requests Requests in flight.\n"
                  "# TYPE knoway_active_requests gauge\n"
                  "knoway_active_requests %lld\n"
                  "# HELP knoway_active_streams Streams being relayed.\n"
                  "# TYPE knoway_active_streams gauge\n"
                  "knoway_active_streams %lld\n"
                  "# HELP knoway_open_connections Open client connections.\n"
                  "# TYPE knoway_open_connections gauge\n"
                  "knoway_open_connections %lld\n",
                  (unsigned long long)sum(s, STAT(streams_cancelled)),
                  (long long)sum_signed(s, STAT(active_requests)),
                  (long long)sum_signed(s, STAT(active_streams)),
                  (long long)sum_signed(s, STAT(open_connections)));
    kw_buf_printf(b,
                  "# HELP knoway_config_reloads_total Configuration reloads, by result.\n"
                  "# TYPE knoway_config_reloads_total counter\n"
                  "knoway_config_reloads_total{result=\"success\"} %llu\n"
                  "knoway_config_reloads_total{result=\"failure\"} %llu\n",
                  (unsigned long long)atomic_load(&s->reloads_ok),
                  (unsigned long long)atomic_load(&s->reloads_failed));
    kw_buf_printf(b,
                  "# HELP knoway_memory_budget_bytes Memory held by requests (arenas and "
                  "buffers) and the budget (limits.maxMemoryBytes).\n"
                  "# TYPE knoway_memory_budget_bytes gauge\n"
                  "knoway_memory_budget_bytes{state=\"used\"} %lld\n"
                  "knoway_memory_budget_bytes{state=\"limit\"} %llu\n"
                  "# HELP knoway_requests_rejected_total Requests refused before routing, by "
                  "reason.\n"
                  "# TYPE knoway_requests_rejected_total counter\n"
                  "knoway_requests_rejected_total{reason=\"memory\"} %llu\n"
                  "knoway_requests_rejected_total{reason=\"read_timeout\"} %llu\n",
                  (long long)atomic_load(&s->mem_used),
                  (unsigned long long)s->dp->limits.max_memory_bytes,
                  (unsigned long long)atomic_load(&s->rejected_memory),
                  (unsigned long long)atomic_load(&s->read_timeouts));
    struct dp_table *t = dp_server_table(s);
    if (t != NULL) {
        kw_buf_printf(b,
                      "# HELP knoway_snapshot_version_info The configuration snapshot in use.\n"
                      "# TYPE knoway_snapshot_version_info gauge\n"
                      "knoway_snapshot_version_info{version=\"%s\"} 1\n",
                      t->snap->version);
        dp_table_unref(t);
    }
}

/* The snapshot with every credential's data replaced: secrets never leave through admin. */
static int debug_config(struct dp_server *s, struct kw_buf *b)
{
    struct dp_table *t = dp_server_table(s);
    if (t == NULL)
        return KW_DECLINED;
    struct kw_buf text;
    kw_buf_init(&text, KW_MAX_SNAPSHOT_BYTES);
    struct kw_arena *a = kw_arena_new(KW_MAX_ARENA_BYTES);
    struct kw_node *root = NULL;
    char err[128];
    int rc = KW_ERROR;
    if (a != NULL && kw_snapshot_serialize(t->snap, &text) == KW_OK &&
        kw_json_parse(a, text.data, text.len, &root, err, sizeof(err)) == KW_OK) {
        struct kw_node *creds = kw_node_get(root, "credentials");
        for (size_t i = 0; creds != NULL && i < creds->n; i++) {
            struct kw_node *c = creds->items[i];
            for (size_t j = 0; j < c->n; j++)
                if (strcmp(c->pairs[j].key->str, "data") == 0)
                    c->pairs[j].val = kw_node_cstring(a, "(redacted)");
        }
        rc = kw_json_write(root, b);
    }
    kw_arena_free(a);
    kw_buf_cleanup(&text);
    dp_table_unref(t);
    return rc;
}

static enum MHD_Result on_admin(void *cls, struct MHD_Connection *c, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload;
    struct dp_server *s = cls;
    if (*con_cls == NULL) {
        *con_cls = (void *)1;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0)
        return reply(c, 405, "text/plain", "method not allowed\n", 19);
    if (strcmp(url, "/healthz") == 0)
        return reply(c, 200, "text/plain", "ok\n", 3);
    if (strcmp(url, "/readyz") == 0)
        return atomic_load(&s->ready) ? reply(c, 200, "text/plain", "ready\n", 6)
                                      : reply(c, 503, "text/plain", "not ready\n", 10);
    if (strncmp(url, "/debug/", 7) == 0) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci == NULL || !kw_cidr_match(s->dp->debug_from, s->dp->ndebug_from, ci->client_addr))
            return reply(c, 403, "text/plain",
                         "forbidden: /debug/* is served only to DataPlane spec.adminDebugFrom "
                         "(loopback by default)\n",
                         strlen("forbidden: /debug/* is served only to DataPlane "
                                "spec.adminDebugFrom (loopback by default)\n"));
    }
    struct kw_buf b;
    kw_buf_init(&b, KW_MAX_SNAPSHOT_BYTES);
    enum MHD_Result rc;
    if (strcmp(url, "/metrics") == 0) {
        metrics(s, &b);
        rc = reply(c, 200, "text/plain; version=0.0.4", b.data != NULL ? b.data : "", b.len);
    } else if (strcmp(url, "/debug/config") == 0) {
        int r = debug_config(s, &b);
        rc = r == KW_OK ? reply(c, 200, "application/json", b.data, b.len)
                        : reply(c, 503, "text/plain", "no configuration\n", 17);
    } else {
        rc = reply(c, 404, "text/plain", "not found\n", 10);
    }
    kw_buf_cleanup(&b);
    return rc;
}

int dp_admin_start(struct dp_server *s)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (dp_parse_address(s->dp->admin, &ss, &len) != KW_OK)
        return KW_ERROR;
    int act = dp_activated_admin_fd();
    s->admin = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
            (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
        0, NULL, NULL, on_admin, s, act != -1 ? MHD_OPTION_LISTEN_SOCKET : MHD_OPTION_SOCK_ADDR,
        act != -1 ? (void *)(intptr_t)act : (void *)&ss,
        /* probes must answer whatever else connects: one client address holds at most
         * DP_ADMIN_PER_IP of the slots (kubelet probes come from the node's address) */
        MHD_OPTION_CONNECTION_LIMIT, DP_ADMIN_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        DP_ADMIN_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
        MHD_OPTION_END);
    return s->admin != NULL ? KW_OK : KW_ERROR;
}

void dp_admin_stop(struct dp_server *s)
{
    if (s->admin != NULL)
        MHD_stop_daemon(s->admin);
    s->admin = NULL;
}
