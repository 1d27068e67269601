/* knoway data plane: the routing table - an immutable, reference-counted view of a
 * snapshot built for lookups. A request pins the table it started with; a swap replaces
 * the pointer a worker holds; the last unref frees the table and its snapshot. */
#ifndef DP_ROUTER_H
#define DP_ROUTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/snapshot.h"

struct dp_match {
    const struct kw_route *route;
    const struct kw_model_match *model;
    size_t age; /* position of the route in the snapshot: oldest first */
};

struct dp_table {
    atomic_int refs;
    struct kw_snapshot *snap;
    struct dp_match *matches; /* most specific first */
    size_t nmatches;
    char *models_json; /* the /v1/models answer */
    size_t models_len;
};

/* Build a table over snap, taking over the caller's reference to it. NULL on OOM. */
struct dp_table *dp_table_new(struct kw_snapshot *snap);
struct dp_table *dp_table_ref(struct dp_table *t);
void dp_table_unref(struct dp_table *t);

/* Looks up a request header (case-insensitive name); NULL when absent. */
typedef const char *(*dp_header_fn)(void *ud, const char *name);

/* The route for model on path, or NULL. Order: exact model matches before prefix ones,
 * longer prefixes first, then routes with more header and path conditions, then age. */
const struct kw_route *dp_table_route(const struct dp_table *t, const char *model, const char *path,
                                      dp_header_fn header, void *ud);

/* How many upstream attempts a request on r may make in all: retry.attempts, or one per
 * backendRef (per endpoint of a backend with several), at most DP_MAX_ATTEMPTS. */
unsigned dp_route_attempts(const struct kw_route *r);

/* The same, with the model condition that matched (why: /debug/routes). */
const struct dp_match *dp_table_match(const struct dp_table *t, const char *model, const char *path,
                                      dp_header_fn header, void *ud);

#endif
