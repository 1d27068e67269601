/* knoway-bench-lb: nanoseconds per balancing decision, per strategy (hack/bench.sh runs it
 * beside the RPS figures, which are too noisy on 2 shared cores to show a few percent).
 * A decision as the route phase makes it: pick a backendRef, then an endpoint of it,
 * attempt start and end (the state updates), over N refs of which one is ejected. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "balancer.h"

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
    int nrefs = argc > 1 ? atoi(argv[1]) : 3;
    long rounds = argc > 2 ? atol(argv[2]) : 2000000;
    if (nrefs < 1 || nrefs > 64 || rounds < 1)
        return 2;
    struct kw_backend *b = calloc((size_t)nrefs, sizeof(*b));
    struct kw_backend_ref *refs = calloc((size_t)nrefs, sizeof(*refs));
    char(*names)[16] = calloc((size_t)nrefs, sizeof(*names));
    struct kw_endpoint eps[2] = {{"http://e1", 1}, {"http://e2", 1}};
    for (int i = 0; i < nrefs; i++) {
        snprintf(names[i], sizeof(names[i]), "b%d", i);
        b[i].meta.ns = "bench";
        b[i].meta.name = names[i];
        b[i].upstream.endpoints = eps;
        b[i].upstream.nendpoints = 2;
        b[i].circuit_breaker.consecutive_failures = 1;
        refs[i] = (struct kw_backend_ref){.name = names[i], .weight = 1, .backend = &b[i]};
    }
    struct kw_route route = {.refs = refs, .nrefs = (size_t)nrefs};
    printf("{\"refs\":%d,\"ns_per_decision\":{", nrefs);
    for (int s = 0; s < KW_LB_COUNT; s++) {
        struct dp_lb *lb = dp_lb_new(1);
        bool tried[64] = {false};
        int64_t t = 1000;
        /* one ejected backend among them */
        struct dp_backend_state *bad = dp_lb_backend(lb, &b[0]);
        dp_lb_attempt_start(bad, -1, t);
        dp_lb_attempt_end(bad, -1, &b[0], DP_LB_FAILURE, -1, -1, t);
        double t0 = now_ns();
        for (long i = 0; i < rounds; i++) {
            const struct kw_backend_ref *r = dp_lb_pick(lb, &route, s, tried, 100, t);
            struct dp_backend_state *bs = dp_lb_backend(lb, r->backend);
            int ep = dp_lb_pick_endpoint(lb, bs, r->backend, s, 0, t);
            dp_lb_attempt_start(bs, ep, t);
            dp_lb_attempt_end(bs, ep, r->backend, DP_LB_SUCCESS, 5 + (i & 7), -1, t);
            t += (i & 15) == 0;
        }
        double ns = (now_ns() - t0) / (double)rounds;
        printf("%s\"%s\":%.1f", s > 0 ? "," : "", dp_lb_strategy_name(s), ns);
        dp_lb_free(lb);
    }
    printf("}}\n");
    free(b);
    free(refs);
    free(names);
    return 0;
}
