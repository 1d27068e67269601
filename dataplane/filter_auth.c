/* Authentication as a filter (auth phase): who is calling, from an API key.
 *
 * The key comes from `Authorization: Bearer KEY` (and `x-api-key` on /v1/messages, as the
 * Anthropic SDK sends it). Its SHA-256 is looked up in the routing table's index of every
 * LLMConsumer's key digests (O(1), compared in constant time); keys themselves never reach
 * the data plane. Without consumers in the configuration and without `spec.auth.required`
 * nothing is checked (the quickstart and clients sending dummy keys keep working). With
 * consumers, a key that matches none is refused; without a key the request is anonymous
 * unless `spec.auth.required`. A consumer calls only its `spec.models`. The upstream never
 * gets the client's credentials (providers build their own headers). */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "filter.h"
#include "jwt.h"
#include "knoway/digest.h"
#include "knoway/kw.h"
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

static int init(struct dp_server *s, void **out)
{
    *out = NULL;
    if (s->dp->auth.njwt == 0)
        return KW_OK;
    *out = dp_jwt_start(s->dp->auth.jwt, s->dp->auth.njwt);
    return *out != NULL ? KW_OK : KW_ERROR;
}

static void fini(void *conf)
{
    dp_jwt_stop(conf);
}

/* A bearer JWT: its issuer's keys, its claims -> consumer and user. */
static int jwt_auth(struct dp_request *r, struct dp_jwt *j, const char *token)
{
    struct dp_jwt_claims cl;
    char why[160];
    if (dp_jwt_verify(j, token, (long long)time(NULL), r->arena, &cl, why, sizeof(why)) != KW_OK)
        return dp_error_set(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                            "Invalid token: %s.", why);
    r->user = cl.user;
    r->authenticated = true;
    if (cl.provider->consumer_claim == NULL)
        return KW_OK; /* authenticated: a user, no consumer */
    r->consumer = cl.consumer != NULL ? dp_table_consumer_named(r->table, cl.consumer) : NULL;
    if (r->consumer == NULL)
        return dp_error_set(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                            "Invalid token: its %s claim names no LLMConsumer.",
                            cl.provider->consumer_claim);
    return KW_OK;
}

static int on_request(struct dp_request *r, void *ctx)
{
    (void)ctx;
    bool required = r->w->server->dp->auth.required;
    struct dp_jwt *j = dp_filter_conf(r->w->server, &dp_filter_auth);
    if (r->table == NULL || (r->table->snap->nconsumers == 0 && !required && j == NULL))
        return KW_DECLINED;
    const char *key = client_key(r);
    if (key != NULL && j != NULL && dp_jwt_looks_like(key))
        return jwt_auth(r, j, key);
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
        return dp_error_set(r, 401, "invalid_request_error", "invalid_api_key", NULL,
                            "Incorrect API key provided.");
    r->authenticated = true;
    return KW_OK;
}

/* After route (the body is parsed there): the consumer's model allow-list. */
static int on_route(struct dp_request *r, void *ctx)
{
    (void)ctx;
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
