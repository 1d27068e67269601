/* Informers: LIST + WATCH of one resource into a store (see informer.h for the states). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "informer.h"
#include "knoway/hash.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"

#define LIST_PAGE        500
#define BACKOFF_FIRST_MS 800
#define BACKOFF_MAX_MS   30000
#define MAX_EVENT_BYTES  (KW_MAX_CONFIG_BYTES + 4096)
#define MAX_LIST_BYTES   (256u * 1024 * 1024)

/* ---- lines ---- */

void ctl_lines_init(struct ctl_lines *l, size_t max, ctl_line_fn on_line, void *ud)
{
    kw_buf_init(&l->partial, max);
    l->on_line = on_line;
    l->ud = ud;
}

void ctl_lines_cleanup(struct ctl_lines *l)
{
    kw_buf_cleanup(&l->partial);
}

int ctl_lines_feed(struct ctl_lines *l, const char *p, size_t n)
{
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t take = nl != NULL ? (size_t)(nl - p) : n;
        int rc;
        if (nl != NULL && l->partial.len == 0) { /* a whole line in this read: no copy */
            rc = l->on_line(l->ud, p, take);
        } else {
            if (kw_buf_append(&l->partial, p, take) != KW_OK)
                return KW_ERROR;
            if (nl == NULL)
                return KW_OK;
            rc = l->on_line(l->ud, l->partial.data, l->partial.len);
            kw_buf_reset(&l->partial);
        }
        if (rc != KW_OK)
            return rc;
        p += take + 1;
        n -= take + 1;
    }
    return KW_OK;
}

/* ---- events ---- */

static const char *str_at(const struct kw_node *m, const char *k1, const char *k2)
{
    const struct kw_node *v = kw_node_get(m, k1);
    if (k2 != NULL)
        v = kw_node_get(v, k2);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : "";
}

int ctl_event_parse(struct kw_arena *a, const char *line, size_t len, struct ctl_event *ev,
                    char *err, size_t errlen)
{
    struct kw_node *root;
    memset(ev, 0, sizeof(*ev));
    /* room for the event around the object; an object deeper than the limit is cut, kept
     * too deep in the store, and reported on its own status by the builder */
    if (kw_json_parse_ex(a, line, len, KW_MAX_NESTING + 1, true, &root, err, errlen) != KW_OK)
        return KW_ERROR;
    const char *type = str_at(root, "type", NULL);
    static const char *const names[] = {"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"};
    size_t t = 0;
    while (t < KW_ARRAY_LEN(names) && strcmp(type, names[t]) != 0)
        t++;
    if (t == KW_ARRAY_LEN(names)) {
        snprintf(err, errlen, "watch event: unknown type \"%s\"", type);
        return KW_ERROR;
    }
    ev->type = (enum ctl_event_type)t;
    ev->object = kw_node_get(root, "object");
    if (ev->object == NULL || ev->object->type != KW_NODE_MAP) {
        snprintf(err, errlen, "watch event %s: no object", type);
        return KW_ERROR;
    }
    ev->ns = str_at(ev->object, "metadata", "namespace");
    ev->name = str_at(ev->object, "metadata", "name");
    ev->resource_version = str_at(ev->object, "metadata", "resourceVersion");
    if (ev->type == CTL_EV_ERROR) {
        const struct kw_node *c = kw_node_get(ev->object, "code");
        ev->code = c != NULL && c->type == KW_NODE_INT ? (long)c->i : 0;
        ev->message = str_at(ev->object, "message", NULL);
    }
    return KW_OK;
}

/* ---- store ---- */

static atomic_uint_fast64_t next_seq;

static uint64_t hash(const char *s)
{
    return kw_hash_cstr(s);
}

void ctl_store_init(struct ctl_store *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
}

static void free_objects(struct ctl_store *s)
{
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct ctl_object *o = s->buckets[i], *next; o != NULL; o = next) {
            next = o->next;
            free(o->key);
            free(o->json);
            free(o);
        }
    free(s->buckets);
    s->buckets = NULL;
    s->nbuckets = s->n = 0;
}

void ctl_store_cleanup(struct ctl_store *s)
{
    free_objects(s);
    pthread_mutex_destroy(&s->mu);
}

static void grow(struct ctl_store *s)
{
    size_t nb = s->nbuckets == 0 ? 64 : s->nbuckets * 2;
    struct ctl_object **b = calloc(nb, sizeof(*b));
    if (b == NULL)
        return; /* keep the longer chains */
    for (size_t i = 0; i < s->nbuckets; i++)
        for (struct ctl_object *o = s->buckets[i], *next; o != NULL; o = next) {
            next = o->next;
            size_t j = hash(o->key) & (nb - 1);
            o->next = b[j];
            b[j] = o;
        }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

const struct ctl_object *ctl_store_get(const struct ctl_store *s, const char *key)
{
    if (s->nbuckets == 0)
        return NULL;
    for (struct ctl_object *o = s->buckets[hash(key) & (s->nbuckets - 1)]; o != NULL; o = o->next)
        if (strcmp(o->key, key) == 0)
            return o;
    return NULL;
}

bool ctl_store_put(struct ctl_store *s, const char *key, const char *json, size_t len)
{
    struct ctl_object *o = (struct ctl_object *)ctl_store_get(s, key);
    if (o != NULL && o->len == len && memcmp(o->json, json, len) == 0)
        return false;
    char *copy = malloc(len + 1);
    if (copy == NULL)
        abort(); /* the store is the controller's state: no way on without it */
    memcpy(copy, json, len);
    copy[len] = '\0';
    if (o != NULL) {
        free(o->json);
    } else {
        if (s->n + 1 > s->nbuckets)
            grow(s);
        o = calloc(1, sizeof(*o));
        if (o == NULL || (o->key = strdup(key)) == NULL)
            abort();
        size_t j = hash(key) & (s->nbuckets - 1);
        o->next = s->buckets[j];
        s->buckets[j] = o;
        s->n++;
    }
    o->json = copy;
    o->len = len;
    o->seq = atomic_fetch_add(&next_seq, 1) + 1;
    s->changes++;
    return true;
}

bool ctl_store_delete(struct ctl_store *s, const char *key)
{
    if (s->nbuckets == 0)
        return false;
    for (struct ctl_object **pp = &s->buckets[hash(key) & (s->nbuckets - 1)]; *pp != NULL;
         pp = &(*pp)->next) {
        struct ctl_object *o = *pp;
        if (strcmp(o->key, key) != 0)
            continue;
        *pp = o->next;
        free(o->key);
        free(o->json);
        free(o);
        s->n--;
        s->changes++;
        return true;
    }
    return false;
}

const struct ctl_object *ctl_store_first(const struct ctl_store *s, size_t *i)
{
    for (*i = 0; *i < s->nbuckets; (*i)++)
        if (s->buckets[*i] != NULL)
            return s->buckets[*i];
    return NULL;
}

const struct ctl_object *ctl_store_next(const struct ctl_store *s, const struct ctl_object *o,
                                        size_t *i)
{
    if (o->next != NULL)
        return o->next;
    for ((*i)++; *i < s->nbuckets; (*i)++)
        if (s->buckets[*i] != NULL)
            return s->buckets[*i];
    return NULL;
}

/* ---- the informer thread ---- */

int64_t ctl_backoff_next(int64_t prev_ms, unsigned rnd, int64_t *delay_ms)
{
    int64_t next = prev_ms <= 0 ? BACKOFF_FIRST_MS : prev_ms * 2;
    if (next > BACKOFF_MAX_MS)
        next = BACKOFF_MAX_MS;
    *delay_ms = next / 2 + (int64_t)(rnd % (unsigned)next); /* x0.5 .. x1.5 */
    return next;
}

/* Sleep up to ms, waking early when asked to stop. */
static void nap(struct ctl_informer *inf, int64_t ms)
{
    for (int64_t t = 0; t < ms && !atomic_load(&inf->stop); t += 50)
        usleep(50000);
}

static void backoff(struct ctl_informer *inf, const char *why)
{
    int64_t delay;
    inf->backoff_ms = ctl_backoff_next(inf->backoff_ms, (unsigned)random(), &delay);
    atomic_fetch_add(&inf->errors, 1);
    char d[32];
    snprintf(d, sizeof(d), "%lld", (long long)delay);
    kw_log(KW_LOG_WARN, "informer: retrying", "kind", inf->kind, "error", why, "delay_ms", d, NULL);
    nap(inf, delay);
}

static void notify(struct ctl_informer *inf)
{
    if (inf->on_change != NULL && atomic_load(&inf->synced))
        inf->on_change(inf->ud);
}

static const char *collection(struct ctl_informer *inf, char *buf, size_t len)
{
    if (inf->ns != NULL)
        snprintf(buf, len, "%s/namespaces/%s/%s", inf->api, inf->ns, inf->resource);
    else
        snprintf(buf, len, "%s/%s", inf->api, inf->resource);
    return buf;
}

/* The object's JSON without what nothing here reads: metadata.managedFields and
 * metadata.annotations (kubectl apply's last-applied-configuration is a second copy of the
 * whole object). Together they are most of a small object's bytes. With spec_only, also
 * without what changes when only the status does (status, metadata.resourceVersion): what
 * the builder reads. */
static int write_stripped(const struct kw_node *obj, struct kw_buf *out, bool spec_only)
{
    const struct kw_node *meta = kw_node_get(obj, "metadata");
    if (meta == NULL || meta->type != KW_NODE_MAP)
        return kw_json_write(obj, out);
    struct kw_node root = *obj, m = *meta;
    root.pairs = malloc((obj->n + 1) * sizeof(*root.pairs));
    m.pairs = malloc((meta->n + 1) * sizeof(*m.pairs));
    int rc = KW_ERROR;
    if (root.pairs != NULL && m.pairs != NULL) {
        m.n = 0;
        for (size_t i = 0; i < meta->n; i++) {
            const char *k = meta->pairs[i].key->str;
            if (strcmp(k, "managedFields") != 0 && strcmp(k, "annotations") != 0 &&
                (!spec_only || strcmp(k, "resourceVersion") != 0))
                m.pairs[m.n++] = meta->pairs[i];
        }
        root.n = 0;
        for (size_t i = 0; i < obj->n; i++) {
            if (spec_only && strcmp(obj->pairs[i].key->str, "status") == 0)
                continue;
            root.pairs[root.n] = obj->pairs[i];
            if (obj->pairs[i].val == meta)
                root.pairs[root.n].val = &m;
            root.n++;
        }
        rc = kw_json_write(&root, out);
    }
    free(root.pairs);
    free(m.pairs);
    return rc;
}

bool ctl_store_put_node(struct ctl_store *s, const struct kw_node *obj, struct kw_buf *tmp)
{
    const char *ns = str_at(obj, "metadata", "namespace"), *name = str_at(obj, "metadata", "name");
    char key[KW_MAX_NAMESPACE_LEN + KW_MAX_NAME_LEN + 2];
    snprintf(key, sizeof(key), "%s/%s", ns, name);
    kw_buf_reset(tmp);
    if (write_stripped(obj, tmp, true) != KW_OK)
        return false;
    uint64_t spec = kw_hash_mem(tmp->data, tmp->len);
    kw_buf_reset(tmp);
    if (write_stripped(obj, tmp, false) != KW_OK)
        return false;
    const struct ctl_object *old = ctl_store_get(s, key);
    bool fresh = old == NULL || old->spec_hash != spec;
    if (!ctl_store_put(s, key, tmp->data, tmp->len))
        return false;
    ((struct ctl_object *)ctl_store_get(s, key))->spec_hash = spec;
    return fresh;
}

/* LIST every page into a fresh store, then swap it in. KW_OK, KW_AGAIN (retry after
 * backoff) or KW_DECLINED (404: the API is missing). */
static int list(struct ctl_informer *inf)
{
    char path[1024], coll[512], err[512];
    char *cont = NULL;
    struct ctl_store fresh;
    ctl_store_init(&fresh);
    struct kw_buf body, tmp;
    kw_buf_init(&body, MAX_LIST_BYTES);
    kw_buf_init(&tmp, MAX_EVENT_BYTES);
    int rc = KW_AGAIN;
    char rv[sizeof(inf->rv)] = "";
    collection(inf, coll, sizeof(coll));
    for (;;) {
        int n = snprintf(path, sizeof(path), "%s?limit=%d", coll, LIST_PAGE);
        if (inf->label_selector != NULL)
            n += snprintf(path + n, sizeof(path) - (size_t)n, "&labelSelector=%s",
                          inf->label_selector);
        if (cont != NULL) {
            char *esc = curl_easy_escape(NULL, cont, 0);
            snprintf(path + n, sizeof(path) - (size_t)n, "&continue=%s", esc != NULL ? esc : "");
            curl_free(esc);
        }
        long status =
            ctl_kube_request(inf->kube, "GET", path, NULL, NULL, 0, &body, err, sizeof(err));
        if (status == 404) {
            rc = KW_DECLINED;
            goto out;
        }
        if (status == 410 && cont != NULL) { /* the continue token expired: start over */
            free(cont);
            cont = NULL;
            free_objects(&fresh);
            continue;
        }
        if (status != 200) {
            kw_log(KW_LOG_WARN, "informer: list failed", "kind", inf->kind, "error", err, NULL);
            goto out;
        }
        struct kw_arena *a = kw_arena_new(KW_MAX_ARENA_BYTES);
        struct kw_node *root = NULL;
        /* room for the list and items around each object; one too deep is cut (see
         * ctl_event_parse), never the reason the whole list fails */
        if (a == NULL || kw_json_parse_ex(a, body.data, body.len, KW_MAX_NESTING + 2, true, &root,
                                          err, sizeof(err)) != KW_OK) {
            kw_log(KW_LOG_WARN, "informer: bad list response", "kind", inf->kind, "error", err,
                   NULL);
            kw_arena_free(a);
            goto out;
        }
        const struct kw_node *items = kw_node_get(root, "items");
        /* items of a list carry no kind or apiVersion (for built-in types): add them */
        const char *gv = strncmp(inf->api, "/apis/", 6) == 0 ? inf->api + 6 : inf->api + 5;
        for (size_t i = 0; items != NULL && items->type == KW_NODE_SEQ && i < items->n; i++) {
            struct kw_node *item = items->items[i];
            if (kw_node_get(item, "kind") == NULL)
                kw_node_map_put(a, item, "kind", kw_node_cstring(a, inf->kind));
            if (kw_node_get(item, "apiVersion") == NULL)
                kw_node_map_put(a, item, "apiVersion", kw_node_cstring(a, gv));
            ctl_store_put_node(&fresh, item, &tmp);
        }
        snprintf(rv, sizeof(rv), "%s", str_at(root, "metadata", "resourceVersion"));
        const char *c = str_at(root, "metadata", "continue");
        free(cont);
        cont = c[0] != '\0' ? strdup(c) : NULL;
        kw_arena_free(a);
        if (cont == NULL)
            break;
    }
    /* swap: the new objects replace the old ones under the lock */
    pthread_mutex_lock(&inf->store.mu);
    bool changed = fresh.n != inf->store.n;
    size_t i;
    for (const struct ctl_object *o = ctl_store_first(&fresh, &i); o != NULL && !changed;
         o = ctl_store_next(&fresh, o, &i)) {
        const struct ctl_object *old = ctl_store_get(&inf->store, o->key);
        changed = old == NULL || old->len != o->len || memcmp(old->json, o->json, o->len) != 0;
    }
    struct ctl_object **ob = inf->store.buckets;
    size_t onb = inf->store.nbuckets, on = inf->store.n;
    inf->store.buckets = fresh.buckets;
    inf->store.nbuckets = fresh.nbuckets;
    inf->store.n = fresh.n;
    if (changed)
        inf->store.changes++;
    fresh.buckets = ob;
    fresh.nbuckets = onb;
    fresh.n = on;
    pthread_mutex_unlock(&inf->store.mu);
    snprintf(inf->rv, sizeof(inf->rv), "%s", rv);
    atomic_fetch_add(&inf->lists, 1);
    char cnt[32];
    snprintf(cnt, sizeof(cnt), "%zu", inf->store.n);
    kw_log(KW_LOG_INFO, "informer: listed", "kind", inf->kind, "objects", cnt, "resourceVersion",
           rv, NULL);
    bool first = !atomic_load(&inf->synced);
    atomic_store(&inf->synced, true);
    if (changed || first)
        notify(inf);
    rc = KW_OK;
out:
    free(cont);
    ctl_store_cleanup(&fresh);
    kw_buf_cleanup(&body);
    kw_buf_cleanup(&tmp);
    return rc;
}

struct watch_ctx {
    struct ctl_informer *inf;
    CURL *h;
    struct ctl_lines lines;
    struct kw_arena *scratch;
    struct kw_buf tmp;
    struct kw_buf errbody; /* a non-200 answer's body */
    long status;
    bool expired, got_event, bad;
};

static int on_line(void *ud, const char *line, size_t len)
{
    struct watch_ctx *w = ud;
    struct ctl_informer *inf = w->inf;
    if (len == 0 || (len == 1 && line[0] == '\r'))
        return KW_OK;
    struct ctl_event ev;
    char err[256];
    kw_arena_reset(w->scratch);
    if (ctl_event_parse(w->scratch, line, len, &ev, err, sizeof(err)) != KW_OK) {
        kw_log(KW_LOG_WARN, "informer: bad watch event; listing again", "kind", inf->kind, "error",
               err, NULL);
        w->bad = true;
        return KW_ERROR;
    }
    atomic_fetch_add(&inf->events, 1);
    w->got_event = true;
    if (ev.type == CTL_EV_ERROR) {
        if (ev.code == 410)
            w->expired = true;
        else
            w->bad = true;
        kw_log(KW_LOG_INFO, "informer: watch ended by the server", "kind", inf->kind, "message",
               ev.message, NULL);
        return KW_ERROR;
    }
    if (ev.resource_version[0] != '\0')
        snprintf(inf->rv, sizeof(inf->rv), "%s", ev.resource_version);
    if (ev.type == CTL_EV_BOOKMARK)
        return KW_OK;
    if (inf->ns != NULL && strcmp(ev.ns, inf->ns) != 0)
        return KW_OK;
    bool changed;
    pthread_mutex_lock(&inf->store.mu);
    if (ev.type == CTL_EV_DELETED) {
        char key[KW_MAX_NAMESPACE_LEN + KW_MAX_NAME_LEN + 2];
        snprintf(key, sizeof(key), "%s/%s", ev.ns, ev.name);
        changed = ctl_store_delete(&inf->store, key);
    } else {
        changed = ctl_store_put_node(&inf->store, ev.object, &w->tmp);
    }
    pthread_mutex_unlock(&inf->store.mu);
    if (changed)
        notify(inf);
    return KW_OK;
}

static size_t on_watch_body(char *p, size_t size, size_t n, void *ud)
{
    struct watch_ctx *w = ud;
    if (w->status == 0)
        curl_easy_getinfo(w->h, CURLINFO_RESPONSE_CODE, &w->status);
    if (w->status != 200)
        return kw_buf_append(&w->errbody, p, size * n) == KW_OK ? size * n : 0;
    return ctl_lines_feed(&w->lines, p, size * n) == KW_OK ? size * n : 0;
}

static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct watch_ctx *w = ud;
    return atomic_load(&w->inf->stop) ? 1 : 0;
}

/* One WATCH until the stream ends. KW_OK (ended normally: watch again), KW_DONE (410:
 * list again), KW_AGAIN (error: backoff, then watch again). */
static int watch(struct ctl_informer *inf)
{
    char path[1024], coll[512];
    collection(inf, coll, sizeof(coll));
    long timeout = 300 + random() % 300;
    int n = snprintf(path, sizeof(path),
                     "%s?watch=1&allowWatchBookmarks=true&resourceVersion=%s&timeoutSeconds=%ld",
                     coll, inf->rv, timeout);
    if (inf->label_selector != NULL)
        snprintf(path + n, sizeof(path) - (size_t)n, "&labelSelector=%s", inf->label_selector);
    struct watch_ctx w = {.inf = inf};
    struct curl_slist *hl = NULL;
    w.h = ctl_kube_easy(inf->kube, path, &hl);
    w.scratch = kw_arena_new(KW_MAX_ARENA_BYTES);
    if (w.h == NULL || w.scratch == NULL) {
        if (w.h != NULL)
            curl_easy_cleanup(w.h);
        curl_slist_free_all(hl);
        kw_arena_free(w.scratch);
        return KW_AGAIN;
    }
    ctl_lines_init(&w.lines, MAX_EVENT_BYTES, on_line, &w);
    kw_buf_init(&w.tmp, MAX_EVENT_BYTES);
    kw_buf_init(&w.errbody, 64 * 1024);
    curl_easy_setopt(w.h, CURLOPT_WRITEFUNCTION, on_watch_body);
    curl_easy_setopt(w.h, CURLOPT_WRITEDATA, &w);
    curl_easy_setopt(w.h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(w.h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(w.h, CURLOPT_XFERINFODATA, &w);
    curl_easy_setopt(w.h, CURLOPT_TIMEOUT, timeout + 60);
    atomic_fetch_add(&inf->watches, 1);
    CURLcode cc = curl_easy_perform(w.h);
    if (w.status == 0)
        curl_easy_getinfo(w.h, CURLINFO_RESPONSE_CODE, &w.status);
    int rc;
    if (w.status == 410 || w.expired) {
        atomic_fetch_add(&inf->expired, 1);
        kw_log(KW_LOG_INFO, "informer: resourceVersion expired (410); listing again", "kind",
               inf->kind, "resourceVersion", inf->rv, NULL);
        rc = KW_DONE;
    } else if (w.bad) {
        rc = KW_DONE;
    } else if (cc == CURLE_OK && w.status == 200) {
        rc = KW_OK;
    } else {
        if (w.status == 401)
            ctl_kube_unauthorized(inf->kube);
        char why[256];
        if (cc != CURLE_OK)
            snprintf(why, sizeof(why), "watch: %s", curl_easy_strerror(cc));
        else
            snprintf(why, sizeof(why), "watch: HTTP %ld", w.status);
        if (!atomic_load(&inf->stop))
            backoff(inf, why);
        rc = KW_AGAIN;
    }
    if (w.got_event && rc != KW_AGAIN)
        inf->backoff_ms = 0;
    curl_easy_cleanup(w.h);
    curl_slist_free_all(hl);
    ctl_lines_cleanup(&w.lines);
    kw_buf_cleanup(&w.tmp);
    kw_buf_cleanup(&w.errbody);
    kw_arena_free(w.scratch);
    return rc;
}

static void *informer_main(void *arg)
{
    struct ctl_informer *inf = arg;
    bool need_list = true;
    while (!atomic_load(&inf->stop)) {
        if (need_list) {
            int rc = list(inf);
            if (rc == KW_DECLINED && inf->fallback_api != NULL) {
                kw_log(KW_LOG_INFO, "informer: API not served; using the older one", "kind",
                       inf->kind, "api", inf->api, "fallback", inf->fallback_api, NULL);
                inf->api = inf->fallback_api;
                inf->fallback_api = NULL;
                continue;
            }
            if (rc != KW_OK) {
                backoff(inf, rc == KW_DECLINED ? "the API is not served (CRDs installed?)"
                                               : "list failed");
                continue;
            }
            inf->backoff_ms = 0;
            need_list = false;
        }
        if (watch(inf) == KW_DONE)
            need_list = true;
    }
    return NULL;
}

int ctl_informer_start(struct ctl_informer *inf)
{
    ctl_store_init(&inf->store);
    atomic_store(&inf->stop, false);
    if (pthread_create(&inf->thread, NULL, informer_main, inf) != 0)
        return KW_ERROR;
    inf->running = true;
    return KW_OK;
}

void ctl_informer_stop(struct ctl_informer *inf)
{
    if (!inf->running)
        return;
    atomic_store(&inf->stop, true);
    pthread_join(inf->thread, NULL);
    inf->running = false;
}
