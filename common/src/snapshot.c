/* Snapshots: build from a config, serialise canonically, parse and validate.
 *
 * There is one way into a kw_snapshot: kw_snapshot_parse. kw_snapshot_build writes the
 * canonical document and parses it, so a built snapshot and one received over discovery
 * went through the same validation, and the version is computed in one place
 * (snapshot_text). The controller only writes (kw_snapshot_write): it never serves from
 * a snapshot, and the parse was a third of its build time at 10,000 resources; the data
 * planes parse what it sends, and the fuzzers and unit tests hold the writer and the
 * parser to each other (docs/controller.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "decode.h"
#include "knoway/digest.h"
#include "knoway/hash.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/snapshot.h"

/* ---- canonical text --------------------------------------------------------------- */

static struct kw_node *entry(struct kw_arena *a, const struct kw_meta *m, struct kw_node *spec)
{
    struct kw_node *e = kw_node_new(a, KW_NODE_MAP);
    if (e == NULL || spec == NULL || kw_node_map_put(a, e, "name", kw_node_cstring(a, m->name)) ||
        kw_node_map_put(a, e, "namespace", kw_node_cstring(a, m->ns)) ||
        kw_node_map_put(a, e, "spec", spec))
        return NULL;
    return e;
}

/* A credential without its value: what the version covers. */
static struct kw_node *credential_entry(struct kw_arena *a, const struct kw_credential *c)
{
    struct kw_node *e = kw_node_new(a, KW_NODE_MAP);
    if (e == NULL || kw_node_map_put(a, e, "digest", kw_node_cstring(a, c->digest)) ||
        kw_node_map_put(a, e, "key", kw_node_cstring(a, c->key)) ||
        kw_node_map_put(a, e, "name", kw_node_cstring(a, c->name)) ||
        kw_node_map_put(a, e, "namespace", kw_node_cstring(a, c->ns)))
        return NULL;
    return e;
}

static int add_credential_data(struct kw_arena *a, struct kw_node *e, const struct kw_credential *c)
{
    size_t cap = (c->len + 2) / 3 * 4 + 1;
    char *b64 = kw_arena_alloc(a, cap);
    if (b64 == NULL)
        return KW_ERROR;
    int n = EVP_EncodeBlock((unsigned char *)b64, (const unsigned char *)c->value, (int)c->len);
    return kw_node_map_put(a, e, "data", kw_node_string(a, b64, (size_t)n));
}

static void hex(const unsigned char *in, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 15];
    }
    out[2 * len] = '\0';
}

/* A resource copied into the snapshot, with the config's resource it came from and what
 * else its entry depends on (0: do not cache its text). */
struct picked_backend {
    struct kw_backend b; /* first: a struct kw_backend * of the copy is this */
    const struct kw_backend *src;
    uint64_t sig;
};
struct picked_route {
    struct kw_route r;
    const struct kw_route *src;
    uint64_t sig;
};

/* The entries of one list, [e1,e2,...], each in canonical text: from the fragment cache
 * when its inputs are unchanged, else encoded and written (and given to the cache). */
static int write_entries(struct kw_buf *out, enum kw_kind kind, void *const *items, size_t n,
                         const struct kw_snapshot_fragments *frag)
{
    struct kw_arena *a = kw_arena_new(KW_MAX_ARENA_BYTES);
    int rc = a != NULL ? kw_buf_puts(out, "[") : KW_ERROR;
    for (size_t i = 0; rc == KW_OK && i < n; i++) {
        const void *src = NULL;
        uint64_t sig = 0;
        if (frag != NULL && kind == KW_KIND_LLMBACKEND) {
            src = ((const struct picked_backend *)items[i])->src;
            sig = ((const struct picked_backend *)items[i])->sig;
        } else if (frag != NULL) {
            src = ((const struct picked_route *)items[i])->src;
            sig = ((const struct picked_route *)items[i])->sig;
        }
        if (i > 0)
            rc = kw_buf_puts(out, ",");
        size_t len = 0;
        const char *text = sig != 0 ? frag->get(frag->ud, kind, src, sig, &len) : NULL;
        if (rc != KW_OK || text != NULL) {
            rc = rc == KW_OK ? kw_buf_append(out, text, len) : rc;
            continue;
        }
        kw_arena_reset(a);
        const struct kw_meta *m = kind == KW_KIND_LLMBACKEND
                                      ? &((const struct kw_backend *)items[i])->meta
                                      : &((const struct kw_route *)items[i])->meta;
        struct kw_node *spec = kind == KW_KIND_LLMBACKEND ? kw_encode_backend_spec(a, items[i])
                                                          : kw_encode_route_spec(a, items[i]);
        struct kw_node *e = entry(a, m, spec);
        size_t at = out->len;
        rc = e != NULL ? kw_json_write_canonical(e, out) : KW_ERROR;
        if (rc == KW_OK && sig != 0)
            frag->put(frag->ud, kind, src, sig, out->data + at, out->len - at);
    }
    if (rc == KW_OK)
        rc = kw_buf_puts(out, "]");
    kw_arena_free(a);
    return rc;
}

/* The canonical document (version included) of these resources into out, and the version
 * into version. KW_OK, or KW_ERROR on out-of-memory or past the size limit. With frag, bs
 * and rs point into picked_backend and picked_route copies (snapshot_write's). */
static int snapshot_text(struct kw_backend *const *bs, size_t nb, struct kw_route *const *rs,
                         size_t nr, const struct kw_credential *cs, size_t nc,
                         struct kw_consumer *const *us, size_t nu, struct kw_buf *out,
                         char version[KW_SNAPSHOT_VERSION_LEN + 1],
                         const struct kw_snapshot_fragments *frag)
{
    int rc = KW_ERROR;
    EVP_MD_CTX *md = NULL;
    struct kw_arena *a = kw_arena_new(KW_MAX_ARENA_BYTES);
    if (a == NULL)
        return KW_ERROR;
    struct kw_node *creds = kw_node_new(a, KW_NODE_SEQ);
    if (creds == NULL)
        goto out;
    for (size_t i = 0; i < nc; i++)
        if (kw_node_seq_push(a, creds, credential_entry(a, &cs[i])))
            goto out;
    struct kw_node *consumers = NULL;
    if (nu > 0) { /* absent without consumers: snapshots of older data planes stay readable */
        consumers = kw_node_new(a, KW_NODE_SEQ);
        if (consumers == NULL)
            goto out;
        for (size_t i = 0; i < nu; i++)
            if (kw_node_seq_push(a, consumers,
                                 entry(a, &us[i]->meta, kw_encode_consumer_spec(a, us[i]))))
                goto out;
    }
    /* The canonical document, {"backends":B,["consumers":U,]"credentials":C,"routes":R} (keys
     * in byte order), closed by ,"version":V}. The version is the digest of that document
     * with the credentials' values left out (their keyed digests stand in). Each part is
     * written once, the credentials twice (without their values for the digest, then with
     * them): a second write of the whole document was a third of a build's time. */
    size_t start = out->len;
    if (kw_buf_puts(out, "{\"backends\":") != KW_OK ||
        write_entries(out, KW_KIND_LLMBACKEND, (void *const *)bs, nb, frag) != KW_OK)
        goto out;
    if (consumers != NULL && (kw_buf_puts(out, ",\"consumers\":") != KW_OK ||
                              kw_json_write_canonical(consumers, out) != KW_OK))
        goto out;
    if (kw_buf_puts(out, ",\"credentials\":") != KW_OK)
        goto out;
    md = EVP_MD_CTX_new();
    if (md == NULL || !EVP_DigestInit_ex(md, EVP_sha256(), NULL) ||
        !EVP_DigestUpdate(md, out->data + start, out->len - start))
        goto out;
    size_t creds_at = out->len;
    if (kw_json_write_canonical(creds, out) != KW_OK ||
        !EVP_DigestUpdate(md, out->data + creds_at, out->len - creds_at))
        goto out;
    if (nc > 0) { /* the document itself carries the values */
        for (size_t i = 0; i < nc; i++)
            if (add_credential_data(a, creds->items[i], &cs[i]) != KW_OK)
                goto out;
        out->len = creds_at;
        if (kw_json_write_canonical(creds, out) != KW_OK)
            goto out;
    }
    size_t tail = out->len;
    if (kw_buf_puts(out, ",\"routes\":") != KW_OK ||
        write_entries(out, KW_KIND_LLMROUTE, (void *const *)rs, nr, frag) != KW_OK ||
        kw_buf_puts(out, "}") != KW_OK || !EVP_DigestUpdate(md, out->data + tail, out->len - tail))
        goto out;
    unsigned char digest[32];
    unsigned int mdlen = 0;
    if (!EVP_DigestFinal_ex(md, digest, &mdlen))
        goto out;
    memcpy(version, "sha256:", 7);
    hex(digest, mdlen, version + 7);
    /* "version" sorts after every other key: it closes the object. */
    out->len--;
    if (kw_buf_printf(out, ",\"version\":\"%s\"}", version) != KW_OK)
        goto out;
    rc = KW_OK;
out:
    EVP_MD_CTX_free(md);
    kw_arena_free(a);
    return rc;
}

int kw_snapshot_serialize(const struct kw_snapshot *s, struct kw_buf *out)
{
    char version[KW_SNAPSHOT_VERSION_LEN + 1];
    return snapshot_text(s->backends, s->nbackends, s->routes, s->nroutes, s->credentials,
                         s->ncredentials, s->consumers, s->nconsumers, out, version, NULL);
}

/* ---- ordering --------------------------------------------------------------------- */

static int cmp_meta(const struct kw_meta *a, const struct kw_meta *b)
{
    int r = strcmp(a->ns, b->ns);
    return r != 0 ? r : strcmp(a->name, b->name);
}

static int cmp_backend(const void *x, const void *y)
{
    return cmp_meta(&(*(struct kw_backend *const *)x)->meta,
                    &(*(struct kw_backend *const *)y)->meta);
}

static int cmp_route_name(const void *x, const void *y)
{
    return cmp_meta(&(*(struct kw_route *const *)x)->meta, &(*(struct kw_route *const *)y)->meta);
}

static int cmp_cred(const void *x, const void *y)
{
    const struct kw_credential *a = x, *b = y;
    int r = strcmp(a->ns, b->ns);
    if (r == 0)
        r = strcmp(a->name, b->name);
    return r != 0 ? r : strcmp(a->key, b->key);
}

/* ---- build ------------------------------------------------------------------------ */

int kw_service_resolve_dns(void *ud, struct kw_arena *a, const char *ns, const char *name,
                           uint32_t port, struct kw_endpoint **eps, size_t *neps, char *err,
                           size_t errlen)
{
    (void)ud;
    struct kw_endpoint *e = kw_arena_alloc(a, sizeof(*e));
    if (e == NULL) {
        snprintf(err, errlen, "out of memory");
        return KW_ERROR;
    }
    e->url = kw_arena_printf(a, "http://%s.%s.svc:%u", name, ns, port);
    e->weight = 1;
    *eps = e;
    *neps = 1;
    return e->url != NULL ? KW_OK : KW_ERROR;
}

static unsigned char digest_key[32];
static bool have_digest_key;

void kw_snapshot_set_key(const void *secret, size_t len)
{
    static const char label[] = "knoway snapshot credential digest key";
    unsigned int n = 0;
    HMAC(EVP_sha256(), label, sizeof(label) - 1, secret, len, digest_key, &n);
    have_digest_key = true;
}

static void credential_digest(struct kw_credential *c)
{
    if (!have_digest_key) { /* once per process: versions stay stable while it runs */
        if (RAND_bytes(digest_key, sizeof(digest_key)) != 1)
            abort(); /* no randomness at start-up: nothing safe to do */
        have_digest_key = true;
    }
    unsigned char md[32];
    unsigned int n = 0;
    HMAC(EVP_sha256(), digest_key, sizeof(digest_key), (const unsigned char *)c->value, c->len, md,
         &n);
    memcpy(c->digest, "hmac-sha256:", 12);
    hex(md, n, c->digest + 12);
}

int kw_credential_header_check(const char *value, size_t *len)
{
    int rc = KW_OK;
    if (*len >= 1 && value[*len - 1] == '\n') {
        *len -= *len >= 2 && value[*len - 2] == '\r' ? 2 : 1;
        rc = KW_DECLINED;
    }
    for (size_t i = 0; i < *len; i++) {
        unsigned char c = (unsigned char)value[i];
        if (c < 0x20 || c == 0x7f)
            return KW_ERROR;
    }
    return rc;
}

bool kw_credential_is_json(const char *value, size_t len)
{
    size_t i = 0;
    while (i < len && (value[i] == ' ' || value[i] == '\t' || value[i] == '\r' || value[i] == '\n'))
        i++;
    return i < len && value[i] == '{';
}

struct creds {
    struct kw_credential *items;
    size_t n, cap;
    size_t *slots; /* open addressing over namespace/name/key: index + 1, 0 = free */
    size_t nslots; /* a power of two, at least twice cap */
};

static size_t cred_hash(const char *ns, const char *name, const char *key)
{
    struct kw_hash h;
    kw_hash_begin(&h);
    kw_hash_str(&h, ns);
    kw_hash_str(&h, name);
    kw_hash_str(&h, key);
    return (size_t)kw_hash_end(&h);
}

/* The slot of ns/name/key: its entry, or the free slot where it would go. */
static size_t *cred_slot(const struct creds *cs, const char *ns, const char *name, const char *key)
{
    size_t mask = cs->nslots - 1;
    for (size_t i = cred_hash(ns, name, key) & mask;; i = (i + 1) & mask) {
        size_t *slot = &cs->slots[i];
        if (*slot == 0)
            return slot;
        const struct kw_credential *c = &cs->items[*slot - 1];
        if (strcmp(c->ns, ns) == 0 && strcmp(c->name, name) == 0 && strcmp(c->key, key) == 0)
            return slot;
    }
}

/* Room for one more credential (items and slots). KW_OK or KW_ERROR. */
static int creds_grow(struct creds *cs)
{
    if (cs->n < cs->cap)
        return KW_OK;
    size_t cap = cs->cap != 0 ? cs->cap * 2 : 16;
    struct kw_credential *p = realloc(cs->items, cap * sizeof(*p));
    if (p == NULL)
        return KW_ERROR;
    cs->items = p;
    size_t *slots = calloc(cap * 2, sizeof(*slots));
    if (slots == NULL)
        return KW_ERROR;
    free(cs->slots);
    cs->slots = slots;
    cs->nslots = cap * 2;
    cs->cap = cap;
    for (size_t i = 0; i < cs->n; i++)
        *cred_slot(cs, cs->items[i].ns, cs->items[i].name, cs->items[i].key) = i + 1;
    return KW_OK;
}

/* A credential of backend b for the snapshot; header: it is sent in a header, so control
 * characters make b invalid and one trailing newline is trimmed with a warning. */
static int add_cred(struct creds *cs, const struct kw_config *cfg, const struct kw_backend *b,
                    const char *name, const char *key, bool header, struct kw_diag *diag)
{
    const char *ns = b->meta.ns;
    if (name == NULL || key == NULL || key[0] == '\0')
        return KW_OK;
    if (creds_grow(cs) != KW_OK)
        return KW_ERROR;
    size_t *slot = cred_slot(cs, ns, name, key);
    if (*slot != 0)
        return KW_OK; /* another backend's already */
    const struct kw_secret *s = kw_config_find_secret(cfg, ns, name);
    const struct kw_secret_item *it = s != NULL ? kw_secret_get(s, key) : NULL;
    if (it == NULL)
        return KW_DECLINED;
    size_t len = it->len;
    if (b->provider == KW_PROVIDER_VERTEX_AI && kw_credential_is_json(it->value, len))
        header = false; /* a service-account key: signed with, never sent */
    int chk = header ? kw_credential_header_check(it->value, &len) : KW_OK;
    if (chk == KW_ERROR) {
        char obj[600];
        snprintf(obj, sizeof(obj), "LLMBackend/%s/%s", ns, b->meta.name);
        kw_diag_add(diag, b->meta.file, b->meta.line, b->meta.col, obj, "spec.credentials",
                    "Secret \"%s\" key \"%s\" holds control characters (CR, LF, "
                    "...): it cannot be sent in an HTTP header",
                    name, key);
        return KW_DECLINED;
    }
    if (chk == KW_DECLINED)
        kw_log(KW_LOG_WARN, "a credential ends with a newline: trimmed", "secret", name,
               "namespace", ns, "key", key, NULL);
    *slot = cs->n + 1;
    struct kw_credential *c = &cs->items[cs->n++];
    *c = (struct kw_credential){ns, name, key, it->value, len, ""};
    credential_digest(c);
    return KW_OK;
}

static int backend_creds(struct creds *cs, const struct kw_config *cfg, const struct kw_backend *b,
                         struct kw_diag *diag)
{
    const struct kw_credentials *c = &b->credentials;
    int rc = add_cred(cs, cfg, b, b->upstream.tls.ca_secret_ref.name,
                      b->upstream.tls.ca_secret_ref.key, false, diag);
    if (rc == KW_OK && b->provider == KW_PROVIDER_AWS_BEDROCK) {
        rc = add_cred(cs, cfg, b, c->secret_ref.name, c->bedrock.access_key_id_key, true, diag);
        if (rc == KW_OK)
            rc = add_cred(cs, cfg, b, c->secret_ref.name, c->bedrock.secret_access_key_key, true,
                          diag);
        if (rc == KW_OK)
            rc = add_cred(cs, cfg, b, c->secret_ref.name, c->bedrock.session_token_key, true, diag);
    } else if (rc == KW_OK) {
        rc = add_cred(cs, cfg, b, c->secret_ref.name, c->secret_ref.key, true, diag);
    }
    return rc;
}

/* The backend named ns/name in bs (sorted by namespace/name), or NULL: O(log n), so
 * snapshots of thousands of routes build in linear-logarithmic time. */
static struct kw_backend *find_sorted(struct kw_backend *const *bs, size_t n, const char *ns,
                                      const char *name)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(bs[mid]->meta.ns, ns);
        if (c == 0)
            c = strcmp(bs[mid]->meta.name, name);
        if (c == 0)
            return bs[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int cmp_consumer(const void *x, const void *y)
{
    return cmp_meta(&(*(struct kw_consumer *const *)x)->meta,
                    &(*(struct kw_consumer *const *)y)->meta);
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

/* A key's digest: SHA-256 of its bytes (a trailing newline, as `kubectl create secret
 * --from-file` leaves it, is not part of the key), 64 hex digits. */
static const char *key_digest(struct kw_arena *a, const char *v, size_t len)
{
    while (len > 0 && (v[len - 1] == '\n' || v[len - 1] == '\r'))
        len--;
    if (len == 0)
        return NULL;
    unsigned char md[32];
    char *out = kw_arena_alloc(a, 65);
    if (out == NULL || kw_sha256(v, len, md) != KW_OK)
        return NULL;
    hex(md, sizeof(md), out);
    return out;
}

/* c = src with the digests of every key its Secrets hold (the values never leave). */
static int consumer_keys(struct kw_arena *a, const struct kw_config *cfg,
                         const struct kw_consumer *src, struct kw_consumer *c)
{
    *c = *src;
    c->api_keys = NULL;
    c->napi_keys = 0;
    size_t cap = 0;
    for (size_t i = 0; i < src->napi_keys; i++) {
        const struct kw_secret *sec =
            kw_config_find_secret(cfg, src->meta.ns, src->api_keys[i].name);
        cap += sec != NULL ? sec->nitems : 0;
    }
    c->key_hashes = kw_arena_alloc(a, (cap + 1) * sizeof(*c->key_hashes));
    c->nkey_hashes = 0;
    if (c->key_hashes == NULL)
        return KW_ERROR;
    for (size_t i = 0; i < src->napi_keys; i++) {
        const struct kw_secret_ref *ref = &src->api_keys[i];
        const struct kw_secret *sec = kw_config_find_secret(cfg, src->meta.ns, ref->name);
        for (size_t j = 0; sec != NULL && j < sec->nitems; j++) {
            if ((ref->key != NULL && strcmp(ref->key, sec->items[j].key) != 0) ||
                sec->items[j].len < KW_MIN_API_KEY_LEN)
                continue;
            const char *h = key_digest(a, sec->items[j].value, sec->items[j].len);
            if (h != NULL && c->nkey_hashes < KW_MAX_CONSUMER_KEYS)
                c->key_hashes[c->nkey_hashes++] = h;
        }
    }
    qsort(c->key_hashes, c->nkey_hashes, sizeof(*c->key_hashes), cmp_str);
    size_t n = 0; /* the same key twice is one key */
    for (size_t i = 0; i < c->nkey_hashes; i++)
        if (n == 0 || strcmp(c->key_hashes[n - 1], c->key_hashes[i]) != 0)
            c->key_hashes[n++] = c->key_hashes[i];
    c->nkey_hashes = n;
    return KW_OK;
}

void kw_snapshot_summary_cleanup(struct kw_snapshot_summary *sum)
{
    free(sum->backends);
    free(sum->routes);
    free(sum->consumers);
    memset(sum, 0, sizeof(*sum));
}

static int summarise(struct kw_snapshot_summary *sum, struct kw_backend *const *bs, size_t nb,
                     struct kw_route *const *rs, size_t nr, struct kw_consumer *const *us,
                     size_t nu)
{
    sum->backends = malloc((nb + 1) * sizeof(*sum->backends));
    sum->routes = malloc((nr + 1) * sizeof(*sum->routes));
    sum->consumers = malloc((nu + 1) * sizeof(*sum->consumers));
    if (sum->backends == NULL || sum->routes == NULL || sum->consumers == NULL)
        return KW_ERROR;
    for (size_t i = 0; i < nb; i++)
        sum->backends[i] = bs[i]->meta;
    for (size_t i = 0; i < nr; i++)
        sum->routes[i] = rs[i]->meta;
    for (size_t i = 0; i < nu; i++)
        sum->consumers[i] = us[i]->meta;
    sum->nbackends = nb;
    sum->nroutes = nr;
    sum->nconsumers = nu;
    return KW_OK;
}

static int snapshot_write(const struct kw_config *cfg, kw_service_resolver_fn resolve, void *ud,
                          struct kw_diag *diag, struct kw_buf *text_out,
                          struct kw_snapshot_summary *sum,
                          const struct kw_snapshot_fragments *frag);

struct kw_snapshot *kw_snapshot_build(const struct kw_config *cfg, kw_service_resolver_fn resolve,
                                      void *ud, struct kw_diag *diag)
{
    struct kw_buf text;
    kw_buf_init(&text, KW_MAX_SNAPSHOT_BYTES);
    struct kw_snapshot *snap = NULL;
    if (snapshot_write(cfg, resolve, ud, diag, &text, NULL, NULL) == KW_OK)
        snap = kw_snapshot_parse(text.data, text.len, diag);
    kw_buf_cleanup(&text);
    return snap;
}

int kw_snapshot_write(const struct kw_config *cfg, kw_service_resolver_fn resolve, void *ud,
                      struct kw_diag *diag, struct kw_buf *text, struct kw_snapshot_summary *sum,
                      const struct kw_snapshot_fragments *frag)
{
    memset(sum, 0, sizeof(*sum));
    int rc = snapshot_write(cfg, resolve, ud, diag, text, sum, frag);
    if (rc != KW_OK)
        kw_snapshot_summary_cleanup(sum);
    return rc;
}

static int snapshot_write(const struct kw_config *cfg, kw_service_resolver_fn resolve, void *ud,
                          struct kw_diag *diag, struct kw_buf *text,
                          struct kw_snapshot_summary *sum, const struct kw_snapshot_fragments *frag)
{
    int result = KW_ERROR;
    struct kw_arena *a = kw_arena_new(KW_MAX_ARENA_BYTES);
    struct kw_backend **bs = calloc(cfg->nbackends + 1, sizeof(*bs));
    struct kw_route **rs = calloc(cfg->nroutes + 1, sizeof(*rs));
    struct kw_consumer **us = calloc(cfg->nconsumers + 1, sizeof(*us));
    struct creds cs = {0};
    size_t nb = 0, nr = 0;
    if (a == NULL || bs == NULL || rs == NULL || us == NULL)
        goto out;

    for (size_t i = 0; i < cfg->nbackends; i++) {
        const struct kw_backend *src = cfg->backends[i];
        if (!src->valid || src->meta.name == NULL)
            continue;
        struct picked_backend *pb = kw_arena_alloc(a, sizeof(*pb));
        if (pb == NULL)
            goto out;
        struct kw_backend *b = &pb->b;
        *b = *src;
        pb->src = src;
        pb->sig = b->upstream.service_ref.name == NULL; /* resolved endpoints: not cached */
        if (b->upstream.service_ref.name != NULL) {
            char err[256] = "";
            struct kw_endpoint *eps = NULL;
            size_t neps = 0;
            if (resolve(ud, a, b->meta.ns, b->upstream.service_ref.name,
                        b->upstream.service_ref.port, &eps, &neps, err, sizeof(err)) != KW_OK ||
                neps == 0) {
                kw_diag_add(diag, b->meta.file, b->meta.line, b->meta.col,
                            kw_arena_printf(a, "LLMBackend/%s/%s", b->meta.ns, b->meta.name),
                            "spec.upstream.serviceRef", "%s",
                            err[0] != '\0' ? err : "the Service has no ready endpoints");
                continue;
            }
            const char *root = kw_provider_service_path(b->provider);
            for (size_t j = 0; j < neps; j++)
                eps[j].url = kw_arena_printf(a, "%s%s", eps[j].url, root);
            b->upstream.service_ref.name = NULL;
            b->upstream.service_ref.port = 0;
            b->upstream.endpoints = eps;
            b->upstream.nendpoints = neps;
        }
        int rc = backend_creds(&cs, cfg, b, diag);
        if (rc == KW_ERROR)
            goto out;
        if (rc == KW_DECLINED) /* reported: by kw_config_check or add_cred */
            continue;
        bs[nb++] = b;
    }
    qsort(bs, nb, sizeof(*bs), cmp_backend);

    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct kw_route *src = cfg->routes[i];
        if (!src->valid || src->meta.name == NULL)
            continue;
        struct picked_route *pr = kw_arena_alloc(a, sizeof(*pr));
        struct kw_backend_ref *refs = kw_arena_alloc(a, (src->nrefs + 1) * sizeof(*refs));
        if (pr == NULL || refs == NULL)
            goto out;
        struct kw_route *r = &pr->r;
        *r = *src;
        pr->src = src;
        struct kw_hash sig; /* which backendRefs are kept: a hash of their indexes */
        kw_hash_begin(&sig);
        r->refs = refs;
        r->nrefs = 0;
        bool weight = false;
        for (size_t j = 0; j < src->nrefs; j++) {
            const struct kw_backend *target = src->refs[j].backend;
            struct kw_backend *copy =
                target != NULL ? find_sorted(bs, nb, target->meta.ns, target->meta.name) : NULL;
            if (copy == NULL)
                continue;
            refs[r->nrefs] = src->refs[j];
            refs[r->nrefs].backend = copy;
            weight |= refs[r->nrefs].weight > 0;
            r->nrefs++;
            kw_hash_feed(&sig, &j, sizeof(j));
        }
        pr->sig = kw_hash_end(&sig) | 1; /* 0 means "no reuse" */
        if (r->nrefs == 0 || !weight) {
            kw_diag_add(diag, r->meta.file, r->meta.line, r->meta.col,
                        kw_arena_printf(a, "LLMRoute/%s/%s", r->meta.ns, r->meta.name),
                        "spec.backendRefs", "no usable backend: the route is not programmed");
            continue;
        }
        rs[nr++] = r;
    }
    /* routes are listed oldest first: that order breaks ties between equally specific
     * matches (kw_route_age_cmp) */
    qsort(rs, nr, sizeof(*rs), kw_route_ptr_age_cmp);
    if (cs.n > 0)
        qsort(cs.items, cs.n, sizeof(*cs.items), cmp_cred);

    size_t nu = 0;
    for (size_t i = 0; i < cfg->nconsumers; i++) {
        const struct kw_consumer *src = cfg->consumers[i];
        if (!src->valid || src->meta.name == NULL)
            continue;
        struct kw_consumer *c = kw_arena_alloc(a, sizeof(*c));
        if (c == NULL || consumer_keys(a, cfg, src, c) != KW_OK)
            goto out;
        us[nu++] = c;
    }
    qsort(us, nu, sizeof(*us), cmp_consumer);

    char version[KW_SNAPSHOT_VERSION_LEN + 1];
    if (snapshot_text(bs, nb, rs, nr, cs.items, cs.n, us, nu, text, version, frag) != KW_OK) {
        kw_diag_add(diag, NULL, 0, 0, NULL, NULL, "snapshot too large or out of memory");
        goto out;
    }
    if (sum != NULL) {
        memcpy(sum->version, version, sizeof(version));
        if (summarise(sum, bs, nb, rs, nr, us, nu) != KW_OK)
            goto out;
    }
    result = KW_OK;
out:
    free(cs.items);
    free(cs.slots);
    free(bs);
    free(rs);
    free(us);
    kw_arena_free(a);
    return result;
}

/* ---- parse ------------------------------------------------------------------------ */

static bool check_keys(struct kw_dec *d, const struct kw_node *m, const char *const *keys)
{
    bool ok = true;
    for (size_t i = 0; i < m->n; i++) {
        bool known = false;
        for (const char *const *k = keys; *k != NULL; k++)
            known |= strcmp(m->pairs[i].key->str, *k) == 0;
        if (!known) {
            kw_dec_error(d, m, "unknown field \"%.100s\"", m->pairs[i].key->str);
            ok = false;
        }
    }
    for (const char *const *k = keys; *k != NULL; k++)
        if (kw_node_get(m, *k) == NULL) {
            kw_dec_error(d, m, "missing field \"%s\"", *k);
            ok = false;
        }
    return ok;
}

static const char *entry_str(const struct kw_node *e, const char *key)
{
    const struct kw_node *n = kw_node_get(e, key);
    return n != NULL && n->type == KW_NODE_STRING && strlen(n->str) == n->len ? n->str : NULL;
}

/* Read {name, namespace, spec} and set meta; returns spec or NULL. */
static const struct kw_node *parse_entry(struct kw_dec *d, const struct kw_node *e,
                                         struct kw_meta *meta, char *objbuf, size_t objlen,
                                         const char *kind)
{
    static const char *const keys[] = {"name", "namespace", "spec", NULL};
    if (e->type != KW_NODE_MAP || !check_keys(d, e, keys))
        return NULL;
    meta->name = kw_arena_strdup(d->a, entry_str(e, "name"));
    meta->ns = kw_arena_strdup(d->a, entry_str(e, "namespace"));
    if (meta->name == NULL || meta->ns == NULL || !kw_valid_dns_subdomain(meta->name) ||
        !kw_valid_dns_label(meta->ns)) {
        kw_dec_error(d, e, "invalid name or namespace");
        return NULL;
    }
    snprintf(objbuf, objlen, "%s/%s/%s", kind, meta->ns, meta->name);
    const struct kw_node *spec = kw_node_get(e, "spec");
    if (spec->type != KW_NODE_MAP) {
        kw_dec_error(d, spec, "spec must be a map");
        return NULL;
    }
    return spec;
}

const struct kw_credential *kw_snapshot_credential(const struct kw_snapshot *s, const char *ns,
                                                   const char *name, const char *key)
{
    /* sorted (kw_snapshot_parse checks): O(log n), on the request path too */
    struct kw_credential k = {.ns = ns, .name = name, .key = key};
    if (s->ncredentials == 0)
        return NULL; /* bsearch's base must not be NULL */
    return bsearch(&k, s->credentials, s->ncredentials, sizeof(*s->credentials), cmp_cred);
}

static bool has_cred(struct kw_snapshot *s, const char *ns, const char *name, const char *key)
{
    return name == NULL || key == NULL || key[0] == '\0' ||
           kw_snapshot_credential(s, ns, name, key) != NULL;
}

/* A credential sent in a header must hold no control character (a snapshot from a
 * controller that did not check, or edited by hand, must not inject headers). */
/* A Vertex AI backend's service-account key: signed with, never sent (as in add_cred). */
static bool vertex_key(struct kw_snapshot *s, const struct kw_backend *b)
{
    const struct kw_secret_ref *ref = &b->credentials.secret_ref;
    const struct kw_credential *c = ref->name != NULL && ref->key != NULL
                                        ? kw_snapshot_credential(s, b->meta.ns, ref->name, ref->key)
                                        : NULL;
    return c != NULL && kw_credential_is_json(c->value, c->len);
}

static bool header_cred_ok(struct kw_snapshot *s, const char *ns, const char *name, const char *key)
{
    const struct kw_credential *c =
        name != NULL && key != NULL ? kw_snapshot_credential(s, ns, name, key) : NULL;
    size_t len = c != NULL ? c->len : 0;
    return c == NULL || kw_credential_header_check(c->value, &len) == KW_OK;
}

static void parse_credentials(struct kw_dec *d, struct kw_snapshot *s, const struct kw_node *seq)
{
    static const char *const keys[] = {"data", "digest", "key", "name", "namespace", NULL};
    s->credentials = kw_arena_alloc(d->a, (seq->n + 1) * sizeof(*s->credentials));
    if (s->credentials == NULL) {
        kw_dec_error(d, seq, "out of memory");
        return;
    }
    for (size_t i = 0; i < seq->n; i++) {
        const struct kw_node *e = seq->items[i];
        if (e->type != KW_NODE_MAP || !check_keys(d, e, keys))
            continue;
        struct kw_credential *c = &s->credentials[s->ncredentials];
        c->ns = kw_arena_strdup(d->a, entry_str(e, "namespace"));
        c->name = kw_arena_strdup(d->a, entry_str(e, "name"));
        c->key = kw_arena_strdup(d->a, entry_str(e, "key"));
        const char *data = entry_str(e, "data"), *digest = entry_str(e, "digest");
        if (c->ns == NULL || c->name == NULL || c->key == NULL || data == NULL || digest == NULL) {
            kw_dec_error(d, e,
                         "credentials[%zu]: data, digest, key, name and namespace must be "
                         "strings",
                         i);
            continue;
        }
        if (strlen(digest) != KW_CREDENTIAL_DIGEST_LEN ||
            strncmp(digest, "hmac-sha256:", 12) != 0) {
            kw_dec_error(d, e, "credentials[%zu].digest: not an hmac-sha256 digest", i);
            continue;
        }
        memcpy(c->digest, digest, KW_CREDENTIAL_DIGEST_LEN + 1);
        size_t len = strlen(data);
        unsigned char *v = kw_arena_alloc(d->a, len / 4 * 3 + 1);
        int n = len % 4 == 0 && v != NULL
                    ? EVP_DecodeBlock(v, (const unsigned char *)data, (int)len)
                    : -1;
        if (n < 0) {
            kw_dec_error(d, e, "credentials[%zu].data: not base64", i);
            continue;
        }
        size_t pad = (len >= 1 && data[len - 1] == '=') + (len >= 2 && data[len - 2] == '=');
        c->len = (size_t)n - pad;
        v[c->len] = '\0';
        c->value = (const char *)v;
        if (s->ncredentials > 0 && cmp_cred(&s->credentials[s->ncredentials - 1], c) >= 0) {
            kw_dec_error(d, e, "credentials[%zu]: not sorted or duplicated", i);
            continue;
        }
        s->ncredentials++;
    }
}

struct kw_snapshot *kw_snapshot_parse(const char *json, size_t len, struct kw_diag *diag)
{
    static const char *const top[] = {"backends", "credentials", "routes", "version", NULL};
    static const char *const top_consumers[] = {"backends", "consumers", "credentials",
                                                "routes",   "version",   NULL};
    struct kw_snapshot *s = calloc(1, sizeof(*s));
    struct kw_buf text;
    kw_buf_init(&text, KW_MAX_SNAPSHOT_BYTES);
    if (s == NULL) {
        kw_diag_add(diag, NULL, 0, 0, "snapshot", NULL, "out of memory");
        return NULL;
    }
    atomic_init(&s->refs, 1);
    s->arena = kw_arena_new(KW_MAX_ARENA_BYTES);
    struct kw_dec d = {
        .a = s->arena, .diag = diag, .object = "snapshot", .strict = true, .snapshot = true};
    char err[256];
    struct kw_node *root;
    if (s->arena == NULL || kw_json_parse(s->arena, json, len, &root, err, sizeof(err)) != KW_OK) {
        kw_diag_add(diag, NULL, 0, 0, "snapshot", NULL, "%s", s->arena ? err : "out of memory");
        goto fail;
    }
    /* "consumers" only when there are some (older data planes read the rest) */
    if (root->type != KW_NODE_MAP ||
        !check_keys(&d, root, kw_node_get(root, "consumers") != NULL ? top_consumers : top))
        goto fail;
    const struct kw_node *bn = kw_node_get(root, "backends");
    const struct kw_node *rn = kw_node_get(root, "routes");
    const struct kw_node *cn = kw_node_get(root, "credentials");
    const char *version = entry_str(root, "version");
    if (bn->type != KW_NODE_SEQ || rn->type != KW_NODE_SEQ || cn->type != KW_NODE_SEQ ||
        version == NULL || strlen(version) != KW_SNAPSHOT_VERSION_LEN ||
        strncmp(version, "sha256:", 7) != 0) {
        kw_dec_error(&d, root,
                     "backends, routes and credentials must be lists and version "
                     "a sha256: digest");
        goto fail;
    }
    parse_credentials(&d, s, cn);

    s->backends = kw_arena_alloc(s->arena, (bn->n + 1) * sizeof(*s->backends));
    s->routes = kw_arena_alloc(s->arena, (rn->n + 1) * sizeof(*s->routes));
    if (s->backends == NULL || s->routes == NULL)
        goto fail;
    char obj[400];
    for (size_t i = 0; i < bn->n; i++) {
        struct kw_backend *b = kw_arena_alloc(s->arena, sizeof(*b));
        if (b == NULL)
            goto fail;
        d.object = "snapshot";
        const struct kw_node *spec =
            parse_entry(&d, bn->items[i], &b->meta, obj, sizeof(obj), "LLMBackend");
        if (spec == NULL)
            continue;
        d.object = obj;
        unsigned before = d.errors;
        d.plen = 0;
        d.path[0] = '\0';
        strcpy(d.path, "spec");
        d.plen = 4;
        kw_decode_backend_spec(&d, spec, b);
        d.plen = 0;
        d.path[0] = '\0';
        const struct kw_credentials *c = &b->credentials;
        bool creds_ok = has_cred(s, b->meta.ns, b->upstream.tls.ca_secret_ref.name,
                                 b->upstream.tls.ca_secret_ref.key);
        if (b->provider == KW_PROVIDER_AWS_BEDROCK)
            creds_ok &=
                has_cred(s, b->meta.ns, c->secret_ref.name, c->bedrock.access_key_id_key) &&
                has_cred(s, b->meta.ns, c->secret_ref.name, c->bedrock.secret_access_key_key) &&
                has_cred(s, b->meta.ns, c->secret_ref.name, c->bedrock.session_token_key);
        else
            creds_ok &= has_cred(s, b->meta.ns, c->secret_ref.name, c->secret_ref.key);
        if (!creds_ok)
            kw_dec_error(&d, bn->items[i], "a referenced credential is missing from the snapshot");
        bool headers_ok =
            b->provider == KW_PROVIDER_AWS_BEDROCK
                ? header_cred_ok(s, b->meta.ns, c->secret_ref.name, c->bedrock.access_key_id_key) &&
                      header_cred_ok(s, b->meta.ns, c->secret_ref.name,
                                     c->bedrock.secret_access_key_key) &&
                      header_cred_ok(s, b->meta.ns, c->secret_ref.name,
                                     c->bedrock.session_token_key)
                : (b->provider == KW_PROVIDER_VERTEX_AI && vertex_key(s, b)) ||
                      header_cred_ok(s, b->meta.ns, c->secret_ref.name, c->secret_ref.key);
        if (!headers_ok)
            kw_dec_error(&d, bn->items[i],
                         "a credential sent in a header holds control characters");
        if (s->nbackends > 0 && cmp_meta(&s->backends[s->nbackends - 1]->meta, &b->meta) >= 0)
            kw_dec_error(&d, bn->items[i], "backends are not sorted by namespace/name, or repeat");
        if (d.errors == before) {
            b->valid = true;
            s->backends[s->nbackends++] = b;
        }
    }
    for (size_t i = 0; i < rn->n; i++) {
        struct kw_route *r = kw_arena_alloc(s->arena, sizeof(*r));
        if (r == NULL)
            goto fail;
        d.object = "snapshot";
        const struct kw_node *spec =
            parse_entry(&d, rn->items[i], &r->meta, obj, sizeof(obj), "LLMRoute");
        if (spec == NULL)
            continue;
        r->meta.order = i;
        d.object = obj;
        unsigned before = d.errors;
        strcpy(d.path, "spec");
        d.plen = 4;
        kw_decode_route_spec(&d, spec, r);
        d.plen = 0;
        d.path[0] = '\0';
        for (size_t j = 0; j < r->nrefs; j++) {
            r->refs[j].backend =
                find_sorted(s->backends, s->nbackends, r->meta.ns, r->refs[j].name);
            if (r->refs[j].backend == NULL)
                kw_dec_error(&d, rn->items[i],
                             "backendRefs[%zu]: LLMBackend \"%s\" is not in "
                             "the snapshot",
                             j, r->refs[j].name);
        }
        if (d.errors == before) {
            r->valid = r->resolved = true;
            s->routes[s->nroutes++] = r;
        }
    }
    /* each route once (they are listed by age, not name: sorted copy, O(n log n)) */
    struct kw_route **byname = malloc((s->nroutes + 1) * sizeof(*byname));
    if (byname == NULL) {
        kw_dec_error(&d, rn, "out of memory");
        goto fail;
    }
    memcpy(byname, s->routes, s->nroutes * sizeof(*byname));
    qsort(byname, s->nroutes, sizeof(*byname), cmp_route_name);
    for (size_t k = 1; k < s->nroutes; k++)
        if (cmp_meta(&byname[k - 1]->meta, &byname[k]->meta) == 0)
            kw_dec_error(&d, rn, "route %s/%s listed twice", byname[k]->meta.ns,
                         byname[k]->meta.name);
    free(byname);
    const struct kw_node *un = kw_node_get(root, "consumers");
    if (un != NULL && un->type != KW_NODE_SEQ) {
        kw_dec_error(&d, un, "consumers must be a list");
        goto fail;
    }
    s->consumers = kw_arena_alloc(s->arena, ((un != NULL ? un->n : 0) + 1) * sizeof(*s->consumers));
    if (s->consumers == NULL)
        goto fail;
    for (size_t i = 0; un != NULL && i < un->n; i++) {
        struct kw_consumer *c = kw_arena_alloc(s->arena, sizeof(*c));
        if (c == NULL)
            goto fail;
        memset(c, 0, sizeof(*c));
        d.object = "snapshot";
        const struct kw_node *spec =
            parse_entry(&d, un->items[i], &c->meta, obj, sizeof(obj), "LLMConsumer");
        if (spec == NULL)
            continue;
        d.object = obj;
        unsigned before = d.errors;
        strcpy(d.path, "spec");
        d.plen = 4;
        kw_decode_consumer_spec(&d, spec, c);
        d.plen = 0;
        d.path[0] = '\0';
        if (s->nconsumers > 0 && cmp_meta(&s->consumers[s->nconsumers - 1]->meta, &c->meta) >= 0)
            kw_dec_error(&d, un->items[i], "consumers are not sorted by namespace/name, or repeat");
        if (d.errors == before) {
            c->valid = true;
            s->consumers[s->nconsumers++] = c;
        }
    }
    if (d.errors > 0)
        goto fail;
    if (snapshot_text(s->backends, s->nbackends, s->routes, s->nroutes, s->credentials,
                      s->ncredentials, s->consumers, s->nconsumers, &text, s->version,
                      NULL) != KW_OK) {
        kw_diag_add(diag, NULL, 0, 0, "snapshot", NULL, "out of memory");
        goto fail;
    }
    if (strcmp(s->version, version) != 0) {
        kw_diag_add(diag, NULL, 0, 0, "snapshot", "version", "%s does not match the content (%s)",
                    version, s->version);
        goto fail;
    }
    kw_buf_cleanup(&text);
    return s;
fail:
    kw_buf_cleanup(&text);
    kw_arena_free(s->arena);
    free(s);
    return NULL;
}

struct kw_snapshot *kw_snapshot_ref(struct kw_snapshot *s)
{
    if (s != NULL)
        atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
    return s;
}

void kw_snapshot_unref(struct kw_snapshot *s)
{
    if (s == NULL)
        return;
    if (atomic_fetch_sub_explicit(&s->refs, 1, memory_order_acq_rel) == 1) {
        kw_arena_free(s->arena);
        free(s);
    }
}
