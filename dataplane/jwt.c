/* JWT verification and JWKS refresh (jwt.h). */
#include <curl/curl.h>
#include <errno.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ecdsa.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "jwt.h"
#include "knoway/buf.h"
#include "knoway/duration.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "worker.h"

enum alg { ALG_RS256, ALG_RS384, ALG_RS512, ALG_ES256, ALG_ES384, ALG_EDDSA, ALG_COUNT };
static const char *const alg_names[ALG_COUNT] = {"RS256", "RS384", "RS512",
                                                 "ES256", "ES384", "EdDSA"};
enum kind { K_RSA, K_P256, K_P384, K_ED25519 };

struct jwk {
    char kid[128];
    enum kind kind;
    int alg; /* the key's "alg", or -1 */
    EVP_PKEY *pkey;
};

struct jwks {
    struct jwk keys[DP_JWT_MAX_KEYS];
    size_t n;
    struct jwks *retired_next;
    int64_t retired_ms;
};

struct provider {
    const struct kw_jwt_provider *conf;
    _Atomic(struct jwks *) set;
    atomic_llong early_ms; /* the last early refresh asked for (unknown kid) */
    atomic_bool want;
    int64_t next_ms;
    time_t mtime; /* jwksFile's, at the last load */
    off_t size;
};

struct dp_jwt {
    struct provider *p;
    size_t n;
    pthread_t thread;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop;
    struct jwks *retired;
};

/* ---- base64url ----------------------------------------------------------------------- */

static int b64v(int c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/* Decode base64url without padding into out (at least len * 3 / 4 + 1 bytes). -1 if bad. */
static long b64url(const char *in, size_t len, unsigned char *out)
{
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    if (len % 4 == 1)
        return -1;
    for (size_t i = 0; i < len; i++) {
        int v = b64v((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    if (bits > 0 && (acc & ((1u << bits) - 1)) != 0)
        return -1; /* non-canonical trailing bits */
    return (long)o;
}

/* A base64url member of a JWK, decoded (arena); NULL when absent or bad. */
static unsigned char *member(struct kw_arena *a, const struct kw_node *k, const char *name,
                             size_t *len)
{
    const struct kw_node *v = kw_node_get(k, name);
    if (v == NULL || v->type != KW_NODE_STRING || v->len == 0 || v->len > 2048)
        return NULL;
    unsigned char *out = kw_arena_alloc(a, v->len);
    long n = out != NULL ? b64url(v->str, v->len, out) : -1;
    if (n <= 0)
        return NULL;
    *len = (size_t)n;
    return out;
}

/* ---- JWKs -> EVP_PKEY ------------------------------------------------------------------ */

static EVP_PKEY *from_params(const char *type, OSSL_PARAM_BLD *bld)
{
    OSSL_PARAM *params = OSSL_PARAM_BLD_to_param(bld);
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, type, NULL);
    EVP_PKEY *pkey = NULL;
    if (params == NULL || ctx == NULL || EVP_PKEY_fromdata_init(ctx) <= 0 ||
        EVP_PKEY_fromdata(ctx, &pkey, EVP_PKEY_PUBLIC_KEY, params) <= 0)
        pkey = NULL;
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    return pkey;
}

static const char *load_key(struct kw_arena *a, const struct kw_node *k, struct jwk *out)
{
    const struct kw_node *kty = kw_node_get(k, "kty"), *crv = kw_node_get(k, "crv");
    const struct kw_node *use = kw_node_get(k, "use"), *kid = kw_node_get(k, "kid");
    const struct kw_node *alg = kw_node_get(k, "alg");
    if (kty == NULL || kty->type != KW_NODE_STRING)
        return "no kty";
    if (use != NULL && (use->type != KW_NODE_STRING || strcmp(use->str, "sig") != 0))
        return "not a signing key";
    memset(out, 0, sizeof(*out));
    if (kid != NULL && kid->type == KW_NODE_STRING)
        snprintf(out->kid, sizeof(out->kid), "%s", kid->str);
    out->alg = -1;
    if (alg != NULL && alg->type == KW_NODE_STRING) {
        for (int i = 0; i < ALG_COUNT; i++)
            if (strcmp(alg->str, alg_names[i]) == 0)
                out->alg = i;
        if (out->alg < 0)
            return "an algorithm knoway does not accept (asymmetric ones only)";
    }
    size_t l1 = 0, l2 = 0;
    if (strcmp(kty->str, "RSA") == 0) {
        unsigned char *n = member(a, k, "n", &l1), *e = member(a, k, "e", &l2);
        if (n == NULL || e == NULL)
            return "RSA key without n or e";
        if (l1 < 256)
            return "RSA key shorter than 2048 bits";
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        BIGNUM *bn = BN_bin2bn(n, (int)l1, NULL), *be = BN_bin2bn(e, (int)l2, NULL);
        if (bld != NULL && bn != NULL && be != NULL &&
            OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, bn) &&
            OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, be))
            out->pkey = from_params("RSA", bld);
        OSSL_PARAM_BLD_free(bld);
        BN_free(bn);
        BN_free(be);
        out->kind = K_RSA;
    } else if (strcmp(kty->str, "EC") == 0) {
        if (crv == NULL || crv->type != KW_NODE_STRING)
            return "EC key without crv";
        size_t want;
        const char *group;
        if (strcmp(crv->str, "P-256") == 0) {
            want = 32, group = "prime256v1", out->kind = K_P256;
        } else if (strcmp(crv->str, "P-384") == 0) {
            want = 48, group = "secp384r1", out->kind = K_P384;
        } else {
            return "EC curve other than P-256 or P-384";
        }
        unsigned char *x = member(a, k, "x", &l1), *y = member(a, k, "y", &l2);
        if (x == NULL || y == NULL || l1 != want || l2 != want)
            return "EC key with a bad x or y";
        unsigned char pt[1 + 2 * 48];
        pt[0] = 4;
        memcpy(pt + 1, x, want);
        memcpy(pt + 1 + want, y, want);
        OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
        if (bld != NULL &&
            OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, group, 0) &&
            OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, pt, 1 + 2 * want))
            out->pkey = from_params("EC", bld);
        OSSL_PARAM_BLD_free(bld);
    } else if (strcmp(kty->str, "OKP") == 0) {
        if (crv == NULL || crv->type != KW_NODE_STRING || strcmp(crv->str, "Ed25519") != 0)
            return "OKP curve other than Ed25519";
        unsigned char *x = member(a, k, "x", &l1);
        if (x == NULL || l1 != 32)
            return "Ed25519 key with a bad x";
        out->kind = K_ED25519;
        out->pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, x, l1);
    } else {
        return "a key type other than RSA, EC or OKP (symmetric keys are refused)";
    }
    return out->pkey != NULL ? NULL : "a key OpenSSL does not accept";
}

static void jwks_free(struct jwks *s)
{
    if (s == NULL)
        return;
    for (size_t i = 0; i < s->n; i++)
        EVP_PKEY_free(s->keys[i].pkey);
    free(s);
}

/* Parse a JWKS document; NULL (why set) when nothing usable is in it. Keys that cannot be
 * used are skipped with a log line. */
static struct jwks *jwks_parse(const char *issuer, const char *buf, size_t len, char *why,
                               size_t whylen)
{
    struct kw_arena *a = kw_arena_new(16 * DP_JWKS_MAX_BYTES);
    struct kw_node *root = NULL;
    struct jwks *s = NULL;
    char err[128];
    if (a == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (kw_json_parse(a, buf, len, &root, err, sizeof(err)) != KW_OK) {
        snprintf(why, whylen, "not JSON: %s", err);
        goto out;
    }
    const struct kw_node *keys = kw_node_get(root, "keys");
    if (keys == NULL || keys->type != KW_NODE_SEQ) {
        snprintf(why, whylen, "no \"keys\" array (a JWK Set is {\"keys\": [...]})");
        goto out;
    }
    s = calloc(1, sizeof(*s));
    for (size_t i = 0; s != NULL && i < keys->n && s->n < DP_JWT_MAX_KEYS; i++) {
        const char *bad = keys->items[i]->type == KW_NODE_MAP
                              ? load_key(a, keys->items[i], &s->keys[s->n])
                              : "not an object";
        if (bad == NULL) {
            s->n++;
        } else {
            char idx[24];
            snprintf(idx, sizeof(idx), "%zu", i);
            kw_log(KW_LOG_WARN, "JWKS key skipped", "issuer", issuer, "key", idx, "error", bad,
                   NULL);
        }
    }
    if (s != NULL && s->n == 0) {
        snprintf(why, whylen, "no usable key in the set");
        jwks_free(s);
        s = NULL;
    }
out:
    kw_arena_free(a);
    return s;
}

/* ---- loading --------------------------------------------------------------------------- */

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct kw_buf *b = ud;
    return kw_buf_append(b, ptr, size * nmemb) == KW_OK ? size * nmemb : 0;
}

static int fetch(const char *url, struct kw_buf *b, char *why, size_t whylen)
{
    CURL *c = curl_easy_init();
    if (c == NULL) {
        snprintf(why, whylen, "out of memory");
        return KW_ERROR;
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (rc != CURLE_OK) {
        snprintf(why, whylen, "%s", curl_easy_strerror(rc));
        return KW_ERROR;
    }
    if (status != 200) {
        snprintf(why, whylen, "HTTP status %ld", status);
        return KW_ERROR;
    }
    return KW_OK;
}

static void retire(struct dp_jwt *j, struct jwks *old)
{
    if (old == NULL)
        return;
    old->retired_ms = dp_now_ms();
    old->retired_next = j->retired;
    j->retired = old;
}

/* Load provider p's set now (refresher thread, or start). */
static void load(struct dp_jwt *j, struct provider *p)
{
    const struct kw_jwt_provider *c = p->conf;
    char why[256] = "";
    struct kw_buf b;
    kw_buf_init(&b, DP_JWKS_MAX_BYTES);
    int rc = KW_ERROR;
    if (c->jwks_file != NULL) {
        struct stat st;
        if (stat(c->jwks_file, &st) != 0) {
            snprintf(why, sizeof(why), "%s", strerror(errno));
        } else if (p->set != NULL && st.st_mtime == p->mtime && st.st_size == p->size) {
            kw_buf_cleanup(&b);
            return; /* unchanged */
        } else {
            FILE *f = fopen(c->jwks_file, "rb");
            char chunk[8192];
            size_t n;
            rc = f != NULL ? KW_OK : KW_ERROR;
            while (f != NULL && rc == KW_OK && (n = fread(chunk, 1, sizeof(chunk), f)) > 0)
                rc = kw_buf_append(&b, chunk, n);
            if (f == NULL)
                snprintf(why, sizeof(why), "%s", strerror(errno));
            else if (rc != KW_OK)
                snprintf(why, sizeof(why), "larger than %d bytes", DP_JWKS_MAX_BYTES);
            if (f != NULL)
                fclose(f);
            p->mtime = st.st_mtime;
            p->size = st.st_size;
        }
    } else {
        rc = fetch(c->jwks_url, &b, why, sizeof(why));
    }
    struct jwks *s =
        rc == KW_OK ? jwks_parse(c->issuer, b.data != NULL ? b.data : "", b.len, why, sizeof(why))
                    : NULL;
    kw_buf_cleanup(&b);
    if (s == NULL) {
        kw_log(KW_LOG_ERROR, "JWKS not loaded (the last good set stays)", "issuer", c->issuer,
               "source", c->jwks_file != NULL ? c->jwks_file : c->jwks_url, "error", why, NULL);
        return;
    }
    char nkeys[24];
    snprintf(nkeys, sizeof(nkeys), "%zu", s->n);
    kw_log(KW_LOG_INFO, "JWKS loaded", "issuer", c->issuer, "keys", nkeys, NULL);
    pthread_mutex_lock(&j->mu);
    retire(j, atomic_exchange(&p->set, s));
    pthread_mutex_unlock(&j->mu);
}

static void *refresher(void *arg)
{
    struct dp_jwt *j = arg;
    pthread_mutex_lock(&j->mu);
    while (!j->stop) {
        int64_t now = dp_now_ms(), next = now + 1000;
        for (size_t i = 0; i < j->n; i++) {
            struct provider *p = &j->p[i];
            if (now >= p->next_ms || atomic_exchange(&p->want, false)) {
                pthread_mutex_unlock(&j->mu);
                load(j, p);
                pthread_mutex_lock(&j->mu);
                p->next_ms = dp_now_ms() + p->conf->refresh_ms;
            }
            if (p->next_ms < next)
                next = p->next_ms;
        }
        /* free sets no worker can still be reading */
        struct jwks **pp = &j->retired;
        while (*pp != NULL) {
            if (dp_now_ms() - (*pp)->retired_ms > DP_JWKS_GRACE_MS) {
                struct jwks *dead = *pp;
                *pp = dead->retired_next;
                jwks_free(dead);
            } else {
                pp = &(*pp)->retired_next;
            }
        }
        int64_t wait = next - dp_now_ms();
        if (wait > 1000)
            wait = 1000; /* early refreshes are polled each second */
        if (wait > 0) {
            struct timespec ts;
            kw_deadline_after(&ts, wait);
            pthread_cond_timedwait(&j->cond, &j->mu, &ts);
        }
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

struct dp_jwt *dp_jwt_start(const struct kw_jwt_provider *providers, size_t n)
{
    struct dp_jwt *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->p = calloc(n, sizeof(*j->p));
    j->n = n;
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cond, NULL);
    if (j->p == NULL) {
        dp_jwt_stop(j);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        j->p[i].conf = &providers[i];
        load(j, &j->p[i]);
        j->p[i].next_ms = dp_now_ms() + providers[i].refresh_ms;
    }
    if (pthread_create(&j->thread, NULL, refresher, j) != 0) {
        dp_jwt_stop(j);
        return NULL;
    }
    j->started = true;
    return j;
}

void dp_jwt_stop(struct dp_jwt *j)
{
    if (j == NULL)
        return;
    if (j->started) {
        pthread_mutex_lock(&j->mu);
        j->stop = true;
        pthread_cond_signal(&j->cond);
        pthread_mutex_unlock(&j->mu);
        pthread_join(j->thread, NULL);
    }
    for (size_t i = 0; j->p != NULL && i < j->n; i++)
        jwks_free(atomic_load(&j->p[i].set));
    while (j->retired != NULL) {
        struct jwks *next = j->retired->retired_next;
        jwks_free(j->retired);
        j->retired = next;
    }
    pthread_mutex_destroy(&j->mu);
    pthread_cond_destroy(&j->cond);
    free(j->p);
    free(j);
}

/* ---- verifying ------------------------------------------------------------------------- */

int dp_jwt_looks_like(const char *t)
{
    const char *d1 = strchr(t, '.');
    const char *d2 = d1 != NULL ? strchr(d1 + 1, '.') : NULL;
    return strncmp(t, "eyJ", 3) == 0 && d2 != NULL && strchr(d2 + 1, '.') == NULL;
}

static struct kw_node *part(struct kw_arena *a, const char *s, size_t len)
{
    unsigned char *buf = kw_arena_alloc(a, len + 1);
    long n = buf != NULL ? b64url(s, len, buf) : -1;
    struct kw_node *root = NULL;
    char err[64];
    if (n <= 0 ||
        kw_json_parse(a, (const char *)buf, (size_t)n, &root, err, sizeof(err)) != KW_OK ||
        root->type != KW_NODE_MAP)
        return NULL;
    return root;
}

static bool fits(enum alg alg, enum kind k)
{
    switch (alg) {
    case ALG_RS256:
    case ALG_RS384:
    case ALG_RS512:
        return k == K_RSA;
    case ALG_ES256:
        return k == K_P256;
    case ALG_ES384:
        return k == K_P384;
    case ALG_EDDSA:
        return k == K_ED25519;
    case ALG_COUNT:
        break;
    }
    return false;
}

static bool verify_sig(const struct jwk *k, enum alg alg, const char *data, size_t dlen,
                       const unsigned char *sig, size_t slen)
{
    const EVP_MD *md = NULL;
    unsigned char der[160];
    const unsigned char *s = sig;
    size_t sl = slen;
    switch (alg) {
    case ALG_RS256:
    case ALG_ES256:
        md = EVP_sha256();
        break;
    case ALG_RS384:
    case ALG_ES384:
        md = EVP_sha384();
        break;
    case ALG_RS512:
        md = EVP_sha512();
        break;
    case ALG_EDDSA:
    case ALG_COUNT:
        break;
    }
    if (alg == ALG_ES256 || alg == ALG_ES384) {
        /* JWS carries R || S; OpenSSL verifies DER */
        size_t half = alg == ALG_ES256 ? 32 : 48;
        if (slen != 2 * half)
            return false;
        ECDSA_SIG *es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)half, NULL), *ss = BN_bin2bn(sig + half, (int)half, NULL);
        if (es == NULL || r == NULL || ss == NULL || !ECDSA_SIG_set0(es, r, ss)) {
            BN_free(r);
            BN_free(ss);
            ECDSA_SIG_free(es);
            return false;
        }
        unsigned char *p = der;
        int n = i2d_ECDSA_SIG(es, NULL) <= (int)sizeof(der) ? i2d_ECDSA_SIG(es, &p) : -1;
        ECDSA_SIG_free(es);
        if (n <= 0)
            return false;
        s = der;
        sl = (size_t)n;
    }
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, md, NULL, k->pkey) == 1 &&
              EVP_DigestVerify(ctx, s, sl, (const unsigned char *)data, dlen) == 1;
    EVP_MD_CTX_free(ctx);
    return ok;
}

static bool has_audience(const struct kw_jwt_provider *c, const struct kw_node *aud)
{
    if (c->naudiences == 0)
        return true;
    size_t n = aud == NULL ? 0 : aud->type == KW_NODE_SEQ ? aud->n : 1;
    for (size_t i = 0; i < n; i++) {
        const struct kw_node *v = aud->type == KW_NODE_SEQ ? aud->items[i] : aud;
        for (size_t k = 0; v->type == KW_NODE_STRING && k < c->naudiences; k++)
            if (strcmp(v->str, c->audiences[k]) == 0)
                return true;
    }
    return false;
}

static const char *claim_string(struct kw_arena *a, const struct kw_node *claims, const char *name)
{
    const struct kw_node *v = kw_node_get(claims, name);
    if (v == NULL)
        return NULL;
    if (v->type == KW_NODE_STRING && v->len > 0 && v->len <= 256 && strlen(v->str) == v->len)
        return v->str;
    if (v->type == KW_NODE_INT)
        return kw_arena_printf(a, "%lld", (long long)v->i);
    return NULL;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(why, whylen, __VA_ARGS__);                                                        \
        return KW_ERROR;                                                                           \
    } while (0)

int dp_jwt_verify(struct dp_jwt *j, const char *token, long long now_s, struct kw_arena *a,
                  struct dp_jwt_claims *out, char *why, size_t whylen)
{
    size_t len = strlen(token);
    if (len > DP_JWT_MAX_TOKEN)
        FAIL("the token is longer than %d bytes", DP_JWT_MAX_TOKEN);
    const char *d1 = strchr(token, '.'), *d2 = d1 != NULL ? strchr(d1 + 1, '.') : NULL;
    if (d2 == NULL)
        FAIL("the token is not a compact JWS (header.payload.signature)");
    struct kw_node *hdr = part(a, token, (size_t)(d1 - token));
    struct kw_node *claims = part(a, d1 + 1, (size_t)(d2 - d1 - 1));
    if (hdr == NULL || claims == NULL)
        FAIL("the token's header or payload is not base64url JSON");
    const struct kw_node *an = kw_node_get(hdr, "alg"), *kid = kw_node_get(hdr, "kid");
    int alg = -1;
    for (int i = 0; an != NULL && an->type == KW_NODE_STRING && i < ALG_COUNT; i++)
        if (strcmp(an->str, alg_names[i]) == 0)
            alg = i;
    if (alg < 0)
        FAIL("the token's alg is not accepted (RS256/384/512, ES256/384, EdDSA only)");
    if (kw_node_get(hdr, "crit") != NULL)
        FAIL("the token has critical header parameters knoway does not understand");
    /* the issuer picks the key set: a token of one issuer never meets another's keys */
    const struct kw_node *iss = kw_node_get(claims, "iss");
    struct provider *p = NULL;
    for (size_t i = 0; iss != NULL && iss->type == KW_NODE_STRING && i < j->n && p == NULL; i++)
        if (strcmp(j->p[i].conf->issuer, iss->str) == 0)
            p = &j->p[i];
    if (p == NULL)
        FAIL("the token's issuer is not trusted");
    const char *kids = kid != NULL && kid->type == KW_NODE_STRING ? kid->str : NULL;
    struct jwks *set = atomic_load(&p->set);
    const struct jwk *key = NULL;
    size_t candidates = 0;
    for (size_t i = 0; set != NULL && i < set->n; i++) {
        const struct jwk *k = &set->keys[i];
        if ((kids != NULL && strcmp(k->kid, kids) != 0) || !fits((enum alg)alg, k->kind) ||
            (k->alg >= 0 && k->alg != alg))
            continue;
        candidates++;
        if (key == NULL)
            key = k;
    }
    if (key == NULL || (kids == NULL && candidates > 1)) {
        int64_t now = dp_now_ms();
        long long last = atomic_load(&p->early_ms);
        if (key == NULL && now - last > DP_JWKS_EARLY_MS &&
            atomic_compare_exchange_strong(&p->early_ms, &last, now))
            atomic_store(&p->want, true); /* perhaps a rotated key: refresh early */
        FAIL(key == NULL ? "no key of the issuer's set matches the token's kid and alg"
                         : "the token has no kid and several keys could have signed it");
    }
    unsigned char *sig = kw_arena_alloc(a, len - (size_t)(d2 - token));
    long sl = sig != NULL ? b64url(d2 + 1, strlen(d2 + 1), sig) : -1;
    if (sl <= 0 || !verify_sig(key, (enum alg)alg, token, (size_t)(d2 - token), sig, (size_t)sl))
        FAIL("the token's signature is invalid");
    const struct kw_node *exp = kw_node_get(claims, "exp"), *nbf = kw_node_get(claims, "nbf");
    const struct kw_node *iat = kw_node_get(claims, "iat");
    if (exp == NULL || exp->type != KW_NODE_INT)
        FAIL("the token has no exp claim");
    if (now_s > exp->i + DP_JWT_LEEWAY_S)
        FAIL("the token has expired");
    if (nbf != NULL && (nbf->type != KW_NODE_INT || now_s + DP_JWT_LEEWAY_S < nbf->i))
        FAIL("the token is not valid yet (nbf)");
    if (iat != NULL && (iat->type != KW_NODE_INT || now_s + DP_JWT_LEEWAY_S < iat->i))
        FAIL("the token was issued in the future (iat)");
    if (!has_audience(p->conf, kw_node_get(claims, "aud")))
        FAIL("the token's audience is not accepted");
    out->provider = p->conf;
    out->consumer =
        p->conf->consumer_claim != NULL ? claim_string(a, claims, p->conf->consumer_claim) : NULL;
    out->user = claim_string(a, claims, p->conf->user_claim);
    return KW_OK;
}
