/* ratelimit.c: the sliding-window counter, its numbers, the lock-free table. */
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/digest.h"
#include "knoway/kw.h"
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
        admitted += dp_rl_local(s, k, 0, 100, W, 1, true, now + i, &st) == 1;
    assert_int_equal(admitted, 100);
    assert_int_equal(st.cur, 100);
    assert_int_equal(dp_rl_remaining(&st), 0);
    /* another key is another bucket */
    assert_int_equal(dp_rl_local(s, dp_rl_hash("b", 1), 0, 100, W, 1, true, now, &st), 1);
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
        assert_int_equal(dp_rl_local(s, k, 0, 100, W, 1, true, t0, &st), 1);
    /* a quarter into the next window 75 % of the previous one still counts */
    int64_t t1 = 11 * W + W / 4;
    assert_int_equal(dp_rl_local(s, k, 0, 100, W, 0, true, t1, &st), 1);
    assert_int_equal(st.prev, 100);
    assert_int_equal(dp_rl_estimate(&st), 75);
    assert_int_equal(dp_rl_remaining(&st), 25);
    int admitted = 0;
    for (int i = 0; i < 50; i++)
        admitted += dp_rl_local(s, k, 0, 100, W, 1, true, t1, &st) == 1;
    assert_int_equal(admitted, 25);
    /* two windows later nothing is left of it */
    assert_int_equal(dp_rl_local(s, k, 0, 100, W, 0, true, 13 * W, &st), 1);
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
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 600, true, now, &st), 1);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 600, true, now, &st), 0); /* would overshoot */
    dp_rl_local_adjust(s, k, 0, &st, -550);                                  /* used 50 of 600 */
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 600, true, now, &st), 1);
    assert_int_equal(st.cur, 650);
    dp_rl_local_adjust(s, k, 0, &st, 10000); /* more than reserved: charged */
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 0, false, now, &st), 1);
    assert_int_equal(st.cur, 10650);
    dp_rl_local_adjust(s, k, 0, &st, -1000000); /* never below 0 */
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 0, true, now, &st), 1);
    assert_int_equal(st.cur, 0);
    /* a correction for a window that has passed touches nothing */
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 5, true, now + W, &st), 1);
    struct dp_rl_state gone = st;
    gone.win--;
    dp_rl_local_adjust(s, k, 0, &gone, 500);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 0, true, now + W, &st), 1);
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
    /* DP_RL_PROBE keys that all start at the same slot fill its window */
    for (uint64_t i = 0; i < DP_RL_PROBE; i++)
        assert_int_equal(dp_rl_local(s, 5 + i * DP_RL_SLOTS, 77, 10, W, 1, true, 0, &st), 1);
    /* without a family the next one cannot be counted: -1, nothing admitted */
    uint64_t late = 5 + DP_RL_PROBE * (uint64_t)DP_RL_SLOTS;
    assert_int_equal(dp_rl_local(s, late, 0, 10, W, 1, true, 0, &st), -1);
    /* with one, it is counted in the family's shared slot: keys that found no room share
     * their limit, never pass uncounted */
    assert_int_equal(dp_rl_local(s, late, 77, 2, W, 1, true, 0, &st), 1);
    assert_true(st.spilled);
    assert_int_equal(dp_rl_local(s, late + DP_RL_SLOTS, 77, 2, W, 1, true, 0, &st), 1);
    assert_int_equal(dp_rl_local(s, late + 2 * DP_RL_SLOTS, 77, 2, W, 1, true, 0, &st), 0);
    /* a refund goes back where the charge went */
    dp_rl_local_adjust(s, late, 77, &st, -1);
    assert_int_equal(dp_rl_local(s, late + 3 * DP_RL_SLOTS, 77, 2, W, 1, true, 0, &st), 1);
    /* a full family window: refused */
    for (uint64_t i = 0; i < DP_RL_PROBE; i++)
        dp_rl_local(s, late, 1000 + i * DP_RL_SPILL, 10, W, 1, true, 0, &st);
    assert_int_equal(dp_rl_local(s, late, 1000 + DP_RL_PROBE * DP_RL_SPILL, 10, W, 1, true, 0, &st),
                     -1);
    /* expired keys give their place back */
    assert_int_equal(dp_rl_local(s, late, 0, 10, W, 1, true, 3 * W, &st), 1);
    assert_false(st.spilled);
    dp_rl_store_free(s);
}

/* Names chosen to land in a victim's probe window under the public hash the table once used
 * (the first 8 bytes of SHA-256) do not fill it now: the slot is a keyed hash. With the old
 * hash these 32 names switched the victim's limit off (its key found no slot and was
 * admitted). */
static void test_chosen_keys_do_not_fill_a_window(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct dp_rl_state st;
    const char *victim = "knoway:rl:{r/default/chat/per-ip/10.0.0.7}";
    unsigned char d[32];
    assert_int_equal(kw_sha256(victim, strlen(victim), d), KW_OK);
    uint64_t vh;
    memcpy(&vh, d, sizeof(vh));
    unsigned vslot = (unsigned)(vh & (DP_RL_SLOTS - 1));
    /* the attacker's model of the old table: linear probing from the SHA-256 slot; names
     * starting up to DP_RL_PROBE - 1 slots before the victim's are added until every place
     * of the victim's window is taken in that model */
    bool taken[2 * DP_RL_PROBE] = {false}; /* slots vslot - PROBE + 1 .. vslot + PROBE */
    unsigned base = (vslot - DP_RL_PROBE + 1) & (DP_RL_SLOTS - 1), filled = 0;
    char name[96];
    for (unsigned i = 0; filled < DP_RL_PROBE; i++) {
        snprintf(name, sizeof(name), "knoway:rl:{r/default/chat/per-user/u%u}", i);
        assert_int_equal(kw_sha256(name, strlen(name), d), KW_OK);
        uint64_t h;
        memcpy(&h, d, sizeof(h));
        unsigned off = (unsigned)((h - base) & (DP_RL_SLOTS - 1));
        if (off >= DP_RL_PROBE)
            continue;
        for (unsigned p = off; p < off + DP_RL_PROBE; p++)
            if (!taken[p]) {
                taken[p] = true;
                filled += p >= DP_RL_PROBE - 1 && p < 2 * DP_RL_PROBE - 1;
                break;
            }
        dp_rl_local(s, dp_rl_hash(name, strlen(name)), 0, 1000, W, 1, true, 0, &st);
    }
    uint64_t vk = dp_rl_hash(victim, strlen(victim));
    int admitted = 0;
    for (int i = 0; i < 20; i++)
        admitted += dp_rl_local(s, vk, 0, 5, W, 1, true, 0, &st) == 1;
    assert_int_equal(admitted, 5);
    assert_false(st.spilled);
    dp_rl_store_free(s);
}

/* Costs and corrections at the INT64 extremes: refused or saturated, never wrapped. */
static void test_int64_extremes(void **state)
{
    (void)state;
    struct dp_rl_store *s = dp_rl_store_new();
    struct dp_rl_state st;
    uint64_t k = 11;
    int64_t now = 3 * W;
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, INT64_MAX, true, now, &st), 0);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, INT64_MIN, true, now, &st), 0);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, -1, true, now, &st), 0);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, (int64_t)DP_RL_MAX_CNT + 1, true, now, &st), 0);
    /* nothing was charged: the whole limit is still there */
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 1000, true, now, &st), 1);
    /* a cost of 0 passes only while there is room */
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 0, true, now, &st), 0);
    dp_rl_local_adjust(s, k, 0, &st, INT64_MAX);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 0, false, now, &st), 1);
    assert_int_equal(st.cur, (int64_t)DP_RL_MAX_CNT);
    dp_rl_local_adjust(s, k, 0, &st, INT64_MIN);
    assert_int_equal(dp_rl_local(s, k, 0, 1000, W, 0, false, now, &st), 1);
    assert_int_equal(st.cur, 0);
    /* budgets' counters saturate both ways */
    uint64_t b = dp_rl_hash("budget", 6);
    assert_int_equal(dp_rl_counter(s, b, INT64_MAX, now, now + W), DP_RL_MAX_COUNTER);
    assert_int_equal(dp_rl_counter(s, b, INT64_MAX, now, now + W), DP_RL_MAX_COUNTER);
    assert_int_equal(dp_rl_counter(s, b, INT64_MIN, now, now + W), 0);
    assert_int_equal(dp_rl_counter(s, b, -5, now, now + W), 0);
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
        r->admitted += dp_rl_local(r->s, 99, 0, 1000, W, 1, true, 7 * W, &st) == 1;
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
        cmocka_unit_test(test_chosen_keys_do_not_fill_a_window),
        cmocka_unit_test(test_int64_extremes),
        cmocka_unit_test(test_concurrent_exact),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
