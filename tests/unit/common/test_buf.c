#include <stdlib.h>
#include <string.h>

#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/diag.h"
#include "knoway/kw.h"
#include "testutil.h"

static void test_buf_limit(void **state)
{
    (void)state;
    struct kw_buf b;
    kw_buf_init(&b, 8);
    assert_int_equal(kw_buf_puts(&b, "1234"), KW_OK);
    assert_int_equal(kw_buf_printf(&b, "%d", 5678), KW_OK);
    assert_int_equal(b.len, 8);
    /* one byte over the maximum fails and leaves the buffer as it was */
    assert_int_equal(kw_buf_puts(&b, "9"), KW_ERROR);
    assert_string_equal(b.data, "12345678");
    kw_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.data, "");
    kw_buf_cleanup(&b);
    /* printf: formatted in place when it fits, again after growing when not, refused past
     * the maximum with the buffer as it was */
    kw_buf_init(&b, 1000);
    assert_int_equal(kw_buf_puts(&b, "ab"), KW_OK); /* cap 256 */
    assert_int_equal(kw_buf_printf(&b, "%s-%d", "x", 7), KW_OK);
    assert_string_equal(b.data, "abx-7");
    char big[600];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(kw_buf_printf(&b, "[%s]", big), KW_OK); /* past the first capacity */
    assert_int_equal(b.len, 5 + 601);
    assert_int_equal(b.data[b.len], '\0');
    assert_int_equal(kw_buf_printf(&b, "%s", big), KW_ERROR); /* past 1000 */
    assert_int_equal(b.len, 606);
    assert_int_equal(b.data[606], '\0');
    assert_int_equal(b.data[605], ']');
    kw_buf_cleanup(&b);
}

static void test_arena_limit(void **state)
{
    (void)state;
    struct kw_arena *a = kw_arena_new(64 * 1024);
    char *s = kw_arena_strdup(a, "hello");
    assert_string_equal(s, "hello");
    assert_non_null(kw_arena_alloc(a, 30000));
    assert_null(kw_arena_alloc(a, 100000)); /* past the limit */
    assert_string_equal(kw_arena_printf(a, "%s-%d", s, 7), "hello-7");
    kw_arena_free(a);
    kw_arena_free(NULL);
}

static void test_diag_format(void **state)
{
    (void)state;
    struct kw_diag d;
    struct kw_buf out;
    kw_diag_init(&d);
    kw_buf_init(&out, 4096);
    kw_diag_add(&d, "f.yaml", 3, 5, "LLMRoute/ns/r", "spec.timeout", "bad %s", "value");
    kw_diag_add(&d, NULL, 0, 0, "LLMRoute/ns/r", "spec.x", "from the API");
    kw_diag_add(&d, "f.yaml", 0, 0, NULL, NULL, "cannot open");
    kw_diag_format_all(&d, &out);
    assert_string_equal(out.data, "f.yaml:3:5: LLMRoute/ns/r: spec.timeout: bad value\n"
                                  "LLMRoute/ns/r: spec.x: from the API\n"
                                  "f.yaml: cannot open\n");
    assert_int_equal(kw_diag_count(&d), 3);
    kw_buf_cleanup(&out);
    kw_diag_cleanup(&d);
}

static void test_diag_cap(void **state)
{
    (void)state;
    struct kw_diag d;
    kw_diag_init(&d);
    for (int i = 0; i < 250; i++)
        kw_diag_add(&d, NULL, 0, 0, NULL, NULL, "e%d", i);
    assert_int_equal(d.n, 200);
    assert_int_equal(kw_diag_count(&d), 250);
    struct kw_buf out;
    kw_buf_init(&out, 1 << 20);
    kw_diag_format_all(&d, &out);
    assert_non_null(strstr(out.data, "(50 more errors not shown)\n"));
    kw_buf_cleanup(&out);
    kw_diag_cleanup(&d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_buf_limit),
        cmocka_unit_test(test_arena_limit),
        cmocka_unit_test(test_diag_format),
        cmocka_unit_test(test_diag_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
