#include <stdlib.h>
#include <string.h>

#include "knoway/duration.h"
#include "knoway/kw.h"
#include "testutil.h"

static int64_t parse_ok(const char *s)
{
    int64_t ms = -1;
    char err[128];
    assert_int_equal(kw_duration_parse(s, strlen(s), &ms, err, sizeof(err)), KW_OK);
    return ms;
}

static void test_units(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("250ms"), 250);
    assert_int_equal(parse_ok("30s"), 30000);
    assert_int_equal(parse_ok("5m"), 300000);
    assert_int_equal(parse_ok("1h"), 3600000);
    assert_int_equal(parse_ok("1m30s"), 90000);
    assert_int_equal(parse_ok("1.5s"), 1500);
    assert_int_equal(parse_ok("0s"), 0);
}

static void test_invalid(void **state)
{
    (void)state;
    const char *bad[] = {"", "30", "s", "30x", "-5s", "1.s5", "5 s", "ms", "1h1"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int64_t ms;
        char err[128];
        assert_int_equal(kw_duration_parse(bad[i], strlen(bad[i]), &ms, err, sizeof(err)),
                         KW_ERROR);
    }
    int64_t ms;
    char err[128];
    kw_duration_parse("30x", 3, &ms, err, sizeof(err));
    assert_string_equal(err,
                        "invalid duration \"30x\" (use a number and a unit: 250ms, 30s, 5m, 1h)");
    kw_duration_parse("99999999h", 9, &ms, err, sizeof(err));
    assert_string_equal(err, "duration too long");
}

static void test_format_round_trip(void **state)
{
    (void)state;
    const int64_t values[] = {0, 1, 250, 1000, 60000, 90000, 3600000, 3723004};
    const char *text[] = {"0s", "1ms", "250ms", "1s", "1m", "1m30s", "1h", "1h2m3s4ms"};
    for (size_t i = 0; i < sizeof(values) / sizeof(values[0]); i++) {
        char out[64];
        kw_duration_format(values[i], out, sizeof(out));
        assert_string_equal(out, text[i]);
        assert_int_equal(parse_ok(out), values[i]);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_units),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_format_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
