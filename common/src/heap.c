#include <stdlib.h>

#include "knoway/heap.h"
#include "knoway/kw.h"

void kw_heap_init(struct kw_heap *h)
{
    h->items = NULL;
    h->n = h->cap = 0;
}

void kw_heap_node_init(struct kw_heap_node *x)
{
    x->key = 0;
    x->idx = KW_HEAP_NONE;
}

void kw_heap_cleanup(struct kw_heap *h)
{
    free(h->items);
    kw_heap_init(h);
}

static void swap(struct kw_heap *h, size_t a, size_t b)
{
    struct kw_heap_node *t = h->items[a];
    h->items[a] = h->items[b];
    h->items[b] = t;
    h->items[a]->idx = a;
    h->items[b]->idx = b;
}

static void up(struct kw_heap *h, size_t i)
{
    while (i > 0 && h->items[(i - 1) / 2]->key > h->items[i]->key) {
        swap(h, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void down(struct kw_heap *h, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < h->n && h->items[l]->key < h->items[m]->key)
            m = l;
        if (r < h->n && h->items[r]->key < h->items[m]->key)
            m = r;
        if (m == i)
            return;
        swap(h, i, m);
        i = m;
    }
}

void kw_heap_remove(struct kw_heap *h, struct kw_heap_node *x)
{
    if (x->idx == KW_HEAP_NONE)
        return;
    size_t i = x->idx;
    h->n--;
    if (i != h->n) {
        swap(h, i, h->n);
        down(h, i);
        up(h, i);
    }
    x->idx = KW_HEAP_NONE;
}

int kw_heap_set(struct kw_heap *h, struct kw_heap_node *x, int64_t key)
{
    kw_heap_remove(h, x);
    if (h->n == h->cap) {
        size_t cap = h->cap != 0 ? h->cap * 2 : 256;
        struct kw_heap_node **p = realloc(h->items, cap * sizeof(*p));
        if (p == NULL)
            return KW_ERROR;
        h->items = p;
        h->cap = cap;
    }
    x->key = key;
    x->idx = h->n;
    h->items[h->n++] = x;
    up(h, x->idx);
    return KW_OK;
}

struct kw_heap_node *kw_heap_top(const struct kw_heap *h)
{
    return h->n > 0 ? h->items[0] : NULL;
}
