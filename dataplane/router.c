#include <openssl/crypto.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/hash.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "dp_limits.h"
#include "router.h"

static int specificity_cmp(const void *x, const void *y)
{
    const struct dp_match *a = x, *b = y;
    if (a->model->prefix != b->model->prefix)
        return a->model->prefix ? 1 : -1;
    size_t la = strlen(a->model->value), lb = strlen(b->model->value);
    if (a->model->prefix && la != lb)
        return la > lb ? -1 : 1;
    size_t ca = a->route->nheaders + (a->route->npaths > 0);
    size_t cb = b->route->nheaders + (b->route->npaths > 0);
    if (ca != cb)
        return ca > cb ? -1 : 1;
    if (a->age != b->age)
        return a->age < b->age ? -1 : 1;
    return 0;
}

bool dp_consumer_allows(const struct kw_consumer *c, const char *model)
{
    if (c == NULL || c->nmodels == 0)
        return true;
    for (size_t i = 0; i < c->nmodels; i++) {
        const struct kw_model_match *m = &c->models[i];
        if (m->prefix ? strncmp(model, m->value, strlen(m->value)) == 0
                      : strcmp(model, m->value) == 0)
            return true;
    }
    return false;
}

bool dp_route_admits(const struct kw_route *r, const struct kw_consumer *c)
{
    if (r == NULL || c == NULL)
        return true; /* anonymous, or a token without a consumer: the platform's callers */
    bool ns = r->consumers.nnamespaces == 0 && strcmp(c->meta.ns, r->meta.ns) == 0;
    for (size_t i = 0; !ns && i < r->consumers.nnamespaces; i++)
        ns = strcmp(r->consumers.namespaces[i], "*") == 0 ||
             strcmp(r->consumers.namespaces[i], c->meta.ns) == 0;
    if (!ns)
        return false;
    for (size_t i = 0; i < r->consumers.nmatch; i++) {
        bool found = false;
        for (size_t j = 0; j < c->nattributes && !found; j++)
            found = strcmp(c->attributes[j].name, r->consumers.match[i].name) == 0 &&
                    strcmp(c->attributes[j].value, r->consumers.match[i].value) == 0;
        if (!found)
            return false;
    }
    return true;
}

static int models_json(const struct dp_table *t, const struct kw_consumer *c, struct kw_buf *out)
{
    struct kw_buf b;
    kw_buf_init(&b, 16 * 1024 * 1024);
    int rc = kw_buf_puts(&b, "{\"object\":\"list\",\"data\":[");
    size_t n = 0;
    for (size_t i = 0; i < t->nmatches; i++) {
        const struct kw_model_match *m = t->matches[i].model;
        if (m->prefix)
            continue; /* a prefix names no model a client could list */
        bool seen = false;
        for (size_t j = 0; j < i && !seen; j++)
            seen =
                !t->matches[j].model->prefix && strcmp(t->matches[j].model->value, m->value) == 0;
        if (seen || !dp_consumer_allows(c, m->value) || !dp_route_admits(t->matches[i].route, c))
            continue;
        rc |= kw_buf_puts(&b, n++ > 0 ? ",{\"id\":" : "{\"id\":");
        rc |= kw_json_write_string(&b, m->value, strlen(m->value));
        rc |= kw_buf_puts(&b, ",\"object\":\"model\",\"created\":0,\"owned_by\":\"knoway\"}");
    }
    rc |= kw_buf_puts(&b, "]}");
    if (rc != KW_OK) {
        kw_buf_cleanup(&b);
        return KW_ERROR;
    }
    *out = b;
    return KW_OK;
}

int dp_table_models_for(const struct dp_table *t, const struct kw_consumer *c, struct kw_buf *out)
{
    return models_json(t, c, out);
}

static int build_models(struct dp_table *t)
{
    struct kw_buf b;
    if (models_json(t, NULL, &b) != KW_OK)
        return KW_ERROR;
    t->models_json = b.data;
    t->models_len = b.len;
    return KW_OK;
}

static int unhex(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c - 'a' + 10;
}

static size_t key_slot(const unsigned char *digest, size_t cap)
{
    /* a SHA-256 of a key a tenant may choose: a tenant could grind keys whose digests share
     * low bits, so the slot is a keyed hash of the digest, not its bytes */
    return (size_t)(kw_hash_mem(digest, 32) & (cap - 1));
}

/* Every consumer's key digests into an open-addressing table. A digest two consumers
 * share belongs to the first (the controller reports such duplicates on the consumers). */
static int build_keys(struct dp_table *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->snap->nconsumers; i++)
        n += t->snap->consumers[i]->nkey_hashes;
    size_t cap = 16;
    while (cap < 2 * n + 2)
        cap *= 2;
    t->keys = calloc(cap, sizeof(*t->keys));
    if (t->keys == NULL)
        return KW_ERROR;
    t->nkeys_cap = cap;
    for (size_t i = 0; i < t->snap->nconsumers; i++) {
        const struct kw_consumer *c = t->snap->consumers[i];
        for (size_t j = 0; j < c->nkey_hashes; j++) {
            unsigned char d[32];
            for (int k = 0; k < 32; k++)
                d[k] = (unsigned char)(unhex(c->key_hashes[j][2 * k]) << 4 |
                                       unhex(c->key_hashes[j][2 * k + 1]));
            size_t at = key_slot(d, cap);
            bool dup = false;
            while (t->keys[at].consumer != NULL && !dup) {
                dup = memcmp(t->keys[at].digest, d, 32) == 0;
                at = (at + 1) & (cap - 1);
            }
            if (dup)
                continue;
            memcpy(t->keys[at].digest, d, 32);
            t->keys[at].consumer = c;
        }
    }
    return KW_OK;
}

const struct kw_consumer *dp_table_consumer(const struct dp_table *t,
                                            const unsigned char digest[32])
{
    if (t->keys == NULL)
        return NULL;
    for (size_t at = key_slot(digest, t->nkeys_cap);; at = (at + 1) & (t->nkeys_cap - 1)) {
        const struct dp_key *k = &t->keys[at];
        if (k->consumer == NULL)
            return NULL;
        if (CRYPTO_memcmp(k->digest, digest, 32) == 0)
            return k->consumer;
    }
}

const struct kw_consumer *dp_table_consumer_named(const struct dp_table *t, const char *name)
{
    const struct kw_snapshot *sn = t->snap;
    const char *slash = strchr(name, '/');
    const struct kw_consumer *found = NULL;
    if (slash != NULL) { /* sorted by namespace/name: binary search */
        size_t nl = (size_t)(slash - name), lo = 0, hi = sn->nconsumers;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            const struct kw_meta *m = &sn->consumers[mid]->meta;
            int c = strncmp(m->ns, name, nl);
            if (c == 0)
                c = m->ns[nl] == '\0' ? strcmp(m->name, slash + 1) : 1;
            if (c == 0)
                return sn->consumers[mid];
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        return NULL;
    }
    for (size_t i = 0; i < sn->nconsumers; i++)
        if (strcmp(sn->consumers[i]->meta.name, name) == 0) {
            if (found != NULL)
                return NULL; /* the same name in two namespaces: ambiguous */
            found = sn->consumers[i];
        }
    return found;
}

struct dp_table *dp_table_new(struct kw_snapshot *snap)
{
    struct dp_table *t = calloc(1, sizeof(*t));
    if (t == NULL) {
        kw_snapshot_unref(snap);
        return NULL;
    }
    atomic_init(&t->refs, 1);
    t->snap = snap;
    size_t n = 0;
    for (size_t i = 0; i < snap->nroutes; i++)
        n += snap->routes[i]->nmodels;
    t->matches = calloc(n + 1, sizeof(*t->matches));
    if (t->matches == NULL) {
        dp_table_unref(t);
        return NULL;
    }
    for (size_t i = 0; i < snap->nroutes; i++)
        for (size_t j = 0; j < snap->routes[i]->nmodels; j++)
            t->matches[t->nmatches++] =
                (struct dp_match){snap->routes[i], &snap->routes[i]->models[j], i};
    qsort(t->matches, t->nmatches, sizeof(*t->matches), specificity_cmp);
    if (build_models(t) != KW_OK || build_keys(t) != KW_OK) {
        dp_table_unref(t);
        return NULL;
    }
    return t;
}

struct dp_table *dp_table_ref(struct dp_table *t)
{
    if (t != NULL)
        atomic_fetch_add_explicit(&t->refs, 1, memory_order_relaxed);
    return t;
}

void dp_table_unref(struct dp_table *t)
{
    if (t == NULL || atomic_fetch_sub_explicit(&t->refs, 1, memory_order_acq_rel) != 1)
        return;
    kw_snapshot_unref(t->snap);
    free(t->matches);
    free(t->models_json);
    free(t->keys);
    free(t);
}

static bool route_fits(const struct kw_route *r, const char *path, dp_header_fn header, void *ud)
{
    if (r->npaths > 0) {
        bool ok = false;
        for (size_t i = 0; i < r->npaths && !ok; i++)
            ok = strcmp(r->paths[i], path) == 0;
        if (!ok)
            return false;
    }
    for (size_t i = 0; i < r->nheaders; i++) {
        const char *v = header(ud, r->headers[i].name);
        if (v == NULL || strcmp(v, r->headers[i].value) != 0)
            return false;
    }
    return true;
}

const struct dp_match *dp_table_match(const struct dp_table *t, const char *model, const char *path,
                                      dp_header_fn header, void *ud)
{
    size_t mlen = strlen(model);
    for (size_t i = 0; i < t->nmatches; i++) {
        const struct kw_model_match *m = t->matches[i].model;
        bool fits = m->prefix ? strncmp(model, m->value, strlen(m->value)) == 0
                              : strlen(m->value) == mlen && memcmp(m->value, model, mlen) == 0;
        if (fits && route_fits(t->matches[i].route, path, header, ud))
            return &t->matches[i];
    }
    return NULL;
}

const struct kw_route *dp_table_route(const struct dp_table *t, const char *model, const char *path,
                                      dp_header_fn header, void *ud)
{
    const struct dp_match *m = dp_table_match(t, model, path, header, ud);
    return m != NULL ? m->route : NULL;
}

unsigned dp_route_attempts(const struct kw_route *r)
{
    if (r->retry.attempts > 0)
        return r->retry.attempts < DP_MAX_ATTEMPTS ? r->retry.attempts : DP_MAX_ATTEMPTS;
    size_t targets = 0; /* each backend, or each of its endpoints, once */
    for (size_t i = 0; i < r->nrefs; i++) {
        const struct kw_backend *b = r->refs[i].backend;
        targets += b != NULL && b->upstream.base_url == NULL && b->upstream.nendpoints > 1
                       ? b->upstream.nendpoints
                       : 1;
    }
    return targets < DP_MAX_ATTEMPTS ? (unsigned)targets : DP_MAX_ATTEMPTS;
}
