/* The discovery client: a thread of its own (never a worker) that long-polls the
 * controller and hands snapshots to the server.
 *
 *   loop:
 *     POST {url}/v1/discovery?wait=30  {"node":{"id","cluster"},"version":applied,
 *                                       "nonce":received,"error":null|{"message"}}
 *       200 -> kw_snapshot_parse (full validation)
 *                ok:   swap it in, persist it (tmp, fsync, rename), ACK (version = it)
 *                fail: keep the running one, NACK (nonce = it, error = why)
 *       304 -> nothing changed: poll again
 *       else / no answer -> back off 0.5 s doubling to 30 s, jittered; the first failure
 *               before any snapshot was applied loads the cache file instead
 *
 * Readiness (/readyz) follows the server's table: ready once a snapshot is applied, from
 * the controller or from the cache. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <openssl/crypto.h>

#include "worker.h"
#include "knoway/discovery.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "server.h"

#define POLL_WAIT_S     30
#define BACKOFF_FIRST   500
#define BACKOFF_MAX     30000
#define MAX_TOKEN_BYTES 16384

struct poll_ctx {
    struct kw_buf body;
    char version[80]; /* X-Knoway-Version */
    struct dp_discovery *d;
};

static char *read_small(const char *path, size_t max, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return NULL;
    struct kw_buf b;
    kw_buf_init(&b, max);
    char tmp[65536];
    ssize_t n;
    while ((n = read(fd, tmp, sizeof(tmp))) > 0)
        if (kw_buf_append(&b, tmp, (size_t)n) != KW_OK) {
            n = -1;
            errno = EFBIG;
            break;
        }
    int e = errno;
    close(fd);
    if (n < 0) {
        kw_buf_cleanup(&b);
        errno = e;
        return NULL;
    }
    if (b.data == NULL)
        kw_buf_append(&b, "", 0);
    *len = b.len;
    return b.data;
}

/* Write the snapshot where the next start finds it: tmp file, fsync, rename, fsync dir. */
static int persist(const char *path, const char *data, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd == -1)
        return -errno;
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        if (n == -1 && errno == EINTR)
            continue;
        if (n == -1) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return -e;
        }
        off += (size_t)n;
    }
    if (fsync(fd) == -1 || close(fd) == -1 || rename(tmp, path) == -1) {
        int e = errno;
        unlink(tmp);
        return -e;
    }
    char *copy = strdup(path);
    if (copy != NULL) {
        int dfd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd != -1) {
            fsync(dfd);
            close(dfd);
        }
        free(copy);
    }
    return 0;
}

static void first_error(const struct kw_diag *diag, char *out, size_t len)
{
    struct kw_buf b;
    kw_buf_init(&b, 4096);
    if (diag->n > 0)
        kw_diag_format(&diag->entries[0], &b);
    snprintf(out, len, "%s%s", b.data != NULL ? b.data : "invalid snapshot",
             kw_diag_count(diag) > 1 ? " (and more errors)" : "");
    kw_buf_cleanup(&b);
}

/* Validate and apply a snapshot document. KW_OK, or KW_ERROR with the reason in err. */
static int apply(struct dp_discovery *d, const char *json, size_t len, const char *why, char *err,
                 size_t errlen)
{
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *snap = kw_snapshot_parse(json, len, &diag);
    if (snap == NULL) {
        first_error(&diag, err, errlen);
        kw_diag_cleanup(&diag);
        return KW_ERROR;
    }
    kw_diag_cleanup(&diag);
    snprintf(d->version, sizeof(d->version), "%s", snap->version);
    int rc = dp_server_apply(d->s, snap, why);
    kw_snapshot_unref(snap);
    if (rc != KW_OK) {
        snprintf(err, errlen, "out of memory");
        return KW_ERROR;
    }
    return KW_OK;
}

static void load_cache(struct dp_discovery *d)
{
    const char *path = d->s->dp->discovery.cache_file;
    size_t len;
    char *text = read_small(path, KW_MAX_SNAPSHOT_BYTES, &len);
    if (text == NULL) {
        kw_log(KW_LOG_WARN, "discovery: no cached snapshot to start from", "file", path, "error",
               strerror(errno), NULL);
        return;
    }
    char err[1024];
    if (apply(d, text, len, "cache file", err, sizeof(err)) != KW_OK)
        kw_log(KW_LOG_ERROR, "discovery: the cached snapshot is invalid; ignoring it", "file", path,
               "error", err, NULL);
    else
        atomic_fetch_add(&d->cache_loads, 1);
    free(text);
}

static size_t on_body(char *p, size_t size, size_t n, void *ud)
{
    struct poll_ctx *c = ud;
    return kw_buf_append(&c->body, p, size * n) == KW_OK ? size * n : 0;
}

static size_t on_header(char *p, size_t size, size_t n, void *ud)
{
    struct poll_ctx *c = ud;
    size_t len = size * n;
    static const char name[] = KW_DISCOVERY_VERSION_HD ":";
    if (len > sizeof(name) && strncasecmp(p, name, sizeof(name) - 1) == 0) {
        const char *v = p + sizeof(name) - 1;
        size_t vl = len - (sizeof(name) - 1);
        while (vl > 0 && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < sizeof(c->version)) {
            memcpy(c->version, v, vl);
            c->version[vl] = '\0';
        }
    }
    return len;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct poll_ctx *c = ud;
    return atomic_load(&c->d->stop) ? 1 : 0;
}

static void nap(struct dp_discovery *d, int64_t ms)
{
    for (int64_t t = 0; t < ms && !atomic_load(&d->stop); t += 50)
        usleep(50000);
}

/* The poll body (knoway/discovery.h). */
static void poll_body(struct dp_discovery *d, struct kw_buf *b)
{
    kw_poll_write(b, d->node_id, "", d->version, d->nonce, d->error);
}

/* One poll. KW_OK when the controller answered (200 or 304), else KW_ERROR. */
static int poll_once(struct dp_discovery *d, CURL *h, struct poll_ctx *c, struct kw_buf *req)
{
    const struct kw_dataplane *dp = d->s->dp;
    char url[KW_MAX_URL_LEN + 64], err[1024];
    size_t ul = strlen(dp->discovery.url);
    while (ul > 0 && dp->discovery.url[ul - 1] == '/')
        ul--;
    snprintf(url, sizeof(url), "%.*s" KW_DISCOVERY_PATH "?wait=%d", (int)ul, dp->discovery.url,
             POLL_WAIT_S);
    struct curl_slist *hl = curl_slist_append(NULL, "Content-Type: application/json");
    if (dp->discovery.token_file != NULL) {
        size_t tl;
        char *tok = read_small(dp->discovery.token_file, MAX_TOKEN_BYTES, &tl);
        if (tok == NULL) {
            snprintf(d->last_error, sizeof(d->last_error), "cannot read the token file %s: %s",
                     dp->discovery.token_file, strerror(errno));
            curl_slist_free_all(hl);
            return KW_ERROR;
        }
        while (tl > 0 && (tok[tl - 1] == '\n' || tok[tl - 1] == '\r' || tok[tl - 1] == ' '))
            tok[--tl] = '\0';
        char *auth = malloc(tl + 32);
        if (auth != NULL) {
            snprintf(auth, tl + 32, "Authorization: Bearer %s", tok);
            hl = curl_slist_append(hl, auth);
            OPENSSL_cleanse(auth, tl + 32);
            free(auth);
        }
        OPENSSL_cleanse(tok, tl);
        free(tok);
    }
    poll_body(d, req);
    curl_easy_reset(h);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, req->data);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)req->len);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)POLL_WAIT_S + 30);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(h, CURLOPT_ACCEPT_ENCODING, "gzip"); /* snapshots travel compressed */
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, c);
    if (dp->discovery.ca_file != NULL)
        curl_easy_setopt(h, CURLOPT_CAINFO, dp->discovery.ca_file);
    kw_buf_reset(&c->body);
    c->version[0] = '\0';
    CURLcode cc = curl_easy_perform(h);
    curl_slist_free_all(hl);
    long status = 0;
    if (cc != CURLE_OK) {
        snprintf(d->last_error, sizeof(d->last_error), "%s: %s", dp->discovery.url,
                 cc == CURLE_WRITE_ERROR ? "snapshot larger than the limit"
                                         : curl_easy_strerror(cc));
        return KW_ERROR;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    atomic_fetch_add(&d->polls, 1);
    if (status == 304)
        return KW_OK;
    if (status != 200) {
        snprintf(d->last_error, sizeof(d->last_error), "%s: HTTP %ld: %.200s", dp->discovery.url,
                 status, c->body.data != NULL ? c->body.data : "");
        return KW_ERROR;
    }
    const char *got = c->version;
    if (apply(d, c->body.data != NULL ? c->body.data : "", c->body.len, "discovery", err,
              sizeof(err)) == KW_OK) {
        snprintf(d->nonce, sizeof(d->nonce), "%s", d->version);
        d->error[0] = '\0';
        int prc = persist(dp->discovery.cache_file, c->body.data, c->body.len);
        if (prc != 0)
            kw_log(KW_LOG_WARN, "discovery: cannot write the cache file", "file",
                   dp->discovery.cache_file, "error", strerror(-prc), NULL);
        return KW_OK;
    }
    atomic_fetch_add(&d->nacks, 1);
    snprintf(d->nonce, sizeof(d->nonce), "%s", got[0] != '\0' ? got : "unknown");
    snprintf(d->error, sizeof(d->error), "%s", err);
    kw_log(KW_LOG_ERROR, "discovery: rejected a snapshot; keeping the running one", "version",
           d->nonce, "error", err, NULL);
    return KW_OK;
}

static void *discovery_main(void *arg)
{
    struct dp_discovery *d = arg;
    CURL *h = curl_easy_init();
    struct poll_ctx c = {.d = d};
    kw_buf_init(&c.body, KW_MAX_SNAPSHOT_BYTES);
    struct kw_buf req;
    kw_buf_init(&req, 64 * 1024);
    int64_t backoff = 0;
    bool tried_cache = false, was_down = false;
    while (h != NULL && !atomic_load(&d->stop)) {
        if (poll_once(d, h, &c, &req) == KW_OK) {
            atomic_store(&d->connected, true);
            if (was_down)
                kw_log(KW_LOG_INFO, "discovery: connected to the controller", "url",
                       d->s->dp->discovery.url, NULL);
            was_down = false;
            backoff = 0;
            continue;
        }
        if (atomic_load(&d->stop))
            break;
        atomic_fetch_add(&d->failures, 1);
        atomic_store(&d->connected, false);
        if (!was_down)
            kw_log(KW_LOG_WARN, "discovery: the controller is unreachable; retrying", "error",
                   d->last_error, NULL);
        was_down = true;
        if (!tried_cache && d->version[0] == '\0') {
            tried_cache = true;
            load_cache(d);
        }
        backoff = backoff == 0 ? BACKOFF_FIRST : backoff * 2;
        if (backoff > BACKOFF_MAX)
            backoff = BACKOFF_MAX;
        nap(d, backoff / 2 + random() % backoff);
    }
    if (h != NULL)
        curl_easy_cleanup(h);
    kw_buf_cleanup(&c.body);
    kw_buf_cleanup(&req);
    return NULL;
}

int dp_discovery_start(struct dp_discovery *d, struct dp_server *s)
{
    d->s = s;
    const char *id = s->dp->discovery.node_id;
    if (id == NULL || id[0] == '\0') {
        if (gethostname(d->node_id, sizeof(d->node_id) - 1) != 0)
            snprintf(d->node_id, sizeof(d->node_id), "knoway-dataplane-%d", (int)getpid());
    } else {
        snprintf(d->node_id, sizeof(d->node_id), "%s", id);
    }
    srandom((unsigned)getpid() ^ (unsigned)dp_now_ms());
    if (pthread_create(&d->thread, NULL, discovery_main, d) != 0)
        return KW_ERROR;
    d->running = true;
    return KW_OK;
}

void dp_discovery_stop(struct dp_discovery *d)
{
    if (!d->running)
        return;
    atomic_store(&d->stop, true);
    pthread_join(d->thread, NULL);
    d->running = false;
}
