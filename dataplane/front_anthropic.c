/* The Anthropic Messages API as an input: POST /v1/messages is translated into an OpenAI
 * chat request, routed like any other to any backend (its provider translates further when
 * the backend is not OpenAI-shaped), and the OpenAI answer is translated back.
 *
 * Request (Anthropic -> OpenAI chat):
 *   model, max_tokens (required), temperature, top_p, stop_sequences -> stop,
 *   metadata.user_id -> user, stream (+ stream_options.include_usage: the usage of
 *   message_delta needs it); system (a string or text blocks) -> a system message;
 *   messages: text -> text parts, image (base64 or url source) -> image_url parts,
 *   tool_result blocks -> tool messages (before the user message holding the rest of the
 *   turn; images inside them move to that message), assistant tool_use -> tool_calls
 *   (input serialized into arguments), thinking and redacted_thinking blocks -> the
 *   assistant's thinking_blocks (kept, signatures included, for an Anthropic backend);
 *   thinking {enabled, budget_tokens} -> the exact budget for an Anthropic backend and
 *   reasoning_effort (<= 2048 low, <= 8192 medium, else high) for the others; tools {name,
 *   description, input_schema} -> functions; tool_choice auto/any/tool/none (+
 *   disable_parallel_tool_use) -> auto/required/{function}/none (+ parallel_tool_calls:
 *   false). top_k, service_tier and cache_control are accepted and dropped; any other
 *   field is refused as Anthropic refuses it ("Extra inputs are not permitted").
 *
 * Response: choices[0].message -> content blocks (thinking_blocks as they came, else
 * reasoning_content as a thinking block without a signature; text, tool_use with the
 * arguments parsed into input), finish_reason -> stop_reason (stop: end_turn, length: max_tokens,
 * tool_calls: tool_use, content_filter: refusal), usage -> input_tokens (prompt minus
 * cached), output_tokens, cache_read_input_tokens. id "msg_" + the request id, model as the
 * client named it.
 *
 * Stream: message_start when the stream starts (usage unknown yet: zeros; the cumulative
 * usage comes in message_delta, as Anthropic's own streams allow), then per OpenAI chunk:
 * content -> a text block (content_block_start once) and text_delta; a tool call ->
 * content_block_stop of the open block, content_block_start tool_use {id, name, input: {}}
 * and its arguments as input_json_delta; finish_reason kept; data: [DONE] ->
 * content_block_stop, message_delta {stop_reason, usage}, message_stop. Error chunks and
 * gateway errors -> event: error. Keep-alives are ping events. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"

#define ANTH_MAX_TOOLS 128 /* tool calls in one streamed message */

/* ---- errors ---------------------------------------------------------------------------- */

static const char *error_type(unsigned status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

static int write_error(struct kw_buf *out, const char *type, const char *msg, size_t len,
                       const char *request_id)
{
    kw_buf_puts(out, "{\"type\":\"error\",\"error\":{\"type\":");
    kw_json_write_string(out, type, strlen(type));
    kw_buf_puts(out, ",\"message\":");
    kw_json_write_string(out, msg, len);
    kw_buf_puts(out, "},\"request_id\":");
    kw_json_write_string(out, request_id, strlen(request_id));
    return kw_buf_puts(out, "}");
}

static int anth_error_body(struct dp_request *r, unsigned status, const char *msg, size_t len,
                           struct kw_buf *out)
{
    return write_error(out, error_type(status), msg, len, r->id);
}

/* A refusal with the field path in the message, as Anthropic words them. */
static int bad(struct dp_request *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(struct dp_request *r, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dp_error_set(r, 400, "invalid_request_error", NULL, NULL, "%s", msg);
    return KW_ERROR;
}

/* ---- request ----------------------------------------------------------------------------- */

static bool is(const struct kw_node *n, enum kw_node_type t)
{
    return n != NULL && n->type == t;
}

static bool is_number(const struct kw_node *n)
{
    return n != NULL && (n->type == KW_NODE_INT || n->type == KW_NODE_FLOAT);
}

static struct kw_node *map_of(struct kw_arena *a, const char *k1, struct kw_node *v1,
                              const char *k2, struct kw_node *v2)
{
    struct kw_node *m = kw_node_new(a, KW_NODE_MAP);
    if (m == NULL || kw_node_map_put(a, m, k1, v1) != KW_OK ||
        (k2 != NULL && kw_node_map_put(a, m, k2, v2) != KW_OK))
        return NULL;
    return m;
}

static struct kw_node *text_part(struct kw_arena *a, const struct kw_node *text)
{
    return map_of(a, "type", kw_node_cstring(a, "text"), "text",
                  kw_node_string(a, text->str, text->len));
}

/* An image block (base64 or url source) as an image_url part; NULL with a failure prepared. */
static struct kw_node *image_part(struct dp_request *r, const struct kw_node *blk, const char *path)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *src = kw_node_get(blk, "source");
    const struct kw_node *type = kw_node_get(src, "type");
    struct kw_node *url = NULL;
    if (is(type, KW_NODE_STRING) && strcmp(type->str, "base64") == 0) {
        const struct kw_node *mt = kw_node_get(src, "media_type"), *data = kw_node_get(src, "data");
        if (!is(mt, KW_NODE_STRING) || !is(data, KW_NODE_STRING)) {
            bad(r, "%s.source: media_type and data must be strings", path);
            return NULL;
        }
        size_t n = 5 + mt->len + 8 + data->len;
        char *s = kw_arena_alloc(a, n + 1);
        if (s != NULL) {
            snprintf(s, n + 1, "data:%s;base64,", mt->str);
            memcpy(s + 5 + mt->len + 8, data->str, data->len + 1);
            url = kw_node_string(a, s, n);
        }
    } else if (is(type, KW_NODE_STRING) && strcmp(type->str, "url") == 0) {
        const struct kw_node *u = kw_node_get(src, "url");
        if (!is(u, KW_NODE_STRING)) {
            bad(r, "%s.source.url: Field required", path);
            return NULL;
        }
        url = kw_node_string(a, u->str, u->len);
    } else {
        bad(r, "%s.source.type: Input should be 'base64' or 'url'", path);
        return NULL;
    }
    struct kw_node *p = map_of(a, "type", kw_node_cstring(a, "image_url"), "image_url",
                               map_of(a, "url", url, NULL, NULL));
    if (p == NULL)
        dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    return p;
}

/* The type of block j of message i; NULL with a failure prepared. */
static const char *block_type(struct dp_request *r, const struct kw_node *b, const char *path)
{
    const struct kw_node *t = kw_node_get(b, "type");
    if (!is(b, KW_NODE_MAP) || !is(t, KW_NODE_STRING)) {
        bad(r, "%s.type: Field required", path);
        return NULL;
    }
    return t->str;
}

static const struct kw_node *block_text(struct dp_request *r, const struct kw_node *b,
                                        const char *path)
{
    const struct kw_node *t = kw_node_get(b, "text");
    if (!is(t, KW_NODE_STRING))
        bad(r, "%s.text: Field required", path);
    return is(t, KW_NODE_STRING) ? t : NULL;
}

/* A tool_result block as a tool message (pushed to msgs); images inside go to parts. */
static int tool_result(struct dp_request *r, const struct kw_node *b, const char *path,
                       struct kw_node *msgs, struct kw_node *parts)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *id = kw_node_get(b, "tool_use_id"), *c = kw_node_get(b, "content");
    if (!is(id, KW_NODE_STRING))
        return bad(r, "%s.tool_use_id: Field required", path);
    struct kw_node *content;
    if (c == NULL || c->type == KW_NODE_NULL) {
        content = kw_node_cstring(a, "");
    } else if (c->type == KW_NODE_STRING) {
        content = kw_node_string(a, c->str, c->len);
    } else if (c->type == KW_NODE_SEQ) {
        struct kw_buf text;
        kw_buf_init(&text, 64u << 20);
        for (size_t k = 0; k < c->n; k++) {
            char sub[160];
            snprintf(sub, sizeof(sub), "%s.content.%zu", path, k);
            const char *t = block_type(r, c->items[k], sub);
            const struct kw_node *tx;
            struct kw_node *img;
            int rc = KW_ERROR;
            if (t == NULL)
                rc = KW_ERROR;
            else if (strcmp(t, "text") == 0 && (tx = block_text(r, c->items[k], sub)) != NULL)
                rc = (text.len > 0 ? kw_buf_puts(&text, "\n") : KW_OK) |
                     kw_buf_append(&text, tx->str, tx->len);
            else if (strcmp(t, "image") == 0 && (img = image_part(r, c->items[k], sub)) != NULL)
                rc = kw_node_seq_push(a, parts, img);
            else if (strcmp(t, "text") != 0 && strcmp(t, "image") != 0)
                bad(r, "%s.type: '%s' is not supported in a tool_result by this gateway", sub, t);
            if (rc != KW_OK) {
                kw_buf_cleanup(&text);
                return KW_ERROR;
            }
        }
        content = kw_node_string(a, text.data != NULL ? text.data : "", text.len);
        kw_buf_cleanup(&text);
    } else {
        return bad(r, "%s.content: Input should be a valid string or list", path);
    }
    struct kw_node *m = map_of(a, "role", kw_node_cstring(a, "tool"), "tool_call_id",
                               kw_node_string(a, id->str, id->len));
    if (m == NULL || kw_node_map_put(a, m, "content", content) != KW_OK ||
        kw_node_seq_push(a, msgs, m) != KW_OK)
        return bad(r, "out of memory");
    return KW_OK;
}

static int user_turn(struct dp_request *r, size_t i, const struct kw_node *blocks,
                     struct kw_node *msgs)
{
    struct kw_arena *a = r->arena;
    struct kw_node *parts = kw_node_new(a, KW_NODE_SEQ);
    if (parts == NULL)
        return bad(r, "out of memory");
    for (size_t j = 0; j < blocks->n; j++) {
        char path[96];
        snprintf(path, sizeof(path), "messages.%zu.content.%zu", i, j);
        const struct kw_node *b = blocks->items[j], *text;
        const char *t = block_type(r, b, path);
        struct kw_node *img;
        if (t == NULL)
            return KW_ERROR;
        if (strcmp(t, "text") == 0) {
            if ((text = block_text(r, b, path)) == NULL)
                return KW_ERROR;
            kw_node_seq_push(a, parts, text_part(a, text));
        } else if (strcmp(t, "image") == 0) {
            if ((img = image_part(r, b, path)) == NULL)
                return KW_ERROR;
            kw_node_seq_push(a, parts, img);
        } else if (strcmp(t, "tool_result") == 0) {
            if (tool_result(r, b, path, msgs, parts) != KW_OK)
                return KW_ERROR;
        } else {
            return bad(r, "%s.type: '%s' blocks are not supported by this gateway", path, t);
        }
    }
    if (parts->n == 0)
        return KW_OK; /* only tool results */
    return kw_node_seq_push(
               a, msgs, map_of(a, "role", kw_node_cstring(a, "user"), "content", parts)) == KW_OK
               ? KW_OK
               : bad(r, "out of memory");
}

static int assistant_turn(struct dp_request *r, size_t i, const struct kw_node *blocks,
                          struct kw_node *msgs)
{
    struct kw_arena *a = r->arena;
    struct kw_buf text;
    kw_buf_init(&text, 64u << 20);
    struct kw_node *calls = kw_node_new(a, KW_NODE_SEQ);
    struct kw_node *thinking = kw_node_new(a, KW_NODE_SEQ);
    int rc = calls != NULL && thinking != NULL ? KW_OK : bad(r, "out of memory");
    for (size_t j = 0; rc == KW_OK && j < blocks->n; j++) {
        char path[96];
        snprintf(path, sizeof(path), "messages.%zu.content.%zu", i, j);
        const struct kw_node *b = blocks->items[j], *tx;
        const char *t = block_type(r, b, path);
        if (t == NULL) {
            rc = KW_ERROR;
        } else if (strcmp(t, "text") == 0) {
            rc = (tx = block_text(r, b, path)) != NULL ? kw_buf_append(&text, tx->str, tx->len)
                                                       : KW_ERROR;
        } else if (strcmp(t, "tool_use") == 0) {
            const struct kw_node *id = kw_node_get(b, "id"), *name = kw_node_get(b, "name");
            const struct kw_node *input = kw_node_get(b, "input");
            if (!is(id, KW_NODE_STRING) || !is(name, KW_NODE_STRING) || !is(input, KW_NODE_MAP)) {
                rc = bad(r, "%s: a tool_use block needs id, name and an input object", path);
                continue;
            }
            struct kw_buf args;
            kw_buf_init(&args, 64u << 20);
            rc = kw_json_write(input, &args);
            struct kw_node *fn =
                map_of(a, "name", kw_node_string(a, name->str, name->len), "arguments",
                       kw_node_string(a, args.data != NULL ? args.data : "{}", args.len));
            kw_buf_cleanup(&args);
            struct kw_node *call = map_of(a, "id", kw_node_string(a, id->str, id->len), "type",
                                          kw_node_cstring(a, "function"));
            if (rc != KW_OK || fn == NULL || call == NULL ||
                kw_node_map_put(a, call, "function", fn) != KW_OK ||
                kw_node_seq_push(a, calls, call) != KW_OK)
                rc = bad(r, "out of memory");
        } else if (strcmp(t, "thinking") == 0 || strcmp(t, "redacted_thinking") == 0) {
            /* kept with their signatures for an Anthropic backend (thinking_blocks) */
            rc = kw_node_seq_push(a, thinking, (struct kw_node *)b);
        } else {
            rc = bad(r, "%s.type: '%s' blocks are not supported by this gateway", path, t);
        }
    }
    struct kw_node *m = NULL;
    if (rc == KW_OK) {
        struct kw_node *content =
            text.len > 0 || calls->n == 0
                ? kw_node_string(a, text.data != NULL ? text.data : "", text.len)
                : kw_node_new(a, KW_NODE_NULL);
        m = map_of(a, "role", kw_node_cstring(a, "assistant"), "content", content);
        if (m == NULL || (calls->n > 0 && kw_node_map_put(a, m, "tool_calls", calls) != KW_OK) ||
            (thinking->n > 0 && kw_node_map_put(a, m, "thinking_blocks", thinking) != KW_OK) ||
            kw_node_seq_push(a, msgs, m) != KW_OK)
            rc = bad(r, "out of memory");
    }
    kw_buf_cleanup(&text);
    return rc;
}

static int messages(struct dp_request *r, const struct kw_node *in, struct kw_node *msgs)
{
    struct kw_arena *a = r->arena;
    for (size_t i = 0; i < in->n; i++) {
        const struct kw_node *m = in->items[i];
        const struct kw_node *role = kw_node_get(m, "role"), *c = kw_node_get(m, "content");
        if (!is(m, KW_NODE_MAP) || !is(role, KW_NODE_STRING) ||
            (strcmp(role->str, "user") != 0 && strcmp(role->str, "assistant") != 0))
            return bad(r, "messages.%zu.role: Input should be 'user' or 'assistant'", i);
        bool user = role->str[0] == 'u';
        if (is(c, KW_NODE_STRING)) {
            if (kw_node_seq_push(a, msgs,
                                 map_of(a, "role", kw_node_cstring(a, role->str), "content",
                                        kw_node_string(a, c->str, c->len))) != KW_OK)
                return bad(r, "out of memory");
        } else if (is(c, KW_NODE_SEQ)) {
            if ((user ? user_turn(r, i, c, msgs) : assistant_turn(r, i, c, msgs)) != KW_OK)
                return KW_ERROR;
        } else {
            return bad(r, "messages.%zu.content: Input should be a valid string or list", i);
        }
    }
    return KW_OK;
}

static struct kw_node *system_message(struct dp_request *r, const struct kw_node *sys)
{
    struct kw_arena *a = r->arena;
    struct kw_node *content = NULL;
    if (sys->type == KW_NODE_STRING) {
        content = kw_node_string(a, sys->str, sys->len);
    } else if (sys->type == KW_NODE_SEQ) {
        content = kw_node_new(a, KW_NODE_SEQ);
        for (size_t j = 0; content != NULL && j < sys->n; j++) {
            char path[64];
            snprintf(path, sizeof(path), "system.%zu", j);
            const char *t = block_type(r, sys->items[j], path);
            const struct kw_node *text;
            if (t == NULL)
                return NULL;
            if (strcmp(t, "text") != 0) {
                bad(r, "%s.type: Input should be 'text'", path);
                return NULL;
            }
            if ((text = block_text(r, sys->items[j], path)) == NULL)
                return NULL;
            kw_node_seq_push(a, content, text_part(a, text));
        }
    } else {
        bad(r, "system: Input should be a valid string or list");
        return NULL;
    }
    return map_of(a, "role", kw_node_cstring(a, "system"), "content", content);
}

static struct kw_node *tools(struct dp_request *r, const struct kw_node *in)
{
    struct kw_arena *a = r->arena;
    struct kw_node *out = kw_node_new(a, KW_NODE_SEQ);
    if (in->type != KW_NODE_SEQ) {
        bad(r, "tools: Input should be a valid list");
        return NULL;
    }
    for (size_t j = 0; out != NULL && j < in->n; j++) {
        const struct kw_node *t = in->items[j];
        const struct kw_node *type = kw_node_get(t, "type"), *name = kw_node_get(t, "name");
        const struct kw_node *desc = kw_node_get(t, "description");
        const struct kw_node *schema = kw_node_get(t, "input_schema");
        if (is(type, KW_NODE_STRING) && strcmp(type->str, "custom") != 0) {
            bad(r, "tools.%zu.type: server tool '%s' is not supported by this gateway", j,
                type->str);
            return NULL;
        }
        if (!is(name, KW_NODE_STRING) || !is(schema, KW_NODE_MAP)) {
            bad(r, "tools.%zu: a tool needs a name and an input_schema object", j);
            return NULL;
        }
        struct kw_node *fn = map_of(a, "name", kw_node_string(a, name->str, name->len),
                                    "parameters", (struct kw_node *)schema);
        if (fn != NULL && is(desc, KW_NODE_STRING))
            kw_node_map_put(a, fn, "description", kw_node_string(a, desc->str, desc->len));
        kw_node_seq_push(a, out, map_of(a, "type", kw_node_cstring(a, "function"), "function", fn));
    }
    return out;
}

/* tool_choice -> OpenAI's (set in out), and parallel_tool_calls. */
static int tool_choice(struct dp_request *r, const struct kw_node *tc, bool have_tools,
                       struct kw_node *out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *type = kw_node_get(tc, "type"), *name = kw_node_get(tc, "name");
    const struct kw_node *dp = kw_node_get(tc, "disable_parallel_tool_use");
    struct kw_node *v = NULL;
    if (!is(type, KW_NODE_STRING))
        return bad(r, "tool_choice.type: Field required");
    if (strcmp(type->str, "auto") == 0)
        v = kw_node_cstring(a, "auto");
    else if (strcmp(type->str, "any") == 0)
        v = kw_node_cstring(a, "required");
    else if (strcmp(type->str, "none") == 0)
        v = kw_node_cstring(a, "none");
    else if (strcmp(type->str, "tool") == 0 && is(name, KW_NODE_STRING))
        v = map_of(a, "type", kw_node_cstring(a, "function"), "function",
                   map_of(a, "name", kw_node_string(a, name->str, name->len), NULL, NULL));
    else if (strcmp(type->str, "tool") == 0)
        return bad(r, "tool_choice.name: Field required");
    else
        return bad(r, "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'");
    if (!have_tools)
        return KW_OK; /* OpenAI refuses a tool_choice without tools; it means nothing here */
    int rc = kw_node_map_put(a, out, "tool_choice", v);
    if (is(dp, KW_NODE_BOOL) && dp->b)
        rc |= kw_node_map_put(a, out, "parallel_tool_calls", kw_node_bool(a, false));
    return rc == KW_OK ? KW_OK : bad(r, "out of memory");
}

/* thinking {type: enabled, budget_tokens} -> the exact budget for an Anthropic backend
 * (r->thinking_budget) and reasoning_effort for the others; {type: disabled}: nothing. */
static int thinking(struct dp_request *r, const struct kw_node *v, struct kw_node *out)
{
    const struct kw_node *type = kw_node_get(v, "type"), *budget = kw_node_get(v, "budget_tokens");
    if (!is(v, KW_NODE_MAP) || !is(type, KW_NODE_STRING))
        return bad(r, "thinking.type: Field required");
    if (strcmp(type->str, "disabled") == 0)
        return KW_OK;
    if (strcmp(type->str, "enabled") != 0)
        return bad(r, "thinking.type: Input should be 'enabled' or 'disabled'");
    if (!is(budget, KW_NODE_INT) || budget->i < 1024)
        return bad(r, "thinking.enabled.budget_tokens: Input should be greater than or equal "
                      "to 1024");
    r->thinking_budget = budget->i;
    const char *effort = budget->i <= 2048 ? "low" : budget->i <= 8192 ? "medium" : "high";
    return kw_node_map_put(r->arena, out, "reasoning_effort", kw_node_cstring(r->arena, effort)) ==
                   KW_OK
               ? KW_OK
               : bad(r, "out of memory");
}

static int anth_request(struct dp_request *r)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->json;
    struct kw_node *out = kw_node_new(a, KW_NODE_MAP), *msgs = kw_node_new(a, KW_NODE_SEQ);
    if (out == NULL || msgs == NULL)
        return bad(r, "out of memory");
    static const char *const dropped[] = {"top_k", "service_tier", "cache_control"};
    static const char *const copied[] = {"model", "temperature", "top_p"};
    const struct kw_node *msgs_in = NULL, *sys = NULL, *tl = NULL, *tc = NULL, *max = NULL;
    for (size_t i = 0; i < in->n; i++) {
        const char *k = in->pairs[i].key->str;
        const struct kw_node *v = in->pairs[i].val;
        bool known = false;
        for (size_t j = 0; j < KW_ARRAY_LEN(dropped) && !known; j++)
            known = strcmp(k, dropped[j]) == 0;
        for (size_t j = 0; j < KW_ARRAY_LEN(copied) && !known; j++)
            if (strcmp(k, copied[j]) == 0) {
                known = true;
                if (j > 0 && !is_number(v))
                    return bad(r, "%s: Input should be a valid number", k);
                kw_node_map_put(a, out, k, (struct kw_node *)v);
            }
        if (known)
            continue;
        if (strcmp(k, "max_tokens") == 0) {
            max = v;
        } else if (strcmp(k, "thinking") == 0) {
            if (thinking(r, v, out) != KW_OK)
                return KW_ERROR;
        } else if (strcmp(k, "messages") == 0) {
            msgs_in = v;
        } else if (strcmp(k, "system") == 0) {
            sys = v;
        } else if (strcmp(k, "tools") == 0) {
            tl = v;
        } else if (strcmp(k, "tool_choice") == 0) {
            tc = v;
        } else if (strcmp(k, "stop_sequences") == 0) {
            for (size_t j = 0; j < (is(v, KW_NODE_SEQ) ? v->n : 0); j++)
                if (!is(v->items[j], KW_NODE_STRING))
                    return bad(r, "stop_sequences.%zu: Input should be a valid string", j);
            if (!is(v, KW_NODE_SEQ))
                return bad(r, "stop_sequences: Input should be a valid list");
            if (v->n > 0)
                kw_node_map_put(a, out, "stop", (struct kw_node *)v);
        } else if (strcmp(k, "stream") == 0) {
            if (!is(v, KW_NODE_BOOL))
                return bad(r, "stream: Input should be a valid boolean");
            kw_node_map_put(a, out, "stream", (struct kw_node *)v);
            if (v->b)
                kw_node_map_put(a, out, "stream_options",
                                map_of(a, "include_usage", kw_node_bool(a, true), NULL, NULL));
        } else if (strcmp(k, "metadata") == 0) {
            const struct kw_node *u = kw_node_get(v, "user_id");
            if (is(u, KW_NODE_STRING))
                kw_node_map_put(a, out, "user", (struct kw_node *)u);
        } else {
            return bad(r, "%s: Extra inputs are not permitted", k);
        }
    }
    if (kw_node_get(in, "model") == NULL)
        return bad(r, "model: Field required");
    if (max == NULL)
        return bad(r, "max_tokens: Field required");
    if (!is(max, KW_NODE_INT) || max->i < 1)
        return bad(r, "max_tokens: Input should be an integer greater than or equal to 1");
    kw_node_map_put(a, out, "max_tokens", (struct kw_node *)max);
    if (msgs_in == NULL)
        return bad(r, "messages: Field required");
    if (!is(msgs_in, KW_NODE_SEQ))
        return bad(r, "messages: Input should be a valid list");
    if (sys != NULL && !(is(sys, KW_NODE_STRING) && sys->len == 0)) {
        struct kw_node *sm = system_message(r, sys);
        if (sm == NULL || kw_node_seq_push(a, msgs, sm) != KW_OK)
            return KW_ERROR;
    }
    if (messages(r, msgs_in, msgs) != KW_OK)
        return KW_ERROR;
    kw_node_map_put(a, out, "messages", msgs);
    if (tl != NULL) {
        struct kw_node *t = tools(r, tl);
        if (t == NULL)
            return KW_ERROR;
        if (t->n > 0)
            kw_node_map_put(a, out, "tools", t);
    }
    if (tc != NULL && tool_choice(r, tc, tl != NULL && tl->n > 0, out) != KW_OK)
        return KW_ERROR;
    r->json = out;
    return KW_OK;
}

/* ---- response ---------------------------------------------------------------------------- */

static const char *stop_reason(const struct kw_node *fr)
{
    if (!is(fr, KW_NODE_STRING))
        return "end_turn";
    if (strcmp(fr->str, "length") == 0)
        return "max_tokens";
    if (strcmp(fr->str, "tool_calls") == 0 || strcmp(fr->str, "function_call") == 0)
        return "tool_use";
    if (strcmp(fr->str, "content_filter") == 0)
        return "refusal";
    return "end_turn";
}

static int usage_json(struct kw_buf *out, const struct dp_request *r)
{
    int64_t cached = r->usage.cached, prompt = r->usage.prompt;
    return kw_buf_printf(out,
                         "{\"input_tokens\":%lld,\"output_tokens\":%lld,"
                         "\"cache_read_input_tokens\":%lld}",
                         (long long)(prompt > cached ? prompt - cached : 0),
                         (long long)r->usage.completion, (long long)cached);
}

static void write_str(struct kw_buf *out, const char *s)
{
    kw_json_write_string(out, s, strlen(s));
}

static int anth_response(struct dp_request *r, const char *body, size_t len, struct kw_buf *out)
{
    struct kw_node *root;
    char err[128];
    if (kw_json_parse(r->arena, body, len, &root, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    const struct kw_node *choices = kw_node_get(root, "choices");
    const struct kw_node *c0 =
        is(choices, KW_NODE_SEQ) && choices->n > 0 ? choices->items[0] : NULL;
    const struct kw_node *msg = kw_node_get(c0, "message");
    if (!is(msg, KW_NODE_MAP))
        return KW_ERROR;
    const struct kw_node *fr = kw_node_get(c0, "finish_reason");
    const struct kw_node *content = kw_node_get(msg, "content");
    const struct kw_node *refusal = kw_node_get(msg, "refusal");
    const struct kw_node *calls = kw_node_get(msg, "tool_calls");
    kw_buf_puts(out, "{\"id\":");
    char id[64];
    snprintf(id, sizeof(id), "msg_%s", r->id);
    write_str(out, id);
    kw_buf_puts(out, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    write_str(out, r->model);
    kw_buf_puts(out, ",\"content\":[");
    bool any = false;
    const struct kw_node *tb = kw_node_get(msg, "thinking_blocks");
    const struct kw_node *rc_ = kw_node_get(msg, "reasoning_content");
    if (is(tb, KW_NODE_SEQ) && tb->n > 0) { /* an Anthropic backend's, signatures kept */
        for (size_t i = 0; i < tb->n; i++) {
            if (!is(tb->items[i], KW_NODE_MAP))
                continue;
            if (any)
                kw_buf_puts(out, ",");
            kw_json_write(tb->items[i], out);
            any = true;
        }
    } else if (is(rc_, KW_NODE_STRING) && rc_->len > 0) { /* other providers: no signature */
        kw_buf_puts(out, "{\"type\":\"thinking\",\"thinking\":");
        kw_json_write_string(out, rc_->str, rc_->len);
        kw_buf_puts(out, ",\"signature\":\"\"}");
        any = true;
    }
    const char *reason = stop_reason(fr);
    if (!is(content, KW_NODE_STRING) && is(refusal, KW_NODE_STRING)) {
        content = refusal;
        reason = "refusal";
    }
    if (is(content, KW_NODE_STRING) && content->len > 0) {
        kw_buf_puts(out, any ? ",{\"type\":\"text\",\"text\":" : "{\"type\":\"text\",\"text\":");
        kw_json_write_string(out, content->str, content->len);
        kw_buf_puts(out, "}");
        any = true;
    }
    for (size_t i = 0; is(calls, KW_NODE_SEQ) && i < calls->n; i++) {
        const struct kw_node *cid = kw_node_get(calls->items[i], "id");
        const struct kw_node *fn = kw_node_get(calls->items[i], "function");
        const struct kw_node *name = kw_node_get(fn, "name"), *args = kw_node_get(fn, "arguments");
        struct kw_node *input = NULL;
        if (!is(cid, KW_NODE_STRING) || !is(name, KW_NODE_STRING))
            return KW_ERROR;
        if (!is(args, KW_NODE_STRING) || args->len == 0)
            input = kw_node_new(r->arena, KW_NODE_MAP);
        else if (kw_json_parse(r->arena, args->str, args->len, &input, err, sizeof(err)) != KW_OK ||
                 input->type != KW_NODE_MAP)
            return KW_ERROR; /* Anthropic's input is always an object */
        kw_buf_puts(out,
                    any ? ",{\"type\":\"tool_use\",\"id\":" : "{\"type\":\"tool_use\",\"id\":");
        kw_json_write_string(out, cid->str, cid->len);
        kw_buf_puts(out, ",\"name\":");
        kw_json_write_string(out, name->str, name->len);
        kw_buf_puts(out, ",\"input\":");
        kw_json_write(input, out);
        kw_buf_puts(out, "}");
        any = true;
    }
    kw_buf_puts(out, "],\"stop_reason\":");
    write_str(out, reason);
    kw_buf_puts(out, ",\"stop_sequence\":null,\"usage\":");
    usage_json(out, r);
    return kw_buf_puts(out, "}");
}

/* ---- stream ------------------------------------------------------------------------------ */

struct anth_stream {
    struct dp_sse sse; /* the OpenAI chunks the provider wrote */
    struct kw_buf *out;
    int open; /* index of the open content block; -1: none */
    bool open_tool;
    bool open_thinking;
    int nblocks;
    int tool_block[ANTH_MAX_TOOLS]; /* block index by OpenAI tool-call index; -1: none */
    const char *stop;               /* stop_reason from the last finish_reason */
    bool done;                      /* message_stop or an error event sent */
};

static struct anth_stream *stream_of(struct dp_request *r)
{
    if (r->front_state == NULL) {
        struct anth_stream *st = kw_arena_alloc(r->arena, sizeof(*st));
        if (st == NULL)
            return NULL;
        memset(st, 0, sizeof(*st));
        dp_sse_init(&st->sse, DP_MAX_SSE_EVENT);
        st->open = -1;
        for (size_t i = 0; i < ANTH_MAX_TOOLS; i++)
            st->tool_block[i] = -1;
        r->front_state = st;
    }
    return r->front_state;
}

static void anth_cleanup(struct dp_request *r)
{
    struct anth_stream *st = r->front_state;
    if (st != NULL)
        dp_sse_cleanup(&st->sse);
}

/* event: TYPE / data: {"type":"TYPE" + rest (a JSON object's remaining members) + } */
static int event(struct kw_buf *out, const char *type, const char *rest)
{
    kw_buf_printf(out, "event: %s\ndata: {\"type\":\"%s\"", type, type);
    kw_buf_puts(out, rest);
    return kw_buf_puts(out, "}\n\n");
}

static int anth_stream_begin(struct dp_request *r, struct kw_buf *out)
{
    if (stream_of(r) == NULL)
        return KW_ERROR;
    char id[64];
    snprintf(id, sizeof(id), "msg_%s", r->id);
    kw_buf_puts(out,
                "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":");
    write_str(out, id);
    kw_buf_puts(out, ",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    write_str(out, r->model);
    return kw_buf_puts(out, ",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,"
                            "\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n");
}

static int close_block(struct anth_stream *st)
{
    if (st->open < 0)
        return KW_OK;
    char rest[48];
    snprintf(rest, sizeof(rest), ",\"index\":%d", st->open);
    st->open = -1;
    return event(st->out, "content_block_stop", rest);
}

static int text_delta(struct anth_stream *st, const struct kw_node *text)
{
    struct kw_buf *out = st->out;
    if (st->open < 0 || st->open_tool || st->open_thinking) {
        close_block(st);
        st->open = st->nblocks++;
        st->open_tool = st->open_thinking = false;
        kw_buf_printf(out,
                      "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                      "\"index\":%d,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
                      st->open);
    }
    kw_buf_printf(out,
                  "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                  "\"index\":%d,\"delta\":{\"type\":\"text_delta\",\"text\":",
                  st->open);
    kw_json_write_string(out, text->str, text->len);
    return kw_buf_puts(out, "}}\n\n");
}

/* delta.reasoning_content -> a thinking block's thinking_delta */
static int thinking_delta(struct anth_stream *st, const struct kw_node *text)
{
    struct kw_buf *out = st->out;
    if (st->open < 0 || !st->open_thinking) {
        close_block(st);
        st->open = st->nblocks++;
        st->open_tool = false;
        st->open_thinking = true;
        kw_buf_printf(
            out,
            "event: content_block_start\ndata: {\"type\":\"content_block_start\","
            "\"index\":%d,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
            st->open);
    }
    kw_buf_printf(out,
                  "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                  "\"index\":%d,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":",
                  st->open);
    kw_json_write_string(out, text->str, text->len);
    return kw_buf_puts(out, "}}\n\n");
}

/* delta.thinking_blocks: a signature ends the open thinking block (signature_delta); a
 * redacted block is a block of its own. */
static int thinking_block(struct anth_stream *st, const struct kw_node *b)
{
    struct kw_buf *out = st->out;
    const struct kw_node *type = kw_node_get(b, "type"), *sig = kw_node_get(b, "signature");
    const struct kw_node *data = kw_node_get(b, "data");
    if (is(type, KW_NODE_STRING) && strcmp(type->str, "redacted_thinking") == 0 &&
        is(data, KW_NODE_STRING)) {
        close_block(st);
        st->open = st->nblocks++;
        st->open_tool = st->open_thinking = false;
        kw_buf_printf(out,
                      "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                      "\"index\":%d,\"content_block\":{\"type\":\"redacted_thinking\",\"data\":",
                      st->open);
        kw_json_write_string(out, data->str, data->len);
        kw_buf_puts(out, "}}\n\n");
        return close_block(st);
    }
    if (!is(sig, KW_NODE_STRING) || sig->len == 0 || st->open < 0 || !st->open_thinking)
        return KW_OK;
    kw_buf_printf(out,
                  "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                  "\"index\":%d,\"delta\":{\"type\":\"signature_delta\",\"signature\":",
                  st->open);
    kw_json_write_string(out, sig->str, sig->len);
    return kw_buf_puts(out, "}}\n\n");
}

static int tool_delta(struct dp_request *r, struct anth_stream *st, size_t pos,
                      const struct kw_node *call)
{
    struct kw_buf *out = st->out;
    const struct kw_node *ix = kw_node_get(call, "index"), *id = kw_node_get(call, "id");
    const struct kw_node *fn = kw_node_get(call, "function");
    const struct kw_node *name = kw_node_get(fn, "name"), *args = kw_node_get(fn, "arguments");
    int64_t k = is(ix, KW_NODE_INT) ? ix->i : (int64_t)pos;
    if (k < 0 || k >= ANTH_MAX_TOOLS) {
        snprintf(r->up.write_err, sizeof(r->up.write_err), "more than %d tool calls in one message",
                 ANTH_MAX_TOOLS);
        return KW_ERROR;
    }
    if (st->tool_block[k] < 0) {
        close_block(st);
        st->open = st->tool_block[k] = st->nblocks++;
        st->open_tool = true;
        st->open_thinking = false;
        kw_buf_printf(out,
                      "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                      "\"index\":%d,\"content_block\":{\"type\":\"tool_use\",\"id\":",
                      st->open);
        if (is(id, KW_NODE_STRING))
            kw_json_write_string(out, id->str, id->len);
        else
            kw_buf_printf(out, "\"toolu_%s_%lld\"", r->id, (long long)k);
        kw_buf_puts(out, ",\"name\":");
        if (is(name, KW_NODE_STRING))
            kw_json_write_string(out, name->str, name->len);
        else
            kw_buf_puts(out, "\"\"");
        kw_buf_puts(out, ",\"input\":{}}}\n\n");
    }
    if (!is(args, KW_NODE_STRING) || args->len == 0)
        return KW_OK;
    kw_buf_printf(out,
                  "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                  "\"index\":%d,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":",
                  st->tool_block[k]);
    kw_json_write_string(out, args->str, args->len);
    return kw_buf_puts(out, "}}\n\n");
}

static int finish_message(struct dp_request *r, struct anth_stream *st)
{
    struct kw_buf *out = st->out;
    close_block(st);
    st->done = true;
    kw_buf_puts(out, "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":"
                     "{\"stop_reason\":");
    write_str(out, st->stop != NULL ? st->stop : "end_turn");
    kw_buf_puts(out, ",\"stop_sequence\":null},\"usage\":");
    usage_json(out, r);
    kw_buf_puts(out, "}\n\n");
    return event(out, "message_stop", "");
}

static int stream_error(struct dp_request *r, struct anth_stream *st, const char *type,
                        const char *msg, size_t len)
{
    st->done = true;
    kw_buf_puts(st->out, "event: error\ndata: ");
    write_error(st->out, type, msg, len, r->id);
    return kw_buf_puts(st->out, "\n\n");
}

/* An OpenAI error object inside a stream: its type mapped by what it names. */
static int chunk_error(struct dp_request *r, struct anth_stream *st, const struct kw_node *e)
{
    const struct kw_node *msg = kw_node_get(e, "message"), *type = kw_node_get(e, "type");
    const struct kw_node *code = kw_node_get(e, "code");
    const char *t = "api_error";
    for (int i = 0; i < 2; i++) {
        const struct kw_node *n = i == 0 ? type : code;
        if (!is(n, KW_NODE_STRING))
            continue;
        if (strstr(n->str, "rate_limit") != NULL)
            t = "rate_limit_error";
        else if (strcmp(n->str, "invalid_request_error") == 0)
            t = "invalid_request_error";
        else if (strstr(n->str, "overloaded") != NULL)
            t = "overloaded_error";
    }
    if (is(e, KW_NODE_STRING))
        msg = e;
    return is(msg, KW_NODE_STRING) ? stream_error(r, st, t, msg->str, msg->len)
                                   : stream_error(r, st, t, "upstream error", 14);
}

static int on_chunk(void *ud, const char *raw, size_t raw_len, const char *ev, const char *data,
                    size_t data_len, bool has_data)
{
    (void)raw;
    (void)raw_len;
    (void)ev;
    struct dp_request *r = ud;
    struct anth_stream *st = r->front_state;
    if (!has_data || st->done)
        return KW_OK;
    if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0)
        return finish_message(r, st);
    struct kw_node *root;
    char err[128];
    kw_arena_reset(r->scratch);
    if (kw_json_parse(r->scratch, data, data_len, &root, err, sizeof(err)) != KW_OK) {
        snprintf(r->up.write_err, sizeof(r->up.write_err), "upstream chunk is not JSON: %s", err);
        return KW_ERROR;
    }
    const struct kw_node *e = kw_node_get(root, "error");
    if (e != NULL && e->type != KW_NODE_NULL)
        return chunk_error(r, st, e);
    const struct kw_node *choices = kw_node_get(root, "choices");
    for (size_t i = 0; is(choices, KW_NODE_SEQ) && i < choices->n; i++) {
        const struct kw_node *c = choices->items[i];
        const struct kw_node *ix = kw_node_get(c, "index");
        if (is(ix, KW_NODE_INT) && ix->i != 0)
            continue; /* Anthropic has one message: n > 1 is not translated */
        const struct kw_node *delta = kw_node_get(c, "delta");
        const struct kw_node *text = kw_node_get(delta, "content");
        const struct kw_node *refusal = kw_node_get(delta, "refusal");
        const struct kw_node *calls = kw_node_get(delta, "tool_calls");
        const struct kw_node *reasoning = kw_node_get(delta, "reasoning_content");
        const struct kw_node *tb = kw_node_get(delta, "thinking_blocks");
        int rc = KW_OK;
        if (is(reasoning, KW_NODE_STRING) && reasoning->len > 0)
            rc |= thinking_delta(st, reasoning);
        for (size_t j = 0; is(tb, KW_NODE_SEQ) && j < tb->n; j++)
            rc |= thinking_block(st, tb->items[j]);
        if (is(text, KW_NODE_STRING) && text->len > 0)
            rc |= text_delta(st, text);
        if (is(refusal, KW_NODE_STRING) && refusal->len > 0) {
            rc |= text_delta(st, refusal);
            st->stop = "refusal";
        }
        for (size_t j = 0; is(calls, KW_NODE_SEQ) && j < calls->n; j++)
            rc |= tool_delta(r, st, j, calls->items[j]);
        const struct kw_node *fr = kw_node_get(c, "finish_reason");
        if (is(fr, KW_NODE_STRING) && (st->stop == NULL || strcmp(st->stop, "refusal") != 0))
            st->stop = stop_reason(fr);
        if (rc != KW_OK)
            return KW_ERROR;
    }
    return KW_OK;
}

static int anth_stream(struct dp_request *r, const char *buf, size_t len, struct kw_buf *out)
{
    struct anth_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    return dp_sse_feed(&st->sse, buf, len, on_chunk, r);
}

static int anth_stream_end(struct dp_request *r, struct kw_buf *out)
{
    struct anth_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    if (dp_sse_finish(&st->sse, on_chunk, r) != KW_OK || st->done)
        return KW_OK;
    if (st->stop != NULL) /* finished, but no data: [DONE] */
        return finish_message(r, st);
    static const char msg[] = "the upstream ended the stream before the message was complete";
    return stream_error(r, st, "api_error", msg, sizeof(msg) - 1);
}

static int anth_stream_error(struct dp_request *r, const char *msg, struct kw_buf *out)
{
    struct anth_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    if (st->done)
        return KW_OK;
    if (r->cut) {
        /* a limit ended it: the message ends as at max_tokens, then the error says why */
        if (st->stop != NULL)
            finish_message(r, st);
        return stream_error(r, st, r->err.status == 429 ? "rate_limit_error" : "api_error", msg,
                            strlen(msg));
    }
    return stream_error(r, st, "api_error", msg, strlen(msg));
}

const struct dp_front_ops dp_front_anthropic = {
    .name = "anthropic",
    .request = anth_request,
    .response = anth_response,
    .error_body = anth_error_body,
    .stream_begin = anth_stream_begin,
    .stream = anth_stream,
    .stream_end = anth_stream_end,
    .stream_error = anth_stream_error,
    .keepalive = "event: ping\ndata: {\"type\":\"ping\"}\n\n",
    .id_header = "request-id", /* what Anthropic's SDKs read */
    .cleanup = anth_cleanup,
};
