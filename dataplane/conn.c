/* Client connections' read deadlines (conn.h). */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "conn.h"
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
        static const char body[] =
            "{\"error\":{\"message\":\"the request was not received within limits.readTimeout\","
            "\"type\":\"invalid_request_error\",\"param\":null,\"code\":\"request_timeout\"}}";
        char resp[512];
        int len = snprintf(resp, sizeof(resp),
                           "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                           "Content-Type: application/json\r\nx-request-id: %s\r\n"
                           "Content-Length: %zu\r\n\r\n%s",
                           r->id, sizeof(body) - 1, body);
        ssize_t n = send(ci->connect_fd, resp, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
        (void)n;
        r->status = 408;
        dp_error_set(r, 408, "invalid_request_error", "request_timeout", NULL,
                     "the request was not received within %lld ms",
                     (long long)c->w->server->dp->limits.read_timeout_ms);
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
