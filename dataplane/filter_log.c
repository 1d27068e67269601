/* The access log as a filter: one JSON line per request, at its end. */
#include <stdio.h>

#include "continue.h"
#include "filter.h"
#include "knoway/log.h"

static void on_end(struct dp_request *r, void *ctx)
{
    (void)ctx;
    if (!kw_log_enabled(KW_LOG_INFO))
        return;
    struct kw_buf *b = &r->w->logbuf;
    kw_log_begin(b, KW_LOG_INFO, "request");
    kw_log_field(b, "request_id", r->id);
    kw_log_field(b, "path", r->path);
    kw_log_field_int(b, "status", r->status);
    kw_log_field_int(b, "duration_ms", dp_now_ms() - r->start_ms);
    if (r->trace.trace_id[0] != '\0') {
        kw_log_field(b, "trace_id", r->trace.trace_id);
        kw_log_field(b, "span_id", r->trace.span_id);
    }
    if (r->model != NULL)
        kw_log_field(b, "model", r->model);
    if (r->consumer != NULL) {
        char who[320];
        snprintf(who, sizeof(who), "%s/%s", r->consumer->meta.ns, r->consumer->meta.name);
        kw_log_field(b, "consumer", who);
        char attrs[1024];
        size_t n = 0;
        attrs[0] = '\0';
        for (size_t i = 0; i < r->consumer->nattributes && n < sizeof(attrs); i++)
            n +=
                (size_t)snprintf(attrs + n, sizeof(attrs) - n, "%s%s=%s", i > 0 ? "," : "",
                                 r->consumer->attributes[i].name, r->consumer->attributes[i].value);
        if (r->consumer->nattributes > 0)
            kw_log_field(b, "attributes", attrs);
    }
    if (r->user != NULL) {
        char user[80]; /* client input (the body's user): bounded */
        snprintf(user, sizeof(user), "%.64s", r->user);
        kw_log_field(b, "user", user);
    }
    if (r->route != NULL)
        kw_log_field(b, "route", r->route->meta.name);
    if (r->backend != NULL) {
        kw_log_field(b, "backend", r->backend->meta.name);
        kw_log_field(b, "upstream_model", r->upstream_model);
    }
    if (r->attempts > 1)
        kw_log_field_int(b, "attempts", r->attempts);
    if (dp_cont_count(r) > 0)
        kw_log_field_int(b, "continued", dp_cont_count(r));
    if (r->stream)
        kw_log_field(b, "stream", "true");
    if (r->usage.have) {
        kw_log_field_int(b, "prompt_tokens", r->usage.prompt);
        kw_log_field_int(b, "completion_tokens", r->usage.completion);
        kw_log_field_int(b, "cached_tokens", r->usage.cached);
    }
    if (r->up.error != DP_UPERR_NONE)
        kw_log_field(b, "upstream_error", r->up.errmsg);
    else if (r->err.status != 0 && r->status >= 400)
        kw_log_field(b, "error", r->err.msg);
    if (r->toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        kw_log_field(b, "client",
                     r->client_gone || r->toe == MHD_REQUEST_TERMINATED_CLIENT_ABORT
                         ? "disconnected"
                         : "error");
    kw_log_emit(b);
}

const struct dp_filter_ops dp_filter_access_log = {
    .name = "access_log",
    .phase = DP_PH_LOG,
    .on_end = on_end,
};
