/* LLMConsumer.status.usage from Redis (usage.h). */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knoway/buf.h"
#include "knoway/duration.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/resource.h"
#include "knoway/redis_contract.h"
#include "usage.h"

#define MAX_CONSUMERS 100000

struct counts {
    long long requests, input, output, cost;
};

static redisContext *connect_redis(struct ctl_usage *u)
{
    struct timeval tv = {.tv_sec = 2};
    redisContext *c = redisConnectWithTimeout(u->host, u->port, tv);
    if (c == NULL || c->err != 0) {
        kw_log(KW_LOG_WARN, "usage: cannot reach Redis", "error",
               c != NULL ? c->errstr : "out of memory", NULL);
        redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    redisReply *r = NULL;
    if (u->password != NULL && u->user != NULL)
        r = redisCommand(c, "AUTH %s %s", u->user, u->password); /* an ACL user (Redis 6) */
    else if (u->password != NULL)
        r = redisCommand(c, "AUTH %s", u->password);
    if (u->password != NULL && (r == NULL || r->type == REDIS_REPLY_ERROR)) {
        kw_log(KW_LOG_WARN, "usage: Redis refused AUTH", NULL);
        freeReplyObject(r);
        redisFree(c);
        return NULL;
    }
    freeReplyObject(r);
    if (u->db != 0) {
        r = redisCommand(c, "SELECT %u", u->db);
        freeReplyObject(r);
    }
    return c;
}

static const char *jstr(const struct kw_node *m, const char *k)
{
    const struct kw_node *v = kw_node_get(m, k);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : NULL;
}

static long long jint(const struct kw_node *m, const char *k)
{
    const struct kw_node *v = kw_node_get(m, k);
    return v != NULL && v->type == KW_NODE_INT ? (long long)v->i : -1;
}

/* One consumer (its object's JSON): read its counters, patch its status when they moved. */
static void one(struct ctl_usage *u, redisContext *rc, const char *json, size_t len,
                struct kw_arena *a, struct kw_buf *patch, struct kw_buf *resp)
{
    struct kw_node *obj = NULL;
    char err[256];
    kw_arena_reset(a);
    if (kw_json_parse_ex(a, json, len, KW_MAX_NESTING, true, &obj, err, sizeof(err)) != KW_OK)
        return;
    const struct kw_node *meta = kw_node_get(obj, "metadata");
    const char *ns = jstr(meta, "namespace"), *name = jstr(meta, "name");
    if (ns == NULL || name == NULL)
        return;
    const char *per = jstr(kw_node_get(kw_node_get(obj, "spec"), "budget"), "period");
    enum kw_period p = per == NULL                ? KW_PERIOD_MONTH
                       : strcmp(per, "Day") == 0  ? KW_PERIOD_DAY
                       : strcmp(per, "Week") == 0 ? KW_PERIOD_WEEK
                                                  : KW_PERIOD_MONTH;
    char period[32];
    int64_t end;
    kw_period_name(p, (long long)time(NULL), period, sizeof(period), &end);
    char key[KW_USAGE_KEY_MAX];
    if (!kw_usage_key(key, sizeof(key), ns, name, period))
        return;
    redisReply *r = redisCommand(rc, "HGETALL %s", key);
    if (r == NULL || r->type != REDIS_REPLY_ARRAY) {
        atomic_fetch_add(&u->failures, 1);
        freeReplyObject(r);
        return;
    }
    struct counts c = {0};
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *f = r->element[i]->str, *v = r->element[i + 1]->str;
        if (f == NULL || v == NULL)
            continue;
        long long n = strtoll(v, NULL, 10);
        if (strcmp(f, "requests") == 0)
            c.requests = n;
        else if (strcmp(f, "inputTokens") == 0)
            c.input = n;
        else if (strcmp(f, "outputTokens") == 0)
            c.output = n;
        else if (strcmp(f, "cost") == 0)
            c.cost = n;
    }
    freeReplyObject(r);
    char cost[48];
    kw_usd_format(c.cost, cost, sizeof(cost));
    const struct kw_node *old = kw_node_get(kw_node_get(obj, "status"), "usage");
    const char *oldp = jstr(old, "period"), *oldc = jstr(old, "cost");
    if (oldp != NULL && strcmp(oldp, period) == 0 && jint(old, "requests") == c.requests &&
        jint(old, "inputTokens") == c.input && jint(old, "outputTokens") == c.output &&
        oldc != NULL && strcmp(oldc, cost) == 0) {
        atomic_fetch_add(&u->skipped, 1);
        return;
    }
    if (old == NULL && c.requests == 0) {
        atomic_fetch_add(&u->skipped, 1);
        return; /* never used: nothing to show */
    }
    kw_buf_reset(patch);
    kw_buf_printf(
        patch,
        "{\"status\":{\"usage\":{\"period\":\"%s\",\"requests\":%lld,\"inputTokens\":%lld,"
        "\"outputTokens\":%lld,\"cost\":\"%s\"}}}",
        period, c.requests, c.input, c.output, cost);
    char path[1024];
    snprintf(path, sizeof(path),
             "/apis/llm.knoway.dev/v1alpha1/namespaces/%s/llmconsumers/%s/status", ns, name);
    long code = ctl_kube_request(u->kube, "PATCH", path, "application/merge-patch+json",
                                 patch->data, patch->len, resp, err, sizeof(err));
    if (code == 200) {
        atomic_fetch_add(&u->writes, 1);
    } else if (code != 404) {
        atomic_fetch_add(&u->failures, 1);
        char object[600];
        snprintf(object, sizeof(object), "%s/%s", ns, name);
        kw_log(KW_LOG_WARN, "usage: cannot write status", "object", object, "error", err, NULL);
    }
}

void ctl_usage_pass(struct ctl_usage *u)
{
    /* copy the objects out: the store's lock is not held across Redis and API calls */
    struct kw_buf all;
    kw_buf_init(&all, 256u * 1024 * 1024);
    size_t n = 0, i;
    pthread_mutex_lock(&u->consumers->mu);
    for (const struct ctl_object *o = ctl_store_first(u->consumers, &i);
         o != NULL && n < MAX_CONSUMERS; o = ctl_store_next(u->consumers, o, &i), n++) {
        size_t len = o->len;
        kw_buf_append(&all, (const char *)&len, sizeof(len));
        kw_buf_append(&all, o->json, len);
    }
    pthread_mutex_unlock(&u->consumers->mu);
    redisContext *rc = n > 0 ? connect_redis(u) : NULL;
    struct kw_arena *a = kw_arena_new(64u * 1024 * 1024);
    struct kw_buf patch, resp;
    kw_buf_init(&patch, 64 * 1024);
    kw_buf_init(&resp, 16u * 1024 * 1024);
    for (size_t off = 0; rc != NULL && a != NULL && off + sizeof(size_t) <= all.len;) {
        size_t len;
        memcpy(&len, all.data + off, sizeof(len));
        off += sizeof(len);
        if (atomic_load(u->leader))
            one(u, rc, all.data + off, len, a, &patch, &resp);
        off += len;
        if (rc->err != 0) {
            atomic_fetch_add(&u->failures, 1);
            break;
        }
    }
    kw_buf_cleanup(&patch);
    kw_buf_cleanup(&resp);
    kw_arena_free(a);
    redisFree(rc);
    kw_buf_cleanup(&all);
}

static void *usage_main(void *arg)
{
    struct ctl_usage *u = arg;
    pthread_mutex_lock(&u->mu);
    while (!u->stop) {
        struct timespec ts;
        kw_deadline_after(&ts, u->interval_ms);
        pthread_cond_timedwait(&u->cond, &u->mu, &ts);
        if (u->stop)
            break;
        pthread_mutex_unlock(&u->mu);
        if (atomic_load(u->leader))
            ctl_usage_pass(u);
        pthread_mutex_lock(&u->mu);
    }
    pthread_mutex_unlock(&u->mu);
    return NULL;
}

int ctl_usage_start(struct ctl_usage *u)
{
    pthread_mutex_init(&u->mu, NULL);
    pthread_cond_init(&u->cond, NULL);
    if (u->interval_ms <= 0)
        u->interval_ms = 30000;
    if (pthread_create(&u->thread, NULL, usage_main, u) != 0)
        return KW_ERROR;
    u->running = true;
    return KW_OK;
}

void ctl_usage_stop(struct ctl_usage *u)
{
    if (!u->running)
        return;
    pthread_mutex_lock(&u->mu);
    u->stop = true;
    pthread_cond_signal(&u->cond);
    pthread_mutex_unlock(&u->mu);
    pthread_join(u->thread, NULL);
    pthread_cond_destroy(&u->cond);
    pthread_mutex_destroy(&u->mu);
    u->running = false;
}
