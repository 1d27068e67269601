/* A worker: one thread, one epoll loop driving its own libmicrohttpd daemon (external
 * epoll mode, suspend/resume, its own SO_REUSEPORT listening socket), its own libcurl
 * multi handle and a timer heap. Nothing here blocks.
 *
 * Loop:
 *   timeout = min(MHD's, curl's, first timer)
 *   epoll_wait -> MHD's epoll fd: MHD_run | curl socket: curl_multi_socket_action |
 *                 client fd RDHUP: cancel that request | eventfd: new table, drain, stop
 *   curl timeout due -> socket_action(CURL_SOCKET_TIMEOUT); finished transfers
 *   timers due -> fire
 * Drain: MHD_quiesce_daemon (stop accepting), finish what is in flight, then stop. A forced
 * stop aborts the requests still active and lets MHD close them before MHD_stop_daemon
 * (a daemon must not be stopped while a connection is suspended). */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dp.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "server.h"

int64_t dp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- timers --------------------------------------------------------------------------------- */

void dp_timer_cancel(struct dp_worker *w, struct dp_timer *t)
{
    kw_heap_remove(&w->timers, &t->node);
}

void dp_timer_arm(struct dp_worker *w, struct dp_timer *t, int64_t due_ms)
{
    /* out of memory: the stream loses its keep-alive; it still ends with its transfer */
    (void)kw_heap_set(&w->timers, &t->node, due_ms);
}

/* ---- epoll ---------------------------------------------------------------------------------- */

int dp_worker_watch(struct dp_worker *w, struct dp_watch *watch, uint32_t events, bool add)
{
    struct epoll_event ev = {.events = events, .data.ptr = watch};
    if (epoll_ctl(w->ep, add ? EPOLL_CTL_ADD : EPOLL_CTL_MOD, watch->fd, &ev) == -1)
        return KW_ERROR;
    return KW_OK;
}

void dp_worker_unwatch(struct dp_worker *w, struct dp_watch *watch)
{
    epoll_ctl(w->ep, EPOLL_CTL_DEL, watch->fd, NULL);
}

void dp_worker_track(struct dp_worker *w, struct dp_request *r)
{
    r->prev = NULL;
    r->next = w->requests;
    if (w->requests != NULL)
        w->requests->prev = r;
    w->requests = r;
}

void dp_worker_untrack(struct dp_worker *w, struct dp_request *r)
{
    if (r->prev != NULL)
        r->prev->next = r->next;
    else
        w->requests = r->next;
    if (r->next != NULL)
        r->next->prev = r->prev;
}

struct kw_arena *dp_worker_arena(struct dp_worker *w)
{
    if (w->narena_pool > 0)
        return w->arena_pool[--w->narena_pool];
    struct kw_arena *a = kw_arena_new(DP_ARENA_BASE);
    if (a != NULL)
        kw_arena_set_account(a, &w->server->mem_used);
    return a;
}

void dp_worker_arena_done(struct dp_worker *w, struct kw_arena *a)
{
    if (w->narena_pool < DP_POOL_MAX && !w->draining) {
        kw_arena_reset(a);
        w->arena_pool[w->narena_pool++] = a;
    } else {
        kw_arena_free(a);
    }
}

CURL *dp_worker_easy(struct dp_worker *w)
{
    if (w->neasy_pool > 0)
        return w->easy_pool[--w->neasy_pool];
    return curl_easy_init();
}

void dp_worker_easy_done(struct dp_worker *w, CURL *e)
{
    if (w->neasy_pool < DP_POOL_MAX && !w->draining) {
        curl_easy_reset(e); /* keeps its buffers; connections live in the multi's cache */
        w->easy_pool[w->neasy_pool++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

void dp_worker_post(struct dp_worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->event_fd, &one, sizeof(one));
    (void)n;
}

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
        snprintf(r->fail_buf, sizeof(r->fail_buf), "the request was not received within %lld ms",
                 (long long)c->w->server->dp->limits.read_timeout_ms);
        r->fail_msg = r->fail_buf;
    }
    /* libmicrohttpd sees the connection end at its next pass and closes it */
    shutdown(ci->connect_fd, SHUT_RDWR);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct dp_worker *w = cls;
    atomic_fetch_add_explicit(&w->stats.open_connections,
                              toe == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1, memory_order_relaxed);
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED)
        w->accept_stalled = false; /* a close lets libmicrohttpd accept again */
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

/* libmicrohttpd's messages: only running out of descriptors matters here. After EMFILE it
 * stops accepting until one of this daemon's connections closes, which on a quiet worker
 * can take tens of seconds after descriptors are free again. */
static void on_mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct dp_worker *w = cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    if (strstr(msg, "resource limit") == NULL)
        return;
    if (!w->accept_stalled)
        kw_log(KW_LOG_WARN, "out of file descriptors: accepting again as soon as some are free",
               NULL);
    w->accept_stalled = true;
}

/* While libmicrohttpd stays stopped after EMFILE, accept on its behalf. */
static void accept_for_mhd(struct dp_worker *w)
{
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(w->listen_fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd == -1)
            return; /* EAGAIN: none waiting; EMFILE: still none free */
        if (MHD_add_connection(w->mhd, fd, (struct sockaddr *)&ss, len) != MHD_YES)
            return; /* it closed fd */
    }
}

int dp_worker_init(struct dp_worker *w, struct dp_server *s, unsigned index, int listen_fd)
{
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->server = s;
    w->listen_fd = listen_fd;
    w->rnd = (uint32_t)(s->boot_id * 2654435761u + index * 40503u) | 1u;
    kw_buf_init(&w->logbuf, 64 * 1024);
    w->scratch = kw_arena_new(DP_MAX_SSE_EVENT * 4);
    kw_heap_init(&w->timers);
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->ep == -1 || w->event_fd == -1 || w->scratch == NULL)
        return KW_ERROR;
    unsigned conns = s->max_connections / s->nworkers + 1;
    w->conn_limit = conns;
    /* SO_REUSEPORT spreads one client's connections over the workers by hash: each worker
     * enforces its share of the per-client limit */
    uint32_t per_client = s->dp->limits.max_connections_per_client;
    unsigned per_ip = per_client == 0 ? 0 : (per_client + s->nworkers - 1) / s->nworkers;
    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG, 0, NULL, NULL,
        dp_on_access, w, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, w, MHD_OPTION_LISTEN_SOCKET,
        listen_fd, MHD_OPTION_CONNECTION_LIMIT, conns, MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)DP_CONN_MEMORY, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)75, MHD_OPTION_NOTIFY_COMPLETED, dp_on_completed, w, MHD_OPTION_NOTIFY_CONNECTION,
        on_connection, w, MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1, MHD_OPTION_END);
    if (w->mhd == NULL)
        return KW_ERROR;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (di == NULL)
        return KW_ERROR;
    w->mhd_watch = (struct dp_watch){.kind = DP_WATCH_MHD, .fd = di->epoll_fd};
    w->event_watch = (struct dp_watch){.kind = DP_WATCH_EVENT, .fd = w->event_fd};
    if (dp_worker_watch(w, &w->mhd_watch, EPOLLIN, true) != KW_OK ||
        dp_worker_watch(w, &w->event_watch, EPOLLIN, true) != KW_OK || dp_upstream_init(w) != KW_OK)
        return KW_ERROR;
    w->table = dp_table_ref(s->table);
    return KW_OK;
}

void dp_worker_cleanup(struct dp_worker *w)
{
    while (w->retired != NULL) {
        struct dp_watch *dead = w->retired;
        w->retired = dead->next;
        free(dead);
    }
    while (w->neasy_pool > 0)
        curl_easy_cleanup(w->easy_pool[--w->neasy_pool]);
    while (w->narena_pool > 0)
        kw_arena_free(w->arena_pool[--w->narena_pool]);
    if (w->multi != NULL)
        curl_multi_cleanup(w->multi);
    dp_table_unref(w->table);
    dp_table_unref(atomic_exchange(&w->next, NULL));
    kw_heap_cleanup(&w->timers);
    kw_buf_cleanup(&w->logbuf);
    kw_arena_free(w->scratch);
    if (w->ep != -1)
        close(w->ep);
    if (w->event_fd != -1)
        close(w->event_fd);
}

static void on_message(struct dp_worker *w)
{
    uint64_t v;
    while (read(w->event_fd, &v, sizeof(v)) > 0)
        ;
    atomic_store(&w->pong, atomic_load(&w->server->ping)); /* this loop is alive */
    struct dp_table *t = atomic_exchange(&w->next, NULL);
    if (t != NULL) {
        dp_table_unref(w->table); /* requests keep the old one pinned until they end */
        w->table = t;
    }
    if (atomic_load(&w->drain) && !w->draining) {
        w->draining = true;
        MHD_socket fd = MHD_quiesce_daemon(w->mhd);
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
    }
    if (atomic_load(&w->stop)) {
        /* forced stop: abort what is left; MHD closes them on its next pass */
        for (struct dp_request *r = w->requests; r != NULL; r = r->next)
            dp_request_client_gone(r);
    }
}

void *dp_worker_main(void *arg)
{
    struct dp_worker *w = arg;
    struct epoll_event evs[256];
    int running;
    for (;;) {
        int64_t now = dp_now_ms();
        int64_t timeout = -1;
        MHD_UNSIGNED_LONG_LONG mt;
        if (MHD_get_timeout(w->mhd, &mt) == MHD_YES)
            timeout = (int64_t)mt;
        if (w->curl_due_ms >= 0 && (timeout < 0 || w->curl_due_ms - now < timeout))
            timeout = w->curl_due_ms > now ? w->curl_due_ms - now : 0;
        const struct kw_heap_node *first = kw_heap_top(&w->timers);
        if (first != NULL && (timeout < 0 || first->key - now < timeout))
            timeout = first->key > now ? first->key - now : 0;
        if (w->draining && timeout < 0)
            timeout = 100;
        /* at its connection limit libmicrohttpd takes its listening socket out of its epoll
         * set and puts it back only in an MHD_run that starts below the limit: nothing
         * would wake us for that run, so poll until it has happened */
        if ((w->limit_wake || w->accept_stalled) && (timeout < 0 || timeout > 50))
            timeout = 50;
        int n = epoll_wait(w->ep, evs, KW_ARRAY_LEN(evs), timeout > 60000 ? 60000 : (int)timeout);
        if (n == -1 && errno != EINTR)
            break;
        bool run_mhd = timeout == 0 || (n == 0 && timeout >= 0);
        for (int i = 0; i < n; i++) {
            struct dp_watch *watch = evs[i].data.ptr;
            if (watch->retired)
                continue;
            switch (watch->kind) {
            case DP_WATCH_MHD:
                run_mhd = true;
                break;
            case DP_WATCH_CURL: {
                int flags = (evs[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                            (evs[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                            (evs[i].events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
                curl_multi_socket_action(w->multi, watch->fd, flags, &running);
                break;
            }
            case DP_WATCH_CLIENT:
                dp_request_client_gone(watch->ptr);
                run_mhd = true;
                break;
            case DP_WATCH_EVENT:
                on_message(w);
                run_mhd = true;
                break;
            }
        }
        now = dp_now_ms();
        if (w->curl_due_ms >= 0 && w->curl_due_ms <= now) {
            w->curl_due_ms = -1;
            curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
        }
        dp_upstream_poll(w);
        struct kw_heap_node *due;
        while ((due = kw_heap_top(&w->timers)) != NULL && due->key <= now) {
            struct dp_timer *t = (struct dp_timer *)((char *)due - offsetof(struct dp_timer, node));
            kw_heap_remove(&w->timers, due);
            t->on_fire(t);
        }
        (void)run_mhd;
        bool below = atomic_load_explicit(&w->stats.open_connections, memory_order_relaxed) <
                     (int_fast64_t)w->conn_limit;
        MHD_run(w->mhd);
        if (below)
            w->limit_wake = false; /* this run put the listening socket back */
        if (atomic_load_explicit(&w->stats.open_connections, memory_order_relaxed) >=
            (int_fast64_t)w->conn_limit)
            w->limit_wake = true;
        else if (w->accept_stalled && !w->draining)
            accept_for_mhd(w);
        while (w->retired != NULL) {
            struct dp_watch *dead = w->retired;
            w->retired = dead->next;
            free(dead);
        }
        if (w->draining && w->requests == NULL)
            break;
    }
    MHD_stop_daemon(w->mhd); /* closes idle keep-alive connections */
    w->mhd = NULL;
    return NULL;
}
