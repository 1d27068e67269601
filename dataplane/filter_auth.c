/* Authentication as a filter (auth phase): who is calling, from an API key.
 *
 * The key comes from `Authorization: Bearer KEY` (and `x-api-key` on /v1/messages, as the
 * Anthropic SDK sends it). Its SHA-256 is looked up in the routing table's index of every
 * LLMConsumer's key digests (O(1), compared in constant time); keys themselves never reach
 * the data plane. Without consumers in the configuration and without `spec.auth.required`
 * nothing is checked (the quickstart and clients sending dummy keys keep working). With
 * consumers, a key that matches none is refused; without a key the request is anonymous
 * unless `spec.auth.required`. A consumer calls only its `spec.models`. The upstream never
 * gets the client's credentials (providers build their own headers).
 *
 * Guessing is throttled: each client address (IPv6 by its /64) may fail authentication
 * spec.auth.failedAttempts.limit times per its window (a sliding window in the limiter's
 * table); past that its requests with a credential get 429 until the window slides, before
 * any key is looked up. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "filter.h"
#include "dp_limits.h"
#include "jwt.h"
#include "knoway/digest.h"
#include "knoway/kw.h"
#include "ratelimit.h"
#include "router.h"
#include "server.h"

static const char *client_key(struct dp_request *r)
{
    const char *h = dp_request_header(r, "Authorization");
    if (h != NULL && strncasecmp(h, "Bearer ", 7) == 0) {
        h += 7;
        while (*h == ' ')
            h++;
        return *h != '\0' ? h : NULL;
    }
    if (r->front != NULL) {
        h = dp_request_header(r, "x-api-key");
        return h != NULL && *h != '\0' ? h : NULL;
    }
    return NULL;
}

struct conf {
    struct dp_jwt *jwt;        /* NULL without spec.auth.jwt */
    struct dp_rl_store *fails; /* failed attempts per client address */
    int64_t max_fails, window_ms;
    uint64_t family; /* the table's spill family for these counts */
};

static int init(struct dp_server *s, void **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    *out = c;
    if (c == NULL || (c->fails = dp_rl_store_new()) == NULL)
        return KW_ERROR;
    c->max_fails = s->dp->auth.max_failures;
    c->window_ms = s->dp->auth.failure_window_ms;
    c->family = dp_rl_family("auth", "failures");
    if (s->dp->auth.njwt == 0)
        return KW_OK;
    c->jwt = dp_jwt_start(s->dp->auth.jwt, s->dp->auth.njwt);
    return c->jwt != NULL ? KW_OK : KW_ERROR;
}

static void fini(void *conf)
{
    struct conf *c = conf;
    if (c == NULL)
        return;
    dp_jwt_stop(c->jwt);
    dp_rl_store_free(c->fails);
    free(c);
}

/* The failures the client's address has in the window; counts one more when add. */
static int64_t failures(struct conf *c, struct dp_request *r, bool add)
{
    unsigned char addr[16];
    size_t n = c->max_fails > 0 ? dp_request_client_addr(r, addr) : 0;
    if (n == 0)
        return 0;
    struct dp_rl_state st;
    if (dp_rl_local(c->fails, dp_rl_hash((const char *)addr, n), c->family, c->max_fails,
                    c->window_ms, add ? 1 : 0, false, dp_now_ms(), &st) < 0)
        return add ? 0 : c->max_fails; /* no room to count: refuse rather than let guess */
    if (!add && dp_rl_estimate(&st) >= c->max_fails) {
        int64_t wait = dp_rl_wait_ms(&st, 1);
        char ra[24];
        snprintf(ra, sizeof(ra), "%lld", (long long)(wait > 0 ? (wait + 999) / 1000 : 1));
        dp_request_add_header(r, "Retry-After", ra);
    }
    return dp_rl_estimate(&st);
}

/* A refused credential: counted against the client's address. */
static int refused(struct conf *c, struct dp_request *r, const char *msg)
{
    failures(c, r, true);
    return dp_error_set(r, 401, "invalid_request_error", "invalid_api_key", NULL, "%s", msg);
}

/* A bearer JWT: its issuer's keys, its claims -> consumer and user. */
static int jwt_auth(struct dp_request *r, struct conf *c, const char *token)
{
    struct dp_jwt_claims cl;
    char why[160];
    if (dp_jwt_verify(c->jwt, token, (long long)time(NULL), r->arena, &cl, why, sizeof(why)) !=
        KW_OK) {
        char msg[200];
        snprintf(msg, sizeof(msg), "Invalid token: %s.", why);
        return refused(c, r, msg);
    }
    r->user = cl.user;
    r->authenticated = true;
    if (cl.provider->consumer_claim == NULL)
        return KW_OK; /* authenticated: a user, no consumer */
    r->consumer = cl.consumer != NULL ? dp_table_consumer_named(r->table, cl.consumer) : NULL;
    if (r->consumer == NULL) {
        char msg[320];
        snprintf(msg, sizeof(msg), "Invalid token: its %s claim names no LLMConsumer.",
                 cl.provider->consumer_claim);
        return refused(c, r, msg);
    }
    return KW_OK;
}

static int on_request(struct dp_request *r, void *ctx)
{
    (void)ctx;
    bool required = r->w->server->dp->auth.required;
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_auth);
    struct dp_jwt *j = c != NULL ? c->jwt : NULL;
    if (r->table == NULL || (r->table->snap->nconsumers == 0 && !required && j == NULL))
        return KW_DECLINED;
    const char *key = client_key(r);
    if (key != NULL && c != NULL && c->max_fails > 0 && failures(c, r, false) >= c->max_fails)
        return dp_error_set(r, 429, "invalid_request_error", "too_many_auth_failures", NULL,
                            "Too many failed authentication attempts from your address; try "
                            "again later.");
    if (key != NULL && j != NULL && dp_jwt_looks_like(key))
        return jwt_auth(r, c, key);
    if (key != NULL && r->table->snap->nconsumers == 0 && !required)
        return KW_DECLINED; /* not a JWT, no API keys to check it against */
    if (key == NULL) {
        if (!required)
            return KW_DECLINED; /* anonymous */
        return dp_error_set(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                            "You didn't provide an API key. Send it in the Authorization "
                            "header as Bearer YOUR_KEY.");
    }
    unsigned char digest[32];
    if (kw_sha256(key, strlen(key), digest) != KW_OK)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "cannot hash the API key");
    r->consumer = dp_table_consumer(r->table, digest);
    if (r->consumer == NULL)
        /* the key is not echoed: it may be a real key of something else */
        return refused(c, r, "Incorrect API key provided.");
    r->authenticated = true;
    return KW_OK;
}

/* After route (the body is parsed there): the consumer's model allow-list. */
static int on_route(struct dp_request *r, void *ctx)
{
    (void)ctx;
    if (!dp_route_admits(r->route, r->consumer))
        /* another namespace's route (a tenant's keys work on its own namespace's routes
         * unless a route admits more): as if the model were unknown */
        return dp_error_set(r, 404, "invalid_request_error", "model_not_found", "model",
                            "The model `%s` does not exist or you do not have access to it.",
                            r->model);
    if (r->consumer == NULL || r->model == NULL || dp_consumer_allows(r->consumer, r->model))
        return KW_DECLINED;
    return dp_error_set(r, 403, "invalid_request_error", "model_not_allowed", "model",
                        "The model `%s` is not allowed for this API key.", r->model);
}

/* Authentication runs before the body is parsed: a request refused for its key costs a
 * hash, not a parse. */
const struct dp_filter_ops dp_filter_auth = {
    .name = "auth",
    .phase = DP_PH_AUTH,
    .init = init,
    .fini = fini,
    .on_request = on_request,
};

const struct dp_filter_ops dp_filter_models = {
    .name = "models",
    .phase = DP_PH_ROUTE,
    .on_request = on_route,
};
