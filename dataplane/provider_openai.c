/* The OpenAI schema, spoken by OpenAI, Mistral, vLLM, KServe and Ollama: the request is
 * relayed as the client sent it (after the gateway's rewriting), responses and stream
 * events are relayed byte for byte; usage is read on the way. */
#include <string.h>

#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"

const char *dp_openai_api_suffix(enum dp_api api)
{
    switch (api) {
    case DP_API_CHAT:
        return "/chat/completions";
    case DP_API_COMPLETIONS:
        return "/completions";
    case DP_API_EMBEDDINGS:
        return "/embeddings";
    default:
        return "";
    }
}

const char *dp_provider_secret(struct dp_request *r, const char *key)
{
    const struct kw_backend *b = r->backend;
    if (b->credentials.secret_ref.name == NULL)
        return NULL;
    const struct kw_credential *c =
        kw_snapshot_credential(r->table->snap, b->meta.ns, b->credentials.secret_ref.name,
                               key != NULL ? key : b->credentials.secret_ref.key);
    return c != NULL && c->len > 0 ? c->value : NULL;
}

int dp_openai_finish(struct dp_request *r, struct curl_slist **headers, const struct kw_node *body)
{
    const struct kw_backend *b = r->backend;
    int rc = KW_OK;
    for (size_t i = 0; i < b->upstream.nheaders; i++)
        rc |= dp_openai_add_header(headers, r->arena, b->upstream.headers[i].name,
                                   b->upstream.headers[i].value);
    if (rc != KW_OK || kw_json_write(body, &r->up_body) != KW_OK)
        return KW_ERROR;
    return KW_OK;
}

int dp_openai_add_header(struct curl_slist **list, struct kw_arena *a, const char *name,
                         const char *value)
{
    /* the last line of defence against header injection: snapshots are checked already */
    for (const char *p = value; *p != '\0'; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            return KW_ERROR;
    char *h = kw_arena_printf(a, "%s: %s", name, value);
    if (h == NULL)
        return KW_ERROR;
    struct curl_slist *n = curl_slist_append(*list, h);
    if (n == NULL)
        return KW_ERROR;
    *list = n;
    return KW_OK;
}

/* The Anthropic front keeps a conversation's thinking blocks on assistant messages
 * (thinking_blocks) for Anthropic backends; an OpenAI-shaped API refuses fields it does not
 * know: this attempt's body goes without them (copies: the request's own tree serves a
 * fallback to an Anthropic backend). */
static int drop_thinking_blocks(struct dp_request *r)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *msgs = kw_node_get(r->up_json, "messages");
    if (msgs == NULL || msgs->type != KW_NODE_SEQ)
        return KW_OK;
    struct kw_node *out = kw_node_new(a, KW_NODE_SEQ);
    if (out == NULL)
        return KW_ERROR;
    for (size_t i = 0; i < msgs->n; i++) {
        struct kw_node *m = msgs->items[i];
        if (m->type == KW_NODE_MAP && kw_node_get(m, "thinking_blocks") != NULL) {
            struct kw_node *c = kw_node_map_copy(a, m);
            if (c == NULL)
                return KW_ERROR;
            size_t keep = 0;
            for (size_t j = 0; j < c->n; j++)
                if (strcmp(c->pairs[j].key->str, "thinking_blocks") != 0)
                    c->pairs[keep++] = c->pairs[j];
            c->n = keep;
            m = c;
        }
        if (kw_node_seq_push(a, out, m) != KW_OK)
            return KW_ERROR;
    }
    return kw_node_map_set(a, r->up_json, "messages", out);
}

static int openai_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    if (r->front != NULL && drop_thinking_blocks(r) != KW_OK)
        return KW_ERROR;
    size_t blen = r->base_len;
    const char *base = r->base_url != NULL ? r->base_url : "";
    if (kw_buf_append(url, base, blen) != KW_OK ||
        kw_buf_puts(url, r->responses_native ? "/responses" : dp_openai_api_suffix(r->api)) !=
            KW_OK)
        return KW_ERROR;
    int rc = dp_openai_add_header(headers, r->arena, "Content-Type", "application/json");
    const char *key =
        dp_provider_secret(r, NULL); /* an empty key sends none: the upstream says why */
    if (key != NULL) {
        const char *bearer = kw_arena_printf(r->arena, "Bearer %s", key);
        rc |= bearer != NULL ? dp_openai_add_header(headers, r->arena, "Authorization", bearer)
                             : KW_ERROR;
    }
    if (rc != KW_OK)
        return KW_ERROR;
    return dp_openai_finish(r, headers, r->up_json);
}

int dp_openai_on_response(struct dp_request *r, const char *body, size_t len, struct kw_buf *out)
{
    (void)out; /* relayed unchanged */
    /* only the usage is read (a parse of the whole answer was a twentieth of a proxied
     * request's CPU); filters that want the answer parse it themselves (on_body) */
    size_t at, end;
    struct kw_node *usage;
    char err[128];
    kw_arena_reset(r->scratch);
    if (kw_json_top_object(body, len, "usage", &at, &end) &&
        kw_json_parse(r->scratch, body + at, end - at, &usage, err, sizeof(err)) == KW_OK)
        dp_request_usage(r, usage);
    return KW_OK;
}

/* Whether data holds "usage": {...} (most chunks carry none, or "usage": null): only
 * those are parsed, so relaying a chunk costs a scan, not a parse. */
static bool has_usage_object(const char *data, size_t len)
{
    const char *p = data, *end = data + len;
    while ((p = memmem(p, (size_t)(end - p), "\"usage\"", 7)) != NULL) {
        p += 7;
        while (p < end && (*p == ' ' || *p == ':' || *p == '\t' || *p == '\n' || *p == '\r'))
            p++;
        if (p < end && *p == '{')
            return true;
    }
    return false;
}

int dp_openai_on_event(struct dp_request *r, const char *raw, size_t raw_len, const char *event,
                       const char *data, size_t data_len, struct kw_buf *out)
{
    (void)event;
    if (data_len == 6 && memcmp(data, "[DONE]", 6) == 0) {
        r->saw_done = true;
        return kw_buf_append(out, raw, raw_len);
    }
    struct kw_node *root;
    char err[128];
    kw_arena_reset(r->scratch);
    if (has_usage_object(data, data_len) &&
        kw_json_parse(r->scratch, data, data_len, &root, err, sizeof(err)) == KW_OK) {
        const struct kw_node *usage = kw_node_get(root, "usage");
        if (usage == NULL && r->responses_native) /* response.completed {response: {usage}} */
            usage = kw_node_get(kw_node_get(root, "response"), "usage");
        if (usage != NULL && usage->type == KW_NODE_MAP) {
            dp_request_usage(r, usage);
            /* the usage-only chunk the gateway asked for on the client's behalf */
            const struct kw_node *choices = kw_node_get(root, "choices");
            if (!r->client_usage && choices != NULL && choices->type == KW_NODE_SEQ &&
                choices->n == 0)
                return KW_OK;
        }
    }
    return kw_buf_append(out, raw, raw_len);
}

const struct dp_provider_ops dp_provider_openai = {
    .name = "openai",
    .build = openai_build,
    .on_response = dp_openai_on_response,
    .on_event = dp_openai_on_event,
};
