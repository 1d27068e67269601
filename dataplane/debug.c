/* /debug/routes (debug.h). */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "balancer.h"
#include "debug.h"
#include "knoway/duration.h"
#include "knoway/arena.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "router.h"
#include "server.h"
#include "worker.h"

struct dp_debug_query {
    atomic_int refs; /* the admin's and one per worker still to answer */
    const char *model, *path, *strategy;
    const char *const *names, *const *values;
    size_t nheaders;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned answered;
    struct kw_buf *out;     /* one per worker */
    struct kw_arena *arena; /* the strings above (the query's own copy) */
};

static void query_unref(struct dp_debug_query *q, unsigned nworkers)
{
    if (atomic_fetch_sub(&q->refs, 1) != 1)
        return;
    for (unsigned i = 0; i < nworkers; i++)
        kw_buf_cleanup(&q->out[i]);
    free(q->out);
    kw_arena_free(q->arena);
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q);
}

static const char *header_of(void *ud, const char *name)
{
    const struct dp_debug_query *q = ud;
    for (size_t i = 0; i < q->nheaders; i++)
        if (strcasecmp(q->names[i], name) == 0)
            return q->values[i];
    return NULL;
}

static void str(struct kw_buf *b, const char *key, const char *v)
{
    kw_buf_printf(b, "\"%s\":", key);
    if (v != NULL)
        kw_json_write_string(b, v, strlen(v));
    else
        kw_buf_puts(b, "null");
}

static void target(struct kw_buf *b, const struct dp_lb_target *t, const struct kw_backend *be,
                   int64_t now)
{
    kw_buf_printf(b,
                  "\"healthy\":%s,\"inFlight\":%lld,\"ttfbEwmaMs\":%.1f,\"latencyCost\":%.1f,"
                  "\"consecutiveFailures\":%u,\"ejectedForMs\":%lld,\"probing\":%s,"
                  "\"cooldownForMs\":%lld,\"remainingRequests\":%lld,\"remainingTokens\":%lld",
                  dp_lb_target_healthy(t, be, 0, now) ? "true" : "false", (long long)t->in_flight,
                  t->ewma_ms, dp_lb_latency_cost(t, now), t->failures,
                  (long long)(t->ejected_until > now ? t->ejected_until - now : 0),
                  t->probing ? "true" : "false",
                  (long long)(t->cooldown_until > now ? t->cooldown_until - now : 0),
                  (long long)t->remaining_requests, (long long)t->remaining_tokens);
}

/* This worker's answer, as one JSON object. */
static void answer(struct dp_worker *w, const struct dp_debug_query *q, struct kw_buf *b)
{
    int64_t now = dp_now_ms();
    kw_buf_printf(b, "{\"worker\":%u,", w->index);
    const struct dp_match *m =
        w->table != NULL ? dp_table_match(w->table, q->model, q->path, header_of, (void *)q) : NULL;
    if (m == NULL) {
        kw_buf_puts(b, "\"route\":null}");
        return;
    }
    const struct kw_route *rt = m->route;
    kw_buf_puts(b, "\"route\":{");
    str(b, "namespace", rt->meta.ns);
    kw_buf_puts(b, ",");
    str(b, "name", rt->meta.name);
    kw_buf_printf(b, ",\"matchedBy\":{\"model\":");
    char *pat = malloc(strlen(m->model->value) + 2);
    if (pat != NULL) {
        snprintf(pat, strlen(m->model->value) + 2, "%s%s", m->model->value,
                 m->model->prefix ? "*" : "");
        kw_json_write_string(b, pat, strlen(pat));
        free(pat);
    }
    kw_buf_printf(b, ",\"kind\":\"%s\",\"headers\":%zu,\"paths\":%zu}},",
                  m->model->prefix ? "prefix" : "exact", rt->nheaders, rt->npaths);
    int s = q->strategy != NULL ? dp_lb_strategy_parse(q->strategy) : -1;
    enum kw_lb_strategy strategy = s >= 0 ? (enum kw_lb_strategy)s : rt->load_balancer.strategy;
    str(b, "strategy", dp_lb_strategy_name(strategy));
    kw_buf_puts(b, ",\"candidates\":[");
    for (size_t i = 0; i < rt->nrefs; i++) {
        const struct kw_backend_ref *ref = &rt->refs[i];
        kw_buf_puts(b, i > 0 ? ",{" : "{");
        str(b, "backendRef", ref->name);
        kw_buf_printf(b, ",\"weight\":%u,\"priority\":%u,", ref->weight, ref->priority);
        struct dp_backend_state *bs =
            ref->backend != NULL ? dp_lb_backend(w->lb, ref->backend) : NULL;
        if (bs == NULL) {
            kw_buf_puts(b, "\"resolved\":false}");
            continue;
        }
        target(b, &bs->t, ref->backend, now);
        kw_buf_printf(b, ",\"retries\":%llu,\"ejections\":%llu,\"cooldowns\":%llu",
                      (unsigned long long)bs->retries_total,
                      (unsigned long long)bs->ejections_total,
                      (unsigned long long)bs->cooldowns_total);
        kw_buf_puts(b, ",\"endpoints\":[");
        for (size_t j = 0; j < bs->neps; j++) {
            kw_buf_puts(b, j > 0 ? ",{" : "{");
            str(b, "url", bs->eps[j].url);
            kw_buf_puts(b, ",");
            target(b, &bs->eps[j].t, NULL, now);
            kw_buf_puts(b, "}");
        }
        kw_buf_puts(b, "]}");
    }
    kw_buf_puts(b, "],\"wouldPick\":");
    /* what the strategy picks now, leaving round-robin positions as they were */
    size_t n = rt->nrefs;
    int64_t *saved = calloc(n + 1, sizeof(*saved));
    bool *tried = calloc(n + 1, sizeof(*tried));
    const struct kw_backend_ref *pick = NULL;
    if (saved != NULL && tried != NULL) {
        for (size_t i = 0; i < n; i++) {
            struct dp_backend_state *bs =
                rt->refs[i].backend != NULL ? dp_lb_find(w->lb, rt->refs[i].backend) : NULL;
            saved[i] = bs != NULL ? bs->t.rr_current : 0;
        }
        pick = dp_lb_pick(w->lb, rt, strategy, tried, 0, now);
        for (size_t i = 0; i < n; i++) {
            struct dp_backend_state *bs =
                rt->refs[i].backend != NULL ? dp_lb_find(w->lb, rt->refs[i].backend) : NULL;
            if (bs != NULL)
                bs->t.rr_current = saved[i];
        }
    }
    if (pick == NULL) {
        kw_buf_puts(b, "null");
    } else {
        kw_buf_puts(b, "{");
        str(b, "backendRef", pick->name);
        struct dp_backend_state *bs = dp_lb_find(w->lb, pick->backend);
        if (bs != NULL && bs->neps > 1) {
            int64_t *eps = calloc(bs->neps, sizeof(*eps));
            for (size_t j = 0; eps != NULL && j < bs->neps; j++)
                eps[j] = bs->eps[j].t.rr_current;
            int e = dp_lb_pick_endpoint(w->lb, bs, pick->backend, strategy, 0, now);
            for (size_t j = 0; eps != NULL && j < bs->neps; j++)
                bs->eps[j].t.rr_current = eps[j];
            free(eps);
            kw_buf_puts(b, ",");
            str(b, "endpoint", e >= 0 ? bs->eps[e].url : NULL);
        }
        kw_buf_puts(b, "}");
    }
    free(saved);
    free(tried);
    kw_buf_puts(b, "}");
}

void dp_debug_answer(struct dp_worker *w)
{
    struct dp_debug_query *q = atomic_exchange(&w->debug, NULL);
    if (q == NULL)
        return;
    struct kw_buf b;
    kw_buf_init(&b, 4u << 20);
    answer(w, q, &b);
    pthread_mutex_lock(&q->mu);
    q->out[w->index] = b;
    q->answered++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
    query_unref(q, w->server->nworkers);
}

int dp_debug_routes(struct dp_server *s, const char *model, const char *path, const char *strategy,
                    const char *const *names, const char *const *values, size_t nheaders,
                    int timeout_ms, struct kw_buf *out)
{
    struct dp_debug_query *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return KW_ERROR;
    q->out = calloc(s->nworkers, sizeof(*q->out));
    if (q->out == NULL) {
        free(q);
        return KW_ERROR;
    }
    /* the strings live in the admin's request: a worker answering after the wait timed
     * out must not read them, so the query carries its own copy */
    q->arena = kw_arena_new(1u << 20); /* 32 headers of admin-sized URLs fit */
    const char **nv =
        q->arena != NULL ? kw_arena_alloc(q->arena, (nheaders + 1) * sizeof(char *)) : NULL;
    const char **vv = nv != NULL ? kw_arena_alloc(q->arena, (nheaders + 1) * sizeof(char *)) : NULL;
    bool ok = vv != NULL && (q->model = kw_arena_strdup(q->arena, model)) != NULL &&
              (q->path = kw_arena_strdup(q->arena, path)) != NULL &&
              (strategy == NULL || (q->strategy = kw_arena_strdup(q->arena, strategy)) != NULL);
    for (size_t i = 0; ok && i < nheaders; i++)
        ok = (nv[i] = kw_arena_strdup(q->arena, names[i])) != NULL &&
             (vv[i] = kw_arena_strdup(q->arena, values[i])) != NULL;
    if (!ok) {
        kw_arena_free(q->arena);
        free(q->out);
        free(q);
        return KW_ERROR;
    }
    q->names = nv;
    q->values = vv;
    q->nheaders = nheaders;
    atomic_init(&q->refs, (int)s->nworkers + 1);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    unsigned posted = 0;
    for (unsigned i = 0; i < s->nworkers; i++) {
        struct dp_debug_query *none = NULL;
        if (atomic_compare_exchange_strong(&s->workers[i].debug, &none, q)) {
            dp_worker_post(&s->workers[i]);
            posted++;
        } else {
            atomic_fetch_sub(&q->refs, 1); /* another query is pending there: skipped */
        }
    }
    struct timespec until;
    kw_deadline_after(&until, timeout_ms);
    pthread_mutex_lock(&q->mu);
    while (q->answered < posted && pthread_cond_timedwait(&q->cv, &q->mu, &until) != ETIMEDOUT)
        ;
    kw_buf_puts(out, "{\"model\":");
    kw_json_write_string(out, q->model, strlen(q->model));
    kw_buf_puts(out, ",\"path\":");
    kw_json_write_string(out, q->path, strlen(q->path));
    kw_buf_puts(out, ",\"workers\":[");
    unsigned n = 0;
    for (unsigned i = 0; i < s->nworkers; i++)
        if (q->out[i].len > 0) {
            kw_buf_puts(out, n++ > 0 ? "," : "");
            kw_buf_append(out, q->out[i].data, q->out[i].len);
        }
    kw_buf_printf(out, "],\"answered\":%u,\"workersTotal\":%u}", q->answered, s->nworkers);
    bool complete = q->answered == s->nworkers;
    pthread_mutex_unlock(&q->mu);
    query_unref(q, s->nworkers); /* a late worker may still hold it: the last one frees */
    return complete ? KW_OK : KW_ERROR;
}
