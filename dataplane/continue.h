/* knoway data plane: mid-stream continuation (LLMRoute spec.retry.midStream: Continue).
 *
 * A chat stream that breaks after content reached the client (a reset, an upstream error
 * event, the stream going idle) is continued by another backend: the request is sent again
 * with the text the client already has as a final assistant message (a prefill: vLLM's
 * continue_final_message, Anthropic's and Bedrock Converse's native assistant prefill), and
 * the new stream is spliced into the same client stream - its role chunk dropped, its chunks
 * carrying the first stream's id, model and created, its usage counting both attempts.
 *
 *   every chunk of the stream -> dp_cont_track: the text so far, tool calls seen, the
 *                                identity; in a continuation, the splice rewrite
 *   the stream breaks         -> dp_cont_prepare: can one go (route asks, no tool call,
 *                                text sent, a capable backend left)? the prefill
 *   a backend is bound        -> dp_cont_bind: its request asks to continue
 *
 * Not continued: tool-call streams (a half-sent call cannot be resumed), n > 1, the
 * completions and embeddings APIs. Backends of other providers are skipped. The tokens of
 * a broken attempt are counted from its content chunks (one token a chunk: its usage chunk
 * never came). Worker thread only. */
#ifndef DP_CONTINUE_H
#define DP_CONTINUE_H

#include <stdbool.h>
#include <stddef.h>

#include "knoway/buf.h"
#include "request.h"

#define DP_CONT_MAX_TEXT (1024u * 1024) /* the prefill a continuation may carry */

/* Whether r's stream is tracked for continuation (the route asks, chat, a stream). */
bool dp_cont_enabled(const struct dp_request *r);

/* The provider appended stream output to sink from offset `from` on: track it, and in a
 * continuation rewrite it in place. KW_OK; KW_DECLINED when it held an upstream error event
 * (sink is cut back to `from`; the attempt should end and continue); KW_ERROR (memory). */
int dp_cont_track(struct dp_request *r, struct kw_buf *sink, size_t from);

/* The stream broke: whether a continuation may go; if so r->json carries the prefill, the
 * refs that cannot continue are marked tried, and the next attempt is a continuation. */
bool dp_cont_prepare(struct dp_request *r);

/* A backend was bound for a continuation: its rewritten request (r->up_json) asks to
 * continue the final assistant message where the provider needs that said. KW_OK or
 * KW_ERROR (memory). */
int dp_cont_bind(struct dp_request *r);

/* Whether the backend's provider can continue from an assistant prefill. */
bool dp_cont_capable(const struct kw_backend *b);

/* Before the stream's end reaches the client: usage counts the broken attempts' tokens. */
void dp_cont_finish(struct dp_request *r);

/* Continuations started for r; whether the running attempt is one. */
unsigned dp_cont_count(const struct dp_request *r);
bool dp_cont_active(const struct dp_request *r);

/* Free what r's continuation state holds (the request ends). */
void dp_cont_cleanup(struct dp_request *r);

#endif
