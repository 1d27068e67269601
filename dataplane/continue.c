/* Mid-stream continuation (continue.h). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "continue.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "sse.h"

struct dp_cont {
    struct kw_buf text;         /* the assistant text the client has (malloc'd) */
    const struct kw_node *orig; /* the client's request before any prefill */
    bool tools;                 /* a tool call was streamed: not continued */
    bool overflow;              /* the text passed DP_CONT_MAX_TEXT */
    bool continuing;            /* the running attempt is a continuation */
    bool ident;                 /* id, model and created of the first attempt are known */
    bool usage_done;            /* dp_cont_finish counted the earlier attempts in r->usage */
    unsigned count;             /* continuations started */
    size_t skip_ws;             /* whitespace trimmed from the prefill: not repeated */
    int64_t chunks;             /* content chunks of the running attempt */
    int64_t tokens;             /* ... of the attempts that broke (their usage never came) */
    char id[128], model[256];
    int64_t created;
};

bool dp_cont_enabled(const struct dp_request *r)
{
    return r->route != NULL && r->route->retry.mid_stream == KW_MID_STREAM_CONTINUE &&
           r->api == DP_API_CHAT && r->stream;
}

bool dp_cont_capable(const struct kw_backend *b)
{
    return b->provider == KW_PROVIDER_VLLM || b->provider == KW_PROVIDER_ANTHROPIC ||
           b->provider == KW_PROVIDER_AWS_BEDROCK;
}

static struct dp_cont *state(struct dp_request *r)
{
    if (r->cont == NULL) {
        r->cont = kw_arena_alloc(r->arena, sizeof(struct dp_cont));
        if (r->cont == NULL)
            return NULL;
        memset(r->cont, 0, sizeof(struct dp_cont));
        kw_buf_init(&r->cont->text, DP_CONT_MAX_TEXT);
    }
    return r->cont;
}

unsigned dp_cont_count(const struct dp_request *r)
{
    return r->cont != NULL ? r->cont->count : 0;
}

bool dp_cont_active(const struct dp_request *r)
{
    return r->cont != NULL && r->cont->continuing;
}

static const char *str_of(const struct kw_node *n)
{
    return n != NULL && n->type == KW_NODE_STRING ? n->str : NULL;
}

/* ---- tracking and splicing ------------------------------------------------------------- */

struct track {
    struct dp_request *r;
    struct dp_cont *c;
    struct kw_buf *out; /* the rewritten events (a continuation) or NULL */
    bool error;         /* an upstream error event */
};

/* A continuation's chunk as the client must see it: false to drop it. */
static bool splice(struct dp_request *r, struct dp_cont *c, struct kw_node *root)
{
    struct kw_arena *a = r->scratch;
    const struct kw_node *choices = kw_node_get(root, "choices");
    struct kw_node *ch = choices != NULL && choices->type == KW_NODE_SEQ && choices->n > 0
                             ? choices->items[0]
                             : NULL;
    struct kw_node *delta = (struct kw_node *)kw_node_get(ch, "delta");
    const struct kw_node *usage = kw_node_get(root, "usage");
    if (delta != NULL && delta->type == KW_NODE_MAP) {
        const struct kw_node *content = kw_node_get(delta, "content");
        const struct kw_node *fin = kw_node_get(ch, "finish_reason");
        bool has_content = content != NULL && content->type == KW_NODE_STRING && content->len > 0;
        bool finishing = fin != NULL && fin->type == KW_NODE_STRING;
        if (!has_content && !finishing && kw_node_get(delta, "tool_calls") == NULL &&
            (usage == NULL || usage->type != KW_NODE_MAP))
            return false; /* the new stream's role chunk: the client had one */
        if (has_content && c->skip_ws > 0) {
            /* the prefill lost its trailing whitespace (Anthropic refuses it): the model
             * starts with it again, the client has it already */
            size_t k = 0;
            while (k < content->len && k < c->skip_ws && isspace((unsigned char)content->str[k]))
                k++;
            c->skip_ws = 0;
            if (k == content->len)
                return false;
            kw_node_map_set(a, delta, "content",
                            kw_node_string(a, content->str + k, content->len - k));
        }
    }
    if (c->ident) {
        kw_node_map_set(a, root, "id", kw_node_cstring(a, c->id));
        kw_node_map_set(a, root, "model", kw_node_cstring(a, c->model));
        kw_node_map_set(a, root, "created", kw_node_int(a, c->created));
    }
    if (usage != NULL && usage->type == KW_NODE_MAP && !c->usage_done) {
        struct kw_node *u = (struct kw_node *)usage;
        const struct kw_node *ct = kw_node_get(u, "completion_tokens");
        const struct kw_node *tt = kw_node_get(u, "total_tokens");
        if (ct != NULL && ct->type == KW_NODE_INT)
            kw_node_map_set(a, u, "completion_tokens", kw_node_int(a, ct->i + c->tokens));
        if (tt != NULL && tt->type == KW_NODE_INT)
            kw_node_map_set(a, u, "total_tokens", kw_node_int(a, tt->i + c->tokens));
    }
    return true;
}

static int on_event(void *ud, const char *raw, size_t raw_len, const char *event, const char *data,
                    size_t data_len, bool has_data)
{
    (void)event;
    struct track *t = ud;
    struct dp_request *r = t->r;
    struct dp_cont *c = t->c;
    bool done = has_data && data_len == 6 && memcmp(data, "[DONE]", 6) == 0;
    struct kw_node *root = NULL;
    char err[64];
    if (has_data && !done) {
        kw_arena_reset(r->scratch);
        if (kw_json_parse(r->scratch, data, data_len, &root, err, sizeof(err)) != KW_OK ||
            root->type != KW_NODE_MAP)
            root = NULL;
    }
    if (root != NULL && kw_node_get(root, "error") != NULL) {
        t->error = true; /* an error event mid-stream: this attempt is over */
        return KW_ERROR;
    }
    if (root != NULL) {
        const struct kw_node *choices = kw_node_get(root, "choices");
        const struct kw_node *ch = choices != NULL && choices->type == KW_NODE_SEQ && choices->n > 0
                                       ? choices->items[0]
                                       : NULL;
        const struct kw_node *delta = kw_node_get(ch, "delta");
        const struct kw_node *content = kw_node_get(delta, "content");
        if (kw_node_get(delta, "tool_calls") != NULL)
            c->tools = true;
        if (!c->continuing && !c->ident && ch != NULL) {
            const char *id = str_of(kw_node_get(root, "id")),
                       *model = str_of(kw_node_get(root, "model"));
            const struct kw_node *created = kw_node_get(root, "created");
            snprintf(c->id, sizeof(c->id), "%s", id != NULL ? id : "");
            snprintf(c->model, sizeof(c->model), "%s", model != NULL ? model : "");
            c->created = created != NULL && created->type == KW_NODE_INT ? created->i : 0;
            c->ident = true;
        }
        if (t->out != NULL && !splice(r, c, root))
            return KW_OK; /* dropped */
        /* what the client gets (after the splice's trimming) */
        content = kw_node_get(kw_node_get(ch, "delta"), "content");
        if (content != NULL && content->type == KW_NODE_STRING && content->len > 0) {
            c->chunks++;
            if (kw_buf_append(&c->text, content->str, content->len) != KW_OK)
                c->overflow = true;
        }
    }
    if (t->out == NULL)
        return KW_OK;
    if (root == NULL) /* [DONE], comments, what is not JSON: as it came */
        return kw_buf_append(t->out, raw, raw_len);
    int rc = kw_buf_puts(t->out, "data: ");
    rc |= kw_json_write(root, t->out);
    return rc | kw_buf_puts(t->out, "\n\n");
}

int dp_cont_track(struct dp_request *r, struct kw_buf *sink, size_t from)
{
    struct dp_cont *c = state(r);
    if (c == NULL)
        return KW_ERROR;
    if (sink->len <= from)
        return KW_OK;
    struct dp_sse p;
    dp_sse_init(&p, DP_MAX_SSE_EVENT);
    struct kw_buf out;
    kw_buf_init(&out, DP_MAX_STREAM_BUFFER);
    struct track t = {r, c, c->continuing ? &out : NULL, false};
    int rc = dp_sse_feed(&p, sink->data + from, sink->len - from, on_event, &t);
    if (rc == KW_OK)
        rc = dp_sse_finish(&p, on_event, &t);
    dp_sse_cleanup(&p);
    if (t.error || (rc == KW_OK && t.out != NULL)) {
        sink->len = from; /* cut: dropped, or replaced by the rewrite */
        if (sink->data != NULL)
            sink->data[from] = '\0';
    }
    if (!t.error && rc == KW_OK && t.out != NULL)
        rc = kw_buf_append(sink, out.data != NULL ? out.data : "", out.len);
    kw_buf_cleanup(&out);
    if (t.error)
        return KW_DECLINED;
    return rc == KW_OK ? KW_OK : KW_ERROR;
}

/* ---- the next attempt ------------------------------------------------------------------- */

/* The client's request with the text so far as the final assistant message. */
static struct kw_node *with_prefill(struct dp_request *r, struct dp_cont *c)
{
    struct kw_arena *a = r->arena;
    const struct kw_node *orig = c->orig;
    const struct kw_node *msgs = kw_node_get(orig, "messages");
    if (msgs == NULL || msgs->type != KW_NODE_SEQ)
        return NULL;
    struct kw_node *j = kw_node_map_copy(a, orig);
    struct kw_node *seq = kw_node_new(a, KW_NODE_SEQ);
    if (j == NULL || seq == NULL)
        return NULL;
    size_t n = msgs->n;
    const struct kw_node *last = n > 0 ? msgs->items[n - 1] : NULL;
    const char *role = str_of(kw_node_get(last, "role"));
    const struct kw_node *lc = kw_node_get(last, "content");
    /* a client's own prefill (a final assistant message) is extended, not repeated */
    bool extend = role != NULL && strcmp(role, "assistant") == 0 && lc != NULL &&
                  lc->type == KW_NODE_STRING && kw_node_get(last, "tool_calls") == NULL;
    for (size_t i = 0; i < n - (extend ? 1 : 0); i++)
        if (kw_node_seq_push(a, seq, msgs->items[i]) != KW_OK)
            return NULL;
    struct kw_buf text;
    kw_buf_init(&text, DP_CONT_MAX_TEXT * 2);
    if (extend)
        kw_buf_append(&text, lc->str, lc->len);
    kw_buf_append(&text, c->text.data != NULL ? c->text.data : "", c->text.len);
    struct kw_node *m = kw_node_new(a, KW_NODE_MAP);
    bool ok =
        m != NULL && kw_node_map_put(a, m, "role", kw_node_cstring(a, "assistant")) == KW_OK &&
        kw_node_map_put(a, m, "content",
                        kw_node_string(a, text.data != NULL ? text.data : "", text.len)) == KW_OK &&
        kw_node_seq_push(a, seq, m) == KW_OK && kw_node_map_set(a, j, "messages", seq) == KW_OK;
    kw_buf_cleanup(&text);
    return ok ? j : NULL;
}

bool dp_cont_prepare(struct dp_request *r)
{
    struct dp_cont *c = r->cont;
    const struct kw_route *rt = r->route;
    if (!dp_cont_enabled(r) || c == NULL || c->tools || c->overflow || c->text.len == 0 ||
        r->client_gone || r->tried == NULL)
        return false;
    const struct kw_node *n = kw_node_get(c->orig != NULL ? c->orig : r->json, "n");
    if (n != NULL && n->type == KW_NODE_INT && n->i > 1)
        return false;
    if (r->attempts >= dp_route_attempts(rt))
        return false;
    bool any = false;
    for (size_t i = 0; i < rt->nrefs; i++) {
        if (r->tried[i] || rt->refs[i].weight == 0 || rt->refs[i].backend == NULL)
            continue;
        if (dp_cont_capable(rt->refs[i].backend))
            any = true;
        else
            r->tried[i] = true; /* cannot continue: left out of this request's next picks */
    }
    if (!any)
        return false;
    if (c->orig == NULL)
        c->orig = r->json;
    struct kw_node *j = with_prefill(r, c);
    if (j == NULL)
        return false;
    r->json = j;
    c->tokens += c->chunks;
    c->chunks = 0;
    c->continuing = true;
    c->count++;
    return true;
}

int dp_cont_bind(struct dp_request *r)
{
    struct dp_cont *c = r->cont;
    if (c == NULL || !c->continuing)
        return KW_OK;
    struct kw_arena *a = r->arena;
    if (r->backend->provider == KW_PROVIDER_VLLM) {
        /* vLLM's chat template continues the final assistant message instead of opening a
         * new turn */
        if (kw_node_map_set(a, r->up_json, "continue_final_message", kw_node_bool(a, true)) !=
                KW_OK ||
            kw_node_map_set(a, r->up_json, "add_generation_prompt", kw_node_bool(a, false)) !=
                KW_OK)
            return KW_ERROR;
        c->skip_ws = 0;
        return KW_OK;
    }
    /* Anthropic (and Claude on Bedrock) refuse a final assistant message that ends in
     * whitespace: trim it, and drop it from the start of the continuation */
    const struct kw_node *msgs = kw_node_get(r->up_json, "messages");
    struct kw_node *last =
        msgs != NULL && msgs->type == KW_NODE_SEQ && msgs->n > 0 ? msgs->items[msgs->n - 1] : NULL;
    const struct kw_node *content = kw_node_get(last, "content");
    if (content == NULL || content->type != KW_NODE_STRING)
        return KW_OK;
    size_t len = content->len;
    while (len > 0 && isspace((unsigned char)content->str[len - 1]))
        len--;
    c->skip_ws = content->len - len;
    if (c->skip_ws == 0)
        return KW_OK;
    struct kw_node *m = kw_node_map_copy(a, last);
    if (m == NULL ||
        kw_node_map_set(a, m, "content", kw_node_string(a, content->str, len)) != KW_OK)
        return KW_ERROR;
    ((struct kw_node *)msgs)->items[msgs->n - 1] = m; /* with_prefill's list: ours */
    return KW_OK;
}

void dp_cont_finish(struct dp_request *r)
{
    struct dp_cont *c = r->cont;
    if (c == NULL || c->count == 0 || c->usage_done)
        return;
    /* the running attempt's own usage came with it: only the broken ones are added */
    if (r->usage.have)
        r->usage.completion += c->tokens;
    c->usage_done = true;
}

void dp_cont_cleanup(struct dp_request *r)
{
    if (r->cont != NULL)
        kw_buf_cleanup(&r->cont->text);
    r->cont = NULL;
}
