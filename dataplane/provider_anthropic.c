/* Anthropic Messages API behind the OpenAI chat API.
 *
 * Request: system (and developer) messages are lifted into "system"; user and assistant
 * messages keep their order, text and images (base64 data URLs or URLs); max_tokens comes
 * from max_completion_tokens or max_tokens (params.defaults can set it per backend), else
 * 4096, since Anthropic requires it; stop -> stop_sequences; temperature, top_p, stream and
 * user (metadata.user_id) carry over. Headers: x-api-key, anthropic-version.
 *
 * Response: text blocks joined into message.content; stop_reason -> finish_reason
 * (end_turn/stop_sequence: stop, max_tokens: length, tool_use: tool_calls); usage: prompt
 * tokens = input + cache read + cache creation, cached_tokens = cache read.
 *
 * Stream, per event:
 *   message_start        -> first chunk (role), keeps id, model, input usage
 *   content_block_delta  -> chunk with the text_delta
 *   message_delta        -> chunk with finish_reason; output tokens
 *   message_stop         -> usage chunk when the client asked for it, then data: [DONE]
 *   error                -> an OpenAI error event
 *   ping, content_block_start/stop -> nothing
 * Tool use is not translated yet: a request with tools or tool messages answers 400. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "dp.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"

#define ANTHROPIC_VERSION    "2023-06-01"
#define ANTHROPIC_MAX_TOKENS 4096

struct anth_state {
    char id[128];
    char model[256];
    int64_t input, cache_read, cache_create, output;
    long created;
};

static struct anth_state *state_of(struct dp_request *r)
{
    if (r->provider_state == NULL) {
        struct anth_state *st = kw_arena_alloc(r->arena, sizeof(*st));
        if (st != NULL)
            st->created = (long)time(NULL);
        r->provider_state = st;
    }
    return r->provider_state;
}

static struct kw_node *str(struct kw_arena *a, const struct kw_node *n)
{
    return kw_node_string(a, n->str, n->len);
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
        kw_node_map_put(a, b, "text", str(a, text));
        return b;
    }
    if (strcmp(type->str, "image_url") == 0) {
        const struct kw_node *url = kw_node_get(kw_node_get(part, "image_url"), "url");
        if (url == NULL || url->type != KW_NODE_STRING)
            return NULL;
        struct kw_node *src = kw_node_new(a, KW_NODE_MAP);
        const char *comma = strchr(url->str, ',');
        if (strncmp(url->str, "data:", 5) == 0 && comma != NULL &&
            strstr(url->str, ";base64,") != NULL) {
            const char *semi = strchr(url->str, ';');
            kw_node_map_put(a, src, "type", kw_node_cstring(a, "base64"));
            kw_node_map_put(a, src, "media_type",
                            kw_node_string(a, url->str + 5, (size_t)(semi - url->str - 5)));
            kw_node_map_put(a, src, "data", kw_node_cstring(a, comma + 1));
        } else {
            kw_node_map_put(a, src, "type", kw_node_cstring(a, "url"));
            kw_node_map_put(a, src, "url", str(a, url));
        }
        kw_node_map_put(a, b, "type", kw_node_cstring(a, "image"));
        kw_node_map_put(a, b, "source", src);
        return b;
    }
    return NULL;
}

/* The text of a system message's content (a string or text parts), appended to sys. */
static void system_text(struct kw_buf *sys, const struct kw_node *content)
{
    if (sys->len > 0)
        kw_buf_puts(sys, "\n\n");
    if (content->type == KW_NODE_STRING) {
        kw_buf_append(sys, content->str, content->len);
        return;
    }
    for (size_t i = 0; content->type == KW_NODE_SEQ && i < content->n; i++) {
        const struct kw_node *t = kw_node_get(content->items[i], "text");
        if (t != NULL && t->type == KW_NODE_STRING)
            kw_buf_append(sys, t->str, t->len);
    }
}

static int translate_request(struct dp_request *r, struct kw_node **out)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *in = r->up_json;
    struct kw_node *body = kw_node_new(a, KW_NODE_MAP);
    struct kw_node *msgs = kw_node_new(a, KW_NODE_SEQ);
    struct kw_buf sys;
    kw_buf_init(&sys, 4u * 1024 * 1024);
    if (body == NULL || msgs == NULL)
        return KW_ERROR;
    if (kw_node_get(in, "tools") != NULL) {
        dp_request_fail(r, 400, "invalid_request_error", "unsupported_parameter", "tools",
                        "tools are not translated for Anthropic backends yet");
        return KW_ERROR;
    }
    kw_node_map_put(a, body, "model", str(a, kw_node_get(in, "model")));
    const struct kw_node *list = kw_node_get(in, "messages");
    for (size_t i = 0; i < list->n; i++) {
        const struct kw_node *m = list->items[i];
        const struct kw_node *role = kw_node_get(m, "role");
        const struct kw_node *content = kw_node_get(m, "content");
        if (m->type != KW_NODE_MAP || role == NULL || role->type != KW_NODE_STRING ||
            content == NULL) {
            dp_request_fail(r, 400, "invalid_request_error", NULL, "messages",
                            "messages[%zu] needs a role and content", i);
            kw_buf_cleanup(&sys);
            return KW_ERROR;
        }
        if (strcmp(role->str, "system") == 0 || strcmp(role->str, "developer") == 0) {
            system_text(&sys, content);
            continue;
        }
        if (strcmp(role->str, "user") != 0 && strcmp(role->str, "assistant") != 0) {
            dp_request_fail(
                r, 400, "invalid_request_error", "unsupported_value", "messages",
                "messages[%zu]: role \"%s\" is not translated for Anthropic backends yet", i,
                role->str);
            kw_buf_cleanup(&sys);
            return KW_ERROR;
        }
        struct kw_node *am = kw_node_new(a, KW_NODE_MAP);
        kw_node_map_put(a, am, "role", str(a, role));
        if (content->type == KW_NODE_STRING) {
            kw_node_map_put(a, am, "content", str(a, content));
        } else if (content->type == KW_NODE_SEQ) {
            struct kw_node *blocks = kw_node_new(a, KW_NODE_SEQ);
            for (size_t j = 0; j < content->n; j++) {
                struct kw_node *b = content_block(a, content->items[j]);
                if (b == NULL) {
                    dp_request_fail(r, 400, "invalid_request_error", "unsupported_value",
                                    "messages",
                                    "messages[%zu].content[%zu] is not a text or image part", i, j);
                    kw_buf_cleanup(&sys);
                    return KW_ERROR;
                }
                kw_node_seq_push(a, blocks, b);
            }
            kw_node_map_put(a, am, "content", blocks);
        } else {
            dp_request_fail(r, 400, "invalid_request_error", NULL, "messages",
                            "messages[%zu].content must be a string or a list of parts", i);
            kw_buf_cleanup(&sys);
            return KW_ERROR;
        }
        kw_node_seq_push(a, msgs, am);
    }
    if (sys.len > 0)
        kw_node_map_put(a, body, "system", kw_node_string(a, sys.data, sys.len));
    kw_buf_cleanup(&sys);
    kw_node_map_put(a, body, "messages", msgs);
    const struct kw_node *max = kw_node_get(in, "max_completion_tokens");
    if (max == NULL || max->type != KW_NODE_INT)
        max = kw_node_get(in, "max_tokens");
    kw_node_map_put(a, body, "max_tokens",
                    max != NULL && max->type == KW_NODE_INT ? kw_node_int(a, max->i)
                                                            : kw_node_int(a, ANTHROPIC_MAX_TOKENS));
    const struct kw_node *stop = kw_node_get(in, "stop");
    if (stop != NULL && stop->type == KW_NODE_STRING) {
        struct kw_node *seq = kw_node_new(a, KW_NODE_SEQ);
        kw_node_seq_push(a, seq, str(a, stop));
        kw_node_map_put(a, body, "stop_sequences", seq);
    } else if (stop != NULL && stop->type == KW_NODE_SEQ) {
        kw_node_map_put(a, body, "stop_sequences", (struct kw_node *)stop);
    }
    static const char *const copied[] = {"temperature", "top_p", "stream"};
    for (size_t i = 0; i < KW_ARRAY_LEN(copied); i++) {
        const struct kw_node *v = kw_node_get(in, copied[i]);
        if (v != NULL && v->type != KW_NODE_NULL)
            kw_node_map_put(a, body, copied[i], (struct kw_node *)v);
    }
    const struct kw_node *user = kw_node_get(in, "user");
    if (user != NULL && user->type == KW_NODE_STRING) {
        struct kw_node *meta = kw_node_new(a, KW_NODE_MAP);
        kw_node_map_put(a, meta, "user_id", str(a, user));
        kw_node_map_put(a, body, "metadata", meta);
    }
    *out = body;
    return KW_OK;
}

static int anthropic_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    if (r->api != DP_API_CHAT) {
        dp_request_fail(r, 400, "invalid_request_error", "unsupported_endpoint", NULL,
                        "backend %s (Anthropic) serves /v1/chat/completions only",
                        r->backend->meta.name);
        return KW_ERROR;
    }
    struct kw_node *body;
    if (translate_request(r, &body) != KW_OK)
        return KW_ERROR;
    const char *base = dp_openai_pick_base(r);
    size_t blen = strlen(base);
    while (blen > 0 && base[blen - 1] == '/')
        blen--;
    int rc = kw_buf_printf(url, "%.*s/v1/messages", (int)blen, base);
    rc |= dp_openai_add_header(headers, r->arena, "Content-Type", "application/json");
    rc |= dp_openai_add_header(headers, r->arena, "anthropic-version", ANTHROPIC_VERSION);
    const struct kw_backend *b = r->backend;
    if (b->credentials.secret_ref.name != NULL) {
        const struct kw_credential *c =
            kw_snapshot_credential(r->table->snap, b->meta.ns, b->credentials.secret_ref.name,
                                   b->credentials.secret_ref.key);
        if (c != NULL && c->len > 0)
            rc |= dp_openai_add_header(headers, r->arena, "x-api-key", c->value);
    }
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
    return "stop"; /* end_turn, stop_sequence, pause_turn, refusal */
}

static int64_t int_of(const struct kw_node *map, const char *key)
{
    const struct kw_node *n = kw_node_get(map, key);
    return n != NULL && n->type == KW_NODE_INT ? n->i : 0;
}

static void read_usage(struct anth_state *st, const struct kw_node *usage)
{
    if (usage == NULL || usage->type != KW_NODE_MAP)
        return;
    if (kw_node_get(usage, "input_tokens") != NULL) {
        st->input = int_of(usage, "input_tokens");
        st->cache_read = int_of(usage, "cache_read_input_tokens");
        st->cache_create = int_of(usage, "cache_creation_input_tokens");
    }
    if (kw_node_get(usage, "output_tokens") != NULL)
        st->output = int_of(usage, "output_tokens");
}

static void set_usage(struct dp_request *r, const struct anth_state *st)
{
    r->prompt_tokens = st->input + st->cache_read + st->cache_create;
    r->completion_tokens = st->output;
    r->cached_tokens = st->cache_read;
    r->have_usage = true;
}

static void usage_json(struct kw_buf *out, const struct dp_request *r)
{
    kw_buf_printf(out,
                  "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":%lld}}",
                  (long long)r->prompt_tokens, (long long)r->completion_tokens,
                  (long long)(r->prompt_tokens + r->completion_tokens),
                  (long long)r->cached_tokens);
}

static void copy_string(char *dst, size_t cap, const struct kw_node *n, const char *dflt)
{
    snprintf(dst, cap, "%s", n != NULL && n->type == KW_NODE_STRING ? n->str : dflt);
}

static int anthropic_on_response(struct dp_request *r, const char *body, size_t len,
                                 struct kw_buf *out)
{
    struct kw_node *root;
    char err[128];
    struct anth_state *st = state_of(r);
    if (st == NULL || kw_json_parse(r->arena, body, len, &root, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    copy_string(st->id, sizeof(st->id), kw_node_get(root, "id"), "msg");
    copy_string(st->model, sizeof(st->model), kw_node_get(root, "model"), r->upstream_model);
    read_usage(st, kw_node_get(root, "usage"));
    set_usage(r, st);
    struct kw_buf text;
    kw_buf_init(&text, DP_MAX_UPSTREAM_RESPONSE);
    const struct kw_node *content = kw_node_get(root, "content");
    bool any = false;
    for (size_t i = 0; content != NULL && content->type == KW_NODE_SEQ && i < content->n; i++) {
        const struct kw_node *t = kw_node_get(content->items[i], "text");
        if (t != NULL && t->type == KW_NODE_STRING) {
            kw_buf_append(&text, t->str, t->len);
            any = true;
        }
    }
    const char *fr = finish_reason(kw_node_get(root, "stop_reason"));
    kw_buf_puts(out, "{\"id\":");
    kw_json_write_string(out, st->id, strlen(st->id));
    kw_buf_printf(out, ",\"object\":\"chat.completion\",\"created\":%ld,\"model\":", st->created);
    kw_json_write_string(out, st->model, strlen(st->model));
    kw_buf_puts(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    if (any)
        kw_json_write_string(out, text.data, text.len);
    else
        kw_buf_puts(out, "null");
    kw_buf_printf(out, "},\"logprobs\":null,\"finish_reason\":%s%s%s}],\"usage\":", fr ? "\"" : "",
                  fr ? fr : "null", fr ? "\"" : "");
    usage_json(out, r);
    kw_buf_cleanup(&text);
    return kw_buf_puts(out, "}");
}

/* data: {"id","object":"chat.completion.chunk","created","model","choices":[{...}]} */
static void chunk(struct dp_request *r, struct kw_buf *out, const char *delta, const char *fr)
{
    struct anth_state *st = state_of(r);
    kw_buf_puts(out, "data: {\"id\":");
    kw_json_write_string(out, st->id, strlen(st->id));
    kw_buf_printf(out,
                  ",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":", st->created);
    kw_json_write_string(out, st->model, strlen(st->model));
    kw_buf_printf(out, ",\"choices\":[{\"index\":0,\"delta\":%s,\"finish_reason\":%s%s%s}]}\n\n",
                  delta, fr ? "\"" : "", fr ? fr : "null", fr ? "\"" : "");
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
    kw_arena_reset(r->w->scratch);
    if (st == NULL || kw_json_parse(r->w->scratch, data, data_len, &ev, err, sizeof(err)) != KW_OK)
        return KW_ERROR;
    const struct kw_node *tn = kw_node_get(ev, "type");
    const char *type = tn != NULL && tn->type == KW_NODE_STRING ? tn->str : event;
    if (strcmp(type, "message_start") == 0) {
        const struct kw_node *msg = kw_node_get(ev, "message");
        copy_string(st->id, sizeof(st->id), kw_node_get(msg, "id"), "msg");
        copy_string(st->model, sizeof(st->model), kw_node_get(msg, "model"), r->upstream_model);
        read_usage(st, kw_node_get(msg, "usage"));
        chunk(r, out, "{\"role\":\"assistant\",\"content\":\"\"}", NULL);
    } else if (strcmp(type, "content_block_delta") == 0) {
        const struct kw_node *d = kw_node_get(ev, "delta");
        const struct kw_node *text = kw_node_get(d, "text");
        if (text != NULL && text->type == KW_NODE_STRING) {
            struct kw_buf delta;
            kw_buf_init(&delta, DP_MAX_SSE_EVENT);
            kw_buf_puts(&delta, "{\"content\":");
            kw_json_write_string(&delta, text->str, text->len);
            kw_buf_puts(&delta, "}");
            chunk(r, out, delta.data, NULL);
            kw_buf_cleanup(&delta);
        }
    } else if (strcmp(type, "message_delta") == 0) {
        read_usage(st, kw_node_get(ev, "usage"));
        chunk(r, out, "{}", finish_reason(kw_node_get(kw_node_get(ev, "delta"), "stop_reason")));
    } else if (strcmp(type, "message_stop") == 0) {
        set_usage(r, st);
        if (r->client_usage) {
            kw_buf_puts(out, "data: {\"id\":");
            kw_json_write_string(out, st->id, strlen(st->id));
            kw_buf_printf(out, ",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":",
                          st->created);
            kw_json_write_string(out, st->model, strlen(st->model));
            kw_buf_puts(out, ",\"choices\":[],\"usage\":");
            usage_json(out, r);
            kw_buf_puts(out, "}\n\n");
        }
        kw_buf_puts(out, "data: [DONE]\n\n");
        r->saw_done = true;
    } else if (strcmp(type, "error") == 0) {
        const struct kw_node *e = kw_node_get(ev, "error");
        const struct kw_node *msg = kw_node_get(e, "message"), *et = kw_node_get(e, "type");
        kw_buf_puts(out, "data: {\"error\":{\"message\":");
        if (msg != NULL && msg->type == KW_NODE_STRING)
            kw_json_write_string(out, msg->str, msg->len);
        else
            kw_buf_puts(out, "\"upstream error\"");
        kw_buf_puts(out, ",\"type\":");
        if (et != NULL && et->type == KW_NODE_STRING)
            kw_json_write_string(out, et->str, et->len);
        else
            kw_buf_puts(out, "\"server_error\"");
        kw_buf_puts(out, ",\"param\":null,\"code\":null}}\n\n");
    }
    return KW_OK; /* ping, content_block_start/stop: nothing for the client */
}

/* {"type":"error","error":{"type","message"}} -> {"error":{"message","type","param","code"}} */
static int anthropic_on_error(struct dp_request *r, long status, const char *body, size_t len,
                              struct kw_buf *out)
{
    (void)status;
    struct kw_node *root;
    char err[128];
    kw_arena_reset(r->w->scratch);
    if (kw_json_parse(r->w->scratch, body, len, &root, err, sizeof(err)) != KW_OK)
        return KW_OK;
    const struct kw_node *e = kw_node_get(root, "error");
    const struct kw_node *msg = kw_node_get(e, "message"), *type = kw_node_get(e, "type");
    if (msg == NULL || msg->type != KW_NODE_STRING)
        return KW_OK;
    kw_buf_puts(out, "{\"error\":{\"message\":");
    kw_json_write_string(out, msg->str, msg->len);
    kw_buf_puts(out, ",\"type\":");
    if (type != NULL && type->type == KW_NODE_STRING)
        kw_json_write_string(out, type->str, type->len);
    else
        kw_buf_puts(out, "\"server_error\"");
    return kw_buf_puts(out, ",\"param\":null,\"code\":null}}");
}

const struct dp_provider_ops dp_provider_anthropic = {
    .name = "anthropic",
    .build = anthropic_build,
    .on_response = anthropic_on_response,
    .on_event = anthropic_on_event,
    .on_error = anthropic_on_error,
};
