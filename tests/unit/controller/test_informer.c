/* The informer's pure parts: the watch stream split into lines at every byte boundary,
 * watch events (ADDED..ERROR with its code), the store, and the backoff schedule. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "informer.h"
#include "knoway/kw.h"
#include "testutil.h"

static const char STREAM[] =
    "{\"type\":\"ADDED\",\"object\":{\"kind\":\"LLMRoute\",\"metadata\":{\"name\":\"a\","
    "\"namespace\":\"ns\",\"resourceVersion\":\"10\"}}}\n"
    "{\"type\":\"BOOKMARK\",\"object\":{\"kind\":\"LLMRoute\",\"metadata\":{\"resourceVersion\":"
    "\"12\"}}}\n"
    "{\"type\":\"DELETED\",\"object\":{\"kind\":\"LLMRoute\",\"metadata\":{\"name\":\"a\","
    "\"namespace\":\"ns\",\"resourceVersion\":\"13\"}}}\r\n"
    "\n"
    "{\"type\":\"ERROR\",\"object\":{\"kind\":\"Status\",\"code\":410,\"message\":\"too old "
    "resource version: 1 (13)\",\"reason\":\"Expired\"}}\n";

struct seen {
    struct kw_buf text;
    struct kw_arena *a;
};

static int on_line(void *ud, const char *line, size_t len)
{
    struct seen *s = ud;
    if (len == 0 || (len == 1 && line[0] == '\r'))
        return KW_OK;
    struct ctl_event ev;
    char err[256];
    kw_arena_reset(s->a);
    if (ctl_event_parse(s->a, line, len, &ev, err, sizeof(err)) != KW_OK) {
        kw_buf_printf(&s->text, "bad:%s\n", err);
        return KW_OK;
    }
    kw_buf_printf(&s->text, "%d %s/%s rv=%s code=%ld %s\n", (int)ev.type, ev.ns, ev.name,
                  ev.resource_version, ev.code, ev.message != NULL ? ev.message : "-");
    return KW_OK;
}

static char *parse(const char *in, size_t len, size_t cut1, size_t cut2)
{
    struct seen s = {.a = kw_arena_new(1 << 20)};
    kw_buf_init(&s.text, 1 << 20);
    struct ctl_lines l;
    ctl_lines_init(&l, 4096, on_line, &s);
    assert_int_equal(ctl_lines_feed(&l, in, cut1), KW_OK);
    assert_int_equal(ctl_lines_feed(&l, in + cut1, cut2 - cut1), KW_OK);
    assert_int_equal(ctl_lines_feed(&l, in + cut2, len - cut2), KW_OK);
    ctl_lines_cleanup(&l);
    kw_arena_free(s.a);
    char *out = strdup(s.text.data != NULL ? s.text.data : "");
    kw_buf_cleanup(&s.text);
    return out;
}

static void test_events(void **state)
{
    char *got = parse(STREAM, strlen(STREAM), 0, 0);
    assert_string_equal(got, "0 ns/a rv=10 code=0 -\n"
                             "3 / rv=12 code=0 -\n"
                             "2 ns/a rv=13 code=0 -\n"
                             "4 / rv= code=410 too old resource version: 1 (13)\n");
    free(got);
}

/* Events split across reads at any two points parse the same as in one read. */
static void test_every_split_is_the_same(void **state)
{
    size_t len = strlen(STREAM);
    char *want = parse(STREAM, len, 0, 0);
    for (size_t i = 0; i <= len; i++)
        for (size_t j = i; j <= len; j += 7) {
            char *got = parse(STREAM, len, i, j);
            assert_string_equal(got, want);
            free(got);
        }
    free(want);
}

static void test_line_limit(void **state)
{
    struct seen s = {.a = kw_arena_new(1 << 20)};
    kw_buf_init(&s.text, 1 << 20);
    struct ctl_lines l;
    ctl_lines_init(&l, 64, on_line, &s);
    char big[100];
    memset(big, 'x', sizeof(big));
    assert_int_equal(ctl_lines_feed(&l, big, 50), KW_OK);
    assert_int_equal(ctl_lines_feed(&l, big, 50), KW_ERROR);
    ctl_lines_cleanup(&l);
    kw_arena_free(s.a);
    kw_buf_cleanup(&s.text);
}

static void test_bad_events(void **state)
{
    struct kw_arena *a = kw_arena_new(1 << 20);
    struct ctl_event ev;
    char err[256];
    const char *unknown = "{\"type\":\"RENAMED\",\"object\":{}}";
    assert_int_equal(ctl_event_parse(a, unknown, strlen(unknown), &ev, err, sizeof(err)), KW_ERROR);
    assert_string_equal(err, "watch event: unknown type \"RENAMED\"");
    const char *noobj = "{\"type\":\"ADDED\"}";
    assert_int_equal(ctl_event_parse(a, noobj, strlen(noobj), &ev, err, sizeof(err)), KW_ERROR);
    assert_string_equal(err, "watch event ADDED: no object");
    assert_int_equal(ctl_event_parse(a, "{\"type\":", 8, &ev, err, sizeof(err)), KW_ERROR);
    kw_arena_free(a);
}

struct names {
    char **v;
    size_t n;
};

static void put_all(void *arg)
{
    const struct names *ns = arg;
    struct ctl_store s;
    ctl_store_init(&s);
    char key[300];
    for (size_t i = 0; i < ns->n; i++) {
        snprintf(key, sizeof(key), "default/%s", ns->v[i]);
        assert_true(ctl_store_put(&s, key, "{}", 2));
    }
    for (size_t i = 0; i < ns->n; i++) {
        snprintf(key, sizeof(key), "default/%s", ns->v[i]);
        assert_non_null(ctl_store_get(&s, key));
    }
    ctl_store_cleanup(&s);
}

/* A tenant naming 5,000 objects so that "default/NAME" shares the low bits of the public
 * FNV-1a hash the store once used (tests/tools/fnv_collide.c) costs what ordinary names
 * cost: stores are keyed by a keyed hash. */
static void test_store_linear_in_colliding_names(void **state)
{
    (void)state;
    struct names bad, plain;
    bad.v = kwt_data_lines("fnv-store-names.txt", &bad.n);
    plain.n = bad.n;
    plain.v = calloc(plain.n + 1, sizeof(char *));
    for (size_t i = 0; i < plain.n; i++) {
        plain.v[i] = malloc(32);
        snprintf(plain.v[i], 32, "o%07zu", i);
    }
    kwt_assert_linear("a store of 5,000 names colliding under FNV-1a vs ordinary names", put_all,
                      &bad, put_all, &plain, 8.0);
    kwt_lines_free(bad.v);
    kwt_lines_free(plain.v);
}

static void test_store(void **state)
{
    struct ctl_store s;
    ctl_store_init(&s);
    char key[32], val[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "ns/o%d", i);
        snprintf(val, sizeof(val), "{\"v\":%d}", i);
        assert_true(ctl_store_put(&s, key, val, strlen(val)));
    }
    assert_int_equal(s.n, 1000);
    assert_false(ctl_store_put(&s, "ns/o7", "{\"v\":7}", 7)); /* same text: no change */
    assert_true(ctl_store_put(&s, "ns/o7", "{\"v\":8}", 7));
    assert_string_equal(ctl_store_get(&s, "ns/o7")->json, "{\"v\":8}");
    assert_true(ctl_store_delete(&s, "ns/o7"));
    assert_false(ctl_store_delete(&s, "ns/o7"));
    assert_null(ctl_store_get(&s, "ns/o7"));
    size_t i, n = 0;
    for (const struct ctl_object *o = ctl_store_first(&s, &i); o != NULL;
         o = ctl_store_next(&s, o, &i))
        n++;
    assert_int_equal(n, 999);
    ctl_store_cleanup(&s);
}

static void test_backoff(void **state)
{
    int64_t delay, b = 0;
    const int64_t want[] = {800, 1600, 3200, 6400, 12800, 25600, 30000, 30000};
    for (size_t i = 0; i < KW_ARRAY_LEN(want); i++) {
        b = ctl_backoff_next(b, 0, &delay);
        assert_int_equal(b, want[i]);
        assert_int_equal(delay, want[i] / 2); /* jitter 0: the low end */
        ctl_backoff_next(i == 0 ? 0 : want[i - 1], 0xffffffffu, &delay);
        assert_true(delay >= want[i] / 2 && delay < want[i] + want[i] / 2);
    }
}

struct chunked {
    const char *text;
    size_t len, step;
};

static int count_line(void *ud, const char *line, size_t len)
{
    (void)line, (void)len;
    (*(size_t *)ud)++;
    return KW_OK;
}

static int lines_piece(void *ud, const char *p, size_t n)
{
    return ctl_lines_feed(ud, p, n);
}

static void split_chunked(void *arg)
{
    const struct chunked *c = arg;
    struct ctl_lines l;
    size_t n = 0;
    ctl_lines_init(&l, 16u << 20, count_line, &n);
    assert_int_equal(kwt_feed_chunked(c->text, c->len, c->step, lines_piece, &l), KW_OK);
    assert_true(n > 0);
    ctl_lines_cleanup(&l);
}

/* A watch event of 8 MiB in 4 KiB reads costs what 128 events of 64 KiB cost in the same
 * reads (both through the partial-line buffer): a rescan or recopy of what is held would
 * cost the big line its length squared, the short lines 128 times less. */
static void test_linear_in_line_length(void **state)
{
    (void)state;
    size_t len = 8u << 20, line = 64u << 10;
    char *big = malloc(len), *small = malloc(len);
    memset(big, 'x', len - 1);
    big[len - 1] = '\n';
    memset(small, 'y', len);
    for (size_t off = line - 1; off < len; off += line)
        small[off] = '\n';
    struct chunked a = {big, len, 4096}, b = {small, len, 4096};
    /* measured: this splitter 1.6-2.0x; one that rescans the held line on each read 150x
     * (with eight 1 MiB lines as the baseline it was 11-16x: the baseline rescanned too,
     * and a 25x bound could not fail). The bound leaves room for a loaded machine (the
     * big line's buffer grows by doubling, page faults included: 7.6x was seen under load) */
    kwt_assert_linear("one 8 MiB watch line vs 128 lines of 64 KiB", split_chunked, &a,
                      split_chunked, &b, 25.0);
    free(big);
    free(small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_store_linear_in_colliding_names),
        cmocka_unit_test(test_every_split_is_the_same),
        cmocka_unit_test(test_line_limit),
        cmocka_unit_test(test_bad_events),
        cmocka_unit_test(test_store),
        cmocka_unit_test(test_backoff),
        cmocka_unit_test(test_linear_in_line_length),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
