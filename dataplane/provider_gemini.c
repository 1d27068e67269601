/* Gemini (Generative Language API) behind the OpenAI chat and embeddings APIs.
 *
 *   chat:       POST {base}/v1beta/models/{model}:generateContent
 *               POST {base}/v1beta/models/{model}:streamGenerateContent?alt=sse
 *   embeddings: POST {base}/v1beta/models/{model}:embedContent       (one input)
 *               POST {base}/v1beta/models/{model}:batchEmbedContents (a list)
 * with the key in x-goog-api-key.
 *
 * Request: system/developer messages -> systemInstruction; user -> role "user", assistant
 * -> role "model"; text parts, images as inlineData (data URLs) or fileData (URLs);
 * assistant tool_calls -> functionCall parts; tool messages -> functionResponse parts of one
 * user turn (the function name looked up by tool_call_id, the content as
 * {"content": ...} unless it is a JSON object). temperature, top_p, max(_completion)_tokens,
 * stop, presence/frequency_penalty, seed, response_format (responseMimeType, and the
 * schema as responseJsonSchema) -> generationConfig; tools ->
 * functionDeclarations; tool_choice -> toolConfig.functionCallingConfig (AUTO/NONE/ANY,
 * allowedFunctionNames).
 *
 * Response: the first candidate's text parts joined, functionCall parts -> tool_calls (ids
 * "call_N" unless Gemini sent one); finishReason STOP -> stop (tool_calls when a function
 * was called), MAX_TOKENS -> length, SAFETY and the other blocking reasons ->
 * content_filter; usageMetadata: prompt = promptTokenCount (cached included), completion =
 * candidatesTokenCount + thoughtsTokenCount, cached = cachedContentTokenCount.
 *
 * Stream: every SSE event is a GenerateContentResponse: its parts become content and
 * tool-call chunks, a finishReason the finish chunk, usageMetadata is kept (the last one is
 * the total). Gemini ends the stream by closing it, without [DONE]: on_stream_end sends the
 * usage chunk and data: [DONE].
 *
 * Errors: {"error":{"code","message","status"}} -> {"error":{"message","type","code":
 * status}}. */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "translate.h"

struct gem_state {
    struct dp_tr_stream tr; /* first */
    int64_t prompt, candidates, thoughts, cached;
    bool batch; /* embeddings: batchEmbedContents */
    bool base64;
};

static struct gem_state *state_of(struct dp_request *r)
{
    return dp_tr_state_sized(r, sizeof(struct gem_state));
}

static struct kw_node *text_part(struct kw_arena *a, const char *s, size_t len)
{
    return dp_tr_map1(a, "text", kw_node_string(a, s, len));
}

/* The MIME type of an image URL by its extension (fileData needs one). */
static const char *mime_of(const char *url)
{
    static const char *const map[][2] = {{".png", "image/png"},
                                         {".gif", "image/gif"},
                                         {".webp", "image/webp"},
                                         {".pdf", "application/pdf"},
                                         {".heic", "image/heic"}};
    const char *q = strpbrk(url, "?#");
    size_t len = q != NULL ? (size_t)(q - url) : strlen(url);
    for (size_t i = 0; i < KW_ARRAY_LEN(map); i++) {
        size_t el = strlen(map[i][0]);
        if (len >= el && strncasecmp(url + len - el, map[i][0], el) == 0)
            return map[i][1];
    }
    return "image/jpeg";
}

/* An OpenAI content part as a Gemini part, or NULL (unsupported). */
static struct kw_node *content_part(struct kw_arena *a, const struct kw_node *part)
{
    const struct kw_node *type = kw_node_get(part, "type");
    if (type == NULL || type->type != KW_NODE_STRING)
        return NULL;
    if (strcmp(type->str, "text") == 0) {
        const struct kw_node *text = kw_node_get(part, "text");
        return text != NULL && text->type == KW_NODE_STRING ? text_part(a, text->str, text->len)
                                                            : NULL;
    }
    if (strcmp(type->str, "image_url") != 0)
        return NULL;
    const struct kw_node *url = kw_node_get(kw_node_get(part, "image_url"), "url");
    if (url == NULL || url->type != KW_NODE_STRING)
        return NULL;
    const char *mime, *data;
    size_t mlen;
    struct kw_node *d = kw_node_new(a, KW_NODE_MAP);
    if (dp_tr_data_url(url->str, &mime, &mlen, &data)) {
        kw_node_map_put(a, d, "mimeType", kw_node_string(a, mime, mlen));
        kw_node_map_put(a, d, "data", kw_node_cstring(a, data));
        return dp_tr_map1(a, "inlineData", d);
    }
    kw_node_map_put(a, d, "mimeType", kw_node_cstring(a, mime_of(url->str)));
    kw_node_map_put(a, d, "fileUri", dp_tr_str(a, url));
    return dp_tr_map1(a, "fileData", d);
}

/* The function name of the tool call with this id among earlier assistant messages. */
static const struct kw_node *call_name(const struct kw_node *list, size_t before,
                                       const struct kw_node *id)
{
    for (size_t i = before; i-- > 0;) {
        const struct kw_node *calls = kw_node_get(list->items[i], "tool_calls");
        for (size_t j = 0; calls != NULL && calls->type == KW_NODE_SEQ && j < calls->n; j++) {
            const struct kw_node *cid = kw_node_get(calls->items[j], "id");
            if (cid != NULL && cid->type == KW_NODE_STRING && cid->len == id->len &&
                memcmp(cid->str, id->str, id->len) == 0)
                return kw_node_get(kw_node_get(calls->items[j], "function"), "name");
        }
    }
    return NULL;
}

static struct kw_node *function_response(struct dp_request *r, const struct kw_node *list, size_t i)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *m = list->items[i];
    const struct kw_node *id = kw_node_get(m, "tool_call_id"), *content = kw_node_get(m, "content");
    const struct kw_node *name =
        id != NULL && id->type == KW_NODE_STRING ? call_name(list, i, id) : NULL;
    if (name == NULL || name->type != KW_NODE_STRING || content == NULL ||
        (content->type != KW_NODE_STRING && content->type != KW_NODE_SEQ)) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                     "messages[%zu]: a tool message needs content and the tool_call_id of an "
                     "earlier assistant tool call",
                     i);
        return NULL;
    }
    struct kw_buf text;
    kw_buf_init(&text, DP_MAX_UPSTREAM_RESPONSE);
    dp_tr_system_text(&text, content); /* a string, or text parts joined */
    struct kw_node *resp = NULL;
    char err[64];
    if (kw_json_parse(a, text.data != NULL ? text.data : "", text.len, &resp, err, sizeof(err)) !=
            KW_OK ||
        resp->type != KW_NODE_MAP)
        resp = dp_tr_map1(a, "content",
                          kw_node_string(a, text.data != NULL ? text.data : "", text.len));
    kw_buf_cleanup(&text);
    struct kw_node *fr = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, fr, "name", dp_tr_str(a, name));
    kw_node_map_put(a, fr, "response", resp);
    return dp_tr_map1(a, "functionResponse", fr);
}

static struct kw_node *function_call_part(struct kw_arena *a, const struct kw_node *id,
                                          const struct kw_node *name, struct kw_node *input)
{
    (void)id; /* Gemini's calls have no id: a response names its function */
    struct kw_node *fc = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, fc, "name", dp_tr_str(a, name));
    kw_node_map_put(a, fc, "args", input);
    return dp_tr_map1(a, "functionCall", fc);
}

/* The parts of a user or assistant message. NULL with a failure prepared. */
static struct kw_node *message_parts(struct dp_request *r, size_t i, const struct kw_node *m,
                                     bool assistant)
{
    (void)assistant;
    static const struct dp_tr_content_ops ops = {text_part,          content_part,
                                                 function_call_part, "is not a text or image part",
                                                 "needs content",    true};
    return dp_tr_content(r, i, kw_node_get(m, "content"), kw_node_get(m, "tool_calls"), &ops);
}

static struct kw_node *generation_config(struct dp_request *r, const struct kw_node *in)
{
    struct kw_arena *a = r->arena;
    struct kw_node *gc = kw_node_new(a, KW_NODE_MAP);
    static const char *const copied[][2] = {{"temperature", "temperature"},
                                            {"top_p", "topP"},
                                            {"presence_penalty", "presencePenalty"},
                                            {"frequency_penalty", "frequencyPenalty"},
                                            {"seed", "seed"}};
    for (size_t i = 0; i < KW_ARRAY_LEN(copied); i++) {
        struct kw_node *v = kw_node_get(in, copied[i][0]);
        if (v != NULL && v->type != KW_NODE_NULL)
            kw_node_map_put(a, gc, copied[i][1], v);
    }
    int64_t max = dp_tr_max_tokens(in, -1);
    if (max >= 0)
        kw_node_map_put(a, gc, "maxOutputTokens", kw_node_int(a, max));
    struct kw_node *stop = dp_tr_stop_list(a, in);
    if (stop != NULL)
        kw_node_map_put(a, gc, "stopSequences", stop);
    /* response_format: JSON output, and for json_schema the schema itself as JSON Schema
     * (responseJsonSchema: the whole of it, where responseSchema takes only an OpenAPI
     * subset that refuses additionalProperties and the like) */
    struct dp_tr_format f;
    if (dp_tr_format(r, in, &f) != KW_OK)
        return NULL;
    if (f.kind != DP_TR_FORMAT_TEXT)
        kw_node_map_put(a, gc, "responseMimeType", kw_node_cstring(a, "application/json"));
    if (f.kind == DP_TR_FORMAT_JSON_SCHEMA)
        kw_node_map_put(a, gc, "responseJsonSchema", f.schema);
    /* reasoning_effort -> thinkingConfig: Gemini's budgets are larger than Anthropic's for
     * the same effort (docs/providers.md); thought summaries asked for unless omitted */
    int64_t budget = dp_tr_thinking_budget(r);
    const struct kw_node *effort = kw_node_get(in, "reasoning_effort");
    if (budget >= 0) {
        if (r->thinking_budget < 0 && effort != NULL && effort->type == KW_NODE_STRING)
            budget = strcmp(effort->str, "medium") == 0 ? 8192
                     : strcmp(effort->str, "high") == 0 ? 24576
                                                        : budget;
        struct kw_node *tc = dp_tr_map1(a, "thinkingBudget", kw_node_int(a, budget));
        if (budget > 0 && !r->backend->reasoning_omit)
            kw_node_map_put(a, tc, "includeThoughts", kw_node_bool(a, true));
        kw_node_map_put(a, gc, "thinkingConfig", tc);
    }
    return gc;
}

/* A function as a Gemini functionDeclaration. */
static struct kw_node *function_decl(struct kw_arena *a, const struct kw_node *name,
                                     const struct kw_node *desc, struct kw_node *params)
{
    struct kw_node *d = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, d, "name", dp_tr_str(a, name));
    if (desc != NULL)
        kw_node_map_put(a, d, "description", dp_tr_str(a, desc));
    kw_node_map_put(a, d, "parameters", params);
    return d;
}

/* tools and tool_choice. KW_OK, or KW_ERROR with a failure prepared. */
static int translate_tools(struct dp_request *r, const struct kw_node *in, struct kw_node *body)
{
    struct kw_arena *a = r->arena;
    struct kw_node *decls;
    if (dp_tr_tools(r, in, function_decl, &decls) != KW_OK)
        return KW_ERROR;
    if (decls != NULL) {
        struct kw_node *list = kw_node_new(a, KW_NODE_SEQ);
        kw_node_seq_push(a, list, dp_tr_map1(a, "functionDeclarations", decls));
        kw_node_map_put(a, body, "tools", list);
    }
    const struct kw_node *tc = kw_node_get(in, "tool_choice");
    if (tc == NULL || tc->type == KW_NODE_NULL)
        return KW_OK;
    struct kw_node *fcc = kw_node_new(a, KW_NODE_MAP);
    const char *mode = NULL;
    if (tc->type == KW_NODE_STRING)
        mode = strcmp(tc->str, "auto") == 0       ? "AUTO"
               : strcmp(tc->str, "none") == 0     ? "NONE"
               : strcmp(tc->str, "required") == 0 ? "ANY"
                                                  : NULL;
    else {
        const struct kw_node *name = kw_node_get(kw_node_get(tc, "function"), "name");
        if (name != NULL && name->type == KW_NODE_STRING) {
            struct kw_node *names = kw_node_new(a, KW_NODE_SEQ);
            kw_node_seq_push(a, names, dp_tr_str(a, name));
            kw_node_map_put(a, fcc, "allowedFunctionNames", names);
            mode = "ANY";
        }
    }
    if (mode == NULL) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "tool_choice",
                     "tool_choice must be \"auto\", \"none\", \"required\" or "
                     "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        return KW_ERROR;
    }
    kw_node_map_put(a, fcc, "mode", kw_node_cstring(a, mode));
    kw_node_map_put(a, body, "toolConfig", dp_tr_map1(a, "functionCallingConfig", fcc));
    return KW_OK;
}

static int chat_body(struct dp_request *r, struct kw_node **out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->up_json;
    const struct kw_node *n = kw_node_get(in, "n");
    if (n != NULL && n->type == KW_NODE_INT && n->i != 1) {
        dp_error_set(r, 400, "invalid_request_error", "unsupported_value", "n",
                     "n must be 1 for Gemini backends");
        return KW_ERROR;
    }
    struct kw_node *body = kw_node_new(a, KW_NODE_MAP);
    struct kw_node *contents = kw_node_new(a, KW_NODE_SEQ);
    static const struct dp_tr_turn_ops turns = {"model",       "parts",           false,
                                                message_parts, function_response, NULL};
    struct kw_node *system = kw_node_new(a, KW_NODE_SEQ);
    if (dp_tr_turns(r, &turns, kw_node_get(in, "messages"), system, contents) != KW_OK)
        return KW_ERROR;
    struct kw_buf sys;
    kw_buf_init(&sys, 4u * 1024 * 1024);
    dp_tr_system_join(&sys, system);
    kw_node_map_put(a, body, "contents", contents);
    if (sys.len > 0) {
        struct kw_node *parts = kw_node_new(a, KW_NODE_SEQ);
        kw_node_seq_push(a, parts, text_part(a, sys.data, sys.len));
        kw_node_map_put(a, body, "systemInstruction", dp_tr_map1(a, "parts", parts));
    }
    kw_buf_cleanup(&sys);
    struct kw_node *gc = generation_config(r, in);
    if (gc == NULL)
        return KW_ERROR;
    if (gc->n > 0)
        kw_node_map_put(a, body, "generationConfig", gc);
    if (translate_tools(r, in, body) != KW_OK)
        return KW_ERROR;
    *out = body;
    return KW_OK;
}

static struct kw_node *embed_content(struct kw_arena *a, const struct kw_node *text)
{
    struct kw_node *parts = kw_node_new(a, KW_NODE_SEQ);
    kw_node_seq_push(a, parts, text_part(a, text->str, text->len));
    return dp_tr_map1(a, "parts", parts);
}

static int embeddings_body(struct dp_request *r, struct gem_state *st, struct kw_node **out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->up_json, *input = kw_node_get(in, "input");
    const struct kw_node *dims = kw_node_get(in, "dimensions");
    const struct kw_node *fmt = kw_node_get(in, "encoding_format");
    st->base64 = fmt != NULL && fmt->type == KW_NODE_STRING && strcmp(fmt->str, "base64") == 0;
    for (size_t i = 0; input->type == KW_NODE_SEQ && i < input->n; i++)
        if (input->items[i]->type != KW_NODE_STRING) {
            dp_error_set(r, 400, "invalid_request_error", "unsupported_value", "input",
                         "input must be a string or a list of strings for Gemini backends "
                         "(token arrays are not supported)");
            return KW_ERROR;
        }
    struct kw_node *body = kw_node_new(a, KW_NODE_MAP);
    st->batch = input->type == KW_NODE_SEQ;
    if (!st->batch) {
        kw_node_map_put(a, body, "content", embed_content(a, input));
        if (dims != NULL && dims->type == KW_NODE_INT)
            kw_node_map_put(a, body, "outputDimensionality", kw_node_int(a, dims->i));
        *out = body;
        return KW_OK;
    }
    struct kw_node *reqs = kw_node_new(a, KW_NODE_SEQ);
    for (size_t i = 0; i < input->n; i++) {
        struct kw_node *q = kw_node_new(a, KW_NODE_MAP);
        kw_node_map_put(a, q, "model",
                        kw_node_cstring(a, kw_arena_printf(a, "models/%s", r->upstream_model)));
        kw_node_map_put(a, q, "content", embed_content(a, input->items[i]));
        if (dims != NULL && dims->type == KW_NODE_INT)
            kw_node_map_put(a, q, "outputDimensionality", kw_node_int(a, dims->i));
        kw_node_seq_push(a, reqs, q);
    }
    kw_node_map_put(a, body, "requests", reqs);
    *out = body;
    return KW_OK;
}

int dp_gemini_request(struct dp_request *r, struct kw_node **body, const char **method)
{
    struct gem_state *st = state_of(r);
    if (st == NULL)
        return KW_ERROR;
    if (r->api != DP_API_CHAT && r->api != DP_API_EMBEDDINGS) {
        dp_error_set(r, 400, "invalid_request_error", "unsupported_endpoint", NULL,
                     "backend %s (Gemini) serves /v1/chat/completions and /v1/embeddings",
                     r->backend->meta.name);
        return KW_ERROR;
    }
    if ((r->api == DP_API_CHAT ? chat_body(r, body) : embeddings_body(r, st, body)) != KW_OK)
        return KW_ERROR;
    *method = r->api == DP_API_EMBEDDINGS ? (st->batch ? "batchEmbedContents" : "embedContent")
              : r->stream                 ? "streamGenerateContent?alt=sse"
                                          : "generateContent";
    return KW_OK;
}

static int gemini_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    struct kw_node *body;
    const char *method;
    if (dp_gemini_request(r, &body, &method) != KW_OK)
        return KW_ERROR;
    size_t blen = r->base_len;
    const char *base = r->base_url != NULL ? r->base_url : "";
    char *model = curl_easy_escape(NULL, r->upstream_model, 0);
    if (model == NULL)
        return KW_ERROR;
    int rc = kw_buf_printf(url, "%.*s/v1beta/models/%s:%s", (int)blen, base, model, method);
    curl_free(model);
    rc |= dp_openai_add_header(headers, r->arena, "Content-Type", "application/json");
    const char *key = dp_provider_secret(r, NULL);
    if (key != NULL)
        rc |= dp_openai_add_header(headers, r->arena, "x-goog-api-key", key);
    if (rc != KW_OK)
        return KW_ERROR;
    return dp_openai_finish(r, headers, body);
}

/* ---- responses ------------------------------------------------------------------------ */

static const char *finish_reason(const struct kw_node *fr)
{
    if (fr == NULL || fr->type != KW_NODE_STRING)
        return NULL;
    if (strcmp(fr->str, "STOP") == 0 || strcmp(fr->str, "FINISH_REASON_UNSPECIFIED") == 0 ||
        strcmp(fr->str, "MALFORMED_FUNCTION_CALL") == 0 || strcmp(fr->str, "OTHER") == 0)
        return "stop";
    if (strcmp(fr->str, "MAX_TOKENS") == 0)
        return "length";
    return "content_filter"; /* SAFETY, RECITATION, BLOCKLIST, PROHIBITED_CONTENT, SPII, ... */
}

static void read_usage(struct dp_request *r, struct gem_state *st, const struct kw_node *u)
{
    if (u == NULL || u->type != KW_NODE_MAP)
        return;
    st->prompt = dp_tr_int(u, "promptTokenCount");
    st->candidates = dp_tr_int(u, "candidatesTokenCount");
    st->thoughts = dp_tr_int(u, "thoughtsTokenCount");
    st->cached = dp_tr_int(u, "cachedContentTokenCount");
    /* promptTokenCount includes cachedContentTokenCount (as OpenAI's prompt_tokens do) */
    r->usage.prompt = st->prompt;
    r->usage.completion = st->candidates + st->thoughts; /* OpenAI counts reasoning in it */
    r->usage.reasoning = st->thoughts;
    r->usage.cached = st->cached;
    r->usage.have = true;
    dp_usage_raw(&r->usage, "promptTokenCount", st->prompt);
    dp_usage_raw(&r->usage, "cachedContentTokenCount", st->cached);
    dp_usage_raw(&r->usage, "candidatesTokenCount", st->candidates);
    dp_usage_raw(&r->usage, "thoughtsTokenCount", st->thoughts);
}

static void read_ident(struct dp_request *r, struct gem_state *st, const struct kw_node *root)
{
    const struct kw_node *id = kw_node_get(root, "responseId");
    if (id != NULL && id->type == KW_NODE_STRING)
        dp_tr_copy(st->tr.ident.id, sizeof(st->tr.ident.id), id, "");
    dp_tr_copy(st->tr.ident.model, sizeof(st->tr.ident.model), kw_node_get(root, "modelVersion"),
               r->upstream_model);
}

/* The id of a functionCall part: Gemini's when it sent one, else call_N. */
static const char *call_id(struct kw_arena *a, const struct kw_node *fc, int n, size_t *len)
{
    const struct kw_node *id = kw_node_get(fc, "id");
    if (id != NULL && id->type == KW_NODE_STRING && id->len > 0) {
        *len = id->len;
        return id->str;
    }
    char *s = kw_arena_printf(a, "call_%d", n);
    *len = s != NULL ? strlen(s) : 0;
    return s != NULL ? s : "";
}

static int chat_response(struct dp_request *r, struct gem_state *st, const struct kw_node *root,
                         struct kw_buf *out)
{
    const struct kw_node *cands = kw_node_get(root, "candidates");
    const struct kw_node *cand =
        cands != NULL && cands->type == KW_NODE_SEQ && cands->n > 0 ? cands->items[0] : NULL;
    const struct kw_node *parts = kw_node_get(kw_node_get(cand, "content"), "parts");
    struct kw_buf text, calls;
    struct dp_tr_reasoning rs;
    kw_buf_init(&text, DP_MAX_UPSTREAM_RESPONSE);
    kw_buf_init(&calls, DP_MAX_UPSTREAM_RESPONSE);
    dp_tr_reasoning_init(&rs);
    bool any = false;
    int ncalls = 0;
    for (size_t i = 0; parts != NULL && parts->type == KW_NODE_SEQ && i < parts->n; i++) {
        const struct kw_node *p = parts->items[i], *t = kw_node_get(p, "text");
        const struct kw_node *fc = kw_node_get(p, "functionCall");
        const struct kw_node *thought = kw_node_get(p, "thought");
        if (thought != NULL && thought->type == KW_NODE_BOOL && thought->b) {
            if (t != NULL && t->type == KW_NODE_STRING) /* a thought summary: reasoning */
                kw_buf_append(&rs.text, t->str, t->len);
            continue;
        }
        if (fc != NULL) {
            const struct kw_node *name = kw_node_get(fc, "name");
            size_t idlen;
            const char *id = call_id(r->arena, fc, ncalls++, &idlen);
            if (name != NULL && name->type == KW_NODE_STRING)
                dp_tr_tool_call_json(&calls, id, idlen, name->str, name->len,
                                     kw_node_get(fc, "args"));
        } else if (t != NULL && t->type == KW_NODE_STRING) {
            kw_buf_append(&text, t->str, t->len);
            any = true;
        }
    }
    const char *fr = finish_reason(kw_node_get(cand, "finishReason"));
    if (cand == NULL && kw_node_get(kw_node_get(root, "promptFeedback"), "blockReason") != NULL)
        fr = "content_filter"; /* the prompt itself was blocked */
    int rc = dp_tr_completion_r(out, r, &st->tr.ident, any ? &text : NULL, &rs, &calls, fr);
    kw_buf_cleanup(&text);
    kw_buf_cleanup(&calls);
    dp_tr_reasoning_cleanup(&rs);
    return rc;
}

/* One embedding: floats as a JSON array, or base64 of little-endian float32s. */
static void embedding_json(struct kw_buf *out, const struct kw_node *values, bool base64)
{
    if (!base64) {
        kw_json_write(values, out);
        return;
    }
    size_t n = values->n;
    unsigned char *raw = malloc(n * 4 + 1);
    char *b64 = malloc(((n * 4 + 2) / 3) * 4 + 1);
    if (raw == NULL || b64 == NULL) {
        free(raw);
        free(b64);
        kw_buf_puts(out, "\"\"");
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float f = values->items[i]->str != NULL ? strtof(values->items[i]->str, NULL) : 0.0f;
        uint32_t u;
        memcpy(&u, &f, 4);
        for (int k = 0; k < 4; k++)
            raw[i * 4 + (size_t)k] = (unsigned char)(u >> (8 * k));
    }
    int len = EVP_EncodeBlock((unsigned char *)b64, raw, (int)(n * 4));
    kw_buf_puts(out, "\"");
    kw_buf_append(out, b64, (size_t)len);
    kw_buf_puts(out, "\"");
    free(raw);
    free(b64);
}

static int embeddings_response(struct dp_request *r, struct gem_state *st,
                               const struct kw_node *root, struct kw_buf *out)
{
    const struct kw_node *list = kw_node_get(root, "embeddings");
    const struct kw_node *one = kw_node_get(root, "embedding");
    size_t n = st->batch ? (list != NULL && list->type == KW_NODE_SEQ ? list->n : 0)
                         : (one != NULL ? 1 : 0);
    if (n == 0)
        return KW_ERROR;
    kw_buf_puts(out, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < n; i++) {
        const struct kw_node *values = kw_node_get(st->batch ? list->items[i] : one, "values");
        if (values == NULL || values->type != KW_NODE_SEQ)
            return KW_ERROR;
        kw_buf_printf(
            out, "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":", i > 0 ? "," : "", i);
        embedding_json(out, values, st->base64);
        kw_buf_puts(out, "}");
    }
    /* Gemini reports no token counts for embeddings unless usageMetadata is present */
    const struct kw_node *u = kw_node_get(root, "usageMetadata");
    r->usage.prompt = dp_tr_int(u, "promptTokenCount");
    r->usage.completion = 0;
    r->usage.have = u != NULL;
    if (u != NULL)
        dp_usage_raw(&r->usage, "promptTokenCount", r->usage.prompt);
    kw_buf_puts(out, "],\"model\":");
    kw_json_write_string(out, r->upstream_model, strlen(r->upstream_model));
    return kw_buf_printf(out, ",\"usage\":{\"prompt_tokens\":%lld,\"total_tokens\":%lld}}",
                         (long long)r->usage.prompt, (long long)r->usage.prompt);
}

static int gemini_on_response(struct dp_request *r, const char *body, size_t len,
                              struct kw_buf *out)
{
    struct kw_node *root;
    char err[128];
    struct gem_state *st = state_of(r);
    if (st == NULL || kw_json_parse(r->arena, body, len, &root, err, sizeof(err)) != KW_OK ||
        root->type != KW_NODE_MAP)
        return KW_ERROR;
    if (r->api == DP_API_EMBEDDINGS)
        return embeddings_response(r, st, root, out);
    read_ident(r, st, root);
    read_usage(r, st, kw_node_get(root, "usageMetadata"));
    return chat_response(r, st, root, out);
}

static int gemini_on_event(struct dp_request *r, const char *raw, size_t raw_len, const char *event,
                           const char *data, size_t data_len, struct kw_buf *out)
{
    (void)raw;
    (void)raw_len;
    (void)event;
    struct gem_state *st = state_of(r);
    struct kw_node *ev;
    char err[128];
    kw_arena_reset(r->scratch);
    if (st == NULL || kw_json_parse(r->scratch, data, data_len, &ev, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    const struct kw_node *e = kw_node_get(ev, "error");
    if (e != NULL) { /* an error after the stream started */
        const struct kw_node *msg = kw_node_get(e, "message"), *status = kw_node_get(e, "status");
        bool m = msg != NULL && msg->type == KW_NODE_STRING;
        return dp_tr_error_event(
            out, m ? msg->str : "upstream error", m ? msg->len : 14, "server_error",
            status != NULL && status->type == KW_NODE_STRING ? status->str : NULL);
    }
    if (!st->tr.started)
        read_ident(r, st, ev);
    read_usage(r, st, kw_node_get(ev, "usageMetadata"));
    dp_tr_chunk_role(out, &st->tr);
    const struct kw_node *cands = kw_node_get(ev, "candidates");
    const struct kw_node *cand =
        cands != NULL && cands->type == KW_NODE_SEQ && cands->n > 0 ? cands->items[0] : NULL;
    const struct kw_node *parts = kw_node_get(kw_node_get(cand, "content"), "parts");
    for (size_t i = 0; parts != NULL && parts->type == KW_NODE_SEQ && i < parts->n; i++) {
        const struct kw_node *p = parts->items[i], *t = kw_node_get(p, "text");
        const struct kw_node *fc = kw_node_get(p, "functionCall");
        const struct kw_node *thought = kw_node_get(p, "thought");
        if (thought != NULL && thought->type == KW_NODE_BOOL && thought->b) {
            if (t != NULL && t->type == KW_NODE_STRING)
                dp_tr_chunk_reasoning(out, &st->tr, t->str, t->len);
            continue;
        }
        if (fc != NULL) {
            const struct kw_node *name = kw_node_get(fc, "name");
            if (name == NULL || name->type != KW_NODE_STRING)
                return KW_ERROR;
            struct kw_buf args;
            kw_buf_init(&args, DP_MAX_SSE_EVENT);
            const struct kw_node *in = kw_node_get(fc, "args");
            if (in != NULL)
                kw_json_write(in, &args);
            else
                kw_buf_puts(&args, "{}");
            size_t idlen;
            const char *id = call_id(r->scratch, fc, st->tr.tools, &idlen);
            dp_tr_chunk_tool(out, &st->tr, id, idlen, name->str, name->len,
                             args.data != NULL ? args.data : "", args.len);
            kw_buf_cleanup(&args);
        } else if (t != NULL && t->type == KW_NODE_STRING && t->len > 0) {
            dp_tr_chunk_text(out, &st->tr, t->str, t->len);
        }
    }
    const char *fr = finish_reason(kw_node_get(cand, "finishReason"));
    if (cand == NULL && kw_node_get(kw_node_get(ev, "promptFeedback"), "blockReason") != NULL)
        fr = "content_filter";
    if (fr != NULL)
        return dp_tr_chunk_finish(out, &st->tr, fr);
    return KW_OK;
}

static int gemini_on_stream_end(struct dp_request *r, struct kw_buf *out)
{
    struct gem_state *st = state_of(r);
    if (st == NULL)
        return KW_ERROR;
    if (!st->tr.finished)
        dp_tr_chunk_finish(out, &st->tr, "stop");
    return dp_tr_stream_end(out, r, &st->tr);
}

/* {"error":{"code":400,"message","status":"INVALID_ARGUMENT"}} (an object, or a list of
 * one) -> OpenAI's error shape. */
int dp_gemini_error(long status, const struct kw_node *root, struct kw_buf *out)
{
    if (root->type == KW_NODE_SEQ && root->n > 0)
        root = root->items[0];
    const struct kw_node *e = kw_node_get(root, "error");
    const struct kw_node *msg = kw_node_get(e, "message"), *st = kw_node_get(e, "status");
    if (msg == NULL || msg->type != KW_NODE_STRING)
        return KW_OK;
    return dp_openai_error(out, status, msg->str, msg->len, NULL, NULL,
                           st != NULL && st->type == KW_NODE_STRING ? st->str : NULL);
}

static int gemini_on_error(struct dp_request *r, long status, const char *body, size_t len,
                           struct kw_buf *out)
{
    const struct kw_node *root = dp_tr_error_json(r, body, len);
    return root != NULL ? dp_gemini_error(status, root, out) : KW_OK;
}

const struct dp_provider_ops dp_provider_gemini = {
    .name = "gemini",
    .build = gemini_build,
    .on_response = gemini_on_response,
    .on_event = gemini_on_event,
    .on_error = gemini_on_error,
    .on_stream_end = gemini_on_stream_end,
};
