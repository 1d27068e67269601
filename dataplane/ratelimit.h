/* knoway data plane: rate-limit counting - the sliding-window counter shared by local
 * limits (an in-process table) and global ones (the same arithmetic in a Redis script,
 * redis.c), and the numbers clients see (remaining, reset, Retry-After).
 *
 * Algorithm (docs/limits.md): a sliding window counter. Time is cut into windows of the
 * limit's length; a bucket keeps the count of the current and of the previous window, and
 * the count "in the last window" is estimated as prev * (W - elapsed) / W + cur. A cost is
 * admitted when estimate + cost <= limit. A burst in a fresh window admits exactly `limit`
 * (the tests' "exactly 100 of 300"), the boundary of two windows cannot double it as a
 * fixed window would, it needs two counters per key, not a log of requests, and it adds
 * and refunds token costs with plain increments.
 *
 * Local table: fixed size, open addressing, lock-free. Each window counter is one 64-bit
 * word (window tag in the high 24 bits, count in the low 40), updated by compare-and-swap,
 * so a stale window is recognised by its tag and no reset races with an increment. Slots are
 * placed by a keyed hash (knoway/hash.h), so nobody can choose keys that share a probe
 * window. A key that finds its window full (a table filled with live keys) is counted in its
 * family's slot (the limit it belongs to, shared by every key of that limit that found no
 * room): such keys are limited together, more strictly than alone, never admitted
 * uncounted. When the family's slot is taken too, the caller refuses.
 * Threading: any worker, concurrently. */
#ifndef DP_RATELIMIT_H
#define DP_RATELIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DP_RL_SLOTS       (1u << 17) /* keys one data plane tracks (4 MiB) */
#define DP_RL_PROBE       32         /* slots tried per lookup */
#define DP_RL_SPILL       (1u << 12) /* family slots for keys that find no room */
#define DP_RL_MAX_CNT     ((1ull << 40) - 1)
#define DP_RL_MAX_COUNTER (1ll << 62) /* dp_rl_counter saturates here */

struct dp_rl_store;

/* What a bucket held after an operation (the numbers clients are told). */
struct dp_rl_state {
    int64_t limit, window_ms;
    int64_t cur, prev;  /* counts of the current and the previous window */
    int64_t elapsed_ms; /* into the current window */
    int64_t win;        /* the current window's index (refunds go back to it) */
    bool spilled;       /* counted in the family's shared slot (the table was full) */
};

struct dp_rl_store *dp_rl_store_new(void);
void dp_rl_store_free(struct dp_rl_store *s);

/* The bucket's key: a keyed hash of the key text (never 0; differs between processes). */
uint64_t dp_rl_hash(const char *key, size_t len);
/* A limit's family (its owner and name; never 0): where its keys spill. */
uint64_t dp_rl_family(const char *owner, const char *name);

/* Check and charge: admit cost when the window's estimate + cost <= limit (take), or add it
 * unconditionally (take=false; cost may be negative: a refund, never below 0). 1: admitted
 * (charged), 0: refused (nothing charged; also a cost < 0 or > DP_RL_MAX_CNT, and a cost of
 * 0 at a full bucket), -1: neither the key nor its family fam found a slot (nothing
 * charged: the caller refuses). */
int dp_rl_local(struct dp_rl_store *s, uint64_t key, uint64_t fam, int64_t limit, int64_t window_ms,
                int64_t cost, bool take, int64_t now_ms, struct dp_rl_state *out);
/* Add delta to the window st->win of the slot the charge described by st went to (refunds
 * and corrections of a reservation: a later window is not touched); saturating. */
void dp_rl_local_adjust(struct dp_rl_store *s, uint64_t key, uint64_t fam,
                        const struct dp_rl_state *st, int64_t delta);
/* A plain counter (budgets: nano-USD of a period), kept until expires_ms: add delta, return
 * the new value (or the value for delta 0), saturating at 0 and DP_RL_MAX_COUNTER; -1 when
 * neither its slot nor a spill slot is free (the caller refuses). */
int64_t dp_rl_counter(struct dp_rl_store *s, uint64_t key, int64_t delta, int64_t now_ms,
                      int64_t expires_ms);

/* The arithmetic, for local and Redis answers alike. */
int64_t dp_rl_estimate(const struct dp_rl_state *st);
int64_t dp_rl_remaining(const struct dp_rl_state *st);
/* Milliseconds until cost fits (0: now; -1: never, cost > limit); until the bucket is empty. */
int64_t dp_rl_wait_ms(const struct dp_rl_state *st, int64_t cost);
int64_t dp_rl_reset_ms(const struct dp_rl_state *st);
/* OpenAI's duration text for reset headers: "1s", "6m0s", "20ms", "1h2m3s". */
void dp_rl_format_reset(int64_t ms, char buf[32]);
/* v in decimal (what snprintf("%lld") gives, without its cost); the length. */
size_t dp_rl_format_int(int64_t v, char buf[24]);

#endif
