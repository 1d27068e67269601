/* knoway controller: the snapshot builder.
 *
 * Informers call ctl_builder_kick on every change. Adaptive debounce: a change after a
 * quiet spell (no build in the last debounce time, about 100 ms) is built at once; changes
 * that follow a recent build are coalesced until none came for the debounce time (at most
 * 1 s after the first of them). Then the builder's thread builds from the stores: every LLMBackend
 * and LLMRoute, the Secrets that backends reference, EndpointSlices for serviceRefs. The result is
 * a ctl_build: the snapshot, its canonical text and, for every resource, what the status conditions
 * should say. A build whose version equals the last one is still handed on (statuses may differ),
 * but discovery sees no change. */
#ifndef CTL_BUILDER_H
#define CTL_BUILDER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "informer.h"
#include "knoway/resource.h"
#include "knoway/snapshot.h"

/* What the status conditions of one LLMBackend or LLMRoute should say. */
struct ctl_resource_state {
    enum kw_kind kind;
    char *ns, *name;
    int64_t generation;
    bool accepted;
    bool conflicted;    /* not accepted because an older route claims its model */
    char *accepted_msg; /* the first error, or NULL */
    bool resolved;
    char *resolved_msg;
    bool label_hint; /* resolved_msg says which Secrets the controller reads */
    bool programmed; /* in the snapshot */
    size_t order;    /* the resource's position among its kind in the build's config */
};

struct ctl_build {
    atomic_int refs;
    /* what is kept of the snapshot: the parsed one is freed once the states are known (a
     * few builds are held at once; at 10,000 resources each parse is tens of MiB) */
    char version[KW_SNAPSHOT_VERSION_LEN + 1];
    size_t nbackends, nroutes, nconsumers;
    char *json; /* canonical snapshot text (what data planes receive) */
    size_t len;
    char *gz; /* the same, gzip-compressed (sent to pollers that accept it), or NULL */
    size_t gzlen;
    struct ctl_resource_state *states; /* sorted: kind, namespace, name */
    size_t nstates;
    size_t nerrors;
    int64_t build_us;               /* how long the build took */
    int64_t end_ns;                 /* when it ended (Unix ns) */
    char trace_id[33], span_id[17]; /* its span: the pushes of this version are children */
};

struct ctl_build *ctl_build_ref(struct ctl_build *b);
void ctl_build_unref(struct ctl_build *b);

/* The stores a build reads. */
/* Decoded objects kept between builds (builder.c): an object whose text has not changed
 * since the last build (ctl_object.seq) is neither parsed nor decoded again, and its
 * messages are replayed. One builder thread uses it at a time. */
struct ctl_cache;
struct ctl_cache *ctl_cache_new(void);
void ctl_cache_free(struct ctl_cache *c);
/* Objects held and bytes of their decoded resources (for the bench and the tests). */
void ctl_cache_stats(const struct ctl_cache *c, size_t *objects, size_t *bytes);

struct ctl_sources {
    struct ctl_store *backends, *routes, *secrets, *slices;
    const char *secret_selector; /* the Secrets informer's label selector, or NULL (hints) */
    struct ctl_store *consumers; /* LLMConsumers, or NULL */
    struct ctl_cache *cache;     /* or NULL: every build decodes every object */
    /* namespaces whose prefix and wildcard claims may capture and block others'
     * (--prefix-claim-namespaces; struct kw_config.claim_namespaces) */
    const char *const *claim_namespaces;
    size_t nclaim_namespaces;
};

/* Build once from the sources (locks each store while reading it). NULL on out-of-memory. */
struct ctl_build *ctl_build_run(const struct ctl_sources *src);

/* The state of one resource in b, or NULL. */
const struct ctl_resource_state *ctl_build_find(const struct ctl_build *b, enum kw_kind k,
                                                const char *ns, const char *name);

typedef void (*ctl_build_fn)(void *ud, struct ctl_build *b);

struct ctl_builder {
    struct ctl_sources src;
    ctl_build_fn on_build; /* called on the builder thread with a borrowed reference */
    /* Whether the sources hold a whole view (every informer listed), asked before a
     * build reads them: a build begun before the last list completed would publish a
     * partial view (routes without their consumers) even if the list lands meanwhile.
     * NULL: always. */
    bool (*ready)(void *ud);
    void *ud;
    int64_t debounce_ms;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool dirty, stop;
    int64_t first_kick_ms, last_kick_ms, last_build_ms;
    atomic_uint_fast64_t builds;
    pthread_t thread;
};

int ctl_builder_start(struct ctl_builder *b);
void ctl_builder_stop(struct ctl_builder *b);
/* Something changed: build soon. Any thread. */
void ctl_builder_kick(void *builder);

/* The EndpointSlice resolver (ud = the slices store). Ready endpoints of the Service's
 * slices; the port is the slice port whose number equals port, else the only port. */
int ctl_resolve_slices(void *ud, struct kw_arena *a, const char *ns, const char *name,
                       uint32_t port, struct kw_endpoint **eps, size_t *neps, char *err,
                       size_t errlen);

#endif
