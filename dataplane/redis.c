/* The worker's Redis client (redis.h). */
#include <hiredis/async.h>
#include <openssl/evp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "knoway/kw.h"
#include "knoway/log.h"
#include "redis.h"
#include "worker.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

enum state { RS_DOWN, RS_CONNECTING, RS_UP };

struct dp_redis {
    struct dp_worker *w;
    const struct dp_redis_conf *conf;
    char sha[8][41]; /* the scripts' SHA-1 */
    redisAsyncContext *ac;
    struct dp_watch *watch; /* of ac's socket (heap: retired after the epoll batch) */
    uint32_t events;
    enum state state;
    int64_t next_try_ms, backoff_ms;
    struct dp_redis_stats stats;
};

struct dp_redis_op {
    struct dp_redis *rc;
    dp_redis_cb cb; /* NULL: cancelled or answered */
    void *ud;
    struct dp_timer timer;
    bool armed;
};

static void sha1_hex(const char *s, char out[41])
{
    unsigned char d[20];
    unsigned n = 0;
    EVP_Digest(s, strlen(s), d, &n, EVP_sha1(), NULL);
    for (unsigned i = 0; i < 20; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}

struct dp_redis *dp_redis_new(struct dp_worker *w, const struct dp_redis_conf *conf)
{
    struct dp_redis *rc = calloc(1, sizeof(*rc));
    if (rc == NULL)
        return NULL;
    rc->w = w;
    rc->conf = conf;
    rc->backoff_ms = BACKOFF_MIN_MS;
    for (unsigned i = 0; i < conf->nscripts && i < 8; i++)
        sha1_hex(conf->scripts[i], rc->sha[i]);
    return rc;
}

bool dp_redis_up(const struct dp_redis *rc)
{
    return rc != NULL && rc->state == RS_UP;
}

void dp_redis_stats(const struct dp_redis *rc, struct dp_redis_stats *out)
{
    *out = rc != NULL ? rc->stats : (struct dp_redis_stats){0};
}

/* ---- hiredis's event hooks on the worker's epoll ---------------------------------------- */

static void on_socket(struct dp_watch *watch, uint32_t events)
{
    struct dp_redis *rc = watch->ptr;
    if (watch->retired || rc->ac == NULL || rc->watch != watch)
        return;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        redisAsyncHandleRead(rc->ac);
    if (rc->ac != NULL && rc->watch == watch && (events & EPOLLOUT))
        redisAsyncHandleWrite(rc->ac);
}

static void update(struct dp_redis *rc, uint32_t events)
{
    if (rc->watch == NULL || rc->w == NULL || events == rc->events)
        return;
    bool add = rc->events == 0;
    if (events == 0)
        dp_worker_unwatch(rc->w, rc->watch);
    else
        dp_worker_watch(rc->w, rc->watch, events, add);
    rc->events = events;
}

static void ev_add_read(void *p)
{
    struct dp_redis *rc = p;
    update(rc, rc->events | EPOLLIN);
}

static void ev_del_read(void *p)
{
    struct dp_redis *rc = p;
    update(rc, rc->events & ~(uint32_t)EPOLLIN);
}

static void ev_add_write(void *p)
{
    struct dp_redis *rc = p;
    update(rc, rc->events | EPOLLOUT);
}

static void ev_del_write(void *p)
{
    struct dp_redis *rc = p;
    update(rc, rc->events & ~(uint32_t)EPOLLOUT);
}

static void ev_cleanup(void *p)
{
    struct dp_redis *rc = p;
    if (rc->watch != NULL) {
        if (rc->events != 0 && rc->w != NULL)
            dp_worker_unwatch(rc->w, rc->watch);
        rc->watch->retired = true;
        if (rc->w != NULL) {
            rc->watch->next = rc->w->retired;
            rc->w->retired = rc->watch;
        } else {
            free(rc->watch);
        }
        rc->watch = NULL;
    }
    rc->events = 0;
}

/* ---- the connection ------------------------------------------------------------------ */

static void went_down(struct dp_redis *rc, const char *why)
{
    if (rc->state == RS_UP || rc->state == RS_CONNECTING) {
        char addr[300], retry[32];
        snprintf(addr, sizeof(addr), "%s:%u", rc->conf->host, rc->conf->port);
        snprintf(retry, sizeof(retry), "%lldms", (long long)rc->backoff_ms);
        kw_log(KW_LOG_WARN, "redis unavailable", "address", addr, "error", why, "retry_in", retry,
               NULL);
    }
    rc->state = RS_DOWN;
    rc->stats.failures++;
    rc->next_try_ms = dp_now_ms() + rc->backoff_ms;
    rc->backoff_ms = rc->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : rc->backoff_ms * 2;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct dp_redis *rc = ac->data;
    if (status != REDIS_OK) {
        rc->ac = NULL; /* hiredis frees it after this call */
        went_down(rc, ac->errstr);
        return;
    }
    rc->state = RS_UP;
    rc->backoff_ms = BACKOFF_MIN_MS;
    rc->stats.connects++;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct dp_redis *rc = ac->data;
    (void)status;
    if (rc->ac == ac) {
        rc->ac = NULL;
        went_down(rc, ac->err != 0 ? ac->errstr : "connection closed");
    }
}

/* Drop the connection (a call timed out, a setup command failed). */
static void drop(struct dp_redis *rc, const char *why)
{
    redisAsyncContext *ac = rc->ac;
    if (ac == NULL)
        return;
    rc->ac = NULL;
    went_down(rc, why);
    redisAsyncFree(ac); /* pending calls are answered with NULL */
}

static void on_setup_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct dp_redis *rc = ac->data;
    const redisReply *rp = reply;
    (void)privdata;
    if (rp != NULL && rp->type == REDIS_REPLY_ERROR && rc->ac == ac)
        kw_log(KW_LOG_ERROR, "redis refused the connection setup", "error", rp->str, NULL);
}

static bool connect_now(struct dp_redis *rc)
{
    const struct dp_redis_conf *c = rc->conf;
    redisAsyncContext *ac = redisAsyncConnect(c->host, c->port);
    if (ac == NULL) {
        went_down(rc, "out of memory");
        return false;
    }
    if (ac->err != 0) {
        went_down(rc, ac->errstr);
        redisAsyncFree(ac);
        return false;
    }
    rc->watch = calloc(1, sizeof(*rc->watch));
    if (rc->watch == NULL) {
        redisAsyncFree(ac);
        went_down(rc, "out of memory");
        return false;
    }
    rc->watch->fd = ac->c.fd;
    rc->watch->on_event = on_socket;
    rc->watch->ptr = rc;
    rc->events = 0;
    ac->data = rc;
    ac->ev.data = rc;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    rc->ac = ac;
    rc->state = RS_CONNECTING;
    /* queued before any call: AUTH, SELECT, the scripts */
    if (c->password != NULL) {
        const char *argv[3] = {"AUTH", c->user != NULL ? c->user : c->password, c->password};
        redisAsyncCommandArgv(ac, on_setup_reply, NULL, c->user != NULL ? 3 : 2, argv, NULL);
    }
    if (c->db != 0)
        redisAsyncCommand(ac, on_setup_reply, NULL, "SELECT %u", c->db);
    for (unsigned i = 0; i < c->nscripts; i++) {
        const char *argv[3] = {"SCRIPT", "LOAD", c->scripts[i]};
        redisAsyncCommandArgv(ac, on_setup_reply, NULL, 3, argv, NULL);
    }
    ev_add_write(rc); /* the connect completes when the socket turns writable */
    return true;
}

/* ---- calls ----------------------------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct dp_redis_op *op = privdata;
    (void)ac;
    if (op->armed && op->rc->w != NULL)
        dp_timer_cancel(op->rc->w, &op->timer);
    dp_redis_cb cb = op->cb;
    void *ud = op->ud;
    free(op);
    if (cb != NULL)
        cb(ud, reply, reply != NULL ? NULL : "connection lost");
}

static void on_timeout(struct dp_timer *t)
{
    struct dp_redis_op *op =
        (struct dp_redis_op *)((char *)t - offsetof(struct dp_redis_op, timer));
    struct dp_redis *rc = op->rc;
    op->armed = false;
    dp_redis_cb cb = op->cb;
    op->cb = NULL; /* hiredis still owns op: freed when the reply or the drop comes */
    rc->stats.timeouts++;
    if (cb != NULL)
        cb(op->ud, NULL, "timeout");
    drop(rc, "a call timed out");
}

struct dp_redis_op *dp_redis_eval(struct dp_redis *rc, unsigned script, int nkeys, int argc,
                                  const char **argv, const size_t *argvlen, dp_redis_cb cb,
                                  void *ud)
{
    if (rc == NULL || script >= rc->conf->nscripts || argc > 64)
        return NULL;
    if (rc->state == RS_DOWN) {
        if (dp_now_ms() < rc->next_try_ms || !connect_now(rc))
            return NULL;
    }
    if (rc->ac == NULL)
        return NULL;
    const char *av[67];
    size_t al[67];
    char nk[16];
    snprintf(nk, sizeof(nk), "%d", nkeys);
    av[0] = "EVALSHA";
    al[0] = 7;
    av[1] = rc->sha[script];
    al[1] = 40;
    av[2] = nk;
    al[2] = strlen(nk);
    for (int i = 0; i < argc; i++) {
        av[3 + i] = argv[i];
        al[3 + i] = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
    }
    if (cb == NULL)
        return redisAsyncCommandArgv(rc->ac, NULL, NULL, argc + 3, av, al) == REDIS_OK
                   ? (struct dp_redis_op *)rc /* a non-NULL token: not to be cancelled */
                   : NULL;
    struct dp_redis_op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return NULL;
    *op = (struct dp_redis_op){.rc = rc, .cb = cb, .ud = ud};
    if (redisAsyncCommandArgv(rc->ac, on_reply, op, argc + 3, av, al) != REDIS_OK) {
        free(op);
        return NULL;
    }
    op->timer.node.idx = KW_HEAP_NONE;
    op->timer.on_fire = on_timeout;
    op->armed = true;
    dp_timer_arm(rc->w, &op->timer, dp_now_ms() + rc->conf->timeout_ms);
    return op;
}

void dp_redis_cancel(struct dp_redis_op *op)
{
    if (op == NULL)
        return;
    op->cb = NULL;
    if (op->armed) {
        dp_timer_cancel(op->rc->w, &op->timer);
        op->armed = false;
    }
}

void dp_redis_free(struct dp_redis *rc)
{
    if (rc == NULL)
        return;
    rc->w = NULL; /* the loop is gone: the watch is freed at once */
    if (rc->ac != NULL) {
        redisAsyncContext *ac = rc->ac;
        rc->ac = NULL;
        redisAsyncFree(ac);
    }
    free(rc);
}
