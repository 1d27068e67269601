/* knoway: a document tree with source positions. The YAML and JSON parsers both produce
 * it, the resource decoder reads it, the snapshot encoder builds it and the canonical JSON
 * writer prints it. All nodes live in a kw_arena. */
#ifndef KNOWAY_NODE_H
#define KNOWAY_NODE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"

enum kw_node_type {
    KW_NODE_NULL,
    KW_NODE_BOOL,
    KW_NODE_INT,   /* fits in int64_t; str holds its text */
    KW_NODE_FLOAT, /* any other number; str holds its text */
    KW_NODE_STRING,
    KW_NODE_MAP,
    KW_NODE_SEQ,
};

struct kw_node;

struct kw_node_pair {
    struct kw_node *key; /* always a KW_NODE_STRING */
    struct kw_node *val;
};

struct kw_node {
    enum kw_node_type type;
    unsigned line, col; /* 1-based source position; 0 when unknown (JSON, built nodes) */
    const char *str;    /* scalars: the text (strings: the value, NUL-terminated) */
    size_t len;         /* bytes in str (a string may hold NUL bytes) */
    int64_t i;          /* KW_NODE_INT */
    bool b;             /* KW_NODE_BOOL */
    size_t n;           /* entries in items or pairs */
    size_t cap;
    struct kw_node **items;     /* KW_NODE_SEQ */
    struct kw_node_pair *pairs; /* KW_NODE_MAP, in source order */
};

/* "string", "integer", "map", ... for error messages. */
const char *kw_node_type_name(enum kw_node_type t);

/* The value under key in a map, or NULL (also when m is not a map). */
struct kw_node *kw_node_get(const struct kw_node *m, const char *key);

/* Builders for encoders. All return NULL on out-of-memory (arena limit). */
struct kw_node *kw_node_new(struct kw_arena *a, enum kw_node_type t);
struct kw_node *kw_node_string(struct kw_arena *a, const char *s, size_t len);
struct kw_node *kw_node_cstring(struct kw_arena *a, const char *s);
struct kw_node *kw_node_int(struct kw_arena *a, int64_t v);
struct kw_node *kw_node_bool(struct kw_arena *a, bool v);

/* Append to a map / sequence. KW_OK or KW_ERROR (out of memory or too many items). */
int kw_node_map_put(struct kw_arena *a, struct kw_node *m, const char *key, struct kw_node *v);
/* Append a pair whose key node is given (parsers keep the key's position). */
int kw_node_map_add(struct kw_arena *a, struct kw_node *m, struct kw_node *k, struct kw_node *v);
int kw_node_seq_push(struct kw_arena *a, struct kw_node *s, struct kw_node *v);
/* m[key] = v: replaces the pair of that key, or appends one. KW_OK or KW_ERROR (v NULL,
 * out of memory). */
int kw_node_map_set(struct kw_arena *a, struct kw_node *m, const char *key, struct kw_node *v);
/* A shallow copy of map m whose pairs may be replaced without touching m. NULL on OOM. */
struct kw_node *kw_node_map_copy(struct kw_arena *a, const struct kw_node *m);

/* Deep copy into another arena (positions kept). NULL on out-of-memory. */
struct kw_node *kw_node_clone(struct kw_arena *a, const struct kw_node *n);

#endif
