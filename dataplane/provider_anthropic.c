/* Anthropic Messages API behind the OpenAI chat API.
 *
 * Request: system (and developer) messages are lifted into "system"; user and assistant
 * messages keep their order, text and images (base64 data URLs or URLs); max_tokens comes
 * from max_completion_tokens or max_tokens (params.defaults can set it per backend), else
 * 4096, since Anthropic requires it; stop -> stop_sequences; temperature, top_p, stream and
 * user (metadata.user_id) carry over. Headers: x-api-key, anthropic-version.
 *
 * Reasoning: reasoning_effort (or the Anthropic front's budget) -> thinking {enabled,
 * budget_tokens} (max_tokens raised past the budget); assistant thinking_blocks sent back
 * lead the assistant turn. thinking blocks -> message.reasoning_content and
 * message.thinking_blocks (signatures kept), redacted ones -> thinking_blocks.
 *
 * Response: text blocks joined into message.content; stop_reason -> finish_reason
 * (end_turn/stop_sequence: stop, max_tokens: length, tool_use: tool_calls); usage: prompt
 * tokens = input + cache read + cache creation, cached_tokens = cache read.
 *
 * Stream, per event:
 *   message_start        -> first chunk (role), keeps id, model, input usage
 *   content_block_start  -> a tool call opened (id, name) for a tool_use block
 *   content_block_delta  -> a content chunk (text_delta) or tool arguments (input_json_delta)
 *   message_delta        -> chunk with finish_reason; output tokens
 *   message_stop         -> usage chunk when the client asked for it, then data: [DONE]
 *   error                -> an OpenAI error event
 *   thinking blocks      -> delta.reasoning_content (thinking_delta), delta.thinking_blocks
 *                           (the signature_delta, a redacted_thinking block)
 *   ping, content_block_stop -> nothing
 *
 * Tools: tools[].function {name, description, parameters} -> tools[] {name, description,
 * input_schema}; tool_choice auto/none/required/{function} -> {type: auto/none/any/tool};
 * parallel_tool_calls: false -> disable_parallel_tool_use. Assistant tool_calls become
 * tool_use blocks (arguments parsed into input), tool messages become tool_result blocks
 * of one user turn. Back: tool_use blocks -> message.tool_calls (input serialized into
 * arguments); in a stream, content_block_start of a tool_use opens a tool call (id, name)
 * and each input_json_delta appends to its arguments. */
#include <stdio.h>
#include <string.h>

#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "translate.h"

#define ANTHROPIC_VERSION    "2023-06-01"
#define ANTHROPIC_MAX_TOKENS 4096

/* The shared stream state, then usage as Anthropic reports it across events. */
struct anth_state {
    struct dp_tr_stream tr; /* first: dp_tr_state() returns it */
    int64_t input, cache_read, cache_create, output;
};

static struct anth_state *state_of(struct dp_request *r)
{
    return dp_tr_state_sized(r, sizeof(struct anth_state));
}

/* An OpenAI content part as an Anthropic content block, or NULL (unsupported). */
static struct kw_node *content_block(struct kw_arena *a, const struct kw_node *part)
{
    const struct kw_node *type = kw_node_get(part, "type");
    struct kw_node *b = kw_node_new(a, KW_NODE_MAP);
    if (type == NULL || type->type != KW_NODE_STRING || b == NULL)
        return NULL;
    if (strcmp(type->str, "text") == 0) {
        const struct kw_node *text = kw_node_get(part, "text");
        if (text == NULL || text->type != KW_NODE_STRING)
            return NULL;
        kw_node_map_put(a, b, "type", kw_node_cstring(a, "text"));
        kw_node_map_put(a, b, "text", dp_tr_str(a, text));
        return b;
    }
    if (strcmp(type->str, "image_url") == 0) {
        const struct kw_node *url = kw_node_get(kw_node_get(part, "image_url"), "url");
        if (url == NULL || url->type != KW_NODE_STRING)
            return NULL;
        struct kw_node *src = kw_node_new(a, KW_NODE_MAP);
        const char *mime, *data;
        size_t mlen;
        if (dp_tr_data_url(url->str, &mime, &mlen, &data)) {
            kw_node_map_put(a, src, "type", kw_node_cstring(a, "base64"));
            kw_node_map_put(a, src, "media_type", kw_node_string(a, mime, mlen));
            kw_node_map_put(a, src, "data", kw_node_cstring(a, data));
        } else {
            kw_node_map_put(a, src, "type", kw_node_cstring(a, "url"));
            kw_node_map_put(a, src, "url", dp_tr_str(a, url));
        }
        kw_node_map_put(a, b, "type", kw_node_cstring(a, "image"));
        kw_node_map_put(a, b, "source", src);
        return b;
    }
    return NULL;
}

/* A function as an Anthropic tool. */
static struct kw_node *tool_decl(struct kw_arena *a, const struct kw_node *name,
                                 const struct kw_node *desc, struct kw_node *schema)
{
    struct kw_node *at = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, at, "name", dp_tr_str(a, name));
    if (desc != NULL)
        kw_node_map_put(a, at, "description", dp_tr_str(a, desc));
    kw_node_map_put(a, at, "input_schema", schema);
    return at;
}

/* tool_choice (and parallel_tool_calls) -> Anthropic's tool_choice; NULL when unset or
 * invalid (*bad set, failure prepared). */
static struct kw_node *translate_tool_choice(struct dp_request *r, const struct kw_node *in,
                                             bool *bad)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *tc = kw_node_get(in, "tool_choice");
    const struct kw_node *par = kw_node_get(in, "parallel_tool_calls");
    bool no_parallel = par != NULL && par->type == KW_NODE_BOOL && !par->b;
    if ((tc == NULL || tc->type == KW_NODE_NULL) && !no_parallel)
        return NULL;
    struct kw_node *out = kw_node_new(a, KW_NODE_MAP);
    const char *type = "auto";
    const struct kw_node *name = NULL;
    if (tc != NULL && tc->type == KW_NODE_STRING) {
        if (strcmp(tc->str, "required") == 0)
            type = "any";
        else if (strcmp(tc->str, "none") == 0)
            type = "none";
        else if (strcmp(tc->str, "auto") != 0)
            type = NULL;
    } else if (tc != NULL && tc->type != KW_NODE_NULL) {
        name = kw_node_get(kw_node_get(tc, "function"), "name");
        type = name != NULL && name->type == KW_NODE_STRING ? "tool" : NULL;
    }
    if (type == NULL) {
        *bad = true;
        dp_error_set(r, 400, "invalid_request_error", NULL, "tool_choice",
                     "tool_choice must be \"auto\", \"none\", \"required\" or "
                     "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        return NULL;
    }
    kw_node_map_put(a, out, "type", kw_node_cstring(a, type));
    if (name != NULL)
        kw_node_map_put(a, out, "name", dp_tr_str(a, name));
    if (no_parallel && strcmp(type, "none") != 0)
        kw_node_map_put(a, out, "disable_parallel_tool_use", kw_node_bool(a, true));
    return out;
}

/* A tool message as a tool_result block. NULL with a failure prepared. */
static struct kw_node *tool_result_block(struct dp_request *r, const struct kw_node *list, size_t i)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *id, *content;
    if (dp_tr_tool_message(r, list, i, &id, &content) != KW_OK)
        return NULL;
    struct kw_node *b = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, b, "type", kw_node_cstring(a, "tool_result"));
    kw_node_map_put(a, b, "tool_use_id", dp_tr_str(a, id));
    if (content->type == KW_NODE_STRING) {
        kw_node_map_put(a, b, "content", dp_tr_str(a, content));
        return b;
    }
    struct kw_node *parts = kw_node_new(a, KW_NODE_SEQ);
    if (dp_tr_parts(r, i, content, content_block, NULL, "is not a text or image part", parts) !=
        KW_OK)
        return NULL;
    kw_node_map_put(a, b, "content", parts);
    return b;
}

static struct kw_node *text_block(struct kw_arena *a, const char *s, size_t len)
{
    struct kw_node *t = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, t, "type", kw_node_cstring(a, "text"));
    kw_node_map_put(a, t, "text", kw_node_string(a, s, len));
    return t;
}

static struct kw_node *tool_use_block(struct kw_arena *a, const struct kw_node *id,
                                      const struct kw_node *name, struct kw_node *input)
{
    struct kw_node *b = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, b, "type", kw_node_cstring(a, "tool_use"));
    kw_node_map_put(a, b, "id", dp_tr_str(a, id));
    kw_node_map_put(a, b, "name", dp_tr_str(a, name));
    kw_node_map_put(a, b, "input", input);
    return b;
}

/* The content of a user or assistant message: a string when it is only text, else
 * content blocks. NULL with a failure prepared. */
static struct kw_node *message_content(struct dp_request *r, size_t i, const struct kw_node *m,
                                       bool assistant)
{
    static const struct dp_tr_content_ops ops = {
        text_block, content_block, tool_use_block, "is not a text or image part", NULL, false};
    const struct kw_node *content = kw_node_get(m, "content");
    const struct kw_node *calls = assistant ? kw_node_get(m, "tool_calls") : NULL;
    const struct kw_node *thinking = assistant ? kw_node_get(m, "thinking_blocks") : NULL;
    bool has_calls = calls != NULL && calls->type == KW_NODE_SEQ && calls->n > 0;
    bool has_thinking = thinking != NULL && thinking->type == KW_NODE_SEQ && thinking->n > 0;
    if (content != NULL && content->type == KW_NODE_STRING && !has_calls && !has_thinking)
        return dp_tr_str(r->arena, content);
    if ((content == NULL || content->type == KW_NODE_NULL) && !has_calls && !has_thinking) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                     "messages[%zu] needs content", i);
        return NULL;
    }
    struct kw_node *blocks = dp_tr_content(r, i, content, calls, &ops);
    if (blocks == NULL || !has_thinking)
        return blocks;
    /* the thinking blocks a client sent back (signatures kept) lead the assistant turn, as
     * Anthropic requires when thinking continues across tool use */
    struct kw_node *all = kw_node_new(r->arena, KW_NODE_SEQ);
    for (size_t k = 0; k < thinking->n; k++) {
        const struct kw_node *b = thinking->items[k], *type = kw_node_get(b, "type");
        if (b->type != KW_NODE_MAP || type == NULL || type->type != KW_NODE_STRING ||
            (strcmp(type->str, "thinking") != 0 && strcmp(type->str, "redacted_thinking") != 0)) {
            dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                         "messages[%zu].thinking_blocks[%zu] must be a thinking or "
                         "redacted_thinking block",
                         i, k);
            return NULL;
        }
        kw_node_seq_push(r->arena, all, (struct kw_node *)b);
    }
    for (size_t k = 0; k < blocks->n; k++)
        kw_node_seq_push(r->arena, all, blocks->items[k]);
    return all;
}

/* response_format -> Anthropic. Native (the backend's structuredOutputs: Native, for the
 * models Anthropic documents it for): output_config.format {type: json_schema, schema}.
 * Tool (the default, every Claude model): one more tool whose input_schema is the schema,
 * forced by tool_choice (any, when the client's own tools may be called first); its input
 * comes back as the message's text. Extended thinking refuses a forced tool: 400. */
static int structured_output(struct dp_request *r, const struct kw_node *in, struct kw_node *body,
                             struct kw_node *tools, struct kw_node *tc, bool thinking)
{
    struct kw_arena *a = r->arena;
    struct dp_tr_format f;
    if (dp_tr_format(r, in, &f) != KW_OK)
        return KW_ERROR;
    if (f.kind == DP_TR_FORMAT_TEXT)
        return KW_OK;
    if (r->backend->structured_outputs == KW_STRUCTURED_NATIVE) {
        struct kw_node *fmt = dp_tr_map1(a, "type", kw_node_cstring(a, "json_schema"));
        kw_node_map_put(a, fmt, "schema", f.schema);
        kw_node_map_put(a, body, "output_config", dp_tr_map1(a, "format", fmt));
        return KW_OK;
    }
    if (thinking)
        return dp_error_set(r, 400, "invalid_request_error", "unsupported_parameter",
                            "response_format",
                            "response_format cannot be combined with reasoning on backend %s: "
                            "it answers in the schema through a forced tool call, and Anthropic "
                            "refuses extended thinking when a tool is forced (structuredOutputs: "
                            "Native uses Anthropic's own structured outputs instead)",
                            r->backend->meta.name);
    for (size_t i = 0; tools != NULL && i < tools->n; i++) {
        const struct kw_node *n = kw_node_get(tools->items[i], "name");
        if (n != NULL && n->type == KW_NODE_STRING && strlen(f.name) == n->len &&
            memcmp(n->str, f.name, n->len) == 0)
            return dp_error_set(r, 400, "invalid_request_error", NULL, "response_format",
                                "response_format.json_schema.name \"%s\" is also the name of a "
                                "tool: rename one of them",
                                f.name);
    }
    if (tools == NULL) {
        tools = kw_node_new(a, KW_NODE_SEQ);
        kw_node_map_put(a, body, "tools", tools);
    }
    kw_node_seq_push(
        a, tools,
        tool_decl(a, kw_node_cstring(a, f.name), kw_node_cstring(a, DP_TR_FORMAT_DESC), f.schema));
    const struct kw_node *ct = kw_node_get(tc, "type");
    bool own_tools = tools->n > 1 && !(ct != NULL && strcmp(ct->str, "none") == 0);
    struct kw_node *choice = dp_tr_map1(a, "type", kw_node_cstring(a, own_tools ? "any" : "tool"));
    if (!own_tools)
        kw_node_map_put(a, choice, "name", kw_node_cstring(a, f.name));
    kw_node_map_put(a, choice, "disable_parallel_tool_use", kw_node_bool(a, true));
    kw_node_map_put(a, body, "tool_choice", choice);
    r->format_tool = f.name;
    return KW_OK;
}

static int translate_request(struct dp_request *r, struct kw_node **out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->up_json;
    struct kw_node *body = kw_node_new(a, KW_NODE_MAP);
    struct kw_node *msgs = kw_node_new(a, KW_NODE_SEQ);
    if (body == NULL || msgs == NULL)
        return KW_ERROR;
    kw_node_map_put(a, body, "model", dp_tr_str(a, kw_node_get(in, "model")));
    static const struct dp_tr_turn_ops turns = {"assistant",     "content",         false,
                                                message_content, tool_result_block, NULL};
    struct kw_node *system = kw_node_new(a, KW_NODE_SEQ);
    if (dp_tr_turns(r, &turns, kw_node_get(in, "messages"), system, msgs) != KW_OK)
        return KW_ERROR;
    struct kw_buf sys;
    kw_buf_init(&sys, 4u * 1024 * 1024);
    dp_tr_system_join(&sys, system);
    if (sys.len > 0)
        kw_node_map_put(a, body, "system", kw_node_string(a, sys.data, sys.len));
    kw_buf_cleanup(&sys);
    kw_node_map_put(a, body, "messages", msgs);
    int64_t max_tokens = dp_tr_max_tokens(in, ANTHROPIC_MAX_TOKENS);
    int64_t budget = dp_tr_thinking_budget(r);
    if (budget > 0) {
        if (budget < 1024)
            budget = 1024; /* Anthropic's minimum */
        struct kw_node *th = dp_tr_map1(a, "type", kw_node_cstring(a, "enabled"));
        kw_node_map_put(a, th, "budget_tokens", kw_node_int(a, budget));
        kw_node_map_put(a, body, "thinking", th);
        if (max_tokens <= budget) /* the budget is part of max_tokens: room for the answer */
            max_tokens += budget;
    }
    kw_node_map_put(a, body, "max_tokens", kw_node_int(a, max_tokens));
    struct kw_node *stop = dp_tr_stop_list(a, in);
    if (stop != NULL)
        kw_node_map_put(a, body, "stop_sequences", stop);
    static const char *const copied[] = {"temperature", "top_p", "stream"};
    for (size_t i = 0; i < KW_ARRAY_LEN(copied); i++) {
        const struct kw_node *v = kw_node_get(in, copied[i]);
        if (v != NULL && v->type != KW_NODE_NULL)
            kw_node_map_put(a, body, copied[i], (struct kw_node *)v);
    }
    struct kw_node *tools;
    if (dp_tr_tools(r, in, tool_decl, &tools) != KW_OK)
        return KW_ERROR;
    if (tools != NULL)
        kw_node_map_put(a, body, "tools", tools);
    bool bad = false;
    struct kw_node *tc = translate_tool_choice(r, in, &bad);
    if (bad)
        return KW_ERROR;
    if (tc != NULL)
        kw_node_map_put(a, body, "tool_choice", tc);
    if (structured_output(r, in, body, tools, tc, budget > 0) != KW_OK)
        return KW_ERROR;
    const struct kw_node *user = kw_node_get(in, "user");
    if (user != NULL && user->type == KW_NODE_STRING) {
        struct kw_node *meta = kw_node_new(a, KW_NODE_MAP);
        kw_node_map_put(a, meta, "user_id", dp_tr_str(a, user));
        kw_node_map_put(a, body, "metadata", meta);
    }
    *out = body;
    return KW_OK;
}

int dp_anthropic_request(struct dp_request *r, struct kw_node **body)
{
    if (r->api != DP_API_CHAT) {
        dp_error_set(r, 400, "invalid_request_error", "unsupported_endpoint", NULL,
                     "backend %s (%s) serves /v1/chat/completions only", r->backend->meta.name,
                     kw_provider_name(r->backend->provider));
        return KW_ERROR;
    }
    return translate_request(r, body);
}

static int anthropic_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    struct kw_node *body;
    if (dp_anthropic_request(r, &body) != KW_OK)
        return KW_ERROR;
    size_t blen = r->base_len;
    const char *base = r->base_url != NULL ? r->base_url : "";
    int rc = kw_buf_printf(url, "%.*s/v1/messages", (int)blen, base);
    rc |= dp_openai_add_header(headers, r->arena, "Content-Type", "application/json");
    rc |= dp_openai_add_header(headers, r->arena, "anthropic-version", ANTHROPIC_VERSION);
    const char *key = dp_provider_secret(r, NULL);
    if (key != NULL)
        rc |= dp_openai_add_header(headers, r->arena, "x-api-key", key);
    if (rc != KW_OK)
        return KW_ERROR;
    return dp_openai_finish(r, headers, body);
}

static const char *finish_reason(const struct kw_node *stop)
{
    if (stop == NULL || stop->type != KW_NODE_STRING)
        return NULL;
    if (strcmp(stop->str, "max_tokens") == 0)
        return "length";
    if (strcmp(stop->str, "tool_use") == 0)
        return "tool_calls";
    if (strcmp(stop->str, "refusal") == 0)
        return "content_filter";
    return "stop"; /* end_turn, stop_sequence, pause_turn */
}

static void read_usage(struct anth_state *st, const struct kw_node *usage)
{
    if (usage == NULL || usage->type != KW_NODE_MAP)
        return;
    if (kw_node_get(usage, "input_tokens") != NULL) {
        st->input = dp_tr_int(usage, "input_tokens");
        st->cache_read = dp_tr_int(usage, "cache_read_input_tokens");
        st->cache_create = dp_tr_int(usage, "cache_creation_input_tokens");
    }
    if (kw_node_get(usage, "output_tokens") != NULL)
        st->output = dp_tr_int(usage, "output_tokens");
}

/* Anthropic's input_tokens leave out cache reads and writes: prompt_tokens counts all three
 * (as OpenAI's include cached ones), cached_tokens the reads; the raw counts are kept. */
static void set_usage(struct dp_request *r, const struct anth_state *st)
{
    r->usage.prompt = st->input + st->cache_read + st->cache_create;
    r->usage.completion = st->output;
    r->usage.cached = st->cache_read;
    r->usage.have = true;
    dp_usage_raw(&r->usage, "input_tokens", st->input);
    dp_usage_raw(&r->usage, "cache_read_input_tokens", st->cache_read);
    dp_usage_raw(&r->usage, "cache_creation_input_tokens", st->cache_create);
    dp_usage_raw(&r->usage, "output_tokens", st->output);
}

static int anthropic_on_response(struct dp_request *r, const char *body, size_t len,
                                 struct kw_buf *out)
{
    struct kw_node *root;
    char err[128];
    struct anth_state *st = state_of(r);
    if (st == NULL || kw_json_parse(r->arena, body, len, &root, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    dp_tr_copy(st->tr.ident.id, sizeof(st->tr.ident.id), kw_node_get(root, "id"), "msg");
    dp_tr_copy(st->tr.ident.model, sizeof(st->tr.ident.model), kw_node_get(root, "model"),
               r->upstream_model);
    read_usage(st, kw_node_get(root, "usage"));
    set_usage(r, st);
    struct kw_buf text, calls;
    struct dp_tr_reasoning rs;
    kw_buf_init(&text, DP_MAX_UPSTREAM_RESPONSE);
    kw_buf_init(&calls, DP_MAX_UPSTREAM_RESPONSE);
    dp_tr_reasoning_init(&rs);
    const struct kw_node *content = kw_node_get(root, "content");
    bool any = false, answered = false;
    for (size_t i = 0; content != NULL && content->type == KW_NODE_SEQ && i < content->n; i++) {
        const struct kw_node *b = content->items[i], *type = kw_node_get(b, "type");
        const struct kw_node *t = kw_node_get(b, "text");
        const char *ty = type != NULL && type->type == KW_NODE_STRING ? type->str : "";
        if (strcmp(ty, "thinking") == 0) {
            const struct kw_node *th = kw_node_get(b, "thinking"),
                                 *sig = kw_node_get(b, "signature");
            if (th != NULL && th->type == KW_NODE_STRING)
                dp_tr_reasoning_block(&rs, th->str, th->len,
                                      sig != NULL && sig->type == KW_NODE_STRING ? sig->str : NULL,
                                      sig != NULL && sig->type == KW_NODE_STRING ? sig->len : 0);
            continue;
        }
        if (strcmp(ty, "redacted_thinking") == 0) {
            const struct kw_node *data = kw_node_get(b, "data");
            if (data != NULL && data->type == KW_NODE_STRING)
                dp_tr_reasoning_redacted(&rs, data->str, data->len);
            continue;
        }
        if (strcmp(ty, "tool_use") == 0) {
            const struct kw_node *id = kw_node_get(b, "id"), *name = kw_node_get(b, "name");
            if (id == NULL || id->type != KW_NODE_STRING || name == NULL ||
                name->type != KW_NODE_STRING)
                continue;
            if (dp_tr_format_tool(r, name->str, name->len)) { /* the answer, as JSON text */
                const struct kw_node *input = kw_node_get(b, "input");
                if (input != NULL)
                    kw_json_write(input, &text);
                any = answered = true;
                continue;
            }
            dp_tr_tool_call_json(&calls, id->str, id->len, name->str, name->len,
                                 kw_node_get(b, "input"));
        } else if (t != NULL && t->type == KW_NODE_STRING) {
            kw_buf_append(&text, t->str, t->len);
            any = true;
        }
    }
    const char *fr = finish_reason(kw_node_get(root, "stop_reason"));
    if (answered && calls.len == 0 && fr != NULL && strcmp(fr, "tool_calls") == 0)
        fr = "stop"; /* the structured answer is the message, not a call */
    int rc = dp_tr_completion_r(out, r, &st->tr.ident, any ? &text : NULL, &rs, &calls, fr);
    kw_buf_cleanup(&text);
    kw_buf_cleanup(&calls);
    dp_tr_reasoning_cleanup(&rs);
    return rc;
}

static int anthropic_on_event(struct dp_request *r, const char *raw, size_t raw_len,
                              const char *event, const char *data, size_t data_len,
                              struct kw_buf *out)
{
    (void)raw;
    (void)raw_len;
    struct anth_state *st = state_of(r);
    struct kw_node *ev;
    char err[128];
    kw_arena_reset(r->scratch);
    if (st == NULL || kw_json_parse(r->scratch, data, data_len, &ev, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    const struct kw_node *tn = kw_node_get(ev, "type");
    const char *type = tn != NULL && tn->type == KW_NODE_STRING ? tn->str : event;
    if (strcmp(type, "message_start") == 0) {
        const struct kw_node *msg = kw_node_get(ev, "message");
        dp_tr_copy(st->tr.ident.id, sizeof(st->tr.ident.id), kw_node_get(msg, "id"), "msg");
        dp_tr_copy(st->tr.ident.model, sizeof(st->tr.ident.model), kw_node_get(msg, "model"),
                   r->upstream_model);
        read_usage(st, kw_node_get(msg, "usage"));
        r->usage.input_seen = st->input + st->cache_read + st->cache_create; /* a stream cut */
        return dp_tr_chunk_role(out, &st->tr);
    }
    if (strcmp(type, "content_block_start") == 0) {
        const struct kw_node *b = kw_node_get(ev, "content_block");
        const struct kw_node *bt = kw_node_get(b, "type");
        const char *ty = bt != NULL && bt->type == KW_NODE_STRING ? bt->str : "";
        st->tr.tool_open = strcmp(ty, "tool_use") == 0;
        st->tr.thinking_open = strcmp(ty, "thinking") == 0;
        const struct kw_node *bn = kw_node_get(b, "name");
        if (st->tr.tool_open && bn != NULL && bn->type == KW_NODE_STRING &&
            dp_tr_format_tool(r, bn->str, bn->len)) { /* its input streams as the content */
            st->tr.tool_open = false;
            st->tr.answer_open = st->tr.answered = true;
            return KW_OK;
        }
        if (strcmp(ty, "redacted_thinking") == 0) {
            const struct kw_node *rd = kw_node_get(b, "data");
            if (rd == NULL || rd->type != KW_NODE_STRING)
                return KW_OK;
            struct kw_buf blk;
            kw_buf_init(&blk, DP_MAX_SSE_EVENT);
            kw_buf_puts(&blk, "{\"type\":\"redacted_thinking\",\"data\":");
            kw_json_write_string(&blk, rd->str, rd->len);
            kw_buf_puts(&blk, "}");
            int rc = dp_tr_chunk_thinking_block(out, &st->tr, blk.data, blk.len);
            kw_buf_cleanup(&blk);
            return rc;
        }
        if (!st->tr.tool_open)
            return KW_OK;
        const struct kw_node *id = kw_node_get(b, "id"), *name = kw_node_get(b, "name");
        if (id == NULL || id->type != KW_NODE_STRING || name == NULL ||
            name->type != KW_NODE_STRING)
            return KW_ERROR;
        return dp_tr_chunk_tool(out, &st->tr, id->str, id->len, name->str, name->len, "", 0);
    }
    if (strcmp(type, "content_block_delta") == 0) {
        const struct kw_node *d = kw_node_get(ev, "delta");
        const struct kw_node *text = kw_node_get(d, "text");
        const struct kw_node *partial = kw_node_get(d, "partial_json");
        if (st->tr.answer_open && partial != NULL && partial->type == KW_NODE_STRING)
            return partial->len > 0 ? dp_tr_chunk_text(out, &st->tr, partial->str, partial->len)
                                    : KW_OK;
        if (st->tr.tool_open && partial != NULL && partial->type == KW_NODE_STRING)
            return partial->len > 0 ? dp_tr_chunk_args(out, &st->tr, partial->str, partial->len)
                                    : KW_OK;
        if (text != NULL && text->type == KW_NODE_STRING)
            return dp_tr_chunk_text(out, &st->tr, text->str, text->len);
        const struct kw_node *th = kw_node_get(d, "thinking"), *sig = kw_node_get(d, "signature");
        if (th != NULL && th->type == KW_NODE_STRING)
            return dp_tr_chunk_reasoning(out, &st->tr, th->str, th->len);
        if (sig != NULL && sig->type == KW_NODE_STRING) { /* the block's signature: its end */
            struct kw_buf blk;
            kw_buf_init(&blk, DP_MAX_SSE_EVENT);
            kw_buf_puts(&blk, "{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":");
            kw_json_write_string(&blk, sig->str, sig->len);
            kw_buf_puts(&blk, "}");
            int rc = dp_tr_chunk_thinking_block(out, &st->tr, blk.data, blk.len);
            kw_buf_cleanup(&blk);
            return rc;
        }
        return KW_OK; /* citations deltas */
    }
    if (strcmp(type, "content_block_stop") == 0) {
        st->tr.tool_open = st->tr.thinking_open = st->tr.answer_open = false;
        return KW_OK;
    }
    if (strcmp(type, "message_delta") == 0) {
        read_usage(st, kw_node_get(ev, "usage"));
        return dp_tr_chunk_finish(
            out, &st->tr, finish_reason(kw_node_get(kw_node_get(ev, "delta"), "stop_reason")));
    }
    if (strcmp(type, "message_stop") == 0) {
        set_usage(r, st);
        return dp_tr_stream_end(out, r, &st->tr);
    }
    if (strcmp(type, "error") == 0) {
        const struct kw_node *e = kw_node_get(ev, "error");
        const struct kw_node *msg = kw_node_get(e, "message"), *et = kw_node_get(e, "type");
        bool m = msg != NULL && msg->type == KW_NODE_STRING;
        return dp_tr_error_event(
            out, m ? msg->str : "upstream error", m ? msg->len : 14,
            et != NULL && et->type == KW_NODE_STRING ? et->str : "server_error", NULL);
    }
    return KW_OK; /* ping and event types added later */
}

/* {"type":"error","error":{"type","message"}} -> {"error":{"message","type","param","code"}} */
int dp_anthropic_error(long status, const struct kw_node *root, struct kw_buf *out)
{
    const struct kw_node *e = kw_node_get(root, "error");
    const struct kw_node *msg = kw_node_get(e, "message"), *type = kw_node_get(e, "type");
    if (msg == NULL || msg->type != KW_NODE_STRING)
        return KW_OK;
    return dp_openai_error(out, status, msg->str, msg->len,
                           type != NULL && type->type == KW_NODE_STRING ? type->str : NULL, NULL,
                           NULL);
}

static int anthropic_on_error(struct dp_request *r, long status, const char *body, size_t len,
                              struct kw_buf *out)
{
    const struct kw_node *root = dp_tr_error_json(r, body, len);
    return root != NULL ? dp_anthropic_error(status, root, out) : KW_OK;
}

const struct dp_provider_ops dp_provider_anthropic = {
    .name = "anthropic",
    .build = anthropic_build,
    .on_response = anthropic_on_response,
    .on_event = anthropic_on_event,
    .on_error = anthropic_on_error,
};
