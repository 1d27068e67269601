/* JSON with yajl: a callback parser building kw_node trees (same stack scheme as
 * yaml.c), and a canonical writer (sorted keys, no white space). */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yajl/yajl_gen.h>
#include <yajl/yajl_parse.h>

#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "keyset.h"
#include "scalar.h"

struct frame {
    struct kw_node *node;
    struct kw_node *key;
    struct kw_keyset keys; /* maps: the duplicate check (linear in the keys) */
};

#define MAX_DEPTH (KW_MAX_NESTING + 4)

const char kw_json_cut_marker[] = "(nesting too deep)";

struct ctx {
    struct kw_arena *a;
    struct frame stack[MAX_DEPTH + 1];
    size_t depth;
    size_t max_depth;
    bool cut;
    size_t skip; /* > 0: inside a container past max_depth, being skipped */
    struct kw_node *root;
    char *err;
    size_t errlen;
    bool nomem; /* an allocation failed: KW_NOMEM, not a bad document */
};

static int fail(struct ctx *c, const char *msg)
{
    if (c->err[0] == '\0')
        snprintf(c->err, c->errlen, "%s", msg);
    return 0; /* stop yajl */
}

static int fail_nomem(struct ctx *c)
{
    c->nomem = true;
    return fail(c, "out of memory (document too large)");
}

static int attach(struct ctx *c, struct kw_node *n)
{
    if (n == NULL)
        return fail_nomem(c);
    if (c->depth == 0) {
        c->root = n;
        return 1;
    }
    struct frame *f = &c->stack[c->depth - 1];
    if (f->node->type == KW_NODE_SEQ)
        return kw_node_seq_push(c->a, f->node, n) == KW_OK ? 1 : fail(c, "list too long");
    if (kw_node_map_add(c->a, f->node, f->key, n) != KW_OK)
        return fail(c, "object too large");
    f->key = NULL;
    return 1;
}

static int on_null(void *ud)
{
    struct ctx *c = ud;
    if (c->skip > 0)
        return 1;
    struct kw_node *n = kw_node_new(c->a, KW_NODE_NULL);
    if (n != NULL) {
        n->str = "null";
        n->len = 4;
    }
    return attach(c, n);
}

static int on_boolean(void *ud, int v)
{
    struct ctx *c = ud;
    if (c->skip > 0)
        return 1;
    return attach(c, kw_node_bool(c->a, v != 0));
}

static int on_number(void *ud, const char *s, size_t len)
{
    struct ctx *c = ud;
    if (c->skip > 0)
        return 1;
    struct kw_node *n = kw_node_string(c->a, s, len);
    if (n != NULL)
        kw_scalar_number(n);
    return attach(c, n);
}

static int on_string(void *ud, const unsigned char *s, size_t len)
{
    struct ctx *c = ud;
    if (c->skip > 0)
        return 1;
    return attach(c, kw_node_string(c->a, (const char *)s, len));
}

static int open_container(struct ctx *c, enum kw_node_type t)
{
    if (c->skip > 0) {
        c->skip++;
        return 1;
    }
    if (c->depth >= c->max_depth && c->cut) {
        struct kw_node *m = kw_node_new(c->a, KW_NODE_NULL);
        if (m == NULL)
            return fail_nomem(c);
        m->str = kw_json_cut_marker;
        m->len = sizeof(kw_json_cut_marker) - 1;
        c->skip = 1;
        return attach(c, m);
    }
    if (c->depth >= c->max_depth) {
        char msg[64];
        snprintf(msg, sizeof(msg), "nesting deeper than %zu levels", c->max_depth);
        return fail(c, msg);
    }
    struct kw_node *n = kw_node_new(c->a, t);
    if (n == NULL)
        return fail_nomem(c);
    c->stack[c->depth] = (struct frame){.node = n};
    c->depth++;
    return 1;
}

static int on_start_map(void *ud)
{
    return open_container(ud, KW_NODE_MAP);
}

static int on_start_array(void *ud)
{
    return open_container(ud, KW_NODE_SEQ);
}

static int on_end(void *ud)
{
    struct ctx *c = ud;
    if (c->skip > 0) {
        c->skip--;
        return 1;
    }
    struct frame *f = &c->stack[--c->depth];
    kw_keyset_cleanup(&f->keys);
    return attach(c, f->node);
}

static int on_map_key(void *ud, const unsigned char *s, size_t len)
{
    struct ctx *c = ud;
    if (c->skip > 0)
        return 1;
    struct frame *f = &c->stack[c->depth - 1];
    const struct kw_node *dup;
    if (kw_keyset_find(&f->keys, f->node, (const char *)s, len, &dup) != KW_OK)
        return fail_nomem(c);
    if (dup != NULL) {
        char msg[300];
        snprintf(msg, sizeof(msg), "duplicate key \"%.*s\"", (int)(len > 200 ? 200 : len),
                 (const char *)s);
        return fail(c, msg);
    }
    f->key = kw_node_string(c->a, (const char *)s, len);
    if (f->key == NULL || kw_keyset_add(&f->keys, f->key) != KW_OK)
        return fail_nomem(c);
    return 1;
}

static const yajl_callbacks callbacks = {
    .yajl_null = on_null,
    .yajl_boolean = on_boolean,
    .yajl_number = on_number,
    .yajl_string = on_string,
    .yajl_start_map = on_start_map,
    .yajl_map_key = on_map_key,
    .yajl_end_map = on_end,
    .yajl_start_array = on_start_array,
    .yajl_end_array = on_end,
};

int kw_json_parse(struct kw_arena *a, const char *buf, size_t len, struct kw_node **out, char *err,
                  size_t errlen)
{
    return kw_json_parse_ex(a, buf, len, KW_MAX_NESTING, false, out, err, errlen);
}

static bool find_cut(const struct kw_node *n, struct kw_buf *path, unsigned depth)
{
    if (n->type == KW_NODE_NULL && n->str == kw_json_cut_marker)
        return true;
    if (depth > MAX_DEPTH)
        return false;
    size_t mark = path->len;
    for (size_t i = 0; n->type == KW_NODE_SEQ && i < n->n; i++) {
        kw_buf_printf(path, "[%zu]", i);
        if (find_cut(n->items[i], path, depth + 1))
            return true;
        path->len = mark;
    }
    for (size_t i = 0; n->type == KW_NODE_MAP && i < n->n; i++) {
        kw_buf_printf(path, "%s%.*s", mark > 0 ? "." : "", (int)n->pairs[i].key->len,
                      n->pairs[i].key->str);
        if (find_cut(n->pairs[i].val, path, depth + 1))
            return true;
        path->len = mark;
    }
    if (path->data != NULL)
        path->data[mark] = '\0';
    return false;
}

/* Whether a cut marker is anywhere below n: a walk without paths (every object a
 * controller reads passes here; a path is built only for the rare one that was cut). */
static bool has_cut(const struct kw_node *n, unsigned depth)
{
    if (n->type == KW_NODE_NULL && n->str == kw_json_cut_marker)
        return true;
    if (depth > MAX_DEPTH)
        return false;
    for (size_t i = 0; n->type == KW_NODE_SEQ && i < n->n; i++)
        if (has_cut(n->items[i], depth + 1))
            return true;
    for (size_t i = 0; n->type == KW_NODE_MAP && i < n->n; i++)
        if (has_cut(n->pairs[i].val, depth + 1))
            return true;
    return false;
}

bool kw_json_find_cut(const struct kw_node *n, char *path, size_t pathlen)
{
    if (!has_cut(n, 0)) {
        if (pathlen > 0)
            path[0] = '\0';
        return false;
    }
    struct kw_buf b;
    kw_buf_init(&b, 4096);
    bool found = find_cut(n, &b, 0);
    snprintf(path, pathlen, "%.*s", (int)b.len, b.data != NULL ? b.data : "");
    kw_buf_cleanup(&b);
    return found;
}

int kw_json_parse_ex(struct kw_arena *a, const char *buf, size_t len, unsigned max_depth, bool cut,
                     struct kw_node **out, char *err, size_t errlen)
{
    struct ctx c = {.a = a,
                    .err = err,
                    .errlen = errlen,
                    .max_depth = max_depth < MAX_DEPTH ? max_depth : MAX_DEPTH,
                    .cut = cut};
    err[0] = '\0';
    *out = NULL;
    if (len > KW_MAX_SNAPSHOT_BYTES) {
        snprintf(err, errlen, "document larger than %u bytes", KW_MAX_SNAPSHOT_BYTES);
        return KW_ERROR;
    }
    size_t ws = 0;
    while (ws < len && (buf[ws] == ' ' || buf[ws] == '\t' || buf[ws] == '\r' || buf[ws] == '\n'))
        ws++;
    if (ws == len) {
        snprintf(err, errlen, "empty JSON document");
        return KW_ERROR;
    }
    yajl_handle h = yajl_alloc(&callbacks, NULL, &c);
    if (h == NULL) {
        snprintf(err, errlen, "out of memory");
        return KW_NOMEM;
    }
    yajl_status st = yajl_parse(h, (const unsigned char *)buf, len);
    if (st == yajl_status_ok)
        st = yajl_complete_parse(h);
    for (size_t i = 0; i < c.depth; i++) /* frames left open by an error */
        kw_keyset_cleanup(&c.stack[i].keys);
    if (st != yajl_status_ok) {
        if (err[0] == '\0') {
            unsigned char *msg = yajl_get_error(h, 0, (const unsigned char *)buf, len);
            size_t off = yajl_get_bytes_consumed(h);
            snprintf(err, errlen, "invalid JSON at byte %zu: %s", off,
                     msg != NULL ? (const char *)msg : "parse error");
            /* yajl's message ends with a newline */
            size_t el = strlen(err);
            while (el > 0 && (err[el - 1] == '\n' || err[el - 1] == ' '))
                err[--el] = '\0';
            yajl_free_error(h, msg);
        }
        yajl_free(h);
        return c.nomem ? KW_NOMEM : KW_ERROR;
    }
    yajl_free(h);
    if (c.root == NULL) {
        snprintf(err, errlen, "empty JSON document");
        return KW_ERROR;
    }
    *out = c.root;
    return KW_OK;
}

static int cmp_pairs(const void *x, const void *y)
{
    const struct kw_node *a = (*(const struct kw_node_pair *const *)x)->key;
    const struct kw_node *b = (*(const struct kw_node_pair *const *)y)->key;
    size_t n = a->len < b->len ? a->len : b->len;
    int r = memcmp(a->str, b->str, n);
    if (r != 0)
        return r;
    return a->len < b->len ? -1 : a->len > b->len;
}

static int write_node(yajl_gen g, const struct kw_node *n, unsigned depth, bool sort)
{
    yajl_gen_status st = yajl_gen_status_ok;
    if (depth > KW_MAX_NESTING)
        return KW_ERROR;
    switch (n->type) {
    case KW_NODE_NULL:
        if (n->str == kw_json_cut_marker) {
            /* a cut subtree stays too deep: nested lists that pass the limit again when
             * the text is parsed (an informer stores what a parse with room cut) */
            unsigned k = depth < KW_MAX_NESTING + 1 ? KW_MAX_NESTING + 1 - depth : 1;
            for (unsigned i = 0; st == yajl_gen_status_ok && i < k; i++)
                st = yajl_gen_array_open(g);
            for (unsigned i = 0; st == yajl_gen_status_ok && i < k; i++)
                st = yajl_gen_array_close(g);
            break;
        }
        st = yajl_gen_null(g);
        break;
    case KW_NODE_BOOL:
        st = yajl_gen_bool(g, n->b);
        break;
    case KW_NODE_INT:
    case KW_NODE_FLOAT:
        st = yajl_gen_number(g, n->str, n->len);
        break;
    case KW_NODE_STRING:
        st = yajl_gen_string(g, (const unsigned char *)n->str, n->len);
        break;
    case KW_NODE_SEQ:
        st = yajl_gen_array_open(g);
        for (size_t i = 0; st == yajl_gen_status_ok && i < n->n; i++)
            if (write_node(g, n->items[i], depth + 1, sort) != KW_OK)
                return KW_ERROR;
        if (st == yajl_gen_status_ok)
            st = yajl_gen_array_close(g);
        break;
    case KW_NODE_MAP: {
        /* keys in byte order for canonical text: a map already in order (one read from
         * canonical text) is checked in one pass and not sorted; others are sorted through
         * pointers (on the stack when few) */
        const struct kw_node_pair *stack[16], **sorted = NULL;
        bool in_order = true;
        for (size_t i = 1; sort && in_order && i < n->n; i++) {
            const struct kw_node_pair *x = &n->pairs[i - 1], *y = &n->pairs[i];
            in_order = cmp_pairs(&x, &y) <= 0;
        }
        if (!in_order) {
            sorted = n->n <= KW_ARRAY_LEN(stack) ? stack : malloc(n->n * sizeof(*sorted));
            if (sorted == NULL)
                return KW_ERROR;
            for (size_t i = 0; i < n->n; i++)
                sorted[i] = &n->pairs[i];
            qsort(sorted, n->n, sizeof(*sorted), cmp_pairs);
        }
        st = yajl_gen_map_open(g);
        for (size_t i = 0; st == yajl_gen_status_ok && i < n->n; i++) {
            const struct kw_node_pair *pair = sorted != NULL ? sorted[i] : &n->pairs[i];
            const struct kw_node *k = pair->key;
            st = yajl_gen_string(g, (const unsigned char *)k->str, k->len);
            if (st == yajl_gen_status_ok && write_node(g, pair->val, depth + 1, sort) != KW_OK) {
                if (sorted != stack)
                    free(sorted);
                return KW_ERROR;
            }
        }
        if (sorted != stack)
            free(sorted);
        if (st == yajl_gen_status_ok)
            st = yajl_gen_map_close(g);
        break;
    }
    }
    return st == yajl_gen_status_ok ? KW_OK : KW_ERROR;
}

static int flush(yajl_gen g, struct kw_buf *out)
{
    const unsigned char *p;
    size_t len;
    yajl_gen_get_buf(g, &p, &len);
    int rc = kw_buf_append(out, p, len);
    yajl_gen_clear(g);
    return rc;
}

static int write_json(const struct kw_node *n, struct kw_buf *out, bool sort)
{
    yajl_gen g = yajl_gen_alloc(NULL);
    if (g == NULL)
        return KW_ERROR;
    yajl_gen_config(g, yajl_gen_validate_utf8, 1);
    int rc = write_node(g, n, 0, sort);
    if (rc == KW_OK)
        rc = flush(g, out);
    yajl_gen_free(g);
    return rc;
}

int kw_json_write_canonical(const struct kw_node *n, struct kw_buf *out)
{
    return write_json(n, out, true);
}

int kw_json_write(const struct kw_node *n, struct kw_buf *out)
{
    return write_json(n, out, false);
}

/* The length of a valid UTF-8 sequence at p (1..4), or 0 when it is not one. */
static size_t utf8_len(const unsigned char *p, size_t left)
{
    unsigned c = p[0];
    size_t n = c >= 0xf0 && c <= 0xf4 ? 4 : c >= 0xe0 ? 3 : c >= 0xc2 && c <= 0xdf ? 2 : 0;
    if (n == 0 || n > left)
        return 0;
    for (size_t i = 1; i < n; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if (n == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] > 0x9f)))
        return 0; /* overlong, surrogates */
    if (n == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] > 0x8f)))
        return 0;
    return n;
}

/* Escaped as yajl does (", \, control characters; '/' as is), without a generator per
 * call (it was a fifth of an access log line's cost), and always valid UTF-8: a byte that
 * is not part of a valid sequence becomes U+FFFD (a database or a strict client would
 * refuse the whole document otherwise). */
int kw_json_write_string(struct kw_buf *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *p = (const unsigned char *)s;
    int rc = kw_buf_append(out, "\"", 1);
    size_t run = 0; /* bytes copied as they are, pending */
    for (size_t i = 0; i < len && rc == KW_OK;) {
        unsigned char c = p[i];
        const char *esc = NULL;
        char u[6];
        size_t n = 1;
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            run++;
            i++;
            continue;
        }
        if (c >= 0x80) {
            n = utf8_len(p + i, len - i);
            if (n > 0) {
                run += n;
                i += n;
                continue;
            }
            esc = "\\ufffd";
            n = 1;
        } else if (c == '"') {
            esc = "\\\"";
        } else if (c == '\\') {
            esc = "\\\\";
        } else if (c == '\n') {
            esc = "\\n";
        } else if (c == '\r') {
            esc = "\\r";
        } else if (c == '\t') {
            esc = "\\t";
        } else if (c == '\b') {
            esc = "\\b";
        } else if (c == '\f') {
            esc = "\\f";
        } else {
            u[0] = '\\';
            u[1] = 'u';
            u[2] = '0';
            u[3] = '0';
            u[4] = hex[c >> 4];
            u[5] = hex[c & 15];
        }
        if (run > 0)
            rc |= kw_buf_append(out, s + i - run, run);
        run = 0;
        rc |= esc != NULL ? kw_buf_append(out, esc, strlen(esc)) : kw_buf_append(out, u, 6);
        i += n;
    }
    if (run > 0)
        rc |= kw_buf_append(out, s + len - run, run);
    return rc | kw_buf_append(out, "\"", 1) ? KW_ERROR : KW_OK;
}

/* ---- scanning without a parse ---- */

static size_t skip_ws(const char *s, size_t i, size_t len)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

/* Past the string that opens at s[i] (a '"'), escapes included; len when unterminated. */
static size_t skip_string(const char *s, size_t i, size_t len)
{
    for (i++; i < len; i++) {
        if (s[i] == '\\')
            i++;
        else if (s[i] == '"')
            return i + 1;
    }
    return len;
}

/* One pass over the bytes, strings skipped with their escapes, nothing allocated. */
bool kw_json_top_object(const char *s, size_t len, const char *key, size_t *at, size_t *end)
{
    size_t klen = strlen(key), i = skip_ws(s, 0, len);
    if (i >= len || s[i] != '{')
        return false;
    i++;
    for (;;) { /* at a member's key */
        i = skip_ws(s, i, len);
        if (i >= len || s[i] != '"')
            return false;
        size_t k = i + 1;
        i = skip_string(s, i, len);
        bool match = i - k == klen + 1 && memcmp(s + k, key, klen) == 0;
        i = skip_ws(s, i, len);
        if (i >= len || s[i] != ':')
            return false;
        i = skip_ws(s, i + 1, len);
        if (i >= len)
            return false;
        size_t v = i;
        int depth = 0; /* the value: to the comma or brace that ends it */
        for (; i < len; i++) {
            char c = s[i];
            if (c == '"') {
                i = skip_string(s, i, len) - 1;
            } else if (c == '{' || c == '[') {
                depth++;
            } else if (c == '}' || c == ']') {
                if (depth == 0)
                    break;
                if (--depth == 0) {
                    i++;
                    break;
                }
            } else if (c == ',' && depth == 0) {
                break;
            }
        }
        if (match) {
            if (s[v] != '{' || depth != 0)
                return false;
            *at = v;
            *end = i;
            return true;
        }
        i = skip_ws(s, i, len);
        if (i >= len || s[i] != ',')
            return false;
        i++;
    }
}
