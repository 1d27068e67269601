/* knoway data plane: what the translating providers (Anthropic, Bedrock, Gemini) share -
 * reading the OpenAI chat request and writing OpenAI responses, chunks and errors.
 *
 * Writers append to a kw_buf; a buffer at its limit makes later appends fail, and the
 * caller's final append reports it (KW_ERROR). */
#ifndef DP_TRANSLATE_H
#define DP_TRANSLATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "provider.h"
#include "respond.h"

/* The identity of a translated response: its chunks and body carry the same id, created
 * and model. */
struct dp_tr_ident {
    char id[128];
    char model[256];
    long created;
    char service_tier[16]; /* the tier the provider says served it, "" when it did not say */
};

/* Per-request state of a translated stream (every translating provider keeps one). */
struct dp_tr_stream {
    struct dp_tr_ident ident;
    int tools;           /* tool calls opened so far */
    bool tool_open;      /* the current upstream content block is a tool call */
    bool any_tool;       /* finish_reason "stop" becomes "tool_calls" */
    bool started;        /* the role chunk was sent */
    bool finished;       /* the finish chunk was sent */
    bool omit_reasoning; /* the backend's reasoning.content: Omit */
    bool thinking_open;  /* the current upstream block is reasoning (Anthropic thinking) */
    bool answer_open;    /* the current upstream block is the structured output's answer tool */
    bool answered;       /* ... and there was one: finish_reason tool_calls becomes stop */
    const char *finish;
};

/* The per-request stream state in r->provider_state, allocated in r->arena on first use
 * (created = now, model = the upstream model). NULL on out-of-memory. */
struct dp_tr_stream *dp_tr_state(struct dp_request *r);
/* A fresh state (for providers that embed it in a larger one, first). */
void dp_tr_stream_init(struct dp_request *r, struct dp_tr_stream *st);
/* r->provider_state, allocated zeroed on first use with size bytes (a provider's state
 * whose first member is a struct dp_tr_stream, initialized). NULL on out-of-memory. */
void *dp_tr_state_sized(struct dp_request *r, size_t size);

/* Small node helpers: a copy of a string node, a one-entry map, an integer member (0 when
 * missing or not an integer). */
struct kw_node *dp_tr_str(struct kw_arena *a, const struct kw_node *n);
struct kw_node *dp_tr_map1(struct kw_arena *a, const char *key, struct kw_node *v);
int64_t dp_tr_int(const struct kw_node *map, const char *key);

/* Set a fixed string field from a node (or dflt when it is not a string). */
void dp_tr_copy(char *dst, size_t cap, const struct kw_node *n, const char *dflt);

/* ---- reading the OpenAI request ------------------------------------------------------ */

/* The text of a system/developer message's content (a string or text parts), appended to
 * sys with a blank line between messages. */
void dp_tr_system_text(struct kw_buf *sys, const struct kw_node *content);

/* How a provider shapes the turns of a conversation (dp_tr_turns). */
struct dp_tr_turn_ops {
    const char *assistant_role; /* "assistant", or Gemini's "model" */
    const char *content_key;    /* "content", or Gemini's "parts" */
    bool merge;                 /* a turn after one of the same role joins it (Converse) */
    /* A user or assistant message's content (a string or a list). NULL with a failure
     * prepared. */
    struct kw_node *(*content)(struct dp_request *r, size_t i, const struct kw_node *m,
                               bool assistant);
    /* Tool message list->items[i] as one item of a user turn. NULL with a failure prepared. */
    struct kw_node *(*tool)(struct dp_request *r, const struct kw_node *list, size_t i);
    /* Whether an item of a user turn is a tool result (they are kept first); NULL: items
     * keep their order. */
    bool (*is_tool_result)(const struct kw_node *item);
};

/* The messages as turns {role, content_key} appended to turns: system and developer
 * contents are appended to system (a list of content nodes) instead, consecutive tool
 * messages become one user turn (tool results first when the turn merges text), an
 * assistant message with nothing to say (no tool calls, blank content) is dropped. KW_OK,
 * or KW_ERROR with a 400 prepared. */
int dp_tr_turns(struct dp_request *r, const struct dp_tr_turn_ops *ops, const struct kw_node *list,
                struct kw_node *system, struct kw_node *turns);

/* How a provider builds the blocks of one message (dp_tr_content). */
struct dp_tr_content_ops {
    /* A text block; an OpenAI content part as a block (NULL: the provider cannot take it);
     * an assistant's tool call as a block. */
    struct kw_node *(*text)(struct kw_arena *a, const char *s, size_t len);
    struct kw_node *(*part)(struct kw_arena *a, const struct kw_node *part);
    struct kw_node *(*tool_call)(struct kw_arena *a, const struct kw_node *id,
                                 const struct kw_node *name, struct kw_node *input);
    const char *bad_part; /* the 400 for a part part() refuses: "is not a text or image part" */
    const char *empty;    /* the 400 for a message left without blocks; NULL: allowed */
    bool blank_text;      /* a blank string content is a block when there are no tool calls */
};

/* Message i's content (a string, a list of parts or null) and tool calls (may be NULL) as a
 * list of blocks. NULL with a 400 prepared. */
struct kw_node *dp_tr_content(struct dp_request *r, size_t i, const struct kw_node *content,
                              const struct kw_node *calls, const struct dp_tr_content_ops *ops);
/* Each part of list (message i's parts) as part() makes it, appended to out; a refusal
 * part is given to part() as a text part, an empty text part is dropped. KW_OK, or
 * KW_ERROR with a 400 "messages[i].content[j] WHAT" (error code code) prepared. */
int dp_tr_parts(struct dp_request *r, size_t i, const struct kw_node *list,
                struct kw_node *(*part)(struct kw_arena *a, const struct kw_node *part),
                const char *code, const char *what, struct kw_node *out);

/* Tool message list->items[i]: its tool_call_id and content (a string or parts). KW_OK, or
 * KW_ERROR with a 400 prepared. */
int dp_tr_tool_message(struct dp_request *r, const struct kw_node *list, size_t i,
                       const struct kw_node **id, const struct kw_node **content);

/* The system contents collected by dp_tr_turns as one text (dp_tr_system_text each). */
void dp_tr_system_join(struct kw_buf *sys, const struct kw_node *system);

/* A data URL "data:MIME;base64,DATA": the MIME type and the base64 data. False otherwise. */
bool dp_tr_data_url(const char *url, const char **mime, size_t *mime_len, const char **data);

/* One entry of an assistant message's tool_calls: its id, function name and arguments
 * parsed into a JSON object (in r->arena). KW_OK, or KW_ERROR with a 400 prepared. */
int dp_tr_tool_call(struct dp_request *r, size_t msg, size_t j, const struct kw_node *call,
                    const struct kw_node **id, const struct kw_node **name, struct kw_node **input);

/* tools[j]: the function's name, description (or NULL) and parameters (an object schema;
 * {"type":"object","properties":{}} when missing). KW_OK, or KW_ERROR with a 400 prepared. */
int dp_tr_tool_decl(struct dp_request *r, size_t j, const struct kw_node *tool,
                    const struct kw_node **name, const struct kw_node **desc,
                    struct kw_node **params);

/* The request's tools as the provider declares them: decl() of each function's name,
 * description (or NULL) and parameters, in a list (*out; NULL when the request has no
 * tools). KW_OK, or KW_ERROR with a 400 prepared. */
int dp_tr_tools(struct dp_request *r, const struct kw_node *req,
                struct kw_node *(*decl)(struct kw_arena *a, const struct kw_node *name,
                                        const struct kw_node *desc, struct kw_node *params),
                struct kw_node **out);

/* response_format, read once for the providers that translate it (structured outputs). */
enum dp_tr_format_kind { DP_TR_FORMAT_TEXT, DP_TR_FORMAT_JSON_OBJECT, DP_TR_FORMAT_JSON_SCHEMA };
struct dp_tr_format {
    enum dp_tr_format_kind kind;
    const char *name;       /* json_schema.name; "json_response" for json_object */
    struct kw_node *schema; /* json_schema.schema; {"type":"object"} for json_object */
    bool strict;            /* json_schema.strict */
};
/* The request's response_format into *f (TEXT when unset). KW_OK, or KW_ERROR with a 400
 * prepared (an unknown type, a json_schema without a name or with a schema that is not an
 * object). */
int dp_tr_format(struct dp_request *r, const struct kw_node *req, struct dp_tr_format *f);

/* The name a forced answer tool (structured outputs through tool use) goes by; the
 * response side turns that tool's input into the message's text (dp_tr_format_tool). */
#define DP_TR_FORMAT_DESC                                                                          \
    "Give your final answer by calling this tool: its input is the answer, as JSON that "          \
    "matches the schema."
/* Whether a tool call of that name (len bytes) is the answer tool of r's structured output. */
bool dp_tr_format_tool(const struct dp_request *r, const char *name, size_t len);

/* max_completion_tokens, else max_tokens, else dflt. */
int64_t dp_tr_max_tokens(const struct kw_node *req, int64_t dflt);

/* "stop" as a list of strings (a string becomes a one-item list); NULL when unset. */
struct kw_node *dp_tr_stop_list(struct kw_arena *a, const struct kw_node *req);

/* ---- writing OpenAI output ----------------------------------------------------------- */

/* {"prompt_tokens","completion_tokens","total_tokens","prompt_tokens_details"} of r. */
int dp_tr_usage_json(struct kw_buf *out, const struct dp_request *r);

/* data: {"id","object":"chat.completion.chunk","created","model","choices":[{"index":0,
 * "delta":DELTA,"finish_reason":FR}]} and a blank line. fr may be NULL. */
int dp_tr_chunk(struct kw_buf *out, const struct dp_tr_ident *id, const char *delta,
                const char *fr);
/* The role chunk, once per stream. */
int dp_tr_chunk_role(struct kw_buf *out, struct dp_tr_stream *st);
/* A content delta. */
int dp_tr_chunk_text(struct kw_buf *out, struct dp_tr_stream *st, const char *text, size_t len);
/* A tool call opened: index st->tools (then incremented), id, name and arguments (may be
 * empty: more arrive with dp_tr_chunk_args). */
int dp_tr_chunk_tool(struct kw_buf *out, struct dp_tr_stream *st, const char *id, size_t id_len,
                     const char *name, size_t name_len, const char *args, size_t args_len);
/* More arguments for the last opened tool call. */
int dp_tr_chunk_args(struct kw_buf *out, struct dp_tr_stream *st, const char *args, size_t len);
/* The finish chunk (once; "stop" after tool calls becomes "tool_calls"). */
int dp_tr_chunk_finish(struct kw_buf *out, struct dp_tr_stream *st, const char *fr);
/* The end of a translated stream: the usage chunk when the client asked for it (r's usage
 * must be set), then data: [DONE]. */
int dp_tr_stream_end(struct kw_buf *out, struct dp_request *r, struct dp_tr_stream *st);
/* data: {"error":{...}} for an error inside a stream. */
int dp_tr_error_event(struct kw_buf *out, const char *msg, size_t msg_len, const char *type,
                      const char *code);
/* An upstream error body parsed in r->scratch, or NULL when it is not JSON (the caller
 * then leaves its output empty: the body is wrapped as it is). */
struct kw_node *dp_tr_error_json(struct dp_request *r, const char *body, size_t len);

/* A chat.completion body: content (NULL: null), tool_calls (a JSON array's inside, may be
 * empty), finish_reason (NULL: null), usage of r. */
int dp_tr_completion(struct kw_buf *out, const struct dp_request *r, const struct dp_tr_ident *id,
                     const struct kw_buf *content, const struct kw_buf *tool_calls, const char *fr);

/* Reasoning, as clients of reasoning models read it: message.reasoning_content (the text)
 * and message.thinking_blocks (the provider's blocks, signatures included, for a client to
 * send back: a JSON array's inside). Both left out when empty or when the backend says
 * reasoning.content: Omit. */
struct dp_tr_reasoning {
    struct kw_buf text;
    struct kw_buf blocks;
};
void dp_tr_reasoning_init(struct dp_tr_reasoning *rs);
void dp_tr_reasoning_cleanup(struct dp_tr_reasoning *rs);
/* Append a thinking block {"type":"thinking","thinking":text,"signature":sig} (sig may be
 * NULL) or a redacted one {"type":"redacted_thinking","data":data}. */
void dp_tr_reasoning_block(struct dp_tr_reasoning *rs, const char *text, size_t len,
                           const char *sig, size_t sig_len);
void dp_tr_reasoning_redacted(struct dp_tr_reasoning *rs, const char *data, size_t len);
/* dp_tr_completion with reasoning (rs may be NULL). */
int dp_tr_completion_r(struct kw_buf *out, const struct dp_request *r, const struct dp_tr_ident *id,
                       const struct kw_buf *content, const struct dp_tr_reasoning *rs,
                       const struct kw_buf *tool_calls, const char *fr);
/* Stream chunks: delta {"reasoning_content": text}; delta {"thinking_blocks": [block]} for a
 * block's signature or a redacted block (block: a JSON object). Nothing when omitted. */
int dp_tr_chunk_reasoning(struct kw_buf *out, struct dp_tr_stream *st, const char *text,
                          size_t len);
int dp_tr_chunk_thinking_block(struct kw_buf *out, struct dp_tr_stream *st, const char *block,
                               size_t len);

/* The thinking budget a request asks for: the Anthropic front's exact budget_tokens, else
 * reasoning_effort (low 1024, medium 4096, high 16384 tokens; minimal and none: 0), else -1
 * (not asked). docs/providers.md. */
int64_t dp_tr_thinking_budget(const struct dp_request *r);
/* Append one tool call {"id","type":"function","function":{"name","arguments"}} to a
 * tool_calls list being built (comma handled); input is serialized as the arguments. */
int dp_tr_tool_call_json(struct kw_buf *calls, const char *id, size_t id_len, const char *name,
                         size_t name_len, const struct kw_node *input);

#endif
