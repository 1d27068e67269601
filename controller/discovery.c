/* The discovery server: long-poll, ACK/NACK bookkeeping per node (see discovery.h). */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "discovery.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/discovery.h"
#include "knoway/httpd.h"
#include "knoway/net.h"
#include "knoway/log.h"
#include "knoway/metrics.h"
#include "knoway/otlp.h"

#define MAX_POLL_BODY   (64u * 1024)
#define DEFAULT_WAIT_S  30
#define MAX_WAIT_S      300
#define MAX_ERROR_BYTES 4096

struct ctl_waiter {
    struct ctl_discovery *d;
    struct MHD_Connection *c;
    struct ctl_waiter *prev, *next; /* in d->waiters while suspended */
    struct kw_buf body;
    bool parsed, suspended, in_list;
    int64_t deadline_ms;
    char seen[80];
    char node[CTL_NODE_ID_MAX + 1];
};

int ctl_listen(const char *addr)
{
    struct sockaddr_storage ss;
    socklen_t len;
    if (kw_listen_address(addr, &ss, &len) != KW_OK)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    if (fd != -1)
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (fd != -1 && (bind(fd, (struct sockaddr *)&ss, len) == -1 || listen(fd, 1024) == -1)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *body)
{
    return kw_httpd_reply(c, status, "application/json", body, strlen(body),
                          status == 401 ? "WWW-Authenticate" : NULL, "Bearer");
}

static enum MHD_Result fail(struct MHD_Connection *c, unsigned status, const char *code,
                            const char *msg)
{
    struct kw_buf b;
    kw_buf_init(&b, 8192);
    kw_buf_puts(&b, "{\"error\":{\"code\":\"");
    kw_buf_puts(&b, code);
    kw_buf_puts(&b, "\",\"message\":");
    kw_json_write_string(&b, msg, strlen(msg));
    kw_buf_puts(&b, "}}");
    enum MHD_Result rc = reply(c, status, b.data != NULL ? b.data : "{}");
    kw_buf_cleanup(&b);
    return rc;
}

static void release_build(void *cls)
{
    ctl_build_unref(cls);
}

/* Whether the poller accepts gzip (Accept-Encoding lists it, not with q=0). */
static bool accepts_gzip(struct MHD_Connection *c)
{
    const char *v = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Accept-Encoding");
    const char *p = v != NULL ? strstr(v, "gzip") : NULL;
    if (p == NULL)
        return false;
    p += 4;
    p += strspn(p, " ");
    if (*p != ';')
        return true;
    p += 1 + strspn(p + 1, " ");
    return strncmp(p, "q=", 2) != 0 || strtod(p + 2, NULL) > 0;
}

static enum MHD_Result send_build(struct MHD_Connection *c, struct ctl_build *b)
{
    bool gz = b->gz != NULL && accepts_gzip(c);
    struct MHD_Response *r = MHD_create_response_from_buffer_with_free_callback_cls(
        gz ? b->gzlen : b->len, gz ? b->gz : b->json, release_build, b);
    if (r == NULL) {
        ctl_build_unref(b);
        return MHD_NO;
    }
    MHD_add_response_header(r, "Content-Type", "application/json");
    MHD_add_response_header(r, "Vary", "Accept-Encoding");
    if (gz)
        MHD_add_response_header(r, "Content-Encoding", "gzip");
    MHD_add_response_header(r, KW_DISCOVERY_VERSION_HD, b->version);
    enum MHD_Result rc = MHD_queue_response(c, 200, r);
    MHD_destroy_response(r);
    return rc;
}

static bool authorized(struct ctl_discovery *d, struct MHD_Connection *c)
{
    if (!d->has_token)
        return true;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    unsigned char got[32];
    SHA256((const unsigned char *)h + 7, strlen(h + 7), got);
    return CRYPTO_memcmp(got, d->token_hash, sizeof(got)) == 0;
}

static bool live(const struct ctl_discovery *d, const struct ctl_node *n, int64_t now)
{
    return n->waiting || now - n->last_seen_ms <= d->node_grace_ms;
}

/* d->mu held: forget nodes that stopped polling more than the grace period ago. */
static void evict(struct ctl_discovery *d, int64_t now)
{
    size_t keep = 0;
    for (size_t i = 0; i < d->nnodes; i++) {
        if (live(d, &d->nodes[i], now)) {
            if (keep != i)
                d->nodes[keep] = d->nodes[i];
            keep++;
            continue;
        }
        free(d->nodes[i].error);
        atomic_fetch_add(&d->evicted, 1);
    }
    d->nnodes = keep;
}

static struct ctl_node *node_find(struct ctl_discovery *d, const char *id)
{
    for (size_t i = 0; i < d->nnodes; i++)
        if (strcmp(d->nodes[i].id, id) == 0)
            return &d->nodes[i];
    return NULL;
}

static struct ctl_node *node_get(struct ctl_discovery *d, const char *id)
{
    for (size_t i = 0; i < d->nnodes; i++)
        if (strcmp(d->nodes[i].id, id) == 0)
            return &d->nodes[i];
    if (d->nnodes == CTL_MAX_NODES)
        evict(d, ctl_now_ms());
    if (d->nnodes == CTL_MAX_NODES)
        return NULL;
    if (d->nnodes == d->cap_nodes) {
        size_t nc = d->cap_nodes == 0 ? 16 : d->cap_nodes * 2;
        struct ctl_node *nn = realloc(d->nodes, nc * sizeof(*nn));
        if (nn == NULL)
            return NULL;
        d->nodes = nn;
        d->cap_nodes = nc;
    }
    struct ctl_node *n = &d->nodes[d->nnodes++];
    memset(n, 0, sizeof(*n));
    snprintf(n->id, sizeof(n->id), "%s", id);
    return n;
}

static void peer_addr(struct MHD_Connection *c, char *out, size_t len)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    out[0] = '\0';
    if (ci == NULL || ci->client_addr == NULL)
        return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)len);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)len);
}

/* A push ended (the node acked or nacked it): its latency and span. */
struct push_done {
    bool done, nack;
    struct ctl_node n; /* a copy: id, pushed, timings, trace */
};

static void push_finished(struct ctl_discovery *d, const struct push_done *pd)
{
    if (!pd->done)
        return;
    int64_t ms = ctl_now_ms() - pd->n.pushed_ms;
    if (d->push_ack != NULL) {
        const char *v[] = {pd->nack ? "nack" : "ack"};
        kw_series_observe(kw_metric_series(d->push_ack, 1, v), (double)ms / 1000.0);
    }
    if (d->otlp == NULL || pd->n.trace_id[0] == '\0')
        return;
    char id[17];
    kw_trace_random_hex(id, 8);
    struct kw_span s;
    kw_span_init(&s, pd->n.trace_id, id, pd->n.build_span, "snapshot push", KW_SPAN_SERVER);
    s.start_ns = pd->n.pushed_ns;
    s.end_ns = kw_now_unix_ns();
    kw_span_str(&s, "knoway.node.id", pd->n.id);
    kw_span_str(&s, "knoway.node.cluster", pd->n.cluster);
    kw_span_str(&s, "knoway.snapshot.version", pd->n.pushed);
    kw_span_str(&s, "knoway.push.result", pd->nack ? "nack" : "ack");
    kw_span_str(&s, "client.address", pd->n.addr);
    s.error = pd->nack;
    kw_otlp_submit(d->otlp, &s);
    kw_span_cleanup(&s);
}

/* Parse the poll and record what it says about its node: 0, or the status to refuse it
 * with (400: a bad poll; 503: out of memory or too many data planes) and *why. */
static unsigned take_poll(struct ctl_discovery *d, struct ctl_waiter *w, bool *acked,
                          const char **why)
{
    struct push_done pd = {0};
    struct kw_arena *a = kw_arena_new(1u << 20);
    *acked = false;
    *why = NULL;
    if (a == NULL) {
        *why = "out of memory";
        return 503;
    }
    struct kw_poll p;
    *why = kw_poll_parse(a, w->body.data != NULL ? w->body.data : "", w->body.len, &p);
    if (*why != NULL) {
        kw_arena_free(a);
        return 400;
    }
    const char *id = p.id, *version = p.version, *nonce = p.nonce, *cluster = p.cluster;
    const struct kw_node *error = p.error;
    snprintf(w->seen, sizeof(w->seen), "%s", nonce);
    snprintf(w->node, sizeof(w->node), "%s", id);
    pthread_mutex_lock(&d->mu);
    struct ctl_node *n = node_get(d, id);
    if (n != NULL) {
        n->last_seen_ms = ctl_now_ms();
        n->polls++;
        if (cluster != NULL)
            snprintf(n->cluster, sizeof(n->cluster), "%s", cluster);
        peer_addr(w->c, n->addr, sizeof(n->addr));
        const char *msg = p.message;
        if (error != NULL && error->type == KW_NODE_MAP) {
            if (strcmp(n->nacked, nonce) != 0) {
                atomic_fetch_add(&d->nacks, 1);
                *acked = true;
                kw_log(KW_LOG_WARN, "discovery: a data plane rejected a snapshot", "node", id,
                       "version", nonce, "error", msg != NULL ? msg : "", NULL);
            }
            snprintf(n->nacked, sizeof(n->nacked), "%s", nonce);
            free(n->error);
            n->error = strndup(msg != NULL ? msg : "(no message)", MAX_ERROR_BYTES);
        } else if (n->nacked[0] != '\0') { /* applied what it got: the rejection is over */
            n->nacked[0] = '\0';
            free(n->error);
            n->error = NULL;
            *acked = true;
        }
        if (strcmp(n->acked, version) != 0) {
            snprintf(n->acked, sizeof(n->acked), "%s", version);
            n->acked_ms = ctl_now_ms();
            *acked = true;
        }
        if (n->pushed[0] != '\0' &&
            (strcmp(version, n->pushed) == 0 || (error != NULL && strcmp(nonce, n->pushed) == 0))) {
            pd.done = true;
            pd.nack = strcmp(version, n->pushed) != 0;
            pd.n = *n;
            pd.n.error = NULL;
            n->pushed[0] = '\0';
        }
    }
    pthread_mutex_unlock(&d->mu);
    push_finished(d, &pd);
    kw_arena_free(a);
    if (n == NULL) {
        *why = "too many data planes connected";
        return 503;
    }
    return 0;
}

static void unlink_waiter(struct ctl_discovery *d, struct ctl_waiter *w)
{
    if (!w->in_list)
        return;
    if (w->prev != NULL)
        w->prev->next = w->next;
    else
        d->waiters = w->next;
    if (w->next != NULL)
        w->next->prev = w->prev;
    w->prev = w->next = NULL;
    w->in_list = false;
}

/* d->mu held: resume a suspended poll (it answers when its handler runs again). */
static void wake(struct ctl_discovery *d, struct ctl_waiter *w)
{
    unlink_waiter(d, w);
    if (w->suspended) {
        w->suspended = false;
        MHD_resume_connection(w->c);
    }
}

static void set_waiting(struct ctl_discovery *d, const char *id, bool waiting)
{
    for (size_t i = 0; i < d->nnodes; i++)
        if (strcmp(d->nodes[i].id, id) == 0)
            d->nodes[i].waiting = waiting;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    struct ctl_discovery *d = cls;
    struct ctl_waiter *w = *con_cls;
    if (w == NULL) {
        if (strcmp(url, KW_DISCOVERY_PATH) != 0)
            return fail(c, 404, "not_found", "no such endpoint (POST /v1/discovery)");
        if (strcmp(method, "POST") != 0)
            return fail(c, 405, "method_not_allowed", "use POST");
        if (!authorized(d, c)) {
            atomic_fetch_add(&d->unauthorized, 1);
            return fail(c, 401, "unauthorized", "a valid bearer token is required");
        }
        w = calloc(1, sizeof(*w));
        if (w == NULL)
            return MHD_NO;
        w->d = d;
        w->c = c;
        kw_buf_init(&w->body, MAX_POLL_BODY);
        *con_cls = w;
        return MHD_YES;
    }
    if (*upload_size > 0) {
        if (kw_buf_append(&w->body, upload, *upload_size) != KW_OK)
            w->body.max = 0; /* remembered as too large */
        *upload_size = 0;
        return MHD_YES;
    }
    if (!w->parsed) {
        if (w->body.max == 0)
            return fail(c, 413, "too_large", "the poll body is larger than 64 KiB");
        bool acked;
        const char *why;
        unsigned refused = take_poll(d, w, &acked, &why);
        if (refused != 0)
            return fail(c, refused, refused == 503 ? "unavailable" : "invalid_request", why);
        w->parsed = true;
        atomic_fetch_add(&d->polls, 1);
        const char *ws = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "wait");
        long wait = ws != NULL ? strtol(ws, NULL, 10) : DEFAULT_WAIT_S;
        if (wait < 0)
            wait = 0;
        if (wait > MAX_WAIT_S)
            wait = MAX_WAIT_S;
        w->deadline_ms = ctl_now_ms() + wait * 1000;
        if (acked && d->on_ack != NULL)
            d->on_ack(d->ud);
    }
    pthread_mutex_lock(&d->mu);
    set_waiting(d, w->node, false);
    struct ctl_build *b = d->cur;
    if (b != NULL && strcmp(b->version, w->seen) != 0) {
        ctl_build_ref(b);
        struct ctl_node *n = node_find(d, w->node);
        if (n != NULL) {
            snprintf(n->pushed, sizeof(n->pushed), "%s", b->version);
            n->pushed_ms = ctl_now_ms();
            n->pushed_ns = kw_now_unix_ns();
            memcpy(n->trace_id, b->trace_id, sizeof(n->trace_id));
            memcpy(n->build_span, b->span_id, sizeof(n->build_span));
        }
        pthread_mutex_unlock(&d->mu);
        atomic_fetch_add(&d->pushes, 1);
        return send_build(c, b);
    }
    if (atomic_load(&d->stop) || ctl_now_ms() >= w->deadline_ms) {
        pthread_mutex_unlock(&d->mu);
        struct MHD_Response *r = MHD_create_response_from_buffer(0, "", MHD_RESPMEM_PERSISTENT);
        if (r == NULL)
            return MHD_NO;
        if (b != NULL)
            MHD_add_response_header(r, KW_DISCOVERY_VERSION_HD, b->version);
        enum MHD_Result rc = MHD_queue_response(c, 304, r);
        MHD_destroy_response(r);
        return rc;
    }
    w->next = d->waiters;
    if (d->waiters != NULL)
        d->waiters->prev = w;
    d->waiters = w;
    w->in_list = true;
    w->suspended = true;
    set_waiting(d, w->node, true);
    MHD_suspend_connection(c);
    pthread_mutex_unlock(&d->mu);
    return MHD_YES;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct ctl_discovery *d = cls;
    struct ctl_waiter *w = *con_cls;
    if (w == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    unlink_waiter(d, w);
    if (w->node[0] != '\0')
        set_waiting(d, w->node, false);
    pthread_mutex_unlock(&d->mu);
    kw_buf_cleanup(&w->body);
    free(w);
    *con_cls = NULL;
}

static void *ticker_main(void *arg)
{
    struct ctl_discovery *d = arg;
    int64_t next_evict = 0;
    while (!atomic_load(&d->stop)) {
        usleep(100000);
        int64_t now = ctl_now_ms();
        pthread_mutex_lock(&d->mu);
        if (now >= next_evict) {
            evict(d, now);
            next_evict = now + 1000;
        }
        for (struct ctl_waiter *w = d->waiters, *next; w != NULL; w = next) {
            next = w->next;
            if (now >= w->deadline_ms)
                wake(d, w);
        }
        pthread_mutex_unlock(&d->mu);
    }
    return NULL;
}

static char *read_pem(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = calloc(1, 1u << 20);
    size_t n = buf != NULL ? fread(buf, 1, (1u << 20) - 1, f) : 0;
    fclose(f);
    if (buf != NULL && n == 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

int ctl_discovery_start(struct ctl_discovery *d, const char *addr, const char *token,
                        const char *tls_cert_file, const char *tls_key_file)
{
    pthread_mutex_init(&d->mu, NULL);
    if (d->node_grace_ms <= 0)
        d->node_grace_ms = CTL_NODE_STALE_MS;
    if (token != NULL) {
        SHA256((const unsigned char *)token, strlen(token), d->token_hash);
        d->has_token = true;
    } else {
        kw_log(KW_LOG_WARN,
               "discovery: no --token-file: any client can read snapshots, which hold "
               "credentials",
               NULL);
    }
    unsigned flags = MHD_USE_EPOLL_INTERNAL_THREAD | MHD_ALLOW_SUSPEND_RESUME;
    if (tls_cert_file != NULL) {
        d->tls_cert = read_pem(tls_cert_file);
        d->tls_key = read_pem(tls_key_file);
        if (d->tls_cert == NULL || d->tls_key == NULL) {
            kw_log(KW_LOG_ERROR, "discovery: cannot read the TLS certificate or key", "cert",
                   tls_cert_file, "key", tls_key_file, NULL);
            return KW_ERROR;
        }
        flags |= MHD_USE_TLS;
    }
    int fd = ctl_listen(addr);
    if (fd == -1) {
        kw_log(KW_LOG_ERROR, "discovery: cannot listen", "address", addr, "error", strerror(errno),
               NULL);
        return KW_ERROR;
    }
    /* A held poll is a suspended connection, which libmicrohttpd never times out: the short
     * timeout applies to the rest (headers, body, the gap between polls), so connections that
     * never send a valid poll are closed quickly; one address holds at most
     * CTL_DISC_PER_IP connections, and the total stays below the fd limit. */
    unsigned limit = d->max_connections != 0 ? d->max_connections : 20000;
    if (d->tls_cert != NULL)
        d->mhd = MHD_start_daemon(
            flags, 0, NULL, NULL, on_request, d, MHD_OPTION_LISTEN_SOCKET, fd,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, d, MHD_OPTION_CONNECTION_LIMIT, limit,
            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)CTL_DISC_PER_IP,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CTL_DISC_TIMEOUT, MHD_OPTION_HTTPS_MEM_CERT,
            d->tls_cert, MHD_OPTION_HTTPS_MEM_KEY, d->tls_key, MHD_OPTION_END);
    else
        d->mhd = MHD_start_daemon(
            flags, 0, NULL, NULL, on_request, d, MHD_OPTION_LISTEN_SOCKET, fd,
            MHD_OPTION_NOTIFY_COMPLETED, on_completed, d, MHD_OPTION_CONNECTION_LIMIT, limit,
            MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)CTL_DISC_PER_IP,
            MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CTL_DISC_TIMEOUT, MHD_OPTION_END);
    if (d->mhd == NULL) {
        close(fd);
        kw_log(KW_LOG_ERROR, "discovery: cannot start the HTTP server", "address", addr, NULL);
        return KW_ERROR;
    }
    if (pthread_create(&d->ticker, NULL, ticker_main, d) != 0)
        return KW_ERROR;
    return KW_OK;
}

void ctl_discovery_stop(struct ctl_discovery *d)
{
    if (d->mhd == NULL)
        return;
    atomic_store(&d->stop, true);
    pthread_join(d->ticker, NULL);
    pthread_mutex_lock(&d->mu);
    for (struct ctl_waiter *w = d->waiters, *next; w != NULL; w = next) {
        next = w->next;
        wake(d, w); /* answered 304 by their handler */
    }
    pthread_mutex_unlock(&d->mu);
    usleep(100000); /* let the resumed polls be answered */
    MHD_stop_daemon(d->mhd);
    d->mhd = NULL;
}

void ctl_discovery_cleanup(struct ctl_discovery *d)
{
    ctl_build_unref(d->cur);
    d->cur = NULL;
    for (size_t i = 0; i < d->nnodes; i++)
        free(d->nodes[i].error);
    free(d->nodes);
    if (d->tls_key != NULL)
        OPENSSL_cleanse(d->tls_key, strlen(d->tls_key));
    free(d->tls_cert);
    free(d->tls_key);
    pthread_mutex_destroy(&d->mu);
}

bool ctl_discovery_publish(struct ctl_discovery *d, struct ctl_build *b)
{
    pthread_mutex_lock(&d->mu);
    bool changed = d->cur == NULL || strcmp(d->cur->version, b->version) != 0;
    struct ctl_build *old = d->cur;
    d->cur = ctl_build_ref(b);
    if (changed) {
        atomic_fetch_add(&d->published, 1);
        for (struct ctl_waiter *w = d->waiters, *next; w != NULL; w = next) {
            next = w->next;
            wake(d, w);
        }
    }
    pthread_mutex_unlock(&d->mu);
    ctl_build_unref(old);
    return changed;
}

void ctl_discovery_counts(struct ctl_discovery *d, const char *version, struct ctl_node_counts *out)
{
    memset(out, 0, sizeof(*out));
    int64_t now = ctl_now_ms();
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->nnodes; i++) {
        const struct ctl_node *n = &d->nodes[i];
        if (!live(d, n, now))
            continue;
        out->connected++;
        if (version != NULL && strcmp(n->acked, version) == 0)
            out->acked++;
        else if (n->nacked[0] != '\0')
            out->nacked++;
        else
            out->stale++;
    }
    pthread_mutex_unlock(&d->mu);
}

void ctl_discovery_nodes_json(struct ctl_discovery *d, struct kw_buf *out)
{
    int64_t now = ctl_now_ms();
    pthread_mutex_lock(&d->mu);
    kw_buf_puts(out, "{\"version\":");
    const char *v = d->cur != NULL ? d->cur->version : "";
    kw_json_write_string(out, v, strlen(v));
    kw_buf_puts(out, ",\"nodes\":[");
    for (size_t i = 0; i < d->nnodes; i++) {
        const struct ctl_node *n = &d->nodes[i];
        bool connected = live(d, n, now);
        kw_buf_puts(out, i > 0 ? ",{\"id\":" : "{\"id\":");
        kw_json_write_string(out, n->id, strlen(n->id));
        kw_buf_puts(out, ",\"cluster\":");
        kw_json_write_string(out, n->cluster, strlen(n->cluster));
        kw_buf_puts(out, ",\"address\":");
        kw_json_write_string(out, n->addr, strlen(n->addr));
        kw_buf_puts(out, ",\"acked\":");
        kw_json_write_string(out, n->acked, strlen(n->acked));
        kw_buf_puts(out, ",\"nacked\":");
        kw_json_write_string(out, n->nacked, strlen(n->nacked));
        kw_buf_puts(out, ",\"error\":");
        if (n->error != NULL)
            kw_json_write_string(out, n->error, strlen(n->error));
        else
            kw_buf_puts(out, "null");
        kw_buf_printf(out,
                      ",\"current\":%s,\"connected\":%s,\"waiting\":%s,\"polls\":%llu,"
                      "\"lastSeenSecondsAgo\":%.1f}",
                      strcmp(n->acked, v) == 0 ? "true" : "false", connected ? "true" : "false",
                      n->waiting ? "true" : "false", (unsigned long long)n->polls,
                      (double)(now - n->last_seen_ms) / 1000.0);
    }
    kw_buf_puts(out, "]}");
    pthread_mutex_unlock(&d->mu);
}

size_t ctl_discovery_connected(struct ctl_discovery *d, struct ctl_node **out)
{
    int64_t now = ctl_now_ms();
    size_t n = 0;
    pthread_mutex_lock(&d->mu);
    *out = calloc(d->nnodes + 1, sizeof(**out));
    for (size_t i = 0; *out != NULL && i < d->nnodes; i++) {
        const struct ctl_node *src = &d->nodes[i];
        if (!live(d, src, now))
            continue;
        (*out)[n] = *src;
        (*out)[n].error = src->error != NULL ? strdup(src->error) : NULL;
        n++;
    }
    pthread_mutex_unlock(&d->mu);
    return n;
}

void ctl_discovery_nodes_free(struct ctl_node *nodes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(nodes[i].error);
    free(nodes);
}
