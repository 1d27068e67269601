/* AWS Bedrock Converse and ConverseStream behind the OpenAI chat API.
 *
 *   POST {base}/model/{modelId}/converse
 *   POST {base}/model/{modelId}/converse-stream   (application/vnd.amazon.eventstream)
 * base defaults to https://bedrock-runtime.{region}.amazonaws.com; the model id is
 * URI-encoded in the path (its ':' as %3A). Requests are signed with SigV4 (sigv4.c,
 * service "bedrock") from the Secret's access key id, secret access key and, when
 * credentials.bedrock.sessionTokenKey is set, session token (X-Amz-Security-Token).
 *
 * Request: system/developer messages -> system[{text}]; user/assistant messages ->
 * content blocks {text}, {image {format, source {bytes}}} (data URLs only: Converse takes
 * bytes, not URLs), assistant tool_calls -> {toolUse {toolUseId, name, input}}, tool
 * messages -> {toolResult {toolUseId, content [{text} | {json}]}} of one user turn;
 * max(_completion)_tokens, temperature, top_p, stop -> inferenceConfig; tools ->
 * toolConfig.tools[].toolSpec {name, description, inputSchema {json}}; tool_choice auto /
 * required / {function} -> toolChoice {auto} / {any} / {tool {name}} ("none" sends no
 * toolChoice: Converse has no way to forbid calls while tools are declared).
 *
 * Response: text blocks joined, toolUse blocks -> tool_calls; stopReason end_turn /
 * stop_sequence -> stop, max_tokens -> length, tool_use -> tool_calls, guardrail_intervened
 * / content_filtered -> content_filter; usage: prompt = inputTokens + cacheReadInputTokens
 * + cacheWriteInputTokens, completion = outputTokens, cached = cacheReadInputTokens.
 *
 * Stream: event-stream messages (eventstream.c, both CRCs checked) by :event-type -
 * messageStart (role chunk), contentBlockStart (a toolUse opens a tool call),
 * contentBlockDelta (text, or toolUse.input appended to the arguments), contentBlockStop,
 * messageStop (finish chunk), metadata (usage; then the usage chunk and [DONE]);
 * :message-type exception frames become OpenAI error events.
 *
 * Errors: {"message": ...} with the HTTP status -> OpenAI's error shape. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "provider.h"
#include "eventstream.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "sigv4.h"
#include "translate.h"

struct br_state {
    struct dp_tr_stream tr; /* first */
    struct dp_es es;
    bool es_ready;
    int64_t input, output, cache_read, cache_write;
};

static struct br_state *state_of(struct dp_request *r)
{
    return dp_tr_state_sized(r, sizeof(struct br_state));
}

static struct kw_node *text_block(struct kw_arena *a, const char *s, size_t len)
{
    return dp_tr_map1(a, "text", kw_node_string(a, s, len));
}

/* An OpenAI content part as a Converse content block, or NULL (unsupported). */
static struct kw_node *content_block(struct kw_arena *a, const struct kw_node *part)
{
    const struct kw_node *type = kw_node_get(part, "type");
    if (type == NULL || type->type != KW_NODE_STRING)
        return NULL;
    if (strcmp(type->str, "text") == 0) {
        const struct kw_node *t = kw_node_get(part, "text");
        return t != NULL && t->type == KW_NODE_STRING ? text_block(a, t->str, t->len) : NULL;
    }
    const struct kw_node *url = kw_node_get(kw_node_get(part, "image_url"), "url");
    const char *mime, *data;
    size_t mlen;
    if (strcmp(type->str, "image_url") != 0 || url == NULL || url->type != KW_NODE_STRING ||
        !dp_tr_data_url(url->str, &mime, &mlen, &data) || mlen < 7 ||
        strncmp(mime, "image/", 6) != 0)
        return NULL;
    struct kw_node *img = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, img, "format", kw_node_string(a, mime + 6, mlen - 6));
    kw_node_map_put(a, img, "source", dp_tr_map1(a, "bytes", kw_node_cstring(a, data)));
    return dp_tr_map1(a, "image", img);
}

static struct kw_node *tool_result(struct dp_request *r, const struct kw_node *list, size_t i)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *id, *content;
    if (dp_tr_tool_message(r, list, i, &id, &content) != KW_OK)
        return NULL;
    struct kw_node *blocks = kw_node_new(a, KW_NODE_SEQ);
    if (content->type == KW_NODE_STRING) {
        kw_node_seq_push(a, blocks, text_block(a, content->str, content->len));
    } else if (dp_tr_parts(r, i, content, content_block, NULL, "is not a text or image part",
                           blocks) != KW_OK) {
        return NULL;
    }
    struct kw_node *tr = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, tr, "toolUseId", dp_tr_str(a, id));
    kw_node_map_put(a, tr, "content", blocks);
    return dp_tr_map1(a, "toolResult", tr);
}

static bool is_tool_result(const struct kw_node *item)
{
    return kw_node_get(item, "toolResult") != NULL;
}

static struct kw_node *tool_use_block(struct kw_arena *a, const struct kw_node *id,
                                      const struct kw_node *name, struct kw_node *input)
{
    struct kw_node *tu = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, tu, "toolUseId", dp_tr_str(a, id));
    kw_node_map_put(a, tu, "name", dp_tr_str(a, name));
    kw_node_map_put(a, tu, "input", input);
    return dp_tr_map1(a, "toolUse", tu);
}

static struct kw_node *message_blocks(struct dp_request *r, size_t i, const struct kw_node *m,
                                      bool assistant)
{
    (void)assistant;
    /* Converse rejects blank text blocks and messages without content */
    static const struct dp_tr_content_ops ops = {
        text_block,
        content_block,
        tool_use_block,
        "is not a text part or an image data URL (Bedrock takes image bytes, not URLs)",
        "needs non-empty content",
        false};
    return dp_tr_content(r, i, kw_node_get(m, "content"), kw_node_get(m, "tool_calls"), &ops);
}

/* A function as a Converse toolSpec. */
static struct kw_node *tool_spec(struct kw_arena *a, const struct kw_node *name,
                                 const struct kw_node *desc, struct kw_node *params)
{
    struct kw_node *spec = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, spec, "name", dp_tr_str(a, name));
    if (desc != NULL)
        kw_node_map_put(a, spec, "description", dp_tr_str(a, desc));
    kw_node_map_put(a, spec, "inputSchema", dp_tr_map1(a, "json", params));
    return dp_tr_map1(a, "toolSpec", spec);
}

static int tool_config(struct dp_request *r, const struct kw_node *in, struct kw_node *body)
{
    struct kw_arena *a = r->arena;
    struct kw_node *specs;
    if (dp_tr_tools(r, in, tool_spec, &specs) != KW_OK)
        return KW_ERROR;
    if (specs == NULL)
        return KW_OK;
    bool valid = true;
    struct kw_node *cfg = dp_tr_map1(a, "tools", specs);
    const struct kw_node *tc = kw_node_get(in, "tool_choice");
    if (tc != NULL && tc->type == KW_NODE_STRING) {
        if (strcmp(tc->str, "auto") == 0)
            kw_node_map_put(a, cfg, "toolChoice",
                            dp_tr_map1(a, "auto", kw_node_new(a, KW_NODE_MAP)));
        else if (strcmp(tc->str, "required") == 0)
            kw_node_map_put(a, cfg, "toolChoice",
                            dp_tr_map1(a, "any", kw_node_new(a, KW_NODE_MAP)));
        else if (strcmp(tc->str, "none") != 0)
            valid = false;
    } else if (tc != NULL && tc->type != KW_NODE_NULL) {
        const struct kw_node *name = kw_node_get(kw_node_get(tc, "function"), "name");
        if (name != NULL && name->type == KW_NODE_STRING)
            kw_node_map_put(a, cfg, "toolChoice",
                            dp_tr_map1(a, "tool", dp_tr_map1(a, "name", dp_tr_str(a, name))));
        else
            valid = false;
    }
    if (!valid) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "tool_choice",
                     "tool_choice must be \"auto\", \"none\", \"required\" or "
                     "{\"type\": \"function\", \"function\": {\"name\": ...}}");
        return KW_ERROR;
    }
    kw_node_map_put(a, body, "toolConfig", cfg);
    return KW_OK;
}

/* response_format -> Converse. Native (structuredOutputs: Native): outputConfig.textFormat
 * {type: json_schema, structure: {jsonSchema: {schema (as a string), name}}}. Tool (the
 * default): one more toolSpec whose inputSchema is the schema, forced by toolChoice (any
 * when the client's own tools may be called first); its input comes back as the text.
 * Claude's thinking refuses a forced tool: 400. */
static int structured_output(struct dp_request *r, const struct kw_node *in, struct kw_node *body,
                             bool thinking)
{
    struct kw_arena *a = r->arena;
    struct dp_tr_format f;
    if (dp_tr_format(r, in, &f) != KW_OK)
        return KW_ERROR;
    if (f.kind == DP_TR_FORMAT_TEXT)
        return KW_OK;
    if (r->backend->structured_outputs == KW_STRUCTURED_NATIVE) {
        struct kw_buf schema;
        kw_buf_init(&schema, DP_MAX_UPSTREAM_RESPONSE);
        int rc = kw_json_write(f.schema, &schema);
        struct kw_node *js = dp_tr_map1(a, "schema", kw_node_string(a, schema.data, schema.len));
        kw_buf_cleanup(&schema);
        if (rc != KW_OK)
            return dp_error_set(r, 400, "invalid_request_error", NULL, "response_format",
                                "response_format.json_schema.schema is too large");
        kw_node_map_put(a, js, "name", kw_node_cstring(a, f.name));
        struct kw_node *tf = dp_tr_map1(a, "type", kw_node_cstring(a, "json_schema"));
        kw_node_map_put(a, tf, "structure", dp_tr_map1(a, "jsonSchema", js));
        kw_node_map_put(a, body, "outputConfig", dp_tr_map1(a, "textFormat", tf));
        return KW_OK;
    }
    if (thinking)
        return dp_error_set(r, 400, "invalid_request_error", "unsupported_parameter",
                            "response_format",
                            "response_format cannot be combined with reasoning on backend %s: "
                            "it answers in the schema through a forced tool call, and Claude "
                            "refuses thinking when a tool is forced (structuredOutputs: Native "
                            "uses Bedrock's own structured outputs instead)",
                            r->backend->meta.name);
    struct kw_node *cfg = kw_node_get(body, "toolConfig");
    struct kw_node *specs = kw_node_get(cfg, "tools");
    for (size_t i = 0; specs != NULL && i < specs->n; i++) {
        const struct kw_node *n = kw_node_get(kw_node_get(specs->items[i], "toolSpec"), "name");
        if (n != NULL && n->type == KW_NODE_STRING && strlen(f.name) == n->len &&
            memcmp(n->str, f.name, n->len) == 0)
            return dp_error_set(r, 400, "invalid_request_error", NULL, "response_format",
                                "response_format.json_schema.name \"%s\" is also the name of a "
                                "tool: rename one of them",
                                f.name);
    }
    const struct kw_node *tc = kw_node_get(in, "tool_choice");
    bool own = specs != NULL && specs->n > 0 &&
               !(tc != NULL && tc->type == KW_NODE_STRING && strcmp(tc->str, "none") == 0);
    if (cfg == NULL) {
        specs = kw_node_new(a, KW_NODE_SEQ);
        cfg = dp_tr_map1(a, "tools", specs);
        kw_node_map_put(a, body, "toolConfig", cfg);
    }
    kw_node_seq_push(
        a, specs,
        tool_spec(a, kw_node_cstring(a, f.name), kw_node_cstring(a, DP_TR_FORMAT_DESC), f.schema));
    struct kw_node *choice =
        own ? dp_tr_map1(a, "any", kw_node_new(a, KW_NODE_MAP))
            : dp_tr_map1(a, "tool", dp_tr_map1(a, "name", kw_node_cstring(a, f.name)));
    kw_node_map_put(a, cfg, "toolChoice", choice);
    r->format_tool = f.name;
    return KW_OK;
}

static int translate_request(struct dp_request *r, struct kw_node **out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->up_json;
    struct kw_node *body = kw_node_new(a, KW_NODE_MAP);
    struct kw_node *msgs = kw_node_new(a, KW_NODE_SEQ), *system = kw_node_new(a, KW_NODE_SEQ);
    /* Converse wants user and assistant turns to alternate: a turn following one of the same
     * role (a user message after tool results) joins it */
    static const struct dp_tr_turn_ops turns = {"assistant",    "content",   true,
                                                message_blocks, tool_result, is_tool_result};
    struct kw_node *sys = kw_node_new(a, KW_NODE_SEQ);
    if (dp_tr_turns(r, &turns, kw_node_get(in, "messages"), sys, msgs) != KW_OK)
        return KW_ERROR;
    for (size_t i = 0; i < sys->n; i++) {
        struct kw_buf text;
        kw_buf_init(&text, 4u * 1024 * 1024);
        dp_tr_system_text(&text, sys->items[i]);
        if (text.len > 0)
            kw_node_seq_push(a, system, text_block(a, text.data, text.len));
        kw_buf_cleanup(&text);
    }
    kw_node_map_put(a, body, "messages", msgs);
    if (system->n > 0)
        kw_node_map_put(a, body, "system", system);
    struct kw_node *ic = kw_node_new(a, KW_NODE_MAP);
    int64_t max = dp_tr_max_tokens(in, -1);
    /* reasoning_effort: Anthropic models on Bedrock take Anthropic's thinking in
     * additionalModelRequestFields (others: not mapped, docs/providers.md) */
    int64_t budget = dp_tr_thinking_budget(r);
    if (budget > 0 && strstr(r->upstream_model, "anthropic.") != NULL) {
        if (budget < 1024)
            budget = 1024;
        struct kw_node *th = dp_tr_map1(a, "type", kw_node_cstring(a, "enabled"));
        kw_node_map_put(a, th, "budget_tokens", kw_node_int(a, budget));
        kw_node_map_put(a, body, "additionalModelRequestFields", dp_tr_map1(a, "thinking", th));
        int64_t room = max > 0 ? max : 4096;
        max = room <= budget ? room + budget : room; /* the budget counts in maxTokens */
    }
    if (max >= 0)
        kw_node_map_put(a, ic, "maxTokens", kw_node_int(a, max));
    static const char *const copied[][2] = {{"temperature", "temperature"}, {"top_p", "topP"}};
    for (size_t i = 0; i < KW_ARRAY_LEN(copied); i++) {
        struct kw_node *v = kw_node_get(in, copied[i][0]);
        if (v != NULL && v->type != KW_NODE_NULL)
            kw_node_map_put(a, ic, copied[i][1], v);
    }
    struct kw_node *stop = dp_tr_stop_list(a, in);
    if (stop != NULL)
        kw_node_map_put(a, ic, "stopSequences", stop);
    if (ic->n > 0)
        kw_node_map_put(a, body, "inferenceConfig", ic);
    const struct kw_node *tier = kw_node_get(in, "service_tier");
    if (tier != NULL && tier->type != KW_NODE_NULL) {
        static const char *const tiers[] = {"default", "flex", "priority", "reserved"};
        bool known = false;
        for (size_t i = 0; tier->type == KW_NODE_STRING && i < KW_ARRAY_LEN(tiers); i++)
            known |= strcmp(tier->str, tiers[i]) == 0;
        if (!known && !(tier->type == KW_NODE_STRING && strcmp(tier->str, "auto") == 0)) {
            dp_error_set(r, 400, "invalid_request_error", "unsupported_value", "service_tier",
                         "service_tier must be auto, default, flex, priority or reserved for "
                         "AWSBedrock backends");
            return KW_ERROR;
        }
        if (known) /* auto: Bedrock's own choice, as when unset */
            kw_node_map_put(a, body, "serviceTier", dp_tr_map1(a, "type", dp_tr_str(a, tier)));
    }
    if (tool_config(r, in, body) != KW_OK ||
        structured_output(r, in, body, budget > 0 && strstr(r->upstream_model, "anthropic.")) !=
            KW_OK)
        return KW_ERROR;
    *out = body;
    return KW_OK;
}

/* Sign and add the headers: Content-Type, Host, X-Amz-Date, X-Amz-Security-Token,
 * Authorization. */
static int sign(struct dp_request *r, const char *url, struct curl_slist **headers)
{
    const struct kw_backend *b = r->backend;
    const char *akid = dp_provider_secret(r, b->credentials.bedrock.access_key_id_key);
    const char *secret = dp_provider_secret(r, b->credentials.bedrock.secret_access_key_key);
    const char *token = b->credentials.bedrock.session_token_key != NULL
                            ? dp_provider_secret(r, b->credentials.bedrock.session_token_key)
                            : NULL;
    if (akid == NULL || secret == NULL) {
        dp_error_set(r, 500, "server_error", "upstream_credentials", NULL,
                     "backend %s: the Secret has no AWS access key id or secret access key",
                     b->meta.name);
        return KW_ERROR;
    }
    CURLU *u = curl_url();
    char *host = NULL, *port = NULL, *path = NULL, *query = NULL, *scheme = NULL;
    int rc = u != NULL && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK &&
                     curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
                     curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK &&
                     curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK
                 ? KW_OK
                 : KW_ERROR;
    if (u != NULL) {
        curl_url_get(u, CURLUPART_PORT, &port, 0);
        curl_url_get(u, CURLUPART_QUERY, &query, 0);
    }
    char amz_date[17];
    dp_sigv4_date((long long)time(NULL), amz_date);
    const char *hostval = NULL;
    if (rc == KW_OK) {
        bool dflt = port == NULL || (strcmp(scheme, "https") == 0 && strcmp(port, "443") == 0) ||
                    (strcmp(scheme, "http") == 0 && strcmp(port, "80") == 0);
        hostval = dflt ? kw_arena_printf(r->arena, "%s", host)
                       : kw_arena_printf(r->arena, "%s:%s", host, port);
        rc = hostval != NULL ? KW_OK : KW_ERROR;
    }
    struct dp_sigv4_header hs[4] = {{"content-type", "application/json"},
                                    {"host", hostval},
                                    {"x-amz-date", amz_date},
                                    {"x-amz-security-token", token}};
    struct dp_sigv4 s = {
        .method = "POST",
        .path = path,
        .query = query,
        .headers = hs,
        .nheaders = token != NULL ? 4 : 3,
        .payload = r->up_body.data,
        .payload_len = r->up_body.len,
        .amz_date = amz_date,
        .region =
            b->credentials.bedrock.region != NULL ? b->credentials.bedrock.region : "us-east-1",
        .service = "bedrock",
        .access_key_id = akid,
        .secret_access_key = secret,
    };
    struct kw_buf auth;
    kw_buf_init(&auth, 4096);
    if (rc == KW_OK)
        rc = dp_sigv4_authorization(&s, &auth);
    for (size_t i = 0; rc == KW_OK && i < s.nheaders; i++)
        rc = dp_openai_add_header(headers, r->arena, i == 1 ? "Host" : hs[i].name, hs[i].value);
    if (rc == KW_OK)
        rc = dp_openai_add_header(headers, r->arena, "Authorization", auth.data);
    kw_buf_cleanup(&auth);
    curl_free(host);
    curl_free(port);
    curl_free(path);
    curl_free(query);
    curl_free(scheme);
    curl_url_cleanup(u);
    return rc;
}

static int bedrock_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    if (r->api != DP_API_CHAT) {
        dp_error_set(r, 400, "invalid_request_error", "unsupported_endpoint", NULL,
                     "backend %s (AWSBedrock) serves /v1/chat/completions only",
                     r->backend->meta.name);
        return KW_ERROR;
    }
    struct kw_node *body;
    if (translate_request(r, &body) != KW_OK)
        return KW_ERROR;
    const struct kw_backend *b = r->backend;
    char dflt[160];
    size_t blen;
    const char *base = NULL;
    if (r->base_url != NULL) {
        base = r->base_url;
        blen = r->base_len;
    } else {
        blen = (size_t)snprintf(
            dflt, sizeof(dflt), "https://bedrock-runtime.%s.amazonaws.com",
            b->credentials.bedrock.region != NULL ? b->credentials.bedrock.region : "us-east-1");
        base = dflt;
    }
    char *model = curl_easy_escape(NULL, r->upstream_model, 0);
    if (model == NULL)
        return KW_ERROR;
    int rc = kw_buf_printf(url, "%.*s/model/%s/%s", (int)blen, base, model,
                           r->stream ? "converse-stream" : "converse");
    curl_free(model);
    /* the body is part of the signature: written first, the headers after */
    for (size_t i = 0; rc == KW_OK && i < b->upstream.nheaders; i++)
        rc = dp_openai_add_header(headers, r->arena, b->upstream.headers[i].name,
                                  b->upstream.headers[i].value);
    if (rc != KW_OK || kw_json_write(body, &r->up_body) != KW_OK)
        return KW_ERROR;
    return sign(r, url->data, headers);
}

/* ---- responses ------------------------------------------------------------------------ */

static const char *finish_reason(const struct kw_node *n)
{
    if (n == NULL || n->type != KW_NODE_STRING)
        return NULL;
    if (strcmp(n->str, "max_tokens") == 0)
        return "length";
    if (strcmp(n->str, "tool_use") == 0)
        return "tool_calls";
    if (strcmp(n->str, "guardrail_intervened") == 0 || strcmp(n->str, "content_filtered") == 0)
        return "content_filter";
    return "stop";
}

static void read_usage(struct dp_request *r, const struct kw_node *u)
{
    if (u == NULL || u->type != KW_NODE_MAP)
        return;
    /* inputTokens leave out cache reads and writes (as Anthropic's do) */
    int64_t cache_read = dp_tr_int(u, "cacheReadInputTokens");
    int64_t cache_write = dp_tr_int(u, "cacheWriteInputTokens");
    r->usage.prompt = dp_tr_int(u, "inputTokens") + cache_read + cache_write;
    r->usage.completion = dp_tr_int(u, "outputTokens");
    r->usage.cached = cache_read;
    r->usage.have = true;
    dp_usage_raw(&r->usage, "inputTokens", dp_tr_int(u, "inputTokens"));
    dp_usage_raw(&r->usage, "cacheReadInputTokens", cache_read);
    dp_usage_raw(&r->usage, "cacheWriteInputTokens", cache_write);
    dp_usage_raw(&r->usage, "outputTokens", r->usage.completion);
}

/* serviceTier {type} of a response or a stream's metadata, for service_tier. */
static void read_tier(struct dp_tr_ident *id, const struct kw_node *root)
{
    const struct kw_node *t = kw_node_get(kw_node_get(root, "serviceTier"), "type");
    if (t != NULL && t->type == KW_NODE_STRING)
        dp_tr_copy(id->service_tier, sizeof(id->service_tier), t, "");
}

static int bedrock_on_response(struct dp_request *r, const char *body, size_t len,
                               struct kw_buf *out)
{
    struct kw_node *root;
    char err[128];
    struct br_state *st = state_of(r);
    if (st == NULL || kw_json_parse(r->arena, body, len, &root, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    read_usage(r, kw_node_get(root, "usage"));
    const struct kw_node *content =
        kw_node_get(kw_node_get(kw_node_get(root, "output"), "message"), "content");
    struct kw_buf text, calls;
    struct dp_tr_reasoning rs;
    kw_buf_init(&text, DP_MAX_UPSTREAM_RESPONSE);
    kw_buf_init(&calls, DP_MAX_UPSTREAM_RESPONSE);
    dp_tr_reasoning_init(&rs);
    bool any = false, answered = false;
    for (size_t i = 0; content != NULL && content->type == KW_NODE_SEQ && i < content->n; i++) {
        const struct kw_node *b = content->items[i], *t = kw_node_get(b, "text");
        const struct kw_node *tu = kw_node_get(b, "toolUse");
        const struct kw_node *rc_ = kw_node_get(b, "reasoningContent");
        if (rc_ != NULL) { /* {reasoningText: {text, signature}} or {redactedContent} */
            const struct kw_node *rt = kw_node_get(rc_, "reasoningText");
            const struct kw_node *tx = kw_node_get(rt, "text"), *sig = kw_node_get(rt, "signature");
            const struct kw_node *red = kw_node_get(rc_, "redactedContent");
            bool s = sig != NULL && sig->type == KW_NODE_STRING;
            if (tx != NULL && tx->type == KW_NODE_STRING)
                dp_tr_reasoning_block(&rs, tx->str, tx->len, s ? sig->str : NULL, s ? sig->len : 0);
            else if (red != NULL && red->type == KW_NODE_STRING)
                dp_tr_reasoning_redacted(&rs, red->str, red->len);
            continue;
        }
        if (tu != NULL) {
            const struct kw_node *id = kw_node_get(tu, "toolUseId"),
                                 *name = kw_node_get(tu, "name");
            if (name != NULL && name->type == KW_NODE_STRING &&
                dp_tr_format_tool(r, name->str, name->len)) { /* the answer, as JSON text */
                const struct kw_node *input = kw_node_get(tu, "input");
                if (input != NULL)
                    kw_json_write(input, &text);
                any = answered = true;
            } else if (id != NULL && id->type == KW_NODE_STRING && name != NULL &&
                       name->type == KW_NODE_STRING) {
                dp_tr_tool_call_json(&calls, id->str, id->len, name->str, name->len,
                                     kw_node_get(tu, "input"));
            }
        } else if (t != NULL && t->type == KW_NODE_STRING) {
            kw_buf_append(&text, t->str, t->len);
            any = true;
        }
    }
    read_tier(&st->tr.ident, root);
    /* no stopReason: what the content says (a tool call: tool_calls, else stop) */
    const char *fr = finish_reason(kw_node_get(root, "stopReason"));
    if (fr == NULL || (answered && calls.len == 0 && strcmp(fr, "tool_calls") == 0))
        fr = "stop"; /* a structured answer is the message, not a call */
    int rc = dp_tr_completion_r(out, r, &st->tr.ident, any ? &text : NULL, &rs, &calls, fr);
    kw_buf_cleanup(&text);
    kw_buf_cleanup(&calls);
    dp_tr_reasoning_cleanup(&rs);
    return rc;
}

static void bedrock_cleanup(struct dp_request *r);
static const char *aws_error_type(const char *aws, long status);

struct feed_ctx {
    struct dp_request *r;
    struct br_state *st;
    struct kw_buf *out;
};

static int on_message(void *ud, const struct dp_es_message *m)
{
    struct feed_ctx *c = ud;
    struct dp_request *r = c->r;
    struct br_state *st = c->st;
    struct kw_node *ev;
    char err[128];
    kw_arena_reset(r->scratch);
    if (strcmp(m->message_type, "event") != 0) { /* exception or error frames */
        const struct kw_node *msg = NULL;
        if (kw_json_parse(r->scratch, m->payload, m->payload_len, &ev, err, sizeof(err)) == KW_OK)
            msg = kw_node_get(ev, "message");
        const char *code = m->exception_type[0] != '\0' ? m->exception_type : m->error_code;
        bool has = msg != NULL && msg->type == KW_NODE_STRING;
        const char *text = has ? msg->str : m->error_message[0] ? m->error_message : code;
        dp_tr_error_event(c->out, text, has ? msg->len : strlen(text), aws_error_type(code, 500),
                          code[0] != '\0' ? code : NULL);
        r->saw_done = true; /* the stream is over */
        return KW_OK;
    }
    if (kw_json_parse(r->scratch, m->payload, m->payload_len, &ev, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    const char *type = m->event_type;
    if (strcmp(type, "messageStart") == 0)
        return dp_tr_chunk_role(c->out, &st->tr);
    if (strcmp(type, "contentBlockStart") == 0) {
        const struct kw_node *tu = kw_node_get(kw_node_get(ev, "start"), "toolUse");
        st->tr.tool_open = tu != NULL;
        if (tu == NULL)
            return KW_OK;
        const struct kw_node *id = kw_node_get(tu, "toolUseId"), *name = kw_node_get(tu, "name");
        if (name != NULL && name->type == KW_NODE_STRING &&
            dp_tr_format_tool(r, name->str, name->len)) { /* its input streams as the content */
            st->tr.tool_open = false;
            st->tr.answer_open = st->tr.answered = true;
            return KW_OK;
        }
        if (id == NULL || id->type != KW_NODE_STRING || name == NULL ||
            name->type != KW_NODE_STRING)
            return KW_ERROR;
        return dp_tr_chunk_tool(c->out, &st->tr, id->str, id->len, name->str, name->len, "", 0);
    }
    if (strcmp(type, "contentBlockDelta") == 0) {
        const struct kw_node *d = kw_node_get(ev, "delta");
        const struct kw_node *t = kw_node_get(d, "text");
        const struct kw_node *input = kw_node_get(kw_node_get(d, "toolUse"), "input");
        if (st->tr.answer_open && input != NULL && input->type == KW_NODE_STRING)
            return input->len > 0 ? dp_tr_chunk_text(c->out, &st->tr, input->str, input->len)
                                  : KW_OK;
        if (st->tr.tool_open && input != NULL && input->type == KW_NODE_STRING)
            return input->len > 0 ? dp_tr_chunk_args(c->out, &st->tr, input->str, input->len)
                                  : KW_OK;
        if (t != NULL && t->type == KW_NODE_STRING)
            return dp_tr_chunk_text(c->out, &st->tr, t->str, t->len);
        const struct kw_node *rc_ = kw_node_get(d, "reasoningContent");
        const struct kw_node *rt = kw_node_get(rc_, "text"), *sig = kw_node_get(rc_, "signature");
        if (rt != NULL && rt->type == KW_NODE_STRING)
            return dp_tr_chunk_reasoning(c->out, &st->tr, rt->str, rt->len);
        if (sig != NULL && sig->type == KW_NODE_STRING) {
            struct kw_buf blk;
            kw_buf_init(&blk, DP_MAX_SSE_EVENT);
            kw_buf_puts(&blk, "{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":");
            kw_json_write_string(&blk, sig->str, sig->len);
            kw_buf_puts(&blk, "}");
            int rc = dp_tr_chunk_thinking_block(c->out, &st->tr, blk.data, blk.len);
            kw_buf_cleanup(&blk);
            return rc;
        }
        return KW_OK;
    }
    if (strcmp(type, "contentBlockStop") == 0) {
        st->tr.tool_open = st->tr.answer_open = false;
        return KW_OK;
    }
    if (strcmp(type, "messageStop") == 0) {
        const char *fr = finish_reason(kw_node_get(ev, "stopReason"));
        return dp_tr_chunk_finish(c->out, &st->tr, fr != NULL ? fr : "stop");
    }
    if (strcmp(type, "metadata") == 0) {
        read_usage(r, kw_node_get(ev, "usage"));
        read_tier(&st->tr.ident, ev);
        return dp_tr_stream_end(c->out, r, &st->tr);
    }
    return KW_OK;
}

static int bedrock_feed(struct dp_request *r, const char *buf, size_t len, struct kw_buf *out)
{
    struct br_state *st = state_of(r);
    if (st == NULL)
        return KW_ERROR;
    if (!st->es_ready) {
        dp_es_init(&st->es, DP_MAX_SSE_EVENT);
        st->es_ready = true;
    }
    if (r->saw_done)
        return KW_OK; /* nothing may follow the end or an exception */
    struct feed_ctx c = {r, st, out};
    char err[160];
    if (dp_es_feed(&st->es, buf, len, on_message, &c, err, sizeof(err)) != KW_OK) {
        snprintf(r->up.write_err, sizeof(r->up.write_err), "%s", err);
        bedrock_cleanup(r);
        return KW_ERROR;
    }
    return KW_OK;
}

static void bedrock_cleanup(struct dp_request *r)
{
    struct br_state *st = r->provider_state;
    if (st != NULL && st->es_ready) {
        dp_es_cleanup(&st->es);
        st->es_ready = false;
    }
}

static int bedrock_on_stream_end(struct dp_request *r, struct kw_buf *out)
{
    struct br_state *st = state_of(r);
    if (st == NULL)
        return KW_ERROR;
    bedrock_cleanup(r);
    if (r->saw_done)
        return KW_OK;
    dp_tr_chunk_finish(out, &st->tr, "stop");
    return dp_tr_stream_end(out, r, &st->tr);
}

/* AWS error types (x-amzn-errortype, an event stream's exception) -> OpenAI error types;
 * the AWS type goes in "code". Others: by status (dp_error_type). docs/providers.md. */
static const char *const aws_types[][2] = {
    {"ThrottlingException", "rate_limit_exceeded"},
    {"ServiceQuotaExceededException", "rate_limit_exceeded"},
    {"ModelNotReadyException", "rate_limit_exceeded"},
    {"ValidationException", "invalid_request_error"},
    {"AccessDeniedException", "authentication_error"},
    {"UnrecognizedClientException", "authentication_error"},
    {"ResourceNotFoundException", "not_found_error"},
    {"ModelTimeoutException", "server_error"},
    {"ModelErrorException", "server_error"},
    {"ModelStreamErrorException", "server_error"},
    {"InternalServerException", "server_error"},
    {"ServiceUnavailableException", "server_error"},
};

/* The OpenAI type of an AWS error type ("" or unknown: by status). */
static const char *aws_error_type(const char *aws, long status)
{
    for (size_t i = 0; aws != NULL && i < KW_ARRAY_LEN(aws_types); i++)
        if (strcasecmp(aws, aws_types[i][0]) == 0)
            return aws_types[i][1];
    return dp_error_type(status);
}

/* {"message": "..."} (and {"Message"} from some front ends) with x-amzn-errortype ->
 * OpenAI's error shape: the type by the table above, the AWS type as the code. */
static int bedrock_on_error(struct dp_request *r, long status, const char *body, size_t len,
                            struct kw_buf *out)
{
    char aws[64]; /* "ValidationException:http://internal.amazon.com/..." -> the name */
    snprintf(aws, sizeof(aws), "%.*s", (int)strcspn(r->up.amzn_errortype, ":"),
             r->up.amzn_errortype);
    struct kw_node *root = NULL;
    char err[128];
    kw_arena_reset(r->scratch);
    const struct kw_node *msg = NULL;
    if (kw_json_parse(r->scratch, body, len, &root, err, sizeof(err)) == KW_OK) {
        msg = kw_node_get(root, "message");
        if (msg == NULL)
            msg = kw_node_get(root, "Message");
    }
    const char *code = aws[0] != '\0' ? aws : NULL;
    if (msg != NULL && msg->type == KW_NODE_STRING)
        return dp_openai_error(out, status, msg->str, msg->len, aws_error_type(code, status), NULL,
                               code);
    if (code == NULL)
        return KW_OK; /* not Bedrock's shape: relayed as it came */
    return dp_openai_error(out, status, aws, strlen(aws), aws_error_type(code, status), NULL, code);
}

const struct dp_provider_ops dp_provider_bedrock = {
    .name = "bedrock",
    .build = bedrock_build,
    .on_response = bedrock_on_response,
    .on_error = bedrock_on_error,
    .stream_ctype = "application/vnd.amazon.eventstream",
    .feed = bedrock_feed,
    .on_stream_end = bedrock_on_stream_end,
    .cleanup = bedrock_cleanup,
};
