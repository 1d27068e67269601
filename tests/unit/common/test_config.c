#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "knoway/config.h"
#include "knoway/kw.h"
#include "testutil.h"

static char *errors_of(struct kw_config *cfg)
{
    struct kw_buf out;
    kw_buf_init(&out, 1 << 16);
    kw_diag_format_all(&cfg->diag, &out);
    char *s = strdup(out.data != NULL ? out.data : "");
    kw_buf_cleanup(&out);
    return s;
}

static void test_missing_file(void **state)
{
    (void)state;
    struct kw_config *cfg = kw_config_new();
    assert_int_equal(kw_config_load_file(cfg, "/nonexistent/knoway.yaml"), KW_ERROR);
    char *e = errors_of(cfg);
    assert_string_equal(e, "/nonexistent/knoway.yaml: cannot open: No such file or directory\n");
    free(e);
    kw_config_free(cfg);
}

static void test_file_and_defaults(void **state)
{
    (void)state;
    char path[] = "/tmp/kwtest-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    const char *text =
        "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: b}\n"
        "spec: {provider: Ollama, upstream: {baseURL: \"http://127.0.0.1:11434/v1\"}}\n";
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    struct kw_config *cfg = kw_config_new();
    assert_int_equal(kw_config_load_file(cfg, path), KW_OK);
    assert_int_equal(kw_config_check(cfg), KW_OK);
    assert_false(cfg->has_dataplane);
    assert_string_equal(cfg->dataplane.listen, "0.0.0.0:8080"); /* DESIGN.md defaults */
    assert_int_equal(cfg->dataplane.limits.max_body_bytes, 10485760);
    assert_int_equal(cfg->dataplane.limits.max_connections, 20000);
    assert_string_equal(cfg->backends[0]->meta.file, path);
    assert_int_equal(cfg->backends[0]->meta.line, 1);
    kw_config_free(cfg);
    unlink(path);
}

static void test_errors_are_collected(void **state)
{
    (void)state;
    /* three bad documents and one good: all three reported, the good one stays valid */
    struct kw_config *cfg;
    char *e =
        kwt_errors("kind: Nope\n---\n"
                   "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: a}\n"
                   "spec: {provider: X}\n---\n"
                   "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: ok}\n"
                   "spec: {provider: OpenAI}\n---\n"
                   "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\n"
                   "spec: {match: {models: [m]}, backendRefs: [{name: ok}], timeout: 0s}\n",
                   &cfg);
    assert_string_equal(e, "t.yaml:1:7: kind: unknown kind \"Nope\"; knoway reads LLMBackend, "
                           "LLMRoute, Secret and DataPlane\n"
                           "t.yaml:6:18: LLMBackend/default/a: spec.provider: unknown value \"X\"; "
                           "one of: OpenAI, AzureOpenAI, Anthropic, AWSBedrock, Gemini, VertexAI, "
                           "Cohere, Mistral, vLLM, KServe, Ollama\n"
                           "t.yaml:16:66: LLMRoute/default/r: spec.timeout: must be between 1ms "
                           "and 24h\n");
    free(e);
    assert_int_equal(cfg->nbackends, 2);
    assert_false(cfg->backends[0]->valid);
    assert_true(cfg->backends[1]->valid);
    assert_false(cfg->routes[0]->valid);
    assert_true(cfg->routes[0]->resolved);
    kw_config_free(cfg);
}

#define R(ns, name, models)                                                                        \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: " name             \
    ", namespace: " ns "}\nspec: {match: {models: " models "}, backendRefs: [{name: b}]}\n"        \
    "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: b, "             \
    "namespace: " ns "}\nspec: {provider: Ollama, upstream: {baseURL: \"http://o:1/v1\"}}\n"

/* Regression: routes of every namespace competed on specificity, so whoever could create an
 * LLMRoute anywhere could outrank the platform's route for gpt-4o and receive everyone's
 * prompts. The oldest claim wins; younger claims from other namespaces are Conflicted. */
static void test_cross_namespace_claims_conflict(void **state)
{
    (void)state;
    struct kw_config *cfg = kw_config_new();
    const char *text = R("platform", "main",
                         "[gpt-4o, \"claude*\"]") "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: "
                                                  "LLMRoute\nmetadata: {name: same-ns, "
                                                  "namespace: platform}\nspec: {match: {models: "
                                                  "[gpt-4o]}, backendRefs: [{name: b}]}\n"
        /* ^ same namespace: specificity and age decide, as before */
        R("team-a", "steal", "[x, gpt-4o]") /* exact claim of an older exact claim */
        R("team-b", "wide", "[\"gpt*\"]")   /* prefix over an older exact claim */
        R("team-c", "narrow", "[claude-3]") /* exact under an older prefix claim */
        R("team-d", "own", "[\"mistral*\", llama]");
    kw_config_add_yaml(cfg, "t.yaml", text, strlen(text));
    /* the backend named b is declared in each namespace once; fine */
    assert_int_equal(kw_config_check(cfg), KW_ERROR);
    char *e = errors_of(cfg);
    assert_string_equal(
        e, "t.yaml:17:1: LLMRoute/team-a/steal: spec.match.models: model \"gpt-4o\" is already "
           "claimed by the older LLMRoute platform/main in another namespace: the oldest claim "
           "wins\n"
           "t.yaml:27:1: LLMRoute/team-b/wide: spec.match.models: model \"gpt*\" is already "
           "claimed by the older LLMRoute platform/main in another namespace: the oldest claim "
           "wins\n"
           "t.yaml:37:1: LLMRoute/team-c/narrow: spec.match.models: model \"claude-3\" is "
           "already claimed by the older LLMRoute platform/main in another namespace: the oldest "
           "claim wins\n");
    free(e);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct kw_route *r = cfg->routes[i];
        bool lost = strcmp(r->meta.ns, "team-a") == 0 || strcmp(r->meta.ns, "team-b") == 0 ||
                    strcmp(r->meta.ns, "team-c") == 0;
        assert_int_equal(r->conflicted, lost);
        assert_int_equal(r->valid, !lost);
    }
    kw_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_file_and_defaults),
        cmocka_unit_test(test_errors_are_collected),
        cmocka_unit_test(test_cross_namespace_claims_conflict),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
