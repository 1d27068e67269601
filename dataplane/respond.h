/* knoway data plane: everything the client receives - error bodies (OpenAI's shape or the
 * front's), buffered answers, streams (start, bytes, keep-alives, the final error event,
 * the end) and libmicrohttpd's suspend/resume around them.
 *
 * A response is prepared (r->pending) and the connection resumed; the access handler
 * queues it at its next call (dp_respond_queue). Stream bytes go to r->out, which MHD's
 * content reader drains; below the low-water mark a paused upstream transfer resumes. */
#ifndef DP_RESPOND_H
#define DP_RESPOND_H

#include <microhttpd.h>
#include <stddef.h>

#include "request.h"

struct kw_buf;

/* The headers every response carries (x-request-id, the front's id header). */
void dp_respond_headers(struct dp_request *r, struct MHD_Response *resp);
/* Resume a suspended connection (no-op otherwise); suspend it. */
void dp_respond_wake(struct dp_request *r);
void dp_respond_suspend(struct dp_request *r);

/* Send r->err: a JSON error response before a stream started, the stream's final error
 * event after. */
void dp_respond_error(struct dp_request *r);
/* The one writer of OpenAI error bodies: {"error":{"message","type","param","code"}};
 * type NULL: dp_error_type(status); param and code NULL or "": null. */
int dp_openai_error(struct kw_buf *out, long status, const char *msg, size_t msg_len,
                    const char *type, const char *param, const char *code);
/* The one table from an HTTP status to an OpenAI error type, where a status is all there
 * is (an upstream's error without a type): 401/403 authentication_error, 404
 * not_found_error, 429 rate_limit_exceeded, 5xx server_error, else invalid_request_error. */
const char *dp_error_type(long status);
/* dp_error_set, then dp_respond_error. Returns KW_DONE. */
int dp_respond_fail(struct dp_request *r, unsigned status, const char *type, const char *code,
                    const char *param, const char *fmt, ...) __attribute__((format(printf, 6, 7)));
/* A complete answer (copied). retry_after may be NULL. KW_OK or KW_ERROR (memory). */
int dp_respond_buffer(struct dp_request *r, unsigned status, const char *ctype, const char *data,
                      size_t len, const char *retry_after);
/* A request whose body did not arrive within limits.readTimeout: a 408 written straight to
 * the client's socket fd (libmicrohttpd cannot answer before the body is complete); the
 * connection is then closed by the caller. */
void dp_respond_read_timeout(struct dp_request *r, int fd, int64_t timeout_ms);

/* A held answer (r->hold: the respond phase's filters commit something first, such as a
 * usage record) goes out: the prepared response is queued, a stream's end is sent. */
void dp_respond_release(struct dp_request *r);

/* Queue the prepared response (access handler). */
enum MHD_Result dp_respond_queue(struct dp_request *r);

/* Start a stream: a 200 text/event-stream response (the front's first events in it).
 * KW_OK or KW_ERROR (memory; nothing was sent). */
int dp_respond_stream_begin(struct dp_request *r);
/* Append bytes for the client and wake it. KW_OK or KW_ERROR (limit). */
int dp_respond_emit(struct dp_request *r, const char *data, size_t len);
/* No more bytes: the stream ends when the client has the rest. */
void dp_respond_stream_end(struct dp_request *r);
/* With a front: translate what r->stage holds into r->out. KW_OK or KW_ERROR. */
int dp_front_flush(struct dp_request *r);

#endif
