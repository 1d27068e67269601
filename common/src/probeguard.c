/* The admin listeners' connection guard (knoway/probeguard.h): the connections that wait
 * for request headers, in a list ordered by when they started waiting. Each change is O(1):
 * a new connection goes to the tail, one whose headers are in leaves the list, one that
 * finished a request and keeps alive goes back to the tail. */
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>

#include "knoway/probeguard.h"

struct slot {
    struct slot *prev, *next; /* in the waiting list, while waiting */
    struct kw_probe_guard *g;
    int fd;
    int64_t since; /* waiting for headers since (monotonic ms) */
    int waiting, closing;
};

struct kw_probe_guard {
    struct slot *head, *tail; /* oldest first */
    unsigned open, limit, spare;
    int64_t header_ms;
    atomic_uint_fast64_t evicted;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

struct kw_probe_guard *kw_probe_guard_new(unsigned limit, unsigned spare, int64_t header_ms)
{
    struct kw_probe_guard *g = calloc(1, sizeof(*g));
    if (g == NULL)
        return NULL;
    g->limit = limit;
    g->spare = spare < limit ? spare : limit / 2;
    g->header_ms = header_ms;
    return g;
}

void kw_probe_guard_free(struct kw_probe_guard *g)
{
    free(g); /* slots are freed as their connections close (MHD_stop_daemon closes all) */
}

uint64_t kw_probe_guard_evicted(const struct kw_probe_guard *g)
{
    return g != NULL ? atomic_load(&g->evicted) : 0;
}

static void unlink_slot(struct slot *s)
{
    struct kw_probe_guard *g = s->g;
    if (!s->waiting)
        return;
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        g->head = s->next;
    if (s->next != NULL)
        s->next->prev = s->prev;
    else
        g->tail = s->prev;
    s->prev = s->next = NULL;
    s->waiting = 0;
}

static void wait_headers(struct slot *s)
{
    struct kw_probe_guard *g = s->g;
    unlink_slot(s);
    s->since = now_ms();
    s->prev = g->tail;
    s->next = NULL;
    if (g->tail != NULL)
        g->tail->next = s;
    else
        g->head = s;
    g->tail = s;
    s->waiting = 1;
}

/* Shut the socket down: libmicrohttpd sees the end of the stream on its next poll and
 * closes the connection itself (the descriptor stays its own). */
static void evict(struct slot *s)
{
    unlink_slot(s);
    s->closing = 1;
    shutdown(s->fd, SHUT_RDWR);
    atomic_fetch_add(&s->g->evicted, 1);
}

void kw_probe_guard_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                                  enum MHD_ConnectionNotificationCode code)
{
    struct kw_probe_guard *g = cls;
    if (code == MHD_CONNECTION_NOTIFY_CLOSED) {
        struct slot *s = *socket_context;
        if (s != NULL) {
            unlink_slot(s);
            g->open--;
            free(s);
            *socket_context = NULL;
        }
        return;
    }
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    struct slot *s = calloc(1, sizeof(*s));
    if (s == NULL || ci == NULL) { /* untracked: it still has MHD's own timeout */
        free(s);
        return;
    }
    s->g = g;
    s->fd = ci->connect_fd;
    g->open++;
    /* headers overdue first, then (when nearly full) the one that waited longest */
    int64_t now = now_ms();
    while (g->head != NULL && now - g->head->since > g->header_ms)
        evict(g->head);
    if (g->open + g->spare >= g->limit && g->head != NULL)
        evict(g->head);
    wait_headers(s);
    *socket_context = s;
}

void kw_probe_guard_request(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci != NULL && ci->socket_context != NULL)
        unlink_slot(ci->socket_context);
}

void kw_probe_guard_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                                 enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)con_cls;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    struct slot *s = ci != NULL ? ci->socket_context : NULL;
    if (s != NULL && !s->closing && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK)
        wait_headers(s); /* kept alive: waits for its next request's headers */
}
