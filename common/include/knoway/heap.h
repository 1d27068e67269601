/* knoway: an intrusive binary min-heap keyed by an int64 (timer deadlines). The caller
 * embeds a kw_heap_node in its own struct. One owner at a time: no locking. */
#ifndef KNOWAY_HEAP_H
#define KNOWAY_HEAP_H

#include <stddef.h>
#include <stdint.h>

struct kw_heap_node {
    int64_t key;
    size_t idx; /* position in the heap; KW_HEAP_NONE when not in one */
};

#define KW_HEAP_NONE SIZE_MAX

struct kw_heap {
    struct kw_heap_node **items;
    size_t n, cap;
};

/* An empty heap / a node in no heap. */
void kw_heap_init(struct kw_heap *h);
void kw_heap_node_init(struct kw_heap_node *x);
/* Free the heap's array (the nodes belong to their owners). */
void kw_heap_cleanup(struct kw_heap *h);

/* Insert x with key, or move it there if it is already in h. KW_OK or KW_ERROR (OOM). */
int kw_heap_set(struct kw_heap *h, struct kw_heap_node *x, int64_t key);
/* Take x out of h; a no-op when it is in no heap. */
void kw_heap_remove(struct kw_heap *h, struct kw_heap_node *x);
/* The node with the smallest key, or NULL. */
struct kw_heap_node *kw_heap_top(const struct kw_heap *h);

#endif
