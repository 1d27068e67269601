/* hash.c: SipHash against the reference vectors; incremental feeding; the process's key. */
#include <stdint.h>
#include <string.h>

#include "knoway/hash.h"
#include "testutil.h"

/* The SipHash paper's (Appendix A) and the reference implementation's vectors: key
 * 00 01 .. 0f, message 00 01 .. (n-1). */
static void test_reference_vectors(void **state)
{
    (void)state;
    unsigned char key[16], msg[64];
    for (int i = 0; i < 16; i++)
        key[i] = (unsigned char)i;
    for (int i = 0; i < 64; i++)
        msg[i] = (unsigned char)i;
    assert_true(kw_siphash(2, 4, key, msg, 0) == 0x726fdb47dd0e0e31ull);
    assert_true(kw_siphash(2, 4, key, msg, 1) == 0x74f839c593dc67fdull);
    assert_true(kw_siphash(2, 4, key, msg, 15) == 0xa129ca6149be45e5ull);
    assert_true(kw_siphash(2, 4, key, msg, 63) == 0x958a324ceb064572ull);
}

/* A key fed in pieces hashes as the whole; parts fed with kw_hash_str are told apart. */
static void test_incremental(void **state)
{
    (void)state;
    static const char text[] = "namespace/a-rather-long-name-of-a-backend-0123456789";
    size_t n = sizeof(text) - 1;
    uint64_t whole = kw_hash_mem(text, n);
    assert_true(whole == kw_hash_cstr(text));
    for (size_t i = 0; i <= n; i++)
        for (size_t j = i; j <= n; j++) {
            struct kw_hash h;
            kw_hash_begin(&h);
            kw_hash_feed(&h, text, i);
            kw_hash_feed(&h, text + i, j - i);
            kw_hash_feed(&h, text + j, n - j);
            assert_true(kw_hash_end(&h) == whole);
        }
    struct kw_hash a, b;
    kw_hash_begin(&a);
    kw_hash_str(&a, "ab");
    kw_hash_str(&a, "c");
    kw_hash_begin(&b);
    kw_hash_str(&b, "a");
    kw_hash_str(&b, "bc");
    assert_true(kw_hash_end(&a) != kw_hash_end(&b));
}

/* The process's key is not the all-zero key: a table's hash is not one anyone can compute. */
static void test_keyed(void **state)
{
    (void)state;
    unsigned char zero[16] = {0};
    assert_true(kw_hash_mem("k", 1) != kw_siphash(1, 3, zero, "k", 1));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_vectors),
        cmocka_unit_test(test_incremental),
        cmocka_unit_test(test_keyed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
