/* knoway data plane: the balancer - which backendRef of a route and which endpoint of a
 * backend an attempt goes to, and the runtime state that decision reads.
 *
 * State lives per worker (no locks), beside the immutable routing table, keyed by the
 * backend's namespace/name and a fingerprint of its definition: a snapshot swap keeps the
 * state of unchanged backends (in-flight counts, latency, ejections, cooldowns, quota) and
 * starts fresh for changed ones; endpoints keep theirs by URL.
 *
 * Candidates: refs not yet tried with weight > 0. Healthy ones (not ejected, not cooling
 * down after a 429, not out of quota for this request, under maxConcurrentRequests) of the
 * lowest priority are picked by the strategy; when no healthy one is left at any priority,
 * the unhealthy ones are used the same way (a degraded answer beats none). */
#ifndef DP_BALANCER_H
#define DP_BALANCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/resource.h"

/* An upstream's rate-limit reset is believed up to a day */
#define DP_LB_MAX_RESET_MS (24LL * 3600 * 1000)

/* How an attempt ended, for the breaker and the latency estimate. */
enum dp_lb_outcome {
    DP_LB_SUCCESS,      /* an answer (2xx, or a 4xx that is the client's fault) */
    DP_LB_FAILURE,      /* connect failure, reset, timeout, 5xx */
    DP_LB_RATE_LIMITED, /* 429 */
    DP_LB_CANCELLED,    /* the client left: says nothing about the backend */
};

/* Health and timing of one backend or one endpoint. */
struct dp_lb_target {
    int64_t in_flight;
    double ewma_ms;     /* peak EWMA of time to first byte; 0: no sample yet */
    int64_t ewma_at_ms; /* when it was last updated */
    int64_t rr_current; /* smooth weighted round robin */
    uint32_t failures;  /* consecutive */
    uint32_t ejections; /* consecutive ejections (the ejection time doubles) */
    int64_t ejected_until;
    bool probing; /* half-open: one probe in flight */
    int64_t cooldown_until;
    /* quota seen in the provider's rate-limit headers (-1: unknown) */
    int64_t remaining_requests, remaining_tokens;
    int64_t requests_reset_at, tokens_reset_at;
    /* requests and tokens this minute, for LLMBackend limits (this worker's share) */
    int64_t minute_start, minute_requests, minute_tokens;
};

struct dp_lb_endpoint {
    char *url;
    struct dp_lb_target t;
};

struct dp_backend_state {
    char *key; /* "namespace/name" */
    uint64_t fingerprint;
    struct dp_lb_target t;
    struct dp_lb_endpoint *eps;
    size_t neps;
    /* retry budget: attempts and retries in the current and the previous window */
    int64_t budget_window, attempts_now, retries_now, attempts_prev, retries_prev;
    uint64_t ejections_total, cooldowns_total, retries_total;
    bool seen; /* sweep mark */
};

/* The circuit breaker's settings (LLMBackend spec.circuitBreaker; consecutive 0: off). */
struct dp_lb_breaker {
    uint32_t consecutive_failures;
    int64_t ejection_ms;
    uint32_t max_ejection_percent;
};

struct dp_lb;

/* A worker's balancer state with its random source. NULL on out-of-memory. */
struct dp_lb *dp_lb_new(uint64_t seed);
void dp_lb_free(struct dp_lb *lb);
/* A random number (xorshift64*). */
uint32_t dp_lb_rand(struct dp_lb *lb);

/* The state of backend b (created, or re-keyed after a change of definition). NULL on
 * out-of-memory. */
struct dp_backend_state *dp_lb_backend(struct dp_lb *lb, const struct kw_backend *b);

/* Pick a ref of route among those not tried (tried[i]) with strategy s; est_tokens: this
 * request's estimated tokens (quota). NULL when none is left. */
const struct kw_backend_ref *dp_lb_pick(struct dp_lb *lb, const struct kw_route *route,
                                        enum kw_lb_strategy s, const bool *tried,
                                        int64_t est_tokens, int64_t now);
/* Pick an endpoint of b (its state bs) other than those in exclude (bit i: endpoint i,
 * the first 64): an index into b->upstream.endpoints, or -1 when b has a baseURL (or
 * none). When every endpoint is excluded the exclusion is ignored. */
int dp_lb_pick_endpoint(struct dp_lb *lb, struct dp_backend_state *bs, const struct kw_backend *b,
                        enum kw_lb_strategy s, uint64_t exclude, int64_t now);

/* An attempt starts on bs (endpoint ep, -1 for none), and ends. */
void dp_lb_attempt_start(struct dp_backend_state *bs, int ep, int64_t now);
void dp_lb_attempt_end(struct dp_backend_state *bs, int ep, const struct kw_backend *b,
                       enum dp_lb_outcome o, int64_t ttfb_ms, int64_t cooldown_ms, int64_t now);
/* Tokens an attempt used (LLMBackend limits.tokensPerMinute). */
void dp_lb_tokens(struct dp_backend_state *bs, int64_t tokens, int64_t now);
/* A response header of an attempt on bs: rate-limit quota and resets. */
void dp_lb_header(struct dp_backend_state *bs, int ep, const char *name, size_t nlen,
                  const char *value, size_t vlen, int64_t now);

/* The retry budget, per backend: of the attempts it received over the last 10 to 20 s, at
 * most percent may be retries (a floor of 10 retries a window always fits), so a failing
 * upstream cannot multiply the load on the others. Whether one more retry fits; count one. */
bool dp_lb_retry_budget_ok(struct dp_backend_state *bs, uint32_t percent, int64_t now);
void dp_lb_retry_taken(struct dp_backend_state *bs);

/* Whether t is healthy for a request of est_tokens now. */
bool dp_lb_target_healthy(const struct dp_lb_target *t, const struct kw_backend *b,
                          int64_t est_tokens, int64_t now);
/* The latency cost the Latency strategy compares (decayed EWMA times load). */
double dp_lb_latency_cost(const struct dp_lb_target *t, int64_t now);

/* Drop the state of backends that are not in snap and have nothing in flight (after a
 * swap). */
void dp_lb_sweep(struct dp_lb *lb, const struct kw_backend *const *backends, size_t n);

/* Strategy names as written in LLMRoute spec.loadBalancer.strategy and the
 * x-knoway-routing-strategy header; -1 when unknown. */
int dp_lb_strategy_parse(const char *name);
const char *dp_lb_strategy_name(enum kw_lb_strategy s);

/* Visit each backend state (the admin's /debug/routes, metrics). */
struct dp_backend_state *dp_lb_find(struct dp_lb *lb, const struct kw_backend *b);

#endif
