/* Upstream transfers (upstream.h): one libcurl multi handle per worker, driven by the
 * worker's epoll through CURLMOPT_SOCKETFUNCTION / TIMERFUNCTION and
 * curl_multi_socket_action. HTTP/1.1 with keep-alive pools per worker (the multi's
 * connection cache).
 *
 * Backpressure: when on_body answers DP_TRANSFER_PAUSE the write callback returns
 * CURL_WRITEFUNC_PAUSE (curl keeps those bytes and delivers them again on unpause);
 * dp_transfer_resume unpauses. */
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "knoway/kw.h"
#include "upstream.h"
#include "worker.h"

static void poll_done(struct dp_worker *w);

/* Pooled connections keep their sockets registered: libcurl drops a socket from the loop
 * when its transfer ends (CURL_POLL_REMOVE) and asks for it again when the next transfer
 * reuses the connection, two epoll_ctl calls per request on a keep-alive pool. A removed
 * socket is parked instead (still registered, known by its fd); the next transfer on it
 * finds it registered (a MOD only if it wants other events). A parked socket that becomes
 * readable (the upstream closed the idle connection) is dropped from epoll then; libcurl
 * finds the connection dead when it next checks it. Sockets are closed through
 * CURLOPT_CLOSESOCKETFUNCTION, which forgets their watch (closing removes them from epoll),
 * so a number reused by a new socket is never mistaken for a parked one. */
static void unpark(struct dp_worker *w, struct dp_watch *watch)
{
    if (watch->fd >= 0 && (size_t)watch->fd < w->nparked && w->parked[watch->fd] == watch)
        w->parked[watch->fd] = NULL;
    watch->parked = false;
}

static bool park(struct dp_worker *w, struct dp_watch *watch)
{
    size_t fd = (size_t)watch->fd;
    if (watch->fd < 0 || (watch->events & EPOLLOUT) != 0)
        return false; /* writable at once: it would wake the loop for nothing */
    if (fd >= w->nparked) {
        size_t n = w->nparked != 0 ? w->nparked : 256;
        while (n <= fd)
            n *= 2;
        struct dp_watch **p = realloc(w->parked, n * sizeof(*p));
        if (p == NULL)
            return false;
        memset(p + w->nparked, 0, (n - w->nparked) * sizeof(*p));
        w->parked = p;
        w->nparked = n;
    }
    if (w->parked[fd] != NULL && w->parked[fd] != watch)
        dp_worker_retire(w, w->parked[fd]); /* not expected: a socket closed behind our back */
    w->parked[fd] = watch;
    watch->parked = true;
    return true;
}

static struct dp_watch *parked_at(struct dp_worker *w, curl_socket_t s)
{
    return s >= 0 && (size_t)s < w->nparked ? w->parked[s] : NULL;
}

static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *addr)
{
    (void)purpose;
    struct dp_worker *w = ud;
    curl_socket_t s = socket(addr->family, addr->socktype, addr->protocol);
    struct dp_watch *stale = s != CURL_SOCKET_BAD ? parked_at(w, s) : NULL;
    if (stale != NULL) { /* its socket was closed without us: the number is new */
        unpark(w, stale);
        dp_worker_forget(w, stale);
    }
    return s;
}

static int on_close_socket(void *ud, curl_socket_t s)
{
    struct dp_worker *w = ud;
    struct dp_watch *watch = parked_at(w, s);
    if (watch != NULL) {
        unpark(w, watch);
        dp_worker_forget(w, watch);
    }
    return close(s);
}

static void on_curl_socket(struct dp_watch *watch, uint32_t events)
{
    struct dp_worker *w = watch->ptr;
    if (watch->parked) { /* an idle pooled connection: closed by the upstream, or data */
        unpark(w, watch);
        dp_worker_retire(w, watch);
        return;
    }
    int flags = (events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                (events & EPOLLOUT ? CURL_CSELECT_OUT : 0) |
                (events & (EPOLLERR | EPOLLHUP) ? CURL_CSELECT_ERR : 0);
    int running;
    curl_multi_socket_action(w->multi, watch->fd, flags, &running);
    poll_done(w);
}

static void on_curl_timer(struct dp_timer *t)
{
    struct dp_worker *w = (struct dp_worker *)((char *)t - offsetof(struct dp_worker, curl_timer));
    int running;
    curl_multi_socket_action(w->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    poll_done(w);
}

static CURL *easy_get(struct dp_worker *w)
{
    if (w->neasy_pool > 0)
        return w->easy_pool[--w->neasy_pool];
    return curl_easy_init();
}

static void easy_done(struct dp_worker *w, CURL *e)
{
    if (w->neasy_pool < DP_POOL_MAX && !w->draining) {
        curl_easy_reset(e); /* keeps its buffers; connections live in the multi's cache */
        w->easy_pool[w->neasy_pool++] = e;
    } else {
        curl_easy_cleanup(e);
    }
}

static int on_socket(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    struct dp_worker *w = userp;
    struct dp_watch *watch = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (watch != NULL) {
            curl_multi_assign(w->multi, s, NULL);
            if (w->draining || !park(w, watch))
                dp_worker_retire(w, watch);
        }
        return 0;
    }
    uint32_t events = (what & CURL_POLL_IN ? EPOLLIN : 0) | (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (watch == NULL && (watch = parked_at(w, s)) != NULL) {
        unpark(w, watch);
        curl_multi_assign(w->multi, s, watch);
        return watch->events == events || dp_worker_watch(w, watch, events, false) == KW_OK ? 0
                                                                                            : -1;
    }
    if (watch == NULL) {
        watch = calloc(1, sizeof(*watch));
        if (watch == NULL)
            return -1;
        watch->fd = s;
        watch->on_event = on_curl_socket;
        watch->ptr = w;
        curl_multi_assign(w->multi, s, watch);
        return dp_worker_watch(w, watch, events, true) == KW_OK ? 0 : -1;
    }
    return dp_worker_watch(w, watch, events, false) == KW_OK ? 0 : -1;
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    struct dp_worker *w = userp;
    /* never act from inside this callback (libcurl forbids it): the loop fires the timer */
    if (timeout_ms < 0)
        dp_timer_cancel(w, &w->curl_timer);
    else
        dp_timer_arm(w, &w->curl_timer, dp_now_ms() + timeout_ms);
    return 0;
}

int dp_upstream_init(struct dp_worker *w)
{
    w->multi = curl_multi_init();
    if (w->multi == NULL)
        return KW_ERROR;
    kw_heap_node_init(&w->curl_timer.node);
    w->curl_timer.on_fire = on_curl_timer;
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(w->multi, CURLMOPT_SOCKETDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(w->multi, CURLMOPT_TIMERDATA, w);
    curl_multi_setopt(w->multi, CURLMOPT_MAXCONNECTS, 4096L); /* keep-alive pool size */
    return KW_OK;
}

/* ---- callbacks ------------------------------------------------------------------------------ */

size_t dp_transfer_on_header(char *buf, size_t size, size_t nitems, void *ud)
{
    struct dp_transfer *t = ud;
    size_t n = size * nitems;
    if (n >= 5 && strncmp(buf, "HTTP/", 5) == 0) { /* a new status line (1xx before) */
        t->ctype[0] = t->retry_after[0] = t->amzn_errortype[0] = '\0';
        return n;
    }
    if (n <= 2 && (buf[0] == '\r' || buf[0] == '\n')) {
        if (t->easy != NULL)
            curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
        if (t->status < 200)
            return n;
        t->headers_done = true;
        t->ttfb_ms = dp_now_ms() - t->start_ms;
        if (t->ops != NULL && t->ops->on_headers != NULL && t->ops->on_headers(t) != KW_OK)
            return 0;
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
        dst = t->ctype, cap = sizeof(t->ctype);
    else if (nlen == 11 && strncasecmp(buf, "retry-after", 11) == 0)
        dst = t->retry_after, cap = sizeof(t->retry_after);
    else if (nlen == 16 && strncasecmp(buf, "x-amzn-errortype", 16) == 0)
        dst = t->amzn_errortype, cap = sizeof(t->amzn_errortype);
    if (dst != NULL) {
        size_t k = vlen < cap - 1 ? vlen : cap - 1;
        memcpy(dst, v, k);
        dst[k] = '\0';
    }
    if (t->ops != NULL && t->ops->on_header != NULL)
        t->ops->on_header(t, buf, nlen, v, vlen);
    return n;
}

static size_t on_write(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct dp_transfer *t = ud;
    size_t n = size * nmemb;
    size_t taken = t->ops->on_body(t, ptr, n);
    if (taken == DP_TRANSFER_PAUSE)
        t->paused = true;
    return taken;
}

void dp_transfer_resume(struct dp_transfer *t)
{
    if (t->paused && t->easy != NULL) {
        t->paused = false;
        curl_easy_pause(t->easy, CURLPAUSE_CONT);
    }
}

/* ---- start and stop ----------------------------------------------------------------------------
 */

int dp_transfer_start(struct dp_transfer *t, struct dp_worker *w, const struct dp_transfer_req *req,
                      const struct dp_transfer_ops *ops, void *ud)
{
    dp_transfer_stop(t);
    t->w = w;
    t->ops = ops;
    t->ud = ud;
    t->status = 0;
    t->ctype[0] = t->retry_after[0] = t->amzn_errortype[0] = '\0';
    t->headers_done = t->done = t->paused = false;
    t->http2 = req->http2;
    t->start_ms = dp_now_ms();
    t->ttfb_ms = -1;
    t->error = DP_UPERR_NONE;
    t->errmsg[0] = t->write_err[0] = '\0';
    t->headers = req->headers;
    t->easy = easy_get(w);
    if (t->easy == NULL) {
        dp_transfer_stop(t);
        return KW_ERROR;
    }
    CURL *e = t->easy;
    curl_easy_setopt(e, CURLOPT_URL, req->url);
    curl_easy_setopt(e, CURLOPT_PRIVATE, t);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    long version = CURL_HTTP_VERSION_1_1;
    if (req->http2) /* h2c with prior knowledge, or ALPN over TLS */
        version = strncmp(req->url, "https:", 6) == 0 ? CURL_HTTP_VERSION_2TLS
                                                      : CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE;
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, version);
    /* libcurl 7.88.1 fails the next request on a reused prior-knowledge HTTP/2 connection
     * ("Error in the HTTP2 framing layer"): HTTP/2 transfers get a connection each */
    if (req->http2)
        curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, dp_transfer_on_header);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errmsg);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)req->connect_timeout_ms);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)req->timeout_ms);
    curl_easy_setopt(e, CURLOPT_BUFFERSIZE, (long)req->buffer_size);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, t->w);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, t->w);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    if (req->insecure) {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    } else {
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
        if (req->ca != NULL) {
            struct curl_blob blob = {
                .data = (void *)req->ca, .len = req->ca_len, .flags = CURL_BLOB_COPY};
            curl_easy_setopt(e, CURLOPT_CAINFO_BLOB, &blob);
        }
    }
    if (curl_multi_add_handle(w->multi, e) != CURLM_OK) {
        dp_transfer_stop(t);
        return KW_ERROR;
    }
    return KW_OK;
}

void dp_transfer_stop(struct dp_transfer *t)
{
    if (t->easy != NULL) {
        /* a live transfer's connection is closed: the upstream sees the cancel */
        curl_multi_remove_handle(t->w->multi, t->easy);
        easy_done(t->w, t->easy);
        t->easy = NULL;
    }
    curl_slist_free_all(t->headers);
    t->headers = NULL;
    t->paused = false;
}

/* ---- completion ---------------------------------------------------------------------------- */

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

static void finish(struct dp_transfer *t, CURLcode rc)
{
    t->done = true;
    t->error = classify(rc);
    if (rc == CURLE_WRITE_ERROR && t->write_err[0] != '\0')
        t->error = DP_UPERR_OTHER;
    if (t->error != DP_UPERR_NONE && t->errmsg[0] == '\0')
        snprintf(t->errmsg, sizeof(t->errmsg), "%s", curl_easy_strerror(rc));
    if (t->error == DP_UPERR_OTHER && t->write_err[0] != '\0')
        snprintf(t->errmsg, sizeof(t->errmsg), "%s", t->write_err);
    dp_transfer_stop(t);
    t->ops->on_done(t);
}

void dp_upstream_cleanup(struct dp_worker *w)
{
    while (w->neasy_pool > 0)
        curl_easy_cleanup(w->easy_pool[--w->neasy_pool]);
    if (w->multi != NULL)
        curl_multi_cleanup(w->multi);
    w->multi = NULL;
}

static void poll_done(struct dp_worker *w)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(w->multi, &left)) != NULL) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        struct dp_transfer *t = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
        if (t != NULL)
            finish(t, msg->data.result);
    }
}
