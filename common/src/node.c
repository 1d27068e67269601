#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/node.h"

const char *kw_node_type_name(enum kw_node_type t)
{
    switch (t) {
    case KW_NODE_NULL:
        return "null";
    case KW_NODE_BOOL:
        return "boolean";
    case KW_NODE_INT:
        return "integer";
    case KW_NODE_FLOAT:
        return "number";
    case KW_NODE_STRING:
        return "string";
    case KW_NODE_MAP:
        return "map";
    case KW_NODE_SEQ:
        return "list";
    }
    return "value";
}

struct kw_node *kw_node_get(const struct kw_node *m, const char *key)
{
    if (m == NULL || m->type != KW_NODE_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (size_t i = 0; i < m->n; i++) {
        const struct kw_node *k = m->pairs[i].key;
        if (k->len == klen && memcmp(k->str, key, klen) == 0)
            return m->pairs[i].val;
    }
    return NULL;
}

struct kw_node *kw_node_new(struct kw_arena *a, enum kw_node_type t)
{
    struct kw_node *n = kw_arena_alloc(a, sizeof(*n));
    if (n != NULL) {
        n->type = t;
        n->str = "";
    }
    return n;
}

struct kw_node *kw_node_string(struct kw_arena *a, const char *s, size_t len)
{
    struct kw_node *n = kw_node_new(a, KW_NODE_STRING);
    if (n == NULL)
        return NULL;
    char *p = kw_arena_strndup(a, s, len);
    if (p == NULL)
        return NULL;
    n->str = p;
    n->len = len;
    return n;
}

struct kw_node *kw_node_cstring(struct kw_arena *a, const char *s)
{
    return kw_node_string(a, s, strlen(s));
}

struct kw_node *kw_node_int(struct kw_arena *a, int64_t v)
{
    struct kw_node *n = kw_node_new(a, KW_NODE_INT);
    if (n == NULL)
        return NULL;
    char tmp[32];
    int len = snprintf(tmp, sizeof(tmp), "%" PRId64, v);
    n->str = kw_arena_strndup(a, tmp, (size_t)len);
    if (n->str == NULL)
        return NULL;
    n->len = (size_t)len;
    n->i = v;
    return n;
}

struct kw_node *kw_node_bool(struct kw_arena *a, bool v)
{
    struct kw_node *n = kw_node_new(a, KW_NODE_BOOL);
    if (n == NULL)
        return NULL;
    n->b = v;
    n->str = v ? "true" : "false";
    n->len = strlen(n->str);
    return n;
}

/* Grow an arena array; the old block is left to the arena. */
static void *grow(struct kw_arena *a, void *old, size_t n, size_t *cap, size_t elem)
{
    if (n < *cap)
        return old;
    if (n >= KW_MAX_CONTAINER_ITEMS)
        return NULL;
    size_t ncap = *cap != 0 ? *cap * 2 : 4;
    void *p = kw_arena_alloc(a, ncap * elem);
    if (p == NULL)
        return NULL;
    if (n > 0)
        memcpy(p, old, n * elem);
    *cap = ncap;
    return p;
}

int kw_node_map_put(struct kw_arena *a, struct kw_node *m, const char *key, struct kw_node *v)
{
    if (v == NULL)
        return KW_ERROR;
    return kw_node_map_add(a, m, kw_node_cstring(a, key), v);
}

int kw_node_map_set(struct kw_arena *a, struct kw_node *m, const char *key, struct kw_node *v)
{
    if (v == NULL)
        return KW_ERROR;
    size_t klen = strlen(key);
    for (size_t i = 0; i < m->n; i++)
        if (m->pairs[i].key->len == klen && memcmp(m->pairs[i].key->str, key, klen) == 0) {
            m->pairs[i].val = v;
            return KW_OK;
        }
    return kw_node_map_put(a, m, key, v);
}

struct kw_node *kw_node_map_copy(struct kw_arena *a, const struct kw_node *m)
{
    struct kw_node *c = kw_node_new(a, KW_NODE_MAP);
    if (c == NULL)
        return NULL;
    for (size_t i = 0; i < m->n; i++)
        if (kw_node_map_add(a, c, m->pairs[i].key, m->pairs[i].val) != KW_OK)
            return NULL;
    return c;
}

int kw_node_map_add(struct kw_arena *a, struct kw_node *m, struct kw_node *k, struct kw_node *v)
{
    if (k == NULL || v == NULL)
        return KW_ERROR;
    struct kw_node_pair *p = grow(a, m->pairs, m->n, &m->cap, sizeof(*p));
    if (p == NULL)
        return KW_ERROR;
    m->pairs = p;
    m->pairs[m->n].key = k;
    m->pairs[m->n].val = v;
    m->n++;
    return KW_OK;
}

int kw_node_seq_push(struct kw_arena *a, struct kw_node *s, struct kw_node *v)
{
    if (v == NULL)
        return KW_ERROR;
    struct kw_node **p = grow(a, s->items, s->n, &s->cap, sizeof(*p));
    if (p == NULL)
        return KW_ERROR;
    s->items = p;
    s->items[s->n++] = v;
    return KW_OK;
}

struct kw_node *kw_node_clone(struct kw_arena *a, const struct kw_node *n)
{
    struct kw_node *c = kw_node_new(a, n->type);
    if (c == NULL)
        return NULL;
    c->line = n->line;
    c->col = n->col;
    c->i = n->i;
    c->b = n->b;
    c->len = n->len;
    c->str = kw_arena_strndup(a, n->str, n->len);
    if (c->str == NULL)
        return NULL;
    if (n->type == KW_NODE_MAP && n->n > 0) {
        c->pairs = kw_arena_alloc(a, n->n * sizeof(*c->pairs));
        if (c->pairs == NULL)
            return NULL;
        for (size_t i = 0; i < n->n; i++) {
            c->pairs[i].key = kw_node_clone(a, n->pairs[i].key);
            c->pairs[i].val = kw_node_clone(a, n->pairs[i].val);
            if (c->pairs[i].key == NULL || c->pairs[i].val == NULL)
                return NULL;
        }
        c->n = c->cap = n->n;
    } else if (n->type == KW_NODE_SEQ && n->n > 0) {
        c->items = kw_arena_alloc(a, n->n * sizeof(*c->items));
        if (c->items == NULL)
            return NULL;
        for (size_t i = 0; i < n->n; i++) {
            c->items[i] = kw_node_clone(a, n->items[i]);
            if (c->items[i] == NULL)
                return NULL;
        }
        c->n = c->cap = n->n;
    }
    return c;
}
