/* The admin listener: /healthz, /readyz, /metrics (Prometheus text), /debug/config (the
 * current snapshot, credentials redacted). Its own libmicrohttpd thread: never a worker. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "debug.h"
#include "filter.h"
#include "gcp_auth.h"
#include "knoway/metrics.h"
#include "worker.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/net.h"
#include "knoway/httpd.h"
#include "knoway/probeguard.h"
#include "server.h"

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *ctype,
                             const char *body, size_t len)
{
    return kw_httpd_reply(c, status, ctype, body, len, NULL, NULL);
}

/* The process's gauges and counters kept outside the request path: set in the admin
 * thread's shard (0) at each scrape. */
struct admin_metrics {
    struct kw_metric *active_requests, *active_streams, *open_connections, *reloads, *memory,
        *rejected;
};

static int register_metrics(struct dp_server *s)
{
    struct admin_metrics *am = calloc(1, sizeof(*am));
    if (am == NULL)
        return KW_ERROR;
    s->admin_metrics = am;
    struct kw_metrics *m = s->metrics;
    am->active_requests = kw_metrics_add(m, KW_METRIC_GAUGE, "knoway_active_requests",
                                         "Requests in flight.", NULL, 1, NULL, 0);
    am->active_streams = kw_metrics_add(m, KW_METRIC_GAUGE, "knoway_active_streams",
                                        "Streams being relayed.", NULL, 1, NULL, 0);
    am->open_connections = kw_metrics_add(m, KW_METRIC_GAUGE, "knoway_open_connections",
                                          "Open client connections.", NULL, 1, NULL, 0);
    am->reloads = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_config_reloads_total",
                                 "Configuration reloads, by result.",
                                 (const char *const[]){"result", NULL}, 2, NULL, 0);
    am->memory = kw_metrics_add(m, KW_METRIC_GAUGE, "knoway_memory_budget_bytes",
                                "Memory held by requests (arenas and buffers) and the budget "
                                "(limits.maxMemoryBytes).",
                                (const char *const[]){"state", NULL}, 2, NULL, 0);
    am->rejected = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_requests_rejected_total",
                                  "Requests refused before routing, by reason.",
                                  (const char *const[]){"reason", NULL}, 2, NULL, 0);
    return am->active_requests != NULL && am->active_streams != NULL &&
                   am->open_connections != NULL && am->reloads != NULL && am->memory != NULL &&
                   am->rejected != NULL
               ? KW_OK
               : KW_ERROR;
}

static void set1(struct kw_metric *f, const char *value, int64_t v)
{
    const char *const values[] = {value};
    kw_series_set(kw_metric_series(f, 0, value != NULL ? values : NULL), v);
}

static void metrics(struct dp_server *s, struct kw_buf *b)
{
    struct admin_metrics *am = s->admin_metrics;
    int64_t reqs = 0, streams = 0, conns = 0;
    for (unsigned i = 0; i < s->nworkers; i++) {
        reqs += atomic_load_explicit(&s->workers[i].active_requests, memory_order_relaxed);
        streams += atomic_load_explicit(&s->workers[i].active_streams, memory_order_relaxed);
        conns += atomic_load_explicit(&s->workers[i].open_connections, memory_order_relaxed);
    }
    set1(am->active_requests, NULL, reqs);
    set1(am->active_streams, NULL, streams);
    set1(am->open_connections, NULL, conns);
    set1(am->reloads, "success", (int64_t)atomic_load(&s->reloads_ok));
    set1(am->reloads, "failure", (int64_t)atomic_load(&s->reloads_failed));
    set1(am->memory, "used", (int64_t)atomic_load(&s->mem_used));
    set1(am->memory, "limit", (int64_t)s->dp->limits.max_memory_bytes);
    set1(am->rejected, "memory", (int64_t)atomic_load(&s->rejected_memory));
    set1(am->rejected, "read_timeout", (int64_t)atomic_load(&s->read_timeouts));
    kw_metrics_write(s->metrics, b);
    dp_usage_metrics(s, b);
    dp_trace_metrics(s, b);
    dp_gcp_auth_write_metrics(b);
    if (s->dp->discovery.url != NULL) {
        const struct dp_discovery *d = &s->discovery;
        kw_buf_printf(
            b,
            "# HELP knoway_discovery_connected Whether the last poll reached the controller.\n"
            "# TYPE knoway_discovery_connected gauge\n"
            "knoway_discovery_connected %d\n"
            "# HELP knoway_discovery_polls_total Polls the controller answered.\n"
            "# TYPE knoway_discovery_polls_total counter\n"
            "knoway_discovery_polls_total %llu\n"
            "# HELP knoway_discovery_failures_total Polls that failed (retried with backoff).\n"
            "# TYPE knoway_discovery_failures_total counter\n"
            "knoway_discovery_failures_total %llu\n"
            "# HELP knoway_discovery_nacks_total Snapshots rejected (the running one kept).\n"
            "# TYPE knoway_discovery_nacks_total counter\n"
            "knoway_discovery_nacks_total %llu\n"
            "# HELP knoway_discovery_cache_loads_total Starts served from the cache file.\n"
            "# TYPE knoway_discovery_cache_loads_total counter\n"
            "knoway_discovery_cache_loads_total %llu\n",
            atomic_load(&d->connected) ? 1 : 0, (unsigned long long)atomic_load(&d->polls),
            (unsigned long long)atomic_load(&d->failures),
            (unsigned long long)atomic_load(&d->nacks),
            (unsigned long long)atomic_load(&d->cache_loads));
    }
    /* an info metric whose label changes with each snapshot: written here, not kept */
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
        /* consumers' key digests too: a weak key could be guessed from its SHA-256 */
        struct kw_node *consumers = kw_node_get(root, "consumers");
        for (size_t i = 0; consumers != NULL && i < consumers->n; i++) {
            struct kw_node *spec = (struct kw_node *)kw_node_get(consumers->items[i], "spec");
            for (size_t j = 0; spec != NULL && j < spec->n; j++)
                if (strcmp(spec->pairs[j].key->str, "keySha256") == 0)
                    spec->pairs[j].val = kw_node_cstring(
                        a, kw_arena_printf(a, "(%zu keys, redacted)", spec->pairs[j].val->n));
        }
        rc = kw_json_write(root, b);
    }
    kw_arena_free(a);
    kw_buf_cleanup(&text);
    dp_table_unref(t);
    return rc;
}

struct args {
    const char *model, *path, *strategy;
    const char *names[DP_DEBUG_MAX_HEADERS], *values[DP_DEBUG_MAX_HEADERS];
    size_t n;
    bool too_many;
};

static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                              const char *value)
{
    (void)kind;
    struct args *a = cls;
    if (value == NULL)
        value = "";
    if (strcmp(key, "model") == 0)
        a->model = value;
    else if (strcmp(key, "path") == 0)
        a->path = value;
    else if (strcmp(key, "strategy") == 0)
        a->strategy = value;
    else if (a->n < DP_DEBUG_MAX_HEADERS) {
        a->names[a->n] = key;
        a->values[a->n++] = value;
    } else
        a->too_many = true;
    return MHD_YES;
}

/* GET /debug/routes?model=M[&path=P][&strategy=S][&header-name=value...] */
static enum MHD_Result debug_routes(struct dp_server *s, struct MHD_Connection *c, struct kw_buf *b)
{
    struct args a = {.path = "/v1/chat/completions"};
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, on_arg, &a);
    if (a.model == NULL || a.model[0] == '\0' || a.too_many) {
        static const char msg[] = "usage: /debug/routes?model=M[&path=/v1/...][&strategy=S]"
                                  "[&HEADER=VALUE...] (at most 32 headers)\n";
        return reply(c, 400, "text/plain", msg, sizeof(msg) - 1);
    }
    int rc = dp_debug_routes(s, a.model, a.path, a.strategy, a.names, a.values, a.n, 2000, b);
    if (b->len == 0)
        return reply(c, 500, "text/plain", "out of memory\n", 14);
    /* a worker that did not answer in time: what the others said, marked incomplete */
    return reply(c, rc == KW_OK ? 200 : 503, "application/json", b->data, b->len);
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
        kw_probe_guard_request(c); /* its headers are in */
        return MHD_YES;
    }
    if (*upload_size > 0) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (strcmp(method, "GET") != 0)
        return reply(c, 405, "text/plain", "method not allowed\n", 19);
    if (strcmp(url, "/healthz") == 0) {
        /* live while every worker loop answers its pings: a stuck loop serves nobody */
        int64_t quiet = 0;
        int stuck = s->workers != NULL ? dp_server_workers_alive(s, DP_LIVENESS_MS, &quiet) : -1;
        if (stuck < 0)
            return reply(c, 200, "text/plain", "ok\n", 3);
        char msg[96];
        int n = snprintf(msg, sizeof(msg), "worker %d has not answered for %lld ms\n", stuck,
                         (long long)quiet);
        return reply(c, 503, "text/plain", msg, (size_t)n);
    }
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
    } else if (strcmp(url, "/debug/routes") == 0) {
        rc = debug_routes(s, c, &b);
    } else if (strcmp(url, "/debug/usage") == 0) {
        rc = dp_usage_debug(s, &b) == KW_OK
                 ? reply(c, 200, "application/json", b.data, b.len)
                 : reply(c, 404, "text/plain", "no usage ledger (DataPlane spec.usage)\n",
                         strlen("no usage ledger (DataPlane spec.usage)\n"));
    } else {
        rc = reply(c, 404, "text/plain", "not found\n", 10);
    }
    kw_buf_cleanup(&b);
    return rc;
}

int dp_admin_start(struct dp_server *s)
{
    if (register_metrics(s) != KW_OK)
        return KW_ERROR;
    struct sockaddr_storage ss;
    socklen_t len;
    if (kw_listen_address(s->dp->admin, &ss, &len) != KW_OK)
        return KW_ERROR;
    int act = dp_activated_admin_fd();
    s->admin_guard = kw_probe_guard_new(KW_ADMIN_CONNECTIONS, KW_ADMIN_SPARE, KW_ADMIN_HEADER_MS);
    if (s->admin_guard == NULL)
        return KW_ERROR;
    s->admin = MHD_start_daemon(
        MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
            (ss.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0),
        0, NULL, NULL, on_admin, s, act != -1 ? MHD_OPTION_LISTEN_SOCKET : MHD_OPTION_SOCK_ADDR,
        act != -1 ? (void *)(intptr_t)act : (void *)&ss,
        /* probes must answer whatever else connects: one client address holds at most
         * KW_ADMIN_PER_IP of the slots (kubelet probes come from the node's address), and
         * when the slots run out the guard closes the connection that waited longest for
         * its headers (knoway/probeguard.h) */
        MHD_OPTION_CONNECTION_LIMIT, KW_ADMIN_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        KW_ADMIN_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT, KW_ADMIN_IDLE_S,
        MHD_OPTION_NOTIFY_CONNECTION, kw_probe_guard_on_connection, s->admin_guard,
        MHD_OPTION_NOTIFY_COMPLETED, kw_probe_guard_on_completed, s->admin_guard,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_END);
    return s->admin != NULL ? KW_OK : KW_ERROR;
}

void dp_admin_stop(struct dp_server *s)
{
    if (s->admin != NULL)
        MHD_stop_daemon(s->admin);
    s->admin = NULL;
    kw_probe_guard_free(s->admin_guard);
    s->admin_guard = NULL;
    free(s->admin_metrics);
    s->admin_metrics = NULL;
}
