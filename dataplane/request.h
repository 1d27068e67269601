/* knoway data plane: a client request, from libmicrohttpd's first access-handler call to
 * the access-log line. request.c is the glue to libmicrohttpd (body reading, completion)
 * and the request's own helpers (parsing the body, binding a backend); the phases that run
 * it are phases.c, the responses respond.c.
 *
 * Threading: a request lives on one worker; everything here is touched by its thread. */
#ifndef DP_REQUEST_H
#define DP_REQUEST_H

#include <microhttpd.h>
#include <stdbool.h>
#include <stdint.h>

#include "dp_limits.h"
#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/node.h"
#include "router.h"
#include "sse.h"
#include "upstream.h"
#include "worker.h"

enum dp_api { DP_API_NONE, DP_API_CHAT, DP_API_COMPLETIONS, DP_API_EMBEDDINGS, DP_API_MODELS };

/* The phases, in order (phases.c). */
enum dp_phase {
    DP_PH_BODY,      /* the body is complete: limits, parse and check it */
    DP_PH_AUTH,      /* who is calling (filters) */
    DP_PH_ROUTE,     /* the route, then a backend and endpoint (balancer) */
    DP_PH_LIMIT,     /* rate limits and budgets (filters) */
    DP_PH_CACHE,     /* a cached answer (filters) */
    DP_PH_TRANSFORM, /* the upstream request in the provider's schema */
    DP_PH_UPSTREAM,  /* the transfer; retries and fallbacks go back to DP_PH_ROUTE */
    DP_PH_RESPOND,   /* the answer translated for the client */
    DP_PH_LOG,       /* a response is ready: waiting for the end (filters' on_end) */
    DP_PH_COUNT
};

/* What the client sees of the response. */
enum dp_state {
    DP_ST_BODY,     /* reading the client's body */
    DP_ST_UPSTREAM, /* phases run, no response yet */
    DP_ST_STREAM,   /* relaying a stream */
    DP_ST_DONE,     /* a response is queued */
};

/* An error for the client (set by phases, filters and providers; sent by respond.c). */
struct dp_error {
    unsigned status; /* 0: none */
    char type[40];
    char code[48];  /* "" = null */
    char param[48]; /* "" = null */
    char msg[512];
};

#define DP_USAGE_RAW 8
struct dp_usage {
    bool have;
    int64_t prompt, completion, cached;
    int64_t reasoning; /* of completion: reasoning tokens (0: none or not reported) */
    /* the input count a stream reported at its start (Anthropic's message_start), for a
     * stream that ends without its usage; -1 when none was */
    int64_t input_seen;
    /* the provider's own counts, as it named them (dp_usage_raw): the usage record keeps
     * them (provider_usage) so bills can be checked against each provider's */
    struct {
        const char *name; /* a string literal */
        int64_t value;
    } raw[DP_USAGE_RAW];
    unsigned nraw;
};

/* Keep one of the provider's counts (replaced when the name is there already). */
void dp_usage_raw(struct dp_usage *u, const char *name, int64_t value);

struct dp_provider_ops;
struct sockaddr;
struct dp_front_ops;
struct dp_conn;
struct dp_backend_state;
struct dp_cont;

struct dp_request {
    struct dp_worker *w;
    struct MHD_Connection *conn;
    struct kw_arena *arena;
    struct kw_arena *scratch; /* reset per stream event (the worker's) */
    char id[40];
    enum dp_api api;
    const struct dp_front_ops *front; /* the client's API when not OpenAI's (NULL) */
    const char *api_name;             /* the API the client called: chat, messages, responses... */
    const char *format_tool; /* structured output through a forced tool: its name (translate.c) */
    void *front_state;       /* its per-request state (arena) */
    const char *path;
    const char *method;
    int64_t start_ms;
    struct dp_conn *conn_ctx; /* its connection's read deadline (worker.c) */
    enum dp_state state;
    enum dp_phase phase;            /* where the engine runs or resumes */
    unsigned filter_ix;             /* the filter of the phase to run next */
    bool in_engine;                 /* the engine is running (re-entry guard) */
    bool resume_pending;            /* ... and was asked to resume meanwhile */
    unsigned early_status;          /* 404/405 known from the first call */
    struct dp_request *prev, *next; /* the worker's active requests */

    /* client body and the request as parsed once */
    struct kw_buf body;
    size_t body_len;    /* what was received (body may be freed) */
    size_t arena_bytes; /* input bytes the arena was sized for (dp_request_arena_grow) */
    bool body_too_large;
    bool over_budget;     /* the memory budget was spent when it arrived: 503 */
    long long accounted;  /* bytes of this request's buffers counted in the memory budget */
    struct kw_node *json; /* the parsed body (arena) */
    const struct kw_consumer *consumer; /* who is calling (filter_auth.c), or NULL */
    const char *user;                   /* the end user (a JWT claim, else the body's "user") */
    const char *model;                  /* the client's model */
    bool stream;                        /* the client asked for a stream */
    int64_t thinking_budget;            /* /v1/messages' thinking.budget_tokens, -1: none */
    bool responses_native; /* /v1/responses passed through as it came (an OpenAI backend) */
    bool client_usage;     /* ... with stream_options.include_usage */

    /* routing */
    struct dp_table *table;
    const struct kw_route *route;
    const struct kw_backend_ref *ref;
    const struct kw_backend *backend;
    const struct dp_provider_ops *provider;
    const char *upstream_model;
    const char *base_url; /* the chosen endpoint, without a trailing '/' */
    size_t base_len;
    int endpoint;                    /* its index in upstream.endpoints, -1 for baseURL */
    struct kw_node *up_json;         /* the body rewritten for the chosen backend */
    void *provider_state;            /* a provider's per-request state (arena) */
    bool *tried;                     /* backendRefs already tried (fallback) */
    struct dp_backend_state *bstate; /* the balancer's state of the running attempt */
    unsigned attempts;               /* upstream attempts started */
    int strategy;                    /* enum kw_lb_strategy in use */
    int64_t est_tokens;              /* this request's tokens, estimated (quota) */
    enum { DP_ATT_NONE, DP_ATT_RUNNING, DP_ATT_DONE } attempt;
    bool backoff;                  /* waiting before the next attempt */
    bool idle_timeout;             /* the stream's upstream went quiet (streamIdleTimeout) */
    bool attempt_cancelled;        /* the running attempt was stopped (the client left, shutdown) */
    int64_t retry_after_ms;        /* the attempt's Retry-After / retry-after-ms, -1 none */
    struct curl_slist *up_headers; /* built by the transform phase for the transfer */
    struct dp_cont *cont;          /* mid-stream continuation state (continue.c), or NULL */
    const struct kw_backend *ep_backend; /* the backend whose endpoints ep_tried marks */
    uint64_t ep_tried;                   /* its endpoints this request tried (the first 64) */

    /* upstream */
    struct dp_transfer up;
    struct kw_buf url;
    struct kw_buf up_body;           /* what we send */
    struct kw_buf up_resp;           /* a buffered response */
    const struct kw_node *resp_json; /* up_resp parsed by a provider that relays it (arena) */
    int64_t ttfb_ms, last_up_ms;
    struct dp_timer attempt_timer; /* retry backoff, then the stream's idle deadline */

    /* response to the client */
    struct MHD_Response *pending; /* queued at the next access-handler call */
    unsigned pending_status;
    struct dp_error err; /* the last error set (also the access log's "error") */
    unsigned status;     /* the status sent */
    struct kw_buf out;   /* stream bytes not yet taken by MHD */
    struct kw_buf stage; /* with a front: the provider's OpenAI chunks, before translation */
    size_t out_off;
    struct dp_sse sse;
    bool stream_end; /* no more bytes will be added to out */
    bool suspended;
    bool client_gone;
    bool saw_done;     /* the upstream sent data: [DONE] */
    bool watch_chunks; /* filters' on_chunk see the stream (filter.h) */
    bool cut;          /* a filter ended the stream (r->err says why) */
    bool commit;       /* a filter commits before the answer completes (the respond phase holds) */
    bool hold;         /* the answer is held: a response prepared, a stream's end, wait */
    bool end_held;     /* ... the stream's end is */
    bool ended;        /* the filters' on_end ran */
    enum MHD_RequestTerminationCode toe; /* how it ended (for on_end) */
    int64_t last_out_ms;
    struct dp_timer timer;       /* keep-alive */
    struct dp_timer watch_timer; /* starts watching the client's fd */
    struct dp_watch client_watch;
    bool client_watched;
    bool authenticated; /* filter_auth's: an API key or a token was verified */

    /* W3C trace context (filter_trace.c): "" until the trace filter ran */
    struct {
        char trace_id[33], span_id[17], parent_id[17];
        bool sampled;
        bool client_sampled; /* the client's flag, followed once it authenticated */
        bool decided;        /* sampled is final (the first attempt decided it) */
        const char *state;   /* the client's tracestate, or NULL */
        char attempt_id[17]; /* the running upstream attempt's span */
        int64_t attempt_start_ns;
    } trace;

    /* headers filters add to the client's response (x-ratelimit-*, Retry-After) */
    struct {
        const char *name, *value;
    } hdrs[DP_MAX_RESPONSE_HEADERS];
    unsigned nhdrs;

    /* accounting */
    struct dp_usage usage;
    void *fctx[DP_MAX_FILTERS]; /* each filter's per-request context (arena) */
};

/* libmicrohttpd's access and completion handlers (cls: the worker). */
enum MHD_Result dp_on_access(void *cls, struct MHD_Connection *conn, const char *url,
                             const char *method, const char *version, const char *upload_data,
                             size_t *upload_data_size, void **con_cls);
void dp_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                     enum MHD_RequestTerminationCode toe);

/* A forced stop: every active request of w is cancelled (libmicrohttpd then closes them). */
void dp_request_abort_all(struct dp_worker *w);

/* Parse and check the client's body in r->body (with a front: translate it first) into
 * r->json, r->model, r->stream. KW_OK, or KW_ERROR with r->err set (400/413). */
int dp_request_parse_body(struct dp_request *r);
/* Bind r to backendRef ref of its route: backend, provider, upstream model, the body
 * rewritten for it (params, stream usage). KW_OK, or KW_ERROR with r->err set. */
int dp_request_bind(struct dp_request *r, const struct kw_backend_ref *ref);
/* Keep the process's memory budget in step with r's buffers (call after they grow). */
void dp_request_account(struct dp_request *r);
/* Let r's arena hold what parsing extra bytes more needs (DP_ARENA_PER_BYTE each). */
void dp_request_arena_grow(struct dp_request *r, size_t extra);
/* A request header's value (case-insensitive name), or NULL. */
const char *dp_request_header(struct dp_request *r, const char *name);

/* Record an error for the client: returns KW_ERROR (so `return dp_error_set(...)` reads
 * as it does). Nothing is sent: the engine sends r->err when the phase fails. */
int dp_error_set(struct dp_request *r, unsigned status, const char *type, const char *code,
                 const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Add a header to whatever response r gets (copied; replaces one of the same name).
 * KW_OK or KW_ERROR (full, memory). */
int dp_request_add_header(struct dp_request *r, const char *name, const char *value);

/* What tokens cost at b's pricing, in nano-USD (0 without pricing). cached: of in. */
/* Nano-USD of a usage at b's prices; counts are clamped to 0..KW_MAX_USAGE_TOKENS and the
 * result saturates at KW_MAX_COST_NUSD. */
int64_t dp_cost_nano(const struct kw_backend *b, int64_t in, int64_t cached, int64_t out);
/* The output a request asks for at most (max_completion_tokens, else max_tokens; the fronts
 * map Anthropic's max_tokens and the Responses API's max_output_tokens there): its value,
 * 0 when it asks for none, -1 when the field is not an integer of 1..max (the route's
 * maxOutputTokens, else KW_MAX_OUTPUT_TOKENS); the field's name in *field then. */
/* An address as bytes for keying per-client state: 4 for IPv4 (and IPv4-mapped IPv6), the
 * /64 prefix (8 bytes) for IPv6; 0 when it is neither. */
size_t dp_addr_key(const struct sockaddr *sa, unsigned char out[16]);
/* The client's (dp_addr_key): the connection's peer, or, when the peer is one of DataPlane
 * spec.trustedProxies, the right-most X-Forwarded-For address that is not; 0 when unknown. */
size_t dp_request_client_addr(struct dp_request *r, unsigned char out[16]);
int64_t dp_request_max_output(const struct dp_request *r, int64_t max, const char **field);
/* Clamps every count of r->usage to 0..KW_MAX_USAGE_TOKENS (an upstream's numbers are
 * input like any other), before anything adds them up. */
void dp_request_usage_clamp(struct dp_request *r);

/* Record usage from an OpenAI-shaped "usage" object. */
void dp_request_usage(struct dp_request *r, const struct kw_node *usage);

#endif
