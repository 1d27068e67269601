/* Encoding resource specs back into kw_node trees, every default filled in: what the
 * snapshot carries. kw_decode_*_spec(kw_encode_*_spec(x)) gives x back. */
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
        put(&e, spec, "credentials", cr);
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
    return e.failed ? NULL : spec;
}
