/* Rate limits and budgets as a filter (limit phase), docs/limits.md.
 *
 * Which limits apply: the route's spec.rateLimits whose clientSelector matches, then the
 * consumer's spec.limits, then its budget. Each gets a bucket key (the limit's owner and
 * name and the request's value of its key: consumer, user, a header, the client address).
 * A request costs 1 for request limits; a token limit reserves an estimate (input: the
 * body's bytes / 4; output: max_tokens / max_completion_tokens, else the route's
 * estimatedOutputTokens) and is corrected by the real usage at the end (on_usage), or, when
 * no usage came, refunded (nothing streamed) or charged with what was streamed.
 *
 * Local limits count in the server's lock-free table (ratelimit.c). Global limits and
 * budgets run as one Redis script per request (all or nothing, on Redis's clock) from the
 * worker's loop (redis.c): the request waits (KW_AGAIN) at most spec.redis.timeout. When
 * Redis cannot answer, failureMode Open counts the global limits locally (and budgets per
 * data plane), Closed answers 503.
 *
 * Every answer carries OpenAI's x-ratelimit-* headers (the request limit and the token
 * limit with the least left); a refusal is 429 rate_limit_exceeded (type requests or
 * tokens) or insufficient_quota, with Retry-After.
 *
 * enforce: Stream: the stream may produce what the limits (and the budget) had left when it
 * started; output is counted chunk by chunk (the running usage where a chunk carries one,
 * else an estimate of its text) and at the limit the engine ends the stream cleanly
 * (finish_reason "length", an error event, [DONE]) and cancels the upstream. */
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "filter.h"
#include "knoway/digest.h"
#include "knoway/kw.h"
#include "knoway/redis_contract.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/metrics.h"
#include "phases.h"
#include "ratelimit.h"
#include "redis.h"
#include "server.h"

#define MAX_ITEMS (2 * KW_MAX_RATE_LIMITS)
#define MAX_VALUE 64 /* longer key values are hashed */

enum { SCRIPT_TAKE, SCRIPT_SETTLE };

/* KEYS: n bucket keys, then the consumer's usage hash (when budgeted).
 * ARGV: n, the budget in nano-USD (-1: none), the request's budget reservation (its worst
 * case in nano-USD, charged to the hash's cost when admitted and settled to the real cost
 * later), then limit, window ms, cost per bucket.
 * Returns {admitted (1) / refused by a limit (0) / over budget (2), spent, then per bucket
 * cur, prev, elapsed ms, window index}. A cost below 0 or above 2^40 - 1 is refused, a
 * cost of 0 is admitted only while the bucket has room. */
static const char script_take[] =
    "local CAP = 1099511627775\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "local n = tonumber(ARGV[1])\n"
    "local blimit = tonumber(ARGV[2])\n"
    "local bres = tonumber(ARGV[3])\n"
    "if bres < 0 or bres > 4503599627370496 then bres = 4503599627370496 end\n"
    "local ok = 1\n"
    "local spent = 0\n"
    "if blimit >= 0 then\n"
    "  spent = tonumber(redis.call('HGET', KEYS[n + 1], 'cost') or '0')\n"
    "  if spent >= blimit or spent + bres > blimit then ok = 2 end\n"
    "end\n"
    "local st = {}\n"
    "for i = 1, n do\n"
    "  local L = tonumber(ARGV[3 * i + 1]); local W = tonumber(ARGV[3 * i + 2])\n"
    "  local c = tonumber(ARGV[3 * i + 3])\n"
    "  local win = math.floor(now / W)\n"
    "  local e = now - win * W\n"
    "  local cur = tonumber(redis.call('GET', KEYS[i] .. ':' .. win) or '0')\n"
    "  local prev = tonumber(redis.call('GET', KEYS[i] .. ':' .. (win - 1)) or '0')\n"
    "  local est = math.floor(prev * (W - e) / W) + cur\n"
    "  if c < 0 or c > CAP then c = -1 end\n"
    "  if ok == 1 and (c < 0 or est + math.max(c, 1) > L) then ok = 0 end\n"
    "  st[i] = {win, e, cur, prev, c, W}\n"
    "end\n"
    "if ok == 1 and blimit >= 0 and bres > 0 then\n"
    "  redis.call('HINCRBY', KEYS[n + 1], 'cost', bres)\n"
    "end\n"
    "local out = {ok, spent}\n"
    "for i = 1, n do\n"
    "  local s = st[i]\n"
    "  if ok == 1 and s[5] > 0 then\n"
    "    local k = KEYS[i] .. ':' .. s[1]\n"
    "    s[3] = redis.call('INCRBY', k, s[5])\n"
    "    redis.call('PEXPIRE', k, 2 * s[6])\n"
    "  end\n"
    "  out[#out + 1] = s[3]; out[#out + 1] = s[4]; out[#out + 1] = s[2]; out[#out + 1] = s[1]\n"
    "end\n"
    "return out\n";

/* KEYS: n window keys ("bucket:window"), then the usage hash (optional).
 * ARGV: n, then delta and ttl ms per key, then requests, input, output, cached, cost and
 * ttl s for the hash. A refund never takes a window below 0 nor revives an expired one;
 * every count saturates (windows at 2^40 - 1, the usage hash at 2^53: HINCRBY past 2^63
 * would fail half-way through the script, and Lua's numbers are doubles). */
static const char script_settle[] =
    "local CAP = 1099511627775\n"
    "local HCAP = 9007199254740992\n"
    "local function hsat(k, f, d)\n"
    "  d = tonumber(d)\n"
    "  if d == nil or d == 0 then return end\n"
    "  local v = tonumber(redis.call('HGET', k, f) or '0')\n"
    "  if v + d >= HCAP then redis.call('HSET', k, f, '9007199254740992')\n"
    "  elseif v + d <= 0 then redis.call('HSET', k, f, 0)\n"
    "  else redis.call('HINCRBY', k, f, d) end\n"
    "end\n"
    "local n = tonumber(ARGV[1])\n"
    "for i = 1, n do\n"
    "  local d = tonumber(ARGV[2 * i])\n"
    "  if d < -CAP then d = -CAP elseif d > CAP then d = CAP end\n"
    "  if d < 0 then\n"
    "    if redis.call('EXISTS', KEYS[i]) == 1 then\n"
    "      if redis.call('INCRBY', KEYS[i], d) < 0 then\n"
    "        redis.call('SET', KEYS[i], 0, 'KEEPTTL')\n"
    "      end\n"
    "    end\n"
    "  elseif d > 0 then\n"
    "    if redis.call('INCRBY', KEYS[i], d) > CAP then\n"
    "      redis.call('SET', KEYS[i], CAP, 'KEEPTTL')\n"
    "    end\n"
    "    redis.call('PEXPIRE', KEYS[i], ARGV[2 * i + 1])\n"
    "  end\n"
    "end\n"
    "if #KEYS > n then\n"
    "  local k = KEYS[n + 1]\n"
    "  local b = 2 * n + 2\n"
    "  hsat(k, 'requests', ARGV[b])\n"
    "  hsat(k, 'inputTokens', ARGV[b + 1])\n"
    "  hsat(k, 'outputTokens', ARGV[b + 2])\n"
    "  hsat(k, 'cachedTokens', ARGV[b + 3])\n"
    "  hsat(k, 'cost', ARGV[b + 4])\n"
    "  redis.call('EXPIRE', k, ARGV[b + 5])\n"
    "end\n"
    "return 1\n";

static const char *const scripts[] = {script_take, script_settle};

struct conf {
    struct dp_rl_store *store;
    bool have_redis;
    bool fail_closed;
    struct dp_redis_conf rconf;
    char host[INET6_ADDRSTRLEN];
    char *password;
    struct dp_redis **redis; /* one per worker, created by it on first use */
    unsigned nworkers;
    struct kw_metric *refused, *redis_failures, *table_full;
};

struct item {
    const struct kw_rate_limit *l; /* NULL: none */
    const char *key;               /* the bucket's name (Redis key prefix) */
    size_t len;
    uint64_t hash; /* of key, for the local table: computed when first counted locally */
    uint64_t fam;  /* the limit's family (owner and name): where its keys spill */
    int64_t cost;  /* charged when admitted */
    bool global;   /* counted in Redis */
    bool charged;  /* cost is in the bucket (refund or correct it) */
    struct dp_rl_state st;
};

struct ctx {
    struct item *it;
    unsigned n;
    unsigned stage; /* 0 new, 1 waiting for Redis, 2 admitted, 3 refused */
    struct dp_redis_op *op;
    int64_t in_est, out_est;
    bool budget;               /* the consumer has a budget */
    const char *usage_key;     /* its usage hash in Redis (period), or NULL */
    uint64_t budget_hash;      /* ... and locally */
    int64_t budget_expires_ms; /* realtime ms: the period's end */
    int64_t spent;             /* nano-USD, when admitted (before this request's reservation) */
    int64_t reserve;           /* nano-USD: this request's worst case, charged on admission */
    int64_t reserved;          /* ... what of it is charged (settled to the real cost) */
    bool budget_global;        /* checked in Redis */
    int64_t allow_out;         /* output tokens the stream may produce; -1: no cap */
    int64_t streamed;          /* output tokens counted so far (estimate) */
    bool usage_seen;
    bool settled;
};

/* Budget periods are calendar (UTC) periods: their counters expire on the wall clock. */
static int64_t realtime_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- configuration ----------------------------------------------------------------------- */

static int init(struct dp_server *s, void **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KW_ERROR;
    *out = c;
    c->store = dp_rl_store_new();
    if (c->store == NULL)
        return KW_ERROR;
    struct kw_metrics *m = s->metrics;
    c->refused = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_ratelimit_refused_total",
                                "Requests refused by a rate limit or a budget, by kind.",
                                (const char *const[]){"kind", NULL}, 8, NULL, 0);
    c->redis_failures =
        kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_ratelimit_redis_failures_total",
                       "Limit checks Redis did not answer (failureMode decided), by mode.",
                       (const char *const[]){"mode", NULL}, 4, NULL, 0);
    c->table_full = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_ratelimit_table_full_total",
                                   "Local limit checks that found the table of keys full: "
                                   "counted in their limit's shared slot, or refused (503).",
                                   NULL, 1, NULL, 0);
    const struct kw_dataplane *dp = s->dp;
    if (dp->redis.url == NULL)
        return KW_OK;
    /* resolved here, on the main thread: hiredis would call getaddrinfo on a worker */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *ai = NULL;
    int rc = getaddrinfo(dp->redis.host, NULL, &hints, &ai);
    if (rc != 0 || ai == NULL) {
        kw_log(KW_LOG_ERROR, "cannot resolve the Redis host", "host", dp->redis.host, "error",
               gai_strerror(rc), NULL);
        return KW_ERROR;
    }
    const void *addr = ai->ai_family == AF_INET6
                           ? (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr
                           : (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr;
    inet_ntop(ai->ai_family, addr, c->host, sizeof(c->host));
    freeaddrinfo(ai);
    if (dp->redis.password_file != NULL) {
        FILE *f = fopen(dp->redis.password_file, "r");
        char pw[1024];
        size_t n = f != NULL ? fread(pw, 1, sizeof(pw) - 1, f) : 0;
        if (f == NULL || ferror(f)) {
            kw_log(KW_LOG_ERROR, "cannot read redis.passwordFile", "file", dp->redis.password_file,
                   "error", strerror(errno), NULL);
            if (f != NULL)
                fclose(f);
            return KW_ERROR;
        }
        fclose(f);
        while (n > 0 && (pw[n - 1] == '\n' || pw[n - 1] == '\r'))
            n--;
        pw[n] = '\0';
        c->password = strdup(pw);
        OPENSSL_cleanse(pw, sizeof(pw));
    }
    c->rconf = (struct dp_redis_conf){.host = c->host,
                                      .port = dp->redis.port,
                                      .db = dp->redis.db,
                                      .user = dp->redis.user,
                                      .password = c->password,
                                      .timeout_ms = dp->redis.timeout_ms,
                                      .scripts = scripts,
                                      .nscripts = 2};
    c->nworkers = s->nworkers;
    c->redis = calloc(s->nworkers, sizeof(*c->redis));
    if (c->redis == NULL)
        return KW_ERROR;
    c->have_redis = true;
    c->fail_closed = dp->redis.fail_closed;
    return KW_OK;
}

static void fini(void *p)
{
    struct conf *c = p;
    if (c == NULL)
        return;
    for (unsigned i = 0; c->redis != NULL && i < c->nworkers; i++)
        dp_redis_free(c->redis[i]);
    free(c->redis);
    free(c->password);
    dp_rl_store_free(c->store);
    free(c);
}

static struct dp_redis *redis_of(struct conf *c, struct dp_worker *w)
{
    if (!c->have_redis || w->index >= c->nworkers)
        return NULL;
    if (c->redis[w->index] == NULL)
        c->redis[w->index] = dp_redis_new(w, &c->rconf);
    return c->redis[w->index];
}

/* ---- which limits, which buckets ------------------------------------------------------------ */

static bool selected(const struct dp_request *r, const struct kw_rate_limit *l,
                     const struct kw_route *rt)
{
    if (l->nconsumers > 0) {
        if (r->consumer == NULL)
            return false;
        const struct kw_meta *m = &r->consumer->meta;
        bool any = false;
        for (size_t i = 0; i < l->nconsumers && !any; i++) {
            const char *c = l->consumers[i], *slash = strchr(c, '/');
            any = slash != NULL ? (strncmp(c, m->ns, (size_t)(slash - c)) == 0 &&
                                   m->ns[slash - c] == '\0' && strcmp(slash + 1, m->name) == 0)
                                : (strcmp(c, m->name) == 0 && strcmp(rt->meta.ns, m->ns) == 0);
        }
        if (!any)
            return false;
    }
    for (size_t i = 0; i < l->nheaders; i++) {
        const char *v = dp_request_header((struct dp_request *)r, l->headers[i].name);
        if (v == NULL || strcmp(v, l->headers[i].value) != 0)
            return false;
    }
    return true;
}

static const char *body_user(struct dp_request *r)
{
    const struct kw_node *u = kw_node_get(r->json, "user");
    if (u == NULL || u->type != KW_NODE_STRING || u->len == 0)
        u = kw_node_get(kw_node_get(r->json, "metadata"), "user_id");
    return u != NULL && u->type == KW_NODE_STRING && u->len > 0 ? u->str : NULL;
}

/* The request's value of the limit's key ("-" when it has none: one shared bucket). */
static const char *key_value(struct dp_request *r, const struct kw_rate_limit *l, char *buf,
                             size_t len)
{
    const char *v = NULL;
    switch (l->key) {
    case KW_LIMIT_KEY_CONSUMER:
        if (r->consumer != NULL) {
            snprintf(buf, len, "%s/%s", r->consumer->meta.ns, r->consumer->meta.name);
            return buf;
        }
        break;
    case KW_LIMIT_KEY_USER:
        v = r->user;
        break;
    case KW_LIMIT_KEY_HEADER:
        v = dp_request_header(r, l->header);
        break;
    case KW_LIMIT_KEY_CLIENT_IP: {
        /* the client (behind trusted proxies, from X-Forwarded-For); IPv6 by its /64 */
        unsigned char a[16] = {0};
        size_t n = dp_request_client_addr(r, a);
        if (n == 4 && inet_ntop(AF_INET, a, buf, (socklen_t)len) != NULL)
            return buf;
        if (n == 8 && inet_ntop(AF_INET6, a, buf, (socklen_t)len) != NULL) {
            size_t bl = strlen(buf);
            if (bl + 4 < len)
                memcpy(buf + bl, "/64", 4);
            return buf;
        }
        break;
    }
    }
    if (v == NULL || *v == '\0')
        return "-";
    size_t vl = strlen(v);
    bool plain = vl <= MAX_VALUE;
    for (size_t i = 0; plain && i < vl; i++)
        plain = v[i] > ' ' && v[i] < 0x7f && v[i] != '{' && v[i] != '}';
    if (plain)
        return v;
    /* long or unusual values (client input) become their digest: keys stay bounded */
    /* a name every data plane writes alike (Redis keys): SHA-256, not the table's hash */
    unsigned char d[32];
    uint64_t h1 = 0;
    if (kw_sha256(v, vl, d) == KW_OK)
        memcpy(&h1, d, sizeof(h1));
    snprintf(buf, len, "#%016llx", (unsigned long long)h1);
    return buf;
}

static int64_t max_tokens_of(const struct dp_request *r)
{
    const char *field;
    /* in range: the route phase refused anything else */
    int64_t n = dp_request_max_output(r, KW_MAX_OUTPUT_TOKENS, &field);
    if (n > 0)
        return n;
    return r->api == DP_API_EMBEDDINGS ? 0 : r->route->estimated_output_tokens;
}

/* Token counts are clamped (KW_MAX_USAGE_TOKENS) before they get here: the sum of two is far
 * from overflowing, and a cost is at most DP_RL_MAX_CNT (what a bucket can hold). */
static int64_t tokens_for(enum kw_limit_count c, int64_t in, int64_t out)
{
    int64_t n = c == KW_LIMIT_COUNT_INPUT ? in : c == KW_LIMIT_COUNT_OUTPUT ? out : in + out;
    return n < 0 ? 0 : n > (int64_t)DP_RL_MAX_CNT ? (int64_t)DP_RL_MAX_CNT : n;
}

/* The concatenation of parts (arena), its length in *len; NULL on out-of-memory. Names are
 * built on every request: without printf (a third of this filter's cost, callgrind). */
static char *join(struct kw_arena *a, const char *const *parts, size_t n, size_t *len)
{
    size_t lens[8], total = 0;
    for (size_t i = 0; i < n && i < 8; i++)
        total += lens[i] = strlen(parts[i]);
    char *out = kw_arena_alloc(a, total + 1);
    if (out == NULL)
        return NULL;
    char *o = out;
    for (size_t i = 0; i < n && i < 8; i++) {
        memcpy(o, parts[i], lens[i]);
        o += lens[i];
    }
    *o = '\0';
    *len = total;
    return out;
}

static bool add_item(struct dp_request *r, struct ctx *x, const struct kw_rate_limit *l,
                     const char *owner)
{
    char vbuf[96];
    const char *v = key_value(r, l, vbuf, sizeof(vbuf));
    const char *parts[] = {"knoway:rl:{", owner, "/", l->name, "/", v, "}"};
    size_t len;
    const char *key = join(r->arena, parts, KW_ARRAY_LEN(parts), &len);
    if (key == NULL)
        return false;
    struct item *it = &x->it[x->n++];
    *it = (struct item){.l = l,
                        .key = key,
                        .len = len,
                        .fam = dp_rl_family(owner, l->name),
                        .cost = l->tokens ? tokens_for(l->count, x->in_est, x->out_est) : 1,
                        .global = l->global};
    return true;
}

/* ---- answers ------------------------------------------------------------------------------ */

static void add_headers(struct dp_request *r, struct ctx *x)
{
    const struct item *best[2] = {NULL, NULL}; /* requests, tokens */
    for (unsigned i = 0; i < x->n; i++) {
        const struct item *it = &x->it[i];
        if (it->st.window_ms == 0)
            continue;
        const struct item **b = &best[it->l->tokens];
        if (*b == NULL || dp_rl_remaining(&it->st) < dp_rl_remaining(&(*b)->st))
            *b = it;
    }
    static const char *const names[2][3] = {
        {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
         "x-ratelimit-reset-requests"},
        {"x-ratelimit-limit-tokens", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"}};
    for (int k = 0; k < 2; k++) {
        if (best[k] == NULL)
            continue;
        char v[32];
        dp_rl_format_int(best[k]->st.limit, v);
        dp_request_add_header(r, names[k][0], v);
        dp_rl_format_int(dp_rl_remaining(&best[k]->st), v);
        dp_request_add_header(r, names[k][1], v);
        dp_rl_format_reset(dp_rl_reset_ms(&best[k]->st), v);
        dp_request_add_header(r, names[k][2], v);
    }
}

static void window_text(int64_t ms, char *buf, size_t len)
{
    if (ms % 86400000 == 0)
        snprintf(buf, len, "%lld day%s", (long long)(ms / 86400000), ms == 86400000 ? "" : "s");
    else if (ms % 3600000 == 0)
        snprintf(buf, len, "%lld hour%s", (long long)(ms / 3600000), ms == 3600000 ? "" : "s");
    else if (ms % 60000 == 0)
        snprintf(buf, len, "%lld minute%s", (long long)(ms / 60000), ms == 60000 ? "" : "s");
    else
        snprintf(buf, len, "%lld seconds", (long long)((ms + 999) / 1000));
}

static int refuse(struct dp_request *r, struct ctx *x, const struct item *it)
{
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_limit);
    x->stage = 3;
    add_headers(r, x);
    int64_t wait = dp_rl_wait_ms(&it->st, it->cost);
    char w[32], per[32];
    if (wait >= 0) {
        snprintf(w, sizeof(w), "%lld",
                 (long long)((wait + 999) / 1000 > 0 ? (wait + 999) / 1000 : 1));
        dp_request_add_header(r, "Retry-After", w);
        dp_rl_format_reset(wait, w);
    }
    window_text(it->l->window_ms, per, sizeof(per));
    const char *what = it->l->tokens ? "tokens" : "requests";
    kw_metric_add(c->refused, 1 + r->w->index, (const char *const[]){what}, 1);
    if (wait < 0)
        return dp_error_set(r, 429, what, "rate_limit_exceeded", NULL,
                            "Request too large for limit \"%s\": it needs %lld %s, the limit is "
                            "%lld per %s.",
                            it->l->name, (long long)it->cost, what, (long long)it->l->limit, per);
    return dp_error_set(r, 429, what, "rate_limit_exceeded", NULL,
                        "Rate limit reached for limit \"%s\" on %s: limit %lld per %s, used %lld, "
                        "requested %lld. Please try again in %s.",
                        it->l->name, what, (long long)it->l->limit, per,
                        (long long)dp_rl_estimate(&it->st), (long long)it->cost, w);
}

static int over_budget(struct dp_request *r, struct ctx *x)
{
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_limit);
    x->stage = 3;
    add_headers(r, x);
    kw_metric_add(c->refused, 1 + r->w->index, (const char *const[]){"budget"}, 1);
    static const char *const periods[] = {"day", "week", "month"};
    const struct kw_consumer *k = r->consumer;
    char usd[48];
    kw_usd_format(k->budget.limit_nusd, usd, sizeof(usd));
    return dp_error_set(r, 429, "insufficient_quota", "insufficient_quota", NULL,
                        "You exceeded your budget of %s USD for this %s. The budget renews at "
                        "the start of the next %s (UTC).",
                        usd, periods[k->budget.period], periods[k->budget.period]);
}

/* ---- checking ------------------------------------------------------------------------------ */

static void refund_local(struct conf *c, struct ctx *x)
{
    for (unsigned i = 0; i < x->n; i++) {
        struct item *it = &x->it[i];
        if (it->charged && !it->global) {
            dp_rl_local_adjust(c->store, it->hash, it->fam, &it->st, -it->cost);
            it->charged = false;
        }
    }
}

/* Limits that cannot be counted refuse (503): what was charged is given back. */
static int unavailable(struct dp_request *r, struct conf *c, struct ctx *x, const char *what,
                       const char *why)
{
    refund_local(c, x);
    x->stage = 3;
    return dp_error_set(r, 503, "server_error", "rate_limit_unavailable", NULL,
                        "%s cannot be checked (%s); try again later.", what, why);
}

/* Local buckets (and the global ones when Redis is out of the picture). KW_OK when
 * admitted; else the refusal. */
static int take_local(struct dp_request *r, struct conf *c, struct ctx *x, bool globals_too)
{
    int64_t now = dp_now_ms();
    for (unsigned i = 0; i < x->n; i++) {
        struct item *it = &x->it[i];
        if (it->global && !globals_too)
            continue;
        it->global = false;
        if (it->hash == 0)
            it->hash = dp_rl_hash(it->key, it->len);
        int rc = dp_rl_local(c->store, it->hash, it->fam, (int64_t)it->l->limit, it->l->window_ms,
                             it->cost, true, now, &it->st);
        if (rc < 0 || it->st.spilled)
            kw_metric_add(c->table_full, 1 + r->w->index, NULL, 1);
        if (rc < 0) /* neither the key nor its limit found room: never admitted uncounted */
            return unavailable(r, c, x, "Rate limits", "the limit table is full");
        if (rc == 0) {
            refund_local(c, x);
            return refuse(r, x, it);
        }
        it->charged = true;
    }
    if (x->budget && !x->budget_global) {
        if (x->budget_hash == 0)
            x->budget_hash = dp_rl_hash(x->usage_key, strlen(x->usage_key));
        /* the worst case is charged first, then checked: concurrent requests can never
         * together pass the budget by more than what their estimates miss */
        int64_t spent = dp_rl_counter(c->store, x->budget_hash, x->reserve, realtime_ms(),
                                      x->budget_expires_ms);
        if (spent >= 0)
            spent -= x->reserve;
        if (spent < 0) { /* no room to count the budget: never spent uncounted */
            kw_metric_add(c->table_full, 1 + r->w->index, NULL, 1);
            return unavailable(r, c, x, "The budget", "the limit table is full");
        }
        x->spent = spent;
        if (spent >= r->consumer->budget.limit_nusd ||
            spent + x->reserve > r->consumer->budget.limit_nusd) {
            dp_rl_counter(c->store, x->budget_hash, -x->reserve, realtime_ms(),
                          x->budget_expires_ms);
            refund_local(c, x);
            return over_budget(r, x);
        }
        x->reserved = x->reserve;
    }
    return KW_OK;
}

static int64_t price_out_nusd(const struct dp_request *r)
{
    const struct kw_backend *b = r->backend;
    return b != NULL && b->pricing.set ? b->pricing.output_per_million / 1000 : 0;
}

/* Admitted: what a stream may still produce under enforce: Stream. */
static void admitted(struct dp_request *r, struct ctx *x)
{
    x->stage = 2;
    add_headers(r, x);
    x->allow_out = -1;
    for (unsigned i = 0; i < x->n; i++) {
        const struct item *it = &x->it[i];
        if (!it->l->enforce_stream || !it->l->tokens || it->l->count == KW_LIMIT_COUNT_INPUT ||
            it->st.window_ms == 0)
            continue;
        /* what is left after the reservation, plus the reservation's output share */
        int64_t left = dp_rl_remaining(&it->st) + x->out_est;
        if (x->allow_out < 0 || left < x->allow_out)
            x->allow_out = left;
    }
    if (x->budget && r->consumer->budget.enforce_stream) {
        int64_t per = price_out_nusd(r);
        if (per > 0) {
            int64_t left = (r->consumer->budget.limit_nusd - x->spent) / per;
            if (x->allow_out < 0 || left < x->allow_out)
                x->allow_out = left > 0 ? left : 0;
        }
    }
    if (x->allow_out >= 0 && r->stream)
        r->watch_chunks = true;
}

static int64_t int_of(const redisReply *e)
{
    if (e == NULL)
        return 0;
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return 0;
}

static void on_take(void *ud, const redisReply *rp, const char *why)
{
    struct dp_request *r = ud;
    struct ctx *x = r->fctx[dp_filter_index(r->w->server, &dp_filter_limit)];
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_limit);
    x->op = NULL;
    unsigned nglobal = 0;
    for (unsigned i = 0; i < x->n; i++)
        nglobal += x->it[i].global;
    if (rp == NULL || rp->type != REDIS_REPLY_ARRAY || rp->elements != 2 + 4 * (size_t)nglobal) {
        const char *mode = c->fail_closed ? "closed" : "open";
        kw_metric_add(c->redis_failures, 1 + r->w->index, (const char *const[]){mode}, 1);
        if (rp != NULL && rp->type == REDIS_REPLY_ERROR)
            kw_log(KW_LOG_ERROR, "redis limit script failed", "error", rp->str, NULL);
        if (c->fail_closed) {
            char w[160];
            snprintf(w, sizeof(w), "Redis: %s", why != NULL ? why : "bad answer");
            unavailable(r, c, x, "Rate limits", w);
        } else {
            x->budget_global = false;
            if (take_local(r, c, x, true) == KW_OK)
                admitted(r, x);
        }
        dp_engine_resume(r);
        return;
    }
    int64_t ok = int_of(rp->element[0]);
    x->spent = int_of(rp->element[1]);
    size_t e = 2;
    const struct item *first_refused = NULL;
    for (unsigned i = 0; i < x->n; i++) {
        struct item *it = &x->it[i];
        if (!it->global)
            continue;
        it->st = (struct dp_rl_state){.limit = (int64_t)it->l->limit,
                                      .window_ms = it->l->window_ms,
                                      .cur = int_of(rp->element[e]),
                                      .prev = int_of(rp->element[e + 1]),
                                      .elapsed_ms = int_of(rp->element[e + 2]),
                                      .win = int_of(rp->element[e + 3])};
        e += 4;
        it->charged = ok == 1;
        if (ok == 0 && first_refused == NULL && it->cost > 0 &&
            dp_rl_estimate(&it->st) + it->cost > it->st.limit)
            first_refused = it;
    }
    if (ok == 1) {
        if (x->budget_global)
            x->reserved = x->reserve;
        admitted(r, x);
    } else {
        refund_local(c, x);
        if (ok == 2)
            over_budget(r, x);
        else
            refuse(r, x, first_refused != NULL ? first_refused : &x->it[0]);
    }
    dp_engine_resume(r);
}

/* One script call for the global buckets and the budget. KW_AGAIN when sent. */
static int take_global(struct dp_request *r, struct conf *c, struct ctx *x)
{
    struct dp_redis *rc = redis_of(c, r->w);
    const char *argv[2 + 4 * MAX_ITEMS];
    char nums[3 * MAX_ITEMS + 3][24];
    int nk = 0, na = 0;
    const char *keys[MAX_ITEMS + 1];
    for (unsigned i = 0; i < x->n; i++)
        if (x->it[i].global)
            keys[nk++] = x->it[i].key;
    if (x->budget_global)
        keys[nk] = x->usage_key;
    int nbuckets = nk;
    snprintf(nums[na], 24, "%d", nbuckets);
    na++;
    snprintf(nums[na], 24, "%lld",
             x->budget_global ? (long long)r->consumer->budget.limit_nusd : -1LL);
    na++;
    snprintf(nums[na], 24, "%lld", x->budget_global ? (long long)x->reserve : 0LL);
    na++;
    for (unsigned i = 0; i < x->n; i++) {
        const struct item *it = &x->it[i];
        if (!it->global)
            continue;
        snprintf(nums[na++], 24, "%llu", (unsigned long long)it->l->limit);
        snprintf(nums[na++], 24, "%lld", (long long)it->l->window_ms);
        snprintf(nums[na++], 24, "%lld", (long long)it->cost);
    }
    int argc = 0;
    for (int i = 0; i < nk + (x->budget_global ? 1 : 0); i++)
        argv[argc++] = keys[i];
    for (int i = 0; i < na; i++)
        argv[argc++] = nums[i];
    x->op = dp_redis_eval(rc, SCRIPT_TAKE, nk + (x->budget_global ? 1 : 0), argc, argv, NULL,
                          on_take, r);
    if (x->op == NULL)
        return KW_ERROR;
    x->stage = 1;
    return KW_AGAIN;
}

static int on_request(struct dp_request *r, void *p)
{
    struct ctx *x = p;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_limit);
    if (x == NULL)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    if (x->stage == 1)
        return KW_AGAIN;
    if (x->stage == 2)
        return KW_DECLINED; /* a retry or fallback: counted once */
    if (x->stage == 3)
        return KW_ERROR;
    x->allow_out = -1; /* no cap on a stream unless admitted() finds one */
    const struct kw_route *rt = r->route;
    const struct kw_consumer *k = r->consumer;
    size_t want = rt->nrate_limits + (k != NULL ? k->nlimits : 0);
    if (r->user == NULL)
        r->user = body_user(r);
    bool budget = k != NULL && k->budget.set;
    bool usage_hash = k != NULL && c->have_redis;
    if (want == 0 && !budget && !usage_hash) {
        x->stage = 2;
        return KW_DECLINED;
    }
    x->it = want > 0 ? kw_arena_alloc(r->arena, want * sizeof(*x->it)) : NULL;
    if (want > 0 && x->it == NULL)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    x->in_est = (int64_t)(r->body_len / 4);
    x->out_est = max_tokens_of(r);
    size_t olen;
    const char *owner =
        rt->nrate_limits == 0
            ? NULL
            : join(r->arena, (const char *[]){"r/", rt->meta.ns, "/", rt->meta.name}, 4, &olen);
    for (size_t i = 0; owner != NULL && i < rt->nrate_limits; i++)
        if (selected(r, &rt->rate_limits[i], rt) && !add_item(r, x, &rt->rate_limits[i], owner))
            return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    if (k != NULL && k->nlimits > 0) {
        owner = join(r->arena, (const char *[]){"c/", k->meta.ns, "/", k->meta.name}, 4, &olen);
        for (size_t i = 0; owner != NULL && i < k->nlimits; i++)
            if (!add_item(r, x, &k->limits[i], owner))
                return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    }
    x->budget = budget;
    if (budget) {
        /* the worst case: the estimated input and all of max_tokens at the priciest
         * backend the route may send it to (retries and fallbacks included) */
        for (size_t i = 0; i < rt->nrefs; i++) {
            int64_t v = dp_cost_nano(rt->refs[i].backend, x->in_est, 0, x->out_est);
            if (v > x->reserve)
                x->reserve = v;
        }
    }
    if (budget || usage_hash) {
        char period[32];
        enum kw_period per = budget ? k->budget.period : KW_PERIOD_MONTH;
        kw_period_name(per, (long long)time(NULL), period, sizeof(period), &x->budget_expires_ms);
        char key[KW_USAGE_KEY_MAX];
        x->usage_key = kw_usage_key(key, sizeof(key), k->meta.ns, k->meta.name, period)
                           ? kw_arena_strdup(r->arena, key)
                           : NULL;
        if (x->usage_key == NULL)
            return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
        x->budget_global = budget && c->have_redis;
    }
    unsigned nglobal = 0;
    for (unsigned i = 0; i < x->n; i++) {
        if (x->it[i].global && !c->have_redis) {
            x->it[i].global = false; /* no Redis configured: Global counts per data plane */
            static atomic_bool warned;
            if (!atomic_exchange(&warned, true))
                kw_log(KW_LOG_WARN,
                       "a Global rate limit counts per data plane: DataPlane spec.redis is not set",
                       "limit", x->it[i].l->name, NULL);
        }
        nglobal += x->it[i].global;
    }
    int rc = take_local(r, c, x, false);
    if (rc != KW_OK)
        return rc;
    if (nglobal == 0 && !x->budget_global) {
        admitted(r, x);
        return KW_OK;
    }
    rc = take_global(r, c, x);
    if (rc == KW_AGAIN)
        return rc;
    /* Redis is down (backing off) or the call could not be queued */
    const char *mode = c->fail_closed ? "closed" : "open";
    kw_metric_add(c->redis_failures, 1 + r->w->index, (const char *const[]){mode}, 1);
    if (c->fail_closed)
        return unavailable(r, c, x, "Rate limits", "Redis is unavailable");
    x->budget_global = false;
    rc = take_local(r, c, x, true);
    if (rc != KW_OK)
        return rc;
    admitted(r, x);
    return KW_OK;
}

/* ---- streams ----------------------------------------------------------------------------------
 */

static int on_chunk(struct dp_request *r, void *p, const struct kw_node *chunk)
{
    struct ctx *x = p;
    if (x == NULL || x->stage != 2 || x->allow_out < 0)
        return KW_OK; /* another filter watches the chunks: this one has no cap */
    const struct kw_node *usage = kw_node_get(chunk, "usage");
    const struct kw_node *ct = kw_node_get(usage, "completion_tokens");
    if (ct != NULL && ct->type == KW_NODE_INT && ct->i > x->streamed) {
        x->streamed = ct->i; /* a running usage (vLLM's continuous usage, Anthropic) */
    } else {
        const struct kw_node *ch = kw_node_get(chunk, "choices");
        const struct kw_node *d = ch != NULL && ch->type == KW_NODE_SEQ && ch->n > 0
                                      ? kw_node_get(ch->items[0], "delta")
                                      : NULL;
        size_t chars = 0;
        static const char *const text[] = {"content", "reasoning_content", "refusal"};
        for (size_t i = 0; i < 3; i++) {
            const struct kw_node *t = kw_node_get(d, text[i]);
            if (t != NULL && t->type == KW_NODE_STRING)
                chars += t->len;
        }
        const struct kw_node *tc = kw_node_get(d, "tool_calls");
        for (size_t i = 0; tc != NULL && tc->type == KW_NODE_SEQ && i < tc->n; i++) {
            const struct kw_node *a =
                kw_node_get(kw_node_get(tc->items[i], "function"), "arguments");
            if (a != NULL && a->type == KW_NODE_STRING)
                chars += a->len;
        }
        /* a chunk carries about one token (OpenAI, vLLM); longer ones ~4 bytes a token */
        if (chars > 0)
            x->streamed += chars / 4 > 1 ? (int64_t)(chars / 4) : 1;
    }
    if (x->streamed < x->allow_out)
        return KW_OK;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_limit);
    kw_metric_add(c->refused, 1 + r->w->index, (const char *const[]){"stream"}, 1);
    bool budget = x->budget && r->consumer->budget.enforce_stream &&
                  (r->consumer->budget.limit_nusd - x->spent) /
                          (price_out_nusd(r) > 0 ? price_out_nusd(r) : 1) <=
                      x->allow_out;
    if (budget)
        dp_error_set(r, 429, "insufficient_quota", "insufficient_quota", NULL,
                     "The stream was ended: your budget is spent (%lld output tokens were "
                     "left).",
                     (long long)x->allow_out);
    else
        dp_error_set(r, 429, "tokens", "rate_limit_exceeded", NULL,
                     "The stream was ended at the token rate limit (%lld output tokens were "
                     "left).",
                     (long long)x->allow_out);
    return KW_DONE;
}

/* ---- settling ------------------------------------------------------------------------------ */

static void settle(struct dp_request *r, struct ctx *x, int64_t in, int64_t out, int64_t cached,
                   int64_t cost_nusd, bool have_usage)
{
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_limit);
    if (x->settled || x->stage != 2)
        return;
    x->settled = true;
    const char *argv[2 + 2 * MAX_ITEMS + MAX_ITEMS + 8];
    char nums[2 * MAX_ITEMS + 8][24];
    const char *keys[MAX_ITEMS + 1];
    int nk = 0, na = 0;
    for (unsigned i = 0; i < x->n; i++) {
        struct item *it = &x->it[i];
        if (!it->charged || !it->l->tokens)
            continue;
        int64_t real = have_usage ? tokens_for(it->l->count, in, out) : 0;
        int64_t delta = real - it->cost;
        if (delta == 0)
            continue;
        if (!it->global) {
            dp_rl_local_adjust(c->store, it->hash, it->fam, &it->st, delta);
            continue;
        }
        keys[nk] = kw_arena_printf(r->arena, "%s:%lld", it->key, (long long)it->st.win);
        if (keys[nk] == NULL)
            continue;
        snprintf(nums[na++], 24, "%lld", (long long)delta);
        snprintf(nums[na++], 24, "%lld", (long long)(2 * it->st.window_ms));
        nk++;
    }
    /* the reservation charged on admission is settled to the real cost (given back in
     * full when nothing was used) */
    int64_t cost_delta = cost_nusd - x->reserved;
    if (x->budget && !x->budget_global && cost_delta != 0)
        dp_rl_counter(c->store, x->budget_hash, cost_delta, realtime_ms(), x->budget_expires_ms);
    bool hash = x->usage_key != NULL && c->have_redis && (x->budget_global || x->budget == false);
    if (nk == 0 && !hash)
        return;
    struct dp_redis *rc = redis_of(c, r->w);
    int argc = 0;
    for (int i = 0; i < nk; i++)
        argv[argc++] = keys[i];
    if (hash)
        argv[argc++] = x->usage_key;
    char n[16];
    snprintf(n, sizeof(n), "%d", nk);
    argv[argc++] = n;
    for (int i = 0; i < na; i++)
        argv[argc++] = nums[i];
    char u[6][24];
    if (hash) {
        /* the period's counters; kept 40 days past the period's end */
        int64_t ttl = (x->budget_expires_ms / 1000 - (int64_t)time(NULL)) + 40 * 86400;
        int64_t vals[6] = {1, in, out, cached, x->budget_global ? cost_delta : cost_nusd, ttl};
        for (int i = 0; i < 6; i++) {
            snprintf(u[i], 24, "%lld", (long long)vals[i]);
            argv[argc++] = u[i];
        }
    }
    /* fire and forget: a lost correction errs by one request's estimate */
    dp_redis_eval(rc, SCRIPT_SETTLE, nk + (hash ? 1 : 0), argc, argv, NULL, NULL, NULL);
}

static int64_t cost_of(const struct dp_request *r, const struct dp_usage *u)
{
    return dp_cost_nano(r->backend, u->prompt, u->cached, u->completion);
}

static void on_usage(struct dp_request *r, void *p, const struct dp_usage *u)
{
    struct ctx *x = p;
    if (x == NULL)
        return;
    x->usage_seen = true;
    settle(r, x, u->prompt, u->completion, u->cached, cost_of(r, u), true);
}

static void on_end(struct dp_request *r, void *p)
{
    struct ctx *x = p;
    if (x == NULL)
        return;
    if (x->op != NULL) {
        dp_redis_cancel(x->op); /* the client left while Redis was asked */
        x->op = NULL;
    }
    if (x->usage_seen || x->stage != 2)
        return;
    if (r->state == DP_ST_STREAM || x->streamed > 0) {
        /* a stream without final usage (cut, cancelled): what was sent counts */
        struct dp_usage u = {.have = true, .prompt = x->in_est, .completion = x->streamed};
        settle(r, x, u.prompt, u.completion, 0, cost_of(r, &u), true);
    } else {
        settle(r, x, 0, 0, 0, 0, false); /* failed before any output: refunded */
    }
}

const struct dp_filter_ops dp_filter_limit = {
    .name = "limit",
    .phase = DP_PH_LIMIT,
    .ctx_size = sizeof(struct ctx),
    .init = init,
    .fini = fini,
    .on_request = on_request,
    .on_chunk = on_chunk,
    .on_usage = on_usage,
    .on_end = on_end,
};
