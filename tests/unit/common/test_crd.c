/* crds/ and the C parser agree: for every object of each CRD's spec schema, the fields the
 * schema lists are exactly the fields the parser accepts there (both directions), read from
 * the parser itself through its fields hook while it decodes a document built from the
 * schema with every field present. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "decode.h"
#include "knoway/config.h"
#include "knoway/kw.h"
#include "knoway/yaml.h"
#include "testutil.h"

#define MAX_SEEN 256

struct seen {
    char path[MAX_SEEN][256];
    char fields[MAX_SEEN][1024]; /* ",a,b,c," */
    size_t n;
};

/* "spec.backendRefs[3].x" -> "spec.backendRefs[].x" */
static void normalize(const char *in, char *out, size_t len)
{
    size_t o = 0;
    for (const char *p = in; *p != '\0' && o + 1 < len; p++) {
        out[o++] = *p;
        if (*p == '[') {
            while (p[1] != '\0' && p[1] != ']')
                p++;
        }
    }
    out[o] = '\0';
}

static void on_fields(void *ud, const char *path, const char *const *known)
{
    struct seen *s = ud;
    char norm[256];
    normalize(path, norm, sizeof(norm));
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->path[i], norm) == 0)
            return;
    assert_true(s->n < MAX_SEEN);
    snprintf(s->path[s->n], sizeof(s->path[0]), "%s", norm);
    size_t o = (size_t)snprintf(s->fields[s->n], sizeof(s->fields[0]), ",");
    for (; *known != NULL; known++)
        o += (size_t)snprintf(s->fields[s->n] + o, sizeof(s->fields[0]) - o, "%s,", *known);
    s->n++;
}

static const char *seen_fields(const struct seen *s, const char *path)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->path[i], path) == 0)
            return s->fields[i];
    return NULL;
}

static const struct kw_node *get(const struct kw_node *n, const char *key)
{
    const struct kw_node *v = kw_node_get(n, key);
    assert_non_null(v);
    return v;
}

/* A document with every field of the schema: objects with all properties, lists with one
 * item, the first enum value or a placeholder. Free-form maps stay empty. */
static struct kw_node *maximal(struct kw_arena *a, const struct kw_node *schema)
{
    const char *type = get(schema, "type")->str;
    const struct kw_node *en = kw_node_get(schema, "enum");
    if (strcmp(type, "object") == 0) {
        struct kw_node *m = kw_node_new(a, KW_NODE_MAP);
        const struct kw_node *props = kw_node_get(schema, "properties");
        for (size_t i = 0; props != NULL && i < props->n; i++)
            kw_node_map_put(a, m, props->pairs[i].key->str, maximal(a, props->pairs[i].val));
        return m;
    }
    if (strcmp(type, "array") == 0) {
        struct kw_node *s = kw_node_new(a, KW_NODE_SEQ);
        kw_node_seq_push(a, s, maximal(a, get(schema, "items")));
        return s;
    }
    if (strcmp(type, "integer") == 0)
        return kw_node_int(a, 1);
    if (strcmp(type, "boolean") == 0)
        return kw_node_bool(a, true);
    if (en != NULL)
        return kw_node_string(a, en->items[0]->str, en->items[0]->len);
    return kw_node_cstring(a, "x");
}

/* Compare every object of the schema (below spec) with what the parser accepted there. */
static int compare(const struct kw_node *schema, const char *path, const struct seen *s)
{
    int bad = 0;
    const char *type = get(schema, "type")->str;
    if (strcmp(type, "array") == 0) {
        char sub[256];
        snprintf(sub, sizeof(sub), "%s[]", path);
        return compare(get(schema, "items"), sub, s);
    }
    /* free-form maps (their keys are the user's: attributes, params) have no fields */
    if (strcmp(type, "object") != 0 ||
        kw_node_get(schema, "x-kubernetes-preserve-unknown-fields") ||
        kw_node_get(schema, "additionalProperties"))
        return 0;
    const struct kw_node *props = kw_node_get(schema, "properties");
    const char *parsed = seen_fields(s, path);
    if (parsed == NULL) {
        fprintf(stderr, "%s: in the schema, never read by the parser\n", path);
        return 1;
    }
    char schema_fields[1024] = ",";
    for (size_t i = 0; props != NULL && i < props->n; i++) {
        const char *k = props->pairs[i].key->str;
        strcat(schema_fields, k);
        strcat(schema_fields, ",");
        char needle[300];
        snprintf(needle, sizeof(needle), ",%s,", k);
        if (strstr(parsed, needle) == NULL) {
            fprintf(stderr, "%s.%s: in the schema, not accepted by the parser\n", path, k);
            bad++;
        }
        char sub[256];
        snprintf(sub, sizeof(sub), "%s.%s", path, k);
        bad += compare(props->pairs[i].val, sub, s);
    }
    /* the other direction: every field the parser accepts here is in the schema */
    char copy[1024];
    snprintf(copy, sizeof(copy), "%s", parsed);
    for (char *tok = strtok(copy, ","); tok != NULL; tok = strtok(NULL, ",")) {
        char needle[300];
        snprintf(needle, sizeof(needle), ",%s,", tok);
        if (strstr(schema_fields, needle) == NULL) {
            fprintf(stderr, "%s.%s: accepted by the parser, missing from the schema\n", path, tok);
            bad++;
        }
    }
    return bad;
}

static void check_crd(const char *file, const char *kind)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/crds/%s", KW_SOURCE_DIR, file);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    static char buf[1 << 20];
    size_t len = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    struct kw_arena *a = kw_arena_new(1 << 26);
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_node **docs;
    size_t ndocs;
    assert_int_equal(kw_yaml_parse(a, path, buf, len, &docs, &ndocs, &diag), KW_OK);
    assert_int_equal(ndocs, 1);
    const struct kw_node *crd = docs[0];
    assert_string_equal(get(get(get(crd, "spec"), "names"), "kind")->str, kind);
    const struct kw_node *version = get(get(crd, "spec"), "versions")->items[0];
    assert_string_equal(get(version, "name")->str, "v1alpha1");
    const struct kw_node *spec_schema =
        get(get(get(get(version, "schema"), "openAPIV3Schema"), "properties"), "spec");

    struct kw_node *doc = kw_node_new(a, KW_NODE_MAP);
    struct kw_node *meta = kw_node_new(a, KW_NODE_MAP);
    kw_node_map_put(a, meta, "name", kw_node_cstring(a, "a"));
    kw_node_map_put(a, doc, "apiVersion", kw_node_cstring(a, "llm.knoway.dev/v1alpha1"));
    kw_node_map_put(a, doc, "kind", kw_node_cstring(a, kind));
    kw_node_map_put(a, doc, "metadata", meta);
    kw_node_map_put(a, doc, "spec", maximal(a, spec_schema));

    struct seen *s = calloc(1, sizeof(*s));
    kw_decode_set_fields_hook(on_fields, s);
    struct kw_config *cfg = kw_config_new();
    kw_config_add_node(cfg, doc, "maximal.yaml", true);
    kw_decode_set_fields_hook(NULL, NULL);
    for (size_t i = 0; i < cfg->diag.n; i++) /* values may be odd; fields must all be known */
        assert_null(strstr(cfg->diag.entries[i].message, "unknown field"));
    assert_int_equal(compare(spec_schema, "spec", s), 0);
    kw_config_free(cfg);
    free(s);
    kw_diag_cleanup(&diag);
    kw_arena_free(a);
}

static void test_llmbackend(void **state)
{
    (void)state;
    check_crd("llm.knoway.dev_llmbackends.yaml", "LLMBackend");
}

static void test_llmroute(void **state)
{
    (void)state;
    check_crd("llm.knoway.dev_llmroutes.yaml", "LLMRoute");
}

static void test_llmconsumer(void **state)
{
    (void)state;
    check_crd("llm.knoway.dev_llmconsumers.yaml", "LLMConsumer");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_llmbackend),
        cmocka_unit_test(test_llmroute),
        cmocka_unit_test(test_llmconsumer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
