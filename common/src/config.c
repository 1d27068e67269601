/* A set of resources: add documents, then check names and references as a whole. */
#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "knoway/config.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/yaml.h"

struct kw_config *kw_config_new(void)
{
    struct kw_config *cfg = calloc(1, sizeof(*cfg));
    if (cfg == NULL)
        abort();
    cfg->arena = kw_arena_new(KW_MAX_ARENA_BYTES);
    if (cfg->arena == NULL)
        abort();
    kw_dataplane_defaults(&cfg->dataplane);
    kw_diag_init(&cfg->diag);
    return cfg;
}

void kw_config_free(struct kw_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->backends);
    free(cfg->routes);
    free(cfg->secrets);
    free(cfg->consumers);
    free(cfg->backend_index);
    free(cfg->secret_index);
    kw_diag_cleanup(&cfg->diag);
    kw_arena_free(cfg->arena);
    free(cfg);
}

static int append(void ***arr, size_t *n, size_t *cap, void *item)
{
    if (*n == *cap) {
        size_t ncap = *cap != 0 ? *cap * 2 : 16;
        void **p = realloc(*arr, ncap * sizeof(*p));
        if (p == NULL)
            return KW_ERROR;
        *arr = p;
        *cap = ncap;
    }
    (*arr)[(*n)++] = item;
    return KW_OK;
}

static bool *valid_flag(enum kw_kind k, void *res)
{
    switch (k) {
    case KW_KIND_LLMBACKEND:
        return &((struct kw_backend *)res)->valid;
    case KW_KIND_LLMROUTE:
        return &((struct kw_route *)res)->valid;
    case KW_KIND_SECRET:
        return &((struct kw_secret *)res)->valid;
    case KW_KIND_LLMCONSUMER:
        return &((struct kw_consumer *)res)->valid;
    case KW_KIND_DATAPLANE:
        break;
    }
    return NULL;
}

static void *resource_of(const struct kw_decoded *dec)
{
    switch (dec->kind) {
    case KW_KIND_LLMBACKEND:
        return dec->backend;
    case KW_KIND_LLMROUTE:
        return dec->route;
    case KW_KIND_SECRET:
        return dec->secret;
    case KW_KIND_LLMCONSUMER:
        return dec->consumer;
    case KW_KIND_DATAPLANE:
        return dec->dataplane;
    }
    return NULL;
}

/* Append a decoded resource (file, line, col: where it was read, for the message about a
 * second DataPlane). */
static int append_resource(struct kw_config *cfg, enum kw_kind kind, void *res, const char *file,
                           unsigned line, unsigned col)
{
    int rc = KW_OK;
    switch (kind) {
    case KW_KIND_LLMBACKEND:
        ((struct kw_backend *)res)->meta.order = cfg->nbackends;
        rc = append((void ***)&cfg->backends, &cfg->nbackends, &cfg->cap_backends, res);
        break;
    case KW_KIND_LLMROUTE:
        ((struct kw_route *)res)->meta.order = cfg->nroutes;
        rc = append((void ***)&cfg->routes, &cfg->nroutes, &cfg->cap_routes, res);
        break;
    case KW_KIND_SECRET:
        ((struct kw_secret *)res)->meta.order = cfg->nsecrets;
        rc = append((void ***)&cfg->secrets, &cfg->nsecrets, &cfg->cap_secrets, res);
        break;
    case KW_KIND_LLMCONSUMER:
        ((struct kw_consumer *)res)->meta.order = cfg->nconsumers;
        rc = append((void ***)&cfg->consumers, &cfg->nconsumers, &cfg->cap_consumers, res);
        break;
    case KW_KIND_DATAPLANE:
        if (cfg->has_dataplane) {
            kw_diag_add(&cfg->diag, file, line, col, "DataPlane", NULL,
                        "a second DataPlane document (the first is at line %u)",
                        cfg->dataplane.meta.line);
            return KW_ERROR;
        }
        cfg->has_dataplane = true;
        cfg->dataplane = *(struct kw_dataplane *)res;
        break;
    }
    if (rc != KW_OK)
        kw_diag_add(&cfg->diag, file, line, col, NULL, NULL, "out of memory");
    return rc;
}

int kw_config_add_node(struct kw_config *cfg, const struct kw_node *doc, const char *file,
                       bool strict)
{
    struct kw_decoded dec;
    size_t before = kw_diag_count(&cfg->diag);
    if (kw_decode_document(cfg->arena, doc, file, strict, &cfg->diag, &dec) != KW_OK)
        return KW_ERROR;
    if (append_resource(cfg, dec.kind, resource_of(&dec), file, doc->line, doc->col) != KW_OK)
        return KW_ERROR;
    return kw_diag_count(&cfg->diag) == before ? KW_OK : KW_ERROR;
}

int kw_config_add_item(struct kw_config *cfg, const struct kw_config_item *it)
{
    if (it->resource == NULL)
        return KW_ERROR;
    bool *valid = valid_flag(it->kind, it->resource);
    if (valid != NULL)
        *valid = it->valid;
    if (it->kind == KW_KIND_LLMROUTE) { /* set by kw_config_check */
        struct kw_route *r = it->resource;
        r->conflicted = false;
        r->resolved = false;
        for (size_t i = 0; i < r->nrefs; i++)
            r->refs[i].backend = NULL;
    }
    return append_resource(cfg, it->kind, it->resource, NULL, 0, 0);
}

int kw_config_add_yaml(struct kw_config *cfg, const char *file, const char *buf, size_t len)
{
    struct kw_node **docs;
    size_t ndocs;
    if (kw_yaml_parse(cfg->arena, file, buf, len, &docs, &ndocs, &cfg->diag) != KW_OK)
        return KW_ERROR;
    int rc = KW_OK;
    for (size_t i = 0; i < ndocs; i++)
        if (kw_config_add_node(cfg, docs[i], file, true) != KW_OK)
            rc = KW_ERROR;
    return rc;
}

int kw_config_decode_json(struct kw_arena *a, struct kw_arena *tree, const char *buf, size_t len,
                          struct kw_diag *diag, struct kw_config_item *out)
{
    memset(out, 0, sizeof(*out));
    struct kw_node *doc;
    char err[256];
    if (len > KW_MAX_CONFIG_BYTES) {
        kw_diag_add(diag, NULL, 0, 0, NULL, NULL, "object larger than %u bytes",
                    KW_MAX_CONFIG_BYTES);
        return KW_ERROR;
    }
    /* an object nested too deep is cut, not refused whole: it is then reported on its
     * own name (status) and left out, like any other invalid resource */
    if (kw_json_parse_ex(tree, buf, len, KW_MAX_NESTING, true, &doc, err, sizeof(err)) != KW_OK) {
        kw_diag_add(diag, NULL, 0, 0, NULL, NULL, "%s", err);
        return KW_ERROR;
    }
    char cut[KW_MAX_FIELD_PATH];
    bool deep = kw_json_find_cut(doc, cut, sizeof(cut));
    if (deep) { /* reported first (the status shows the first error), on the object's name */
        const struct kw_node *kind = kw_node_get(doc, "kind");
        const struct kw_node *md = kw_node_get(doc, "metadata");
        const struct kw_node *ns = kw_node_get(md, "namespace"), *name = kw_node_get(md, "name");
        char obj[KW_MAX_NAME_LEN + KW_MAX_NAMESPACE_LEN + 64] = "";
        if (kind != NULL && kind->type == KW_NODE_STRING && name != NULL &&
            name->type == KW_NODE_STRING)
            snprintf(obj, sizeof(obj), "%.40s/%.63s/%.253s", kind->str,
                     ns != NULL && ns->type == KW_NODE_STRING ? ns->str : "default", name->str);
        kw_diag_add(diag, NULL, 0, 0, obj[0] != '\0' ? obj : NULL, cut,
                    "nesting deeper than %u levels: the object is left out", KW_MAX_NESTING);
    }
    struct kw_decoded dec;
    size_t before = kw_diag_count(diag);
    if (kw_decode_document(a, doc, NULL, false, diag, &dec) != KW_OK)
        return KW_ERROR;
    out->kind = dec.kind;
    out->resource = resource_of(&dec);
    bool *valid = out->resource != NULL ? valid_flag(dec.kind, out->resource) : NULL;
    if (valid != NULL && deep)
        *valid = false; /* named, the spec is not used */
    out->valid = valid != NULL ? *valid : true;
    return !deep && kw_diag_count(diag) == before ? KW_OK : KW_ERROR;
}

int kw_config_add_json(struct kw_config *cfg, const char *buf, size_t len)
{
    struct kw_config_item it;
    int rc = kw_config_decode_json(cfg->arena, cfg->arena, buf, len, &cfg->diag, &it);
    if (it.resource != NULL && kw_config_add_item(cfg, &it) != KW_OK)
        rc = KW_ERROR;
    return rc;
}

int kw_config_load_file(struct kw_config *cfg, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        kw_diag_add(&cfg->diag, path, 0, 0, NULL, NULL, "cannot open: %s", strerror(errno));
        return KW_ERROR;
    }
    char *buf = malloc(KW_MAX_CONFIG_BYTES + 1);
    if (buf == NULL) {
        fclose(f);
        kw_diag_add(&cfg->diag, path, 0, 0, NULL, NULL, "out of memory");
        return KW_ERROR;
    }
    size_t len = fread(buf, 1, KW_MAX_CONFIG_BYTES + 1, f);
    int rerr = ferror(f);
    fclose(f);
    int rc;
    if (rerr) {
        kw_diag_add(&cfg->diag, path, 0, 0, NULL, NULL, "read error");
        rc = KW_ERROR;
    } else if (len > KW_MAX_CONFIG_BYTES) {
        kw_diag_add(&cfg->diag, path, 0, 0, NULL, NULL, "file is larger than %u bytes",
                    KW_MAX_CONFIG_BYTES);
        rc = KW_ERROR;
    } else {
        rc = kw_config_add_yaml(cfg, path, buf, len);
    }
    free(buf);
    return rc;
}

static int cmp_meta_key(const void *key, const void *item, size_t meta_off)
{
    const struct kw_meta *k = key;
    const struct kw_meta *m = (const struct kw_meta *)(*(const char *const *)item + meta_off);
    int c = strcmp(k->ns, m->ns);
    return c != 0 ? c : strcmp(k->name, m->name);
}

static int cmp_backend_key(const void *key, const void *item)
{
    return cmp_meta_key(key, item, offsetof(struct kw_backend, meta));
}

static int cmp_secret_key(const void *key, const void *item)
{
    return cmp_meta_key(key, item, offsetof(struct kw_secret, meta));
}

struct kw_backend *kw_config_find_backend(const struct kw_config *cfg, const char *ns,
                                          const char *name)
{
    if (cfg->backend_index != NULL && cfg->backends_indexed == cfg->nbackends) {
        if (cfg->nbackend_index == 0)
            return NULL;
        struct kw_meta key = {.ns = ns, .name = name};
        struct kw_backend **b = bsearch(&key, cfg->backend_index, cfg->nbackend_index,
                                        sizeof(*cfg->backend_index), cmp_backend_key);
        return b != NULL ? *b : NULL;
    }
    for (size_t i = 0; i < cfg->nbackends; i++) {
        struct kw_backend *b = cfg->backends[i];
        if (b->meta.name != NULL && strcmp(b->meta.ns, ns) == 0 && strcmp(b->meta.name, name) == 0)
            return b;
    }
    return NULL;
}

struct kw_secret *kw_config_find_secret(const struct kw_config *cfg, const char *ns,
                                        const char *name)
{
    if (cfg->secret_index != NULL && cfg->secrets_indexed == cfg->nsecrets) {
        if (cfg->nsecret_index == 0)
            return NULL;
        struct kw_meta key = {.ns = ns, .name = name};
        struct kw_secret **s = bsearch(&key, cfg->secret_index, cfg->nsecret_index,
                                       sizeof(*cfg->secret_index), cmp_secret_key);
        return s != NULL ? *s : NULL;
    }
    for (size_t i = 0; i < cfg->nsecrets; i++) {
        struct kw_secret *s = cfg->secrets[i];
        if (s->meta.name != NULL && strcmp(s->meta.ns, ns) == 0 && strcmp(s->meta.name, name) == 0)
            return s;
    }
    return NULL;
}

static char *objname(struct kw_config *cfg, enum kw_kind k, const struct kw_meta *m)
{
    return kw_arena_printf(cfg->arena, "%s/%s/%s", kw_kind_name(k), m->ns, m->name);
}

struct named {
    const struct kw_meta *m;
    size_t pos;
};

static int cmp_named(const void *x, const void *y)
{
    const struct named *a = x, *b = y;
    int c = strcmp(a->m->ns, b->m->ns);
    if (c == 0)
        c = strcmp(a->m->name, b->m->name);
    return c != 0 ? c : (a->pos > b->pos) - (a->pos < b->pos);
}

/* The second of two resources with the same namespace/name is reported (in document order)
 * and made invalid. Sorting makes it O(n log n); the first of each name goes to index (when
 * given, allocated here). */
static void check_duplicates(struct kw_config *cfg, enum kw_kind k, void **items, size_t n,
                             size_t meta_off, size_t valid_off, void ***index, size_t *nindex)
{
    struct named *v = malloc((n + 1) * sizeof(*v));
    size_t *first = malloc((n + 1) * sizeof(*first));
    void **out = index != NULL ? malloc((n + 1) * sizeof(*out)) : NULL;
    if (v == NULL || first == NULL || (index != NULL && out == NULL)) {
        kw_diag_add(&cfg->diag, NULL, 0, 0, NULL, NULL, "out of memory checking %s names",
                    kw_kind_name(k));
        goto done;
    }
    size_t m = 0, nout = 0;
    for (size_t i = 0; i < n; i++) {
        first[i] = SIZE_MAX;
        const struct kw_meta *mi = (const struct kw_meta *)((char *)items[i] + meta_off);
        if (mi->name != NULL)
            v[m++] = (struct named){mi, i};
    }
    qsort(v, m, sizeof(*v), cmp_named);
    for (size_t i = 0; i < m; i++) {
        bool same = i > 0 && strcmp(v[i].m->ns, v[i - 1].m->ns) == 0 &&
                    strcmp(v[i].m->name, v[i - 1].m->name) == 0;
        if (!same) {
            if (out != NULL)
                out[nout++] = items[v[i].pos];
            continue;
        }
        first[v[i].pos] = first[v[i - 1].pos] != SIZE_MAX ? first[v[i - 1].pos] : v[i - 1].pos;
    }
    for (size_t i = 0; i < n; i++) {
        if (first[i] == SIZE_MAX)
            continue;
        struct kw_meta *mi = (struct kw_meta *)((char *)items[i] + meta_off);
        const struct kw_meta *mj = (const struct kw_meta *)((char *)items[first[i]] + meta_off);
        char where[300] = "";
        if (mj->file != NULL)
            snprintf(where, sizeof(where), " (first defined at %s:%u:%u)", mj->file, mj->line,
                     mj->col);
        kw_diag_add(&cfg->diag, mi->file, mi->line, mi->col, objname(cfg, k, mi), "metadata.name",
                    "duplicate %s \"%s/%s\"%s", kw_kind_name(k), mi->ns, mi->name, where);
        *(bool *)((char *)items[i] + valid_off) = false;
    }
    if (index != NULL) {
        free(*index);
        *index = out;
        *nindex = nout;
        out = NULL;
    }
done:
    free(out);
    free(v);
    free(first);
}

/* Errors point at the reference (line/col kept by the decoder), else at the document. */
static void ref_error_code(struct kw_config *cfg, int code, enum kw_kind k, const struct kw_meta *m,
                           unsigned line, unsigned col, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

#define ref_error(cfg, ...) ref_error_code(cfg, KW_DIAG_OTHER, __VA_ARGS__)

static void ref_error_code(struct kw_config *cfg, int code, enum kw_kind k, const struct kw_meta *m,
                           unsigned line, unsigned col, const char *path, const char *fmt, ...)
{
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line == 0) {
        line = m->line;
        col = m->col;
    }
    kw_diag_add_code(&cfg->diag, code, m->file, line, col, objname(cfg, k, m), path, "%s", msg);
}

static bool check_secret_ref(struct kw_config *cfg, const struct kw_backend *b,
                             const struct kw_secret_ref *ref, const char *path)
{
    if (ref->name == NULL)
        return true;
    struct kw_secret *s = kw_config_find_secret(cfg, b->meta.ns, ref->name);
    char p[128];
    if (s == NULL) {
        snprintf(p, sizeof(p), "%s.name", path);
        ref_error_code(cfg, KW_DIAG_SECRET_MISSING, KW_KIND_LLMBACKEND, &b->meta, ref->line,
                       ref->col, p, "Secret \"%s/%s\" not found", b->meta.ns, ref->name);
        return false;
    }
    if (!s->valid) {
        snprintf(p, sizeof(p), "%s.name", path);
        ref_error(cfg, KW_KIND_LLMBACKEND, &b->meta, ref->line, ref->col, p,
                  "Secret \"%s/%s\" is invalid", b->meta.ns, ref->name);
        return false;
    }
    if (ref->key != NULL && ref->key[0] != '\0' && kw_secret_get(s, ref->key) == NULL) {
        snprintf(p, sizeof(p), "%s.key", path);
        ref_error(cfg, KW_KIND_LLMBACKEND, &b->meta, ref->line, ref->col, p,
                  "Secret \"%s\" has no key \"%s\"", ref->name, ref->key);
        return false;
    }
    return true;
}

static bool check_secret_key(struct kw_config *cfg, const struct kw_backend *b, const char *key,
                             const char *path)
{
    const struct kw_secret *s =
        kw_config_find_secret(cfg, b->meta.ns, b->credentials.secret_ref.name);
    if (key == NULL || s == NULL || kw_secret_get(s, key) != NULL)
        return true;
    ref_error(cfg, KW_KIND_LLMBACKEND, &b->meta, b->credentials.secret_ref.line,
              b->credentials.secret_ref.col, path, "Secret \"%s\" has no key \"%s\"",
              b->credentials.secret_ref.name, key);
    return false;
}

/* Whether two model patterns can match the same model. */
static bool overlap(const struct kw_model_match *a, const struct kw_model_match *b)
{
    size_t la = strlen(a->value), lb = strlen(b->value);
    if (!a->prefix && !b->prefix)
        return strcmp(a->value, b->value) == 0;
    if (a->prefix && (!b->prefix || lb >= la))
        return strncmp(a->value, b->value, la) == 0; /* b's models start with a's prefix */
    return strncmp(b->value, a->value, lb) == 0;
}

/* Routes of different namespaces may not claim the same model: the oldest claim wins and
 * the younger route is left out and reported Conflicted, so whoever may create an LLMRoute
 * in one namespace cannot outrank the platform's route and receive everyone's prompts.
 * Prefix and wildcard claims ("llama-*", "*") take part only when their namespace is one of
 * cfg->claim_namespaces: elsewhere they block nobody (routing prefers any exact name, then
 * the longest prefix, so another namespace's exact or longer claim wins over them at once)
 * and only the same prefix twice conflicts. So a tenant's "*" can neither squat the
 * platform's later names nor keep their prompts. Within a namespace, specificity and age
 * decide as before. Exact claims are found through a sorted index (linear-logarithmic);
 * prefix claims, which are few, are compared with all. */
static bool claims_widely(const struct kw_config *cfg, const char *ns)
{
    for (size_t i = 0; i < cfg->nclaim_namespaces; i++)
        if (strcmp(cfg->claim_namespaces[i], "*") == 0 || strcmp(cfg->claim_namespaces[i], ns) == 0)
            return true;
    return false;
}

struct claim {
    const char *model;
    const struct kw_route *route;
};

static int cmp_claim(const void *x, const void *y)
{
    return strcmp(((const struct claim *)x)->model, ((const struct claim *)y)->model);
}

static void check_conflicts(struct kw_config *cfg)
{
    size_t n = 0, nclaims = 0;
    struct kw_route **rs = calloc(cfg->nroutes + 1, sizeof(*rs));
    for (size_t i = 0; rs != NULL && i < cfg->nroutes; i++)
        if (cfg->routes[i]->meta.name != NULL && cfg->routes[i]->valid) {
            rs[n++] = cfg->routes[i];
            nclaims += cfg->routes[i]->nmodels;
        }
    struct claim *exact = calloc(nclaims + 1, sizeof(*exact));
    struct claim *prefixes = calloc(nclaims + 1, sizeof(*prefixes));
    if (rs == NULL || exact == NULL || prefixes == NULL)
        goto out;
    qsort(rs, n, sizeof(*rs), kw_route_ptr_age_cmp);
    /* the oldest exact claim of each model, whatever its namespace */
    size_t ne = 0, np = 0;
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < rs[i]->nmodels; j++)
            if (!rs[i]->models[j].prefix)
                exact[ne++] = (struct claim){rs[i]->models[j].value, rs[i]};
    qsort(exact, ne, sizeof(*exact), cmp_claim); /* qsort is not stable: keep the oldest */
    for (size_t i = 0; i < n; i++) {
        struct kw_route *r = rs[i];
        const struct kw_route *winner = NULL;
        const struct kw_model_match *m = NULL;
        for (size_t j = 0; j < r->nmodels && winner == NULL; j++) {
            m = &r->models[j];
            if (!m->prefix) {
                struct claim key = {m->value, NULL};
                const struct claim *c = bsearch(&key, exact, ne, sizeof(*exact), cmp_claim);
                while (c != NULL && c > exact && strcmp(c[-1].model, m->value) == 0)
                    c--;
                for (; c != NULL && c < exact + ne && strcmp(c->model, m->value) == 0; c++)
                    if (strcmp(c->route->meta.ns, r->meta.ns) != 0 && c->route->valid &&
                        !c->route->conflicted && kw_route_age_cmp(c->route, r) < 0) {
                        winner = c->route;
                        break;
                    }
            } else if (claims_widely(cfg, r->meta.ns)) {
                for (size_t k = 0; k < ne && winner == NULL; k++) {
                    const struct kw_route *o = exact[k].route;
                    struct kw_model_match em = {exact[k].model, false};
                    if (strcmp(o->meta.ns, r->meta.ns) != 0 && !o->conflicted &&
                        kw_route_age_cmp(o, r) < 0 && overlap(m, &em))
                        winner = o;
                }
            }
            for (size_t k = 0; k < np && winner == NULL; k++) {
                const struct kw_route *o = prefixes[k].route;
                struct kw_model_match pm = {prefixes[k].model, true};
                if (strcmp(o->meta.ns, r->meta.ns) == 0 || !overlap(m, &pm))
                    continue;
                /* an older wide prefix blocks what it overlaps; any other only its own
                 * prefix claimed again, and a wide claim is not blocked by narrow ones */
                if (claims_widely(cfg, o->meta.ns) ||
                    (m->prefix && strcmp(m->value, pm.value) == 0))
                    winner = o;
            }
        }
        if (winner == NULL) {
            for (size_t j = 0; j < r->nmodels; j++)
                if (r->models[j].prefix)
                    prefixes[np++] = (struct claim){r->models[j].value, r};
            continue;
        }
        r->conflicted = true;
        r->valid = false;
        ref_error(cfg, KW_KIND_LLMROUTE, &r->meta, 0, 0, "spec.match.models",
                  "model \"%s%s\" is already claimed by the older LLMRoute %s/%s in another "
                  "namespace: the oldest claim wins",
                  m->value, m->prefix ? "*" : "", winner->meta.ns, winner->meta.name);
    }
out:
    free(rs);
    free(exact);
    free(prefixes);
}

int kw_config_check(struct kw_config *cfg)
{
    check_duplicates(cfg, KW_KIND_SECRET, (void **)cfg->secrets, cfg->nsecrets,
                     offsetof(struct kw_secret, meta), offsetof(struct kw_secret, valid),
                     (void ***)&cfg->secret_index, &cfg->nsecret_index);
    cfg->secrets_indexed = cfg->secret_index != NULL ? cfg->nsecrets : SIZE_MAX;
    check_duplicates(cfg, KW_KIND_LLMBACKEND, (void **)cfg->backends, cfg->nbackends,
                     offsetof(struct kw_backend, meta), offsetof(struct kw_backend, valid),
                     (void ***)&cfg->backend_index, &cfg->nbackend_index);
    cfg->backends_indexed = cfg->backend_index != NULL ? cfg->nbackends : SIZE_MAX;
    check_duplicates(cfg, KW_KIND_LLMROUTE, (void **)cfg->routes, cfg->nroutes,
                     offsetof(struct kw_route, meta), offsetof(struct kw_route, valid), NULL, NULL);
    check_duplicates(cfg, KW_KIND_LLMCONSUMER, (void **)cfg->consumers, cfg->nconsumers,
                     offsetof(struct kw_consumer, meta), offsetof(struct kw_consumer, valid), NULL,
                     NULL);

    /* a consumer's keys: the Secret must exist (and the key, when one is named). A missing
     * one is reported and contributes no key; the consumer stays (its other keys work, and
     * a deleted Secret revokes its keys instead of turning key checks off) */
    for (size_t i = 0; i < cfg->nconsumers; i++) {
        struct kw_consumer *c = cfg->consumers[i];
        for (size_t j = 0; c->meta.name != NULL && j < c->napi_keys; j++) {
            const struct kw_secret_ref *ref = &c->api_keys[j];
            const struct kw_secret *sec = kw_config_find_secret(cfg, c->meta.ns, ref->name);
            char path[64];
            snprintf(path, sizeof(path), "spec.apiKeys[%zu].secretRef", j);
            if (sec == NULL) {
                ref_error_code(cfg, KW_DIAG_SECRET_MISSING, KW_KIND_LLMCONSUMER, &c->meta,
                               ref->line, ref->col, path, "Secret \"%s/%s\" not found", c->meta.ns,
                               ref->name);
            } else if (ref->key != NULL && kw_secret_get(sec, ref->key) == NULL) {
                ref_error(cfg, KW_KIND_LLMCONSUMER, &c->meta, ref->line, ref->col, path,
                          "Secret \"%s/%s\" has no key \"%s\"", c->meta.ns, ref->name, ref->key);
            } else {
                /* a short key can be guessed: reported and not accepted (never shown) */
                for (size_t k = 0; k < sec->nitems; k++)
                    if ((ref->key == NULL || strcmp(ref->key, sec->items[k].key) == 0) &&
                        sec->items[k].len < KW_MIN_API_KEY_LEN)
                        ref_error(cfg, KW_KIND_LLMCONSUMER, &c->meta, ref->line, ref->col, path,
                                  "Secret \"%s/%s\" key \"%s\" holds an API key of %zu "
                                  "characters: API keys must have at least %u (it is not "
                                  "accepted)",
                                  c->meta.ns, ref->name, sec->items[k].key, sec->items[k].len,
                                  KW_MIN_API_KEY_LEN);
            }
        }
    }

    for (size_t i = 0; i < cfg->nbackends; i++) {
        struct kw_backend *b = cfg->backends[i];
        if (b->meta.name == NULL)
            continue;
        bool ok =
            check_secret_ref(cfg, b, &b->credentials.secret_ref, "spec.credentials.secretRef");
        ok &= check_secret_ref(cfg, b, &b->upstream.tls.ca_secret_ref,
                               "spec.upstream.tls.caSecretRef");
        if (ok && b->provider == KW_PROVIDER_AWS_BEDROCK &&
            b->credentials.secret_ref.name != NULL) {
            ok &= check_secret_key(cfg, b, b->credentials.bedrock.access_key_id_key,
                                   "spec.credentials.bedrock.accessKeyIdKey");
            ok &= check_secret_key(cfg, b, b->credentials.bedrock.secret_access_key_key,
                                   "spec.credentials.bedrock.secretAccessKeyKey");
            ok &= check_secret_key(cfg, b, b->credentials.bedrock.session_token_key,
                                   "spec.credentials.bedrock.sessionTokenKey");
        }
        if (!ok)
            b->valid = false;
    }

    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct kw_route *r = cfg->routes[i];
        if (r->meta.name == NULL)
            continue;
        r->resolved = true;
        for (size_t j = 0; j < r->nrefs; j++) {
            struct kw_backend_ref *ref = &r->refs[j];
            ref->backend = kw_config_find_backend(cfg, r->meta.ns, ref->name);
            char path[64];
            snprintf(path, sizeof(path), "spec.backendRefs[%zu].name", j);
            if (ref->backend == NULL) {
                ref_error(cfg, KW_KIND_LLMROUTE, &r->meta, ref->line, ref->col, path,
                          "LLMBackend \"%s/%s\" not found", r->meta.ns, ref->name);
                r->resolved = false;
            } else if (!ref->backend->valid) {
                r->resolved = false; /* the backend's own errors are reported on it */
            }
        }
    }
    check_conflicts(cfg);
    return kw_diag_count(&cfg->diag) == 0 ? KW_OK : KW_ERROR;
}
