#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/diag.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/yaml.h"
#include "testutil.h"

struct parsed {
    struct kw_arena *a;
    struct kw_diag diag;
    struct kw_node **docs;
    size_t ndocs;
    int rc;
};

static void parse(struct parsed *p, const char *text)
{
    p->a = kw_arena_new(1 << 24);
    kw_diag_init(&p->diag);
    p->rc = kw_yaml_parse(p->a, "t.yaml", text, strlen(text), &p->docs, &p->ndocs, &p->diag);
}

static void done(struct parsed *p)
{
    kw_diag_cleanup(&p->diag);
    kw_arena_free(p->a);
}

static char *first_error(struct parsed *p)
{
    struct kw_buf b;
    kw_buf_init(&b, 4096);
    assert_true(p->diag.n > 0);
    kw_diag_format(&p->diag.entries[0], &b);
    return b.data;
}

/* The canonical JSON of document i. */
static char *json_of(struct parsed *p, size_t i)
{
    struct kw_buf b;
    kw_buf_init(&b, 1 << 20);
    assert_int_equal(kw_json_write_canonical(p->docs[i], &b), KW_OK);
    return b.data;
}

static void test_core_schema(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "s: hello\nq: \"123\"\ni: 42\nneg: -7\nhex: 0x1F\noct: 0o17\nf: 1.5\ne: 1e3\n"
              "b: true\nB: False\nn: null\nt: ~\nempty:\nlist: [a, 2]\ninf: .inf\n"
              "big: 99999999999999999999\ndate: 2024-02-01\ntagged: !!str 5\n");
    assert_int_equal(p.rc, KW_OK);
    assert_int_equal(p.ndocs, 1);
    char *j = json_of(&p, 0);
    assert_string_equal(j,
                        "{\"B\":false,\"b\":true,\"big\":1e+20,\"date\":\"2024-02-01\",\"e\":1e+03,"
                        "\"empty\":null,\"f\":1.5,\"hex\":31,\"i\":42,\"inf\":\".inf\","
                        "\"list\":[\"a\",2],\"n\":null,\"neg\":-7,\"oct\":15,\"q\":\"123\","
                        "\"s\":\"hello\",\"t\":null,\"tagged\":\"5\"}");
    free(j);
    assert_int_equal(kw_node_get(p.docs[0], "q")->type, KW_NODE_STRING);
    assert_int_equal(kw_node_get(p.docs[0], "i")->type, KW_NODE_INT);
    done(&p);
}

static void test_positions_and_documents(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "---\na: 1\n---\n# empty\n---\nb:\n  c: [x, y]\n...\n");
    assert_int_equal(p.rc, KW_OK);
    assert_int_equal(p.ndocs, 2); /* the empty document is skipped */
    const struct kw_node *c = kw_node_get(kw_node_get(p.docs[1], "b"), "c");
    assert_non_null(c);
    assert_int_equal(c->line, 7);
    assert_int_equal(c->col, 6);
    assert_int_equal(c->items[1]->line, 7);
    assert_int_equal(c->items[1]->col, 10);
    assert_int_equal(p.docs[1]->pairs[0].key->line, 6);
    assert_int_equal(p.docs[1]->pairs[0].key->col, 1);
    done(&p);
}

static void test_syntax_error_location(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a: 1\nb: [1, 2\nc: 3\n");
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:3:2: YAML syntax error: did not find expected ',' or ']' "
                           "while parsing a flow sequence");
    free(e);
    done(&p);
}

static void test_duplicate_key(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a: 1\nb: 2\na: 3\n");
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:3:1: duplicate key \"a\" (first at line 1:1)");
    free(e);
    done(&p);
}

static char *yaml_many(size_t n, bool map)
{
    size_t cap = n * 16 + 64;
    char *s = malloc(cap);
    size_t off = 0;
    for (size_t i = 0; i < n; i++)
        off += (size_t)snprintf(s + off, cap - off, map ? "k%07zu: 0\n" : "- k%07zu\n- 0\n", i);
    return s;
}

static void parse_yaml_ok(void *text)
{
    struct parsed p;
    parse(&p, text);
    assert_int_equal(p.rc, KW_OK);
    done(&p);
}

/* A map of many keys parses in time linear in its size (the duplicate check hashes). */
static void test_linear_in_keys(void **state)
{
    (void)state;
    char *map = yaml_many(50000, true), *seq = yaml_many(50000, false);
    kwt_assert_linear("YAML map of 50,000 keys vs a sequence", parse_yaml_ok, map, parse_yaml_ok,
                      seq, 8.0);
    free(map);
    free(seq);
    struct parsed p;
    parse(&p, "a: 1\nb: 2\nc: 3\nd: 4\ne: 5\nf: 6\ng: 7\nh: 8\ni: 9\nj: 10\nd: 11\n");
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:11:1: duplicate key \"d\" (first at line 4:1)");
    free(e);
    done(&p);
}

/* Keys chosen to share a slot under the public FNV-1a hash (test_json explains). */
static void test_linear_in_colliding_keys(void **state)
{
    (void)state;
    size_t n;
    char **keys = kwt_data_lines("fnv-json-keys.txt", &n);
    char *text[2];
    for (int t = 0; t < 2; t++) {
        size_t cap = n * 20 + 64, off = 0;
        char *s = malloc(cap);
        for (size_t i = 0; i < n; i++)
            off +=
                (size_t)snprintf(s + off, cap - off, t == 0 ? "%s: 0\n" : "- %s\n- 0\n", keys[i]);
        text[t] = s;
    }
    kwt_assert_linear("YAML map of 5,000 keys colliding under FNV-1a vs a sequence", parse_yaml_ok,
                      text[0], parse_yaml_ok, text[1], 8.0);
    free(text[0]);
    free(text[1]);
    kwt_lines_free(keys);
}

static void test_aliases_refused(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a: &x [1, 2]\nb: *x\n");
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:1:4: YAML anchors (&name) are not supported");
    free(e);
    done(&p);
}

static void test_nesting_limit(void **state)
{
    (void)state;
    char deep[300];
    memset(deep, '[', 100);
    memset(deep + 100, ']', 100);
    deep[200] = '\0';
    struct parsed p;
    parse(&p, deep);
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:1:65: nesting deeper than 64 levels");
    free(e);
    done(&p);
}

static void test_unknown_tag(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "a: !custom 5\n");
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:1:4: unsupported YAML tag \"!custom\"");
    free(e);
    done(&p);
}

static void test_complex_key(void **state)
{
    (void)state;
    struct parsed p;
    parse(&p, "? [a]\n: 1\n");
    assert_int_equal(p.rc, KW_ERROR);
    char *e = first_error(&p);
    assert_string_equal(e, "t.yaml:1:3: a map key must be a scalar");
    free(e);
    done(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_core_schema),
        cmocka_unit_test(test_positions_and_documents),
        cmocka_unit_test(test_syntax_error_location),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_aliases_refused),
        cmocka_unit_test(test_nesting_limit),
        cmocka_unit_test(test_unknown_tag),
        cmocka_unit_test(test_complex_key),
        cmocka_unit_test(test_linear_in_keys),
        cmocka_unit_test(test_linear_in_colliding_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
