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
    assert_string_equal(cfg->dataplane.listen, "0.0.0.0:8080"); /* the documented defaults */
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
 * prompts. The oldest exact claim wins; younger claims from other namespaces are
 * Conflicted. */
static const char *claims_text(void)
{
    return R("platform", "main",
             "[gpt-4o, \"claude*\"]") "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: "
                                      "LLMRoute\nmetadata: {name: same-ns, "
                                      "namespace: platform}\nspec: {match: {models: [gpt-4o]}, "
                                      "backendRefs: [{name: b}]}\n"
        /* ^ same namespace: specificity and age decide, as before */
        R("team-a", "steal", "[x, gpt-4o]") /* exact claim of an older exact claim */
        R("team-b", "wide", "[\"gpt*\"]")   /* prefix over an older exact claim */
        R("team-c", "narrow", "[claude-3]") /* exact under an older prefix claim */
        R("team-d", "own", "[\"mistral*\", llama]")
            R("team-e", "again", "[\"gpt*\"]") /* the same prefix as an older one */
        R("tenant", "squat", "[\"*\"]")        /* a wildcard older than ... */
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: later, "
        "namespace: platform}\nspec: {match: {models: [gpt-5]}, backendRefs: [{name: b}]}\n";
    /* ^ ... the platform's next exact name */
}

static void check_lost(const struct kw_config *cfg, const char *const *lost, size_t n)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct kw_route *r = cfg->routes[i];
        bool l = false;
        for (size_t j = 0; j < n; j++)
            l |= strcmp(r->meta.ns, lost[j]) == 0;
        assert_int_equal(r->conflicted, l);
        assert_int_equal(r->valid, !l);
    }
}

/* Prefix and wildcard claims of a namespace that may not claim widely (the default) block
 * nobody: a tenant's older "*" does not keep the platform from its later exact name (that
 * route is Accepted and, being exact, wins routing), and only the same prefix twice
 * conflicts. Exact claims: the oldest wins. */
static void test_wildcards_neither_block_nor_capture(void **state)
{
    (void)state;
    struct kw_config *cfg = kw_config_new();
    const char *text = claims_text();
    kw_config_add_yaml(cfg, "t.yaml", text, strlen(text));
    assert_int_equal(kw_config_check(cfg), KW_ERROR);
    char *e = errors_of(cfg);
    assert_string_equal(
        e, "t.yaml:17:1: LLMRoute/team-a/steal: spec.match.models: model \"gpt-4o\" is already "
           "claimed by the older LLMRoute platform/main in another namespace: the oldest claim "
           "wins\n"
           "t.yaml:57:1: LLMRoute/team-e/again: spec.match.models: model \"gpt*\" is already "
           "claimed by the older LLMRoute team-b/wide in another namespace: the oldest claim "
           "wins\n");
    free(e);
    check_lost(cfg, (const char *const[]){"team-a", "team-e"}, 2);
    kw_config_free(cfg);
}

/* A namespace the administrator lets claim widely keeps the old rule for its prefixes: they
 * conflict with younger overlapping claims of other namespaces, and its own younger
 * prefixes lose to older exact claims elsewhere. */
static void test_wide_claims_when_allowed(void **state)
{
    (void)state;
    struct kw_config *cfg = kw_config_new();
    static const char *const wide[] = {"platform"};
    cfg->claim_namespaces = wide;
    cfg->nclaim_namespaces = 1;
    const char *text = claims_text();
    kw_config_add_yaml(cfg, "t.yaml", text, strlen(text));
    assert_int_equal(kw_config_check(cfg), KW_ERROR);
    char *e = errors_of(cfg);
    assert_string_equal(
        e, "t.yaml:17:1: LLMRoute/team-a/steal: spec.match.models: model \"gpt-4o\" is already "
           "claimed by the older LLMRoute platform/main in another namespace: the oldest claim "
           "wins\n"
           "t.yaml:37:1: LLMRoute/team-c/narrow: spec.match.models: model \"claude-3\" is "
           "already claimed by the older LLMRoute platform/main in another namespace: the oldest "
           "claim wins\n"
           "t.yaml:57:1: LLMRoute/team-e/again: spec.match.models: model \"gpt*\" is already "
           "claimed by the older LLMRoute team-b/wide in another namespace: the oldest claim "
           "wins\n"
           "t.yaml:67:1: LLMRoute/tenant/squat: spec.match.models: model \"*\" is already "
           "claimed by the older LLMRoute platform/main in another namespace: the oldest claim "
           "wins\n");
    free(e);
    check_lost(cfg, (const char *const[]){"team-a", "team-c", "team-e", "tenant"}, 4);
    kw_config_free(cfg);
}

/* Errors code acts on carry a code, not only text (the controller's status hint for a
 * Secret it cannot see), and their object splits into kind, namespace and name. */
static void test_error_codes_and_objects(void **state)
{
    (void)state;
    static const char yaml[] =
        "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: b, namespace: "
        "ml}\n"
        "spec:\n  provider: OpenAI\n  credentials: {secretRef: {name: gone}}\n"
        "---\napiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r, namespace: "
        "ml}\n"
        "spec:\n  match: {models: [m]}\n  backendRefs: [{name: nope}]\n";
    struct kw_config *cfg = kw_config_new();
    assert_int_equal(kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml)), KW_OK);
    assert_int_equal(kw_config_check(cfg), KW_ERROR);
    int secret = 0, other = 0;
    for (size_t i = 0; i < cfg->diag.n; i++) {
        const struct kw_diag_entry *e = &cfg->diag.entries[i];
        char kind[32], ns[64], name[254];
        assert_true(kw_diag_object(e, kind, sizeof(kind), ns, sizeof(ns), name, sizeof(name)));
        assert_string_equal(ns, "ml");
        if (e->code == KW_DIAG_SECRET_MISSING) {
            assert_string_equal(kind, "LLMBackend");
            assert_string_equal(name, "b");
            secret++;
        } else {
            assert_string_equal(kind, "LLMRoute");
            other++;
        }
    }
    assert_int_equal(secret, 1);
    assert_int_equal(other, 1);
    struct kw_diag_entry e = {.object = "snapshot"};
    char kind[32], ns[64], name[254];
    assert_false(kw_diag_object(&e, kind, sizeof(kind), ns, sizeof(ns), name, sizeof(name)));
    kw_config_free(cfg);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_error_codes_and_objects),
        cmocka_unit_test(test_file_and_defaults),
        cmocka_unit_test(test_errors_are_collected),
        cmocka_unit_test(test_wildcards_neither_block_nor_capture),
        cmocka_unit_test(test_wide_claims_when_allowed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
