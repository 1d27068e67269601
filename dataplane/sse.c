#include <string.h>

#include "knoway/kw.h"
#include "sse.h"

void dp_sse_init(struct dp_sse *p, size_t max_event)
{
    memset(p, 0, sizeof(*p));
    kw_buf_init(&p->raw, max_event);
    kw_buf_init(&p->data, max_event);
}

void dp_sse_cleanup(struct dp_sse *p)
{
    kw_buf_cleanup(&p->raw);
    kw_buf_cleanup(&p->data);
}

size_t dp_sse_pending(const struct dp_sse *p)
{
    return p->raw.len;
}

static void reset_event(struct dp_sse *p)
{
    kw_buf_reset(&p->raw);
    kw_buf_reset(&p->data);
    p->event[0] = '\0';
    p->line_start = 0;
    p->has_data = false;
    p->any = false;
}

static int emit(struct dp_sse *p, dp_sse_event_fn on_event, void *ud)
{
    int rc = KW_OK;
    if (p->any)
        rc = on_event(ud, p->raw.data, p->raw.len, p->event, p->has_data ? p->data.data : "",
                      p->data.len, p->has_data);
    reset_event(p);
    return rc;
}

/* One complete line (without its terminator). */
static int on_line(struct dp_sse *p, const char *line, size_t len)
{
    if (len == 0 || line[0] == ':') {
        p->any |= len > 0;
        return KW_OK;
    }
    p->any = true;
    const char *colon = memchr(line, ':', len);
    size_t nlen = colon != NULL ? (size_t)(colon - line) : len;
    const char *val = colon != NULL ? colon + 1 : line + len;
    size_t vlen = len - (size_t)(val - line);
    if (vlen > 0 && val[0] == ' ')
        val++, vlen--;
    if (nlen == 4 && memcmp(line, "data", 4) == 0) {
        if (p->has_data && kw_buf_append(&p->data, "\n", 1) != KW_OK)
            return KW_ERROR;
        p->has_data = true;
        return kw_buf_append(&p->data, val, vlen);
    }
    if (nlen == 5 && memcmp(line, "event", 5) == 0) {
        size_t n = vlen < sizeof(p->event) - 1 ? vlen : sizeof(p->event) - 1;
        memcpy(p->event, val, n);
        p->event[n] = '\0';
    }
    return KW_OK; /* id, retry and unknown fields are kept in the raw bytes only */
}

/* A byte after a CR that ended a line: an LF belongs to that CR. */
int dp_sse_feed(struct dp_sse *p, const char *buf, size_t len, dp_sse_event_fn on_event, void *ud)
{
    for (size_t i = 0; i < len; i++) {
        char c = buf[i];
        if (p->cr) {
            p->cr = false;
            if (c == '\n') {
                if (kw_buf_append(&p->raw, &c, 1) != KW_OK)
                    return KW_ERROR;
                p->line_start = p->raw.len;
                if (p->blank_pending) {
                    p->blank_pending = false;
                    if (emit(p, on_event, ud) != KW_OK)
                        return KW_ERROR;
                }
                continue;
            }
            if (p->blank_pending) {
                p->blank_pending = false;
                if (emit(p, on_event, ud) != KW_OK)
                    return KW_ERROR;
            }
        }
        if (kw_buf_append(&p->raw, &c, 1) != KW_OK)
            return KW_ERROR;
        if (c != '\n' && c != '\r')
            continue;
        size_t llen = p->raw.len - 1 - p->line_start;
        const char *line = p->raw.data + p->line_start;
        p->cr = c == '\r';
        if (llen == 0) { /* a blank line ends the event */
            if (p->cr) {
                p->blank_pending = true; /* emit once we know whether an LF follows */
                p->line_start = p->raw.len;
                continue;
            }
            if (emit(p, on_event, ud) != KW_OK)
                return KW_ERROR;
            continue;
        }
        if (on_line(p, line, llen) != KW_OK)
            return KW_ERROR;
        p->line_start = p->raw.len;
    }
    return KW_OK;
}

void dp_sse_discard(struct dp_sse *p)
{
    reset_event(p);
    p->cr = false;
    p->blank_pending = false;
}

int dp_sse_finish(struct dp_sse *p, dp_sse_event_fn on_event, void *ud)
{
    p->cr = false;
    if (p->blank_pending) {
        p->blank_pending = false;
        return emit(p, on_event, ud);
    }
    size_t end = p->raw.len;
    if (p->line_start < end &&
        on_line(p, p->raw.data + p->line_start, end - p->line_start) != KW_OK)
        return KW_ERROR;
    /* an event the stream ended inside is passed on framed like any other: its raw bytes
     * end with a blank line, so nothing written after it runs into it */
    if (p->any) {
        bool nl = end > 0 && (p->raw.data[end - 1] == '\n' || p->raw.data[end - 1] == '\r');
        if (kw_buf_append(&p->raw, nl ? "\n" : "\n\n", nl ? 1 : 2) != KW_OK)
            return KW_ERROR;
    }
    return emit(p, on_event, ud);
}
