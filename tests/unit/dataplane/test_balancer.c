/* The balancer: strategies, priorities, the circuit breaker, cooldowns, quota, the retry
 * budget, and state across snapshot swaps. Time is passed in: no sleeping. */
#include <stdlib.h>
#include <string.h>

#include "balancer.h"
#include "knoway/kw.h"
#include "testutil.h"

struct fixture {
    struct kw_backend b[3];
    struct kw_backend_ref refs[3];
    struct kw_route route;
    struct dp_lb *lb;
};

static struct fixture *fixture(const uint32_t *weights, const uint32_t *priorities, size_t n)
{
    static const char *const names[] = {"a", "b", "c"};
    static const char *const urls[] = {"http://a", "http://b", "http://c"};
    struct fixture *f = calloc(1, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        f->b[i].meta.ns = "t";
        f->b[i].meta.name = names[i];
        f->b[i].upstream.base_url = urls[i];
        f->refs[i] = (struct kw_backend_ref){.name = names[i],
                                             .weight = weights[i],
                                             .priority = priorities != NULL ? priorities[i] : 0,
                                             .backend = &f->b[i]};
    }
    f->route.refs = f->refs;
    f->route.nrefs = n;
    f->lb = dp_lb_new(42);
    return f;
}

static void fixture_free(struct fixture *f)
{
    dp_lb_free(f->lb);
    free(f);
}

/* Which backend (0..2) strategy s picks, with nothing tried. */
static int pick(struct fixture *f, enum kw_lb_strategy s, int64_t now)
{
    bool tried[3] = {false, false, false};
    const struct kw_backend_ref *r = dp_lb_pick(f->lb, &f->route, s, tried, 0, now);
    return r == NULL ? -1 : (int)(r - f->refs);
}

static struct dp_backend_state *state(struct fixture *f, int i)
{
    return dp_lb_backend(f->lb, &f->b[i]);
}

static void test_weighted_random(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 3, 0}, NULL, 3);
    int n[3] = {0};
    for (int i = 0; i < 4000; i++)
        n[pick(f, KW_LB_WEIGHTED_RANDOM, 0)]++;
    assert_int_equal(n[2], 0); /* weight 0: never */
    assert_in_range(n[0], 800, 1200);
    assert_in_range(n[1], 2800, 3200);
    fixture_free(f);
}

static void test_priority_and_tried(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1, 1}, (uint32_t[]){1, 0, 2}, 3);
    bool tried[3] = {false, false, false};
    for (int i = 0; i < 50; i++)
        assert_int_equal(pick(f, KW_LB_WEIGHTED_RANDOM, 0), 1); /* the lowest priority */
    tried[1] = true;
    assert_ptr_equal(dp_lb_pick(f->lb, &f->route, KW_LB_ROUND_ROBIN, tried, 0, 0), &f->refs[0]);
    tried[0] = true;
    assert_ptr_equal(dp_lb_pick(f->lb, &f->route, KW_LB_LATENCY, tried, 0, 0), &f->refs[2]);
    tried[2] = true;
    assert_null(dp_lb_pick(f->lb, &f->route, KW_LB_WEIGHTED_RANDOM, tried, 0, 0));
    fixture_free(f);
}

static void test_round_robin_smooth(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){5, 1, 1}, NULL, 3);
    /* nginx's smooth weighted round robin: a a b a c a a, then again */
    static const int want[] = {0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0};
    for (size_t i = 0; i < KW_ARRAY_LEN(want); i++)
        assert_int_equal(pick(f, KW_LB_ROUND_ROBIN, 0), want[i]);
    fixture_free(f);
}

static void test_least_request(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1}, NULL, 2);
    dp_lb_attempt_start(state(f, 0), -1, 0);
    dp_lb_attempt_start(state(f, 0), -1, 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(pick(f, KW_LB_LEAST_REQUEST, 0), 1); /* two choices: b has none */
    fixture_free(f);
}

static void test_latency_peak_ewma_and_decay(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1}, NULL, 2);
    struct dp_backend_state *a = state(f, 0), *b = state(f, 1);
    dp_lb_attempt_start(a, -1, 0);
    dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_SUCCESS, 500, -1, 0);
    dp_lb_attempt_start(b, -1, 0);
    dp_lb_attempt_end(b, -1, &f->b[1], DP_LB_SUCCESS, 20, -1, 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(pick(f, KW_LB_LATENCY, 1), 1);
    /* peak: one slow answer counts at once */
    dp_lb_attempt_start(b, -1, 2);
    dp_lb_attempt_end(b, -1, &f->b[1], DP_LB_SUCCESS, 2000, -1, 2);
    assert_true(b->t.ewma_ms >= 2000);
    assert_int_equal(pick(f, KW_LB_LATENCY, 3), 0);
    /* a fast answer is averaged in, not taken at once */
    dp_lb_attempt_start(b, -1, 1000);
    dp_lb_attempt_end(b, -1, &f->b[1], DP_LB_SUCCESS, 10, -1, 1000);
    assert_true(b->t.ewma_ms > 1000 && b->t.ewma_ms < 2000);
    /* time decays the cost of the slow one: after a minute without samples it is cheap */
    assert_true(dp_lb_latency_cost(&a->t, 60000) < dp_lb_latency_cost(&a->t, 1000) / 100);
    fixture_free(f);
}

static void test_breaker(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1}, NULL, 2);
    f->b[0].circuit_breaker.consecutive_failures = 3;
    f->b[0].circuit_breaker.ejection_time_ms = 1000;
    struct dp_backend_state *a = state(f, 0);
    int64_t now = 0;
    for (int i = 0; i < 2; i++) {
        dp_lb_attempt_start(a, -1, now);
        dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_FAILURE, -1, -1, now);
    }
    assert_true(dp_lb_target_healthy(&a->t, &f->b[0], 0, now)); /* 2 < 3 */
    dp_lb_attempt_start(a, -1, now);
    dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_FAILURE, -1, -1, now);
    assert_false(dp_lb_target_healthy(&a->t, &f->b[0], 0, now));
    assert_int_equal(a->t.ejected_until, 1000);
    for (int i = 0; i < 100; i++)
        assert_int_equal(pick(f, KW_LB_WEIGHTED_RANDOM, 500), 1); /* skipped while ejected */
    /* half-open: one probe; while it runs the backend takes nothing else */
    now = 1000;
    assert_true(dp_lb_target_healthy(&a->t, &f->b[0], 0, now));
    dp_lb_attempt_start(a, -1, now);
    assert_false(dp_lb_target_healthy(&a->t, &f->b[0], 0, now));
    /* the probe fails: ejected again, twice as long */
    dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_FAILURE, -1, -1, now);
    assert_int_equal(a->t.ejected_until, now + 2000);
    now = 3000;
    dp_lb_attempt_start(a, -1, now);
    dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_SUCCESS, 5, -1, now);
    assert_true(dp_lb_target_healthy(&a->t, &f->b[0], 0, now)); /* closed */
    assert_int_equal(a->t.ejections, 0);
    assert_int_equal(a->ejections_total, 2);
    /* without a breaker, failures never eject */
    struct dp_backend_state *b = state(f, 1);
    for (int i = 0; i < 50; i++) {
        dp_lb_attempt_start(b, -1, now);
        dp_lb_attempt_end(b, -1, &f->b[1], DP_LB_FAILURE, -1, -1, now);
    }
    assert_true(dp_lb_target_healthy(&b->t, &f->b[1], 0, now));
    fixture_free(f);
}

static void test_everything_unhealthy_still_answers(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1}, (uint32_t[]){0, 1}, 2);
    for (int i = 0; i < 2; i++) {
        struct dp_backend_state *s = state(f, i);
        dp_lb_attempt_start(s, -1, 0);
        dp_lb_attempt_end(s, -1, &f->b[i], DP_LB_RATE_LIMITED, -1, 60000, 0);
    }
    /* both cool down: the first priority is still picked (a degraded answer beats none) */
    assert_int_equal(pick(f, KW_LB_WEIGHTED_RANDOM, 10), 0);
    /* only the preferred one cools down: the fallback gets it */
    struct fixture *g = fixture((uint32_t[]){1, 1}, (uint32_t[]){0, 1}, 2);
    dp_lb_attempt_start(state(g, 0), -1, 0);
    dp_lb_attempt_end(state(g, 0), -1, &g->b[0], DP_LB_RATE_LIMITED, -1, 5000, 0);
    assert_int_equal(pick(g, KW_LB_WEIGHTED_RANDOM, 4999), 1);
    assert_int_equal(pick(g, KW_LB_WEIGHTED_RANDOM, 5000), 0);
    fixture_free(f);
    fixture_free(g);
}

static void header(struct dp_backend_state *s, const char *name, const char *value, int64_t now)
{
    dp_lb_header(s, -1, name, strlen(name), value, strlen(value), now);
}

static void test_quota_headers(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1}, (uint32_t[]){0, 1}, 2);
    struct dp_backend_state *a = state(f, 0);
    header(a, "x-ratelimit-remaining-requests", "0", 0);
    header(a, "X-RateLimit-Reset-Requests", "6m0s", 0);
    assert_int_equal(a->t.requests_reset_at, 360000);
    assert_int_equal(pick(f, KW_LB_WEIGHTED_RANDOM, 1000), 1);
    assert_int_equal(pick(f, KW_LB_WEIGHTED_RANDOM, 360000), 0); /* reset */
    /* tokens: a request that needs more than remain goes elsewhere */
    struct dp_backend_state *b = state(f, 1);
    (void)b;
    header(a, "anthropic-ratelimit-tokens-remaining", "100", 0);
    header(a, "anthropic-ratelimit-tokens-reset", "2026-12-02T10:00:00Z", 0);
    a->t.remaining_requests = -1;
    assert_true(dp_lb_target_healthy(&a->t, &f->b[0], 99, 10));
    assert_false(dp_lb_target_healthy(&a->t, &f->b[0], 101, 10));
    header(a, "x-ratelimit-reset-tokens", "20ms", 0);
    assert_int_equal(a->t.tokens_reset_at, 20);
    header(a, "x-ratelimit-reset-tokens", "1.5s", 0);
    assert_int_equal(a->t.tokens_reset_at, 1500);
    /* huge durations are clamped before they become integers (fuzz_providers found the
     * undefined conversion of "700000000000000000000000000s"; UBSan fails this test on it) */
    header(a, "x-ratelimit-reset-requests", "700000000000000000000000000s", 5);
    assert_int_equal(a->t.requests_reset_at, 5 + DP_LB_MAX_RESET_MS);
    header(a, "x-ratelimit-reset-tokens",
           "99999999999999999999999999999999999999999999999999999999999999999h9999999999m", 5);
    assert_int_equal(a->t.tokens_reset_at, 5 + DP_LB_MAX_RESET_MS);
    fixture_free(f);
}

static void test_backend_limits(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1}, NULL, 1);
    f->b[0].limits.requests_per_minute = 2;
    f->b[0].limits.max_concurrent_requests = 1;
    struct dp_backend_state *a = state(f, 0);
    assert_true(dp_lb_target_healthy(&a->t, &f->b[0], 0, 0));
    dp_lb_attempt_start(a, -1, 0);
    assert_false(dp_lb_target_healthy(&a->t, &f->b[0], 0, 0)); /* one in flight */
    dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_SUCCESS, 1, -1, 1);
    dp_lb_attempt_start(a, -1, 2);
    dp_lb_attempt_end(a, -1, &f->b[0], DP_LB_SUCCESS, 1, -1, 3);
    assert_false(dp_lb_target_healthy(&a->t, &f->b[0], 0, 4)); /* 2 this minute */
    assert_true(dp_lb_target_healthy(&a->t, &f->b[0], 0, 60001));
    fixture_free(f);
}

static void test_retry_budget(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1}, NULL, 1);
    struct dp_backend_state *a = state(f, 0);
    /* the floor: 10 retries a window fit whatever the attempts */
    for (int i = 0; i < 10; i++) {
        assert_true(dp_lb_retry_budget_ok(a, 20, 0));
        dp_lb_attempt_start(a, -1, 0);
        dp_lb_retry_taken(a);
    }
    assert_false(dp_lb_retry_budget_ok(a, 20, 0));
    for (int i = 0; i < 44; i++)
        dp_lb_attempt_start(a, -1, 0);            /* 54 attempts, 10 of them retries */
    assert_true(dp_lb_retry_budget_ok(a, 20, 0)); /* 11 of 55: 20 % */
    dp_lb_attempt_start(a, -1, 0);
    dp_lb_retry_taken(a);
    assert_false(dp_lb_retry_budget_ok(a, 20, 0)); /* 12 of 56 > 20 % */
    /* windows of 10 s: the last two count, then nothing is remembered */
    assert_false(dp_lb_retry_budget_ok(a, 20, 10001));
    assert_true(dp_lb_retry_budget_ok(a, 20, 20002));
    fixture_free(f);
}

static void test_state_across_swaps(void **st)
{
    (void)st;
    struct fixture *f = fixture((uint32_t[]){1, 1}, NULL, 2);
    struct dp_backend_state *a = state(f, 0);
    dp_lb_attempt_start(a, -1, 0);
    /* a new snapshot: the same backend (another struct, same definition) keeps its state */
    struct kw_backend copy = f->b[0];
    assert_ptr_equal(dp_lb_backend(f->lb, &copy), a);
    assert_int_equal(a->t.in_flight, 1);
    a->t.ejected_until = 99999;
    /* a changed definition (another snapshot's struct) starts healthy (what is in flight
     * still counts) */
    struct kw_backend changed = f->b[0];
    changed.upstream.base_url = "http://elsewhere";
    assert_ptr_equal(dp_lb_backend(f->lb, &changed), a);
    assert_int_equal(a->t.ejected_until, 0);
    assert_int_equal(a->t.in_flight, 1);
    /* a sweep keeps what is listed or busy, drops the rest */
    struct dp_backend_state *b = state(f, 1);
    (void)b;
    const struct kw_backend *listed[] = {NULL};
    dp_lb_sweep(f->lb, listed, 0);
    assert_non_null(dp_lb_find(f->lb, &f->b[0])); /* in flight */
    assert_null(dp_lb_find(f->lb, &f->b[1]));
    fixture_free(f);
}

static void test_endpoints(void **st)
{
    (void)st;
    struct kw_endpoint eps[3] = {{"http://e1", 1}, {"http://e2", 1}, {"http://e3", 2}};
    struct kw_backend b = {.meta = {.ns = "t", .name = "pool"}};
    b.upstream.endpoints = eps;
    b.upstream.nendpoints = 3;
    b.circuit_breaker.consecutive_failures = 1;
    b.circuit_breaker.max_ejection_percent = 50;
    struct dp_lb *lb = dp_lb_new(7);
    struct dp_backend_state *s = dp_lb_backend(lb, &b);
    int n[3] = {0};
    for (int i = 0; i < 400; i++)
        n[dp_lb_pick_endpoint(lb, s, &b, KW_LB_ROUND_ROBIN, 0, 0)]++;
    assert_int_equal(n[0], 100);
    assert_int_equal(n[2], 200);
    /* e1 fails once: ejected; e2 too would pass 50 %: it stays */
    dp_lb_attempt_start(s, 0, 0);
    dp_lb_attempt_end(s, 0, &b, DP_LB_FAILURE, -1, -1, 0);
    dp_lb_attempt_start(s, 1, 0);
    dp_lb_attempt_end(s, 1, &b, DP_LB_FAILURE, -1, -1, 0);
    assert_true(s->eps[0].t.ejected_until > 0);
    assert_int_equal(s->eps[1].t.ejected_until, 0);
    for (int i = 0; i < 100; i++)
        assert_int_not_equal(dp_lb_pick_endpoint(lb, s, &b, KW_LB_WEIGHTED_RANDOM, 0, 1), 0);
    /* the backend as a whole is not ejected while endpoints remain */
    assert_true(dp_lb_target_healthy(&s->t, &b, 0, 1));
    /* endpoints keep their state by URL when the list changes */
    struct kw_endpoint eps2[2] = {{"http://e0", 1}, {"http://e1", 1}};
    struct kw_backend b2 = b; /* the next snapshot's */
    b2.upstream.endpoints = eps2;
    b2.upstream.nendpoints = 2;
    s = dp_lb_backend(lb, &b2);
    assert_int_equal(s->neps, 2);
    assert_true(s->eps[1].t.ejected_until > 0);
    assert_int_equal(s->eps[0].t.ejected_until, 0);
    dp_lb_free(lb);
}

static void test_strategy_names(void **st)
{
    (void)st;
    assert_int_equal(dp_lb_strategy_parse("leastrequest"), KW_LB_LEAST_REQUEST);
    assert_int_equal(dp_lb_strategy_parse("Latency"), KW_LB_LATENCY);
    assert_int_equal(dp_lb_strategy_parse("fastest"), -1);
    assert_string_equal(dp_lb_strategy_name(KW_LB_ROUND_ROBIN), "RoundRobin");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_weighted_random),
        cmocka_unit_test(test_priority_and_tried),
        cmocka_unit_test(test_round_robin_smooth),
        cmocka_unit_test(test_least_request),
        cmocka_unit_test(test_latency_peak_ewma_and_decay),
        cmocka_unit_test(test_breaker),
        cmocka_unit_test(test_everything_unhealthy_still_answers),
        cmocka_unit_test(test_quota_headers),
        cmocka_unit_test(test_backend_limits),
        cmocka_unit_test(test_retry_budget),
        cmocka_unit_test(test_state_across_swaps),
        cmocka_unit_test(test_endpoints),
        cmocka_unit_test(test_strategy_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
