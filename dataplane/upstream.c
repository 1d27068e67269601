/* Upstream transfers: one libcurl multi handle per worker, driven by the worker's epoll
 * through CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION and curl_multi_socket_action. HTTP/1.1
 * with keep-alive pools per worker (the multi's connection cache).
 *
 * A stream's bytes go: curl write callback -> SSE parser -> provider on_event -> r->out ->
 * MHD reader. When r->out is above the high-water mark the write callback returns
 * CURL_WRITEFUNC_PAUSE (curl keeps those bytes and delivers them again on unpause); the
 * reader unpauses below the low-water mark, so a slow client holds at most about
 * high-water + one event in memory. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>

#include "dp.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/snapshot.h"
#include "server.h"

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    struct dp_worker *w = userp;
    struct dp_watch *watch = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (watch != NULL) {
            /* an event for this socket may still be waiting in the current epoll batch:
             * the watch is freed after the batch, not now */
            dp_worker_unwatch(w, watch);
            curl_multi_assign(w->multi, s, NULL);
            watch->retired = true;
            watch->next = w->retired;
            w->retired = watch;
        }
        return 0;
    }
    uint32_t events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (watch == NULL) {
        watch = calloc(1, sizeof(*watch));
        if (watch == NULL)
            return -1;
        watch->kind = DP_WATCH_CURL;
        watch->fd = s;
        curl_multi_assign(w->multi, s, watch);
        return dp_worker_watch(w, watch, events, true) == KW_OK ? 0 : -1;
    }
    return dp_worker_watch(w, watch, events, false) == KW_OK ? 0 : -1;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct dp_worker *w = userp;
    w->curl_due_ms = timeout_ms < 0 ? -1 : dp_now_ms() + timeout_ms;
    return 0;
}

int dp_upstream_init(struct dp_worker *w)
{
    w->multi = curl_multi_init();
    if (w->multi == NULL)
        return KW_ERROR;
    w->curl_due_ms = -1;
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 4096L); /* keep-alive pool size */
    return KW_OK;
}

/* ---- callbacks ------------------------------------------------------------------------------ */

size_t dp_upstream_on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    struct dp_request *r = ud;
    size_t n = size * nitems;
    if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) { /* a new status line (1xx before) */
        r->up_ctype[0] = r->retry_after[0] = '\0';
        return n;
    }
    if (n <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &r->up_status);
        if (r->up_status < 200)
            return n;
        r->up_headers_done = true;
        r->ttfb_ms = dp_now_ms() - r->start_ms;
        const char *want =
            r->provider->stream_ctype != NULL ? r->provider->stream_ctype : "text/event-stream";
        if (r->stream && r->up_status == 200 && strncasecmp(r->up_ctype, want, strlen(want)) == 0)
            dp_request_begin_stream(r);
        return n;
    }
    const char *colon = memchr(buf, ':', n);
    if (colon == NULL)
        return n;
    size_t nlen = (size_t)(colon - buf);
    const char *v = colon + 1;
    size_t vlen = n - nlen - 1;
    while (vlen > 0 && (*v == ' ' || *v == '\t'))
        v++, vlen--;
    while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
        vlen--;
    char *dst = NULL;
    size_t cap = 0;
    if (nlen == 12 && strncasecmp(buf, "content-type", 12) == 0)
        dst = r->up_ctype, cap = sizeof(r->up_ctype);
    else if (nlen == 11 && strncasecmp(buf, "retry-after", 11) == 0)
        dst = r->retry_after, cap = sizeof(r->retry_after);
    if (dst != NULL) {
        size_t k = vlen < cap - 1 ? vlen : cap - 1;
        memcpy(dst, v, k);
        dst[k] = '\0';
    }
    return n;
}

static int on_sse_event(void *ud, const char *raw, size_t raw_len, const char *event,
                        const char *data, size_t data_len, bool has_data)
{
    struct dp_request *r = ud;
    if (!has_data)
        return KW_OK; /* upstream comments: the gateway sends its own keep-alives */
    return r->provider->on_event(r, raw, raw_len, event, data, data_len, dp_stream_sink(r));
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct dp_request *r = ud;
    size_t n = size * nmemb;
    r->last_up_ms = dp_now_ms();
    if (r->state != DP_ST_STREAM) {
        if (kw_buf_append(&r->up_resp, ptr, n) != KW_OK) {
            snprintf(r->write_err, sizeof(r->write_err), "upstream response larger than %u bytes",
                     DP_MAX_UPSTREAM_RESPONSE);
            return 0;
        }
        dp_request_account(r);
        return n;
    }
    if (r->client_gone)
        return 0;
    if (r->out.len - r->out_off >= DP_STREAM_HIGH_WATER) {
        if (!r->backend->upstream.http2) {
            r->paused = true;
            return CURL_WRITEFUNC_PAUSE; /* redelivered on unpause */
        }
        /* libcurl 7.88 pauses HTTP/2 streams unreliably: buffer up to a bound instead */
        if (r->out.len - r->out_off >= DP_H2_STREAM_BUFFER) {
            snprintf(r->write_err, sizeof(r->write_err),
                     "the client reads too slowly (%u bytes waiting)", DP_H2_STREAM_BUFFER);
            return 0;
        }
    }
    size_t before = r->out.len;
    if ((r->provider->feed != NULL ? r->provider->feed(r, ptr, n, dp_stream_sink(r))
                                   : dp_sse_feed(&r->sse, ptr, n, on_sse_event, r)) != KW_OK ||
        dp_front_flush(r) != KW_OK) {
        if (r->write_err[0] == '\0')
            snprintf(r->write_err, sizeof(r->write_err),
                     "upstream stream event too large or invalid");
        return 0;
    }
    if (r->out.len != before) {
        r->last_out_ms = r->last_up_ms;
        dp_request_wake(r);
    }
    dp_request_account(r);
    return n;
}

void dp_upstream_drained(struct dp_request *r)
{
    if (r->paused && r->easy != NULL && r->out.len - r->out_off < DP_STREAM_LOW_WATER) {
        r->paused = false;
        curl_easy_pause(r->easy, CURLPAUSE_CONT);
    }
}

/* ---- start and stop ----------------------------------------------------------------------------
 */

static void setup_tls(struct dp_request *r)
{
    const struct kw_backend *b = r->backend;
    if (b->upstream.tls.insecure_skip_verify) {
        curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 0L);
        return;
    }
    curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(r->easy, CURLOPT_SSL_VERIFYHOST, 2L);
    const struct kw_secret_ref *ca = &b->upstream.tls.ca_secret_ref;
    if (ca->name != NULL) {
        const struct kw_credential *c =
            kw_snapshot_credential(r->table->snap, b->meta.ns, ca->name, ca->key);
        if (c != NULL) {
            struct curl_blob blob = {
                .data = (void *)c->value, .len = c->len, .flags = CURL_BLOB_COPY};
            curl_easy_setopt(r->easy, CURLOPT_CAINFO_BLOB, &blob);
        }
    }
}

int dp_upstream_start(struct dp_request *r)
{
    struct kw_buf url;
    kw_buf_init(&url, 8192);
    kw_buf_reset(&r->up_body);
    r->up_headers = NULL;
    if (r->provider->build(r, &url, &r->up_headers) != KW_OK) {
        kw_buf_cleanup(&url);
        curl_slist_free_all(r->up_headers);
        r->up_headers = NULL;
        if (r->pending == NULL)
            dp_request_fail(r, 500, "server_error", NULL, NULL,
                            "cannot build the upstream request");
        return KW_ERROR;
    }
    dp_request_account(r); /* the upstream body */
    char rid[64];
    snprintf(rid, sizeof(rid), "x-request-id: %s", r->id);
    struct curl_slist *h = curl_slist_append(r->up_headers, "Expect:");
    h = h != NULL ? curl_slist_append(h, rid) : NULL;
    r->easy = h != NULL ? dp_worker_easy(r->w) : NULL;
    if (r->easy == NULL) {
        kw_buf_cleanup(&url);
        curl_slist_free_all(h != NULL ? h : r->up_headers);
        r->up_headers = NULL;
        dp_request_fail(r, 500, "server_error", NULL, NULL, "out of memory");
        return KW_ERROR;
    }
    r->up_headers = h;
    r->up_status = 0;
    r->up_headers_done = r->up_done = r->paused = false;
    r->up_error = DP_UPERR_NONE;
    r->up_errmsg[0] = r->write_err[0] = '\0';
    kw_buf_reset(&r->up_resp);
    int64_t timeout = r->route->timeout_ms;
    if (r->backend->upstream.timeout_ms > 0 && r->backend->upstream.timeout_ms < timeout)
        timeout = r->backend->upstream.timeout_ms;
    CURL *e = r->easy;
    curl_easy_setopt(e, CURLOPT_URL, url.data);
    curl_easy_setopt(e, CURLOPT_PRIVATE, r);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    long version = CURL_HTTP_VERSION_1_1;
    if (r->backend->upstream.http2) /* h2c with prior knowledge, or ALPN over TLS */
        version = strncmp(url.data, "https:", 6) == 0 ? CURL_HTTP_VERSION_2TLS
                                                      : CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, version);
    /* libcurl 7.88.1 fails the next request on a reused prior-knowledge HTTP/2 connection
     * ("Error in the HTTP2 framing layer"): HTTP/2 transfers get a connection each */
    if (r->backend->upstream.http2)
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->up_body.data);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->up_body.len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->up_headers);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, dp_upstream_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, r);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, r->up_errmsg);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)r->backend->upstream.connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)timeout);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE,
                     (long)(r->stream ? DP_CURL_STREAM_BUFFER : DP_CURL_BUFFER));
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    setup_tls(r);
    kw_buf_cleanup(&url);
    if (curl_multi_add_handle(r->w->multi, e) != CURLM_OK) {
        dp_upstream_stop(r);
        dp_request_fail(r, 500, "server_error", NULL, NULL, "cannot start the upstream transfer");
        return KW_ERROR;
    }
    return KW_OK;
}

void dp_upstream_stop(struct dp_request *r)
{
    if (r->easy != NULL) {
        /* a live transfer's connection is closed: the upstream sees the cancel */
        curl_multi_remove_handle(r->w->multi, r->easy);
        dp_worker_easy_done(r->w, r->easy);
        r->easy = NULL;
    }
    curl_slist_free_all(r->up_headers);
    r->up_headers = NULL;
}

/* ---- completion
 * ---------------------------------------------------------------------------------- */

static enum dp_upstream_error classify(CURLcode rc)
{
    switch (rc) {
    case CURLE_OK:
        return DP_UPERR_NONE;
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
        return DP_UPERR_CONNECT;
    case CURLE_OPERATION_TIMEDOUT:
        return DP_UPERR_TIMEOUT;
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return DP_UPERR_RESET;
    default:
        return DP_UPERR_OTHER;
    }
}

/* An OpenAI error body in r->up_resp rewritten into the front's shape. False when it has
 * no message (the caller wraps it like any other body). */
static bool front_error(struct dp_request *r)
{
    struct kw_node *root;
    char err[128];
    dp_request_arena_grow(r, r->up_resp.len);
    if (kw_json_parse(r->arena, r->up_resp.data, r->up_resp.len, &root, err, sizeof(err)) != KW_OK)
        return false;
    const struct kw_node *e = kw_node_get(root, "error");
    const struct kw_node *msg =
        e != NULL && e->type == KW_NODE_STRING ? e : kw_node_get(e, "message");
    if (msg == NULL || msg->type != KW_NODE_STRING)
        return false;
    struct kw_buf b;
    kw_buf_init(&b, DP_MAX_UPSTREAM_RESPONSE);
    bool ok = r->front->error_body(r, (unsigned)r->up_status, msg->str, msg->len, &b) == KW_OK;
    if (ok) {
        kw_buf_reset(&r->up_resp);
        ok = kw_buf_append(&r->up_resp, b.data, b.len) == KW_OK;
    }
    kw_buf_cleanup(&b);
    return ok;
}

/* An upstream error response relayed: its status and body when it is an OpenAI-style
 * error (in the front's shape for a front), else wrapped into one. */
static void relay_error(struct dp_request *r)
{
    dp_request_arena_grow(r, r->up_resp.len);
    if (r->provider->on_error != NULL) {
        struct kw_buf mapped;
        kw_buf_init(&mapped, DP_MAX_UPSTREAM_RESPONSE);
        if (r->provider->on_error(r, r->up_status, r->up_resp.data != NULL ? r->up_resp.data : "",
                                  r->up_resp.len, &mapped) == KW_OK &&
            mapped.len > 0) {
            kw_buf_reset(&r->up_resp);
            kw_buf_append(&r->up_resp, mapped.data, mapped.len);
        }
        kw_buf_cleanup(&mapped);
    }
    const char *body = r->up_resp.data != NULL ? r->up_resp.data : "";
    bool json = r->up_resp.len > 0 && body[0] == '{' && strstr(body, "\"error\"") != NULL;
    if (json && r->front != NULL)
        json = front_error(r);
    struct MHD_Response *resp;
    if (json) {
        resp =
            MHD_create_response_from_buffer(r->up_resp.len, r->up_resp.data, MHD_RESPMEM_MUST_COPY);
    } else {
        dp_request_fail(r, (unsigned)r->up_status,
                        r->up_status == 429   ? "rate_limit_exceeded"
                        : r->up_status >= 500 ? "server_error"
                                              : "invalid_request_error",
                        "upstream_error", NULL, "upstream answered %ld: %.200s", r->up_status,
                        body);
        r->fail_msg = NULL; /* an upstream's body is the client's to see, not the log's: it
                               may echo what was sent, credentials included */
        resp = r->pending;
        r->pending = NULL;
    }
    if (resp == NULL)
        return;
    if (json) {
        MHD_add_response_header(resp, "Content-Type", "application/json");
        dp_request_headers(r, resp);
    }
    if (r->retry_after[0] != '\0')
        MHD_add_response_header(resp, "Retry-After", r->retry_after);
    r->pending = resp;
    r->pending_status = (unsigned)r->up_status;
    dp_request_wake(r);
}

static void relay_body(struct dp_request *r)
{
    dp_request_arena_grow(r, r->up_resp.len); /* in flight: never refused for memory */
    struct kw_buf translated;
    kw_buf_init(&translated, DP_MAX_UPSTREAM_RESPONSE);
    if (r->provider->on_response(r, r->up_resp.data != NULL ? r->up_resp.data : "", r->up_resp.len,
                                 &translated) != KW_OK) {
        kw_buf_cleanup(&translated);
        dp_request_fail(r, 502, "server_error", "upstream_invalid_response", NULL,
                        "the upstream's response could not be translated");
        return;
    }
    struct kw_buf *src = translated.len > 0 ? &translated : &r->up_resp;
    struct kw_buf fronted;
    kw_buf_init(&fronted, DP_MAX_UPSTREAM_RESPONSE);
    if (r->front != NULL) {
        if (r->front->response(r, src->data != NULL ? src->data : "", src->len, &fronted) !=
            KW_OK) {
            kw_buf_cleanup(&translated);
            kw_buf_cleanup(&fronted);
            dp_request_fail(r, 502, "server_error", "upstream_invalid_response", NULL,
                            "the upstream's response could not be translated");
            return;
        }
        src = &fronted;
    }
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        src->len, src->data != NULL ? src->data : (char *)"", MHD_RESPMEM_MUST_COPY);
    kw_buf_cleanup(&translated);
    kw_buf_cleanup(&fronted);
    if (resp == NULL) {
        dp_request_fail(r, 500, "server_error", NULL, NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type",
                            r->up_ctype[0] != '\0' && r->front == NULL ? r->up_ctype
                                                                       : "application/json");
    dp_request_headers(r, resp);
    r->pending = resp;
    r->pending_status = (unsigned)r->up_status;
    dp_request_wake(r);
}

/* Try the next backend (fallback by priority) after a failure before any byte reached the
 * client. True when a new transfer started. */
static bool fallback(struct dp_request *r)
{
    if (r->state == DP_ST_STREAM || r->client_gone)
        return false;
    int rc = dp_request_choose(r, r->tried);
    if (rc == KW_DECLINED)
        return false;
    if (rc == KW_OK && dp_upstream_start(r) == KW_OK) {
        kw_log(KW_LOG_WARN, "upstream failed, trying the next backend", "request_id", r->id,
               "backend", r->backend->meta.name, NULL);
        return true;
    }
    return true; /* a failure response is prepared */
}

static void finish(struct dp_request *r, CURLcode rc)
{
    r->up_done = true;
    r->up_error = classify(rc);
    if (rc == CURLE_WRITE_ERROR && r->write_err[0] != '\0') {
        r->up_error = DP_UPERR_OTHER;
        snprintf(r->up_errmsg, sizeof(r->up_errmsg), "%s", r->write_err);
    }
    if (r->up_error != DP_UPERR_NONE) {
        if (r->up_errmsg[0] == '\0')
            snprintf(r->up_errmsg, sizeof(r->up_errmsg), "%s", curl_easy_strerror(rc));
        atomic_fetch_add_explicit(&r->w->stats.upstream_errors[r->up_error - 1], 1,
                                  memory_order_relaxed);
    }
    dp_upstream_stop(r);
    if (r->state == DP_ST_STREAM) {
        if (r->provider->feed == NULL)
            dp_sse_finish(&r->sse, on_sse_event, r);
        if (r->up_error == DP_UPERR_NONE && r->provider->on_stream_end != NULL)
            r->provider->on_stream_end(r, dp_stream_sink(r));
        dp_front_flush(r);
        if (r->up_error == DP_UPERR_NONE && r->front != NULL)
            r->front->stream_end(r, &r->out);
        if (r->up_error != DP_UPERR_NONE)
            /* the gateway's own reasons (a bad frame, a too slow client) are the client's
             * to know; curl's text (addresses) stays in the log */
            dp_request_stream_error(
                r, r->up_error == DP_UPERR_TIMEOUT ? "upstream_timeout" : "upstream_error",
                "the upstream failed after the response started%s%s (request id %s)",
                r->write_err[0] != '\0' ? ": " : "", r->write_err, r->id);
        r->stream_end = true;
        dp_request_wake(r);
        return;
    }
    bool retryable = r->up_error == DP_UPERR_CONNECT ||
                     (r->up_error == DP_UPERR_RESET && !r->up_headers_done) ||
                     (r->up_error == DP_UPERR_NONE && r->up_status >= 500);
    if (retryable && fallback(r))
        return;
    /* the client learns what kind of failure it was and the request id; backend names,
     * addresses and curl's text go to the access log only (upstream_error, backend) */
    switch (r->up_error) {
    case DP_UPERR_CONNECT:
    case DP_UPERR_RESET:
        dp_request_fail(r, 502, "server_error", "upstream_unavailable", NULL,
                        "the upstream service is unavailable (request id %s)", r->id);
        return;
    case DP_UPERR_TIMEOUT:
        dp_request_fail(r, 504, "server_error", "upstream_timeout", NULL,
                        "the upstream service timed out (request id %s)", r->id);
        return;
    case DP_UPERR_OTHER:
        dp_request_fail(r, 502, "server_error", "upstream_error", NULL,
                        "the upstream service failed (request id %s)", r->id);
        return;
    case DP_UPERR_NONE:
        break;
    }
    if (r->up_status >= 200 && r->up_status < 300)
        relay_body(r);
    else
        relay_error(r);
}

void dp_upstream_poll(struct dp_worker *w)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct dp_request *r = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&r);
        if (r != NULL)
            finish(r, msg->data.result);
    }
}
