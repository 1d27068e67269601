/* The status writer (see status.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knoway/json.h"
#include "knoway/limits.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "status.h"

#define DEBOUNCE_MS 250

struct cond {
    const char *type;
    const char *status; /* "True" / "False" */
    const char *reason;
    char message[1024];
};

static const char *jstr(const struct kw_node *m, const char *k)
{
    const struct kw_node *v = kw_node_get(m, k);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : "";
}

static int64_t jint(const struct kw_node *m, const char *k)
{
    const struct kw_node *v = kw_node_get(m, k);
    return v != NULL && v->type == KW_NODE_INT ? v->i : -1;
}

static const struct kw_node *find_cond(const struct kw_node *status, const char *type)
{
    const struct kw_node *list = kw_node_get(status, "conditions");
    for (size_t i = 0; list != NULL && list->type == KW_NODE_SEQ && i < list->n; i++)
        if (strcmp(jstr(list->items[i], "type"), type) == 0)
            return list->items[i];
    return NULL;
}

/* Programmed: how many connected data planes run a snapshot holding this generation. */
static void programmed(struct ctl_status *s, const struct ctl_resource_state *st,
                       const struct ctl_node *nodes, size_t nnodes, struct cond *c)
{
    c->type = "Programmed";
    if (!st->programmed) {
        c->status = "False";
        c->reason = "Invalid";
        snprintf(c->message, sizeof(c->message),
                 "left out of the configuration snapshot: see Accepted and ResolvedRefs");
        return;
    }
    size_t have = 0;
    const char *rejected = NULL;
    const char *latest = s->history[0] != NULL ? s->history[0]->version : "";
    for (size_t i = 0; i < nnodes; i++) {
        for (size_t h = 0; h < CTL_STATUS_HISTORY && s->history[h] != NULL; h++) {
            if (strcmp(s->history[h]->version, nodes[i].acked) != 0)
                continue;
            const struct ctl_resource_state *o =
                ctl_build_find(s->history[h], st->kind, st->ns, st->name);
            if (o != NULL && o->programmed && o->generation == st->generation)
                have++;
            break;
        }
        if (nodes[i].nacked[0] != '\0' && strcmp(nodes[i].nacked, latest) == 0)
            rejected = nodes[i].error != NULL ? nodes[i].error : "";
    }
    if (nnodes > 0 && have == nnodes) {
        c->status = "True";
        c->reason = "Programmed";
    } else {
        c->status = "False";
        c->reason = rejected != NULL ? "Rejected" : "Pending";
    }
    int n = snprintf(c->message, sizeof(c->message), "applied by %zu of %zu data plane%s", have,
                     nnodes, nnodes == 1 ? "" : "s");
    if (rejected != NULL && n > 0 && (size_t)n < sizeof(c->message))
        snprintf(c->message + n, sizeof(c->message) - (size_t)n,
                 "; a data plane rejected the latest snapshot: %s", rejected);
}

static void conditions(struct ctl_status *s, const struct ctl_resource_state *st,
                       const struct ctl_node *nodes, size_t nnodes, struct cond c[3])
{
    c[0].type = "Accepted";
    c[0].status = st->accepted ? "True" : "False";
    c[0].reason = st->accepted ? "Accepted" : st->conflicted ? "Conflicted" : "Invalid";
    snprintf(c[0].message, sizeof(c[0].message), "%s",
             st->accepted ? "the resource is valid" : st->accepted_msg);
    c[1].type = "ResolvedRefs";
    c[1].status = st->resolved ? "True" : "False";
    c[1].reason = st->resolved ? "ResolvedRefs" : "RefNotResolved";
    snprintf(c[1].message, sizeof(c[1].message), "%s",
             st->resolved ? "every reference resolves" : st->resolved_msg);
    programmed(s, st, nodes, nnodes, &c[2]);
}

/* The merge patch, or KW_DECLINED when the object's status already says this. */
static int patch_for(const struct kw_node *obj, const struct ctl_resource_state *st,
                     const struct cond c[3], struct kw_buf *out)
{
    const struct kw_node *status = kw_node_get(obj, "status");
    bool same = jint(status, "observedGeneration") == st->generation;
    for (int i = 0; i < 3 && same; i++) {
        const struct kw_node *old = find_cond(status, c[i].type);
        same = old != NULL && strcmp(jstr(old, "status"), c[i].status) == 0 &&
               strcmp(jstr(old, "reason"), c[i].reason) == 0 &&
               strcmp(jstr(old, "message"), c[i].message) == 0 &&
               jint(old, "observedGeneration") == st->generation;
    }
    if (same)
        return KW_DECLINED;
    char now[32];
    ctl_rfc3339(now);
    kw_buf_reset(out);
    kw_buf_printf(out, "{\"status\":{\"observedGeneration\":%lld,\"conditions\":[",
                  (long long)st->generation);
    for (int i = 0; i < 3; i++) {
        const struct kw_node *old = find_cond(status, c[i].type);
        const char *ltt = old != NULL && strcmp(jstr(old, "status"), c[i].status) == 0 &&
                                  jstr(old, "lastTransitionTime")[0] != '\0'
                              ? jstr(old, "lastTransitionTime")
                              : now;
        kw_buf_printf(out, "%s{\"type\":\"%s\",\"status\":\"%s\",\"reason\":\"%s\",\"message\":",
                      i > 0 ? "," : "", c[i].type, c[i].status, c[i].reason);
        kw_json_write_string(out, c[i].message, strlen(c[i].message));
        kw_buf_printf(
            out, ",\"observedGeneration\":%lld,\"lastTransitionTime\":", (long long)st->generation);
        kw_json_write_string(out, ltt, strlen(ltt));
        kw_buf_puts(out, "}");
    }
    return kw_buf_puts(out, "]}}");
}

static void write_one(struct ctl_status *s, const struct ctl_resource_state *st,
                      const struct ctl_node *nodes, size_t nnodes, struct kw_arena *a,
                      struct kw_buf *patch, struct kw_buf *resp)
{
    struct ctl_store *store = st->kind == KW_KIND_LLMBACKEND    ? s->backends
                              : st->kind == KW_KIND_LLMCONSUMER ? s->consumers
                                                                : s->routes;
    const char *plural = st->kind == KW_KIND_LLMBACKEND    ? "llmbackends"
                         : st->kind == KW_KIND_LLMCONSUMER ? "llmconsumers"
                                                           : "llmroutes";
    if (store == NULL)
        return;
    char key[600], err[256];
    snprintf(key, sizeof(key), "%s/%s", st->ns, st->name);
    struct cond c[3];
    conditions(s, st, nodes, nnodes, c);
    struct kw_node *obj = NULL;
    kw_arena_reset(a);
    pthread_mutex_lock(&store->mu);
    const struct ctl_object *o = ctl_store_get(store, key);
    /* cut mode: an object nested too deep still gets its status (only metadata and status
     * are read) */
    if (o != NULL &&
        kw_json_parse_ex(a, o->json, o->len, KW_MAX_NESTING, true, &obj, err, sizeof(err)) != KW_OK)
        obj = NULL;
    pthread_mutex_unlock(&store->mu);
    if (obj == NULL)
        return; /* deleted meanwhile */
    if (patch_for(obj, st, c, patch) == KW_DECLINED) {
        atomic_fetch_add(&s->skipped, 1);
        return;
    }
    char path[1024];
    snprintf(path, sizeof(path), "/apis/llm.knoway.dev/v1alpha1/namespaces/%s/%s/%s/status", st->ns,
             plural, st->name);
    for (int attempt = 0; attempt < 3; attempt++) {
        long code = ctl_kube_request(s->kube, "PATCH", path, "application/merge-patch+json",
                                     patch->data, patch->len, resp, err, sizeof(err));
        if (code == 200) {
            atomic_fetch_add(&s->writes, 1);
            return;
        }
        if (code == 404)
            return;
        if (code != 409)
            break;
        atomic_fetch_add(&s->conflicts, 1);
    }
    atomic_fetch_add(&s->failures, 1);
    kw_log(KW_LOG_WARN, "status: cannot write", "object", key, "kind", kw_kind_name(st->kind),
           "error", err, NULL);
}

static void pass(struct ctl_status *s, struct ctl_build *b)
{
    struct ctl_node *nodes = NULL;
    size_t nnodes = ctl_discovery_connected(s->disc, &nodes);
    struct kw_arena *a = kw_arena_new(64u * 1024 * 1024);
    struct kw_buf patch, resp;
    kw_buf_init(&patch, 256 * 1024);
    kw_buf_init(&resp, 16u * 1024 * 1024);
    for (size_t i = 0; a != NULL && i < b->nstates && atomic_load(s->leader); i++) {
        pthread_mutex_lock(&s->mu);
        bool stop = s->stop;
        pthread_mutex_unlock(&s->mu);
        if (stop)
            break;
        write_one(s, &b->states[i], nodes, nnodes, a, &patch, &resp);
    }
    kw_buf_cleanup(&patch);
    kw_buf_cleanup(&resp);
    kw_arena_free(a);
    ctl_discovery_nodes_free(nodes, nnodes);
}

static void *status_main(void *arg)
{
    struct ctl_status *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->dirty && !s->stop)
            pthread_cond_wait(&s->cond, &s->mu);
        if (s->stop)
            break;
        pthread_mutex_unlock(&s->mu);
        struct timespec ts = {.tv_sec = 0, .tv_nsec = DEBOUNCE_MS * 1000000L};
        nanosleep(&ts, NULL);
        pthread_mutex_lock(&s->mu);
        s->dirty = false;
        struct ctl_build *b = ctl_build_ref(s->latest);
        pthread_mutex_unlock(&s->mu);
        if (b != NULL && atomic_load(s->leader))
            pass(s, b);
        ctl_build_unref(b);
        pthread_mutex_lock(&s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

void ctl_status_kick(void *ud)
{
    struct ctl_status *s = ud;
    pthread_mutex_lock(&s->mu);
    s->dirty = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

void ctl_status_build(struct ctl_status *s, struct ctl_build *b)
{
    pthread_mutex_lock(&s->mu);
    ctl_build_unref(s->latest);
    s->latest = ctl_build_ref(b);
    if (s->history[0] == NULL || strcmp(s->history[0]->version, b->version) != 0) {
        ctl_build_unref(s->history[CTL_STATUS_HISTORY - 1]);
        memmove(&s->history[1], &s->history[0], (CTL_STATUS_HISTORY - 1) * sizeof(s->history[0]));
        s->history[0] = ctl_build_ref(b);
    } else { /* same version, maybe other statuses: keep the newest build of it */
        ctl_build_unref(s->history[0]);
        s->history[0] = ctl_build_ref(b);
    }
    s->dirty = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

int ctl_status_start(struct ctl_status *s)
{
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->thread, NULL, status_main, s) != 0)
        return KW_ERROR;
    s->running = true;
    return KW_OK;
}

void ctl_status_stop(struct ctl_status *s)
{
    if (!s->running)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    ctl_build_unref(s->latest);
    for (size_t i = 0; i < CTL_STATUS_HISTORY; i++)
        ctl_build_unref(s->history[i]);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->mu);
    s->running = false;
}
