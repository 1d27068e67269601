/* The balancer (balancer.h): strategies, per-backend and per-endpoint state, the circuit
 * breaker, 429 cooldowns, quota from rate-limit headers and the retry budget.
 *
 * Circuit breaker, per backend and per endpoint:
 *
 *   closed --consecutiveFailures in a row--> ejected (ejectionTime x 2^(ejections-1), at
 *   most 10 min) --time passes--> half-open: one probe at a time --success--> closed
 *                                                               --failure--> ejected again
 *
 * Latency: peak EWMA of time to first byte (a slower sample is taken at once, faster ones
 * are averaged in with a 10 s time constant); the cost read decays with the time since the
 * last sample, so a backend that was slow gets traffic again. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <strings.h>

#include "balancer.h"
#include "knoway/hash.h"

#define LB_TAU_MS          10000.0
#define LB_MAX_EJECTION_MS (10 * 60 * 1000)
#define LB_MIN_RETRIES     10 /* per budget window (10 s), always allowed: one a second */

#define LB_CACHE 256 /* direct-mapped: backend pointer -> state, for this table generation */

struct dp_lb {
    uint64_t rnd;
    struct dp_backend_state **slots; /* open addressing by key */
    size_t cap, n;
    uint64_t gen; /* bumped by every sweep (a table swap): cached pointers may be stale */
    struct {
        const struct kw_backend *b;
        uint64_t gen;
        struct dp_backend_state *bs;
    } cache[LB_CACHE];
};

struct dp_lb *dp_lb_new(uint64_t seed)
{
    struct dp_lb *lb = calloc(1, sizeof(*lb));
    if (lb == NULL)
        return NULL;
    lb->rnd = seed | 1u;
    lb->cap = 64;
    lb->slots = calloc(lb->cap, sizeof(*lb->slots));
    if (lb->slots == NULL) {
        free(lb);
        return NULL;
    }
    return lb;
}

static void state_free(struct dp_backend_state *bs)
{
    for (size_t i = 0; i < bs->neps; i++)
        free(bs->eps[i].url);
    free(bs->eps);
    free(bs->key);
    free(bs);
}

void dp_lb_free(struct dp_lb *lb)
{
    if (lb == NULL)
        return;
    for (size_t i = 0; i < lb->cap; i++)
        if (lb->slots[i] != NULL)
            state_free(lb->slots[i]);
    free(lb->slots);
    free(lb);
}

uint32_t dp_lb_rand(struct dp_lb *lb)
{
    lb->rnd ^= lb->rnd >> 12;
    lb->rnd ^= lb->rnd << 25;
    lb->rnd ^= lb->rnd >> 27;
    return (uint32_t)((lb->rnd * 2685821657736338717ull) >> 32);
}

static uint64_t key_hash(const char *ns, const char *name)
{
    struct kw_hash h;
    kw_hash_begin(&h);
    kw_hash_str(&h, ns);
    kw_hash_str(&h, name);
    return kw_hash_end(&h);
}

/* What identifies a backend's health: where it sends and with which provider. */
static uint64_t fingerprint(const struct kw_backend *b)
{
    struct kw_hash h;
    kw_hash_begin(&h);
    kw_hash_str(&h, kw_provider_name(b->provider));
    kw_hash_str(&h, b->upstream.base_url);
    kw_hash_str(&h, b->upstream.service_ref.name);
    kw_hash_feed(&h, &b->upstream.service_ref.port, sizeof(b->upstream.service_ref.port));
    return kw_hash_end(&h);
}

static void target_init(struct dp_lb_target *t)
{
    memset(t, 0, sizeof(*t));
    t->remaining_requests = t->remaining_tokens = -1;
}

/* Endpoints by URL: state kept for URLs that stay. KW-style 0 / -1. */
static int sync_endpoints(struct dp_backend_state *bs, const struct kw_backend *b)
{
    const struct kw_upstream *u = &b->upstream;
    bool same = bs->neps == u->nendpoints;
    for (size_t i = 0; same && i < u->nendpoints; i++)
        same = strcmp(bs->eps[i].url, u->endpoints[i].url) == 0;
    if (same)
        return 0;
    struct dp_lb_endpoint *eps = calloc(u->nendpoints + 1, sizeof(*eps));
    if (eps == NULL)
        return -1;
    for (size_t i = 0; i < u->nendpoints; i++) {
        eps[i].url = strdup(u->endpoints[i].url);
        if (eps[i].url == NULL) {
            for (size_t j = 0; j < i; j++)
                free(eps[j].url);
            free(eps);
            return -1;
        }
        target_init(&eps[i].t);
        for (size_t j = 0; j < bs->neps; j++)
            if (strcmp(bs->eps[j].url, eps[i].url) == 0)
                eps[i].t = bs->eps[j].t;
    }
    for (size_t j = 0; j < bs->neps; j++)
        free(bs->eps[j].url);
    free(bs->eps);
    bs->eps = eps;
    bs->neps = u->nendpoints;
    return 0;
}

static size_t slot_of(const struct dp_lb *lb, const char *ns, const char *name)
{
    size_t mask = lb->cap - 1;
    size_t nslen = strlen(ns);
    for (size_t i = key_hash(ns, name) & mask;; i = (i + 1) & mask) {
        const struct dp_backend_state *bs = lb->slots[i];
        if (bs == NULL || (strncmp(bs->key, ns, nslen) == 0 && bs->key[nslen] == '/' &&
                           strcmp(bs->key + nslen + 1, name) == 0))
            return i;
    }
}

static int grow(struct dp_lb *lb)
{
    struct dp_lb old = *lb;
    lb->cap *= 2;
    lb->slots = calloc(lb->cap, sizeof(*lb->slots));
    if (lb->slots == NULL) {
        *lb = old;
        return -1;
    }
    for (size_t i = 0; i < old.cap; i++) {
        struct dp_backend_state *bs = old.slots[i];
        if (bs == NULL)
            continue;
        char *slash = strchr(bs->key, '/');
        *slash = '\0';
        size_t at = slot_of(lb, bs->key, slash + 1);
        *slash = '/';
        lb->slots[at] = bs;
    }
    free(old.slots);
    return 0;
}

struct dp_backend_state *dp_lb_find(struct dp_lb *lb, const struct kw_backend *b)
{
    return lb->slots[slot_of(lb, b->meta.ns, b->meta.name)];
}

struct dp_backend_state *dp_lb_backend(struct dp_lb *lb, const struct kw_backend *b)
{
    /* a snapshot's backends are immutable: seen once in this generation, nothing to check */
    size_t ci = ((uintptr_t)b >> 4) % LB_CACHE;
    if (lb->cache[ci].b == b && lb->cache[ci].gen == lb->gen)
        return lb->cache[ci].bs;
    size_t at = slot_of(lb, b->meta.ns, b->meta.name);
    struct dp_backend_state *bs = lb->slots[at];
    uint64_t fp = fingerprint(b);
    if (bs != NULL && bs->fingerprint != fp) {
        /* another definition: fresh health; what is in flight still counts */
        int64_t in_flight = bs->t.in_flight;
        target_init(&bs->t);
        bs->t.in_flight = in_flight;
        bs->fingerprint = fp;
    }
    if (bs == NULL) {
        if ((lb->n + 1) * 2 > lb->cap) {
            if (grow(lb) != 0)
                return NULL;
            at = slot_of(lb, b->meta.ns, b->meta.name);
        }
        bs = calloc(1, sizeof(*bs));
        size_t klen = strlen(b->meta.ns) + strlen(b->meta.name) + 2;
        if (bs == NULL || (bs->key = malloc(klen)) == NULL) {
            free(bs);
            return NULL;
        }
        snprintf(bs->key, klen, "%s/%s", b->meta.ns, b->meta.name);
        bs->fingerprint = fp;
        target_init(&bs->t);
        lb->slots[at] = bs;
        lb->n++;
    }
    if (sync_endpoints(bs, b) != 0)
        return NULL;
    lb->cache[ci].b = b;
    lb->cache[ci].gen = lb->gen;
    lb->cache[ci].bs = bs;
    return bs;
}

void dp_lb_sweep(struct dp_lb *lb, const struct kw_backend *const *backends, size_t n)
{
    lb->gen++; /* states may be freed or re-keyed below */
    for (size_t i = 0; i < lb->cap; i++)
        if (lb->slots[i] != NULL)
            lb->slots[i]->seen = false;
    for (size_t i = 0; i < n; i++) {
        struct dp_backend_state *bs = dp_lb_find(lb, backends[i]);
        if (bs != NULL)
            bs->seen = true;
    }
    /* rebuild without the unseen idle ones (deleting from open addressing needs a rehash) */
    struct dp_backend_state **old = lb->slots;
    size_t cap = lb->cap;
    struct dp_backend_state **slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return;
    lb->slots = slots;
    lb->n = 0;
    for (size_t i = 0; i < cap; i++) {
        struct dp_backend_state *bs = old[i];
        if (bs == NULL)
            continue;
        if (!bs->seen && bs->t.in_flight == 0) {
            state_free(bs);
            continue;
        }
        char *slash = strchr(bs->key, '/');
        *slash = '\0';
        size_t at = slot_of(lb, bs->key, slash + 1);
        *slash = '/';
        lb->slots[at] = bs;
        lb->n++;
    }
    free(old);
}

/* ---- health ------------------------------------------------------------------------------- */

static void roll_minute(struct dp_lb_target *t, int64_t now)
{
    if (now - t->minute_start >= 60000) {
        t->minute_start = now;
        t->minute_requests = t->minute_tokens = 0;
    }
}

bool dp_lb_target_healthy(const struct dp_lb_target *t, const struct kw_backend *b,
                          int64_t est_tokens, int64_t now)
{
    if (now < t->ejected_until || t->probing || now < t->cooldown_until)
        return false;
    if (t->remaining_requests == 0 && now < t->requests_reset_at)
        return false;
    if (t->remaining_tokens >= 0 && t->remaining_tokens < est_tokens && now < t->tokens_reset_at)
        return false;
    if (b == NULL)
        return true;
    if (b->limits.max_concurrent_requests > 0 &&
        t->in_flight >= (int64_t)b->limits.max_concurrent_requests)
        return false;
    bool fresh = now - t->minute_start < 60000;
    if (fresh && b->limits.requests_per_minute > 0 &&
        t->minute_requests >= (int64_t)b->limits.requests_per_minute)
        return false;
    if (fresh && b->limits.tokens_per_minute > 0 &&
        t->minute_tokens + est_tokens > (int64_t)b->limits.tokens_per_minute)
        return false;
    return true;
}

double dp_lb_latency_cost(const struct dp_lb_target *t, int64_t now)
{
    double ewma = t->ewma_ms;
    if (ewma > 0 && now > t->ewma_at_ms)
        ewma *= exp(-(double)(now - t->ewma_at_ms) / LB_TAU_MS);
    return (ewma + 1.0) * (double)(t->in_flight + 1);
}

/* ---- picking ------------------------------------------------------------------------------ */

struct cand {
    struct dp_lb_target *t;
    uint32_t weight;
    size_t index;
};

static size_t pick_weighted(struct dp_lb *lb, const struct cand *c, size_t n)
{
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += c[i].weight;
    if (total == 0)
        return 0;
    uint64_t x = dp_lb_rand(lb) % total;
    for (size_t i = 0; i < n; i++) {
        if (x < c[i].weight)
            return i;
        x -= c[i].weight;
    }
    return n - 1;
}

static size_t pick(struct dp_lb *lb, struct cand *c, size_t n, enum kw_lb_strategy s, int64_t now)
{
    if (n == 1)
        return 0;
    switch (s) {
    case KW_LB_ROUND_ROBIN: {
        int64_t total = 0;
        size_t best = 0;
        for (size_t i = 0; i < n; i++) {
            c[i].t->rr_current += c[i].weight;
            total += c[i].weight;
            if (c[i].t->rr_current > c[best].t->rr_current)
                best = i;
        }
        c[best].t->rr_current -= total;
        return best;
    }
    case KW_LB_LEAST_REQUEST:
    case KW_LB_LATENCY: {
        /* two choices by weight, the cheaper wins */
        size_t a = pick_weighted(lb, c, n), b = a;
        for (int k = 0; k < 4 && b == a; k++)
            b = pick_weighted(lb, c, n);
        if (b == a)
            b = (a + 1) % n;
        double ca, cb;
        if (s == KW_LB_LEAST_REQUEST) {
            ca = (double)c[a].t->in_flight / c[a].weight;
            cb = (double)c[b].t->in_flight / c[b].weight;
        } else {
            ca = dp_lb_latency_cost(c[a].t, now);
            cb = dp_lb_latency_cost(c[b].t, now);
        }
        return cb < ca ? b : a;
    }
    default:
        return pick_weighted(lb, c, n);
    }
}

const struct kw_backend_ref *dp_lb_pick(struct dp_lb *lb, const struct kw_route *route,
                                        enum kw_lb_strategy s, const bool *tried,
                                        int64_t est_tokens, int64_t now)
{
    struct cand stack[16];
    struct cand *c = route->nrefs <= 16 ? stack : malloc(route->nrefs * sizeof(*c));
    if (c == NULL)
        return NULL;
    const struct kw_backend_ref *chosen = NULL;
    for (int healthy_only = 1; healthy_only >= 0 && chosen == NULL; healthy_only--) {
        uint32_t best = UINT32_MAX;
        size_t n = 0;
        for (size_t i = 0; i < route->nrefs; i++) {
            const struct kw_backend_ref *ref = &route->refs[i];
            if (tried[i] || ref->weight == 0 || ref->backend == NULL || ref->priority > best)
                continue;
            struct dp_backend_state *bs = dp_lb_backend(lb, ref->backend);
            if (bs == NULL)
                continue;
            if (healthy_only && !dp_lb_target_healthy(&bs->t, ref->backend, est_tokens, now))
                continue;
            if (ref->priority < best) {
                best = ref->priority;
                n = 0;
            }
            c[n++] = (struct cand){&bs->t, ref->weight, i};
        }
        if (n > 0)
            chosen = &route->refs[c[pick(lb, c, n, s, now)].index];
    }
    if (c != stack)
        free(c);
    return chosen;
}

int dp_lb_pick_endpoint(struct dp_lb *lb, struct dp_backend_state *bs, const struct kw_backend *b,
                        enum kw_lb_strategy s, uint64_t exclude, int64_t now)
{
    const struct kw_upstream *u = &b->upstream;
    if (u->base_url != NULL || u->nendpoints == 0 || bs->neps != u->nendpoints)
        return -1;
    if (u->nendpoints == 1)
        return 0;
    struct cand stack[16];
    struct cand *c = u->nendpoints <= 16 ? stack : malloc(u->nendpoints * sizeof(*c));
    if (c == NULL)
        return 0;
    int chosen = 0;
    for (int pass = 0; pass < 3; pass++) {
        /* healthy ones not excluded, then any not excluded, then any */
        bool healthy_only = pass == 0;
        uint64_t skip = pass < 2 ? exclude : 0;
        size_t n = 0;
        for (size_t i = 0; i < u->nendpoints; i++) {
            if (u->endpoints[i].weight == 0 && u->nendpoints > 1)
                continue;
            if (i < 64 && (skip >> i) & 1)
                continue;
            if (healthy_only && !dp_lb_target_healthy(&bs->eps[i].t, NULL, 0, now))
                continue;
            c[n++] = (struct cand){&bs->eps[i].t,
                                   u->endpoints[i].weight > 0 ? u->endpoints[i].weight : 1, i};
        }
        if (n > 0) {
            chosen = (int)c[pick(lb, c, n, s, now)].index;
            break;
        }
    }
    if (c != stack)
        free(c);
    return chosen;
}

static void roll_budget(struct dp_backend_state *bs, int64_t now);

/* ---- outcomes ----------------------------------------------------------------------------- */

static void eject(struct dp_lb_target *t, const struct dp_lb_breaker *cb, int64_t now)
{
    int64_t ms = cb->ejection_ms > 0 ? cb->ejection_ms : 30000;
    for (uint32_t i = 0; i < t->ejections && ms < LB_MAX_EJECTION_MS; i++)
        ms *= 2;
    if (ms > LB_MAX_EJECTION_MS)
        ms = LB_MAX_EJECTION_MS;
    t->ejections++;
    t->ejected_until = now + ms;
    t->failures = 0;
}

/* The breaker of one target; true when it was ejected now. */
static bool breaker(struct dp_lb_target *t, const struct dp_lb_breaker *cb, enum dp_lb_outcome o,
                    bool may_eject, int64_t now)
{
    bool was_probe = t->probing;
    t->probing = false;
    if (o == DP_LB_SUCCESS) {
        t->failures = 0;
        t->ejections = 0;
        return false;
    }
    if (o != DP_LB_FAILURE || cb->consecutive_failures == 0)
        return false;
    t->failures++;
    if ((was_probe || t->failures >= cb->consecutive_failures) && may_eject) {
        eject(t, cb, now);
        return true;
    }
    return false;
}

static void observe_ttfb(struct dp_lb_target *t, int64_t ttfb_ms, int64_t now)
{
    double v = (double)ttfb_ms;
    if (t->ewma_ms <= 0 || v > t->ewma_ms) {
        t->ewma_ms = v; /* peak: a slower answer counts at once */
    } else {
        double w = exp(-(double)(now - t->ewma_at_ms) / LB_TAU_MS);
        t->ewma_ms = t->ewma_ms * w + v * (1 - w);
    }
    t->ewma_at_ms = now;
}

void dp_lb_attempt_start(struct dp_backend_state *bs, int ep, int64_t now)
{
    roll_minute(&bs->t, now);
    bs->t.in_flight++;
    bs->t.minute_requests++;
    if (bs->t.remaining_requests > 0)
        bs->t.remaining_requests--;
    if (now >= bs->t.ejected_until && bs->t.ejections > 0)
        bs->t.probing = true; /* half-open: this is the probe */
    if (ep >= 0 && (size_t)ep < bs->neps) {
        struct dp_lb_target *t = &bs->eps[ep].t;
        t->in_flight++;
        if (now >= t->ejected_until && t->ejections > 0)
            t->probing = true;
    }
    roll_budget(bs, now);
    bs->attempts_now++;
}

void dp_lb_attempt_end(struct dp_backend_state *bs, int ep, const struct kw_backend *b,
                       enum dp_lb_outcome o, int64_t ttfb_ms, int64_t cooldown_ms, int64_t now)
{
    const struct dp_lb_breaker cb = {b->circuit_breaker.consecutive_failures,
                                     b->circuit_breaker.ejection_time_ms,
                                     b->circuit_breaker.max_ejection_percent};
    if (bs->t.in_flight > 0)
        bs->t.in_flight--;
    if (ttfb_ms >= 0)
        observe_ttfb(&bs->t, ttfb_ms, now);
    if (o == DP_LB_RATE_LIMITED && cooldown_ms > 0) {
        bs->t.cooldown_until = now + cooldown_ms;
        bs->cooldowns_total++;
    }
    if (ep >= 0 && (size_t)ep < bs->neps) {
        struct dp_lb_target *t = &bs->eps[ep].t;
        if (t->in_flight > 0)
            t->in_flight--;
        if (ttfb_ms >= 0)
            observe_ttfb(t, ttfb_ms, now);
        /* maxEjectionPercent: at most this share of the endpoints out at once */
        size_t out = 0;
        for (size_t i = 0; i < bs->neps; i++)
            out += now < bs->eps[i].t.ejected_until;
        uint32_t pct = cb.max_ejection_percent > 0 ? cb.max_ejection_percent : 50;
        bool may = (out + 1) * 100 <= pct * bs->neps;
        if (breaker(t, &cb, o, may, now))
            bs->ejections_total++;
        if (bs->neps > 1) {
            /* a backend with several endpoints fails as a whole only when they all do */
            bool all_out = true;
            for (size_t i = 0; i < bs->neps && all_out; i++)
                all_out = now < bs->eps[i].t.ejected_until;
            if (!all_out) {
                bs->t.probing = false;
                if (o == DP_LB_SUCCESS)
                    bs->t.failures = bs->t.ejections = 0;
                return;
            }
        }
    }
    if (breaker(&bs->t, &cb, o, true, now))
        bs->ejections_total++;
}

void dp_lb_tokens(struct dp_backend_state *bs, int64_t tokens, int64_t now)
{
    roll_minute(&bs->t, now);
    bs->t.minute_tokens += tokens;
    if (bs->t.remaining_tokens > 0)
        bs->t.remaining_tokens =
            bs->t.remaining_tokens > tokens ? bs->t.remaining_tokens - tokens : 0;
}

static void roll_budget(struct dp_backend_state *bs, int64_t now)
{
    if (now - bs->budget_window >= 20000) { /* two windows: nothing is remembered */
        bs->attempts_now = bs->retries_now = 0;
        bs->budget_window = now;
    }
    if (now - bs->budget_window >= 10000) {
        bs->attempts_prev = bs->attempts_now;
        bs->retries_prev = bs->retries_now;
        bs->attempts_now = bs->retries_now = 0;
        bs->budget_window = now;
    }
}

bool dp_lb_retry_budget_ok(struct dp_backend_state *bs, uint32_t percent, int64_t now)
{
    roll_budget(bs, now);
    int64_t attempts = bs->attempts_now + bs->attempts_prev;
    int64_t retries = bs->retries_now + bs->retries_prev;
    /* one more retry: retries + 1 <= percent of attempts + 1 (it is an attempt too) */
    return retries < LB_MIN_RETRIES || (retries + 1) * 100 <= (int64_t)percent * (attempts + 1);
}

void dp_lb_retry_taken(struct dp_backend_state *bs)
{
    bs->retries_now++;
    bs->retries_total++;
}

/* ---- rate-limit headers ------------------------------------------------------------------- */

static int64_t parse_int(const char *v, size_t n)
{
    int64_t x = 0;
    size_t i = 0;
    for (; i < n && v[i] >= '0' && v[i] <= '9' && x < (INT64_MAX / 10 - 10); i++)
        x = x * 10 + (v[i] - '0');
    return i > 0 ? x : -1;
}

/* A reset: "1s", "6m0s", "20ms", "0.5s", a number of seconds, or an RFC 3339 time
 * (Anthropic; treated as a minute away when it cannot be read). Milliseconds, at most
 * DP_LB_MAX_RESET_MS; -1 unknown. */
static int64_t parse_reset(const char *v, size_t n)
{
    if (n >= 20 && v[4] == '-' && v[10] == 'T')
        return 60000;
    double total = 0, num = 0, frac = 0, scale = 1;
    bool any = false, in_frac = false;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (ch >= '0' && ch <= '9') {
            if (in_frac) {
                scale /= 10;
                frac += (ch - '0') * scale;
            } else {
                num = num * 10 + (ch - '0');
            }
            any = true;
            continue;
        }
        if (ch == '.') {
            in_frac = true;
            continue;
        }
        double unit = 1000;
        if (ch == 'm' && i + 1 < n && v[i + 1] == 's')
            unit = 1, i++;
        else if (ch == 'm')
            unit = 60000;
        else if (ch == 'h')
            unit = 3600000;
        else if (ch != 's')
            return -1;
        total += (num + frac) * unit;
        num = frac = 0;
        scale = 1;
        in_frac = false;
    }
    if (!any)
        return -1;
    total += (num + frac) * 1000; /* a bare number: seconds */
    /* an upstream's number: clamped before it becomes an integer (a conversion out of
     * range is undefined; "7e26s" once was) and before anything adds it to a time */
    return total < (double)DP_LB_MAX_RESET_MS ? (int64_t)total : DP_LB_MAX_RESET_MS;
}

static bool name_is(const char *name, size_t nlen, const char *want)
{
    return strlen(want) == nlen && strncasecmp(name, want, nlen) == 0;
}

void dp_lb_header(struct dp_backend_state *bs, int ep, const char *name, size_t nlen,
                  const char *value, size_t vlen, int64_t now)
{
    (void)ep;
    struct dp_lb_target *t = &bs->t;
    if (name_is(name, nlen, "x-ratelimit-remaining-requests") ||
        name_is(name, nlen, "anthropic-ratelimit-requests-remaining"))
        t->remaining_requests = parse_int(value, vlen);
    else if (name_is(name, nlen, "x-ratelimit-remaining-tokens") ||
             name_is(name, nlen, "anthropic-ratelimit-tokens-remaining"))
        t->remaining_tokens = parse_int(value, vlen);
    else if (name_is(name, nlen, "x-ratelimit-reset-requests") ||
             name_is(name, nlen, "anthropic-ratelimit-requests-reset")) {
        int64_t ms = parse_reset(value, vlen);
        t->requests_reset_at = ms >= 0 ? now + ms : now + 60000;
    } else if (name_is(name, nlen, "x-ratelimit-reset-tokens") ||
               name_is(name, nlen, "anthropic-ratelimit-tokens-reset")) {
        int64_t ms = parse_reset(value, vlen);
        t->tokens_reset_at = ms >= 0 ? now + ms : now + 60000;
    }
}

/* ---- names -------------------------------------------------------------------------------- */

static const char *const names[KW_LB_COUNT] = {"WeightedRandom", "RoundRobin", "LeastRequest",
                                               "Latency"};

int dp_lb_strategy_parse(const char *name)
{
    for (int i = 0; i < KW_LB_COUNT; i++)
        if (strcasecmp(name, names[i]) == 0)
            return i;
    return -1;
}

const char *dp_lb_strategy_name(enum kw_lb_strategy s)
{
    return (unsigned)s < KW_LB_COUNT ? names[s] : "?";
}
