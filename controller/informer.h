/* knoway controller: informers - a local copy of one kind of Kubernetes object, kept
 * current with LIST + WATCH.
 *
 *          +--------+  200, all pages   +-------+  stream ends (timeoutSeconds)
 *   start->|  LIST  |------------------>| WATCH |<-------------------+
 *          +--------+  (replace store)  +-------+--------------------+
 *            ^  |                         |   |
 *            |  | 429/5xx/no connection   |   | 429/5xx/connection lost: backoff, then
 *            |  +-> backoff, LIST again   |   | WATCH again from the last resourceVersion
 *            +----------------------------+
 *              410 Gone (HTTP status or an ERROR event): LIST again
 *
 * Backoff: 0.8 s doubling to 30 s, with jitter (x0.5..1.5), reset by a successful LIST or a
 * watch that delivered an event. The watch asks for bookmarks, so its resourceVersion stays
 * fresh while nothing changes, and for a timeoutSeconds of 5-10 minutes (random, so that
 * replicas do not reconnect together). The newline-delimited event stream is split into
 * lines incrementally: an event may arrive in any number of reads.
 *
 * The store maps "namespace/name" to the object's JSON text. Any thread may read it under
 * the store's lock; only the informer's own thread writes it. */
#ifndef CTL_INFORMER_H
#define CTL_INFORMER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/node.h"
#include "kube.h"

/* ---- the line splitter (pure; unit-tested) ---- */

/* Called once per complete line (without its '\n'; a trailing '\r' is kept). Return KW_OK
 * to go on, anything else to stop feeding. */
typedef int (*ctl_line_fn)(void *ud, const char *line, size_t len);

struct ctl_lines {
    struct kw_buf partial; /* bytes of a line not yet ended */
    ctl_line_fn on_line;
    void *ud;
};

/* max bounds one line (one event). */
void ctl_lines_init(struct ctl_lines *l, size_t max, ctl_line_fn on_line, void *ud);
void ctl_lines_cleanup(struct ctl_lines *l);
/* Feed bytes. KW_OK; KW_ERROR when a line passes the maximum; or what on_line returned. */
int ctl_lines_feed(struct ctl_lines *l, const char *p, size_t n);

/* ---- one watch event ---- */

enum ctl_event_type {
    CTL_EV_ADDED,
    CTL_EV_MODIFIED,
    CTL_EV_DELETED,
    CTL_EV_BOOKMARK,
    CTL_EV_ERROR,
};

struct ctl_event {
    enum ctl_event_type type;
    const struct kw_node *object;
    const char *ns, *name, *resource_version; /* "" when absent */
    long code;                                /* ERROR: the Status object's code */
    const char *message;                      /* ERROR: its message */
};

/* Parse one line of a watch stream into ev (strings live in a). KW_OK or KW_ERROR with a
 * reason in err. */
int ctl_event_parse(struct kw_arena *a, const char *line, size_t len, struct ctl_event *ev,
                    char *err, size_t errlen);

/* ---- the store ---- */

struct ctl_object {
    char *key; /* "namespace/name" */
    char *json;
    size_t len;
    uint64_t spec_hash; /* of what the builder reads (ctl_store_put_node), 0 if not known */
    uint64_t seq;       /* new with every new text of the object (process-wide): the builder's
                         * decode cache holds a decoded object while its seq is unchanged */
    struct ctl_object *next;
};

struct ctl_store {
    pthread_mutex_t mu;
    struct ctl_object **buckets;
    size_t nbuckets, n;
    uint64_t changes; /* bumped on every change */
};

void ctl_store_init(struct ctl_store *s);
void ctl_store_cleanup(struct ctl_store *s);
/* Insert or replace; returns true when the stored text changed. Lock held by the caller. */
bool ctl_store_put(struct ctl_store *s, const char *key, const char *json, size_t len);
bool ctl_store_delete(struct ctl_store *s, const char *key);
/* Apply one object (from a list or an event): its compact JSON under "namespace/name",
 * without metadata.managedFields and metadata.annotations (nothing reads them; kubectl's
 * last-applied annotation repeats the whole object). tmp is scratch. Lock held. Returns
 * true when what a build reads changed: not for a change of status alone (the controller's
 * own status writes must not trigger builds). */
bool ctl_store_put_node(struct ctl_store *s, const struct kw_node *obj, struct kw_buf *tmp);
const struct ctl_object *ctl_store_get(const struct ctl_store *s, const char *key);
/* Iterate: for (o = ctl_store_first(s, &i); o; o = ctl_store_next(s, o, &i)). */
const struct ctl_object *ctl_store_first(const struct ctl_store *s, size_t *i);
const struct ctl_object *ctl_store_next(const struct ctl_store *s, const struct ctl_object *o,
                                        size_t *i);

/* ---- the informer ---- */

typedef void (*ctl_change_fn)(void *ud);

struct ctl_informer {
    const char *kind;         /* "LLMBackend", for logs */
    const char *api;          /* "/apis/llm.knoway.dev/v1alpha1" */
    const char *fallback_api; /* tried when api answers 404 (older clusters), or NULL */
    const char *resource;     /* "llmbackends" */
    const char *ns;           /* NULL = every namespace */
    const char *label_selector;
    struct ctl_kube *kube;
    ctl_change_fn on_change;
    void *ud;
    struct ctl_store store;
    char rv[128]; /* the resourceVersion to watch from (informer thread only) */
    atomic_bool synced, stop;
    atomic_uint_fast64_t lists, watches, events, expired, errors;
    int64_t backoff_ms;
    pthread_t thread;
    bool running;
};

/* Start the informer's thread. KW_OK or KW_ERROR. */
int ctl_informer_start(struct ctl_informer *inf);
/* Stop the thread (it aborts its transfer within about a second). The store stays until
 * ctl_store_cleanup. */
void ctl_informer_stop(struct ctl_informer *inf);

/* The next backoff: 0.8 s doubling to 30 s. With jitter applied: *delay_ms. Pure. */
int64_t ctl_backoff_next(int64_t prev_ms, unsigned rnd, int64_t *delay_ms);

#endif
