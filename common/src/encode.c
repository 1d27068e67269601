/* Encoding resource specs back into kw_node trees, every default filled in: what the
 * snapshot carries. kw_decode_*_spec(kw_encode_*_spec(x)) gives x back. */
#include <stdio.h>
#include <string.h>

#include "decode.h"
#include "knoway/duration.h"
#include "knoway/kw.h"

struct enc {
    struct kw_arena *a;
    bool failed;
};

static struct kw_node *map(struct enc *e)
{
    struct kw_node *n = kw_node_new(e->a, KW_NODE_MAP);
    e->failed |= n == NULL;
    return n;
}

static struct kw_node *seq(struct enc *e)
{
    struct kw_node *n = kw_node_new(e->a, KW_NODE_SEQ);
    e->failed |= n == NULL;
    return n;
}

static void put(struct enc *e, struct kw_node *m, const char *key, struct kw_node *v)
{
    if (m == NULL || kw_node_map_put(e->a, m, key, v) != KW_OK)
        e->failed = true;
}

static void push(struct enc *e, struct kw_node *s, struct kw_node *v)
{
    if (s == NULL || kw_node_seq_push(e->a, s, v) != KW_OK)
        e->failed = true;
}

static void put_str(struct enc *e, struct kw_node *m, const char *key, const char *v)
{
    if (v != NULL)
        put(e, m, key, kw_node_cstring(e->a, v));
}

static void put_int(struct enc *e, struct kw_node *m, const char *key, int64_t v)
{
    put(e, m, key, kw_node_int(e->a, v));
}

static void put_duration(struct enc *e, struct kw_node *m, const char *key, int64_t ms)
{
    char buf[64];
    if (ms == 0)
        return;
    kw_duration_format(ms, buf, sizeof(buf));
    put_str(e, m, key, buf);
}

static struct kw_node *secret_ref(struct enc *e, const struct kw_secret_ref *r)
{
    struct kw_node *m = map(e);
    put_str(e, m, "name", r->name);
    put_str(e, m, "key", r->key);
    return m;
}

static struct kw_node *headers(struct enc *e, const struct kw_header *h, size_t n)
{
    struct kw_node *s = seq(e);
    for (size_t i = 0; i < n; i++) {
        struct kw_node *m = map(e);
        put_str(e, m, "name", h[i].name);
        put_str(e, m, "value", h[i].value);
        push(e, s, m);
    }
    return s;
}

/* micro-USD as a decimal string: 2500000 -> "2.5" */
static void put_money(struct enc *e, struct kw_node *m, const char *key, int64_t micro)
{
    char buf[48];
    int n = snprintf(buf, sizeof(buf), "%lld.%06lld", (long long)(micro / 1000000),
                     (long long)(micro % 1000000));
    while (n > 0 && buf[n - 1] == '0')
        buf[--n] = '\0';
    if (n > 0 && buf[n - 1] == '.')
        buf[--n] = '\0';
    put_str(e, m, key, buf);
}

static struct kw_node *rate_limits(struct enc *e, const struct kw_rate_limit *l, size_t n)
{
    static const char *const keys[] = {"Consumer", "User", "Header/", "ClientIP"};
    static const char *const counts[] = {"Total", "Input", "Output"};
    struct kw_node *s = seq(e);
    for (size_t i = 0; i < n; i++, l++) {
        struct kw_node *m = map(e);
        put_str(e, m, "name", l->name);
        put_str(e, m, "key",
                l->key == KW_LIMIT_KEY_HEADER ? kw_arena_printf(e->a, "Header/%s", l->header)
                                              : keys[l->key]);
        if (l->nconsumers > 0 || l->nheaders > 0) {
            struct kw_node *sel = map(e);
            if (l->nconsumers > 0) {
                struct kw_node *cs = seq(e);
                for (size_t k = 0; k < l->nconsumers; k++)
                    push(e, cs, kw_node_cstring(e->a, l->consumers[k]));
                put(e, sel, "consumers", cs);
            }
            if (l->nheaders > 0)
                put(e, sel, "headers", headers(e, l->headers, l->nheaders));
            put(e, m, "clientSelector", sel);
        }
        struct kw_node *q = map(e);
        put_int(e, q, "limit", (int64_t)l->limit);
        put_duration(e, q, "window", l->window_ms);
        if (l->tokens)
            put_str(e, q, "count", counts[l->count]);
        put(e, m, l->tokens ? "tokens" : "requests", q);
        put_str(e, m, "scope", l->global ? "Global" : "Local");
        put_str(e, m, "enforce", l->enforce_stream ? "Stream" : "Request");
        push(e, s, m);
    }
    return s;
}

struct kw_node *kw_encode_backend_spec(struct kw_arena *a, const struct kw_backend *b)
{
    struct enc e = {.a = a};
    struct kw_node *spec = map(&e);
    put_str(&e, spec, "provider", kw_provider_name(b->provider));
    put_str(&e, spec, "modelName", b->model_name);

    const struct kw_upstream *u = &b->upstream;
    struct kw_node *up = map(&e);
    put_str(&e, up, "baseURL", u->base_url);
    if (u->service_ref.name != NULL) {
        struct kw_node *sr = map(&e);
        put_str(&e, sr, "name", u->service_ref.name);
        put_int(&e, sr, "port", u->service_ref.port);
        put(&e, up, "serviceRef", sr);
    }
    if (u->nendpoints > 0) {
        struct kw_node *eps = seq(&e);
        for (size_t i = 0; i < u->nendpoints; i++) {
            struct kw_node *m = map(&e);
            put_str(&e, m, "url", u->endpoints[i].url);
            put_int(&e, m, "weight", u->endpoints[i].weight);
            push(&e, eps, m);
        }
        put(&e, up, "endpoints", eps);
    }
    put_str(&e, up, "protocol", u->http2 ? "HTTP/2" : "HTTP/1.1");
    put_duration(&e, up, "timeout", u->timeout_ms);
    put_duration(&e, up, "connectTimeout", u->connect_timeout_ms);
    if (u->nheaders > 0)
        put(&e, up, "headers", headers(&e, u->headers, u->nheaders));
    if (u->tls.insecure_skip_verify || u->tls.ca_secret_ref.name != NULL) {
        struct kw_node *tls = map(&e);
        put(&e, tls, "insecureSkipVerify", kw_node_bool(a, u->tls.insecure_skip_verify));
        if (u->tls.ca_secret_ref.name != NULL)
            put(&e, tls, "caSecretRef", secret_ref(&e, &u->tls.ca_secret_ref));
        put(&e, up, "tls", tls);
    }
    put(&e, spec, "upstream", up);

    if (b->has_credentials) {
        const struct kw_credentials *c = &b->credentials;
        struct kw_node *cr = map(&e);
        if (c->secret_ref.name != NULL)
            put(&e, cr, "secretRef", secret_ref(&e, &c->secret_ref));
        if (b->provider == KW_PROVIDER_AZURE_OPENAI) {
            struct kw_node *az = map(&e);
            put_str(&e, az, "apiVersion", c->azure.api_version);
            put_str(&e, az, "deployment", c->azure.deployment);
            put(&e, cr, "azure", az);
        }
        if (b->provider == KW_PROVIDER_AWS_BEDROCK) {
            struct kw_node *br = map(&e);
            put_str(&e, br, "region", c->bedrock.region);
            put_str(&e, br, "accessKeyIdKey", c->bedrock.access_key_id_key);
            put_str(&e, br, "secretAccessKeyKey", c->bedrock.secret_access_key_key);
            put_str(&e, br, "sessionTokenKey", c->bedrock.session_token_key);
            put(&e, cr, "bedrock", br);
        }
        if (b->provider == KW_PROVIDER_VERTEX_AI) {
            struct kw_node *vx = map(&e);
            put_str(&e, vx, "project", c->vertex.project);
            put_str(&e, vx, "region", c->vertex.region);
            put(&e, cr, "vertex", vx);
        }
        put(&e, spec, "credentials", cr);
    }

    if (b->circuit_breaker.consecutive_failures != KW_DEFAULT_CONSECUTIVE_FAILURES ||
        b->circuit_breaker.ejection_time_ms != KW_DEFAULT_EJECTION_TIME_MS ||
        b->circuit_breaker.max_ejection_percent != KW_DEFAULT_MAX_EJECTION_PERCENT) {
        struct kw_node *cb = map(&e);
        put_int(&e, cb, "consecutiveFailures", b->circuit_breaker.consecutive_failures);
        put_duration(&e, cb, "ejectionTime", b->circuit_breaker.ejection_time_ms);
        put_int(&e, cb, "maxEjectionPercent", b->circuit_breaker.max_ejection_percent);
        put(&e, spec, "circuitBreaker", cb);
    }
    if (b->limits.requests_per_minute > 0 || b->limits.tokens_per_minute > 0 ||
        b->limits.max_concurrent_requests > 0) {
        struct kw_node *lim = map(&e);
        if (b->limits.requests_per_minute > 0)
            put_int(&e, lim, "requestsPerMinute", b->limits.requests_per_minute);
        if (b->limits.tokens_per_minute > 0)
            put_int(&e, lim, "tokensPerMinute", b->limits.tokens_per_minute);
        if (b->limits.max_concurrent_requests > 0)
            put_int(&e, lim, "maxConcurrentRequests", b->limits.max_concurrent_requests);
        put(&e, spec, "limits", lim);
    }

    if (b->structured_outputs == KW_STRUCTURED_NATIVE)
        put_str(&e, spec, "structuredOutputs", "Native");
    if (b->reasoning_omit) {
        struct kw_node *rs = map(&e);
        put_str(&e, rs, "content", "Omit");
        put(&e, spec, "reasoning", rs);
    }

    if (b->pricing.set) {
        struct kw_node *pr = map(&e);
        put_money(&e, pr, "inputPerMillion", b->pricing.input_per_million);
        put_money(&e, pr, "outputPerMillion", b->pricing.output_per_million);
        put_money(&e, pr, "cachedInputPerMillion", b->pricing.cached_input_per_million);
        put(&e, spec, "pricing", pr);
    }

    const struct kw_params *p = &b->params;
    if (p->defaults != NULL || p->overrides != NULL || p->nremove > 0) {
        struct kw_node *pm = map(&e);
        if (p->defaults != NULL)
            put(&e, pm, "defaults", p->defaults);
        if (p->overrides != NULL)
            put(&e, pm, "overrides", p->overrides);
        if (p->nremove > 0) {
            struct kw_node *rm = seq(&e);
            for (size_t i = 0; i < p->nremove; i++)
                push(&e, rm, kw_node_cstring(a, p->remove[i]));
            put(&e, pm, "remove", rm);
        }
        put(&e, spec, "params", pm);
    }
    return e.failed ? NULL : spec;
}

/* A consumer as snapshots carry it: attributes, models, and its keys' digests. */
struct kw_node *kw_encode_consumer_spec(struct kw_arena *a, const struct kw_consumer *c)
{
    struct enc e = {.a = a};
    struct kw_node *spec = map(&e);
    if (c->nattributes > 0) {
        struct kw_node *attrs = map(&e);
        for (size_t i = 0; i < c->nattributes; i++)
            put_str(&e, attrs, c->attributes[i].name, c->attributes[i].value);
        put(&e, spec, "attributes", attrs);
    }
    if (c->nmodels > 0) {
        struct kw_node *models = seq(&e);
        for (size_t i = 0; i < c->nmodels; i++) {
            const char *v = c->models[i].value;
            push(&e, models,
                 c->models[i].prefix
                     ? kw_node_string(a, kw_arena_printf(a, "%s*", v), strlen(v) + 1)
                     : kw_node_cstring(a, v));
        }
        put(&e, spec, "models", models);
    }
    struct kw_node *keys = seq(&e);
    for (size_t i = 0; i < c->nkey_hashes; i++)
        push(&e, keys, kw_node_cstring(a, c->key_hashes[i]));
    put(&e, spec, "keySha256", keys);
    if (c->nlimits > 0)
        put(&e, spec, "limits", rate_limits(&e, c->limits, c->nlimits));
    if (c->budget.set) {
        static const char *const periods[] = {"Day", "Week", "Month"};
        struct kw_node *b = map(&e);
        put_money(&e, b, "limit", c->budget.limit_nusd / 1000);
        put_str(&e, b, "currency", "USD");
        put_str(&e, b, "period", periods[c->budget.period]);
        put_str(&e, b, "enforce", c->budget.enforce_stream ? "Stream" : "Request");
        put(&e, spec, "budget", b);
    }
    return e.failed ? NULL : spec;
}

struct kw_node *kw_encode_route_spec(struct kw_arena *a, const struct kw_route *r)
{
    struct enc e = {.a = a};
    struct kw_node *spec = map(&e);
    struct kw_node *match = map(&e);
    struct kw_node *models = seq(&e);
    for (size_t i = 0; i < r->nmodels; i++) {
        const char *v = r->models[i].value;
        push(&e, models,
             r->models[i].prefix ? kw_node_string(a, kw_arena_printf(a, "%s*", v), strlen(v) + 1)
                                 : kw_node_cstring(a, v));
    }
    put(&e, match, "models", models);
    if (r->nheaders > 0)
        put(&e, match, "headers", headers(&e, r->headers, r->nheaders));
    if (r->npaths > 0) {
        struct kw_node *ps = seq(&e);
        for (size_t i = 0; i < r->npaths; i++)
            push(&e, ps, kw_node_cstring(a, r->paths[i]));
        put(&e, match, "paths", ps);
    }
    put(&e, spec, "match", match);

    struct kw_node *refs = seq(&e);
    for (size_t i = 0; i < r->nrefs; i++) {
        struct kw_node *m = map(&e);
        put_str(&e, m, "name", r->refs[i].name);
        put_int(&e, m, "weight", r->refs[i].weight);
        put_int(&e, m, "priority", r->refs[i].priority);
        put_str(&e, m, "modelOverride", r->refs[i].model_override);
        push(&e, refs, m);
    }
    put(&e, spec, "backendRefs", refs);
    put_duration(&e, spec, "timeout", r->timeout_ms);
    put_duration(&e, spec, "streamIdleTimeout", r->stream_idle_timeout_ms);
    if (r->nrate_limits > 0)
        put(&e, spec, "rateLimits", rate_limits(&e, r->rate_limits, r->nrate_limits));
    if (r->estimated_output_tokens != KW_DEFAULT_ESTIMATED_OUTPUT)
        put_int(&e, spec, "estimatedOutputTokens", r->estimated_output_tokens);
    if (r->max_output_tokens != 0)
        put_int(&e, spec, "maxOutputTokens", r->max_output_tokens);
    if (r->consumers.nnamespaces > 0 || r->consumers.nmatch > 0) {
        struct kw_node *cm = map(&e);
        if (r->consumers.nnamespaces > 0) {
            struct kw_node *ns = seq(&e);
            for (size_t i = 0; i < r->consumers.nnamespaces; i++)
                push(&e, ns, kw_node_cstring(e.a, r->consumers.namespaces[i]));
            put(&e, cm, "namespaces", ns);
        }
        if (r->consumers.nmatch > 0) {
            struct kw_node *ma = map(&e);
            for (size_t i = 0; i < r->consumers.nmatch; i++)
                put_str(&e, ma, r->consumers.match[i].name, r->consumers.match[i].value);
            put(&e, cm, "matchAttributes", ma);
        }
        put(&e, spec, "consumers", cm);
    }
    if (r->load_balancer.strategy != KW_LB_WEIGHTED_RANDOM || r->load_balancer.client_override) {
        static const char *const strategies[] = {"WeightedRandom", "RoundRobin", "LeastRequest",
                                                 "Latency"};
        struct kw_node *lb = map(&e);
        put_str(&e, lb, "strategy", strategies[r->load_balancer.strategy]);
        if (r->load_balancer.client_override)
            put(&e, lb, "clientOverride", kw_node_bool(a, true));
        put(&e, spec, "loadBalancer", lb);
    }
    if (r->retry.attempts == 0 &&
        r->retry.retry_on == (KW_RETRY_CONNECT_FAILURE | KW_RETRY_RESET | KW_RETRY_5XX) &&
        r->retry.backoff_base_ms == KW_DEFAULT_BACKOFF_BASE_MS &&
        r->retry.backoff_max_ms == KW_DEFAULT_BACKOFF_MAX_MS && r->retry.per_try_timeout_ms == 0 &&
        r->retry.budget_percent == KW_DEFAULT_RETRY_BUDGET_PERCENT &&
        r->retry.mid_stream == KW_MID_STREAM_NONE)
        return e.failed ? NULL : spec; /* the defaults: written only when changed */
    struct kw_node *rt = map(&e);
    static const char *const retry_on[] = {"connect-failure", "reset", "timeout", "5xx", "429"};
    if (r->retry.attempts > 0)
        put_int(&e, rt, "attempts", r->retry.attempts);
    struct kw_node *on = seq(&e);
    for (unsigned i = 0; i < KW_ARRAY_LEN(retry_on); i++)
        if (r->retry.retry_on & (1u << i))
            push(&e, on, kw_node_cstring(a, retry_on[i]));
    put(&e, rt, "retryOn", on);
    struct kw_node *bo = map(&e);
    put_duration(&e, bo, "base", r->retry.backoff_base_ms);
    put_duration(&e, bo, "max", r->retry.backoff_max_ms);
    put(&e, rt, "backoff", bo);
    put_duration(&e, rt, "perTryTimeout", r->retry.per_try_timeout_ms);
    put_int(&e, rt, "budgetPercent", r->retry.budget_percent);
    if (r->retry.mid_stream == KW_MID_STREAM_CONTINUE)
        put_str(&e, rt, "midStream", "Continue");
    put(&e, spec, "retry", rt);
    return e.failed ? NULL : spec;
}
