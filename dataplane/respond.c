/* Client responses (respond.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "knoway/json.h"
#include "knoway/kw.h"
#include "provider.h"
#include "respond.h"
#include "server.h"

void dp_respond_headers(struct dp_request *r, struct MHD_Response *resp)
{
    MHD_add_response_header(resp, "x-request-id", r->id);
    if (r->front != NULL && r->front->id_header != NULL)
        MHD_add_response_header(resp, r->front->id_header, r->id);
    for (unsigned i = 0; i < r->nhdrs; i++)
        MHD_add_response_header(resp, r->hdrs[i].name, r->hdrs[i].value);
}

void dp_respond_wake(struct dp_request *r)
{
    if (r->suspended) {
        r->suspended = false;
        MHD_resume_connection(r->conn);
    }
}

void dp_respond_suspend(struct dp_request *r)
{
    if (!r->suspended) {
        r->suspended = true;
        MHD_suspend_connection(r->conn);
    }
}

const char *dp_error_type(long status)
{
    if (status == 401 || status == 403)
        return "authentication_error";
    if (status == 404)
        return "not_found_error";
    if (status == 429)
        return "rate_limit_exceeded";
    if (status >= 500)
        return "server_error";
    return "invalid_request_error";
}

int dp_openai_error(struct kw_buf *out, long status, const char *msg, size_t msg_len,
                    const char *type, const char *param, const char *code)
{
    if (type == NULL || type[0] == '\0')
        type = dp_error_type(status);
    kw_buf_puts(out, "{\"error\":{\"message\":");
    kw_json_write_string(out, msg, msg_len);
    kw_buf_puts(out, ",\"type\":");
    kw_json_write_string(out, type, strlen(type));
    kw_buf_puts(out, ",\"param\":");
    if (param != NULL && param[0] != '\0')
        kw_json_write_string(out, param, strlen(param));
    else
        kw_buf_puts(out, "null");
    kw_buf_puts(out, ",\"code\":");
    if (code != NULL && code[0] != '\0')
        kw_json_write_string(out, code, strlen(code));
    else
        kw_buf_puts(out, "null");
    return kw_buf_puts(out, "}}");
}

/* The error body in the client's API shape into b (malloc'd: the arena may be the very
 * thing that ran out). */
static void error_body(struct dp_request *r, const struct dp_error *e, struct kw_buf *b)
{
    kw_buf_init(b, 64 * 1024);
    if (r->front != NULL) {
        r->front->error_body(r, e->status, e->msg, strlen(e->msg), b);
        return;
    }
    dp_openai_error(b, e->status, e->msg, strlen(e->msg), e->type, e->param, e->code);
}

static void set_pending(struct dp_request *r, struct MHD_Response *resp, unsigned status)
{
    if (r->pending != NULL)
        MHD_destroy_response(r->pending);
    r->pending = resp;
    r->pending_status = status;
    if (!r->hold)
        dp_respond_wake(r);
}

void dp_respond_release(struct dp_request *r)
{
    if (!r->hold)
        return;
    r->hold = false;
    if (r->end_held) {
        r->end_held = false;
        dp_respond_stream_end(r);
    }
    if (r->pending != NULL)
        dp_respond_wake(r);
}

/* The final SSE event of a started stream: never a silent cut. */
static void stream_error(struct dp_request *r, const struct dp_error *e)
{
    if (r->stream_end)
        return;
    if (r->front != NULL) {
        r->front->stream_error(r, e->msg, &r->out);
    } else {
        struct dp_error ev = *e;
        if (!r->cut) { /* a limit's end keeps its type and code (rate_limit_exceeded) */
            ev.status = 500;
            snprintf(ev.type, sizeof(ev.type), "server_error");
        }
        ev.param[0] = '\0';
        struct kw_buf body;
        error_body(r, &ev, &body);
        if (body.data != NULL) {
            kw_buf_puts(&r->out, "data: ");
            kw_buf_append(&r->out, body.data, body.len);
            kw_buf_puts(&r->out, "\n\n");
        }
        kw_buf_cleanup(&body);
        if (r->cut)
            kw_buf_puts(&r->out, "data: [DONE]\n\n"); /* a clean end after the error */
    }
    dp_respond_stream_end(r);
}

void dp_respond_error(struct dp_request *r)
{
    const struct dp_error *e = &r->err;
    if (e->status == 0)
        dp_error_set(r, 500, "server_error", NULL, NULL, "internal error (request id %s)", r->id);
    if (r->state == DP_ST_STREAM) {
        stream_error(r, e);
        return;
    }
    struct kw_buf body;
    error_body(r, e, &body);
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        body.len, body.data != NULL ? body.data : (char *)"", MHD_RESPMEM_MUST_COPY);
    kw_buf_cleanup(&body);
    if (resp == NULL)
        return;
    MHD_add_response_header(resp, "Content-Type", "application/json");
    dp_respond_headers(r, resp);
    if (e->status == 405)
        MHD_add_response_header(resp, "Allow", r->api == DP_API_MODELS ? "GET" : "POST");
    if (e->status == 503 && r->over_budget)
        MHD_add_response_header(resp, "Retry-After", "1");
    set_pending(r, resp, e->status);
}

int dp_respond_fail(struct dp_request *r, unsigned status, const char *type, const char *code,
                    const char *param, const char *fmt, ...)
{
    char msg[sizeof(r->err.msg)];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dp_error_set(r, status, type, code, param, "%s", msg);
    dp_respond_error(r);
    return KW_DONE;
}

int dp_respond_buffer(struct dp_request *r, unsigned status, const char *ctype, const char *data,
                      size_t len, const char *retry_after)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        len, (void *)(data != NULL ? data : ""), MHD_RESPMEM_MUST_COPY);
    if (resp == NULL)
        return KW_ERROR;
    MHD_add_response_header(resp, "Content-Type", ctype);
    dp_respond_headers(r, resp);
    if (retry_after != NULL && retry_after[0] != '\0')
        MHD_add_response_header(resp, "Retry-After", retry_after);
    set_pending(r, resp, status);
    return KW_OK;
}

void dp_respond_read_timeout(struct dp_request *r, int fd, int64_t timeout_ms)
{
    static const char msg[] = "the request was not received within limits.readTimeout";
    struct kw_buf body;
    kw_buf_init(&body, 1024);
    dp_openai_error(&body, 408, msg, sizeof(msg) - 1, "invalid_request_error", NULL,
                    "request_timeout");
    char resp[1024];
    int len = snprintf(resp, sizeof(resp),
                       "HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n"
                       "Content-Type: application/json\r\nx-request-id: %s\r\n"
                       "Content-Length: %zu\r\n\r\n%.*s",
                       r->id, body.len, (int)body.len, body.data != NULL ? body.data : "");
    kw_buf_cleanup(&body);
    ssize_t n = send(fd, resp, (size_t)len < sizeof(resp) ? (size_t)len : sizeof(resp) - 1,
                     MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    r->status = 408;
    dp_error_set(r, 408, "invalid_request_error", "request_timeout", NULL,
                 "the request was not received within %lld ms", (long long)timeout_ms);
}

enum MHD_Result dp_respond_queue(struct dp_request *r)
{
    struct MHD_Response *resp = r->pending;
    r->pending = NULL;
    r->status = r->pending_status;
    enum MHD_Result rc = MHD_queue_response(r->conn, r->status, resp);
    MHD_destroy_response(resp);
    if (r->state != DP_ST_STREAM) {
        r->state = DP_ST_DONE;
        dp_timer_cancel(r->w, &r->watch_timer);
        /* MHD sees a disconnect itself from here on: the client may close at once */
        if (r->client_watched)
            dp_worker_unwatch(r->w, &r->client_watch);
        r->client_watched = false;
    }
    return rc;
}

/* ---- streams ------------------------------------------------------------------------------ */

static ssize_t on_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct dp_request *r = cls;
    if (r->client_gone)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t avail = r->out.len - r->out_off;
    if (avail > 0) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, r->out.data + r->out_off, n);
        r->out_off += n;
        if (r->out_off == r->out.len) {
            kw_buf_reset(&r->out);
            r->out_off = 0;
        } else if (r->out_off > DP_STREAM_LOW_WATER) {
            memmove(r->out.data, r->out.data + r->out_off, r->out.len - r->out_off);
            r->out.len -= r->out_off;
            r->out_off = 0;
        }
        if (r->up.paused && r->out.len - r->out_off < DP_STREAM_LOW_WATER)
            dp_transfer_resume(&r->up); /* may append to r->out re-entrantly */
        return (ssize_t)n;
    }
    if (r->stream_end)
        return MHD_CONTENT_READER_END_OF_STREAM;
    dp_respond_suspend(r);
    return 0;
}

static void on_keepalive(struct dp_timer *t)
{
    struct dp_request *r = (struct dp_request *)((char *)t - offsetof(struct dp_request, timer));
    if (r->state != DP_ST_STREAM || r->stream_end)
        return;
    const char *ka = r->front != NULL ? r->front->keepalive : ": keepalive\n\n";
    if (dp_now_ms() - r->last_out_ms >= DP_KEEPALIVE_MS && r->out.len == r->out_off)
        dp_respond_emit(r, ka, strlen(ka));
    dp_timer_arm(r->w, &r->timer, r->last_out_ms + DP_KEEPALIVE_MS);
}

int dp_respond_stream_begin(struct dp_request *r)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, on_read, r, NULL);
    if (resp == NULL)
        return KW_ERROR;
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    dp_respond_headers(r, resp);
    if (r->front != NULL && r->front->stream_begin(r, &r->out) != KW_OK) {
        MHD_destroy_response(resp);
        return KW_ERROR;
    }
    r->state = DP_ST_STREAM;
    atomic_fetch_add_explicit(&r->w->active_streams, 1, memory_order_relaxed);
    r->last_out_ms = dp_now_ms();
    r->timer.on_fire = on_keepalive;
    dp_timer_arm(r->w, &r->timer, r->last_out_ms + DP_KEEPALIVE_MS);
    set_pending(r, resp, 200);
    return KW_OK;
}

struct kw_buf *dp_stream_sink(struct dp_request *r)
{
    return r->front != NULL ? &r->stage : &r->out;
}

int dp_front_flush(struct dp_request *r)
{
    if (r->front == NULL || r->stage.len == 0)
        return KW_OK;
    int rc = r->front->stream(r, r->stage.data, r->stage.len, &r->out);
    kw_buf_reset(&r->stage);
    return rc;
}

int dp_respond_emit(struct dp_request *r, const char *data, size_t len)
{
    if (kw_buf_append(&r->out, data, len) != KW_OK)
        return KW_ERROR;
    r->last_out_ms = dp_now_ms();
    dp_respond_wake(r);
    return KW_OK;
}

void dp_respond_stream_end(struct dp_request *r)
{
    if (r->hold) {
        r->end_held = true; /* the stream's end waits for the commit (dp_respond_release) */
        return;
    }
    r->stream_end = true;
    dp_timer_cancel(r->w, &r->timer);
    dp_respond_wake(r);
}
