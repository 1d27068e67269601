#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "keyset.h"
#include "knoway/hash.h"
#include "knoway/kw.h"

static uint64_t hash(const char *s, size_t len)
{
    return kw_hash_mem(s, len);
}

static void put(const struct kw_node **slots, size_t cap, const struct kw_node *key)
{
    size_t i = (size_t)hash(key->str, key->len) & (cap - 1);
    while (slots[i] != NULL)
        i = (i + 1) & (cap - 1);
    slots[i] = key;
}

static int grow(struct kw_keyset *ks, size_t want)
{
    size_t cap = ks->cap != 0 ? ks->cap : 32;
    while (cap < want * 2)
        cap *= 2;
    if (cap == ks->cap)
        return KW_OK;
    const struct kw_node **slots = calloc(cap, sizeof(*slots));
    if (slots == NULL)
        return KW_ERROR;
    for (size_t i = 0; i < ks->cap; i++)
        if (ks->slots[i] != NULL)
            put(slots, cap, ks->slots[i]);
    free(ks->slots);
    ks->slots = slots;
    ks->cap = cap;
    return KW_OK;
}

int kw_keyset_find(struct kw_keyset *ks, const struct kw_node *map, const char *s, size_t len,
                   const struct kw_node **found)
{
    *found = NULL;
    if (ks->slots == NULL && map->n < KW_KEYSET_LINEAR) {
        for (size_t i = 0; i < map->n; i++) {
            const struct kw_node *k = map->pairs[i].key;
            if (k->len == len && memcmp(k->str, s, len) == 0) {
                *found = k;
                break;
            }
        }
        return KW_OK;
    }
    if (ks->slots == NULL) { /* the map just grew past the linear range */
        if (grow(ks, map->n + 1) != KW_OK)
            return KW_ERROR;
        for (size_t i = 0; i < map->n; i++)
            put(ks->slots, ks->cap, map->pairs[i].key);
        ks->n = map->n;
    }
    size_t i = (size_t)hash(s, len) & (ks->cap - 1);
    for (; ks->slots[i] != NULL; i = (i + 1) & (ks->cap - 1)) {
        const struct kw_node *k = ks->slots[i];
        if (k->len == len && memcmp(k->str, s, len) == 0) {
            *found = k;
            break;
        }
    }
    return KW_OK;
}

int kw_keyset_add(struct kw_keyset *ks, const struct kw_node *key)
{
    if (ks->slots == NULL)
        return KW_OK; /* still small: the map's pairs are the set */
    if (grow(ks, ks->n + 1) != KW_OK)
        return KW_ERROR;
    put(ks->slots, ks->cap, key);
    ks->n++;
    return KW_OK;
}

void kw_keyset_cleanup(struct kw_keyset *ks)
{
    free(ks->slots);
    ks->slots = NULL;
    ks->cap = 0;
    ks->n = 0;
}
