/* OpenAI's Responses API as an input: POST /v1/responses is translated into an OpenAI chat
 * request, routed like any other to any backend (its provider translates further), and the
 * chat answer is translated back into a Response object or the Responses event stream. An
 * OpenAI backend gets the request as it came instead (dp_responses_bind: the front steps
 * aside, POST /responses, the answer relayed), as does an Azure OpenAI backend.
 *
 * Request (Responses -> chat):
 *   instructions -> a system message first; input: a string -> a user message, or items:
 *   messages ({role, content} with or without type "message"; input_text / output_text ->
 *   text parts, input_image {image_url} -> image_url parts, refusal -> refusal parts),
 *   function_call {call_id, name, arguments} -> the assistant's tool_calls (consecutive
 *   calls join one assistant message), function_call_output {call_id, output} -> a tool
 *   message, reasoning items dropped; tools [{type: function, name, description,
 *   parameters, strict}] -> functions; tool_choice auto / none / required / {type:
 *   function, name}; max_output_tokens -> max_tokens; temperature, top_p, user,
 *   parallel_tool_calls, service_tier kept; reasoning.effort -> reasoning_effort;
 *   text.format json_schema / json_object -> response_format. store: true,
 *   previous_response_id and item_reference need server state this gateway does not keep:
 *   400 saying so. Other unknown fields: 400, as OpenAI answers them.
 *
 * Response: a Response object {id "resp_" + request id, object "response", status
 * completed, or incomplete with incomplete_details {reason: max_output_tokens |
 * content_filter}, output: [reasoning {summary}], [message {output_text | refusal}],
 * function_call items..., usage {input_tokens, input_tokens_details.cached_tokens,
 * output_tokens, output_tokens_details.reasoning_tokens, total_tokens}} with the request's
 * settings echoed.
 *
 * Stream: response.created and response.in_progress when it starts; per chat chunk: the
 * first text opens a message item (response.output_item.added, response.content_part.added)
 * and each piece is a response.output_text.delta; a tool call opens a function_call item
 * (its arguments as response.function_call_arguments.delta); reasoning opens a reasoning
 * item (response.reasoning_summary_part.added, response.reasoning_summary_text.delta); an
 * item is closed (..._text.done, content_part.done, ..._arguments.done,
 * output_item.done) when the next one opens or the stream ends; then response.completed
 * (or response.incomplete) with the whole Response. Every event carries sequence_number;
 * there is no [DONE]. Errors: an "error" event. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "knoway/json.h"
#include "knoway/kw.h"
#include "provider.h"
#include "respond.h"

#define RESP_MAX_ITEMS 130 /* output items of one streamed response (128 tool calls) */

static bool is(const struct kw_node *n, enum kw_node_type t)
{
    return n != NULL && n->type == t;
}

static int bad(struct dp_request *r, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int bad(struct dp_request *r, const char *param, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    dp_error_set(r, 400, "invalid_request_error", NULL, param, "%s", msg);
    return KW_ERROR;
}

static struct kw_node *map2(struct kw_arena *a, const char *k1, struct kw_node *v1, const char *k2,
                            struct kw_node *v2)
{
    struct kw_node *m = kw_node_new(a, KW_NODE_MAP);
    if (m == NULL || kw_node_map_put(a, m, k1, v1) != KW_OK ||
        (k2 != NULL && kw_node_map_put(a, m, k2, v2) != KW_OK))
        return NULL;
    return m;
}

static struct kw_node *str(struct kw_arena *a, const struct kw_node *n)
{
    return kw_node_string(a, n->str, n->len);
}

struct resp_stream;

/* r->front_state */
struct resp_state {
    const struct kw_node *req; /* as the client sent it */
    struct kw_node *chat;      /* its chat translation */
    struct resp_stream *stream;
};

/* ---- request ----------------------------------------------------------------------------- */

/* One content part of a message item as a chat part; NULL with a 400 prepared. */
static struct kw_node *part(struct dp_request *r, const struct kw_node *p, size_t i, size_t j)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *type = kw_node_get(p, "type");
    if (!is(type, KW_NODE_STRING)) {
        bad(r, "input", "input[%zu].content[%zu].type: Field required", i, j);
        return NULL;
    }
    const char *t = type->str;
    if (strcmp(t, "input_text") == 0 || strcmp(t, "output_text") == 0 || strcmp(t, "text") == 0) {
        const struct kw_node *text = kw_node_get(p, "text");
        if (!is(text, KW_NODE_STRING)) {
            bad(r, "input", "input[%zu].content[%zu].text: Field required", i, j);
            return NULL;
        }
        return map2(a, "type", kw_node_cstring(a, "text"), "text", str(a, text));
    }
    if (strcmp(t, "refusal") == 0) {
        const struct kw_node *text = kw_node_get(p, "refusal");
        if (!is(text, KW_NODE_STRING)) {
            bad(r, "input", "input[%zu].content[%zu].refusal: Field required", i, j);
            return NULL;
        }
        return map2(a, "type", kw_node_cstring(a, "refusal"), "refusal", str(a, text));
    }
    if (strcmp(t, "input_image") == 0) {
        const struct kw_node *url = kw_node_get(p, "image_url"), *detail = kw_node_get(p, "detail");
        if (!is(url, KW_NODE_STRING)) {
            bad(r, "input",
                "input[%zu].content[%zu]: an input_image needs image_url (file_id needs the "
                "Files API, which this gateway does not serve)",
                i, j);
            return NULL;
        }
        struct kw_node *iu = map2(a, "url", str(a, url), NULL, NULL);
        if (iu != NULL && is(detail, KW_NODE_STRING))
            kw_node_map_put(a, iu, "detail", str(a, detail));
        return map2(a, "type", kw_node_cstring(a, "image_url"), "image_url", iu);
    }
    bad(r, "input", "input[%zu].content[%zu].type: '%s' is not supported by this gateway", i, j, t);
    return NULL;
}

/* A message item as a chat message appended to msgs. */
static int message_item(struct dp_request *r, const struct kw_node *it, size_t i,
                        struct kw_node *msgs)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *role = kw_node_get(it, "role"), *content = kw_node_get(it, "content");
    if (!is(role, KW_NODE_STRING) ||
        (strcmp(role->str, "user") != 0 && strcmp(role->str, "assistant") != 0 &&
         strcmp(role->str, "system") != 0 && strcmp(role->str, "developer") != 0))
        return bad(r, "input",
                   "input[%zu].role: Input should be 'user', 'assistant', 'system' or "
                   "'developer'",
                   i);
    struct kw_node *c;
    if (is(content, KW_NODE_STRING)) {
        c = str(a, content);
    } else if (is(content, KW_NODE_SEQ)) {
        c = kw_node_new(a, KW_NODE_SEQ);
        for (size_t j = 0; c != NULL && j < content->n; j++) {
            struct kw_node *p = part(r, content->items[j], i, j);
            if (p == NULL)
                return KW_ERROR;
            kw_node_seq_push(a, c, p);
        }
    } else {
        return bad(r, "input", "input[%zu].content: Field required", i);
    }
    struct kw_node *m = map2(a, "role", str(a, role), "content", c);
    return m != NULL ? kw_node_seq_push(a, msgs, m) : bad(r, NULL, "out of memory");
}

/* A function_call item joins the last assistant message's tool_calls (a new assistant
 * message when the last message is not one). */
static int function_call_item(struct dp_request *r, const struct kw_node *it, size_t i,
                              struct kw_node *msgs)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *id = kw_node_get(it, "call_id"), *name = kw_node_get(it, "name");
    const struct kw_node *args = kw_node_get(it, "arguments");
    if (!is(id, KW_NODE_STRING) || !is(name, KW_NODE_STRING) || !is(args, KW_NODE_STRING))
        return bad(r, "input", "input[%zu]: a function_call needs call_id, name and arguments", i);
    struct kw_node *last = msgs->n > 0 ? msgs->items[msgs->n - 1] : NULL;
    const struct kw_node *lrole = kw_node_get(last, "role");
    if (!is(lrole, KW_NODE_STRING) || strcmp(lrole->str, "assistant") != 0) {
        last = map2(a, "role", kw_node_cstring(a, "assistant"), "content",
                    kw_node_new(a, KW_NODE_NULL));
        if (last == NULL || kw_node_seq_push(a, msgs, last) != KW_OK)
            return bad(r, NULL, "out of memory");
    }
    struct kw_node *calls = kw_node_get(last, "tool_calls");
    if (calls == NULL) {
        calls = kw_node_new(a, KW_NODE_SEQ);
        if (calls == NULL || kw_node_map_put(a, last, "tool_calls", calls) != KW_OK)
            return bad(r, NULL, "out of memory");
    }
    struct kw_node *fn = map2(a, "name", str(a, name), "arguments", str(a, args));
    struct kw_node *call = map2(a, "id", str(a, id), "type", kw_node_cstring(a, "function"));
    if (fn == NULL || call == NULL || kw_node_map_put(a, call, "function", fn) != KW_OK)
        return bad(r, NULL, "out of memory");
    return kw_node_seq_push(a, calls, call);
}

static int function_output_item(struct dp_request *r, const struct kw_node *it, size_t i,
                                struct kw_node *msgs)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *id = kw_node_get(it, "call_id"), *out = kw_node_get(it, "output");
    if (!is(id, KW_NODE_STRING) || (!is(out, KW_NODE_STRING) && !is(out, KW_NODE_SEQ)))
        return bad(r, "input", "input[%zu]: a function_call_output needs call_id and output", i);
    struct kw_node *content;
    if (is(out, KW_NODE_STRING)) {
        content = str(a, out);
    } else {
        content = kw_node_new(a, KW_NODE_SEQ);
        for (size_t j = 0; content != NULL && j < out->n; j++) {
            struct kw_node *p = part(r, out->items[j], i, j);
            if (p == NULL)
                return KW_ERROR;
            kw_node_seq_push(a, content, p);
        }
    }
    struct kw_node *m = map2(a, "role", kw_node_cstring(a, "tool"), "tool_call_id", str(a, id));
    if (m == NULL || kw_node_map_put(a, m, "content", content) != KW_OK)
        return bad(r, NULL, "out of memory");
    return kw_node_seq_push(a, msgs, m);
}

static int input_items(struct dp_request *r, const struct kw_node *in, struct kw_node *msgs)
{
    if (is(in, KW_NODE_STRING)) {
        struct kw_node *m =
            map2(r->arena, "role", kw_node_cstring(r->arena, "user"), "content", str(r->arena, in));
        return m != NULL ? kw_node_seq_push(r->arena, msgs, m) : bad(r, NULL, "out of memory");
    }
    if (!is(in, KW_NODE_SEQ))
        return bad(r, "input", "input: Input should be a string or a list of items");
    for (size_t i = 0; i < in->n; i++) {
        const struct kw_node *it = in->items[i], *type = kw_node_get(it, "type");
        if (!is(it, KW_NODE_MAP))
            return bad(r, "input", "input[%zu]: Input should be an object", i);
        const char *t = is(type, KW_NODE_STRING) ? type->str : "message";
        int rc;
        if (strcmp(t, "message") == 0)
            rc = message_item(r, it, i, msgs);
        else if (strcmp(t, "function_call") == 0)
            rc = function_call_item(r, it, i, msgs);
        else if (strcmp(t, "function_call_output") == 0)
            rc = function_output_item(r, it, i, msgs);
        else if (strcmp(t, "reasoning") == 0)
            rc = KW_OK; /* a previous turn's reasoning: nothing a chat model takes back */
        else if (strcmp(t, "item_reference") == 0)
            rc = bad(r, "input",
                     "input[%zu]: item_reference needs stored responses, which this gateway "
                     "does not keep; send the items themselves",
                     i);
        else
            rc = bad(r, "input", "input[%zu].type: '%s' is not supported by this gateway", i, t);
        if (rc != KW_OK)
            return KW_ERROR;
    }
    return KW_OK;
}

static int tools_of(struct dp_request *r, const struct kw_node *tl, struct kw_node *out)
{
    struct kw_arena *a = r->arena;
    if (!is(tl, KW_NODE_SEQ))
        return bad(r, "tools", "tools: Input should be a list");
    struct kw_node *list = kw_node_new(a, KW_NODE_SEQ);
    for (size_t i = 0; list != NULL && i < tl->n; i++) {
        const struct kw_node *t = tl->items[i], *type = kw_node_get(t, "type");
        const struct kw_node *name = kw_node_get(t, "name");
        if (!is(type, KW_NODE_STRING) || strcmp(type->str, "function") != 0)
            return bad(r, "tools",
                       "tools[%zu].type: '%s' tools are not supported by this gateway (function "
                       "tools are)",
                       i, is(type, KW_NODE_STRING) ? type->str : "?");
        if (!is(name, KW_NODE_STRING))
            return bad(r, "tools", "tools[%zu].name: Field required", i);
        struct kw_node *fn = map2(a, "name", str(a, name), NULL, NULL);
        static const char *const copied[] = {"description", "parameters", "strict"};
        for (size_t k = 0; fn != NULL && k < KW_ARRAY_LEN(copied); k++) {
            struct kw_node *v = kw_node_get(t, copied[k]);
            if (v != NULL && v->type != KW_NODE_NULL)
                kw_node_map_put(a, fn, copied[k], v);
        }
        struct kw_node *tool = map2(a, "type", kw_node_cstring(a, "function"), "function", fn);
        if (tool == NULL || kw_node_seq_push(a, list, tool) != KW_OK)
            return bad(r, NULL, "out of memory");
    }
    return kw_node_map_put(a, out, "tools", list);
}

static int tool_choice_of(struct dp_request *r, const struct kw_node *tc, struct kw_node *out)
{
    struct kw_arena *a = r->arena;
    if (is(tc, KW_NODE_STRING) && (strcmp(tc->str, "auto") == 0 || strcmp(tc->str, "none") == 0 ||
                                   strcmp(tc->str, "required") == 0))
        return kw_node_map_put(a, out, "tool_choice", (struct kw_node *)tc);
    const struct kw_node *type = kw_node_get(tc, "type"), *name = kw_node_get(tc, "name");
    if (is(type, KW_NODE_STRING) && strcmp(type->str, "function") == 0 && is(name, KW_NODE_STRING))
        return kw_node_map_put(a, out, "tool_choice",
                               map2(a, "type", kw_node_cstring(a, "function"), "function",
                                    map2(a, "name", str(a, name), NULL, NULL)));
    return bad(r, "tool_choice",
               "tool_choice: Input should be 'auto', 'none', 'required' or {\"type\": "
               "\"function\", \"name\": ...}");
}

static int text_format(struct dp_request *r, const struct kw_node *text, struct kw_node *out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *f = kw_node_get(text, "format"), *type = kw_node_get(f, "type");
    if (f == NULL)
        return KW_OK;
    if (!is(type, KW_NODE_STRING))
        return bad(r, "text", "text.format.type: Field required");
    if (strcmp(type->str, "text") == 0)
        return KW_OK;
    if (strcmp(type->str, "json_object") == 0)
        return kw_node_map_put(a, out, "response_format",
                               map2(a, "type", kw_node_cstring(a, "json_object"), NULL, NULL));
    if (strcmp(type->str, "json_schema") != 0)
        return bad(r, "text",
                   "text.format.type: Input should be 'text', 'json_object' or "
                   "'json_schema'");
    const struct kw_node *name = kw_node_get(f, "name"), *schema = kw_node_get(f, "schema");
    if (!is(name, KW_NODE_STRING) || !is(schema, KW_NODE_MAP))
        return bad(r, "text", "text.format: a json_schema format needs name and schema");
    struct kw_node *js = map2(a, "name", str(a, name), "schema", (struct kw_node *)schema);
    static const char *const copied[] = {"strict", "description"};
    for (size_t k = 0; js != NULL && k < KW_ARRAY_LEN(copied); k++) {
        struct kw_node *v = kw_node_get(f, copied[k]);
        if (v != NULL && v->type != KW_NODE_NULL)
            kw_node_map_put(a, js, copied[k], v);
    }
    return kw_node_map_put(a, out, "response_format",
                           map2(a, "type", kw_node_cstring(a, "json_schema"), "json_schema", js));
}

static int resp_request(struct dp_request *r)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->json;
    struct kw_node *out = kw_node_new(a, KW_NODE_MAP), *msgs = kw_node_new(a, KW_NODE_SEQ);
    if (out == NULL || msgs == NULL)
        return bad(r, NULL, "out of memory");
    static const char *const copied[] = {"model", "temperature",         "top_p",
                                         "user",  "parallel_tool_calls", "service_tier"};
    static const char *const dropped[] = {"metadata",          "include",          "truncation",
                                          "safety_identifier", "prompt_cache_key", "background"};
    const struct kw_node *input = NULL, *instructions = NULL, *tools = NULL, *tc = NULL;
    for (size_t i = 0; i < in->n; i++) {
        const char *k = in->pairs[i].key->str;
        const struct kw_node *v = in->pairs[i].val;
        bool known = false;
        for (size_t j = 0; j < KW_ARRAY_LEN(copied) && !known; j++)
            if (strcmp(k, copied[j]) == 0) {
                known = true;
                if (v->type != KW_NODE_NULL)
                    kw_node_map_put(a, out, k, (struct kw_node *)v);
            }
        for (size_t j = 0; j < KW_ARRAY_LEN(dropped) && !known; j++)
            known = strcmp(k, dropped[j]) == 0;
        if (known)
            continue;
        if (strcmp(k, "input") == 0) {
            input = v;
        } else if (strcmp(k, "instructions") == 0) {
            instructions = v;
        } else if (strcmp(k, "tools") == 0) {
            tools = v;
        } else if (strcmp(k, "tool_choice") == 0) {
            tc = v;
        } else if (strcmp(k, "stream") == 0) {
            if (!is(v, KW_NODE_BOOL) && v->type != KW_NODE_NULL)
                return bad(r, "stream", "stream must be a boolean");
            if (is(v, KW_NODE_BOOL) && v->b) {
                kw_node_map_put(a, out, "stream", (struct kw_node *)v);
                /* the usage of response.completed */
                kw_node_map_put(a, out, "stream_options",
                                map2(a, "include_usage", kw_node_bool(a, true), NULL, NULL));
            }
        } else if (strcmp(k, "max_output_tokens") == 0) {
            if (v->type != KW_NODE_NULL)
                kw_node_map_put(a, out, "max_tokens", (struct kw_node *)v);
        } else if (strcmp(k, "reasoning") == 0) {
            const struct kw_node *effort = kw_node_get(v, "effort");
            if (is(effort, KW_NODE_STRING))
                kw_node_map_put(a, out, "reasoning_effort", str(a, effort));
        } else if (strcmp(k, "text") == 0) {
            if (text_format(r, v, out) != KW_OK)
                return KW_ERROR;
        } else if (strcmp(k, "store") == 0) {
            if (is(v, KW_NODE_BOOL) && v->b)
                return bad(r, "store",
                           "store: true needs a response store, which this gateway does not "
                           "keep: send store: false (responses are not retrievable later)");
        } else if (strcmp(k, "previous_response_id") == 0) {
            if (v->type != KW_NODE_NULL)
                return bad(r, "previous_response_id",
                           "previous_response_id needs stored responses, which this gateway "
                           "does not keep: send the conversation's items in input");
        } else {
            return bad(r, k, "Unrecognized request argument supplied: %s", k);
        }
    }
    if (input == NULL)
        return bad(r, "input", "Missing required parameter: 'input'.");
    if (is(instructions, KW_NODE_STRING)) {
        struct kw_node *m =
            map2(a, "role", kw_node_cstring(a, "system"), "content", str(a, instructions));
        if (m == NULL || kw_node_seq_push(a, msgs, m) != KW_OK)
            return bad(r, NULL, "out of memory");
    }
    if (input_items(r, input, msgs) != KW_OK)
        return KW_ERROR;
    if (kw_node_map_put(a, out, "messages", msgs) != KW_OK)
        return bad(r, NULL, "out of memory");
    if (tools != NULL && tools->type != KW_NODE_NULL && tools_of(r, tools, out) != KW_OK)
        return KW_ERROR;
    if (tc != NULL && tc->type != KW_NODE_NULL && tool_choice_of(r, tc, out) != KW_OK)
        return KW_ERROR;
    struct resp_state *rs = kw_arena_alloc(a, sizeof(*rs));
    if (rs == NULL)
        return bad(r, NULL, "out of memory");
    memset(rs, 0, sizeof(*rs));
    rs->req = in; /* the request as the client sent it: its settings are echoed */
    rs->chat = out;
    r->front_state = rs;
    r->json = out;
    return KW_OK;
}

void dp_responses_bind(struct dp_request *r)
{
    if (r->front != &dp_front_responses && !r->responses_native)
        return; /* not a /v1/responses request */
    struct resp_state *rs = r->front_state;
    if (rs == NULL)
        return;
    /* OpenAI and Azure serve the Responses API themselves (server-side tools, reasoning):
     * passed through; a fallback to another backend goes back to the translation */
    r->responses_native = dp_provider_desc(r->backend->provider)->responses_native;
    r->front = r->responses_native ? NULL : &dp_front_responses;
    r->json = r->responses_native ? (struct kw_node *)rs->req : rs->chat;
}

/* ---- the Response object ----------------------------------------------------------------- */

static void wstr(struct kw_buf *out, const char *s)
{
    kw_json_write_string(out, s, strlen(s));
}

/* The request's value of key as JSON, or dflt. */
static void echo(struct kw_buf *out, const struct kw_node *req, const char *key, const char *dflt)
{
    const struct kw_node *v = kw_node_get(req, key);
    if (v != NULL && v->type != KW_NODE_NULL)
        kw_json_write(v, out);
    else
        kw_buf_puts(out, dflt);
}

static void usage_json(struct kw_buf *out, const struct dp_request *r)
{
    int64_t in = r->usage.prompt, o = r->usage.completion;
    kw_buf_printf(out,
                  "{\"input_tokens\":%lld,\"input_tokens_details\":{\"cached_tokens\":%lld},"
                  "\"output_tokens\":%lld,\"output_tokens_details\":{\"reasoning_tokens\":%lld},"
                  "\"total_tokens\":%lld}",
                  (long long)in, (long long)r->usage.cached, (long long)o,
                  (long long)r->usage.reasoning, (long long)(in + o));
}

/* The Response around output (a JSON array's inside). status: completed, incomplete,
 * in_progress; incomplete: its reason or NULL. */
static void response_json(struct kw_buf *out, struct dp_request *r, const char *status,
                          const char *incomplete, const char *output, size_t output_len, bool usage,
                          long created)
{
    const struct resp_state *rs = r->front_state;
    const struct kw_node *req = rs != NULL ? rs->req : NULL;
    char id[64];
    snprintf(id, sizeof(id), "resp_%s", r->id);
    kw_buf_puts(out, "{\"id\":");
    wstr(out, id);
    kw_buf_printf(out, ",\"object\":\"response\",\"created_at\":%ld,\"status\":", created);
    wstr(out, status);
    kw_buf_puts(out, ",\"error\":null,\"incomplete_details\":");
    if (incomplete != NULL) {
        kw_buf_puts(out, "{\"reason\":");
        wstr(out, incomplete);
        kw_buf_puts(out, "}");
    } else {
        kw_buf_puts(out, "null");
    }
    kw_buf_puts(out, ",\"instructions\":");
    echo(out, req, "instructions", "null");
    kw_buf_puts(out, ",\"max_output_tokens\":");
    echo(out, req, "max_output_tokens", "null");
    kw_buf_puts(out, ",\"model\":");
    wstr(out, r->model != NULL ? r->model : "");
    kw_buf_puts(out, ",\"output\":[");
    kw_buf_append(out, output, output_len);
    kw_buf_puts(out, "],\"parallel_tool_calls\":");
    echo(out, req, "parallel_tool_calls", "true");
    kw_buf_puts(out, ",\"previous_response_id\":null,\"reasoning\":{\"effort\":");
    echo(out, kw_node_get(req, "reasoning"), "effort", "null");
    kw_buf_puts(out, ",\"summary\":null},\"store\":false,\"temperature\":");
    echo(out, req, "temperature", "1");
    kw_buf_puts(out, ",\"text\":");
    echo(out, req, "text", "{\"format\":{\"type\":\"text\"}}");
    kw_buf_puts(out, ",\"tool_choice\":");
    echo(out, req, "tool_choice", "\"auto\"");
    kw_buf_puts(out, ",\"tools\":");
    echo(out, req, "tools", "[]");
    kw_buf_puts(out, ",\"top_p\":");
    echo(out, req, "top_p", "1");
    kw_buf_puts(out, ",\"truncation\":\"disabled\",\"usage\":");
    if (usage)
        usage_json(out, r);
    else
        kw_buf_puts(out, "null");
    kw_buf_puts(out, ",\"user\":");
    echo(out, req, "user", "null");
    kw_buf_puts(out, ",\"metadata\":");
    echo(out, req, "metadata", "{}");
    kw_buf_puts(out, "}");
}

static const char *incomplete_reason(const struct kw_node *fr)
{
    if (!is(fr, KW_NODE_STRING))
        return NULL;
    if (strcmp(fr->str, "length") == 0)
        return "max_output_tokens";
    if (strcmp(fr->str, "content_filter") == 0)
        return "content_filter";
    return NULL;
}

static void reasoning_item(struct kw_buf *o, const struct dp_request *r, const char *text,
                           size_t len)
{
    kw_buf_printf(o, "{\"type\":\"reasoning\",\"id\":\"rs_%s\",\"summary\":[", r->id);
    if (len > 0) {
        kw_buf_puts(o, "{\"type\":\"summary_text\",\"text\":");
        kw_json_write_string(o, text, len);
        kw_buf_puts(o, "}");
    }
    kw_buf_puts(o, "]}");
}

/* A message item; part_type output_text or refusal. */
static void message_json(struct kw_buf *o, const struct dp_request *r, const char *status,
                         const char *part_type, const char *text, size_t len, bool with_part)
{
    kw_buf_printf(o,
                  "{\"type\":\"message\",\"id\":\"msg_%s\",\"status\":\"%s\",\"role\":"
                  "\"assistant\",\"content\":[",
                  r->id, status);
    if (with_part) {
        if (strcmp(part_type, "refusal") == 0) {
            kw_buf_puts(o, "{\"type\":\"refusal\",\"refusal\":");
            kw_json_write_string(o, text, len);
            kw_buf_puts(o, "}");
        } else {
            kw_buf_puts(o, "{\"type\":\"output_text\",\"text\":");
            kw_json_write_string(o, text, len);
            kw_buf_puts(o, ",\"annotations\":[]}");
        }
    }
    kw_buf_puts(o, "]}");
}

static void call_json(struct kw_buf *o, const struct dp_request *r, int k, const char *status,
                      const char *call_id, size_t id_len, const char *name, size_t name_len,
                      const char *args, size_t args_len)
{
    kw_buf_printf(o, "{\"type\":\"function_call\",\"id\":\"fc_%s_%d\",\"call_id\":", r->id, k);
    kw_json_write_string(o, call_id, id_len);
    kw_buf_puts(o, ",\"name\":");
    kw_json_write_string(o, name, name_len);
    kw_buf_puts(o, ",\"arguments\":");
    kw_json_write_string(o, args, args_len);
    kw_buf_printf(o, ",\"status\":\"%s\"}", status);
}

static int resp_response(struct dp_request *r, const char *body, size_t len, struct kw_buf *out)
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
    const struct kw_node *content = kw_node_get(msg, "content");
    const struct kw_node *refusal = kw_node_get(msg, "refusal");
    const struct kw_node *reasoning = kw_node_get(msg, "reasoning_content");
    const struct kw_node *calls = kw_node_get(msg, "tool_calls");
    struct kw_buf o;
    kw_buf_init(&o, DP_MAX_UPSTREAM_RESPONSE);
    if (is(reasoning, KW_NODE_STRING) && reasoning->len > 0)
        reasoning_item(&o, r, reasoning->str, reasoning->len);
    if (is(content, KW_NODE_STRING) && content->len > 0) {
        if (o.len > 0)
            kw_buf_puts(&o, ",");
        message_json(&o, r, "completed", "output_text", content->str, content->len, true);
    } else if (is(refusal, KW_NODE_STRING) && refusal->len > 0) {
        if (o.len > 0)
            kw_buf_puts(&o, ",");
        message_json(&o, r, "completed", "refusal", refusal->str, refusal->len, true);
    }
    for (size_t i = 0; is(calls, KW_NODE_SEQ) && i < calls->n; i++) {
        const struct kw_node *id = kw_node_get(calls->items[i], "id");
        const struct kw_node *fn = kw_node_get(calls->items[i], "function");
        const struct kw_node *name = kw_node_get(fn, "name"), *args = kw_node_get(fn, "arguments");
        if (!is(id, KW_NODE_STRING) || !is(name, KW_NODE_STRING))
            continue;
        if (o.len > 0)
            kw_buf_puts(&o, ",");
        call_json(&o, r, (int)i, "completed", id->str, id->len, name->str, name->len,
                  is(args, KW_NODE_STRING) ? args->str : "{}",
                  is(args, KW_NODE_STRING) ? args->len : 2);
    }
    const char *inc = incomplete_reason(kw_node_get(c0, "finish_reason"));
    const struct kw_node *created = kw_node_get(root, "created");
    response_json(out, r, inc != NULL ? "incomplete" : "completed", inc,
                  o.data != NULL ? o.data : "", o.len, true,
                  is(created, KW_NODE_INT) ? (long)created->i : (long)time(NULL));
    kw_buf_cleanup(&o);
    return out->len > 0 ? KW_OK : KW_ERROR;
}

static int resp_error_body(struct dp_request *r, unsigned status, const char *msg, size_t len,
                           struct kw_buf *out)
{
    /* the gateway's own error keeps its type; an upstream's status has the table's */
    return dp_openai_error(out, status, msg, len, r->err.status == status ? r->err.type : NULL,
                           r->err.param, r->err.code);
}

/* ---- stream ------------------------------------------------------------------------------ */

enum item_kind { IT_REASONING, IT_MESSAGE, IT_CALL };

struct item {
    enum item_kind kind;
    bool open;
    int call;                   /* the chat tool-call index */
    struct kw_buf text;         /* reasoning or message text; a call's arguments */
    const char *call_id, *name; /* a call's (arena) */
};

struct resp_stream {
    struct dp_sse sse;
    struct kw_buf *out;
    struct dp_request *r;
    long seq;
    long created;
    struct item *items; /* grown in the request's arena, up to RESP_MAX_ITEMS */
    int nitems, cap;
    int open; /* the open item, -1: none */
    const char *incomplete;
    bool refusal; /* the message item holds a refusal */
    bool done;
};

static struct resp_stream *stream_of(struct dp_request *r)
{
    struct resp_state *rs = r->front_state;
    if (rs == NULL)
        return NULL;
    if (rs->stream == NULL) {
        struct resp_stream *st = kw_arena_alloc(r->arena, sizeof(*st));
        if (st == NULL)
            return NULL;
        memset(st, 0, sizeof(*st));
        dp_sse_init(&st->sse, DP_MAX_SSE_EVENT);
        st->open = -1;
        st->r = r;
        st->created = (long)time(NULL);
        rs->stream = st;
    }
    return rs->stream;
}

static void resp_cleanup(struct dp_request *r)
{
    struct resp_state *rs = r->front_state;
    if (rs == NULL || rs->stream == NULL)
        return;
    dp_sse_cleanup(&rs->stream->sse);
    for (int i = 0; i < rs->stream->nitems; i++)
        kw_buf_cleanup(&rs->stream->items[i].text);
}

static void ev_head(struct resp_stream *st, const char *type)
{
    kw_buf_printf(st->out, "event: %s\ndata: {\"type\":\"%s\",\"sequence_number\":%ld", type, type,
                  st->seq++);
}

static int ev_end(struct resp_stream *st)
{
    return kw_buf_puts(st->out, "}\n\n");
}

static void item_json(struct kw_buf *o, struct resp_stream *st, const struct item *it, bool done)
{
    struct dp_request *r = st->r;
    const char *status = done ? "completed" : "in_progress";
    const char *text = it->text.data != NULL ? it->text.data : "";
    if (it->kind == IT_REASONING)
        reasoning_item(o, r, text, done ? it->text.len : 0);
    else if (it->kind == IT_MESSAGE)
        message_json(o, r, status, st->refusal ? "refusal" : "output_text", text, it->text.len,
                     done);
    else
        call_json(o, r, it->call, status, it->call_id, strlen(it->call_id), it->name,
                  strlen(it->name), done ? text : "", done ? it->text.len : 0);
}

/* The item's id as its events name it. */
static void item_id(struct kw_buf *o, const struct resp_stream *st, const struct item *it)
{
    const char *id = st->r->id;
    if (it->kind == IT_REASONING)
        kw_buf_printf(o, ",\"item_id\":\"rs_%s\"", id);
    else if (it->kind == IT_MESSAGE)
        kw_buf_printf(o, ",\"item_id\":\"msg_%s\"", id);
    else
        kw_buf_printf(o, ",\"item_id\":\"fc_%s_%d\"", id, it->call);
}

/* An event about item it (output index ix): its id, output_index, the index inside it (a
 * message's content_index, a reasoning item's summary_index; a call has none), then pre,
 * text as a JSON string, post. */
static int item_event(struct resp_stream *st, const char *type, const struct item *it, int ix,
                      const char *pre, const char *text, size_t len, const char *post)
{
    ev_head(st, type);
    item_id(st->out, st, it);
    kw_buf_printf(st->out, ",\"output_index\":%d%s", ix,
                  it->kind == IT_MESSAGE     ? ",\"content_index\":0"
                  : it->kind == IT_REASONING ? ",\"summary_index\":0"
                                             : "");
    kw_buf_puts(st->out, pre);
    kw_json_write_string(st->out, text, len);
    kw_buf_puts(st->out, post);
    return ev_end(st);
}

/* The part of a message or reasoning item around its text: pre ends where the text goes. */
static const char *part_pre(const struct resp_stream *st, const struct item *it)
{
    return it->kind == IT_REASONING ? ",\"part\":{\"type\":\"summary_text\",\"text\":"
           : st->refusal            ? ",\"part\":{\"type\":\"refusal\",\"refusal\":"
                                    : ",\"part\":{\"type\":\"output_text\",\"text\":";
}

static const char *part_post(const struct resp_stream *st, const struct item *it)
{
    return it->kind == IT_MESSAGE && !st->refusal ? ",\"annotations\":[]}" : "}";
}

static void close_item(struct resp_stream *st)
{
    if (st->open < 0)
        return;
    int ix = st->open;
    struct item *it = &st->items[ix];
    st->open = -1;
    it->open = false;
    const char *text = it->text.data != NULL ? it->text.data : "";
    size_t len = it->text.len;
    if (it->kind == IT_MESSAGE) {
        item_event(st, st->refusal ? "response.refusal.done" : "response.output_text.done", it, ix,
                   st->refusal ? ",\"refusal\":" : ",\"text\":", text, len,
                   st->refusal ? "" : ",\"logprobs\":[]");
        item_event(st, "response.content_part.done", it, ix, part_pre(st, it), text, len,
                   part_post(st, it));
    } else if (it->kind == IT_REASONING) {
        item_event(st, "response.reasoning_summary_text.done", it, ix, ",\"text\":", text, len, "");
        item_event(st, "response.reasoning_summary_part.done", it, ix, part_pre(st, it), text, len,
                   part_post(st, it));
    } else {
        item_event(st, "response.function_call_arguments.done", it, ix, ",\"arguments\":", text,
                   len, "");
    }
    ev_head(st, "response.output_item.done");
    kw_buf_printf(st->out, ",\"output_index\":%d,\"item\":", ix);
    item_json(st->out, st, it, true);
    ev_end(st);
}

/* The open item of kind (call: chat tool-call index), opened when another is open. NULL when
 * there are too many. */
static struct item *open_item(struct resp_stream *st, enum item_kind kind, int call)
{
    if (st->open >= 0) {
        struct item *cur = &st->items[st->open];
        if (cur->kind == kind && (kind != IT_CALL || cur->call == call))
            return cur;
    }
    for (int i = 0; kind == IT_CALL && i < st->nitems; i++)
        if (st->items[i].kind == IT_CALL && st->items[i].call == call)
            return st->items[i].open ? &st->items[i] : NULL; /* arguments after it closed */
    if (st->nitems == RESP_MAX_ITEMS)
        return NULL;
    if (st->nitems == st->cap) {
        int cap = st->cap == 0 ? 4 : st->cap * 2;
        struct item *items = kw_arena_alloc(st->r->arena, (size_t)cap * sizeof(*items));
        if (items == NULL)
            return NULL;
        if (st->nitems > 0)
            memcpy(items, st->items, (size_t)st->nitems * sizeof(*items));
        st->items = items;
        st->cap = cap;
    }
    close_item(st);
    int ix = st->nitems++;
    struct item *it = &st->items[ix];
    memset(it, 0, sizeof(*it));
    it->kind = kind;
    it->call = call;
    it->open = true;
    kw_buf_init(&it->text, DP_MAX_UPSTREAM_RESPONSE);
    st->open = ix;
    return it;
}

static void announce(struct resp_stream *st, struct item *it)
{
    int ix = (int)(it - st->items);
    ev_head(st, "response.output_item.added");
    kw_buf_printf(st->out, ",\"output_index\":%d,\"item\":", ix);
    item_json(st->out, st, it, false);
    ev_end(st);
    if (it->kind != IT_CALL) /* the (empty) part the deltas fill */
        item_event(st,
                   it->kind == IT_REASONING ? "response.reasoning_summary_part.added"
                                            : "response.content_part.added",
                   it, ix, part_pre(st, it), "", 0, part_post(st, it));
}

static int text_delta(struct resp_stream *st, const struct kw_node *t, bool refusal)
{
    bool fresh = st->open < 0 || st->items[st->open].kind != IT_MESSAGE;
    if (fresh)
        st->refusal = refusal;
    struct item *it = open_item(st, IT_MESSAGE, -1);
    if (it == NULL)
        return KW_ERROR;
    if (fresh)
        announce(st, it);
    kw_buf_append(&it->text, t->str, t->len);
    return item_event(st, st->refusal ? "response.refusal.delta" : "response.output_text.delta", it,
                      st->open, ",\"delta\":", t->str, t->len,
                      st->refusal ? "" : ",\"logprobs\":[]");
}

static int reasoning_delta(struct resp_stream *st, const struct kw_node *t)
{
    bool fresh = st->open < 0 || st->items[st->open].kind != IT_REASONING;
    struct item *it = open_item(st, IT_REASONING, -1);
    if (it == NULL)
        return KW_ERROR;
    if (fresh)
        announce(st, it);
    kw_buf_append(&it->text, t->str, t->len);
    return item_event(st, "response.reasoning_summary_text.delta", it, st->open,
                      ",\"delta\":", t->str, t->len, "");
}

static int call_delta(struct dp_request *r, struct resp_stream *st, size_t pos,
                      const struct kw_node *call)
{
    const struct kw_node *ix = kw_node_get(call, "index"), *id = kw_node_get(call, "id");
    const struct kw_node *fn = kw_node_get(call, "function");
    const struct kw_node *name = kw_node_get(fn, "name"), *args = kw_node_get(fn, "arguments");
    int k = is(ix, KW_NODE_INT) && ix->i >= 0 && ix->i < 1024 ? (int)ix->i : (int)pos;
    bool fresh = true;
    for (int i = 0; i < st->nitems; i++)
        fresh &= !(st->items[i].kind == IT_CALL && st->items[i].call == k);
    struct item *it = open_item(st, IT_CALL, k);
    if (it == NULL) {
        snprintf(r->up.write_err, sizeof(r->up.write_err),
                 "more than %d output items in one response, or a tool call continued late",
                 RESP_MAX_ITEMS);
        return KW_ERROR;
    }
    if (fresh) {
        it->call_id = is(id, KW_NODE_STRING) ? kw_arena_strdup(r->arena, id->str)
                                             : kw_arena_printf(r->arena, "call_%s_%d", r->id, k);
        it->name = kw_arena_strdup(r->arena, is(name, KW_NODE_STRING) ? name->str : "");
        if (it->call_id == NULL || it->name == NULL)
            return KW_ERROR;
        announce(st, it);
    }
    if (!is(args, KW_NODE_STRING) || args->len == 0)
        return KW_OK;
    kw_buf_append(&it->text, args->str, args->len);
    return item_event(st, "response.function_call_arguments.delta", it, (int)(it - st->items),
                      ",\"delta\":", args->str, args->len, "");
}

/* The Response as it stands: every item complete. */
static void finish(struct dp_request *r, struct resp_stream *st)
{
    close_item(st);
    st->done = true;
    struct kw_buf o;
    kw_buf_init(&o, DP_MAX_UPSTREAM_RESPONSE * 2);
    for (int i = 0; i < st->nitems; i++) {
        if (i > 0)
            kw_buf_puts(&o, ",");
        item_json(&o, st, &st->items[i], true);
    }
    const char *type = st->incomplete != NULL ? "response.incomplete" : "response.completed";
    ev_head(st, type);
    kw_buf_puts(st->out, ",\"response\":");
    response_json(st->out, r, st->incomplete != NULL ? "incomplete" : "completed", st->incomplete,
                  o.data != NULL ? o.data : "", o.len, r->usage.have, st->created);
    ev_end(st);
    kw_buf_cleanup(&o);
}

static int stream_error(struct resp_stream *st, const char *code, const char *msg, size_t len)
{
    st->done = true;
    ev_head(st, "error");
    kw_buf_puts(st->out, ",\"code\":");
    wstr(st->out, code);
    kw_buf_puts(st->out, ",\"message\":");
    kw_json_write_string(st->out, msg, len);
    kw_buf_puts(st->out, ",\"param\":null");
    return ev_end(st);
}

static int on_chunk(void *ud, const char *raw, size_t raw_len, const char *event, const char *data,
                    size_t data_len, bool has_data)
{
    (void)raw;
    (void)raw_len;
    (void)event;
    struct dp_request *r = ud;
    struct resp_stream *st = stream_of(r);
    if (st == NULL || !has_data || st->done)
        return KW_OK;
    if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        finish(r, st);
        return KW_OK;
    }
    struct kw_node *root;
    char err[128];
    kw_arena_reset(r->scratch);
    if (kw_json_parse(r->scratch, data, data_len, &root, err, sizeof(err)) != KW_OK) {
        snprintf(r->up.write_err, sizeof(r->up.write_err), "upstream chunk is not JSON: %s", err);
        return KW_ERROR;
    }
    const struct kw_node *e = kw_node_get(root, "error");
    if (e != NULL && e->type != KW_NODE_NULL) {
        const struct kw_node *msg = kw_node_get(e, "message"), *code = kw_node_get(e, "code");
        const struct kw_node *type = kw_node_get(e, "type");
        const char *c = is(code, KW_NODE_STRING)   ? code->str
                        : is(type, KW_NODE_STRING) ? type->str
                                                   : "server_error";
        return is(msg, KW_NODE_STRING) ? stream_error(st, c, msg->str, msg->len)
                                       : stream_error(st, c, "upstream error", 14);
    }
    const struct kw_node *choices = kw_node_get(root, "choices");
    for (size_t i = 0; is(choices, KW_NODE_SEQ) && i < choices->n; i++) {
        const struct kw_node *c = choices->items[i], *ix = kw_node_get(c, "index");
        if (is(ix, KW_NODE_INT) && ix->i != 0)
            continue; /* a Response has one answer: n > 1 is not translated */
        const struct kw_node *delta = kw_node_get(c, "delta");
        const struct kw_node *text = kw_node_get(delta, "content");
        const struct kw_node *refusal = kw_node_get(delta, "refusal");
        const struct kw_node *reasoning = kw_node_get(delta, "reasoning_content");
        const struct kw_node *calls = kw_node_get(delta, "tool_calls");
        int rc = KW_OK;
        if (is(reasoning, KW_NODE_STRING) && reasoning->len > 0)
            rc |= reasoning_delta(st, reasoning);
        if (is(text, KW_NODE_STRING) && text->len > 0)
            rc |= text_delta(st, text, false);
        if (is(refusal, KW_NODE_STRING) && refusal->len > 0)
            rc |= text_delta(st, refusal, true);
        for (size_t j = 0; is(calls, KW_NODE_SEQ) && j < calls->n; j++)
            rc |= call_delta(r, st, j, calls->items[j]);
        const char *inc = incomplete_reason(kw_node_get(c, "finish_reason"));
        if (inc != NULL)
            st->incomplete = inc;
        if (rc != KW_OK)
            return KW_ERROR;
    }
    return KW_OK;
}

static int resp_stream_begin(struct dp_request *r, struct kw_buf *out)
{
    struct resp_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    static const char *const types[] = {"response.created", "response.in_progress"};
    for (int i = 0; i < 2; i++) {
        ev_head(st, types[i]);
        kw_buf_puts(out, ",\"response\":");
        response_json(out, r, "in_progress", NULL, "", 0, false, st->created);
        ev_end(st);
    }
    return KW_OK;
}

static int resp_stream(struct dp_request *r, const char *buf, size_t len, struct kw_buf *out)
{
    struct resp_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    return dp_sse_feed(&st->sse, buf, len, on_chunk, r);
}

static int resp_stream_end(struct dp_request *r, struct kw_buf *out)
{
    struct resp_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    if (dp_sse_finish(&st->sse, on_chunk, r) != KW_OK || st->done)
        return KW_OK;
    static const char msg[] = "the upstream ended the stream before the response was complete";
    return stream_error(st, "server_error", msg, sizeof(msg) - 1);
}

static int resp_stream_error(struct dp_request *r, const char *msg, struct kw_buf *out)
{
    struct resp_stream *st = stream_of(r);
    if (st == NULL)
        return KW_ERROR;
    st->out = out;
    if (st->done)
        return KW_OK;
    return stream_error(st,
                        r->cut && r->err.status == 429 ? "rate_limit_exceeded"
                        : r->err.code[0] != '\0'       ? r->err.code
                                                       : "server_error",
                        msg, strlen(msg));
}

const struct dp_front_ops dp_front_responses = {
    .name = "responses",
    .request = resp_request,
    .response = resp_response,
    .error_body = resp_error_body,
    .stream_begin = resp_stream_begin,
    .stream = resp_stream,
    .stream_end = resp_stream_end,
    .stream_error = resp_stream_error,
    .keepalive = ": keep-alive\n\n",
    .id_header = NULL,
    .cleanup = resp_cleanup,
};
