#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/json.h"
#include "knoway/kw.h"
#include "testutil.h"

static char *canon(const char *in, int *rc, char *err, size_t errlen)
{
    struct kw_arena *a = kw_arena_new(1 << 24);
    struct kw_node *n;
    *rc = kw_json_parse(a, in, strlen(in), &n, err, errlen);
    char *out = NULL;
    if (*rc == KW_OK) {
        struct kw_buf b;
        kw_buf_init(&b, 1 << 20);
        assert_int_equal(kw_json_write_canonical(n, &b), KW_OK);
        out = b.data;
    }
    kw_arena_free(a);
    return out;
}

static void test_types_and_canonical(void **state)
{
    (void)state;
    int rc;
    char err[256];
    char *out =
        canon(" { \"z\": [1, 2.50, -3e2, true, null], \"a\": {\"y\": \"\\u00e9\\n\", \"b\": false},"
              " \"big\": 123456789012345678901234 } ",
              &rc, err, sizeof(err));
    assert_int_equal(rc, KW_OK);
    /* keys sorted at every level, numbers kept as written, no white space */
    assert_string_equal(
        out, "{\"a\":{\"b\":false,\"y\":\"\xc3\xa9\\n\"},\"big\":123456789012345678901234,"
             "\"z\":[1,2.50,-3e2,true,null]}");
    int rc2;
    char *again = canon(out, &rc2, err, sizeof(err));
    assert_string_equal(again, out); /* canonical form is a fixed point */
    free(out);
    free(again);
}

static void test_errors(void **state)
{
    (void)state;
    int rc;
    char err[256];
    assert_null(canon("{\"a\":1,\"a\":2}", &rc, err, sizeof(err)));
    assert_int_equal(rc, KW_ERROR);
    assert_string_equal(err, "duplicate key \"a\"");
    assert_null(canon("{\"a\":", &rc, err, sizeof(err)));
    assert_int_equal(rc, KW_ERROR);
    assert_non_null(strstr(err, "invalid JSON at byte"));
    assert_null(canon("", &rc, err, sizeof(err)));
    assert_int_equal(rc, KW_ERROR);
    assert_string_equal(err, "empty JSON document");
}

static void test_depth(void **state)
{
    (void)state;
    char *deep = malloc(201);
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    deep[200] = '\0';
    int rc;
    char err[256];
    assert_null(canon(deep, &rc, err, sizeof(err)));
    assert_string_equal(err, "nesting deeper than 64 levels");
    free(deep);
}

static void test_invalid_utf8(void **state)
{
    (void)state;
    int rc;
    char err[256];
    assert_null(canon("\"\xff\xfe\"", &rc, err, sizeof(err)));
    assert_int_equal(rc, KW_ERROR);
}

/* n keys "k0000001".. as an object, or the same text as an array: the baseline. */
static char *many(size_t n, bool object, const char *dup)
{
    size_t cap = n * 16 + 64;
    char *s = malloc(cap);
    size_t off = 0;
    s[off++] = object ? '{' : '[';
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, "%s\"k%07zu\"%c0", i > 0 ? "," : "", i,
                                object ? ':' : ',');
    if (dup != NULL)
        off += (size_t)snprintf(s + off, cap - off, ",\"%s\"%c1", dup, object ? ':' : ',');
    s[off++] = object ? '}' : ']';
    s[off] = '\0';
    return s;
}

static void parse_ok(void *text)
{
    struct kw_arena *a = kw_arena_new(1u << 28);
    struct kw_node *n;
    char err[256];
    assert_int_equal(kw_json_parse(a, text, strlen(text), &n, err, sizeof(err)), KW_OK);
    kw_arena_free(a);
}

/* Regression: the duplicate-key check compared each key with every earlier one, so a
 * 480 KB body of 40,000 keys stalled a worker for 15 s. An object of the most keys a
 * container may hold parses in time linear in its size: measured against an array of the
 * same text, not against a clock. */
static void test_linear_in_keys(void **state)
{
    (void)state;
    size_t n = 99999; /* KW_MAX_CONTAINER_ITEMS - 1: the array holds 2n items */
    char *obj = many(n / 2, true, NULL), *arr = many(n / 2, false, NULL);
    kwt_assert_linear("JSON object of 49,999 keys vs an array of the same text", parse_ok, obj,
                      parse_ok, arr, 8.0);
    free(obj);
    free(arr);
    /* the hashed check still finds a duplicate far from its first occurrence */
    obj = many(50000, true, "k0000007");
    int rc;
    char err[256];
    assert_null(canon(obj, &rc, err, sizeof(err)));
    assert_string_equal(err, "duplicate key \"k0000007\"");
    free(obj);
}

/* Hash flooding: keys chosen to share one slot under the public FNV-1a hash the key set once
 * used (tests/tools/fnv_collide.c) parse as fast as ordinary ones, measured against an array
 * of the same text. With the unkeyed hash this object took about 60 times the array's time. */
static void test_linear_in_colliding_keys(void **state)
{
    (void)state;
    size_t n;
    char **keys = kwt_data_lines("fnv-json-keys.txt", &n);
    assert_true(n >= 5000);
    char *text[2];
    for (int t = 0; t < 2; t++) {
        size_t cap = n * 16 + 64, off = 0;
        char *s = malloc(cap);
        s[off++] = t == 0 ? '{' : '[';
        for (size_t i = 0; i < n; i++)
            off += (size_t)snprintf(s + off, cap - off, "%s\"%s\"%c0", i > 0 ? "," : "", keys[i],
                                    t == 0 ? ':' : ',');
        s[off++] = t == 0 ? '}' : ']';
        s[off] = '\0';
        text[t] = s;
    }
    kwt_assert_linear("JSON object of 5,000 keys colliding under FNV-1a vs an array", parse_ok,
                      text[0], parse_ok, text[1], 8.0);
    free(text[0]);
    free(text[1]);
    kwt_lines_free(keys);
}

/* Strings are escaped as yajl escapes them, and the output is always valid UTF-8. */
static void test_write_string(void **state)
{
    (void)state;
    struct kw_buf b;
    kw_buf_init(&b, 4096);
    static const char in[] =
        "a\"b\\c\n\t\x01/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|\xff\xc3|\xed\xa0\x80";
    assert_int_equal(kw_json_write_string(&b, in, sizeof(in) - 1), KW_OK);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\n\\t\\u0001/\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|"
                                "\\ufffd\\ufffd|\\ufffd\\ufffd\\ufffd\"");
    /* what it writes parses back */
    struct kw_arena *a = kw_arena_new(1 << 20);
    struct kw_node *n = NULL;
    char err[128];
    assert_int_equal(kw_json_parse(a, b.data, b.len, &n, err, sizeof(err)), KW_OK);
    assert_int_equal(n->type, KW_NODE_STRING);
    kw_arena_free(a);
    kw_buf_cleanup(&b);
}

/* The usage of a non-stream answer is found without parsing the answer: only the
 * top-level member counts, never one inside a string or a nested object. */
static void test_top_object_scan(void **state)
{
    (void)state;
    static const struct {
        const char *json, *want; /* want: the span, or NULL for none */
    } cases[] = {
        {"{\"id\":\"x\",\"usage\":{\"prompt_tokens\":5}}", "{\"prompt_tokens\":5}"},
        {" { \"usage\" : { \"a\" : [1, {\"b\": \"}\"}] } , \"z\": 1 } ",
         "{ \"a\" : [1, {\"b\": \"}\"}] }"},
        /* in a string, escaped quotes and all */
        {"{\"content\":\"say \\\"usage\\\": {\\\"x\\\":1}\",\"n\":2}", NULL},
        {"{\"choices\":[{\"usage\":{\"x\":1}}],\"object\":\"c\"}", NULL},
        {"{\"meta\":{\"usage\":{\"x\":1}}}", NULL},
        {"{\"usage\":null}", NULL},
        {"{\"usagex\":{}}", NULL},
        {"{\"a\":\"\\\\\",\"usage\":{}}", "{}"}, /* a string ending in a backslash */
        /* the usage is whole though the answer is cut after it: it is what the upstream
         * says was used (the answer is relayed as it came either way) */
        {"{\"usage\":{\"x\":1}", "{\"x\":1}"},
        {"{\"usage\":{\"x\":\"1}}", NULL},
        {"[{\"usage\":{}}]", NULL},
        {"", NULL},
        {"{\"a\" 1, \"usage\":{}}", NULL},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(cases); i++) {
        size_t at = 0, end = 0;
        bool found = kw_json_top_object(cases[i].json, strlen(cases[i].json), "usage", &at, &end);
        if (cases[i].want == NULL) {
            if (found)
                fail_msg("case %zu: found %.*s", i, (int)(end - at), cases[i].json + at);
            continue;
        }
        assert_true(found);
        assert_int_equal(end - at, strlen(cases[i].want));
        assert_memory_equal(cases[i].json + at, cases[i].want, end - at);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_types_and_canonical),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_write_string),
        cmocka_unit_test(test_linear_in_keys),
        cmocka_unit_test(test_linear_in_colliding_keys),
        cmocka_unit_test(test_top_object_scan),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
