/* OTLP/HTTP span export (otlp.h). */
#include <curl/curl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/buf.h"
#include "knoway/duration.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "otlp.h"

struct span {
    struct span *next;
    size_t len;
    char data[];
};

struct dp_otlp {
    char url[2100];
    struct curl_slist *headers;
    int64_t timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct span *head, *tail;
    size_t depth;
    bool stop;
    pthread_t thread;
    atomic_uint_fast64_t exported, dropped, failed;
};

bool dp_otlp_submit(struct dp_otlp *o, const char *data, size_t len)
{
    struct span *s = malloc(sizeof(*s) + len);
    if (s == NULL) {
        atomic_fetch_add(&o->dropped, 1);
        return false;
    }
    s->next = NULL;
    s->len = len;
    memcpy(s->data, data, len);
    pthread_mutex_lock(&o->mu);
    if (o->depth >= DP_OTLP_MAX_QUEUE) {
        pthread_mutex_unlock(&o->mu);
        free(s);
        atomic_fetch_add(&o->dropped, 1);
        return false;
    }
    if (o->tail != NULL)
        o->tail->next = s;
    else
        o->head = s;
    o->tail = s;
    if (++o->depth == DP_OTLP_BATCH)
        pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->mu);
    return true;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    (void)ptr;
    (void)ud;
    return size * nmemb;
}

static void send_batch(struct dp_otlp *o, CURL *c, struct span *list, size_t n, struct kw_buf *b)
{
    kw_buf_reset(b);
    kw_buf_puts(b, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\","
                   "\"value\":{\"stringValue\":\"knoway-dataplane\"}}]},\"scopeSpans\":[{\"scope\":"
                   "{\"name\":\"knoway\"},\"spans\":[");
    size_t k = 0;
    for (struct span *s = list; s != NULL; s = s->next, k++) {
        if (k > 0)
            kw_buf_puts(b, ",");
        kw_buf_append(b, s->data, s->len);
    }
    kw_buf_puts(b, "]}]}]}");
    curl_easy_setopt(c, CURLOPT_URL, o->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, o->headers);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, b->data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)b->len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)o->timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_OK && status >= 200 && status < 300) {
        atomic_fetch_add(&o->exported, n);
    } else {
        atomic_fetch_add(&o->failed, n);
        char why[64];
        snprintf(why, sizeof(why), "%s",
                 rc != CURLE_OK  ? curl_easy_strerror(rc)
                 : status >= 400 ? "refused"
                                 : "?");
        kw_log(KW_LOG_WARN, "OTLP export failed (spans dropped)", "error", why, NULL);
    }
}

static void *otlp_main(void *arg)
{
    struct dp_otlp *o = arg;
    CURL *c = curl_easy_init();
    struct kw_buf b;
    kw_buf_init(&b, 64u * 1024 * 1024);
    pthread_mutex_lock(&o->mu);
    for (;;) {
        if (o->depth < DP_OTLP_BATCH && !o->stop) {
            struct timespec ts;
            kw_deadline_after(&ts, 1000);
            pthread_cond_timedwait(&o->cond, &o->mu, &ts);
        }
        bool stop = o->stop;
        /* up to a batch */
        struct span *list = o->head, *last = NULL;
        size_t n = 0;
        for (struct span *s = o->head; s != NULL && n < DP_OTLP_BATCH; s = s->next, n++)
            last = s;
        if (last != NULL) {
            o->head = last->next;
            if (o->head == NULL)
                o->tail = NULL;
            last->next = NULL;
            o->depth -= n;
        }
        pthread_mutex_unlock(&o->mu);
        if (n > 0 && c != NULL)
            send_batch(o, c, list, n, &b);
        while (list != NULL) {
            struct span *next = list->next;
            free(list);
            list = next;
        }
        pthread_mutex_lock(&o->mu);
        if (stop && o->head == NULL)
            break;
    }
    pthread_mutex_unlock(&o->mu);
    kw_buf_cleanup(&b);
    if (c != NULL)
        curl_easy_cleanup(c);
    return NULL;
}

struct dp_otlp *dp_otlp_start(const char *endpoint, const struct kw_header *headers,
                              size_t nheaders, int64_t timeout_ms)
{
    struct dp_otlp *o = calloc(1, sizeof(*o));
    if (o == NULL)
        return NULL;
    size_t el = strlen(endpoint);
    while (el > 0 && endpoint[el - 1] == '/')
        el--;
    snprintf(o->url, sizeof(o->url), "%.*s/v1/traces", (int)el, endpoint);
    o->timeout_ms = timeout_ms;
    o->headers = curl_slist_append(NULL, "Content-Type: application/json");
    for (size_t i = 0; i < nheaders && o->headers != NULL; i++) {
        char h[KW_MAX_HEADER_NAME + KW_MAX_HEADER_VALUE + 4];
        snprintf(h, sizeof(h), "%s: %s", headers[i].name, headers[i].value);
        struct curl_slist *l = curl_slist_append(o->headers, h);
        if (l != NULL)
            o->headers = l;
    }
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cond, NULL);
    if (o->headers == NULL || pthread_create(&o->thread, NULL, otlp_main, o) != 0) {
        curl_slist_free_all(o->headers);
        pthread_mutex_destroy(&o->mu);
        pthread_cond_destroy(&o->cond);
        free(o);
        return NULL;
    }
    return o;
}

void dp_otlp_stop(struct dp_otlp *o)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->mu);
    o->stop = true;
    pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->thread, NULL);
    curl_slist_free_all(o->headers);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cond);
    free(o);
}

void dp_otlp_stats(struct dp_otlp *o, struct dp_otlp_stats *out)
{
    out->exported = atomic_load(&o->exported);
    out->dropped = atomic_load(&o->dropped);
    out->failed = atomic_load(&o->failed);
}
