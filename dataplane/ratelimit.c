/* Sliding-window rate-limit counting (ratelimit.h). */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/hash.h"
#include "knoway/kw.h"
#include "ratelimit.h"

#define TAG_SHIFT 40
#define TAG_MASK  0xffffffull
#define CNT_MASK  DP_RL_MAX_CNT

struct slot {
    _Atomic uint64_t key;       /* 0: free */
    _Atomic int64_t expires_ms; /* unused since: reclaimable after */
    _Atomic uint64_t w[2];      /* window (win & 1): tag << 40 | count; counters: the value */
};

struct dp_rl_store {
    struct slot slots[DP_RL_SLOTS];
    struct slot spill[DP_RL_SPILL]; /* by family, for keys that found no slot */
};

struct dp_rl_store *dp_rl_store_new(void)
{
    return calloc(1, sizeof(struct dp_rl_store));
}

void dp_rl_store_free(struct dp_rl_store *s)
{
    free(s);
}

uint64_t dp_rl_hash(const char *key, size_t len)
{
    uint64_t h = kw_hash_mem(key, len);
    return h != 0 ? h : 1;
}

uint64_t dp_rl_family(const char *owner, const char *name)
{
    struct kw_hash h;
    kw_hash_begin(&h);
    kw_hash_str(&h, owner);
    kw_hash_str(&h, name);
    uint64_t v = kw_hash_end(&h);
    return v != 0 ? v : 1;
}

/* The slot of key in tab, claimed when new or reclaimed when expired; NULL when none of its
 * DP_RL_PROBE places is available. */
static struct slot *probe(struct slot *tab, unsigned mask, uint64_t key, int64_t now_ms,
                          int64_t keep_until)
{
    for (unsigned p = 0; p < DP_RL_PROBE; p++) {
        struct slot *sl = &tab[(key + p) & mask];
        uint64_t k = atomic_load_explicit(&sl->key, memory_order_acquire);
        bool claim = false;
        if (k == key) {
            /* found */
        } else if (k == 0 || atomic_load_explicit(&sl->expires_ms, memory_order_relaxed) < now_ms) {
            if (!atomic_compare_exchange_strong(&sl->key, &k, key)) {
                if (k != key)
                    continue;
            } else {
                claim = true;
            }
        } else {
            continue;
        }
        if (claim) {
            atomic_store(&sl->w[0], 0);
            atomic_store(&sl->w[1], 0);
        }
        if (atomic_load_explicit(&sl->expires_ms, memory_order_relaxed) < keep_until)
            atomic_store_explicit(&sl->expires_ms, keep_until, memory_order_relaxed);
        return sl;
    }
    return NULL;
}

/* key's own slot, else its family's spill slot (*spilled); NULL when both are taken. */
static struct slot *find(struct dp_rl_store *s, uint64_t key, uint64_t fam, int64_t now_ms,
                         int64_t keep_until, bool *spilled)
{
    *spilled = false;
    struct slot *sl = probe(s->slots, DP_RL_SLOTS - 1, key, now_ms, keep_until);
    if (sl != NULL || fam == 0)
        return sl;
    *spilled = true;
    return probe(s->spill, DP_RL_SPILL - 1, fam, now_ms, keep_until);
}

/* A change of a count, within what a count can hold: a sum with a count cannot wrap. */
static int64_t clamp_delta(int64_t d)
{
    return d < -(int64_t)CNT_MASK  ? -(int64_t)CNT_MASK
           : d > (int64_t)CNT_MASK ? (int64_t)CNT_MASK
                                   : d;
}

static int64_t count_of(uint64_t word, int64_t win)
{
    return (word >> TAG_SHIFT) == ((uint64_t)win & TAG_MASK) ? (int64_t)(word & CNT_MASK) : 0;
}

int64_t dp_rl_estimate(const struct dp_rl_state *st)
{
    if (st->window_ms <= 0)
        return st->cur;
    __int128 p = (__int128)st->prev * (st->window_ms - st->elapsed_ms) / st->window_ms;
    return (int64_t)p + st->cur;
}

int64_t dp_rl_remaining(const struct dp_rl_state *st)
{
    int64_t r = st->limit - dp_rl_estimate(st);
    return r > 0 ? r : 0;
}

static int64_t ceil_div(__int128 a, int64_t b)
{
    return a <= 0 ? 0 : (int64_t)((a + b - 1) / b);
}

int64_t dp_rl_wait_ms(const struct dp_rl_state *st, int64_t cost)
{
    int64_t L = st->limit, W = st->window_ms, c = st->cur, p = st->prev, e = st->elapsed_ms;
    if (cost > L)
        return -1;
    if (dp_rl_estimate(st) + cost <= L)
        return 0;
    if (c + cost <= L && p > 0) /* the previous window slides away within this one */
        return ceil_div((__int128)(W - e) * p - (__int128)(L - c - cost) * W, p);
    int64_t t = W - e; /* the next window: this one's count becomes the sliding part */
    if (c > L - cost)
        t += ceil_div((__int128)W * c - (__int128)(L - cost) * W, c);
    return t;
}

int64_t dp_rl_reset_ms(const struct dp_rl_state *st)
{
    if (st->cur > 0)
        return 2 * st->window_ms - st->elapsed_ms;
    if (st->prev > 0)
        return st->window_ms - st->elapsed_ms;
    return 0;
}

/* Decimal digits of v at p; the end. (Headers are formatted on every limited answer:
 * snprintf was a quarter of the limit filter's cost, callgrind.) */
static char *put_u64(char *p, uint64_t v)
{
    char tmp[20];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0);
    while (n > 0)
        *p++ = tmp[--n];
    return p;
}

size_t dp_rl_format_int(int64_t v, char buf[24])
{
    char *p = buf;
    if (v < 0) {
        *p++ = '-';
        v = -v;
    }
    p = put_u64(p, (uint64_t)v);
    *p = '\0';
    return (size_t)(p - buf);
}

void dp_rl_format_reset(int64_t ms, char buf[32])
{
    char *p = buf;
    if (ms < 1000) {
        p = put_u64(p, (uint64_t)(ms > 0 ? ms : 0));
        *p++ = 'm';
    } else {
        uint64_t s = (uint64_t)(ms + 999) / 1000;
        if (s >= 3600) {
            p = put_u64(p, s / 3600);
            *p++ = 'h';
        }
        if (s >= 60) {
            p = put_u64(p, s / 60 % 60);
            *p++ = 'm';
        }
        p = put_u64(p, s % 60);
    }
    *p++ = 's';
    *p = '\0';
}

int dp_rl_local(struct dp_rl_store *s, uint64_t key, uint64_t fam, int64_t limit, int64_t window_ms,
                int64_t cost, bool take, int64_t now_ms, struct dp_rl_state *out)
{
    int64_t win = now_ms / window_ms;
    *out = (struct dp_rl_state){
        .limit = limit, .window_ms = window_ms, .elapsed_ms = now_ms - win * window_ms, .win = win};
    struct slot *sl = find(s, key, fam, now_ms, (win + 2) * window_ms, &out->spilled);
    if (sl == NULL)
        return -1;
    _Atomic uint64_t *cw = &sl->w[win & 1], *pw = &sl->w[(win + 1) & 1];
    uint64_t old = atomic_load(cw);
    for (;;) {
        out->cur = count_of(old, win);
        out->prev = count_of(atomic_load(pw), win - 1);
        /* a negative cost is a bug or an overflow upstream of here: never a free pass; a
         * cost of 0 passes only while the bucket has room */
        if (take && (cost < 0 || cost > (int64_t)CNT_MASK ||
                     dp_rl_estimate(out) + (cost > 0 ? cost : 1) > limit))
            return 0;
        int64_t n = out->cur + clamp_delta(cost);
        n = n < 0 ? 0 : n > (int64_t)CNT_MASK ? (int64_t)CNT_MASK : n;
        uint64_t word = ((uint64_t)win & TAG_MASK) << TAG_SHIFT | (uint64_t)n;
        if (atomic_compare_exchange_weak(cw, &old, word)) {
            out->cur = n;
            return 1;
        }
    }
}

void dp_rl_local_adjust(struct dp_rl_store *s, uint64_t key, uint64_t fam,
                        const struct dp_rl_state *st, int64_t delta)
{
    struct slot *tab = st->spilled ? s->spill : s->slots;
    unsigned mask = st->spilled ? DP_RL_SPILL - 1 : DP_RL_SLOTS - 1;
    uint64_t k = st->spilled ? fam : key;
    int64_t win = st->win;
    struct slot *sl = NULL;
    for (unsigned p = 0; p < DP_RL_PROBE && sl == NULL; p++) {
        struct slot *c = &tab[(k + p) & mask];
        if (atomic_load(&c->key) == k)
            sl = c;
    }
    if (sl == NULL)
        return;
    _Atomic uint64_t *cw = &sl->w[win & 1];
    uint64_t old = atomic_load(cw);
    for (;;) {
        if ((old >> TAG_SHIFT) != ((uint64_t)win & TAG_MASK))
            return; /* that window is gone: nothing to correct */
        int64_t n = (int64_t)(old & CNT_MASK) + clamp_delta(delta);
        n = n < 0 ? 0 : n > (int64_t)CNT_MASK ? (int64_t)CNT_MASK : n;
        if (atomic_compare_exchange_weak(cw, &old,
                                         ((uint64_t)win & TAG_MASK) << TAG_SHIFT | (uint64_t)n))
            return;
    }
}

int64_t dp_rl_counter(struct dp_rl_store *s, uint64_t key, int64_t delta, int64_t now_ms,
                      int64_t expires_ms)
{
    bool spilled;
    struct slot *sl = find(s, key, key, now_ms, expires_ms, &spilled);
    if (sl == NULL)
        return -1;
    uint64_t old = atomic_load(&sl->w[0]);
    for (;;) { /* saturating: 0..DP_RL_MAX_COUNTER */
        int64_t v = (int64_t)old;
        int64_t n = delta > 0 && v > DP_RL_MAX_COUNTER - delta ? DP_RL_MAX_COUNTER
                    : delta < 0 && v + delta < 0               ? 0
                                                               : v + delta;
        if (delta == 0 || atomic_compare_exchange_weak(&sl->w[0], &old, (uint64_t)n))
            return n;
    }
}
