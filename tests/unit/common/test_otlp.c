/* OTLP span encoding (knoway/otlp.h): JSON that any JSON parser takes whatever the values
 * hold, protobuf whose fields sit where opentelemetry-proto says (read back here with a
 * minimal wire-format reader; the integration tests decode it with OpenTelemetry JS). */
#include <stdlib.h>
#include <string.h>

#include "knoway/arena.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/otlp.h"
#include "testutil.h"

static const char TRACE[] = "4bf92f3577b34da6a3ce929d0e0e4736";

static struct kw_otlp_item *sample(void)
{
    struct kw_span s;
    kw_span_init(&s, TRACE, "00f067aa0ba902b7", "1111111111111111", "chat \"m\"", KW_SPAN_SERVER);
    s.start_ns = 1700000000000000001LL;
    s.end_ns = 1700000000000000999LL;
    s.error = true;
    kw_span_str(&s, "k.str", "quote \" backslash \\ newline \n tab \t é \x01 \xff");
    kw_span_str(&s, "k.empty", ""); /* left out */
    kw_span_int(&s, "k.int", -42);
    kw_span_double(&s, "k.double", 0.5);
    const char *const arr[] = {"stop", "length"};
    kw_span_strs(&s, "k.arr", arr, 2);
    kw_span_event(&s, "gen_ai.first_token", 1700000000000000500LL);
    struct kw_otlp_item *it = kw_otlp_item_new(&s);
    kw_span_cleanup(&s);
    return it;
}

static void test_json(void **state)
{
    (void)state;
    struct kw_otlp_item *it = sample();
    struct kw_buf b;
    kw_buf_init(&b, 1 << 20);
    assert_int_equal(kw_otlp_encode(KW_OTLP_JSON, "svc", it, &b), KW_OK);
    struct kw_arena *a = kw_arena_new(1 << 20);
    struct kw_node *root;
    char err[128];
    assert_int_equal(kw_json_parse(a, b.data, b.len, &root, err, sizeof(err)), KW_OK);
    struct kw_node *rs = kw_node_get(root, "resourceSpans")->items[0];
    struct kw_node *span = kw_node_get(kw_node_get(rs, "scopeSpans")->items[0], "spans")->items[0];
    assert_string_equal(kw_node_get(span, "traceId")->str, TRACE);
    assert_string_equal(kw_node_get(span, "name")->str, "chat \"m\"");
    assert_string_equal(kw_node_get(span, "startTimeUnixNano")->str, "1700000000000000001");
    assert_int_equal(kw_node_get(span, "kind")->i, 2);
    assert_int_equal(kw_node_get(kw_node_get(span, "status"), "code")->i, 2);
    struct kw_node *attrs = kw_node_get(span, "attributes");
    assert_int_equal(attrs->n, 4); /* the empty string is left out */
    struct kw_node *v = kw_node_get(attrs->items[0], "value");
    /* escaped and valid UTF-8 (the invalid byte replaced) */
    assert_string_equal(kw_node_get(v, "stringValue")->str,
                        "quote \" backslash \\ newline \n tab \t é \x01 \xef\xbf\xbd");
    assert_string_equal(kw_node_get(kw_node_get(attrs->items[1], "value"), "intValue")->str, "-42");
    struct kw_node *arr =
        kw_node_get(kw_node_get(kw_node_get(attrs->items[3], "value"), "arrayValue"), "values");
    assert_int_equal(arr->n, 2);
    assert_string_equal(kw_node_get(arr->items[1], "stringValue")->str, "length");
    struct kw_node *ev = kw_node_get(span, "events")->items[0];
    assert_string_equal(kw_node_get(ev, "name")->str, "gen_ai.first_token");
    assert_string_equal(kw_node_get(ev, "timeUnixNano")->str, "1700000000000000500");
    kw_arena_free(a);
    kw_buf_cleanup(&b);
    free(it);
}

/* ---- a minimal protobuf reader ------------------------------------------------------------ */

struct pb {
    const unsigned char *p, *end;
};

static uint64_t varint(struct pb *r)
{
    uint64_t v = 0;
    for (int shift = 0; r->p < r->end; shift += 7) {
        unsigned char c = *r->p++;
        v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80))
            break;
    }
    return v;
}

/* The next field of r: its number, wire type and (length-delimited) bytes or value. */
static bool field(struct pb *r, unsigned *num, unsigned *wt, struct pb *sub, uint64_t *val)
{
    if (r->p >= r->end)
        return false;
    uint64_t tag = varint(r);
    *num = (unsigned)(tag >> 3);
    *wt = (unsigned)(tag & 7);
    if (*wt == 0) {
        *val = varint(r);
    } else if (*wt == 1) {
        memcpy(val, r->p, 8);
        r->p += 8;
    } else if (*wt == 2) {
        uint64_t n = varint(r);
        sub->p = r->p;
        sub->end = r->p + n;
        r->p += n;
    } else {
        fail_msg("unexpected wire type %u", *wt);
    }
    return true;
}

/* The first length-delimited field numbered num. */
static struct pb child(struct pb r, unsigned num)
{
    unsigned n, wt;
    struct pb sub = {NULL, NULL};
    uint64_t v;
    while (field(&r, &n, &wt, &sub, &v))
        if (n == num && wt == 2)
            return sub;
    fail_msg("no field %u", num);
    return sub;
}

static void test_protobuf(void **state)
{
    (void)state;
    struct kw_otlp_item *it = sample();
    struct kw_buf b;
    kw_buf_init(&b, 1 << 20);
    assert_int_equal(kw_otlp_encode(KW_OTLP_PROTOBUF, "svc", it, &b), KW_OK);
    struct pb req = {(const unsigned char *)b.data, (const unsigned char *)b.data + b.len};
    struct pb rs = child(req, 1);      /* ResourceSpans */
    struct pb resource = child(rs, 1); /* Resource */
    struct pb kv = child(resource, 1); /* KeyValue */
    struct pb key = child(kv, 1);
    assert_memory_equal(key.p, "service.name", 12);
    struct pb ss = child(rs, 2);                   /* ScopeSpans */
    struct pb scope_name = child(child(ss, 1), 1); /* InstrumentationScope.name */
    assert_memory_equal(scope_name.p, "knoway", 6);
    struct pb span = child(ss, 2);
    struct pb tid = child(span, 1);
    assert_int_equal(tid.end - tid.p, 16);
    assert_int_equal(tid.p[0], 0x4b);
    assert_int_equal(child(span, 2).end - child(span, 2).p, 8);
    assert_int_equal(child(span, 4).end - child(span, 4).p, 8); /* parent */
    struct pb name = child(span, 5);
    assert_memory_equal(name.p, "chat \"m\"", 8);
    unsigned n, wt, nattrs = 0, nevents = 0;
    uint64_t v, kind = 0, start = 0;
    struct pb sub;
    struct pb walk = span;
    while (field(&walk, &n, &wt, &sub, &v)) {
        if (n == 6)
            kind = v;
        if (n == 7)
            start = v;
        nattrs += n == 9;
        nevents += n == 11;
    }
    assert_int_equal(kind, 2);
    assert_true(start == 1700000000000000001ULL);
    assert_int_equal(nattrs, 4);
    assert_int_equal(nevents, 1);
    /* the int attribute: KeyValue{key, AnyValue{3: varint}} (two's complement, 10 bytes) */
    walk = span;
    int k = 0;
    while (field(&walk, &n, &wt, &sub, &v)) {
        if (n != 9 || k++ != 1)
            continue;
        struct pb any = child(sub, 2), f = any;
        assert_true(field(&f, &n, &wt, &sub, &v));
        assert_int_equal(n, 3);
        assert_true((int64_t)v == -42);
    }
    struct pb status = child(span, 15);
    assert_true(field(&status, &n, &wt, &sub, &v));
    assert_int_equal(n, 3);
    assert_int_equal(v, 2);
    kw_buf_cleanup(&b);
    free(it);
}

static void test_random_ids(void **state)
{
    (void)state;
    char a[33], b[33];
    kw_trace_random_hex(a, 16);
    kw_trace_random_hex(b, 16);
    assert_int_equal(strlen(a), 32);
    assert_string_not_equal(a, b);
    for (size_t i = 0; i < 32; i++)
        assert_non_null(strchr("0123456789abcdef", a[i]));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json),
        cmocka_unit_test(test_protobuf),
        cmocka_unit_test(test_random_ids),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
