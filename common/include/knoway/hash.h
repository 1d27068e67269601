/* knoway: FNV-1a, the non-cryptographic hash of the in-memory tables (label sets, stores,
 * credential slots, balancer keys). One definition, continued piece by piece: hash a
 * composite key by feeding its parts, with a separator byte where parts could run into
 * each other. */
#ifndef KNOWAY_HASH_H
#define KNOWAY_HASH_H

#include <stddef.h>
#include <stdint.h>

#define KW_FNV_SEED 1469598103934665603ull

static inline uint64_t kw_fnv_byte(uint64_t h, unsigned char c)
{
    return (h ^ c) * 1099511628211ull;
}

static inline uint64_t kw_fnv_mem(uint64_t h, const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = kw_fnv_byte(h, ((const unsigned char *)p)[i]);
    return h;
}

/* s up to its NUL; s may be NULL (nothing fed) */
static inline uint64_t kw_fnv_str(uint64_t h, const char *s)
{
    for (; s != NULL && *s != '\0'; s++)
        h = kw_fnv_byte(h, (unsigned char)*s);
    return h;
}

#endif
