/* knoway data plane: the routing table - an immutable, reference-counted view of a
 * snapshot built for lookups. A request pins the table it started with; a swap replaces
 * the pointer a worker holds; the last unref frees the table and its snapshot. */
#ifndef DP_ROUTER_H
#define DP_ROUTER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/buf.h"
#include "knoway/snapshot.h"

struct dp_match {
    const struct kw_route *route;
    const struct kw_model_match *model;
    size_t age; /* position of the route in the snapshot: oldest first */
};

/* An API key's digest and whose it is. */
struct dp_key {
    unsigned char digest[32];
    const struct kw_consumer *consumer; /* NULL: an empty slot */
};

struct dp_table {
    atomic_int refs;
    struct kw_snapshot *snap;
    struct dp_match *matches; /* most specific first */
    size_t nmatches;
    char *models_json; /* the /v1/models answer */
    size_t models_len;
    struct dp_key *keys; /* open addressing by digest: every consumer's keys */
    size_t nkeys_cap;    /* a power of two, at least twice the keys */
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

/* The consumer whose API key has this SHA-256, or NULL. O(1); the digests are compared in
 * constant time. */
const struct kw_consumer *dp_table_consumer(const struct dp_table *t,
                                            const unsigned char digest[32]);

/* The consumer named "namespace/name", or "name" when exactly one namespace has it; NULL
 * otherwise (a JWT's consumer claim). */
const struct kw_consumer *dp_table_consumer_named(const struct dp_table *t, const char *name);
/* Whether model is one the consumer may call (its spec.models, or every model). */
bool dp_consumer_allows(const struct kw_consumer *c, const char *model);
/* Whether route r admits consumer c (LLMRoute spec.consumers: by default the consumers of
 * its own namespace); NULL c (anonymous, or a token without a consumer) always. */
bool dp_route_admits(const struct kw_route *r, const struct kw_consumer *c);

/* The /v1/models answer as the consumer sees it (malloc'd into out: only the models it may
 * call). KW_OK or KW_ERROR. */
int dp_table_models_for(const struct dp_table *t, const struct kw_consumer *c, struct kw_buf *out);

/* How many upstream attempts a request on r may make in all: retry.attempts, or one per
 * backendRef (per endpoint of a backend with several), at most DP_MAX_ATTEMPTS. */
unsigned dp_route_attempts(const struct kw_route *r);

/* The same, with the model condition that matched (why: /debug/routes). */
const struct dp_match *dp_table_match(const struct dp_table *t, const char *model, const char *path,
                                      dp_header_fn header, void *ud);

#endif
