/* The Kubernetes REST client: configuration (kubeconfig or in-cluster) and requests. */
#include <errno.h>
#include <libgen.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kube.h"
#include "knoway/arena.h"
#include "knoway/diag.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/yaml.h"

#define TOKEN_REREAD_MS 60000
#define MAX_FILE_BYTES  (4u * 1024 * 1024)

int64_t ctl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The whole file, NUL-terminated, or NULL with errno set. */
static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            if (cap >= MAX_FILE_BYTES) {
                free(buf);
                fclose(f);
                errno = EFBIG;
                return NULL;
            }
            cap = cap == 0 ? 8192 : cap * 2;
            char *nb = realloc(buf, cap);
            if (nb == NULL) {
                free(buf);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int e = ferror(f) ? EIO : 0;
    fclose(f);
    if (e != 0) {
        free(buf);
        errno = e;
        return NULL;
    }
    buf[n] = '\0';
    if (len != NULL)
        *len = n;
    return buf;
}

char *ctl_read_token(const char *path)
{
    char *t = read_file(path, NULL);
    if (t == NULL)
        return NULL;
    size_t n = strlen(t);
    while (n > 0 && (t[n - 1] == '\n' || t[n - 1] == '\r' || t[n - 1] == ' ' || t[n - 1] == '\t'))
        t[--n] = '\0';
    return t;
}

static char *base64_decode(const char *in, size_t len, size_t *outlen)
{
    char *clean = malloc(len + 1), *out = NULL;
    size_t n = 0;
    if (clean == NULL)
        return NULL;
    for (size_t i = 0; i < len; i++)
        if (in[i] != '\n' && in[i] != '\r' && in[i] != ' ')
            clean[n++] = in[i];
    if (n % 4 != 0 || n == 0)
        goto out;
    out = malloc(n / 4 * 3 + 1);
    if (out == NULL)
        goto out;
    int got = EVP_DecodeBlock((unsigned char *)out, (unsigned char *)clean, (int)n);
    if (got < 0) {
        free(out);
        out = NULL;
        goto out;
    }
    got -= (clean[n - 1] == '=') + (clean[n - 2] == '=');
    out[got] = '\0';
    *outlen = (size_t)got;
out:
    free(clean);
    return out;
}

static const char *str_of(const struct kw_node *m, const char *key)
{
    const struct kw_node *v = kw_node_get(m, key);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : NULL;
}

/* The entry of a named list (clusters, users, contexts) called name, its inner map. */
static const struct kw_node *named(const struct kw_node *doc, const char *list, const char *inner,
                                   const char *name)
{
    const struct kw_node *l = kw_node_get(doc, list);
    if (l == NULL || l->type != KW_NODE_SEQ || name == NULL)
        return NULL;
    for (size_t i = 0; i < l->n; i++) {
        const char *n = str_of(l->items[i], "name");
        if (n != NULL && strcmp(n, name) == 0)
            return kw_node_get(l->items[i], inner);
    }
    return NULL;
}

/* A file name from the kubeconfig, relative to its folder. */
static char *resolve_path(const char *dir, const char *p)
{
    char *out;
    if (p[0] == '/' || asprintf(&out, "%s/%s", dir, p) == -1)
        return strdup(p);
    return out;
}

static int decode_data(const struct kw_node *m, const char *key, char **data, size_t *len,
                       const char *what, const char *file, char *err, size_t errlen)
{
    const char *v = str_of(m, key);
    if (v == NULL)
        return KW_OK;
    *data = base64_decode(v, strlen(v), len);
    if (*data == NULL) {
        snprintf(err, errlen, "%s: %s.%s: is not valid base64", file, what, key);
        return KW_ERROR;
    }
    return KW_OK;
}

int ctl_kube_config_load_file(struct ctl_kube_config *c, const char *path, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    char buf[4096];
    if (path == NULL) {
        const char *env = getenv("KUBECONFIG");
        if (env != NULL && env[0] != '\0') {
            snprintf(buf, sizeof(buf), "%s", env);
            char *colon = strchr(buf, ':');
            if (colon != NULL)
                *colon = '\0';
        } else {
            const char *home = getenv("HOME");
            snprintf(buf, sizeof(buf), "%s/.kube/config", home != NULL ? home : "");
        }
        path = buf;
    }
    size_t len;
    char *text = read_file(path, &len);
    if (text == NULL) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return KW_ERROR;
    }
    struct kw_arena *a = kw_arena_new(64u * 1024 * 1024);
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_node **docs = NULL;
    size_t ndocs = 0;
    int rc = KW_ERROR;
    char *dircopy = strdup(path);
    const char *dir = dircopy != NULL ? dirname(dircopy) : ".";
    if (a == NULL || kw_yaml_parse(a, path, text, len, &docs, &ndocs, &diag) != KW_OK ||
        ndocs != 1 || docs[0]->type != KW_NODE_MAP) {
        struct kw_buf b;
        kw_buf_init(&b, 1024);
        if (diag.n > 0)
            kw_diag_format(&diag.entries[0], &b);
        snprintf(err, errlen, "%s", b.data != NULL ? b.data : "");
        if (b.data == NULL)
            snprintf(err, errlen, "%s: not a kubeconfig (one YAML map expected)", path);
        kw_buf_cleanup(&b);
        goto out;
    }
    const struct kw_node *doc = docs[0];
    const char *ctxname = str_of(doc, "current-context");
    if (ctxname == NULL || ctxname[0] == '\0') {
        snprintf(err, errlen, "%s: current-context: is not set", path);
        goto out;
    }
    const struct kw_node *ctx = named(doc, "contexts", "context", ctxname);
    if (ctx == NULL) {
        snprintf(err, errlen, "%s: contexts: no context named \"%s\"", path, ctxname);
        goto out;
    }
    const char *clname = str_of(ctx, "cluster"), *uname = str_of(ctx, "user");
    const struct kw_node *cl = named(doc, "clusters", "cluster", clname);
    if (cl == NULL) {
        snprintf(err, errlen, "%s: clusters: no cluster named \"%s\" (context \"%s\")", path,
                 clname != NULL ? clname : "", ctxname);
        goto out;
    }
    const struct kw_node *user = named(doc, "users", "user", uname); /* may be absent */
    const char *server = str_of(cl, "server");
    if (server == NULL || strncmp(server, "http", 4) != 0) {
        snprintf(err, errlen, "%s: clusters[%s].cluster.server: an http(s) URL is required", path,
                 clname);
        goto out;
    }
    c->server = strdup(server);
    size_t sl = strlen(c->server);
    while (sl > 0 && c->server[sl - 1] == '/')
        c->server[--sl] = '\0';
    const char *ns = str_of(ctx, "namespace");
    c->ns = strdup(ns != NULL && ns[0] != '\0' ? ns : "default");
    const struct kw_node *ins = kw_node_get(cl, "insecure-skip-tls-verify");
    c->insecure = ins != NULL && ins->type == KW_NODE_BOOL && ins->b;
    const char *v;
    if ((v = str_of(cl, "certificate-authority")) != NULL)
        c->ca_file = resolve_path(dir, v);
    if (decode_data(cl, "certificate-authority-data", &c->ca_data, &c->ca_len, "cluster", path, err,
                    errlen) != KW_OK)
        goto out;
    if (user != NULL) {
        if ((v = str_of(user, "token")) != NULL)
            c->token = strdup(v);
        if ((v = str_of(user, "tokenFile")) != NULL)
            c->token_file = resolve_path(dir, v);
        if ((v = str_of(user, "client-certificate")) != NULL)
            c->cert_file = resolve_path(dir, v);
        if ((v = str_of(user, "client-key")) != NULL)
            c->key_file = resolve_path(dir, v);
        if (decode_data(user, "client-certificate-data", &c->cert_data, &c->cert_len, "user", path,
                        err, errlen) != KW_OK ||
            decode_data(user, "client-key-data", &c->key_data, &c->key_len, "user", path, err,
                        errlen) != KW_OK)
            goto out;
        if (kw_node_get(user, "exec") != NULL || kw_node_get(user, "auth-provider") != NULL) {
            snprintf(err, errlen,
                     "%s: users[%s].user: exec and auth-provider plugins are not supported; "
                     "use a token, tokenFile or client certificate",
                     path, uname);
            goto out;
        }
    }
    if (asprintf(&c->source, "kubeconfig %s (context %s)", path, ctxname) == -1)
        c->source = NULL;
    rc = KW_OK;
out:
    if (rc != KW_OK)
        ctl_kube_config_cleanup(c);
    free(dircopy);
    kw_diag_cleanup(&diag);
    kw_arena_free(a);
    free(text);
    return rc;
}

int ctl_kube_config_in_cluster(struct ctl_kube_config *c, const char *sa_dir, char *err,
                               size_t errlen)
{
    memset(c, 0, sizeof(*c));
    const char *host = getenv("KUBERNETES_SERVICE_HOST"), *port = getenv("KUBERNETES_SERVICE_PORT");
    if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0') {
        snprintf(err, errlen,
                 "not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset); pass "
                 "--kubeconfig FILE");
        return KW_ERROR;
    }
    bool v6 = strchr(host, ':') != NULL;
    if (asprintf(&c->server, "https://%s%s%s:%s", v6 ? "[" : "", host, v6 ? "]" : "", port) == -1 ||
        asprintf(&c->token_file, "%s/token", sa_dir) == -1 ||
        asprintf(&c->ca_file, "%s/ca.crt", sa_dir) == -1) {
        snprintf(err, errlen, "out of memory");
        ctl_kube_config_cleanup(c);
        return KW_ERROR;
    }
    char nspath[4096];
    snprintf(nspath, sizeof(nspath), "%s/namespace", sa_dir);
    c->ns = ctl_read_token(nspath);
    if (c->ns == NULL)
        c->ns = strdup("default");
    if (asprintf(&c->source, "in-cluster %s (service account %s)", c->server, sa_dir) == -1)
        c->source = NULL;
    return KW_OK;
}

void ctl_kube_config_cleanup(struct ctl_kube_config *c)
{
    free(c->server);
    free(c->token);
    free(c->token_file);
    free(c->ca_file);
    free(c->ca_data);
    free(c->cert_file);
    free(c->key_file);
    free(c->cert_data);
    free(c->key_data);
    free(c->ns);
    free(c->source);
    memset(c, 0, sizeof(*c));
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access acc, void *ud)
{
    struct ctl_kube *k = ud;
    pthread_mutex_lock(&k->share_mu[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *ud)
{
    struct ctl_kube *k = ud;
    pthread_mutex_unlock(&k->share_mu[data]);
}

/* Re-read the token file when it is older than a minute (or force). k->mu held. */
static void refresh_token(struct ctl_kube *k, bool force)
{
    if (k->cfg.token_file == NULL)
        return;
    int64_t now = ctl_now_ms();
    if (!force && k->token != NULL && now - k->token_read_ms < TOKEN_REREAD_MS)
        return;
    char *t = ctl_read_token(k->cfg.token_file);
    if (t == NULL) {
        kw_log(KW_LOG_WARN, "cannot read the token file; keeping the last token", "file",
               k->cfg.token_file, "error", strerror(errno), NULL);
        return;
    }
    free(k->token);
    k->token = t;
    k->token_read_ms = now;
}

int ctl_kube_init(struct ctl_kube *k, struct ctl_kube_config *cfg, double qps, double burst,
                  char *err, size_t errlen)
{
    memset(k, 0, sizeof(*k));
    k->cfg = *cfg;
    memset(cfg, 0, sizeof(*cfg));
    pthread_mutex_init(&k->mu, NULL);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_init(&k->share_mu[i], NULL);
    k->qps = qps;
    k->burst = burst;
    k->tokens = burst;
    k->bucket_ms = ctl_now_ms();
    k->share = curl_share_init();
    if (k->share != NULL) {
        curl_share_setopt(k->share, CURLSHOPT_LOCKFUNC, share_lock);
        curl_share_setopt(k->share, CURLSHOPT_UNLOCKFUNC, share_unlock);
        curl_share_setopt(k->share, CURLSHOPT_USERDATA, k);
        curl_share_setopt(k->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
        curl_share_setopt(k->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
        curl_share_setopt(k->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_CONNECT);
    }
    if (k->cfg.token != NULL)
        k->token = strdup(k->cfg.token);
    refresh_token(k, true);
    if (k->cfg.token_file != NULL && k->token == NULL) {
        snprintf(err, errlen, "%s: cannot read the token: %s", k->cfg.token_file, strerror(errno));
        return KW_ERROR;
    }
    return KW_OK;
}

void ctl_kube_cleanup(struct ctl_kube *k)
{
    if (k->share != NULL)
        curl_share_cleanup(k->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&k->share_mu[i]);
    pthread_mutex_destroy(&k->mu);
    free(k->token);
    ctl_kube_config_cleanup(&k->cfg);
}

void ctl_kube_unauthorized(struct ctl_kube *k)
{
    pthread_mutex_lock(&k->mu);
    refresh_token(k, true);
    pthread_mutex_unlock(&k->mu);
}

CURL *ctl_kube_easy(struct ctl_kube *k, const char *path, struct curl_slist **headers)
{
    CURL *h = curl_easy_init();
    if (h == NULL)
        return NULL;
    size_t n = strlen(k->cfg.server) + strlen(path) + 1;
    char *url = malloc(n);
    if (url == NULL) {
        curl_easy_cleanup(h);
        return NULL;
    }
    snprintf(url, n, "%s%s", k->cfg.server, path);
    curl_easy_setopt(h, CURLOPT_URL, url);
    free(url); /* curl copies it */
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_SHARE, k->share);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 30L);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 10L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, ""); /* gzip when the server offers it */
    if (k->cfg.insecure) {
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (k->cfg.ca_file != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, k->cfg.ca_file);
    if (k->cfg.ca_data != NULL) {
        struct curl_blob b = {.data = k->cfg.ca_data, .len = k->cfg.ca_len, .flags = 0};
        curl_easy_setopt(h, CURLOPT_CAINFO_BLOB, &b);
    }
    if (k->cfg.cert_file != NULL)
        curl_easy_setopt(h, CURLOPT_SSLCERT, k->cfg.cert_file);
    if (k->cfg.key_file != NULL)
        curl_easy_setopt(h, CURLOPT_SSLKEY, k->cfg.key_file);
    if (k->cfg.cert_data != NULL) {
        struct curl_blob b = {.data = k->cfg.cert_data, .len = k->cfg.cert_len, .flags = 0};
        curl_easy_setopt(h, CURLOPT_SSLCERT_BLOB, &b);
    }
    if (k->cfg.key_data != NULL) {
        struct curl_blob b = {.data = k->cfg.key_data, .len = k->cfg.key_len, .flags = 0};
        curl_easy_setopt(h, CURLOPT_SSLKEY_BLOB, &b);
    }
    struct curl_slist *hl = curl_slist_append(NULL, "Accept: application/json");
    hl = curl_slist_append(hl, "User-Agent: knoway-controller");
    pthread_mutex_lock(&k->mu);
    refresh_token(k, false);
    if (k->token != NULL) {
        size_t tl = strlen(k->token) + 32;
        char *auth = malloc(tl);
        if (auth != NULL) {
            snprintf(auth, tl, "Authorization: Bearer %s", k->token);
            hl = curl_slist_append(hl, auth);
            OPENSSL_cleanse(auth, tl);
            free(auth);
        }
    }
    pthread_mutex_unlock(&k->mu);
    *headers = hl;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    return h;
}

/* Client-side rate limit: wait for a token of the bucket. */
static void rate_wait(struct ctl_kube *k)
{
    if (k->qps <= 0)
        return;
    for (;;) {
        pthread_mutex_lock(&k->mu);
        int64_t now = ctl_now_ms();
        k->tokens += (double)(now - k->bucket_ms) * k->qps / 1000.0;
        if (k->tokens > k->burst)
            k->tokens = k->burst;
        k->bucket_ms = now;
        double missing = 1.0 - k->tokens;
        if (missing <= 0) {
            k->tokens -= 1.0;
            pthread_mutex_unlock(&k->mu);
            return;
        }
        pthread_mutex_unlock(&k->mu);
        usleep((useconds_t)(missing * 1e6 / k->qps) + 1000);
    }
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    return kw_buf_append(ud, p, size * n) == KW_OK ? size * n : 0;
}

long ctl_kube_request(struct ctl_kube *k, const char *method, const char *path,
                      const char *content_type, const char *body, size_t len, struct kw_buf *resp,
                      char *err, size_t errlen)
{
    return ctl_kube_request_within(k, 30000, method, path, content_type, body, len, resp, err,
                                   errlen);
}

long ctl_kube_request_within(struct ctl_kube *k, long timeout_ms, const char *method,
                             const char *path, const char *content_type, const char *body,
                             size_t len, struct kw_buf *resp, char *err, size_t errlen)
{
    long status = 0;
    for (int attempt = 0; attempt < 2; attempt++) {
        rate_wait(k);
        struct curl_slist *hl = NULL;
        CURL *h = ctl_kube_easy(k, path, &hl);
        if (h == NULL) {
            snprintf(err, errlen, "out of memory");
            return 0;
        }
        if (content_type != NULL) {
            char ct[128];
            snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
            hl = curl_slist_append(hl, ct);
            curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
        }
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        if (body != NULL) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)len);
        }
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
        if (timeout_ms < 10000)
            curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, timeout_ms);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, resp);
        kw_buf_reset(resp);
        CURLcode cc = curl_easy_perform(h);
        status = 0;
        if (cc == CURLE_OK)
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        else
            snprintf(err, errlen, "%s %s: %s", method, path,
                     cc == CURLE_WRITE_ERROR ? "response too large" : curl_easy_strerror(cc));
        curl_easy_cleanup(h);
        curl_slist_free_all(hl);
        if (status != 401 || k->cfg.token_file == NULL || attempt > 0)
            break;
        ctl_kube_unauthorized(k);
    }
    if (status != 0 && (status < 200 || status > 299))
        snprintf(err, errlen, "%s %s: HTTP %ld", method, path, status);
    return status;
}
