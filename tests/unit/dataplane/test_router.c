/* The routing table: which route a request matches, in which order, and /v1/models. */
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "router.h"
#include "testutil.h"

#define B(name)                                                                                    \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: " name           \
    "}\nspec: {provider: vLLM, upstream: {baseURL: \"http://x\"}}\n"
#define R(name, spec)                                                                              \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: " name             \
    "}\nspec: " spec "\n"

static const char CONFIG[] =
    B("b") R("exact", "{match: {models: [gpt-4o, llama-3-70b]}, backendRefs: [{name: b}]}")
        R("family", "{match: {models: [\"llama-3*\"]}, backendRefs: [{name: b}]}")
            R("llama", "{match: {models: [\"llama*\"]}, backendRefs: [{name: b}]}")
                R("all", "{match: {models: [\"*\"]}, backendRefs: [{name: b}]}")
                    R("tenant", "{match: {models: [gpt-4o], headers: [{name: x-tenant, value: "
                                "blue}]}, backendRefs: [{name: b}]}")
                        R("messages", "{match: {models: [gpt-4o], paths: [/v1/messages]}, "
                                      "backendRefs: [{name: b}]}");

static const char *tenant;
static const char *header(void *ud, const char *name)
{
    (void)ud;
    return strcmp(name, "x-tenant") == 0 ? tenant : NULL;
}

static struct dp_table *table(void)
{
    struct dp_table *t = dp_table_new(kwt_snapshot(CONFIG, NULL));
    assert_non_null(t);
    return t;
}

static const char *match(struct dp_table *t, const char *model, const char *path)
{
    const struct kw_route *r = dp_table_route(t, model, path, header, NULL);
    return r != NULL ? r->meta.name : "(none)";
}

static void test_order(void **state)
{
    (void)state;
    struct dp_table *t = table();
    const char *chat = "/v1/chat/completions";
    tenant = NULL;
    assert_string_equal(match(t, "gpt-4o", chat), "exact");
    assert_string_equal(match(t, "llama-3-70b", chat), "exact"); /* exact before any prefix */
    assert_string_equal(match(t, "llama-3-8b", chat), "family"); /* the longer prefix */
    assert_string_equal(match(t, "llama-2", chat), "llama");
    assert_string_equal(match(t, "mistral", chat), "all");
    /* more conditions first: a header or a path narrows a route and wins when it holds */
    tenant = "blue";
    assert_string_equal(match(t, "gpt-4o", chat), "tenant");
    tenant = "red";
    assert_string_equal(match(t, "gpt-4o", chat), "exact");
    tenant = NULL;
    assert_string_equal(match(t, "gpt-4o", "/v1/messages"), "messages");
    assert_string_equal(match(t, "gpt-4o-mini", chat), "all"); /* exact means exact */
    dp_table_unref(t);
}

static void test_models_list(void **state)
{
    (void)state;
    struct dp_table *t = table();
    /* exact names once each; prefixes name no model */
    assert_non_null(strstr(t->models_json, "\"id\":\"gpt-4o\""));
    assert_non_null(strstr(t->models_json, "\"id\":\"llama-3-70b\""));
    assert_null(strstr(t->models_json, "llama-3\""));
    const char *first = strstr(t->models_json, "\"gpt-4o\"");
    assert_null(strstr(first + 1, "\"gpt-4o\""));
    dp_table_unref(t);
}

static void test_refcount(void **state)
{
    (void)state;
    struct dp_table *t = table();
    struct dp_table *pinned = dp_table_ref(t); /* a request pins it */
    dp_table_unref(t);                         /* the worker swaps it out */
    assert_string_equal(match(pinned, "gpt-4o", "/v1/chat/completions"), "exact");
    dp_table_unref(pinned); /* the last one frees (ASan and valgrind check) */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order),
        cmocka_unit_test(test_models_list),
        cmocka_unit_test(test_refcount),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
