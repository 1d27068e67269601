/* knoway data plane: a worker - one thread, one epoll loop driving its own libmicrohttpd
 * daemon, its own libcurl multi handle (upstream.c) and a timer heap.
 *
 * Threading: everything here is touched only by the worker's thread, except the fields
 * marked "atomic" (read by the admin thread, written by the main thread). */
#ifndef DP_WORKER_H
#define DP_WORKER_H

#include <curl/curl.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "dp_limits.h"
#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/heap.h"

struct dp_server;
struct dp_worker_hooks;
struct dp_request;
struct dp_lb;
struct kw_metrics;
struct dp_debug_query;

/* ---- timers: a min-heap per worker ------------------------------------------------------- */
struct dp_timer;
typedef void (*dp_timer_fn)(struct dp_timer *t);
struct dp_timer {
    struct kw_heap_node node; /* key: the deadline in dp_now_ms() milliseconds */
    dp_timer_fn on_fire;
};

/* ---- epoll registrations: each carries its own callback ------------------------------------
 * Anything with a socket can join a worker's loop (libmicrohttpd, curl, a client's fd, later
 * Redis or an exporter): fill fd and on_event, then dp_worker_watch. */
struct dp_watch;
typedef void (*dp_watch_fn)(struct dp_watch *watch, uint32_t events);
struct dp_watch {
    int fd;
    dp_watch_fn on_event;  /* called from the loop with the epoll events */
    void *ptr;             /* the owner's */
    bool retired;          /* dropped: ignore events still queued in this batch */
    bool parked;           /* upstream.c: a pooled connection's socket, kept registered */
    uint32_t events;       /* what it is registered for */
    struct dp_watch *next; /* the worker's retired list, freed after each epoll batch */
};

struct dp_worker {
    unsigned index;
    struct dp_server *server;
    int ep;       /* epoll */
    int event_fd; /* messages from the main thread */
    int listen_fd;
    unsigned conn_limit;    /* libmicrohttpd's connection limit for this worker */
    struct dp_peers *peers; /* conn.c's: open connections per client address */
    bool limit_wake;        /* reached it: keep waking until a run starts below it */
    bool accept_stalled;    /* libmicrohttpd hit EMFILE and stopped accepting until one of its
                               connections closes: accept ourselves meanwhile (worker.c) */
    struct MHD_Daemon *mhd;
    struct dp_watch mhd_watch, event_watch;
    CURLM *multi;               /* upstream.c's */
    struct dp_timer curl_timer; /* upstream.c's: libcurl's timeout */
    struct kw_heap timers;
    struct dp_table *table;                 /* the table new requests pin */
    _Atomic(struct dp_table *) next;        /* atomic: a table posted by the main thread */
    atomic_bool drain, stop;                /* atomic: posted by the main thread */
    _Atomic(struct dp_debug_query *) debug; /* atomic: posted by the admin thread */
    atomic_uint_fast64_t pong;              /* atomic: the last watchdog ping this loop saw */
    atomic_int_fast64_t alive_ms;           /* atomic: when this loop last answered a ping */
    uint64_t trimmed;                       /* the last trim request this loop served */
    bool draining;
    uint64_t next_id;
    struct dp_lb *lb; /* per-backend runtime state and the random source */
    /* gauges read by the admin thread */
    atomic_int_fast64_t open_connections, active_requests, active_streams;
    struct kw_buf logbuf;
    struct kw_arena *scratch; /* reset per stream event */
    const struct dp_worker_hooks *hooks;
    struct dp_request *requests;              /* active (request.c's list), for a forced shutdown */
    struct dp_watch *retired;                 /* watches to free after this epoll batch */
    struct kw_arena *arena_pool[DP_POOL_MAX]; /* reset arenas for new requests */
    size_t narena_pool;
    CURL *easy_pool[DP_POOL_MAX]; /* upstream.c's: easy handles for new transfers */
    size_t neasy_pool;
    struct dp_watch **parked; /* upstream.c's: by fd, sockets of idle pooled connections */
    size_t nparked;           /* entries in parked (fd + 1 of the highest seen) */
};

/* Milliseconds of CLOCK_MONOTONIC. */
int64_t dp_now_ms(void);
/* Arm (or re-arm) t for due_ms; cancel it (no-op when not armed). Worker thread only. */
void dp_timer_arm(struct dp_worker *w, struct dp_timer *t, int64_t due_ms);
void dp_timer_cancel(struct dp_worker *w, struct dp_timer *t);
/* Add (add=true) or modify watch's registration. KW_OK or KW_ERROR. */
int dp_worker_watch(struct dp_worker *w, struct dp_watch *watch, uint32_t events, bool add);
void dp_worker_unwatch(struct dp_worker *w, struct dp_watch *watch);
/* Unwatch a heap-allocated watch whose events may still wait in the current batch: it is
 * freed after the batch. */
void dp_worker_retire(struct dp_worker *w, struct dp_watch *watch);
/* The same for a watch whose fd is being closed (closing removes it from epoll). */
void dp_worker_forget(struct dp_worker *w, struct dp_watch *watch);
/* The per-worker pool of arenas: one (reset) for a new request, or a fresh one; NULL on
 * out-of-memory. */
struct kw_arena *dp_worker_arena(struct dp_worker *w);
void dp_worker_arena_done(struct dp_worker *w, struct kw_arena *a);

/* What the worker's loop calls into (wired by the server, so the loop knows nothing of
 * requests): libmicrohttpd's access and completion handlers (cls: the worker), each new or
 * closed client connection, a forced stop's abort of every active request, and every wake-up
 * by dp_worker_post (a query waiting in the worker, such as /debug/routes). */
struct dp_worker_hooks {
    MHD_AccessHandlerCallback on_access;
    MHD_AcceptPolicyCallback on_accept; /* cls: the worker */
    MHD_RequestCompletedCallback on_completed;
    void (*on_connection)(struct dp_worker *w, struct MHD_Connection *conn, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe);
    void (*abort_all)(struct dp_worker *w);
    void (*on_post)(struct dp_worker *w); /* a message was posted (queries for the worker) */
};

/* Entry points for the server (main thread). */
int dp_worker_init(struct dp_worker *w, struct dp_server *s, unsigned index, int listen_fd,
                   const struct dp_worker_hooks *hooks);
void *dp_worker_main(void *arg);
void dp_worker_post(struct dp_worker *w);
void dp_worker_cleanup(struct dp_worker *w);

#endif
