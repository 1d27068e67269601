/* Shared by the translating providers: see translate.h. */
#include "translate.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "knoway/json.h"
#include "knoway/kw.h"

void dp_tr_stream_init(struct dp_request *r, struct dp_tr_stream *st)
{
    memset(st, 0, sizeof(*st));
    st->ident.created = (long)time(NULL);
    snprintf(st->ident.model, sizeof(st->ident.model), "%s",
             r->upstream_model != NULL ? r->upstream_model : "");
    snprintf(st->ident.id, sizeof(st->ident.id), "chatcmpl-%s", r->id);
    st->omit_reasoning = r->backend != NULL && r->backend->reasoning_omit;
}

void *dp_tr_state_sized(struct dp_request *r, size_t size)
{
    if (r->provider_state == NULL) {
        void *st = kw_arena_alloc(r->arena, size);
        if (st == NULL)
            return NULL;
        memset(st, 0, size);
        dp_tr_stream_init(r, st);
        r->provider_state = st;
    }
    return r->provider_state;
}

struct dp_tr_stream *dp_tr_state(struct dp_request *r)
{
    return dp_tr_state_sized(r, sizeof(struct dp_tr_stream));
}

struct kw_node *dp_tr_str(struct kw_arena *a, const struct kw_node *n)
{
    return kw_node_string(a, n->str, n->len);
}

struct kw_node *dp_tr_map1(struct kw_arena *a, const char *key, struct kw_node *v)
{
    struct kw_node *m = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, m, key, v);
    return m;
}

int64_t dp_tr_int(const struct kw_node *map, const char *key)
{
    const struct kw_node *n = kw_node_get(map, key);
    return n != NULL && n->type == KW_NODE_INT ? n->i : 0;
}

void dp_tr_copy(char *dst, size_t cap, const struct kw_node *n, const char *dflt)
{
    snprintf(dst, cap, "%s", n != NULL && n->type == KW_NODE_STRING ? n->str : dflt);
}

/* ---- reading ------------------------------------------------------------------------- */

void dp_tr_system_text(struct kw_buf *sys, const struct kw_node *content)
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

/* What a part is for the providers: a refusal part ({"type":"refusal","refusal":...}, valid
 * OpenAI input on assistant messages) becomes a text part (no provider here has a
 * refusal concept); NULL for an empty text part (dropped: OpenAI accepts it, Converse and
 * Anthropic refuse blank text blocks). */
static const struct kw_node *normal_part(struct kw_arena *a, const struct kw_node *p)
{
    const struct kw_node *type = kw_node_get(p, "type");
    if (type == NULL || type->type != KW_NODE_STRING)
        return p;
    if (strcmp(type->str, "refusal") == 0) {
        const struct kw_node *t = kw_node_get(p, "refusal");
        if (t == NULL || t->type != KW_NODE_STRING)
            return p; /* refused by part() as not a text part */
        if (t->len == 0)
            return NULL;
        struct kw_node *n = dp_tr_map1(a, "type", kw_node_cstring(a, "text"));
        kw_node_map_put(a, n, "text", dp_tr_str(a, t));
        return n;
    }
    if (strcmp(type->str, "text") == 0) {
        const struct kw_node *t = kw_node_get(p, "text");
        if (t != NULL && t->type == KW_NODE_STRING && t->len == 0)
            return NULL;
    }
    return p;
}

int dp_tr_parts(struct dp_request *r, size_t i, const struct kw_node *list,
                struct kw_node *(*part)(struct kw_arena *a, const struct kw_node *part),
                const char *code, const char *what, struct kw_node *out)
{
    for (size_t j = 0; j < list->n; j++) {
        const struct kw_node *p = normal_part(r->arena, list->items[j]);
        if (p == NULL)
            continue;
        struct kw_node *b = part(r->arena, p);
        if (b == NULL) {
            dp_error_set(r, 400, "invalid_request_error", code, "messages",
                         "messages[%zu].content[%zu] %s", i, j, what);
            return KW_ERROR;
        }
        kw_node_seq_push(r->arena, out, b);
    }
    return KW_OK;
}

struct kw_node *dp_tr_content(struct dp_request *r, size_t i, const struct kw_node *content,
                              const struct kw_node *calls, const struct dp_tr_content_ops *ops)
{
    struct kw_arena *a = r->arena;
    struct kw_node *blocks = kw_node_new(a, KW_NODE_SEQ);
    if (content != NULL && content->type == KW_NODE_STRING) {
        if (content->len > 0 || (ops->blank_text && calls == NULL))
            kw_node_seq_push(a, blocks, ops->text(a, content->str, content->len));
    } else if (content != NULL && content->type == KW_NODE_SEQ) {
        if (dp_tr_parts(r, i, content, ops->part, "unsupported_value", ops->bad_part, blocks) !=
            KW_OK)
            return NULL;
    } else if (content != NULL && content->type != KW_NODE_NULL) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                     "messages[%zu].content must be a string or a list of parts", i);
        return NULL;
    }
    for (size_t j = 0; calls != NULL && calls->type == KW_NODE_SEQ && j < calls->n; j++) {
        const struct kw_node *id, *name;
        struct kw_node *input;
        if (dp_tr_tool_call(r, i, j, calls->items[j], &id, &name, &input) != KW_OK)
            return NULL;
        kw_node_seq_push(a, blocks, ops->tool_call(a, id, name, input));
    }
    if (ops->empty != NULL && blocks->n == 0) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "messages", "messages[%zu] %s", i,
                     ops->empty);
        return NULL;
    }
    return blocks;
}

int dp_tr_tool_message(struct dp_request *r, const struct kw_node *list, size_t i,
                       const struct kw_node **id, const struct kw_node **content)
{
    const struct kw_node *m = list->items[i];
    *id = kw_node_get(m, "tool_call_id");
    *content = kw_node_get(m, "content");
    if (*id == NULL || (*id)->type != KW_NODE_STRING || *content == NULL ||
        ((*content)->type != KW_NODE_STRING && (*content)->type != KW_NODE_SEQ)) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                     "messages[%zu]: a tool message needs tool_call_id and content", i);
        return KW_ERROR;
    }
    return KW_OK;
}

void dp_tr_system_join(struct kw_buf *sys, const struct kw_node *system)
{
    for (size_t i = 0; i < system->n; i++)
        dp_tr_system_text(sys, system->items[i]);
}

/* The last turn when it has this role, else NULL. */
static struct kw_node *last_turn(const struct kw_node *turns, const char *role)
{
    const struct kw_node *prev = turns->n > 0 ? turns->items[turns->n - 1] : NULL;
    const struct kw_node *prole = kw_node_get(prev, "role");
    return prole != NULL && strcmp(prole->str, role) == 0 ? (struct kw_node *)prev : NULL;
}

static bool last_role_is(const struct kw_node *turn, const char *role)
{
    const struct kw_node *r = kw_node_get(turn, "role");
    return r != NULL && r->type == KW_NODE_STRING && strcmp(r->str, role) == 0;
}

static struct kw_node *new_turn(struct kw_arena *a, const struct dp_tr_turn_ops *ops,
                                const char *role, struct kw_node *content, struct kw_node *turns)
{
    struct kw_node *t = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, t, "role", kw_node_cstring(a, role));
    kw_node_map_put(a, t, ops->content_key, content);
    kw_node_seq_push(a, turns, t);
    return t;
}

/* An assistant message without tool calls whose content is null, "" or only blank text or
 * refusal parts. */
static bool blank_assistant(const struct kw_node *m)
{
    const struct kw_node *calls = kw_node_get(m, "tool_calls");
    if (calls != NULL && calls->type == KW_NODE_SEQ && calls->n > 0)
        return false;
    const struct kw_node *c = kw_node_get(m, "content");
    if (c == NULL || c->type == KW_NODE_NULL)
        return true;
    if (c->type == KW_NODE_STRING)
        return c->len == 0;
    if (c->type != KW_NODE_SEQ)
        return false;
    for (size_t j = 0; j < c->n; j++) {
        const struct kw_node *type = kw_node_get(c->items[j], "type");
        const struct kw_node *t = kw_node_get(c->items[j], "text");
        if (t == NULL)
            t = kw_node_get(c->items[j], "refusal");
        if (type == NULL || type->type != KW_NODE_STRING ||
            (strcmp(type->str, "text") != 0 && strcmp(type->str, "refusal") != 0) || t == NULL ||
            t->type != KW_NODE_STRING || t->len > 0)
            return false;
    }
    return true;
}

int dp_tr_turns(struct dp_request *r, const struct dp_tr_turn_ops *ops, const struct kw_node *list,
                struct kw_node *system, struct kw_node *turns)
{
    struct kw_arena *a = r->arena;
    struct kw_node *results = NULL; /* the user turn collecting consecutive tool results */
    for (size_t i = 0; i < list->n; i++) {
        const struct kw_node *m = list->items[i], *role = kw_node_get(m, "role");
        if (m->type != KW_NODE_MAP || role == NULL || role->type != KW_NODE_STRING) {
            dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                         "messages[%zu] needs a role and content", i);
            return KW_ERROR;
        }
        if (strcmp(role->str, "system") == 0 || strcmp(role->str, "developer") == 0) {
            struct kw_node *content = kw_node_get(m, "content");
            if (content != NULL)
                kw_node_seq_push(a, system, content);
            continue;
        }
        if (strcmp(role->str, "tool") == 0) {
            struct kw_node *item = ops->tool(r, list, i);
            if (item == NULL)
                return KW_ERROR;
            struct kw_node *prev = ops->merge ? last_turn(turns, "user") : NULL;
            if (results == NULL && prev != NULL)
                results = kw_node_get(prev, ops->content_key);
            if (results == NULL) {
                results = kw_node_new(a, KW_NODE_SEQ);
                new_turn(a, ops, "user", results, turns);
                /* without merging, before the user turns that followed the assistant's
                 * (a provider joins consecutive user turns: tool results lead) */
                size_t at = turns->n - 1;
                while (at > 0 && last_role_is(turns->items[at - 1], "user"))
                    at--;
                struct kw_node *t = turns->items[turns->n - 1];
                for (size_t k = turns->n - 1; k > at; k--)
                    turns->items[k] = turns->items[k - 1];
                turns->items[at] = t;
            }
            /* tool results lead their turn: after the results already there, before any
             * text merged into it (Anthropic-family models answer tool results first) */
            size_t at = 0;
            while (at < results->n && ops->is_tool_result != NULL &&
                   ops->is_tool_result(results->items[at]))
                at++;
            if (ops->is_tool_result == NULL)
                at = results->n;
            kw_node_seq_push(a, results, item);
            for (size_t k = results->n - 1; k > at; k--)
                results->items[k] = results->items[k - 1];
            results->items[at] = item;
            continue;
        }
        bool assistant = strcmp(role->str, "assistant") == 0;
        if (assistant)
            results = NULL; /* a user message keeps them: later tool results join them */
        if (assistant && blank_assistant(m))
            continue; /* clients send "" after tool-call turns: nothing to say, dropped */
        if (!assistant && strcmp(role->str, "user") != 0) {
            dp_error_set(r, 400, "invalid_request_error", "unsupported_value", "messages",
                         "messages[%zu]: role \"%s\" is not one of system, developer, user, "
                         "assistant, tool",
                         i, role->str);
            return KW_ERROR;
        }
        struct kw_node *content = ops->content(r, i, m, assistant);
        if (content == NULL)
            return KW_ERROR;
        const char *trole = assistant ? ops->assistant_role : "user";
        struct kw_node *prev = ops->merge ? last_turn(turns, trole) : NULL;
        if (prev != NULL) { /* content is a list where turns merge */
            struct kw_node *pc = kw_node_get(prev, ops->content_key);
            for (size_t j = 0; j < content->n; j++)
                kw_node_seq_push(a, pc, content->items[j]);
            continue;
        }
        new_turn(a, ops, trole, content, turns);
    }
    return KW_OK;
}

bool dp_tr_data_url(const char *url, const char **mime, size_t *mime_len, const char **data)
{
    if (strncmp(url, "data:", 5) != 0)
        return false;
    const char *b64 = strstr(url, ";base64,");
    if (b64 == NULL || strchr(url + 5, ',') < b64)
        return false;
    *mime = url + 5;
    *mime_len = (size_t)(b64 - url - 5);
    *data = b64 + 8;
    return true;
}

int dp_tr_tool_call(struct dp_request *r, size_t msg, size_t j, const struct kw_node *call,
                    const struct kw_node **id, const struct kw_node **name, struct kw_node **input)
{
    const struct kw_node *fn = kw_node_get(call, "function");
    const struct kw_node *args = kw_node_get(fn, "arguments");
    char err[128];
    *id = kw_node_get(call, "id");
    *name = kw_node_get(fn, "name");
    if (*id == NULL || (*id)->type != KW_NODE_STRING || *name == NULL ||
        (*name)->type != KW_NODE_STRING || args == NULL || args->type != KW_NODE_STRING ||
        kw_json_parse(r->arena, args->str, args->len, input, err, sizeof(err)) != KW_OK ||
        (*input)->type != KW_NODE_MAP) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "messages",
                     "messages[%zu].tool_calls[%zu] needs an id, a function name and "
                     "arguments holding a JSON object",
                     msg, j);
        return KW_ERROR;
    }
    return KW_OK;
}

int dp_tr_tool_decl(struct dp_request *r, size_t j, const struct kw_node *tool,
                    const struct kw_node **name, const struct kw_node **desc,
                    struct kw_node **params)
{
    const struct kw_node *type = kw_node_get(tool, "type");
    const struct kw_node *fn = kw_node_get(tool, "function");
    *name = kw_node_get(fn, "name");
    if (type == NULL || type->type != KW_NODE_STRING || strcmp(type->str, "function") != 0 ||
        *name == NULL || (*name)->type != KW_NODE_STRING) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "tools",
                     "tools[%zu] must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                     j);
        return KW_ERROR;
    }
    *desc = kw_node_get(fn, "description");
    if (*desc != NULL && (*desc)->type != KW_NODE_STRING)
        *desc = NULL;
    *params = kw_node_get(fn, "parameters");
    if (*params == NULL || (*params)->type != KW_NODE_MAP) {
        struct kw_arena *a = r->arena;
        *params = kw_node_new(a, KW_NODE_MAP);
        kw_node_map_put(a, *params, "type", kw_node_cstring(a, "object"));
        kw_node_map_put(a, *params, "properties", kw_node_new(a, KW_NODE_MAP));
    }
    return KW_OK;
}

int dp_tr_tools(struct dp_request *r, const struct kw_node *req,
                struct kw_node *(*decl)(struct kw_arena *a, const struct kw_node *name,
                                        const struct kw_node *desc, struct kw_node *params),
                struct kw_node **out)
{
    const struct kw_node *tools = kw_node_get(req, "tools");
    *out = NULL;
    if (tools == NULL || tools->type == KW_NODE_NULL)
        return KW_OK;
    if (tools->type != KW_NODE_SEQ) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "tools", "tools must be a list");
        return KW_ERROR;
    }
    struct kw_node *list = kw_node_new(r->arena, KW_NODE_SEQ);
    for (size_t i = 0; i < tools->n; i++) {
        const struct kw_node *name, *desc;
        struct kw_node *params;
        if (dp_tr_tool_decl(r, i, tools->items[i], &name, &desc, &params) != KW_OK)
            return KW_ERROR;
        kw_node_seq_push(r->arena, list, decl(r->arena, name, desc, params));
    }
    *out = list;
    return KW_OK;
}

int dp_tr_format(struct dp_request *r, const struct kw_node *req, struct dp_tr_format *f)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *rf = kw_node_get(req, "response_format");
    const struct kw_node *type = kw_node_get(rf, "type");
    memset(f, 0, sizeof(*f));
    r->format_tool = NULL;
    if (rf == NULL || rf->type == KW_NODE_NULL)
        return KW_OK;
    if (type == NULL || type->type != KW_NODE_STRING) {
        dp_error_set(r, 400, "invalid_request_error", NULL, "response_format",
                     "response_format must be {\"type\": \"text\"}, {\"type\": \"json_object\"} "
                     "or {\"type\": \"json_schema\", \"json_schema\": {...}}");
        return KW_ERROR;
    }
    if (strcmp(type->str, "text") == 0)
        return KW_OK;
    if (strcmp(type->str, "json_object") == 0) {
        f->kind = DP_TR_FORMAT_JSON_OBJECT;
        f->name = "json_response";
        f->schema = dp_tr_map1(a, "type", kw_node_cstring(a, "object"));
    } else if (strcmp(type->str, "json_schema") == 0) {
        const struct kw_node *js = kw_node_get(rf, "json_schema");
        const struct kw_node *name = kw_node_get(js, "name");
        const struct kw_node *schema = kw_node_get(js, "schema");
        const struct kw_node *strict = kw_node_get(js, "strict");
        bool ok = name != NULL && name->type == KW_NODE_STRING && name->len > 0 && name->len <= 64;
        for (size_t i = 0; ok && i < name->len; i++)
            ok = (name->str[i] >= 'a' && name->str[i] <= 'z') ||
                 (name->str[i] >= 'A' && name->str[i] <= 'Z') ||
                 (name->str[i] >= '0' && name->str[i] <= '9') || name->str[i] == '_' ||
                 name->str[i] == '-';
        if (!ok) {
            dp_error_set(r, 400, "invalid_request_error", NULL, "response_format.json_schema.name",
                         "response_format.json_schema.name must be 1 to 64 letters, digits, "
                         "underscores or dashes");
            return KW_ERROR;
        }
        if (schema != NULL && schema->type != KW_NODE_MAP) {
            dp_error_set(r, 400, "invalid_request_error", NULL,
                         "response_format.json_schema.schema",
                         "response_format.json_schema.schema must be a JSON Schema object");
            return KW_ERROR;
        }
        f->kind = DP_TR_FORMAT_JSON_SCHEMA;
        f->name = kw_arena_strndup(a, name->str, name->len);
        f->schema = schema != NULL ? (struct kw_node *)schema
                                   : dp_tr_map1(a, "type", kw_node_cstring(a, "object"));
        f->strict = strict != NULL && strict->type == KW_NODE_BOOL && strict->b;
    } else {
        dp_error_set(r, 400, "invalid_request_error", NULL, "response_format.type",
                     "response_format.type must be \"text\", \"json_object\" or \"json_schema\"");
        return KW_ERROR;
    }
    if (f->name == NULL || f->schema == NULL)
        return dp_error_set(r, 500, "server_error", NULL, NULL, "out of memory");
    return KW_OK;
}

bool dp_tr_format_tool(const struct dp_request *r, const char *name, size_t len)
{
    return r->format_tool != NULL && strlen(r->format_tool) == len &&
           memcmp(r->format_tool, name, len) == 0;
}

int64_t dp_tr_max_tokens(const struct kw_node *req, int64_t dflt)
{
    const struct kw_node *max = kw_node_get(req, "max_completion_tokens");
    if (max == NULL || max->type != KW_NODE_INT)
        max = kw_node_get(req, "max_tokens");
    return max != NULL && max->type == KW_NODE_INT ? max->i : dflt;
}

struct kw_node *dp_tr_stop_list(struct kw_arena *a, const struct kw_node *req)
{
    const struct kw_node *stop = kw_node_get(req, "stop");
    if (stop != NULL && stop->type == KW_NODE_SEQ)
        return (struct kw_node *)stop;
    if (stop == NULL || stop->type != KW_NODE_STRING)
        return NULL;
    struct kw_node *seq = kw_node_new(a, KW_NODE_SEQ);
    kw_node_seq_push(a, seq, kw_node_string(a, stop->str, stop->len));
    return seq;
}

/* ---- writing ------------------------------------------------------------------------- */

int dp_tr_usage_json(struct kw_buf *out, const struct dp_request *r)
{
    kw_buf_printf(out,
                  "{\"prompt_tokens\":%lld,\"completion_tokens\":%lld,\"total_tokens\":%lld,"
                  "\"prompt_tokens_details\":{\"cached_tokens\":%lld}",
                  (long long)r->usage.prompt, (long long)r->usage.completion,
                  (long long)(r->usage.prompt + r->usage.completion), (long long)r->usage.cached);
    if (r->usage.reasoning > 0) /* counted within completion_tokens, as OpenAI does */
        kw_buf_printf(out, ",\"completion_tokens_details\":{\"reasoning_tokens\":%lld}",
                      (long long)r->usage.reasoning);
    return kw_buf_puts(out, "}");
}

static void service_tier(struct kw_buf *out, const struct dp_tr_ident *id)
{
    if (id->service_tier[0] == '\0')
        return;
    kw_buf_puts(out, ",\"service_tier\":");
    kw_json_write_string(out, id->service_tier, strlen(id->service_tier));
}

static void chunk_head(struct kw_buf *out, const struct dp_tr_ident *id)
{
    kw_buf_puts(out, "data: {\"id\":");
    kw_json_write_string(out, id->id, strlen(id->id));
    kw_buf_printf(out,
                  ",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":", id->created);
    kw_json_write_string(out, id->model, strlen(id->model));
    service_tier(out, id);
}

int dp_tr_chunk(struct kw_buf *out, const struct dp_tr_ident *id, const char *delta, const char *fr)
{
    chunk_head(out, id);
    return kw_buf_printf(out,
                         ",\"choices\":[{\"index\":0,\"delta\":%s,\"finish_reason\":%s%s%s}]}\n\n",
                         delta, fr ? "\"" : "", fr ? fr : "null", fr ? "\"" : "");
}

int dp_tr_chunk_role(struct kw_buf *out, struct dp_tr_stream *st)
{
    if (st->started)
        return KW_OK;
    st->started = true;
    return dp_tr_chunk(out, &st->ident, "{\"role\":\"assistant\",\"content\":\"\"}", NULL);
}

int dp_tr_chunk_text(struct kw_buf *out, struct dp_tr_stream *st, const char *text, size_t len)
{
    dp_tr_chunk_role(out, st);
    chunk_head(out, &st->ident);
    kw_buf_puts(out, ",\"choices\":[{\"index\":0,\"delta\":{\"content\":");
    kw_json_write_string(out, text, len);
    return kw_buf_puts(out, "},\"finish_reason\":null}]}\n\n");
}

int dp_tr_chunk_tool(struct kw_buf *out, struct dp_tr_stream *st, const char *id, size_t id_len,
                     const char *name, size_t name_len, const char *args, size_t args_len)
{
    dp_tr_chunk_role(out, st);
    chunk_head(out, &st->ident);
    kw_buf_printf(
        out,
        ",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%d,\"id\":", st->tools);
    kw_json_write_string(out, id, id_len);
    kw_buf_puts(out, ",\"type\":\"function\",\"function\":{\"name\":");
    kw_json_write_string(out, name, name_len);
    kw_buf_puts(out, ",\"arguments\":");
    kw_json_write_string(out, args, args_len);
    st->tools++;
    st->any_tool = true;
    return kw_buf_puts(out, "}}]},\"finish_reason\":null}]}\n\n");
}

int dp_tr_chunk_args(struct kw_buf *out, struct dp_tr_stream *st, const char *args, size_t len)
{
    chunk_head(out, &st->ident);
    kw_buf_printf(out,
                  ",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":%d,"
                  "\"function\":{\"arguments\":",
                  st->tools > 0 ? st->tools - 1 : 0);
    kw_json_write_string(out, args, len);
    return kw_buf_puts(out, "}}]},\"finish_reason\":null}]}\n\n");
}

int dp_tr_chunk_finish(struct kw_buf *out, struct dp_tr_stream *st, const char *fr)
{
    if (st->finished)
        return KW_OK;
    st->finished = true;
    dp_tr_chunk_role(out, st);
    if (fr != NULL && st->any_tool && strcmp(fr, "stop") == 0)
        fr = "tool_calls";
    else if (fr != NULL && st->answered && !st->any_tool && strcmp(fr, "tool_calls") == 0)
        fr = "stop"; /* the structured output's answer tool is the message, not a call */
    return dp_tr_chunk(out, &st->ident, "{}", fr);
}

int dp_tr_stream_end(struct kw_buf *out, struct dp_request *r, struct dp_tr_stream *st)
{
    if (r->client_usage) {
        kw_buf_puts(out, "data: {\"id\":");
        kw_json_write_string(out, st->ident.id, strlen(st->ident.id));
        kw_buf_printf(out, ",\"object\":\"chat.completion.chunk\",\"created\":%ld,\"model\":",
                      st->ident.created);
        kw_json_write_string(out, st->ident.model, strlen(st->ident.model));
        service_tier(out, &st->ident);
        kw_buf_puts(out, ",\"choices\":[],\"usage\":");
        dp_tr_usage_json(out, r);
        kw_buf_puts(out, "}\n\n");
    }
    r->saw_done = true;
    return kw_buf_puts(out, "data: [DONE]\n\n");
}

int dp_tr_error_event(struct kw_buf *out, const char *msg, size_t msg_len, const char *type,
                      const char *code)
{
    kw_buf_puts(out, "data: ");
    dp_openai_error(out, 500, msg, msg_len, type, NULL, code);
    return kw_buf_puts(out, "\n\n");
}

struct kw_node *dp_tr_error_json(struct dp_request *r, const char *body, size_t len)
{
    struct kw_node *root;
    char err[128];
    kw_arena_reset(r->scratch);
    return kw_json_parse(r->scratch, body, len, &root, err, sizeof(err)) == KW_OK ? root : NULL;
}

void dp_tr_reasoning_init(struct dp_tr_reasoning *rs)
{
    kw_buf_init(&rs->text, DP_MAX_UPSTREAM_RESPONSE);
    kw_buf_init(&rs->blocks, DP_MAX_UPSTREAM_RESPONSE);
}

void dp_tr_reasoning_cleanup(struct dp_tr_reasoning *rs)
{
    kw_buf_cleanup(&rs->text);
    kw_buf_cleanup(&rs->blocks);
}

void dp_tr_reasoning_block(struct dp_tr_reasoning *rs, const char *text, size_t len,
                           const char *sig, size_t sig_len)
{
    kw_buf_append(&rs->text, text, len);
    kw_buf_puts(&rs->blocks, rs->blocks.len > 0 ? ",{\"type\":\"thinking\",\"thinking\":"
                                                : "{\"type\":\"thinking\",\"thinking\":");
    kw_json_write_string(&rs->blocks, text, len);
    if (sig != NULL) {
        kw_buf_puts(&rs->blocks, ",\"signature\":");
        kw_json_write_string(&rs->blocks, sig, sig_len);
    }
    kw_buf_puts(&rs->blocks, "}");
}

void dp_tr_reasoning_redacted(struct dp_tr_reasoning *rs, const char *data, size_t len)
{
    kw_buf_puts(&rs->blocks, rs->blocks.len > 0 ? ",{\"type\":\"redacted_thinking\",\"data\":"
                                                : "{\"type\":\"redacted_thinking\",\"data\":");
    kw_json_write_string(&rs->blocks, data, len);
    kw_buf_puts(&rs->blocks, "}");
}

/* A reasoning chunk: delta = open + value (a JSON string of it when quote) + close. */
static int reasoning_chunk(struct kw_buf *out, struct dp_tr_stream *st, const char *open,
                           const char *v, size_t len, bool quote, const char *close)
{
    if (st->omit_reasoning)
        return KW_OK;
    dp_tr_chunk_role(out, st);
    struct kw_buf d;
    kw_buf_init(&d, DP_MAX_SSE_EVENT);
    kw_buf_puts(&d, open);
    if (quote)
        kw_json_write_string(&d, v, len);
    else
        kw_buf_append(&d, v, len);
    int rc =
        kw_buf_puts(&d, close) == KW_OK ? dp_tr_chunk(out, &st->ident, d.data, NULL) : KW_ERROR;
    kw_buf_cleanup(&d);
    return rc;
}

int dp_tr_chunk_reasoning(struct kw_buf *out, struct dp_tr_stream *st, const char *text, size_t len)
{
    return len == 0 ? KW_OK
                    : reasoning_chunk(out, st, "{\"reasoning_content\":", text, len, true, "}");
}

int dp_tr_chunk_thinking_block(struct kw_buf *out, struct dp_tr_stream *st, const char *block,
                               size_t len)
{
    return reasoning_chunk(out, st, "{\"thinking_blocks\":[", block, len, false, "]}");
}

int64_t dp_tr_thinking_budget(const struct dp_request *r)
{
    if (r->thinking_budget >= 0)
        return r->thinking_budget;
    const struct kw_node *e = kw_node_get(r->up_json, "reasoning_effort");
    if (e == NULL || e->type != KW_NODE_STRING)
        return -1;
    if (strcmp(e->str, "low") == 0)
        return 1024;
    if (strcmp(e->str, "medium") == 0)
        return 4096;
    if (strcmp(e->str, "high") == 0)
        return 16384;
    return 0; /* minimal, none */
}

int dp_tr_completion(struct kw_buf *out, const struct dp_request *r, const struct dp_tr_ident *id,
                     const struct kw_buf *content, const struct kw_buf *tool_calls, const char *fr)
{
    return dp_tr_completion_r(out, r, id, content, NULL, tool_calls, fr);
}

int dp_tr_completion_r(struct kw_buf *out, const struct dp_request *r, const struct dp_tr_ident *id,
                       const struct kw_buf *content, const struct dp_tr_reasoning *rs,
                       const struct kw_buf *tool_calls, const char *fr)
{
    kw_buf_puts(out, "{\"id\":");
    kw_json_write_string(out, id->id, strlen(id->id));
    kw_buf_printf(out, ",\"object\":\"chat.completion\",\"created\":%ld,\"model\":", id->created);
    kw_json_write_string(out, id->model, strlen(id->model));
    service_tier(out, id);
    kw_buf_puts(out, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
    if (content != NULL)
        kw_json_write_string(out, content->data != NULL ? content->data : "", content->len);
    else
        kw_buf_puts(out, "null");
    bool omit = r->backend != NULL && r->backend->reasoning_omit;
    if (rs != NULL && !omit && rs->text.len > 0) {
        kw_buf_puts(out, ",\"reasoning_content\":");
        kw_json_write_string(out, rs->text.data, rs->text.len);
    }
    if (rs != NULL && !omit && rs->blocks.len > 0) {
        kw_buf_puts(out, ",\"thinking_blocks\":[");
        kw_buf_append(out, rs->blocks.data, rs->blocks.len);
        kw_buf_puts(out, "]");
    }
    if (tool_calls != NULL && tool_calls->len > 0) {
        kw_buf_puts(out, ",\"tool_calls\":[");
        kw_buf_append(out, tool_calls->data, tool_calls->len);
        kw_buf_puts(out, "]");
        if (fr != NULL && strcmp(fr, "stop") == 0)
            fr = "tool_calls";
    }
    kw_buf_printf(out, "},\"logprobs\":null,\"finish_reason\":%s%s%s}],\"usage\":", fr ? "\"" : "",
                  fr ? fr : "null", fr ? "\"" : "");
    dp_tr_usage_json(out, r);
    return kw_buf_puts(out, "}");
}

int dp_tr_tool_call_json(struct kw_buf *calls, const char *id, size_t id_len, const char *name,
                         size_t name_len, const struct kw_node *input)
{
    kw_buf_puts(calls, calls->len > 0 ? ",{\"id\":" : "{\"id\":");
    kw_json_write_string(calls, id, id_len);
    kw_buf_puts(calls, ",\"type\":\"function\",\"function\":{\"name\":");
    kw_json_write_string(calls, name, name_len);
    struct kw_buf args;
    kw_buf_init(&args, DP_MAX_UPSTREAM_RESPONSE);
    if (input != NULL)
        kw_json_write(input, &args);
    else
        kw_buf_puts(&args, "{}");
    kw_buf_puts(calls, ",\"arguments\":");
    kw_json_write_string(calls, args.data != NULL ? args.data : "", args.len);
    kw_buf_cleanup(&args);
    return kw_buf_puts(calls, "}}");
}
