/* knoway data plane: incremental Server-Sent Events parser (WHATWG event-stream).
 *
 * Bytes are fed as they arrive, split anywhere; lines end in LF, CRLF or CR (Vertex uses
 * CRLF), a CRLF split across two feeds counts once. For each event (a block ended by a blank
 * line) the callback gets its raw bytes, exactly as received, so an unmodified event can be
 * relayed byte for byte, plus its parsed "event" name and "data" (data lines joined by
 * LF). Comment lines (":...") are part of the raw bytes only. Memory is bounded by
 * max_event: a longer event is an error. */
#ifndef DP_SSE_H
#define DP_SSE_H

#include <stdbool.h>
#include <stddef.h>

#include "knoway/buf.h"

/* One event. has_data is false for a block of comments only. Return KW_OK, or KW_ERROR
 * to stop parsing (dp_sse_feed then returns KW_ERROR). */
typedef int (*dp_sse_event_fn)(void *ud, const char *raw, size_t raw_len, const char *event,
                               const char *data, size_t data_len, bool has_data);

struct dp_sse {
    struct kw_buf raw;  /* bytes of the current event */
    struct kw_buf data; /* its data lines */
    char event[64];
    size_t line_start;  /* offset in raw of the current line */
    bool cr;            /* the last byte was a CR ending a line */
    bool blank_pending; /* that CR ended a blank line: the event is complete */
    bool has_data;
    bool any; /* any non-blank line in the current event */
};

void dp_sse_init(struct dp_sse *p, size_t max_event);
void dp_sse_cleanup(struct dp_sse *p);

/* Feed bytes; calls on_event for each completed event. KW_OK or KW_ERROR. */
int dp_sse_feed(struct dp_sse *p, const char *buf, size_t len, dp_sse_event_fn on_event, void *ud);

/* End of stream: an event not yet ended by a blank line is delivered (Gemini closes the
 * connection after its last event), its raw bytes completed with the blank line. KW_OK or
 * KW_ERROR. */
int dp_sse_finish(struct dp_sse *p, dp_sse_event_fn on_event, void *ud);

/* A failed stream: the event it ended inside is dropped, never delivered. */
void dp_sse_discard(struct dp_sse *p);

/* Bytes held for the current, incomplete event. */
size_t dp_sse_pending(const struct dp_sse *p);

#endif
