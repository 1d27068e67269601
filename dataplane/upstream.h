/* knoway data plane: the transport - upstream HTTP transfers on the worker's libcurl multi
 * handle. It starts, pauses, resumes and stops transfers and reports what happened through
 * the caller's callbacks; it never routes, retries or writes a client response.
 *
 *   dp_transfer_start -> on_header* (each response header) -> on_headers (status known)
 *                     -> on_body* (bytes; may ask for a pause) -> on_done (once, with
 *                        t->error: DP_UPERR_NONE when the response arrived whole)
 * dp_transfer_stop cancels at any point; on_done is not called after it. */
#ifndef DP_UPSTREAM_H
#define DP_UPSTREAM_H

#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct dp_worker;
struct dp_transfer;

enum dp_upstream_error {
    DP_UPERR_NONE,
    DP_UPERR_CONNECT,
    DP_UPERR_TIMEOUT,
    DP_UPERR_RESET,
    DP_UPERR_OTHER
};

/* on_body's answer asking for the bytes again after dp_transfer_resume. */
#define DP_TRANSFER_PAUSE CURL_WRITEFUNC_PAUSE

struct dp_transfer_ops {
    /* One response header line, name and value trimmed (optional). */
    void (*on_header)(struct dp_transfer *t, const char *name, size_t nlen, const char *value,
                      size_t vlen);
    /* The final status line and its headers arrived (t->status >= 200). KW_OK, or
     * KW_ERROR to fail the transfer (with t->write_err saying why). */
    int (*on_headers)(struct dp_transfer *t);
    /* Body bytes: n when taken, DP_TRANSFER_PAUSE, or 0 to fail the transfer (with
     * t->write_err saying why). */
    size_t (*on_body)(struct dp_transfer *t, const char *data, size_t n);
    /* The transfer ended: t->error and t->errmsg tell how. */
    void (*on_done)(struct dp_transfer *t);
};

/* What to send. url, body and ca are copied or must outlive the transfer; headers is taken
 * over (freed by the transfer). */
struct dp_transfer_req {
    const char *url;
    struct curl_slist *headers;
    const char *body;
    size_t len;
    bool http2;
    bool insecure; /* skip TLS verification */
    const void *ca;
    size_t ca_len;
    int64_t timeout_ms, connect_timeout_ms;
    size_t buffer_size;
};

struct dp_transfer {
    struct dp_worker *w;
    const struct dp_transfer_ops *ops;
    void *ud; /* the caller's */
    CURL *easy;
    struct curl_slist *headers;
    long status;
    char ctype[128];
    char retry_after[32];
    char amzn_errortype[64]; /* x-amzn-errortype (AWS), "" when absent */
    bool headers_done, done, paused, http2;
    int64_t start_ms, ttfb_ms; /* ttfb_ms: status line to start, -1 before */
    enum dp_upstream_error error;
    char errmsg[CURL_ERROR_SIZE];    /* curl's error buffer */
    char write_err[CURL_ERROR_SIZE]; /* why on_body refused bytes */
};

/* Create w's multi handle, driven by w's loop through watches and a timer (main thread,
 * before the worker runs). KW_OK or KW_ERROR. Cleanup after the worker stopped. */
int dp_upstream_init(struct dp_worker *w);
void dp_upstream_cleanup(struct dp_worker *w);

/* Start t (zeroed or stopped). KW_OK, or KW_ERROR (out of memory; t is stopped and
 * req->headers freed). */
int dp_transfer_start(struct dp_transfer *t, struct dp_worker *w, const struct dp_transfer_req *req,
                      const struct dp_transfer_ops *ops, void *ud);
/* Cancel and free t's transfer, if any (the upstream sees the connection close). */
void dp_transfer_stop(struct dp_transfer *t);
/* Deliver paused bytes again (may call on_body re-entrantly). */
void dp_transfer_resume(struct dp_transfer *t);
static inline bool dp_transfer_running(const struct dp_transfer *t)
{
    return t->easy != NULL;
}

/* libcurl's header callback (exported for the fuzzer): one header line of t. */
size_t dp_transfer_on_header(char *buf, size_t size, size_t nitems, void *ud);

#endif
