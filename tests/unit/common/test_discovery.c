/* The discovery poll both binaries speak (knoway/discovery.h): what a data plane writes,
 * the controller reads back whole; what the controller refuses. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>

#include <cmocka.h>

#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/discovery.h"
#include "knoway/kw.h"

static void test_round_trip(void **state)
{
    (void)state;
    struct kw_arena *a = kw_arena_new(1 << 20);
    struct kw_buf b;
    kw_buf_init(&b, 64 * 1024);
    struct kw_poll p;
    /* an ACK of what it applied */
    assert_int_equal(kw_poll_write(&b, "dp-1", "", "sha256:ab", "sha256:ab", NULL), KW_OK);
    assert_null(kw_poll_parse(a, b.data, b.len, &p));
    assert_string_equal(p.id, "dp-1");
    assert_string_equal(p.version, "sha256:ab");
    assert_string_equal(p.nonce, "sha256:ab");
    assert_null(p.message);
    /* a NACK: the received version refused, with why (quotes and newlines survive) */
    assert_int_equal(
        kw_poll_write(&b, "dp-\"2\"", "east", "sha256:ab", "sha256:cd", "route \"r\":\nbad"),
        KW_OK);
    assert_null(kw_poll_parse(a, b.data, b.len, &p));
    assert_string_equal(p.id, "dp-\"2\"");
    assert_string_equal(p.cluster, "east");
    assert_string_equal(p.nonce, "sha256:cd");
    assert_string_equal(p.message, "route \"r\":\nbad");
    /* the first poll: nothing applied yet */
    assert_int_equal(kw_poll_write(&b, "dp-3", "", "", "", ""), KW_OK);
    assert_null(kw_poll_parse(a, b.data, b.len, &p));
    assert_string_equal(p.version, "");
    kw_buf_cleanup(&b);
    kw_arena_free(a);
}

static void test_refused(void **state)
{
    (void)state;
    struct kw_arena *a = kw_arena_new(1 << 20);
    struct kw_poll p;
    static const struct {
        const char *body, *why;
    } bad[] = {
        {"not json", "not JSON"},
        {"{\"version\":\"\"}", "node.id"},
        {"{\"node\":{\"id\":\"\"}}", "node.id"},
        {"{\"node\":{\"id\":7}}", "node.id"},
        {"{\"node\":{\"id\":\"x\"},\"error\":\"no\"}", "error: must be"},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(bad); i++) {
        const char *why = kw_poll_parse(a, bad[i].body, strlen(bad[i].body), &p);
        assert_non_null(why);
        if (strstr(why, bad[i].why) == NULL)
            fail_msg("%s: %s", bad[i].body, why);
    }
    char id[300] = "{\"node\":{\"id\":\"";
    memset(id + strlen(id), 'x', 254);
    strcat(id, "\"}}");
    assert_non_null(kw_poll_parse(a, id, strlen(id), &p)); /* longer than 253 */
    kw_arena_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
