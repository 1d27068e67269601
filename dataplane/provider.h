/* knoway data plane: providers (the upstream's schema) and fronts (the client's schema).
 *
 * A table of callbacks: a provider is a file and an entry. Providers and fronts
 * translate only: they read the request, write into the buffers they are handed, and
 * report failures with dp_error_set (never a response); they reach the worker only through
 * r->scratch (a per-event arena) and what the request carries (r->base_url: the endpoint
 * the balancer chose). */
#ifndef DP_PROVIDER_H
#define DP_PROVIDER_H

#include <curl/curl.h>

#include "knoway/buf.h"
#include "knoway/node.h"
#include "request.h"

struct dp_provider_ops {
    const char *name;
    /* Build the upstream URL (into url), headers (appended to *headers) and body (into
     * r->up_body) from the parsed, rewritten client request in r->up_json. KW_OK or
     * KW_ERROR with r->err set. */
    int (*build)(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers);
    /* A complete successful upstream body: extract usage, translate into OpenAI form in
     * out (or leave out empty to relay the body unchanged). KW_OK or KW_ERROR. */
    int (*on_response)(struct dp_request *r, const char *body, size_t len, struct kw_buf *out);
    /* One upstream SSE event: append what the client should see (OpenAI chunks, raw SSE
     * bytes) to out; extract usage. KW_OK or KW_ERROR. */
    int (*on_event)(struct dp_request *r, const char *raw, size_t raw_len, const char *event,
                    const char *data, size_t data_len, struct kw_buf *out);
    /* Optional: an upstream error response (status >= 400) in OpenAI's error shape into
     * out; out left empty keeps the body as it is (wrapped when it is not JSON). */
    int (*on_error)(struct dp_request *r, long status, const char *body, size_t len,
                    struct kw_buf *out);
    /* Optional: the content type of the provider's stream (NULL: text/event-stream). */
    const char *stream_ctype;
    /* Optional: raw stream bytes, split anywhere, for providers whose streams are not SSE
     * (Bedrock's event stream); replaces the SSE parser and on_event. KW_OK or KW_ERROR. */
    int (*feed)(struct dp_request *r, const char *buf, size_t len, struct kw_buf *out);
    /* Optional: the upstream ended its stream cleanly (Gemini ends without [DONE]): what
     * the client still needs, such as the usage chunk and data: [DONE]. */
    int (*on_stream_end)(struct dp_request *r, struct kw_buf *out);
    /* Optional: free what r->provider_state holds outside the arena (the request ends or
     * falls back to another backend). */
    void (*cleanup)(struct dp_request *r);
};

/* An input API other than OpenAI's (POST /v1/messages): the client's request is translated
 * into an OpenAI one before routing, and every answer back. Providers are unaware of it:
 * their stream output goes to r->stage and the front turns it into the client's events. */
struct dp_front_ops {
    const char *name;
    /* The client's body in r->json -> an OpenAI request (r->json replaced). KW_OK, or
     * KW_ERROR with r->err set (400). */
    int (*request)(struct dp_request *r);
    /* A successful OpenAI response body -> the client's form. KW_OK or KW_ERROR. */
    int (*response)(struct dp_request *r, const char *body, size_t len, struct kw_buf *out);
    /* An error (its HTTP status and message) in the client's shape. */
    int (*error_body)(struct dp_request *r, unsigned status, const char *msg, size_t len,
                      struct kw_buf *out);
    /* Stream: what the client gets first (when the stream starts), OpenAI SSE bytes (split
     * anywhere) -> client events, the upstream ended cleanly, a gateway error ends it. */
    int (*stream_begin)(struct dp_request *r, struct kw_buf *out);
    int (*stream)(struct dp_request *r, const char *buf, size_t len, struct kw_buf *out);
    int (*stream_end)(struct dp_request *r, struct kw_buf *out);
    int (*stream_error)(struct dp_request *r, const char *msg, struct kw_buf *out);
    const char *keepalive; /* an idle stream's keep-alive event */
    const char *id_header; /* the request id is also sent under this name (or NULL) */
    void (*cleanup)(struct dp_request *r); /* state outside the arena */
};
extern const struct dp_front_ops dp_front_anthropic;
extern const struct dp_front_ops dp_front_responses;
/* A request that came to /v1/responses, bound to a backend: an OpenAI backend gets it as
 * it came (POST /responses, answered as it answers), any other its chat translation
 * through the front. Called by dp_request_bind before the body is rewritten. */
void dp_responses_bind(struct dp_request *r);

/* The provider registry (providers.c), one row per provider of knoway/provider.h. */
struct kw_snapshot;
struct dp_provider_desc {
    const struct dp_provider_ops *ops; /* NULL: refused when the configuration is read */
    bool responses_native;             /* takes /v1/responses as it came (else the front's) */
    /* A configuration was applied (main thread): what it fetches off the workers, or NULL */
    void (*applied)(const struct kw_snapshot *snap);
};
const struct dp_provider_desc *dp_provider_desc(enum kw_provider p);
/* The provider that serves a backend (NULL: none in this build). */
const struct dp_provider_ops *dp_provider_for(const struct kw_backend *b);
/* Every provider's applied hook, for a snapshot just applied. */
void dp_providers_applied(const struct kw_snapshot *snap);
extern const struct dp_provider_ops dp_provider_openai;
extern const struct dp_provider_ops dp_provider_azure;
extern const struct dp_provider_ops dp_provider_anthropic;
extern const struct dp_provider_ops dp_provider_bedrock;
extern const struct dp_provider_ops dp_provider_gemini;
extern const struct dp_provider_ops dp_provider_vertex;

/* The translated request bodies, for providers that host another's API (Vertex AI):
 * Anthropic's Messages body, Gemini's GenerateContent (or embeddings) body and method. */
int dp_anthropic_request(struct dp_request *r, struct kw_node **body);
int dp_gemini_request(struct dp_request *r, struct kw_node **body, const char **method);
/* Their error mappings, from a body parsed once (dp_tr_error_json). */
int dp_anthropic_error(long status, const struct kw_node *root, struct kw_buf *out);
int dp_gemini_error(long status, const struct kw_node *root, struct kw_buf *out);
/* Ask for the access tokens of the snapshot's Vertex AI backends (a configuration is
 * applied): the first request finds them ready. */
struct kw_snapshot;
void dp_vertex_prefetch(const struct kw_snapshot *snap);

/* Where a provider writes stream output: r->out, or r->stage with a front. */
struct kw_buf *dp_stream_sink(struct dp_request *r);

/* Shared by the OpenAI-shaped providers (provider_openai.c). */
int dp_openai_add_header(struct curl_slist **list, struct kw_arena *a, const char *name,
                         const char *value);
/* A value of the backend's Secret: key, or credentials.secretRef.key when key is NULL.
 * NULL when there is no secretRef or the value is empty. */
const char *dp_provider_secret(struct dp_request *r, const char *key);
/* The backend's extra headers, then body written as the upstream request: how every
 * provider's build ends. KW_OK or KW_ERROR. */
int dp_openai_finish(struct dp_request *r, struct curl_slist **headers, const struct kw_node *body);
const char *dp_openai_api_suffix(enum dp_api api);
int dp_openai_on_response(struct dp_request *r, const char *body, size_t len, struct kw_buf *out);
int dp_openai_on_event(struct dp_request *r, const char *raw, size_t raw_len, const char *event,
                       const char *data, size_t data_len, struct kw_buf *out);

#endif
