/* A worker: one thread, one epoll loop driving its own libmicrohttpd daemon (external
 * epoll mode, suspend/resume, its own SO_REUSEPORT listening socket), a timer heap, and
 * whatever registers a watch (upstream.c's libcurl sockets, clients' fds). Nothing here
 * blocks; the loop knows nothing of requests or curl.
 *
 * Loop:
 *   timeout = min(MHD's, first timer)
 *   epoll_wait -> each ready watch's callback (curl socket: curl_multi_socket_action |
 *                 client fd RDHUP: cancel that request | eventfd: new table, drain, stop
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

#include "balancer.h"
#include "router.h"
#include "worker.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "server.h"

#ifdef KW_MIMALLOC
#include <mimalloc.h>
#endif

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
    watch->events = events;
    return KW_OK;
}

void dp_worker_unwatch(struct dp_worker *w, struct dp_watch *watch)
{
    epoll_ctl(w->ep, EPOLL_CTL_DEL, watch->fd, NULL);
}

void dp_worker_retire(struct dp_worker *w, struct dp_watch *watch)
{
    dp_worker_unwatch(w, watch);
    dp_worker_forget(w, watch);
}

void dp_worker_forget(struct dp_worker *w, struct dp_watch *watch)
{
    /* an event for this socket may still be waiting in the current epoll batch: the watch
     * is freed after the batch, not now */
    watch->retired = true;
    watch->next = w->retired;
    w->retired = watch;
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

void dp_worker_post(struct dp_worker *w)
{
    uint64_t one = 1;
    ssize_t n = write(w->event_fd, &one, sizeof(one));
    (void)n;
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct dp_worker *w = cls;
    atomic_fetch_add_explicit(&w->open_connections, toe == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1,
                              memory_order_relaxed);
    if (toe == MHD_CONNECTION_NOTIFY_CLOSED)
        w->accept_stalled = false; /* a close lets libmicrohttpd accept again */
    w->hooks->on_connection(w, conn, socket_context, toe);
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

static void on_mhd_ready(struct dp_watch *watch, uint32_t events);
static void on_event_fd(struct dp_watch *watch, uint32_t events);

int dp_worker_init(struct dp_worker *w, struct dp_server *s, unsigned index, int listen_fd,
                   const struct dp_worker_hooks *hooks)
{
    memset(w, 0, sizeof(*w));
    w->hooks = hooks;
    w->index = index;
    w->server = s;
    w->listen_fd = listen_fd;
    w->lb = dp_lb_new(s->boot_id * 2654435761u + index * 40503u);
    kw_buf_init(&w->logbuf, 64 * 1024);
    w->scratch = kw_arena_new(DP_MAX_SSE_EVENT * 4);
    kw_heap_init(&w->timers);
    w->ep = epoll_create1(EPOLL_CLOEXEC);
    w->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->ep == -1 || w->event_fd == -1 || w->scratch == NULL || w->lb == NULL)
        return KW_ERROR;
    atomic_store(&w->alive_ms, dp_now_ms()); /* live from the start (/healthz) */
    unsigned conns = s->max_connections / s->nworkers + 1;
    w->conn_limit = conns;
    /* SO_REUSEPORT spreads one client's connections over the workers by hash: each worker
     * enforces its share of the per-client limit */
    /* (conn.c counts each client's connections, so that trusted proxies are exempt) */
    w->mhd = MHD_start_daemon(
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_TURBO | MHD_USE_ERROR_LOG, 0,
        hooks->on_accept, w, hooks->on_access, w, MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, w,
        MHD_OPTION_LISTEN_SOCKET, listen_fd, MHD_OPTION_CONNECTION_LIMIT, conns,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)DP_CONN_MEMORY, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)75, MHD_OPTION_NOTIFY_COMPLETED, hooks->on_completed, w,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, w, MHD_OPTION_SIGPIPE_HANDLED_BY_APP, 1,
        MHD_OPTION_END);
    if (w->mhd == NULL)
        return KW_ERROR;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(w->mhd, MHD_DAEMON_INFO_EPOLL_FD);
    if (di == NULL)
        return KW_ERROR;
    w->mhd_watch = (struct dp_watch){.fd = di->epoll_fd, .on_event = on_mhd_ready, .ptr = w};
    w->event_watch = (struct dp_watch){.fd = w->event_fd, .on_event = on_event_fd, .ptr = w};
    if (dp_worker_watch(w, &w->mhd_watch, EPOLLIN, true) != KW_OK ||
        dp_worker_watch(w, &w->event_watch, EPOLLIN, true) != KW_OK)
        return KW_ERROR;
    w->table = dp_table_ref(s->table);
    return KW_OK;
}

void dp_worker_cleanup(struct dp_worker *w)
{
    free(w->parked);
    w->parked = NULL;
    w->nparked = 0;
    while (w->retired != NULL) {
        struct dp_watch *dead = w->retired;
        w->retired = dead->next;
        free(dead);
    }
    while (w->narena_pool > 0)
        kw_arena_free(w->arena_pool[--w->narena_pool]);
    dp_table_unref(w->table);
    dp_table_unref(atomic_exchange(&w->next, NULL));
    kw_heap_cleanup(&w->timers);
    dp_lb_free(w->lb);
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
    atomic_store(&w->alive_ms, dp_now_ms());
#ifdef KW_MIMALLOC
    uint64_t trim = atomic_load(&w->server->trim);
    if (trim != w->trimmed) { /* this thread's heap: freed pages back to the OS */
        w->trimmed = trim;
        mi_collect(true);
    }
#endif
    struct dp_table *t = atomic_exchange(&w->next, NULL);
    if (t != NULL) {
        dp_table_unref(w->table); /* requests keep the old one pinned until they end */
        w->table = t;
        /* balancer state of backends that are gone (and idle) goes with them */
        dp_lb_sweep(w->lb, (const struct kw_backend *const *)t->snap->backends, t->snap->nbackends);
    }
    if (atomic_load(&w->drain) && !w->draining) {
        w->draining = true;
        MHD_socket fd = MHD_quiesce_daemon(w->mhd);
        if (fd != MHD_INVALID_SOCKET)
            close(fd);
    }
    if (w->hooks->on_post != NULL)
        w->hooks->on_post(w);
    if (atomic_load(&w->stop)) {
        /* forced stop: abort what is left; MHD closes them on its next pass */
        w->hooks->abort_all(w);
    }
}

static void on_mhd_ready(struct dp_watch *watch, uint32_t events)
{
    (void)watch;
    (void)events; /* MHD_run runs after every batch */
}

static void on_event_fd(struct dp_watch *watch, uint32_t events)
{
    (void)events;
    on_message(watch->ptr);
}

void *dp_worker_main(void *arg)
{
    struct dp_worker *w = arg;
    struct epoll_event evs[256];
    char name[16]; /* top -H and /proc/PID/task/TID/comm show which loop is which */
    snprintf(name, sizeof(name), "knoway-w%u", w->index);
    pthread_setname_np(pthread_self(), name);
    for (;;) {
        int64_t now = dp_now_ms();
        int64_t timeout = -1;
        MHD_UNSIGNED_LONG_LONG mt;
        if (MHD_get_timeout(w->mhd, &mt) == MHD_YES)
            timeout = (int64_t)mt;
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
        for (int i = 0; i < n; i++) {
            struct dp_watch *watch = evs[i].data.ptr;
            if (!watch->retired)
                watch->on_event(watch, evs[i].events);
        }
        now = dp_now_ms();
        struct kw_heap_node *due;
        while ((due = kw_heap_top(&w->timers)) != NULL && due->key <= now) {
            struct dp_timer *t = (struct dp_timer *)((char *)due - offsetof(struct dp_timer, node));
            kw_heap_remove(&w->timers, due);
            t->on_fire(t);
        }
        bool below = atomic_load_explicit(&w->open_connections, memory_order_relaxed) <
                     (int_fast64_t)w->conn_limit;
        MHD_run(w->mhd);
        if (below)
            w->limit_wake = false; /* this run put the listening socket back */
        if (atomic_load_explicit(&w->open_connections, memory_order_relaxed) >=
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
