/* The discovery poll, written and read (knoway/discovery.h). */
#include <stdio.h>
#include <string.h>

#include "knoway/discovery.h"
#include "knoway/json.h"
#include "knoway/kw.h"

int kw_poll_write(struct kw_buf *b, const char *id, const char *cluster, const char *version,
                  const char *nonce, const char *error)
{
    kw_buf_reset(b);
    kw_buf_puts(b, "{\"node\":{\"id\":");
    kw_json_write_string(b, id, strlen(id));
    kw_buf_puts(b, ",\"cluster\":");
    kw_json_write_string(b, cluster, strlen(cluster));
    kw_buf_puts(b, "},\"version\":");
    kw_json_write_string(b, version, strlen(version));
    kw_buf_puts(b, ",\"nonce\":");
    kw_json_write_string(b, nonce, strlen(nonce));
    kw_buf_puts(b, ",\"error\":");
    if (error == NULL || error[0] == '\0')
        return kw_buf_puts(b, "null}");
    kw_buf_puts(b, "{\"message\":");
    kw_json_write_string(b, error, strlen(error));
    return kw_buf_puts(b, "}}");
}

static const char *str_of(const struct kw_node *m, const char *k)
{
    const struct kw_node *v = kw_node_get(m, k);
    return v != NULL && v->type == KW_NODE_STRING ? v->str : NULL;
}

const char *kw_poll_parse(struct kw_arena *a, const char *body, size_t len, struct kw_poll *p)
{
    static __thread char why[300];
    struct kw_node *root = NULL;
    char err[256];
    memset(p, 0, sizeof(*p));
    if (kw_json_parse(a, body, len, &root, err, sizeof(err)) != KW_OK) {
        snprintf(why, sizeof(why), "the body is not JSON: %s", err);
        return why;
    }
    const struct kw_node *node = kw_node_get(root, "node");
    p->id = str_of(node, "id");
    p->version = str_of(root, "version");
    p->nonce = str_of(root, "nonce");
    p->cluster = str_of(node, "cluster");
    p->error = kw_node_get(root, "error");
    if (p->id == NULL || p->id[0] == '\0' || strlen(p->id) > KW_DISCOVERY_NODE_ID_MAX)
        return "node.id: a string of 1..253 bytes is required";
    if (p->error != NULL && p->error->type != KW_NODE_NULL && p->error->type != KW_NODE_MAP)
        return "error: must be null or {\"message\": ...}";
    if (p->version == NULL)
        p->version = "";
    if (p->nonce == NULL || p->nonce[0] == '\0')
        p->nonce = p->version;
    p->message = p->error != NULL ? str_of(p->error, "message") : NULL;
    return NULL;
}
