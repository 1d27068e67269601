/* SipHash (Aumasson and Bernstein, 2012) with 1 compression and 3 finalization rounds, the
 * variant Python, Rust and Redis use for their tables; written here because no packaged
 * library offers it incrementally (libsodium's crypto_shorthash is one-shot SipHash-2-4).
 * kw_siphash runs any c-d so that the test can check the paper's SipHash-2-4 vectors. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "knoway/hash.h"

static uint64_t key0, key1;

/* Drawn before main: every table may hash from its first use, on any thread. */
__attribute__((constructor)) static void draw_key(void)
{
    uint64_t k[2];
    size_t got = 0;
    while (got < sizeof(k)) {
        ssize_t n = getrandom((char *)k + got, sizeof(k) - got, 0);
        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            abort(); /* no entropy at start-up: a predictable key would be worse */
        got += (size_t)n;
    }
    key0 = k[0];
    key1 = k[1];
}

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static inline void round1(struct kw_hash *h)
{
    h->v0 += h->v1;
    h->v1 = ROTL(h->v1, 13);
    h->v1 ^= h->v0;
    h->v0 = ROTL(h->v0, 32);
    h->v2 += h->v3;
    h->v3 = ROTL(h->v3, 16);
    h->v3 ^= h->v2;
    h->v0 += h->v3;
    h->v3 = ROTL(h->v3, 21);
    h->v3 ^= h->v0;
    h->v2 += h->v1;
    h->v1 = ROTL(h->v1, 17);
    h->v1 ^= h->v2;
    h->v2 = ROTL(h->v2, 32);
}

static inline uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static void start(struct kw_hash *h, uint64_t k0, uint64_t k1)
{
    h->v0 = k0 ^ 0x736f6d6570736575ull;
    h->v1 = k1 ^ 0x646f72616e646f6dull;
    h->v2 = k0 ^ 0x6c7967656e657261ull;
    h->v3 = k1 ^ 0x7465646279746573ull;
    h->tail = 0;
    h->len = 0;
}

static inline void word(struct kw_hash *h, uint64_t m, int c)
{
    h->v3 ^= m;
    for (int i = 0; i < c; i++)
        round1(h);
    h->v0 ^= m;
}

static void feed(struct kw_hash *h, const unsigned char *p, size_t n, int c)
{
    unsigned fill = (unsigned)(h->len & 7);
    h->len += n;
    if (fill != 0) {
        for (; n > 0 && fill < 8; n--, fill++)
            h->tail |= (uint64_t)*p++ << (8 * fill);
        if (fill < 8)
            return;
        word(h, h->tail, c);
        h->tail = 0;
    }
    for (; n >= 8; n -= 8, p += 8)
        word(h, le64(p), c);
    for (unsigned i = 0; i < n; i++)
        h->tail |= (uint64_t)p[i] << (8 * i);
}

static uint64_t finish(struct kw_hash *h, int c, int d)
{
    word(h, h->tail | (h->len << 56), c);
    h->v2 ^= 0xff;
    for (int i = 0; i < d; i++)
        round1(h);
    return h->v0 ^ h->v1 ^ h->v2 ^ h->v3;
}

void kw_hash_begin(struct kw_hash *h)
{
    start(h, key0, key1);
}

void kw_hash_feed(struct kw_hash *h, const void *p, size_t n)
{
    if (n > 0)
        feed(h, p, n, 1);
}

void kw_hash_str(struct kw_hash *h, const char *s)
{
    static const unsigned char sep = 0xff;
    if (s != NULL)
        kw_hash_feed(h, s, strlen(s));
    feed(h, &sep, 1, 1);
}

uint64_t kw_hash_end(struct kw_hash *h)
{
    return finish(h, 1, 3);
}

uint64_t kw_hash_mem(const void *p, size_t n)
{
    struct kw_hash h;
    kw_hash_begin(&h);
    kw_hash_feed(&h, p, n);
    return kw_hash_end(&h);
}

uint64_t kw_hash_cstr(const char *s)
{
    return kw_hash_mem(s, s != NULL ? strlen(s) : 0);
}

uint64_t kw_siphash(int c, int d, const unsigned char key[16], const void *p, size_t n)
{
    struct kw_hash h;
    start(&h, le64(key), le64(key + 8));
    if (n > 0)
        feed(&h, p, n, c);
    return finish(&h, c, d);
}
