/* YAML to kw_node with libyaml's event parser.
 *
 * A stack of open containers; each finished node is attached to the container on top:
 * a sequence appends it, a map takes it as a key when none is pending, else as the
 * value of the pending key. Positions come from each event's start mark. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/yaml.h"
#include "keyset.h"
#include "scalar.h"

struct frame {
    struct kw_node *node;
    struct kw_node *key;   /* maps: the key waiting for its value */
    struct kw_keyset keys; /* maps: the duplicate check (linear in the keys) */
};

struct ctx {
    struct kw_arena *a;
    const char *file;
    struct kw_diag *diag;
    struct frame stack[KW_MAX_NESTING + 1];
    size_t depth;
    struct kw_node *root;
    bool failed;
};

static void error_at(struct ctx *c, const yaml_mark_t *m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void error_at(struct ctx *c, const yaml_mark_t *m, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    kw_diag_add(c->diag, c->file, (unsigned)m->line + 1, (unsigned)m->column + 1, NULL, NULL, "%s",
                msg);
    c->failed = true;
}

static void oom(struct ctx *c, const yaml_mark_t *m)
{
    error_at(c, m, "%s", "out of memory (document too large)");
}

/* Attach a finished node to the container on top, or make it the root. */
static void attach(struct ctx *c, struct kw_node *n, const yaml_mark_t *m)
{
    if (c->depth == 0) {
        c->root = n;
        return;
    }
    struct frame *f = &c->stack[c->depth - 1];
    if (f->node->type == KW_NODE_SEQ) {
        if (kw_node_seq_push(c->a, f->node, n) != KW_OK)
            oom(c, m);
        return;
    }
    if (f->key == NULL) {
        if (n->type == KW_NODE_MAP || n->type == KW_NODE_SEQ) {
            yaml_mark_t at = {.line = n->line - 1, .column = n->col - 1};
            error_at(c, &at, "%s", "a map key must be a scalar");
            return;
        }
        const struct kw_node *dup;
        if (kw_keyset_find(&f->keys, f->node, n->str, n->len, &dup) != KW_OK) {
            oom(c, m);
            return;
        }
        if (dup != NULL) {
            char prev[32];
            snprintf(prev, sizeof(prev), "%u:%u", dup->line, dup->col);
            char msg[300];
            snprintf(msg, sizeof(msg), "duplicate key \"%.200s\" (first at line %s)", n->str, prev);
            error_at(c, m, "%s", msg);
        } else if (kw_keyset_add(&f->keys, n) != KW_OK) {
            oom(c, m);
            return;
        }
        /* Keys are strings whatever they look like ("1:" is the key "1"). */
        n->type = KW_NODE_STRING;
        f->key = n;
        return;
    }
    if (kw_node_map_add(c->a, f->node, f->key, n) != KW_OK)
        oom(c, m);
    f->key = NULL;
}

static struct kw_node *node_at(struct ctx *c, enum kw_node_type t, const yaml_mark_t *m)
{
    struct kw_node *n = kw_node_new(c->a, t);
    if (n == NULL) {
        oom(c, m);
        return NULL;
    }
    n->line = (unsigned)m->line + 1;
    n->col = (unsigned)m->column + 1;
    return n;
}

static bool tag_ok(struct ctx *c, const yaml_char_t *tag, const yaml_mark_t *m)
{
    if (tag == NULL || strcmp((const char *)tag, "!") == 0 ||
        strncmp((const char *)tag, "tag:yaml.org,2002:", 18) == 0)
        return true;
    error_at(c, m, "unsupported YAML tag \"%.200s\"", (const char *)tag);
    return false;
}

static void on_scalar(struct ctx *c, const yaml_event_t *ev)
{
    const yaml_mark_t *m = &ev->start_mark;
    const char *val = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    if (!tag_ok(c, ev->data.scalar.tag, m))
        return;
    struct kw_node *n = node_at(c, KW_NODE_STRING, m);
    if (n == NULL)
        return;
    bool as_string = !ev->data.scalar.plain_implicit ||
                     (tag != NULL && strcmp(tag, "tag:yaml.org,2002:str") == 0);
    if (as_string) {
        n->str = kw_arena_strndup(c->a, val, len);
        n->len = len;
        if (n->str == NULL) {
            oom(c, m);
            return;
        }
    } else if (kw_scalar_resolve_plain(c->a, n, val, len) != KW_OK) {
        oom(c, m);
        return;
    }
    attach(c, n, m);
}

static void on_start(struct ctx *c, const yaml_event_t *ev, enum kw_node_type t)
{
    const yaml_mark_t *m = &ev->start_mark;
    const yaml_char_t *tag =
        t == KW_NODE_MAP ? ev->data.mapping_start.tag : ev->data.sequence_start.tag;
    if (!tag_ok(c, tag, m))
        return;
    if (c->depth >= KW_MAX_NESTING) {
        error_at(c, m, "nesting deeper than %u levels", KW_MAX_NESTING);
        return;
    }
    struct kw_node *n = node_at(c, t, m);
    if (n == NULL)
        return;
    c->stack[c->depth] = (struct frame){.node = n};
    c->depth++;
}

static void on_end(struct ctx *c, const yaml_event_t *ev)
{
    struct frame *f = &c->stack[--c->depth];
    kw_keyset_cleanup(&f->keys);
    attach(c, f->node, &ev->start_mark);
}

static void close_frames(struct ctx *c)
{
    while (c->depth > 0)
        kw_keyset_cleanup(&c->stack[--c->depth].keys);
}

int kw_yaml_parse(struct kw_arena *a, const char *file, const char *buf, size_t len,
                  struct kw_node ***docs, size_t *ndocs, struct kw_diag *diag)
{
    *docs = NULL;
    *ndocs = 0;
    if (len > KW_MAX_CONFIG_BYTES) {
        kw_diag_add(diag, file, 0, 0, NULL, NULL, "file is larger than %u bytes",
                    KW_MAX_CONFIG_BYTES);
        return KW_ERROR;
    }
    struct ctx c = {.a = a, .file = file, .diag = diag};
    struct kw_node *list = kw_node_new(a, KW_NODE_SEQ);
    yaml_parser_t p;
    if (list == NULL || !yaml_parser_initialize(&p)) {
        kw_diag_add(diag, file, 0, 0, NULL, NULL, "out of memory");
        return KW_ERROR;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)buf, len);

    bool done = false;
    while (!done && !c.failed) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&p, &ev)) {
            const yaml_mark_t *m = &p.problem_mark;
            char msg[512];
            snprintf(msg, sizeof(msg), "YAML syntax error: %s%s%s",
                     p.problem != NULL ? p.problem : "unknown problem",
                     p.context != NULL ? " " : "", p.context != NULL ? p.context : "");
            error_at(&c, m, "%s", msg);
            break;
        }
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = true;
            break;
        case YAML_DOCUMENT_START_EVENT:
            c.root = NULL;
            close_frames(&c);
            break;
        case YAML_DOCUMENT_END_EVENT:
            if (c.root != NULL && c.root->type != KW_NODE_NULL) {
                if (list->n >= KW_MAX_DOCUMENTS)
                    error_at(&c, &ev.start_mark, "more than %u documents", KW_MAX_DOCUMENTS);
                else if (kw_node_seq_push(a, list, c.root) != KW_OK)
                    oom(&c, &ev.start_mark);
            }
            break;
        case YAML_ALIAS_EVENT:
            error_at(&c, &ev.start_mark, "%s",
                     "YAML aliases (*name) are not supported; repeat the value");
            break;
        case YAML_SCALAR_EVENT:
            if (ev.data.scalar.anchor != NULL)
                error_at(&c, &ev.start_mark, "%s", "YAML anchors (&name) are not supported");
            else
                on_scalar(&c, &ev);
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT: {
            const yaml_char_t *anchor = ev.type == YAML_SEQUENCE_START_EVENT
                                            ? ev.data.sequence_start.anchor
                                            : ev.data.mapping_start.anchor;
            if (anchor != NULL)
                error_at(&c, &ev.start_mark, "%s", "YAML anchors (&name) are not supported");
            else
                on_start(&c, &ev, ev.type == YAML_MAPPING_START_EVENT ? KW_NODE_MAP : KW_NODE_SEQ);
            break;
        }
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            on_end(&c, &ev);
            break;
        default:
            break;
        }
        yaml_event_delete(&ev);
    }
    close_frames(&c);
    yaml_parser_delete(&p);
    if (c.failed)
        return KW_ERROR;
    *docs = list->items;
    *ndocs = list->n;
    return KW_OK;
}
