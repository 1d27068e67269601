/* Vertex AI: Google's and Anthropic's models hosted in a Google Cloud project.
 *
 *   Gemini models (publisher google), Gemini's GenerateContent body (provider_gemini.c):
 *     POST
 * {base}/v1/projects/{project}/locations/{region}/publishers/google/models/{model}:generateContent
 *     POST ...:streamGenerateContent?alt=sse
 *   Claude models (a model name starting with "claude"; publisher anthropic), Anthropic's
 *   Messages body (provider_anthropic.c) without "model" and with
 *   "anthropic_version": "vertex-2023-10-16":
 *     POST ...publishers/anthropic/models/{model}:rawPredict | :streamRawPredict
 * {base} is https://{region}-aiplatform.googleapis.com (https://aiplatform.googleapis.com
 * for region global) unless the upstream is set. Authorization: Bearer with an access token:
 * the Secret's value when it is a token, else one exchanged for its service-account key by
 * gcp_auth.c (off the workers; a request that finds none yet answers 503, a key the token
 * endpoint refuses 502). Answers, streams and errors are the publisher's, read by its
 * provider. Only /v1/chat/completions is served. */
#include <stdio.h>
#include <string.h>

#include "gcp_auth.h"
#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/snapshot.h"
#include "translate.h"

#define VERTEX_ANTHROPIC_VERSION "vertex-2023-10-16"

static bool is_claude(const struct dp_request *r)
{
    return r->upstream_model != NULL && strncmp(r->upstream_model, "claude", 6) == 0;
}

static const struct dp_provider_ops *publisher(const struct dp_request *r)
{
    return is_claude(r) ? &dp_provider_anthropic : &dp_provider_gemini;
}

static const struct kw_credential *credential(const struct kw_snapshot *snap,
                                              const struct kw_backend *b)
{
    const struct kw_secret_ref *ref = &b->credentials.secret_ref;
    return ref->name != NULL
               ? kw_snapshot_credential((struct kw_snapshot *)snap, b->meta.ns, ref->name, ref->key)
               : NULL;
}

void dp_vertex_prefetch(const struct kw_snapshot *snap)
{
    for (size_t i = 0; i < snap->nbackends; i++) {
        const struct kw_backend *b = snap->backends[i];
        const struct kw_credential *c =
            b->provider == KW_PROVIDER_VERTEX_AI ? credential(snap, b) : NULL;
        if (c != NULL && kw_credential_is_json(c->value, c->len))
            dp_gcp_auth_want(c->digest, c->value, c->len);
    }
}

/* The bearer token, or KW_ERROR with r->err set. */
static int access_token(struct dp_request *r, const char **token)
{
    const struct kw_backend *b = r->backend;
    const struct kw_credential *c = credential(r->table->snap, b);
    if (c == NULL || c->len == 0)
        return dp_error_set(r, 500, "server_error", NULL, NULL,
                            "backend %s (VertexAI) has no credential", b->meta.name);
    if (!kw_credential_is_json(c->value, c->len)) {
        *token = kw_arena_strndup(r->arena, c->value, c->len);
        return *token != NULL ? KW_OK : KW_ERROR;
    }
    char err[256];
    switch (dp_gcp_auth_token(c->digest, c->value, c->len, r->arena, token, err, sizeof(err))) {
    case DP_GCP_OK:
        return KW_OK;
    case DP_GCP_PENDING:
        return dp_error_set(r, 503, "server_error", "credentials_pending", NULL,
                            "backend %s (VertexAI) is still obtaining its access token; try "
                            "again in a moment",
                            b->meta.name);
    case DP_GCP_FAILED:
        break;
    }
    /* what the exchange said (addresses, the endpoint's answer) stays in the log: a client
     * that could read it could probe the data plane's network through a tenant's key */
    kw_log(KW_LOG_WARN, "Vertex AI backend has no access token", "request_id", r->id, "backend",
           b->meta.name, "error", err, NULL);
    return dp_error_set(r, 502, "server_error", "upstream_auth_failed", NULL,
                        "backend %s (VertexAI) has no access token: its credential could not be "
                        "exchanged (request %s; the data plane's log says why)",
                        b->meta.name, r->id);
}

static int vertex_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    const struct kw_backend *b = r->backend;
    if (r->api != DP_API_CHAT)
        return dp_error_set(r, 400, "invalid_request_error", "unsupported_endpoint", NULL,
                            "backend %s (VertexAI) serves /v1/chat/completions only", b->meta.name);
    const char *token;
    if (access_token(r, &token) != KW_OK)
        return KW_ERROR;
    struct kw_node *body;
    const char *method;
    bool claude = is_claude(r);
    if (claude) {
        if (dp_anthropic_request(r, &body) != KW_OK)
            return KW_ERROR;
        /* Vertex names the model in the URL and the API version in the body */
        struct kw_node *out = kw_node_new(r->arena, KW_NODE_MAP);
        kw_node_map_put(r->arena, out, "anthropic_version",
                        kw_node_cstring(r->arena, VERTEX_ANTHROPIC_VERSION));
        for (size_t i = 0; i < body->n; i++)
            if (strcmp(body->pairs[i].key->str, "model") != 0)
                kw_node_map_add(r->arena, out, body->pairs[i].key, body->pairs[i].val);
        body = out;
        method = r->stream ? "streamRawPredict" : "rawPredict";
    } else if (dp_gemini_request(r, &body, &method) != KW_OK) {
        return KW_ERROR;
    }
    char *model = curl_easy_escape(NULL, r->upstream_model, 0);
    if (model == NULL)
        return KW_ERROR;
    /* Vertex names model versions with '@' (claude-3-5-haiku@20241022), as its SDKs send it */
    char *w = model;
    for (const char *q = model; *q != '\0';) {
        bool at = strncmp(q, "%40", 3) == 0;
        *w++ = at ? '@' : *q;
        q += at ? 3 : 1;
    }
    *w = '\0';
    const char *base = r->base_url != NULL ? r->base_url : "";
    int rc =
        kw_buf_printf(url, "%.*s/v1/projects/%s/locations/%s/publishers/%s/models/%s:%s",
                      (int)r->base_len, base, b->credentials.vertex.project,
                      b->credentials.vertex.region, claude ? "anthropic" : "google", model, method);
    curl_free(model);
    rc |= dp_openai_add_header(headers, r->arena, "Content-Type", "application/json");
    rc |= dp_openai_add_header(headers, r->arena, "Authorization",
                               kw_arena_printf(r->arena, "Bearer %s", token));
    if (rc != KW_OK)
        return KW_ERROR;
    return dp_openai_finish(r, headers, body);
}

static int vertex_on_response(struct dp_request *r, const char *body, size_t len,
                              struct kw_buf *out)
{
    return publisher(r)->on_response(r, body, len, out);
}

static int vertex_on_event(struct dp_request *r, const char *raw, size_t raw_len, const char *event,
                           const char *data, size_t data_len, struct kw_buf *out)
{
    return publisher(r)->on_event(r, raw, raw_len, event, data, data_len, out);
}

/* Vertex answers its own errors (authentication, quota, a wrong project) in Google's shape
 * for both publishers; Anthropic's model errors come in Anthropic's. */
static int vertex_on_error(struct dp_request *r, long status, const char *body, size_t len,
                           struct kw_buf *out)
{
    const struct kw_node *root = dp_tr_error_json(r, body, len);
    if (root == NULL)
        return KW_OK; /* not JSON: wrapped by the caller */
    const struct kw_node *first = root->type == KW_NODE_SEQ && root->n > 0 ? root->items[0] : root;
    const struct kw_node *google = kw_node_get(kw_node_get(first, "error"), "status");
    return google != NULL && google->type == KW_NODE_STRING ? dp_gemini_error(status, root, out)
                                                            : dp_anthropic_error(status, root, out);
}

static int vertex_on_stream_end(struct dp_request *r, struct kw_buf *out)
{
    const struct dp_provider_ops *p = publisher(r);
    return p->on_stream_end != NULL ? p->on_stream_end(r, out) : KW_OK;
}

const struct dp_provider_ops dp_provider_vertex = {
    .name = "vertex",
    .build = vertex_build,
    .on_response = vertex_on_response,
    .on_event = vertex_on_event,
    .on_error = vertex_on_error,
    .on_stream_end = vertex_on_stream_end,
};
