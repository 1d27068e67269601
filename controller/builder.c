/* The snapshot builder: stores -> kw_config -> kw_snapshot, plus the status of every
 * resource (see builder.h). */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

#include "builder.h"
#include "knoway/hash.h"
#include "knoway/config.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"

struct ctl_build *ctl_build_ref(struct ctl_build *b)
{
    if (b != NULL)
        atomic_fetch_add(&b->refs, 1);
    return b;
}

void ctl_build_unref(struct ctl_build *b)
{
    if (b == NULL || atomic_fetch_sub(&b->refs, 1) != 1)
        return;
    for (size_t i = 0; i < b->nstates; i++) {
        free(b->states[i].ns);
        free(b->states[i].name);
        free(b->states[i].accepted_msg);
        free(b->states[i].resolved_msg);
    }
    free(b->states);
    free(b->json);
    free(b->gz);
    free(b);
}

static const char *str_at(const struct kw_node *m, const char *k1, const char *k2)
{
    const struct kw_node *v = kw_node_get(m, k1);
    if (k2 != NULL)
        v = kw_node_get(v, k2);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : NULL;
}

int ctl_resolve_slices(void *ud, struct kw_arena *a, const char *ns, const char *name,
                       uint32_t port, struct kw_endpoint **eps, size_t *neps, char *err,
                       size_t errlen)
{
    struct ctl_store *s = ud;
    size_t n = 0, cap = 16, i, slices = 0;
    struct kw_endpoint *out = kw_arena_alloc(a, cap * sizeof(*out));
    struct kw_arena *tmp = kw_arena_new(KW_MAX_ARENA_BYTES);
    const char *why = NULL;
    if (out == NULL || tmp == NULL) {
        kw_arena_free(tmp);
        snprintf(err, errlen, "out of memory");
        return KW_ERROR;
    }
    pthread_mutex_lock(&s->mu);
    for (const struct ctl_object *o = ctl_store_first(s, &i); o != NULL;
         o = ctl_store_next(s, o, &i)) {
        struct kw_node *sl;
        char perr[128];
        kw_arena_reset(tmp);
        if (kw_json_parse(tmp, o->json, o->len, &sl, perr, sizeof(perr)) != KW_OK)
            continue;
        const char *sns = str_at(sl, "metadata", "namespace");
        const char *svc =
            str_at(kw_node_get(sl, "metadata"), "labels", "kubernetes.io/service-name");
        if (sns == NULL || svc == NULL || strcmp(sns, ns) != 0 || strcmp(svc, name) != 0)
            continue;
        slices++;
        /* the port: the one with this number, else the only one */
        const struct kw_node *ports = kw_node_get(sl, "ports");
        int64_t p = -1;
        bool tls = false;
        for (size_t j = 0; ports != NULL && ports->type == KW_NODE_SEQ && j < ports->n; j++) {
            const struct kw_node *pn = kw_node_get(ports->items[j], "port");
            if (pn == NULL || pn->type != KW_NODE_INT)
                continue;
            if (pn->i == (int64_t)port || ports->n == 1) {
                p = pn->i;
                const char *ap = str_at(ports->items[j], "appProtocol", NULL);
                tls = ap != NULL && strcmp(ap, "https") == 0;
            }
        }
        if (p < 0) {
            why = "no port of the Service's EndpointSlices matches serviceRef.port and there is "
                  "more than one";
            continue;
        }
        const struct kw_node *list = kw_node_get(sl, "endpoints");
        for (size_t j = 0; list != NULL && list->type == KW_NODE_SEQ && j < list->n; j++) {
            const struct kw_node *ep = list->items[j];
            const struct kw_node *ready = kw_node_get(kw_node_get(ep, "conditions"), "ready");
            if (ready != NULL && ready->type == KW_NODE_BOOL && !ready->b)
                continue;
            const struct kw_node *addrs = kw_node_get(ep, "addresses");
            if (addrs == NULL || addrs->type != KW_NODE_SEQ || addrs->n == 0 ||
                addrs->items[0]->type != KW_NODE_STRING)
                continue;
            const char *ip = addrs->items[0]->str;
            bool v6 = strchr(ip, ':') != NULL;
            if (n == cap) {
                struct kw_endpoint *bigger = kw_arena_alloc(a, cap * 2 * sizeof(*out));
                if (bigger == NULL || n >= KW_MAX_ENDPOINTS)
                    break;
                memcpy(bigger, out, n * sizeof(*out));
                out = bigger;
                cap *= 2;
            }
            out[n].url = kw_arena_printf(a, "%s://%s%s%s:%lld", tls ? "https" : "http",
                                         v6 ? "[" : "", ip, v6 ? "]" : "", (long long)p);
            out[n].weight = 1;
            if (out[n].url != NULL)
                n++;
        }
    }
    pthread_mutex_unlock(&s->mu);
    kw_arena_free(tmp);
    if (n == 0) {
        if (slices == 0)
            snprintf(err, errlen, "Service \"%s/%s\" has no EndpointSlices", ns, name);
        else
            snprintf(err, errlen, "Service \"%s/%s\": %s", ns, name,
                     why != NULL ? why : "no ready endpoints");
        return KW_ERROR;
    }
    /* slices come in hash order: sort so that every replica builds the same snapshot */
    for (size_t x = 1; x < n; x++)
        for (size_t y = x; y > 0 && strcmp(out[y - 1].url, out[y].url) > 0; y--) {
            struct kw_endpoint t = out[y];
            out[y] = out[y - 1];
            out[y - 1] = t;
        }
    *eps = out;
    *neps = n;
    return KW_OK;
}

/* ---- the decode cache ---- */

struct cache_entry {
    struct cache_entry *next;
    char *key;
    uint64_t seq;  /* the object's text this decodes (0: none yet) */
    uint64_t seen; /* the last build that read it */
    struct kw_arena *arena;
    struct kw_config_item item;
    struct kw_diag diag; /* what decoding it reported: replayed into every build */
    char *frag;          /* its snapshot entry's canonical text, or NULL */
    size_t frag_len;
    uint64_t frag_sig; /* what else the text depends on (kw_snapshot_fragments) */
};

struct cache_table {
    struct cache_entry **buckets;
    size_t nbuckets, n;
};

enum { CACHE_BACKENDS, CACHE_ROUTES, CACHE_CONSUMERS, CACHE_SECRETS, CACHE__COUNT };

struct ctl_cache {
    struct cache_table t[CACHE__COUNT];
    uint64_t build;
    struct kw_arena *tree; /* parse trees, reset per object */
};

static uint64_t key_hash(const char *s)
{
    return kw_hash_cstr(s);
}

struct ctl_cache *ctl_cache_new(void)
{
    struct ctl_cache *c = calloc(1, sizeof(*c));
    if (c != NULL && (c->tree = kw_arena_new(KW_MAX_ARENA_BYTES)) == NULL) {
        free(c);
        return NULL;
    }
    return c;
}

static void entry_free(struct cache_entry *e)
{
    free(e->frag);
    kw_arena_free(e->arena);
    kw_diag_cleanup(&e->diag);
    free(e->key);
    free(e);
}

void ctl_cache_free(struct ctl_cache *c)
{
    if (c == NULL)
        return;
    for (int t = 0; t < CACHE__COUNT; t++) {
        for (size_t i = 0; i < c->t[t].nbuckets; i++)
            for (struct cache_entry *e = c->t[t].buckets[i], *next; e != NULL; e = next) {
                next = e->next;
                entry_free(e);
            }
        free(c->t[t].buckets);
    }
    kw_arena_free(c->tree);
    free(c);
}

void ctl_cache_stats(const struct ctl_cache *c, size_t *objects, size_t *bytes)
{
    *objects = *bytes = 0;
    for (int t = 0; c != NULL && t < CACHE__COUNT; t++)
        for (size_t i = 0; i < c->t[t].nbuckets; i++)
            for (const struct cache_entry *e = c->t[t].buckets[i]; e != NULL; e = e->next) {
                (*objects)++;
                *bytes += (e->arena != NULL ? kw_arena_total(e->arena) : 0) + e->frag_len;
            }
}

/* The entry for key, created empty when absent; NULL on out-of-memory. */
static struct cache_entry *cache_get(struct cache_table *t, const char *key)
{
    if (t->n + 1 > t->nbuckets) {
        size_t nb = t->nbuckets == 0 ? 64 : t->nbuckets * 2;
        struct cache_entry **b = calloc(nb, sizeof(*b));
        if (b == NULL)
            return NULL;
        for (size_t i = 0; i < t->nbuckets; i++)
            for (struct cache_entry *e = t->buckets[i], *next; e != NULL; e = next) {
                next = e->next;
                size_t j = key_hash(e->key) & (nb - 1);
                e->next = b[j];
                b[j] = e;
            }
        free(t->buckets);
        t->buckets = b;
        t->nbuckets = nb;
    }
    size_t j = key_hash(key) & (t->nbuckets - 1);
    for (struct cache_entry *e = t->buckets[j]; e != NULL; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    struct cache_entry *e = calloc(1, sizeof(*e));
    if (e == NULL || (e->key = strdup(key)) == NULL) {
        free(e);
        return NULL;
    }
    kw_diag_init(&e->diag);
    e->next = t->buckets[j];
    t->buckets[j] = e;
    t->n++;
    return e;
}

/* The entry whose current decoded resource is src, or NULL. */
static struct cache_entry *cache_holding(struct ctl_cache *c, enum kw_kind kind, const void *src)
{
    const struct kw_meta *m = kind == KW_KIND_LLMBACKEND ? &((const struct kw_backend *)src)->meta
                                                         : &((const struct kw_route *)src)->meta;
    struct cache_table *t = &c->t[kind == KW_KIND_LLMBACKEND ? CACHE_BACKENDS : CACHE_ROUTES];
    if (t->nbuckets == 0 || m->name == NULL)
        return NULL;
    /* the key "namespace/name" hashed and compared in its two parts */
    size_t nsl = strlen(m->ns);
    struct kw_hash hs;
    kw_hash_begin(&hs);
    kw_hash_feed(&hs, m->ns, nsl);
    kw_hash_feed(&hs, "/", 1);
    kw_hash_feed(&hs, m->name, strlen(m->name));
    uint64_t h = kw_hash_end(&hs);
    for (struct cache_entry *e = t->buckets[h & (t->nbuckets - 1)]; e != NULL; e = e->next)
        if (strncmp(e->key, m->ns, nsl) == 0 && e->key[nsl] == '/' &&
            strcmp(e->key + nsl + 1, m->name) == 0)
            return e->item.resource == src ? e : NULL;
    return NULL;
}

static const char *frag_get(void *ud, enum kw_kind kind, const void *src, uint64_t sig, size_t *len)
{
    struct cache_entry *e = cache_holding(ud, kind, src);
    if (e == NULL || e->frag == NULL || e->frag_sig != sig)
        return NULL;
    *len = e->frag_len;
    return e->frag;
}

static void frag_put(void *ud, enum kw_kind kind, const void *src, uint64_t sig, const char *text,
                     size_t len)
{
    struct cache_entry *e = cache_holding(ud, kind, src);
    if (e == NULL)
        return;
    free(e->frag);
    e->frag = malloc(len);
    e->frag_len = len;
    e->frag_sig = sig;
    if (e->frag != NULL)
        memcpy(e->frag, text, len);
}

/* Forget the objects the last build did not read (deleted, or Secrets no longer
 * referenced). */
static void cache_sweep(struct cache_table *t, uint64_t build)
{
    for (size_t i = 0; i < t->nbuckets; i++)
        for (struct cache_entry **pp = &t->buckets[i]; *pp != NULL;) {
            struct cache_entry *e = *pp;
            if (e->seen == build) {
                pp = &e->next;
                continue;
            }
            *pp = e->next;
            entry_free(e);
            t->n--;
        }
}

/* Decode o into e. The resource's arena starts at a quarter of the text's size plus
 * 512 bytes (a decoded object copies its strings and adds its structs): one block for
 * most objects, where the default 4 KiB block cost 40 MiB at 10,000 objects. */
static void cache_decode(struct ctl_cache *c, struct cache_entry *e, const struct ctl_object *o)
{
    kw_arena_free(e->arena);
    kw_diag_cleanup(&e->diag);
    kw_diag_init(&e->diag);
    memset(&e->item, 0, sizeof(e->item));
    free(e->frag);
    e->frag = NULL;
    e->arena = kw_arena_new_sized(KW_MAX_ARENA_BYTES, o->len / 4 + 512);
    e->seq = o->seq;
    kw_arena_reset(c->tree);
    if (e->arena == NULL) {
        kw_diag_add(&e->diag, NULL, 0, 0, NULL, NULL, "out of memory decoding %s", o->key);
        e->seq = 0; /* tried again next build */
        return;
    }
    kw_config_decode_json(e->arena, c->tree, o->json, o->len, &e->diag, &e->item);
}

/* Add every object of a store to cfg; keep (may be NULL) filters by "namespace/name".
 * With a cache table, unchanged objects come decoded from it. */
static void add_store(struct kw_config *cfg, struct ctl_store *s,
                      bool (*keep)(void *ctx, const char *key), void *ctx, struct ctl_cache *c,
                      int table)
{
    size_t i;
    pthread_mutex_lock(&s->mu);
    for (const struct ctl_object *o = ctl_store_first(s, &i); o != NULL;
         o = ctl_store_next(s, o, &i)) {
        if (keep != NULL && !keep(ctx, o->key))
            continue;
        struct cache_entry *e = c != NULL ? cache_get(&c->t[table], o->key) : NULL;
        if (e == NULL) {
            kw_config_add_json(cfg, o->json, o->len);
            continue;
        }
        if (e->seq != o->seq || o->seq == 0)
            cache_decode(c, e, o);
        e->seen = c->build;
        for (size_t k = 0; k < e->diag.n; k++) {
            const struct kw_diag_entry *d = &e->diag.entries[k];
            kw_diag_add(&cfg->diag, d->file, d->line, d->col, d->object, d->path, "%s", d->message);
        }
        cfg->diag.dropped += e->diag.dropped;
        if (e->item.resource != NULL)
            kw_config_add_item(cfg, &e->item);
    }
    pthread_mutex_unlock(&s->mu);
    if (c != NULL)
        cache_sweep(&c->t[table], c->build);
}

/* The Secrets backends and consumers reference, as sorted "namespace/name" keys: only
 * those go into the config (a cluster holds many others), found in O(log n). */
struct secret_refs {
    char **keys;
    size_t n, cap;
};

static void add_ref(struct secret_refs *r, struct kw_arena *a, const char *ns, const char *name)
{
    if (name == NULL)
        return;
    if (r->n == r->cap) {
        size_t cap = r->cap != 0 ? r->cap * 2 : 64;
        char **p = realloc(r->keys, cap * sizeof(*p));
        if (p == NULL)
            return; /* the Secret is then reported missing: visible, not silent */
        r->keys = p;
        r->cap = cap;
    }
    char *k = kw_arena_printf(a, "%s/%s", ns, name);
    if (k != NULL)
        r->keys[r->n++] = k;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(char *const *)x, *(char *const *)y);
}

static void collect_refs(const struct kw_config *cfg, struct secret_refs *r)
{
    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct kw_backend *b = cfg->backends[i];
        if (b->meta.name == NULL)
            continue;
        add_ref(r, cfg->arena, b->meta.ns, b->credentials.secret_ref.name);
        add_ref(r, cfg->arena, b->meta.ns, b->upstream.tls.ca_secret_ref.name);
    }
    for (size_t i = 0; i < cfg->nconsumers; i++) { /* a consumer's API keys */
        const struct kw_consumer *c = cfg->consumers[i];
        for (size_t j = 0; c->meta.name != NULL && j < c->napi_keys; j++)
            add_ref(r, cfg->arena, c->meta.ns, c->api_keys[j].name);
    }
    if (r->n > 1)
        qsort(r->keys, r->n, sizeof(*r->keys), cmp_str);
}

static bool referenced(void *ctx, const char *key)
{
    const struct secret_refs *r = ctx;
    return r->n > 0 && bsearch(&key, r->keys, r->n, sizeof(*r->keys), cmp_str) != NULL;
}

static bool is_ref_path(const char *path)
{
    return path != NULL &&
           (strstr(path, "secretRef") != NULL || strstr(path, "SecretRef") != NULL ||
            strncmp(path, "spec.credentials.bedrock.", 25) == 0 ||
            strncmp(path, "spec.backendRefs", 16) == 0 ||
            strncmp(path, "spec.upstream.serviceRef", 24) == 0);
}

static int cmp_state(const void *x, const void *y)
{
    const struct ctl_resource_state *a = x, *b = y;
    if (a->kind != b->kind)
        return a->kind < b->kind ? -1 : 1;
    int c = strcmp(a->ns, b->ns);
    return c != 0 ? c : strcmp(a->name, b->name);
}

static struct ctl_resource_state *find_state(struct ctl_build *b, enum kw_kind k, const char *ns,
                                             const char *name)
{
    struct ctl_resource_state key = {.kind = k, .ns = (char *)ns, .name = (char *)name};
    return bsearch(&key, b->states, b->nstates, sizeof(key), cmp_state);
}

const struct ctl_resource_state *ctl_build_find(const struct ctl_build *b, enum kw_kind k,
                                                const char *ns, const char *name)
{
    return find_state((struct ctl_build *)b, k, ns, name);
}

static void set_msg(char **slot, const struct kw_diag_entry *e)
{
    if (*slot != NULL)
        return; /* the first error is the one shown */
    if (e->path != NULL && asprintf(slot, "%s: %s", e->path, e->message) != -1)
        return;
    *slot = strdup(e->message);
}

static void add_state(struct ctl_build *b, enum kw_kind k, const struct kw_meta *m)
{
    struct ctl_resource_state *s = &b->states[b->nstates++];
    s->kind = k;
    s->ns = strdup(m->ns);
    s->name = strdup(m->name);
    s->generation = m->generation;
    s->order = m->order;
    s->accepted = s->resolved = true;
}

/* gzip of the snapshot text (zlib, level 1: about a tenth of the size, a few ms per MiB);
 * NULL when it does not compress (then the text is sent). */
static void compress_text(struct ctl_build *b)
{
    z_stream z = {0};
    if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return;
    uLong cap = deflateBound(&z, (uLong)b->len);
    unsigned char *out = malloc(cap);
    z.next_in = (unsigned char *)b->json;
    z.avail_in = (uInt)b->len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    if (out != NULL && deflate(&z, Z_FINISH) == Z_STREAM_END && z.total_out < b->len) {
        b->gz = (char *)out;
        b->gzlen = z.total_out;
        out = NULL;
    }
    deflateEnd(&z);
    free(out);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

struct ctl_build *ctl_build_run(const struct ctl_sources *src)
{
    int64_t t0 = now_us();
    struct ctl_build *b = calloc(1, sizeof(*b));
    struct kw_config *cfg = kw_config_new();
    if (b == NULL)
        goto fail;
    atomic_init(&b->refs, 1);
    cfg->claim_namespaces = src->claim_namespaces;
    cfg->nclaim_namespaces = src->nclaim_namespaces;
    struct ctl_cache *c = src->cache;
    if (c != NULL)
        c->build++;
    add_store(cfg, src->backends, NULL, NULL, c, CACHE_BACKENDS);
    add_store(cfg, src->routes, NULL, NULL, c, CACHE_ROUTES);
    if (src->consumers != NULL)
        add_store(cfg, src->consumers, NULL, NULL, c, CACHE_CONSUMERS);
    struct secret_refs refs = {0};
    collect_refs(cfg, &refs);
    add_store(cfg, src->secrets, referenced, &refs, c, CACHE_SECRETS);
    free(refs.keys);
    kw_config_check(cfg);
    struct kw_buf text;
    kw_buf_init(&text, KW_MAX_SNAPSHOT_BYTES);
    struct kw_snapshot_summary sum;
    struct kw_snapshot_fragments frag = {frag_get, frag_put, c};
    if (kw_snapshot_write(cfg, ctl_resolve_slices, src->slices, &cfg->diag, &text, &sum,
                          c != NULL ? &frag : NULL) != KW_OK) {
        kw_buf_cleanup(&text);
        goto fail;
    }
    snprintf(b->version, sizeof(b->version), "%s", sum.version);
    b->nbackends = sum.nbackends;
    b->nroutes = sum.nroutes;
    b->nconsumers = sum.nconsumers;
    b->json = text.data;
    b->len = text.len;
    compress_text(b);

    b->states = calloc(cfg->nbackends + cfg->nroutes + cfg->nconsumers + 1, sizeof(*b->states));
    if (b->states == NULL) {
        kw_snapshot_summary_cleanup(&sum);
        goto fail;
    }
    for (size_t i = 0; i < cfg->nbackends; i++)
        if (cfg->backends[i]->meta.name != NULL)
            add_state(b, KW_KIND_LLMBACKEND, &cfg->backends[i]->meta);
    for (size_t i = 0; i < cfg->nroutes; i++)
        if (cfg->routes[i]->meta.name != NULL) {
            add_state(b, KW_KIND_LLMROUTE, &cfg->routes[i]->meta);
            b->states[b->nstates - 1].conflicted = cfg->routes[i]->conflicted;
        }
    for (size_t i = 0; i < cfg->nconsumers; i++)
        if (cfg->consumers[i]->meta.name != NULL)
            add_state(b, KW_KIND_LLMCONSUMER, &cfg->consumers[i]->meta);
    qsort(b->states, b->nstates, sizeof(*b->states), cmp_state);
    /* each config resource's state and whether a backend is in the snapshot, by position:
     * no search by name per resource (they were a tenth of a build after one change) */
    struct ctl_resource_state **bst = calloc(cfg->nbackends + 1, sizeof(*bst));
    struct ctl_resource_state **rst = calloc(cfg->nroutes + 1, sizeof(*rst));
    struct ctl_resource_state **ust = calloc(cfg->nconsumers + 1, sizeof(*ust));
    bool *in_snap = calloc(cfg->nbackends + 1, sizeof(*in_snap));
    if (bst == NULL || rst == NULL || ust == NULL || in_snap == NULL) {
        free(bst);
        free(rst);
        free(ust);
        free(in_snap);
        kw_snapshot_summary_cleanup(&sum);
        goto fail;
    }
    for (size_t i = 0; i < b->nstates; i++) {
        struct ctl_resource_state *st = &b->states[i];
        if (st->kind == KW_KIND_LLMBACKEND && st->order < cfg->nbackends)
            bst[st->order] = st;
        else if (st->kind == KW_KIND_LLMROUTE && st->order < cfg->nroutes)
            rst[st->order] = st;
        else if (st->kind == KW_KIND_LLMCONSUMER && st->order < cfg->nconsumers)
            ust[st->order] = st;
    }
    for (size_t i = 0; i < sum.nbackends; i++)
        if (sum.backends[i].order < cfg->nbackends)
            in_snap[sum.backends[i].order] = true;
    for (size_t i = 0; i < cfg->nroutes;
         i++) { /* routes whose backend is invalid: the precise reason first */
        const struct kw_route *r = cfg->routes[i];
        struct ctl_resource_state *s = rst[i];
        for (size_t j = 0; s != NULL && j < r->nrefs; j++) {
            const struct kw_backend *t = r->refs[j].backend;
            if (t == NULL || (t->meta.order < cfg->nbackends && in_snap[t->meta.order]))
                continue;
            s->resolved = false;
            if (s->resolved_msg == NULL &&
                asprintf(&s->resolved_msg,
                         "spec.backendRefs[%zu].name: LLMBackend \"%s/%s\" is not programmed "
                         "(see its status)",
                         j, t->meta.ns, t->meta.name) == -1)
                s->resolved_msg = NULL;
        }
    }
    b->nerrors = kw_diag_count(&cfg->diag);
    for (size_t i = 0; i < cfg->diag.n; i++) {
        const struct kw_diag_entry *e = &cfg->diag.entries[i];
        char kind[32], ns[KW_MAX_NAMESPACE_LEN + 1], name[KW_MAX_NAME_LEN + 1];
        if (!kw_diag_object(e, kind, sizeof(kind), ns, sizeof(ns), name, sizeof(name)))
            continue;
        enum kw_kind k = strcmp(kind, "LLMBackend") == 0    ? KW_KIND_LLMBACKEND
                         : strcmp(kind, "LLMRoute") == 0    ? KW_KIND_LLMROUTE
                         : strcmp(kind, "LLMConsumer") == 0 ? KW_KIND_LLMCONSUMER
                                                            : KW_KIND_SECRET;
        struct ctl_resource_state *s = find_state(b, k, ns, name);
        if (s == NULL)
            continue;
        if (is_ref_path(e->path)) {
            s->resolved = false;
            set_msg(&s->resolved_msg, e);
            /* a Secret the informer does not see because it lacks the label */
            if (src->secret_selector != NULL && e->code == KW_DIAG_SECRET_MISSING &&
                !s->label_hint) {
                char *hint;
                if (asprintf(&hint, "%s (the controller reads only Secrets labelled %s)",
                             s->resolved_msg, src->secret_selector) != -1) {
                    free(s->resolved_msg);
                    s->resolved_msg = hint;
                    s->label_hint = true;
                }
            }
        } else {
            s->accepted = false;
            set_msg(&s->accepted_msg, e);
        }
    }
    for (size_t i = 0; i < cfg->nbackends; i++)
        if (bst[i] != NULL)
            bst[i]->programmed = in_snap[i];
    for (size_t i = 0; i < sum.nconsumers; i++)
        if (sum.consumers[i].order < cfg->nconsumers && ust[sum.consumers[i].order] != NULL)
            ust[sum.consumers[i].order]->programmed = true;
    for (size_t i = 0; i < sum.nroutes; i++)
        if (sum.routes[i].order < cfg->nroutes && rst[sum.routes[i].order] != NULL)
            rst[sum.routes[i].order]->programmed = true;
    free(bst);
    free(rst);
    free(ust);
    free(in_snap);
    kw_snapshot_summary_cleanup(&sum);
    kw_config_free(cfg);
    /* the build's tens of MiB at 10,000 resources go back to the system, not to a heap
     * high-water mark held until the next build */
    malloc_trim(0);
    b->build_us = now_us() - t0;
    return b;
fail:
    kw_config_free(cfg);
    ctl_build_unref(b);
    return NULL;
}

static void *builder_main(void *arg)
{
    struct ctl_builder *bl = arg;
    pthread_mutex_lock(&bl->mu);
    for (;;) {
        while (!bl->dirty && !bl->stop)
            pthread_cond_wait(&bl->cond, &bl->mu);
        if (bl->stop)
            break;
        /* adaptive debounce: a change after a quiet spell (no build for debounce_ms) is
         * built at once; changes while builds are recent are coalesced until quiet for
         * debounce_ms, or 10x that since the first of them */
        int64_t now = ctl_now_ms();
        int64_t due = bl->last_kick_ms + bl->debounce_ms;
        if (due > bl->first_kick_ms + 10 * bl->debounce_ms)
            due = bl->first_kick_ms + 10 * bl->debounce_ms;
        if (bl->first_kick_ms - bl->last_build_ms >= bl->debounce_ms)
            due = bl->first_kick_ms; /* idle before this change */
        if (now < due) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            int64_t ns = ts.tv_nsec + (due - now) * 1000000;
            ts.tv_sec += ns / 1000000000;
            ts.tv_nsec = ns % 1000000000;
            pthread_cond_timedwait(&bl->cond, &bl->mu, &ts);
            continue;
        }
        bl->dirty = false;
        if (bl->ready != NULL && !bl->ready(bl->ud))
            continue; /* the list that completes the view kicks again */
        pthread_mutex_unlock(&bl->mu);
        struct ctl_build *b = ctl_build_run(&bl->src);
        int64_t built = ctl_now_ms();
        if (b != NULL) {
            atomic_fetch_add(&bl->builds, 1);
            bl->on_build(bl->ud, b);
            ctl_build_unref(b);
        } else {
            kw_log(KW_LOG_ERROR, "snapshot build failed (out of memory or too large)", NULL);
        }
        pthread_mutex_lock(&bl->mu);
        bl->last_build_ms = built;
    }
    pthread_mutex_unlock(&bl->mu);
    return NULL;
}

void ctl_builder_kick(void *builder)
{
    struct ctl_builder *bl = builder;
    pthread_mutex_lock(&bl->mu);
    int64_t now = ctl_now_ms();
    if (!bl->dirty)
        bl->first_kick_ms = now;
    bl->last_kick_ms = now;
    bl->dirty = true;
    pthread_cond_signal(&bl->cond);
    pthread_mutex_unlock(&bl->mu);
}

int ctl_builder_start(struct ctl_builder *bl)
{
    pthread_mutex_init(&bl->mu, NULL);
    pthread_cond_init(&bl->cond, NULL);
    return pthread_create(&bl->thread, NULL, builder_main, bl) == 0 ? KW_OK : KW_ERROR;
}

void ctl_builder_stop(struct ctl_builder *bl)
{
    pthread_mutex_lock(&bl->mu);
    bl->stop = true;
    pthread_cond_signal(&bl->cond);
    pthread_mutex_unlock(&bl->mu);
    pthread_join(bl->thread, NULL);
    pthread_cond_destroy(&bl->cond);
    pthread_mutex_destroy(&bl->mu);
}
