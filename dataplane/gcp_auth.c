/* Google OAuth2 access tokens from service-account keys (gcp_auth.h). */
#include "gcp_auth.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/snapshot.h"

#define REFRESH_BEFORE_MS (5 * 60 * 1000)
#define MIN_VALID_MS      (10 * 1000)
#define FORGET_AFTER_MS   (60 * 60 * 1000)
#define MAX_BACKOFF_MS    (60 * 1000)
#define EXCHANGE_TIMEOUT  10L /* seconds */
#define MAX_ANSWER        (64u * 1024)

struct entry {
    bool used;
    char digest[KW_CREDENTIAL_DIGEST_LEN + 1];
    char *key; /* the key file (wiped when forgotten) */
    size_t klen;
    char token[DP_GCP_MAX_TOKEN + 1];
    int64_t expires_ms;  /* of token (0: none) */
    int64_t margin_ms;   /* used until this long before it expires: 10 s, a tenth of short lives */
    int64_t refresh_ms;  /* when to exchange next (0: now) */
    int64_t last_use_ms; /* asked for by a request or a configuration */
    unsigned failures;
    bool bad_key; /* the key cannot be used (not retried until it changes) */
    bool busy;    /* being exchanged by the thread */
    char err[256];
};

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool started, stop;
    struct entry e[DP_GCP_MAX_KEYS];
    atomic_uint_fast64_t ok, failed;
} g = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- the exchange (on the thread, without the lock) ---------------------------------------- */

static int b64url(struct kw_buf *out, const unsigned char *in, size_t len)
{
    char *p = malloc(4 * ((len + 2) / 3) + 1);
    if (p == NULL)
        return KW_ERROR;
    int n = EVP_EncodeBlock((unsigned char *)p, in, (int)len);
    while (n > 0 && p[n - 1] == '=')
        n--;
    for (int i = 0; i < n; i++)
        p[i] = p[i] == '+' ? '-' : p[i] == '/' ? '_' : p[i];
    int rc = kw_buf_append(out, p, (size_t)n);
    free(p);
    return rc;
}

static const char *str_of(const struct kw_node *m, const char *key)
{
    const struct kw_node *v = kw_node_get(m, key);
    return v != NULL && v->type == KW_NODE_STRING && v->len > 0 ? v->str : NULL;
}

struct key_info {
    const char *email, *key_id, *token_uri, *pem;
};

static const char *const google_token_uris[] = {
    "https://oauth2.googleapis.com/token",
    "https://www.googleapis.com/oauth2/v4/token",
    "https://accounts.google.com/o/oauth2/token",
};
static const char *const *extra_uris;
static size_t nextra_uris;

void dp_gcp_auth_allow(const char *const *urls, size_t n)
{
    extra_uris = urls;
    nextra_uris = n;
}

static bool token_uri_allowed(const char *u)
{
    for (size_t i = 0; i < KW_ARRAY_LEN(google_token_uris); i++)
        if (strcmp(u, google_token_uris[i]) == 0)
            return true;
    for (size_t i = 0; i < nextra_uris; i++)
        if (strcmp(u, extra_uris[i]) == 0)
            return true;
    return false;
}

/* The fields of a service-account key; KW_DECLINED with err set (a key that cannot work). */
static int read_key(struct kw_arena *a, const char *json, size_t len, struct key_info *k, char *err,
                    size_t errlen)
{
    struct kw_node *root;
    char perr[128];
    if (len > DP_GCP_MAX_KEY_BYTES) {
        snprintf(err, errlen, "the service-account key is larger than %u bytes",
                 DP_GCP_MAX_KEY_BYTES);
        return KW_DECLINED;
    }
    if (kw_json_parse(a, json, len, &root, perr, sizeof(perr)) != KW_OK ||
        root->type != KW_NODE_MAP) {
        snprintf(err, errlen, "the service-account key is not a JSON object (%s)", perr);
        return KW_DECLINED;
    }
    const char *type = str_of(root, "type");
    if (type == NULL || strcmp(type, "service_account") != 0) {
        snprintf(err, errlen,
                 "the credential is a JSON object of type \"%s\", not a service-account key "
                 "(\"type\": \"service_account\")",
                 type != NULL ? type : "");
        return KW_DECLINED;
    }
    k->email = str_of(root, "client_email");
    k->pem = str_of(root, "private_key");
    k->key_id = str_of(root, "private_key_id");
    k->token_uri = str_of(root, "token_uri");
    if (k->token_uri == NULL)
        k->token_uri = DP_GCP_DEFAULT_TOKEN_URI;
    if (k->email == NULL || k->pem == NULL) {
        snprintf(err, errlen, "the service-account key has no %s",
                 k->email == NULL ? "client_email" : "private_key");
        return KW_DECLINED;
    }
    if (!token_uri_allowed(k->token_uri)) {
        /* the key comes from a Secret a tenant writes: without this, the data plane would
         * post to any address the key names (a scanner of its network) */
        snprintf(err, errlen,
                 "the service-account key's token_uri is not one of Google's token endpoints "
                 "nor listed in DataPlane spec.vertexAI.tokenURLs: %.80s",
                 k->token_uri);
        return KW_DECLINED;
    }
    return KW_OK;
}

/* header.claims.signature, signed RS256 with the key's private key; KW_DECLINED: the key
 * cannot sign. */
static int sign_jwt(const struct key_info *k, int64_t now_s, struct kw_buf *jwt, char *err,
                    size_t errlen)
{
    struct kw_buf part;
    kw_buf_init(&part, 16384);
    int rc = kw_buf_puts(&part, "{\"alg\":\"RS256\",\"typ\":\"JWT\"");
    if (k->key_id != NULL) {
        rc |= kw_buf_puts(&part, ",\"kid\":");
        rc |= kw_json_write_string(&part, k->key_id, strlen(k->key_id));
    }
    rc |= kw_buf_puts(&part, "}");
    rc |= b64url(jwt, (const unsigned char *)part.data, part.len);
    rc |= kw_buf_puts(jwt, ".");
    kw_buf_reset(&part);
    rc |= kw_buf_puts(&part, "{\"iss\":");
    rc |= kw_json_write_string(&part, k->email, strlen(k->email));
    rc |= kw_buf_puts(&part, ",\"scope\":\"" DP_GCP_SCOPE "\",\"aud\":");
    rc |= kw_json_write_string(&part, k->token_uri, strlen(k->token_uri));
    rc |= kw_buf_printf(&part, ",\"iat\":%lld,\"exp\":%lld}", (long long)now_s,
                        (long long)now_s + 3600);
    rc |= b64url(jwt, (const unsigned char *)part.data, part.len);
    kw_buf_cleanup(&part);
    if (rc != KW_OK) {
        snprintf(err, errlen, "out of memory");
        return KW_ERROR;
    }

    BIO *bio = BIO_new_mem_buf(k->pem, -1);
    EVP_PKEY *pkey = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    if (pkey == NULL || EVP_PKEY_get_base_id(pkey) != EVP_PKEY_RSA) {
        EVP_PKEY_free(pkey);
        snprintf(err, errlen, "the service-account key's private_key is not an RSA key in PEM");
        return KW_DECLINED;
    }
    unsigned char sig[1024];
    size_t siglen = sizeof(sig);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    bool ok = ctx != NULL && EVP_DigestSignInit(ctx, NULL, EVP_sha256(), NULL, pkey) == 1 &&
              EVP_DigestSign(ctx, NULL, &siglen, (const unsigned char *)jwt->data, jwt->len) == 1 &&
              siglen <= sizeof(sig) &&
              EVP_DigestSign(ctx, sig, &siglen, (const unsigned char *)jwt->data, jwt->len) == 1;
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pkey);
    if (!ok || kw_buf_puts(jwt, ".") != KW_OK || b64url(jwt, sig, siglen) != KW_OK) {
        snprintf(err, errlen, "signing the token request failed");
        return KW_ERROR;
    }
    return KW_OK;
}

static size_t on_answer(char *p, size_t size, size_t n, void *ud)
{
    struct kw_buf *b = ud;
    return kw_buf_append(b, p, size * n) == KW_OK ? size * n : 0;
}

/* Exchange the key for a token: KW_OK with token and lifetime, else err and KW_ERROR (the
 * endpoint refused or failed: retried) or KW_DECLINED (the key cannot work). */
static int exchange(const char *key_json, size_t klen, char *token, int64_t *lifetime_ms, char *err,
                    size_t errlen)
{
    struct kw_arena *a = kw_arena_new(4u * DP_GCP_MAX_KEY_BYTES);
    struct key_info k = {0};
    struct kw_buf jwt, form, answer;
    kw_buf_init(&jwt, 32768);
    kw_buf_init(&form, 32768);
    kw_buf_init(&answer, MAX_ANSWER);
    int rc = KW_ERROR;
    if (a == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    rc = read_key(a, key_json, klen, &k, err, errlen);
    if (rc == KW_OK)
        rc = sign_jwt(&k, now_ms() / 1000, &jwt, err, errlen);
    if (rc != KW_OK)
        goto out;
    rc = KW_ERROR;
    /* the JWT is base64url and '.': nothing to escape */
    kw_buf_puts(&form,
                "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=");
    kw_buf_append(&form, jwt.data, jwt.len);
    CURL *c = curl_easy_init();
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    char cerr[CURL_ERROR_SIZE] = "";
    curl_easy_setopt(c, CURLOPT_URL, k.token_uri);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, form.data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)form.len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, EXCHANGE_TIMEOUT);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_answer);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &answer);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, cerr);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "knoway");
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(c);
    if (cc != CURLE_OK) {
        snprintf(err, errlen, "the token endpoint %s did not answer: %s", k.token_uri,
                 cerr[0] != '\0' ? cerr : curl_easy_strerror(cc));
        goto out;
    }
    struct kw_node *root = NULL;
    char perr[128];
    if (kw_json_parse(a, answer.data != NULL ? answer.data : "", answer.len, &root, perr,
                      sizeof(perr)) != KW_OK)
        root = NULL;
    if (status != 200) {
        /* RFC 6749 5.2: {"error": "invalid_grant", "error_description": "..."} */
        const char *e = str_of(root, "error"), *d = str_of(root, "error_description");
        snprintf(err, errlen, "the token endpoint answered %ld%s%s%s%s", status,
                 e != NULL ? ": " : "", e != NULL ? e : "", d != NULL ? ": " : "",
                 d != NULL ? d : "");
        goto out;
    }
    const char *tok = str_of(root, "access_token");
    const struct kw_node *exp = kw_node_get(root, "expires_in");
    size_t tlen = tok != NULL ? strlen(tok) : 0;
    if (tok == NULL || tlen > DP_GCP_MAX_TOKEN || kw_credential_header_check(tok, &tlen) != KW_OK) {
        snprintf(err, errlen, "the token endpoint's answer holds no usable access_token");
        goto out;
    }
    memcpy(token, tok, tlen);
    token[tlen] = '\0';
    *lifetime_ms = exp != NULL && exp->type == KW_NODE_INT && exp->i > 0 && exp->i < 86400 * 7
                       ? exp->i * 1000
                       : 3600 * 1000;
    rc = KW_OK;
out:
    /* the assertion works for an hour and the answer holds the token: wiped, not just freed */
    if (form.data != NULL)
        OPENSSL_cleanse(form.data, form.len);
    if (jwt.data != NULL)
        OPENSSL_cleanse(jwt.data, jwt.len);
    if (answer.data != NULL)
        OPENSSL_cleanse(answer.data, answer.len);
    kw_buf_cleanup(&jwt);
    kw_buf_cleanup(&form);
    kw_buf_cleanup(&answer);
    kw_arena_free(a);
    return rc;
}

/* ---- the table ----------------------------------------------------------------------------- */

static void forget(struct entry *e)
{
    if (e->key != NULL) {
        OPENSSL_cleanse(e->key, e->klen);
        free(e->key);
    }
    OPENSSL_cleanse(e->token, sizeof(e->token));
    memset(e, 0, sizeof(*e));
}

/* The thread: exchange what is due, sleep until the next due time or a new key. */
static void *run(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&g.mu);
    while (!g.stop) {
        int64_t now = now_ms(), next = now + FORGET_AFTER_MS;
        struct entry *due = NULL;
        for (size_t i = 0; i < DP_GCP_MAX_KEYS; i++) {
            struct entry *e = &g.e[i];
            if (!e->used)
                continue;
            if (!e->busy && now - e->last_use_ms > FORGET_AFTER_MS) {
                forget(e);
                continue;
            }
            if (e->bad_key)
                continue;
            if (e->refresh_ms <= now && due == NULL)
                due = e;
            else if (e->refresh_ms < next)
                next = e->refresh_ms;
        }
        if (due == NULL) {
            struct timespec ts = {next / 1000, (next % 1000) * 1000000};
            pthread_cond_timedwait(&g.cv, &g.mu, &ts);
            continue;
        }
        /* exchange outside the lock, with a copy of the key (it may be forgotten meanwhile) */
        due->busy = true;
        size_t klen = due->klen;
        char *key = malloc(klen + 1);
        char token[DP_GCP_MAX_TOKEN + 1];
        char err[256] = "out of memory";
        int64_t life = 0;
        int rc = KW_ERROR;
        if (key != NULL) {
            memcpy(key, due->key, klen + 1);
            pthread_mutex_unlock(&g.mu);
            rc = exchange(key, klen, token, &life, err, sizeof(err));
            OPENSSL_cleanse(key, klen);
            free(key);
            pthread_mutex_lock(&g.mu);
        }
        due->busy = false;
        now = now_ms();
        if (rc == KW_OK) {
            atomic_fetch_add(&g.ok, 1);
            memcpy(due->token, token, strlen(token) + 1);
            due->expires_ms = now + life;
            due->margin_ms = life / 10 < MIN_VALID_MS ? life / 10 : MIN_VALID_MS;
            int64_t before = life / 2 < REFRESH_BEFORE_MS ? life / 2 : REFRESH_BEFORE_MS;
            due->refresh_ms = due->expires_ms - before;
            due->failures = 0;
            due->err[0] = '\0';
            char secs[24];
            snprintf(secs, sizeof(secs), "%lld", (long long)(life / 1000));
            kw_log(KW_LOG_INFO, "Vertex AI access token obtained", "expires_in_s", secs, NULL);
        } else {
            atomic_fetch_add(&g.failed, 1);
            /* a key that cannot sign never will; the endpoint's refusals are retried */
            due->bad_key = rc == KW_DECLINED;
            unsigned f = due->failures < 16 ? due->failures : 16;
            int64_t backoff = 1000ll << f;
            due->refresh_ms = now + (backoff < MAX_BACKOFF_MS ? backoff : MAX_BACKOFF_MS);
            due->failures++;
            snprintf(due->err, sizeof(due->err), "%s", err);
            kw_log(KW_LOG_WARN, "Vertex AI token exchange failed", "error", err, NULL);
        }
        OPENSSL_cleanse(token, sizeof(token));
    }
    pthread_mutex_unlock(&g.mu);
    return NULL;
}

/* The entry of digest, created when absent (LRU eviction when full). Under the lock. */
static struct entry *find(const char *digest, const char *key_json, size_t len, bool *created)
{
    struct entry *free_e = NULL, *oldest = NULL;
    *created = false;
    for (size_t i = 0; i < DP_GCP_MAX_KEYS; i++) {
        struct entry *e = &g.e[i];
        if (e->used && strcmp(e->digest, digest) == 0)
            return e;
        if (!e->used && free_e == NULL)
            free_e = e;
        if (e->used && !e->busy && (oldest == NULL || e->last_use_ms < oldest->last_use_ms))
            oldest = e;
    }
    struct entry *e = free_e != NULL ? free_e : oldest;
    if (e == NULL)
        return NULL;
    if (e->used)
        forget(e);
    e->key = malloc(len + 1);
    if (e->key == NULL)
        return NULL;
    memcpy(e->key, key_json, len);
    e->key[len] = '\0';
    e->klen = len;
    snprintf(e->digest, sizeof(e->digest), "%s", digest);
    e->used = true;
    if (!g.started && !g.stop) {
        /* signals are the main thread's (signalfd), whenever this thread is started */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        g.started = pthread_create(&g.thread, NULL, run, NULL) == 0;
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (!g.started)
            snprintf(e->err, sizeof(e->err), "cannot start the token thread");
    }
    *created = true;
    return e;
}

void dp_gcp_auth_want(const char *digest, const char *key_json, size_t len)
{
    bool created;
    pthread_mutex_lock(&g.mu);
    struct entry *e = find(digest, key_json, len, &created);
    if (e != NULL)
        e->last_use_ms = now_ms();
    if (created)
        pthread_cond_signal(&g.cv);
    pthread_mutex_unlock(&g.mu);
}

enum dp_gcp_state dp_gcp_auth_token(const char *digest, const char *key_json, size_t len,
                                    struct kw_arena *a, const char **token, char *err,
                                    size_t errlen)
{
    bool created;
    enum dp_gcp_state st;
    int64_t now = now_ms();
    *token = NULL;
    pthread_mutex_lock(&g.mu);
    struct entry *e = find(digest, key_json, len, &created);
    if (e == NULL) {
        snprintf(err, errlen, "out of memory");
        st = DP_GCP_FAILED;
    } else if (e->expires_ms - now > e->margin_ms) {
        *token = kw_arena_strdup(a, e->token);
        st = *token != NULL ? DP_GCP_OK : DP_GCP_FAILED;
        if (*token == NULL)
            snprintf(err, errlen, "out of memory");
    } else if (e->err[0] != '\0') {
        snprintf(err, errlen, "%s", e->err);
        st = DP_GCP_FAILED;
    } else {
        snprintf(err, errlen, "the access token is being fetched");
        st = DP_GCP_PENDING;
    }
    if (e != NULL)
        e->last_use_ms = now;
    if (created)
        pthread_cond_signal(&g.cv);
    pthread_mutex_unlock(&g.mu);
    return st;
}

int dp_gcp_auth_write_metrics(struct kw_buf *out)
{
    unsigned n = 0;
    pthread_mutex_lock(&g.mu);
    int64_t now = now_ms();
    for (size_t i = 0; i < DP_GCP_MAX_KEYS; i++)
        n += g.e[i].used && g.e[i].expires_ms - now > g.e[i].margin_ms;
    pthread_mutex_unlock(&g.mu);
    return kw_buf_printf(
        out,
        "# HELP knoway_gcp_token_exchanges_total Service-account keys exchanged for Vertex AI "
        "access tokens.\n"
        "# TYPE knoway_gcp_token_exchanges_total counter\n"
        "knoway_gcp_token_exchanges_total{result=\"ok\"} %llu\n"
        "knoway_gcp_token_exchanges_total{result=\"error\"} %llu\n"
        "# HELP knoway_gcp_tokens Vertex AI access tokens held and valid.\n"
        "# TYPE knoway_gcp_tokens gauge\n"
        "knoway_gcp_tokens %u\n",
        (unsigned long long)atomic_load(&g.ok), (unsigned long long)atomic_load(&g.failed), n);
}

void dp_gcp_auth_stop(void)
{
    pthread_mutex_lock(&g.mu);
    bool started = g.started;
    g.stop = true;
    pthread_cond_signal(&g.cv);
    pthread_mutex_unlock(&g.mu);
    if (started)
        pthread_join(g.thread, NULL);
    for (size_t i = 0; i < DP_GCP_MAX_KEYS; i++)
        if (g.e[i].used)
            forget(&g.e[i]);
}
