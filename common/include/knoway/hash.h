/* knoway: the hash of the in-memory tables (JSON and YAML key sets, label sets, stores,
 * credential slots, balancer keys, key digests, rate-limit buckets): SipHash-1-3 under a
 * key drawn from getrandom(2) once per process. Every one of those tables is fed by
 * outside input (request bodies, tenants' names), so the hash must not let anyone choose
 * keys that share a slot (hash flooding): with a secret key they cannot, whatever they
 * know of the code. Values differ between processes: never persist them, never send them.
 *
 * Composite keys are fed piece by piece: kw_hash_str feeds a string and a separator byte
 * (0xff, which no UTF-8 name holds), so ("ab","c") and ("a","bc") differ. */
#ifndef KNOWAY_HASH_H
#define KNOWAY_HASH_H

#include <stddef.h>
#include <stdint.h>

struct kw_hash {
    uint64_t v0, v1, v2, v3;
    uint64_t tail; /* bytes not yet in a whole 8-byte word, little-endian */
    uint64_t len;  /* bytes fed */
};

/* Begins a hash under the process's key. Any thread. */
void kw_hash_begin(struct kw_hash *h);

/* Feeds n bytes of p (p may be NULL when n is 0). */
void kw_hash_feed(struct kw_hash *h, const void *p, size_t n);

/* Feeds s up to its NUL and then the separator 0xff; s may be NULL (an empty string). */
void kw_hash_str(struct kw_hash *h, const char *s);

/* The 64-bit result; h is spent. */
uint64_t kw_hash_end(struct kw_hash *h);

/* One-shot forms: n bytes of p, and a string without a separator. */
uint64_t kw_hash_mem(const void *p, size_t n);
uint64_t kw_hash_cstr(const char *s);

/* SipHash-c-d of p under an explicit 16-byte key (tests check the reference vectors). */
uint64_t kw_siphash(int c, int d, const unsigned char key[16], const void *p, size_t n);

#endif
