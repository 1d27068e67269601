/* knoway data plane: the types shared by the worker loop, the request phases, the
 * upstream client and the providers.
 *
 * Threading: a request lives on one worker from accept to log line. Everything in
 * struct dp_worker and struct dp_request is touched only by that worker's thread, except
 * the fields marked "atomic" (read by the admin thread, written by the main thread). */
#ifndef DP_DP_H
#define DP_DP_H

#include <curl/curl.h>
#include <microhttpd.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/heap.h"
#include "knoway/node.h"
#include "router.h"
#include "sse.h"

/* ---- limits (STYLE.md: every buffer has a maximum, named here) ----------------------- */
#define DP_MAX_UPSTREAM_RESPONSE (64u * 1024 * 1024) /* a buffered (non-stream) response */
#define DP_MAX_SSE_EVENT         (4u * 1024 * 1024)  /* one upstream SSE event */
#define DP_STREAM_HIGH_WATER     (64u * 1024)        /* client buffer that pauses the upstream */
#define DP_STREAM_LOW_WATER      (16u * 1024)        /* ... and resumes it */
#define DP_MAX_STREAM_BUFFER     (DP_STREAM_HIGH_WATER + DP_MAX_SSE_EVENT)
#define DP_H2_STREAM_BUFFER      (1024u * 1024) /* HTTP/2 streams: no pause, this much at most */
#define DP_KEEPALIVE_MS          15000
#define DP_CONN_MEMORY           (8u * 1024)  /* MHD pool per connection: headers too */
#define DP_CURL_BUFFER           (16u * 1024) /* receive buffer of a buffered transfer */
#define DP_CURL_STREAM_BUFFER    (2u * 1024)  /* ... of a stream: small events, held long */
/* A request's arena may hold DP_ARENA_BASE plus DP_ARENA_PER_BYTE times the bytes it parses
 * (its body, then a buffered response): a JSON tree costs a few times its text, a
 * pathological one (an array of a million 1-byte numbers) ~40x and is refused with 413. */
#define DP_ARENA_BASE        (1024u * 1024)
#define DP_ARENA_PER_BYTE    16u
#define DP_WATCH_AFTER_MS    20    /* a request waiting this long gets its client fd watched */
#define DP_POOL_MAX          256   /* idle arenas and curl handles kept per worker */
#define DP_TRIM_EVERY_MS     2000  /* the main thread returns freed memory after bursts */
#define DP_ADMIN_CONNECTIONS 1024u /* the admin listener's connections ... */
#define DP_ADMIN_PER_IP      16u   /* ... and of them from one client address */
#define DP_TRIM_AFTER_BYTES  (16ll * 1024 * 1024)

/* ---- timers: a min-heap per worker ------------------------------------------------------ */
struct dp_timer;
typedef void (*dp_timer_fn)(struct dp_timer *t);
struct dp_timer {
    struct kw_heap_node node; /* key: the deadline in dp_now_ms() milliseconds */
    dp_timer_fn on_fire;
};

/* ---- epoll registrations ------------------------------------------------------------------ */
enum dp_watch_kind { DP_WATCH_MHD, DP_WATCH_CURL, DP_WATCH_CLIENT, DP_WATCH_EVENT };
struct dp_watch {
    enum dp_watch_kind kind;
    int fd;
    void *ptr;             /* DP_WATCH_CLIENT: the request */
    bool retired;          /* curl dropped the socket: ignore events still queued for it */
    struct dp_watch *next; /* the worker's retired list, freed after each epoll batch */
};

/* ---- metrics: per worker, written by it, read by the admin thread ------------------------ */
#define DP_STATUS_SLOTS 600
struct dp_stats {
    atomic_uint_fast64_t requests_by_status[DP_STATUS_SLOTS];
    atomic_uint_fast64_t upstream_errors[4]; /* connect, timeout, reset, other */
    atomic_uint_fast64_t tokens_prompt, tokens_completion, tokens_cached;
    atomic_uint_fast64_t streams_cancelled;
    atomic_int_fast64_t active_requests, active_streams, open_connections;
};

/* ---- the worker ---------------------------------------------------------------------------- */
struct dp_server;

struct dp_worker {
    unsigned index;
    struct dp_server *server;
    int ep;       /* epoll */
    int event_fd; /* messages from the main thread */
    int listen_fd;
    unsigned conn_limit; /* libmicrohttpd's connection limit for this worker */
    bool limit_wake;     /* reached it: keep waking until a run starts below it */
    bool accept_stalled; /* libmicrohttpd hit EMFILE and stopped accepting until one of its
                            connections closes: accept ourselves meanwhile (worker.c) */
    struct MHD_Daemon *mhd;
    struct dp_watch mhd_watch, event_watch;
    CURLM *multi;
    int64_t curl_due_ms; /* -1: no curl timeout pending */
    struct kw_heap timers;
    struct dp_table *table;          /* the table new requests pin */
    _Atomic(struct dp_table *) next; /* atomic: a table posted by the main thread */
    atomic_bool drain, stop;         /* atomic: posted by the main thread */
    atomic_uint_fast64_t pong;       /* atomic: the last watchdog ping this loop saw */
    bool draining;
    uint64_t next_id;
    uint32_t rnd;
    struct dp_stats stats;
    struct kw_buf logbuf;
    struct kw_arena *scratch;    /* reset per stream event */
    struct dp_request *requests; /* active, for a forced shutdown */
    struct dp_watch *retired;    /* curl socket watches to free after this epoll batch */
    struct kw_arena *arena_pool[DP_POOL_MAX]; /* reset arenas for new requests */
    size_t narena_pool;
    CURL *easy_pool[DP_POOL_MAX]; /* easy handles for new transfers */
    size_t neasy_pool;
};

/* ---- the request ----------------------------------------------------------------------------- */
enum dp_api { DP_API_NONE, DP_API_CHAT, DP_API_COMPLETIONS, DP_API_EMBEDDINGS, DP_API_MODELS };

enum dp_state {
    DP_ST_BODY,     /* reading the client's body */
    DP_ST_UPSTREAM, /* waiting for the upstream's response headers or body */
    DP_ST_STREAM,   /* relaying a stream */
    DP_ST_DONE,     /* a response is queued */
};

enum dp_upstream_error {
    DP_UPERR_NONE,
    DP_UPERR_CONNECT,
    DP_UPERR_TIMEOUT,
    DP_UPERR_RESET,
    DP_UPERR_OTHER
};

struct dp_provider_ops;
struct dp_front_ops;
struct dp_conn;

struct dp_request {
    struct dp_worker *w;
    struct MHD_Connection *conn;
    struct kw_arena *arena;
    char id[40];
    enum dp_api api;
    const struct dp_front_ops *front; /* the client's API when not OpenAI's (NULL) */
    void *front_state;                /* its per-request state (arena) */
    const char *path;
    const char *method;
    int64_t start_ms;
    struct dp_conn *conn_ctx; /* its connection's read deadline (worker.c) */
    enum dp_state state;
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
    const char *model;    /* the client's model */
    bool stream;          /* the client asked for a stream */
    bool client_usage;    /* ... with stream_options.include_usage */

    /* routing */
    struct dp_table *table;
    const struct kw_route *route;
    const struct kw_backend_ref *ref;
    const struct kw_backend *backend;
    const struct dp_provider_ops *provider;
    const char *upstream_model;
    struct kw_node *up_json; /* the body rewritten for the chosen backend */
    void *provider_state;    /* a provider's per-request state (arena) */
    bool *tried;             /* backendRefs already tried (fallback) */

    /* upstream transfer */
    CURL *easy;
    struct curl_slist *up_headers;
    struct kw_buf up_body; /* what we send */
    struct kw_buf up_resp; /* a buffered response */
    long up_status;
    char up_ctype[128];
    char retry_after[32];
    bool up_headers_done, up_done, paused;
    enum dp_upstream_error up_error;
    char up_errmsg[CURL_ERROR_SIZE]; /* curl's error buffer */
    char write_err[CURL_ERROR_SIZE]; /* why the write callback refused bytes (curl then
                                        writes its own, vaguer message into up_errmsg) */
    int64_t ttfb_ms, last_up_ms;

    /* response to the client */
    struct MHD_Response *pending; /* queued at the next access-handler call */
    unsigned pending_status;
    const char *fail_msg; /* the message of the last dp_request_fail (access log) */
    char fail_buf[512];   /* ... held here, not in the arena (which may be exhausted) */
    unsigned status;      /* the status sent */
    struct kw_buf out;    /* stream bytes not yet taken by MHD */
    struct kw_buf stage;  /* with a front: the provider's OpenAI chunks, before translation */
    size_t out_off;
    struct dp_sse sse;
    bool stream_end; /* no more bytes will be added to out */
    bool suspended;
    bool client_gone;
    bool saw_done; /* the upstream sent data: [DONE] */
    int64_t last_out_ms;
    struct dp_timer timer;       /* keep-alive and stream-idle deadline */
    struct dp_timer watch_timer; /* starts watching the client's fd */
    struct dp_watch client_watch;
    bool client_watched;

    /* accounting */
    bool have_usage;
    int64_t prompt_tokens, completion_tokens, cached_tokens;
};

/* ---- providers (STYLE.md: a table of callbacks; a provider is a file and an entry) ------- */
struct dp_provider_ops {
    const char *name;
    /* Build the upstream URL (into url), headers (appended to *headers) and body (into
     * r->up_body) from the parsed, rewritten client request in r->json. KW_OK or KW_ERROR
     * with an error response already prepared (dp_request_fail). */
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
     * KW_ERROR with a 400 prepared. */
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

/* Where a provider writes stream output: r->out, or r->stage with a front. */
struct kw_buf *dp_stream_sink(struct dp_request *r);
/* With a front: translate what r->stage holds into r->out. KW_OK or KW_ERROR. */
int dp_front_flush(struct dp_request *r);

/* The provider that serves a backend. */
const struct dp_provider_ops *dp_provider_for(const struct kw_backend *b);
extern const struct dp_provider_ops dp_provider_openai;
extern const struct dp_provider_ops dp_provider_azure;
extern const struct dp_provider_ops dp_provider_anthropic;
extern const struct dp_provider_ops dp_provider_bedrock;
extern const struct dp_provider_ops dp_provider_gemini;

/* Shared by the OpenAI-shaped providers (provider_openai.c). */
int dp_openai_add_header(struct curl_slist **list, struct kw_arena *a, const char *name,
                         const char *value);
/* The base URL (baseURL, or one of the endpoints by weight); *len excludes trailing '/'. */
const char *dp_openai_pick_base(struct dp_request *r, size_t *len);
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

/* ---- worker API (worker.c) ------------------------------------------------------------------ */
int64_t dp_now_ms(void);
void dp_timer_arm(struct dp_worker *w, struct dp_timer *t, int64_t due_ms);
void dp_timer_cancel(struct dp_worker *w, struct dp_timer *t);
int dp_worker_watch(struct dp_worker *w, struct dp_watch *watch, uint32_t events, bool add);
void dp_worker_unwatch(struct dp_worker *w, struct dp_watch *watch);
/* The worker's list of active requests (forced shutdown aborts them). */
void dp_worker_track(struct dp_worker *w, struct dp_request *r);
void dp_worker_untrack(struct dp_worker *w, struct dp_request *r);

/* The read deadline of a client connection (limits.readTimeout): headers and body must
 * arrive within it, counted from the connection's start or its previous request's end.
 * Past it, a request still reading its body gets a 408 and the connection is closed; a
 * connection still sending headers (or idle) is closed. */
void dp_conn_request_started(struct MHD_Connection *conn, struct dp_request *r);
void dp_conn_body_done(struct dp_request *r);
void dp_conn_request_done(struct dp_request *r);

/* Per-worker pools: an arena (reset) or a curl handle for reuse; NULL when empty. */
struct kw_arena *dp_worker_arena(struct dp_worker *w);
void dp_worker_arena_done(struct dp_worker *w, struct kw_arena *a);
CURL *dp_worker_easy(struct dp_worker *w);
void dp_worker_easy_done(struct dp_worker *w, CURL *e);

/* ---- request API (request.c) ------------------------------------------------------------------
 */
enum MHD_Result dp_on_access(void *cls, struct MHD_Connection *conn, const char *url,
                             const char *method, const char *version, const char *upload_data,
                             size_t *upload_data_size, void **con_cls);
void dp_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                     enum MHD_RequestTerminationCode toe);
/* Prepare an OpenAI-style error response (sent at the next access-handler call) and wake
 * the connection. param and code may be NULL. */
void dp_request_fail(struct dp_request *r, unsigned status, const char *type, const char *code,
                     const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* Resume a suspended connection (no-op otherwise). */
void dp_request_wake(struct dp_request *r);
/* The client went away (RDHUP on its socket). */
void dp_request_client_gone(struct dp_request *r);
/* The headers every response carries (x-request-id, ...). */
void dp_request_headers(struct dp_request *r, struct MHD_Response *resp);
/* Start relaying a stream: a 200 text/event-stream response is queued. */
void dp_request_begin_stream(struct dp_request *r);
/* Append bytes for the client and wake its connection. KW_OK or KW_ERROR (limit). */
int dp_request_emit(struct dp_request *r, const char *data, size_t len);
/* End a started stream with an OpenAI-style error event. */
void dp_request_stream_error(struct dp_request *r, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Parse and check the client's body in r->body (with a front: translate it first) into
 * r->json, r->model, r->stream. KW_OK, or KW_ERROR with a 400/413 prepared. */
int dp_request_parse_body(struct dp_request *r);
/* Pick the next backend among refs not yet tried and rewrite the body for it. KW_OK,
 * KW_DECLINED when none is left, KW_ERROR with a failure prepared. */
int dp_request_choose(struct dp_request *r, bool *tried);
/* Keep the process's memory budget in step with r's buffers (call after they grow). */
void dp_request_account(struct dp_request *r);
/* Let r's arena hold what parsing extra bytes more needs (DP_ARENA_PER_BYTE each). */
void dp_request_arena_grow(struct dp_request *r, size_t extra);
/* Record usage from an OpenAI-shaped "usage" object. */
void dp_request_usage(struct dp_request *r, const struct kw_node *usage);

/* ---- upstream API (upstream.c) -----------------------------------------------------------------
 */
/* Start the transfer for r (routing done). KW_OK, or KW_ERROR with a failure prepared. */
int dp_upstream_start(struct dp_request *r);
/* Stop and free r's transfer, if any (cancels it upstream). */
void dp_upstream_stop(struct dp_request *r);
/* Drive curl's multi handle: completed transfers. */
void dp_upstream_poll(struct dp_worker *w);
/* The client took bytes: resume a paused transfer when below the low-water mark. */
void dp_upstream_drained(struct dp_request *r);
/* Configure the multi handle's callbacks. */
int dp_upstream_init(struct dp_worker *w);
/* libcurl's header callback for r's transfer: one header line (exported for the fuzzer). */
size_t dp_upstream_on_header(char *buf, size_t size, size_t nitems, void *ud);

#endif
