/* Client connections' read deadlines (conn.h). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "conn.h"
#include "respond.h"
#include "knoway/hash.h"
#include "knoway/kw.h"
#include "knoway/net.h"
#include "server.h"

struct dp_conn {
    struct dp_worker *w;
    struct MHD_Connection *conn;
    struct dp_timer timer;
    struct dp_request *req; /* the request on it whose body is not complete, or NULL */
    unsigned char peer[8];  /* its client's key (dp_addr_key) when counted */
    uint8_t peer_len;       /* 0: not counted */
};

/* ---- connections per client address ---------------------------------------------------- */

/* Open addressing (linear probing, deletion by backward shift) under the keyed hash: at
 * most the worker's connection limit of entries in twice as many slots. */
struct peer {
    unsigned char key[8];
    uint8_t len; /* 0: free */
    uint32_t n;
};

struct dp_peers {
    struct peer *slots;
    size_t cap;
    unsigned limit; /* per client, this worker's share */
};

static struct dp_peers *peers_of(struct dp_worker *w)
{
    if (w->peers != NULL)
        return w->peers;
    uint32_t per_client = w->server->dp->limits.max_connections_per_client;
    struct dp_peers *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->limit = per_client == 0 ? 0 : (per_client + w->server->nworkers - 1) / w->server->nworkers;
    p->cap = 64;
    while (p->cap < 2 * ((size_t)w->conn_limit + 1))
        p->cap *= 2;
    p->slots = p->limit > 0 ? calloc(p->cap, sizeof(*p->slots)) : NULL;
    if (p->limit > 0 && p->slots == NULL) {
        free(p);
        return NULL;
    }
    w->peers = p;
    return p;
}

void dp_conn_peers_free(struct dp_worker *w)
{
    if (w->peers != NULL)
        free(w->peers->slots);
    free(w->peers);
    w->peers = NULL;
}

/* The slot of key: its entry, or the free slot where it would go. */
static size_t peer_slot(const struct dp_peers *p, const unsigned char *key, size_t len)
{
    size_t mask = p->cap - 1;
    size_t i = (size_t)kw_hash_mem(key, len) & mask;
    while (p->slots[i].len != 0 &&
           (p->slots[i].len != len || memcmp(p->slots[i].key, key, len) != 0))
        i = (i + 1) & mask;
    return i;
}

static void peer_remove(struct dp_peers *p, size_t i)
{
    size_t mask = p->cap - 1;
    p->slots[i].len = 0;
    for (size_t j = (i + 1) & mask; p->slots[j].len != 0; j = (j + 1) & mask) {
        size_t home = (size_t)kw_hash_mem(p->slots[j].key, p->slots[j].len) & mask;
        /* move j into the hole when its home is not in (i, j] (cyclically) */
        if ((j > i && (home <= i || home > j)) || (j < i && home <= i && home > j)) {
            p->slots[i] = p->slots[j];
            p->slots[j].len = 0;
            i = j;
        }
    }
}

/* The key a connection from addr is counted under; 0 when it is not counted. */
static size_t counted_key(struct dp_worker *w, const struct sockaddr *addr, unsigned char key[16])
{
    const struct kw_dataplane *dp = w->server->dp;
    if (dp->ntrusted_proxies > 0 && kw_cidr_match(dp->trusted_proxies, dp->ntrusted_proxies, addr))
        return 0;
    return dp_addr_key(addr, key);
}

enum MHD_Result dp_conn_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    (void)addrlen;
    struct dp_worker *w = cls;
    struct dp_peers *p = peers_of(w);
    unsigned char key[16];
    size_t len;
    if (p == NULL || p->limit == 0 || (len = counted_key(w, addr, key)) == 0)
        return MHD_YES;
    const struct peer *e = &p->slots[peer_slot(p, key, len)];
    return e->len != 0 && e->n >= p->limit ? MHD_NO : MHD_YES;
}

static void peer_count(struct dp_conn *c)
{
    struct dp_peers *p = peers_of(c->w);
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    unsigned char key[16];
    size_t len;
    if (p == NULL || p->limit == 0 || ci == NULL ||
        (len = counted_key(c->w, ci->client_addr, key)) == 0)
        return;
    struct peer *e = &p->slots[peer_slot(p, key, len)];
    if (e->len == 0) {
        memcpy(e->key, key, len);
        e->len = (uint8_t)len;
        e->n = 0;
    }
    e->n++;
    memcpy(c->peer, key, len);
    c->peer_len = (uint8_t)len;
}

static void peer_uncount(struct dp_conn *c)
{
    struct dp_peers *p = c->w->peers;
    if (c->peer_len == 0 || p == NULL || p->slots == NULL)
        return;
    size_t i = peer_slot(p, c->peer, c->peer_len);
    if (p->slots[i].len != 0 && --p->slots[i].n == 0)
        peer_remove(p, i);
}

static void on_read_timeout(struct dp_timer *t)
{
    struct dp_conn *c = (struct dp_conn *)((char *)t - offsetof(struct dp_conn, timer));
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL)
        return;
    atomic_fetch_add_explicit(&c->w->server->read_timeouts, 1, memory_order_relaxed);
    struct dp_request *r = c->req;
    if (r != NULL && r->state == DP_ST_BODY) {
        /* nothing was sent on this connection for this request yet: answer it ourselves
         * (libmicrohttpd cannot send a response before the body is complete) */
        dp_respond_read_timeout(r, ci->connect_fd, c->w->server->dp->limits.read_timeout_ms);
    }
    /* libmicrohttpd sees the connection end at its next pass and closes it */
    shutdown(ci->connect_fd, SHUT_RDWR);
}

void dp_conn_notify(struct dp_worker *w, struct MHD_Connection *conn, void **socket_context,
                    enum MHD_ConnectionNotificationCode toe)
{
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        struct dp_conn *c = calloc(1, sizeof(*c));
        if (c == NULL)
            return; /* no read deadline; libmicrohttpd's idle timeout still applies */
        c->w = w;
        c->conn = conn;
        kw_heap_node_init(&c->timer.node);
        c->timer.on_fire = on_read_timeout;
        dp_timer_arm(w, &c->timer, dp_now_ms() + w->server->dp->limits.read_timeout_ms);
        *socket_context = c;
        peer_count(c);
    } else if (*socket_context != NULL) {
        struct dp_conn *c = *socket_context;
        peer_uncount(c);
        dp_timer_cancel(w, &c->timer);
        if (c->req != NULL)
            c->req->conn_ctx = NULL;
        free(c);
        *socket_context = NULL;
    }
}

void dp_conn_request_started(struct MHD_Connection *conn, struct dp_request *r)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct dp_conn *c = ci != NULL ? ci->socket_context : NULL;
    if (c == NULL)
        return;
    c->req = r;
    r->conn_ctx = c;
}

void dp_conn_body_done(struct dp_request *r)
{
    struct dp_conn *c = r->conn_ctx;
    if (c == NULL)
        return;
    dp_timer_cancel(c->w, &c->timer);
    c->req = NULL;
}

void dp_conn_request_done(struct dp_request *r)
{
    struct dp_conn *c = r->conn_ctx;
    if (c == NULL)
        return;
    c->req = NULL;
    r->conn_ctx = NULL;
    /* the next request (or the end of an idle keep-alive) has its own deadline */
    dp_timer_arm(c->w, &c->timer, dp_now_ms() + c->w->server->dp->limits.read_timeout_ms);
}
