/* ratelimit.c: the sliding-window counter, its numbers, the lock-free table. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "ratelimit.h"
#include "testutil.h"

#define W 60000 /* a one-minute window */

static void test_burst_admits_exactly_the_limit(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct dp_rl_state st;
    uint64_t k = dp_rl_hash("a", 1);
    int64_t now = 10 * W; /* the start of a window */
    int admitted = 0;
    for (int i = 0; i < 300; i++)
        admitted += dp_rl_local(s, k, 100, W, 1, true, now + i, &st) == 1;
    assert_int_equal(admitted, 100);
    assert_int_equal(st.cur, 100);
    assert_int_equal(dp_rl_remaining(&st), 0);
    /* another key is another bucket */
    assert_int_equal(dp_rl_local(s, dp_rl_hash("b", 1), 100, W, 1, true, now, &st), 1);
    dp_rl_store_free(s);
}

static void test_sliding_weight(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct dp_rl_state st;
    uint64_t k = 42;
    int64_t t0 = 10 * W;
    for (int i = 0; i < 100; i++)
        assert_int_equal(dp_rl_local(s, k, 100, W, 1, true, t0, &st), 1);
    /* a quarter into the next window 75 % of the previous one still counts */
    int64_t t1 = 11 * W + W / 4;
    assert_int_equal(dp_rl_local(s, k, 100, W, 0, true, t1, &st), 1);
    assert_int_equal(st.prev, 100);
    assert_int_equal(dp_rl_estimate(&st), 75);
    assert_int_equal(dp_rl_remaining(&st), 25);
    int admitted = 0;
    for (int i = 0; i < 50; i++)
        admitted += dp_rl_local(s, k, 100, W, 1, true, t1, &st) == 1;
    assert_int_equal(admitted, 25);
    /* two windows later nothing is left of it */
    assert_int_equal(dp_rl_local(s, k, 100, W, 0, true, 13 * W, &st), 1);
    assert_int_equal(dp_rl_estimate(&st), 0);
    dp_rl_store_free(s);
}

static void test_wait_and_reset(void **state)
{
    (void)state;
    /* full current window, nothing before: wait for the next window, then for enough of
     * this one to slide away */
    struct dp_rl_state st = {.limit = 100, .window_ms = W, .cur = 100, .prev = 0, .elapsed_ms = 0};
    int64_t w = dp_rl_wait_ms(&st, 1);
    assert_true(w > W && w <= W + W / 100 + 1);
    assert_int_equal(dp_rl_reset_ms(&st), 2 * W);
    /* the previous window holds the count: wait until its share drops enough */
    st = (struct dp_rl_state){.limit = 100, .window_ms = W, .cur = 0, .prev = 100, .elapsed_ms = 0};
    assert_int_equal(dp_rl_wait_ms(&st, 10), W / 10);
    assert_int_equal(dp_rl_reset_ms(&st), W);
    /* a cost above the limit never fits */
    assert_int_equal(dp_rl_wait_ms(&st, 101), -1);
    st.prev = 0;
    assert_int_equal(dp_rl_wait_ms(&st, 100), 0);
    assert_int_equal(dp_rl_reset_ms(&st), 0);
    char buf[32];
    dp_rl_format_reset(20, buf);
    assert_string_equal(buf, "20ms");
    dp_rl_format_reset(1001, buf);
    assert_string_equal(buf, "2s");
    dp_rl_format_reset(360000, buf);
    assert_string_equal(buf, "6m0s");
    dp_rl_format_reset(3723000, buf);
    assert_string_equal(buf, "1h2m3s");
    dp_rl_format_reset(0, buf);
    assert_string_equal(buf, "0ms");
    dp_rl_format_reset(59999, buf);
    assert_string_equal(buf, "1m0s");
    char n[24];
    assert_int_equal(dp_rl_format_int(0, n), 1);
    assert_string_equal(n, "0");
    dp_rl_format_int(-1234567890123LL, n);
    assert_string_equal(n, "-1234567890123");
}

static void test_adjust_refund_and_charge(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct dp_rl_state st;
    uint64_t k = 7;
    int64_t now = 5 * W + 10;
    assert_int_equal(dp_rl_local(s, k, 1000, W, 600, true, now, &st), 1);
    assert_int_equal(dp_rl_local(s, k, 1000, W, 600, true, now, &st), 0); /* would overshoot */
    dp_rl_local_adjust(s, k, W, st.win, -550);                            /* used 50 of 600 */
    assert_int_equal(dp_rl_local(s, k, 1000, W, 600, true, now, &st), 1);
    assert_int_equal(st.cur, 650);
    dp_rl_local_adjust(s, k, W, st.win, 10000); /* more than reserved: charged */
    assert_int_equal(dp_rl_local(s, k, 1000, W, 0, true, now, &st), 1);
    assert_int_equal(st.cur, 10650);
    dp_rl_local_adjust(s, k, W, st.win, -1000000); /* never below 0 */
    assert_int_equal(dp_rl_local(s, k, 1000, W, 0, true, now, &st), 1);
    assert_int_equal(st.cur, 0);
    /* a correction for a window that has passed touches nothing */
    assert_int_equal(dp_rl_local(s, k, 1000, W, 5, true, now + W, &st), 1);
    dp_rl_local_adjust(s, k, W, st.win - 1, 500);
    assert_int_equal(dp_rl_local(s, k, 1000, W, 0, true, now + W, &st), 1);
    assert_int_equal(st.cur, 5);
    dp_rl_store_free(s);
}

static void test_counter_and_expiry(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    uint64_t k = dp_rl_hash("budget", 6);
    assert_int_equal(dp_rl_counter(s, k, 0, 0, 1000), 0);
    assert_int_equal(dp_rl_counter(s, k, 250, 10, 1000), 250);
    assert_int_equal(dp_rl_counter(s, k, 250, 20, 1000), 500);
    assert_int_equal(dp_rl_counter(s, k, 0, 900, 1000), 500); /* kept until it expires */
    /* after its expiry another key of the same slot takes it: the old value is gone */
    uint64_t other = k + DP_RL_SLOTS;
    assert_int_equal(dp_rl_counter(s, other, 0, 2000, 5000), 0);
    assert_int_equal(dp_rl_counter(s, other, 7, 2000, 5000), 7);
    dp_rl_store_free(s);
}

static void test_table_full(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct dp_rl_state st;
    /* DP_RL_PROBE + 1 keys that all start at the same slot */
    int full = 0;
    for (uint64_t i = 0; i <= DP_RL_PROBE; i++) {
        uint64_t key = 5 + i * DP_RL_SLOTS;
        int rc = dp_rl_local(s, key, 10, W, 1, true, 0, &st);
        full += rc == -1;
    }
    assert_int_equal(full, 1);
    /* expired keys give their place back */
    assert_int_equal(
        dp_rl_local(s, 5 + (DP_RL_PROBE + 1) * (uint64_t)DP_RL_SLOTS, 10, W, 1, true, 3 * W, &st),
        1);
    dp_rl_store_free(s);
}

struct race {
    struct dp_rl_store *s;
    int admitted;
};

static void *racer(void *arg)
{
    struct race *r = arg;
    struct dp_rl_state st;
    for (int i = 0; i < 5000; i++)
        r->admitted += dp_rl_local(r->s, 99, 1000, W, 1, true, 7 * W, &st) == 1;
    return NULL;
}

static void test_concurrent_exact(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct race r[4];
    pthread_t t[4];
    for (int i = 0; i < 4; i++) {
        r[i] = (struct race){s, 0};
        pthread_create(&t[i], NULL, racer, &r[i]);
    }
    int total = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        total += r[i].admitted;
    }
    assert_int_equal(total, 1000);
    dp_rl_store_free(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_burst_admits_exactly_the_limit),
        cmocka_unit_test(test_sliding_weight),
        cmocka_unit_test(test_wait_and_reset),
        cmocka_unit_test(test_adjust_refund_and_charge),
        cmocka_unit_test(test_counter_and_expiry),
        cmocka_unit_test(test_table_full),
        cmocka_unit_test(test_concurrent_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
