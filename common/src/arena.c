#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/arena.h"

#define CHUNK_MIN 4096u
#define ALIGN     16u

struct chunk {
    struct chunk *next;
    size_t size; /* usable bytes after the header */
    size_t used;
    _Alignas(16) unsigned char data[];
};

struct kw_arena {
    struct chunk *head;
    size_t total; /* bytes of chunks allocated */
    size_t max;
    size_t handed;
    size_t first; /* the first block's size */
    atomic_llong *account;
};

static void account(struct kw_arena *a, long long delta)
{
    if (a->account != NULL)
        atomic_fetch_add_explicit(a->account, delta, memory_order_relaxed);
}

struct kw_arena *kw_arena_new_sized(size_t max_bytes, size_t first)
{
    struct kw_arena *a = calloc(1, sizeof(*a));
    if (a == NULL)
        return NULL;
    a->max = max_bytes;
    a->first = first >= ALIGN ? (first + ALIGN - 1) & ~(size_t)(ALIGN - 1) : ALIGN;
    return a;
}

struct kw_arena *kw_arena_new(size_t max_bytes)
{
    return kw_arena_new_sized(max_bytes, CHUNK_MIN);
}

void kw_arena_free(struct kw_arena *a)
{
    if (a == NULL)
        return;
    account(a, -(long long)a->total);
    struct chunk *c = a->head;
    while (c != NULL) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
    free(a);
}

/* size bytes aligned to align (a power of two), not zeroed. Strings take byte alignment:
 * a parse tree's keys and values are mostly a few bytes, rounding each to 16 doubled an
 * object's footprint. */
static void *arena_take(struct kw_arena *a, size_t size, size_t align)
{
    if (size > SIZE_MAX / 2)
        return NULL;
    if (size == 0)
        size = 1;
    struct chunk *c = a->head;
    size_t off = c != NULL ? (c->used + align - 1) & ~(align - 1) : 0;
    if (c == NULL || off > c->size || c->size - off < size) {
        size_t want = c != NULL ? c->size * 2 : a->first;
        if (want > 1024 * 1024)
            want = 1024 * 1024;
        if (want < size)
            want = (size + ALIGN - 1) & ~(size_t)(ALIGN - 1);
        if (a->total + want > a->max)
            return NULL;
        struct chunk *n = malloc(sizeof(*n) + want);
        if (n == NULL)
            return NULL;
        n->size = want;
        n->used = 0;
        a->total += want;
        account(a, (long long)want);
        /* A large block goes behind the head so the head's free space stays usable. */
        if (c != NULL && want - size < ALIGN && c->size - c->used > 256) {
            n->next = c->next;
            c->next = n;
        } else {
            n->next = c;
            a->head = n;
        }
        c = n;
        off = 0;
    }
    void *p = c->data + off;
    c->used = off + size;
    a->handed += size;
    return p;
}

void *kw_arena_alloc(struct kw_arena *a, size_t size)
{
    void *p = arena_take(a, size, ALIGN);
    if (p != NULL)
        memset(p, 0, size);
    return p;
}

char *kw_arena_strndup(struct kw_arena *a, const char *s, size_t len)
{
    if (len == SIZE_MAX)
        return NULL;
    char *p = arena_take(a, len + 1, 1);
    if (p == NULL)
        return NULL;
    if (len > 0)
        memcpy(p, s, len);
    p[len] = '\0';
    return p;
}

char *kw_arena_strdup(struct kw_arena *a, const char *s)
{
    if (s == NULL)
        return NULL;
    return kw_arena_strndup(a, s, strlen(s));
}

char *kw_arena_printf(struct kw_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *p = arena_take(a, (size_t)n + 1, 1);
    if (p == NULL)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return p;
}

size_t kw_arena_used(const struct kw_arena *a)
{
    return a->handed;
}

void kw_arena_reset(struct kw_arena *a)
{
    struct chunk *keep = a->head;
    if (keep == NULL)
        return;
    struct chunk *c = keep->next;
    if (keep->size > KW_ARENA_KEEP) {
        c = keep;
        keep = NULL;
    }
    while (c != NULL) {
        struct chunk *next = c->next;
        free(c);
        c = next;
    }
    size_t total = keep != NULL ? keep->size : 0;
    account(a, (long long)total - (long long)a->total);
    a->total = total;
    a->head = keep;
    if (keep != NULL) {
        keep->next = NULL;
        keep->used = 0;
    }
    a->handed = 0;
}

size_t kw_arena_total(const struct kw_arena *a)
{
    return a->total;
}

void kw_arena_set_max(struct kw_arena *a, size_t max_bytes)
{
    a->max = max_bytes;
}

void kw_arena_set_account(struct kw_arena *a, atomic_llong *counter)
{
    account(a, -(long long)a->total);
    a->account = counter;
    account(a, (long long)a->total);
}
