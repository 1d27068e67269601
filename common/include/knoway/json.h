/* knoway: JSON (yajl) to kw_node and back. */
#ifndef KNOWAY_JSON_H
#define KNOWAY_JSON_H

#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "buf.h"
#include "node.h"

/* Parse one JSON value. On error returns KW_ERROR (KW_NOMEM when memory ran out: the arena's
 * limit or the process's) and writes a one-line reason to err. Duplicate keys in an object
 * are an error. Depth and sizes are limited (limits.h). */
int kw_json_parse(struct kw_arena *a, const char *buf, size_t len, struct kw_node **out, char *err,
                  size_t errlen);

/* The same with a chosen depth limit (at most KW_MAX_NESTING + 4). With cut, a container
 * deeper than max_depth does not fail the parse: it is skipped and replaced by a null node
 * whose str is kw_json_cut_marker (a list of many objects survives one that is too deep;
 * kw_json_find_cut tells which). */
int kw_json_parse_ex(struct kw_arena *a, const char *buf, size_t len, unsigned max_depth, bool cut,
                     struct kw_node **out, char *err, size_t errlen);
extern const char kw_json_cut_marker[];

/* Whether n holds a cut subtree; path (like "spec.params.defaults.a[0]") gets where. */
bool kw_json_find_cut(const struct kw_node *n, char *path, size_t pathlen);

/* Append the canonical JSON form of n to out: no white space, object keys sorted by
 * bytes, numbers as their text, strings escaped by yajl. Equal trees give equal bytes.
 * KW_OK, or KW_ERROR when out's limit is reached. */
int kw_json_write_canonical(const struct kw_node *n, struct kw_buf *out);

/* Append n as compact JSON keeping the source order of object keys (a request body
 * rewritten by the gateway keeps the client's field order). */
int kw_json_write(const struct kw_node *n, struct kw_buf *out);

/* Append s as a JSON string literal (quotes included). */
int kw_json_write_string(struct kw_buf *out, const char *s, size_t len);

/* The object value of the top-level member key of the JSON object in s, as [*at, *end),
 * found without parsing the whole text (the usage of a large answer); false when the text
 * is no object or holds no such member with an object value. The rest is not validated. */
bool kw_json_top_object(const char *s, size_t len, const char *key, size_t *at, size_t *end);

#endif
