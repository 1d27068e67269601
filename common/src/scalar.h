/* Internal: typing of untyped scalars (YAML 1.2 core schema) and number text. */
#ifndef KNOWAY_SCALAR_H
#define KNOWAY_SCALAR_H

#include "knoway/arena.h"
#include "knoway/node.h"

/* Resolve a plain YAML scalar into n (type, value, and JSON-valid text for numbers).
 * KW_OK or KW_ERROR on out-of-memory. */
int kw_scalar_resolve_plain(struct kw_arena *a, struct kw_node *n, const char *s, size_t len);

/* Type a JSON number: INT when it fits int64, else FLOAT. Text kept as is. */
void kw_scalar_number(struct kw_node *n);

#endif
