/* knoway: region allocator. Everything a parsed config or snapshot holds lives in one
 * arena and dies with it, so freeing a config is one call and cannot leak. */
#ifndef KNOWAY_ARENA_H
#define KNOWAY_ARENA_H

#include <stdatomic.h>
#include <stddef.h>

struct kw_arena;

/* Create an arena that refuses to grow past max_bytes. NULL on out-of-memory. */
struct kw_arena *kw_arena_new(size_t max_bytes);
/* The same with a first block of first bytes (blocks double from there), for the many
 * small arenas of a cache whose objects need far less than the default 4 KiB. */
struct kw_arena *kw_arena_new_sized(size_t max_bytes, size_t first);

/* Free the arena and everything allocated from it. kw_arena_free(NULL) is a no-op. */
void kw_arena_free(struct kw_arena *a);

/* Zeroed memory aligned for any type, or NULL when out of memory or over the limit. */
void *kw_arena_alloc(struct kw_arena *a, size_t size);

/* Copy len bytes and add a NUL. NULL when out of memory or over the limit. */
char *kw_arena_strndup(struct kw_arena *a, const char *s, size_t len);

/* kw_arena_strndup(a, s, strlen(s)); s may be NULL (returns NULL). */
char *kw_arena_strdup(struct kw_arena *a, const char *s);

/* printf into the arena. NULL on failure. */
char *kw_arena_printf(struct kw_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Forget everything allocated, keeping one block of at most KW_ARENA_KEEP bytes for reuse
 * (a scratch arena reset per event costs no malloc in the steady state; a pooled arena
 * that once served a large request does not keep its memory). */
#define KW_ARENA_KEEP (64u * 1024)
void kw_arena_reset(struct kw_arena *a);

/* Bytes handed out so far (for tests and metrics). */
size_t kw_arena_used(const struct kw_arena *a);

/* Bytes of the blocks the arena holds (what it costs in memory). */
size_t kw_arena_total(const struct kw_arena *a);

/* Change the limit (an arena taken from a pool and sized for one request). Blocks held
 * already stay. */
void kw_arena_set_max(struct kw_arena *a, size_t max_bytes);

/* Add the bytes of every block the arena allocates to *counter and subtract those it frees
 * (a memory budget shared by many arenas and threads). NULL stops counting; the blocks
 * counted so far are subtracted first. */
void kw_arena_set_account(struct kw_arena *a, atomic_llong *counter);

#endif
