/* Internal: the duplicate-key check of one map while it is parsed (JSON and YAML).
 *
 * A map's keys are compared linearly while it has few; from KW_KEYSET_LINEAR keys on, an
 * open-addressing hash set of its key nodes answers in constant time, so parsing an object
 * of n keys costs O(n), not O(n^2) (a 40,000-key body once stalled a worker for 15 s). */
#ifndef KNOWAY_KEYSET_H
#define KNOWAY_KEYSET_H

#include <stddef.h>

#include "knoway/node.h"

#define KW_KEYSET_LINEAR 8u

struct kw_keyset {
    const struct kw_node **slots; /* malloc'd; NULL while the map is small */
    size_t cap;                   /* a power of two */
    size_t n;
};

/* The key of map equal to (s, len) if any. May build or grow the set (malloc): KW_OK, or
 * KW_ERROR on out-of-memory. */
int kw_keyset_find(struct kw_keyset *ks, const struct kw_node *map, const char *s, size_t len,
                   const struct kw_node **found);
/* Record key, just added to map (after kw_keyset_find said it is new). KW_OK or KW_ERROR. */
int kw_keyset_add(struct kw_keyset *ks, const struct kw_node *key);
/* Free the set; it may be used again for another map. */
void kw_keyset_cleanup(struct kw_keyset *ks);

#endif
