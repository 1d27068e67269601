/* Client connections' read deadlines (conn.h). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "conn.h"
#include "respond.h"
#include "knoway/kw.h"
#include "server.h"

struct dp_conn {
    struct dp_worker *w;
    struct MHD_Connection *conn;
    struct dp_timer timer;
    struct dp_request *req; /* the request on it whose body is not complete, or NULL */
};

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
    } else if (*socket_context != NULL) {
        struct dp_conn *c = *socket_context;
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
