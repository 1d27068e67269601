/* knoway data plane: a Redis client on a worker's loop - hiredis's async API with the
 * worker's epoll as its event library, one connection per worker, every command pipelined
 * on it, and a deadline on each call (hiredis 0.14 has none).
 *
 * The connection is opened on first use and after a failure again with backoff (100 ms
 * doubling to 5 s); while it is down a call is refused at once (NULL), so no request waits
 * on a dead Redis. A call not answered within the timeout is failed (its callback gets NULL)
 * and the connection is dropped: a stalled Redis fails every waiting call within the
 * timeout, then fast while backing off. Scripts are loaded (SCRIPT LOAD) first on every new
 * connection and called by SHA-1, so a restarted Redis gets them again.
 *
 * Threading: a client belongs to one worker and is used on its thread only. */
#ifndef DP_REDIS_H
#define DP_REDIS_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stdint.h>

struct dp_worker;

struct dp_redis_conf {
    const char *host; /* an address (resolved on the main thread before the workers start) */
    uint16_t port;
    unsigned db;
    const char *user;     /* NULL: AUTH with the password alone */
    const char *password; /* NULL: no AUTH */
    int64_t timeout_ms;
    const char *const *scripts; /* Lua sources, loaded on every connection */
    unsigned nscripts;
};

struct dp_redis;
struct dp_redis_op;

/* reply is NULL when the call failed (why says how: "timeout", "connection lost"); a Redis
 * error reply is passed as it is (type REDIS_REPLY_ERROR). */
typedef void (*dp_redis_cb)(void *ud, const redisReply *reply, const char *why);

struct dp_redis *dp_redis_new(struct dp_worker *w, const struct dp_redis_conf *conf);
/* At shutdown, after the worker's loop ended (main thread). */
void dp_redis_free(struct dp_redis *rc);

/* EVALSHA of conf->scripts[script] with keys then args (argv: nkeys keys, then the rest).
 * cb is called once, later (never from inside this call); NULL when Redis is down or the
 * call could not be queued: nothing will be called back. cb NULL: fire and forget. */
struct dp_redis_op *dp_redis_eval(struct dp_redis *rc, unsigned script, int nkeys, int argc,
                                  const char **argv, const size_t *argvlen, dp_redis_cb cb,
                                  void *ud);
/* The caller no longer wants the answer (its request ended): cb will not be called. */
void dp_redis_cancel(struct dp_redis_op *op);
bool dp_redis_up(const struct dp_redis *rc);

/* Counters (read by the metrics filter). */
struct dp_redis_stats {
    uint64_t connects, failures, timeouts;
};
void dp_redis_stats(const struct dp_redis *rc, struct dp_redis_stats *out);

#endif
