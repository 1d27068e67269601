/* The snapshot builder: API objects in stores -> snapshot + per-resource state; invalid
 * and unresolved resources are left out and reported without taking the others down;
 * only referenced Secrets are read; EndpointSlices resolve serviceRefs; the version does
 * not depend on the order objects arrived in. */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "builder.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/snapshot.h"
#include "testutil.h"

struct fixture {
    struct ctl_store b, r, s, e;
    struct ctl_sources src;
};

/* The snapshot a build publishes, as a data plane reads it (kw_snapshot_parse of its JSON);
 * freed at the end of the test program. */
static struct kw_snapshot *parsed[16];
static size_t nparsed;
static struct kw_snapshot *snap_of(const struct ctl_build *b)
{
    struct kw_diag d;
    kw_diag_init(&d);
    struct kw_snapshot *s = kw_snapshot_parse(b->json, b->len, &d);
    kw_diag_cleanup(&d);
    assert_non_null(s);
    assert_string_equal(s->version, b->version);
    assert_true(nparsed < 16);
    parsed[nparsed++] = s;
    return s;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    ctl_store_init(&f->b);
    ctl_store_init(&f->r);
    ctl_store_init(&f->s);
    ctl_store_init(&f->e);
    f->src = (struct ctl_sources){&f->b, &f->r, &f->s, &f->e, NULL, NULL, NULL, NULL, 0};
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    ctl_store_cleanup(&f->b);
    ctl_store_cleanup(&f->r);
    ctl_store_cleanup(&f->s);
    ctl_store_cleanup(&f->e);
    free(f);
    return 0;
}

static void put(struct ctl_store *s, const char *key, const char *json)
{
    ctl_store_put(s, key, json, strlen(json));
}

#define BACKEND(name, spec)                                                                        \
    "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMBackend\",\"metadata\":{\"name\":"  \
    "\"" name "\",\"namespace\":\"ml\",\"generation\":3,\"creationTimestamp\":"                    \
    "\"2026-01-01T00:00:00Z\"},\"spec\":" spec ",\"status\":{\"conditions\":[]}}"
#define ROUTE(name, spec)                                                                          \
    "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMRoute\",\"metadata\":{\"name\":"    \
    "\"" name "\",\"namespace\":\"ml\",\"generation\":1,\"creationTimestamp\":"                    \
    "\"2026-01-01T00:00:00Z\"},\"spec\":" spec "}"

static const struct ctl_resource_state *state_of(const struct ctl_build *b, enum kw_kind k,
                                                 const char *name)
{
    const struct ctl_resource_state *s = ctl_build_find(b, k, "ml", name);
    assert_non_null(s);
    return s;
}

static void test_invalid_left_out_others_programmed(void **state)
{
    struct fixture *f = *state;
    put(&f->b, "ml/good",
        BACKEND("good", "{\"provider\":\"vLLM\",\"upstream\":{\"baseURL\":\"http://v:8000/v1\"},"
                        "\"credentials\":{\"secretRef\":{\"name\":\"keys\",\"key\":\"k\"}}}"));
    put(&f->b, "ml/noaddr", BACKEND("noaddr", "{\"provider\":\"vLLM\"}"));
    put(&f->b, "ml/nosecret",
        BACKEND("nosecret", "{\"provider\":\"OpenAI\",\"credentials\":{\"secretRef\":{\"name\":"
                            "\"gone\",\"key\":\"k\"}}}"));
    put(&f->r, "ml/chat",
        ROUTE("chat", "{\"match\":{\"models\":[\"m\"]},\"backendRefs\":"
                      "[{\"name\":\"good\"},{\"name\":\"noaddr\"}]}"));
    put(&f->r, "ml/orphan",
        ROUTE("orphan", "{\"match\":{\"models\":[\"o\"]},\"backendRefs\":"
                        "[{\"name\":\"nosecret\"}]}"));
    /* a Secret nobody references: not read at all (so its errors cannot matter) */
    put(&f->s, "ml/keys",
        "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"keys\",\"namespace\":"
        "\"ml\"},\"data\":{\"k\":\"c2stMQ==\"}}");
    put(&f->s, "ml/unrelated",
        "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"unrelated\","
        "\"namespace\":\"ml\"},\"data\":{\"k\":\"not base64!\"}}");
    struct ctl_build *b = ctl_build_run(&f->src);
    assert_non_null(b);
    assert_int_equal(snap_of(b)->nbackends, 1);
    assert_string_equal(snap_of(b)->backends[0]->meta.name, "good");
    assert_int_equal(snap_of(b)->nroutes, 1);
    assert_int_equal(snap_of(b)->routes[0]->nrefs, 1);
    assert_int_equal(snap_of(b)->ncredentials, 1);
    assert_string_equal(snap_of(b)->credentials[0].value, "sk-1");

    const struct ctl_resource_state *s = state_of(b, KW_KIND_LLMBACKEND, "good");
    assert_true(s->accepted && s->resolved && s->programmed);
    assert_int_equal(s->generation, 3);
    s = state_of(b, KW_KIND_LLMBACKEND, "noaddr");
    assert_false(s->accepted);
    assert_false(s->programmed);
    assert_non_null(strstr(s->accepted_msg, "spec.upstream"));
    s = state_of(b, KW_KIND_LLMBACKEND, "nosecret");
    assert_true(s->accepted);
    assert_false(s->resolved);
    assert_string_equal(s->resolved_msg,
                        "spec.credentials.secretRef.name: Secret \"ml/gone\" not found");
    s = state_of(b, KW_KIND_LLMROUTE, "chat");
    assert_true(s->programmed);
    assert_false(s->resolved); /* one of its backends is out */
    assert_string_equal(s->resolved_msg, "spec.backendRefs[1].name: LLMBackend \"ml/noaddr\" is "
                                         "not programmed (see its status)");
    s = state_of(b, KW_KIND_LLMROUTE, "orphan");
    assert_false(s->programmed);
    assert_false(s->resolved);
    assert_non_null(strstr(s->resolved_msg, "LLMBackend \"ml/nosecret\""));
    ctl_build_unref(b);
}

static const char SLICE_A[] =
    "{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{\"name\":"
    "\"vllm-a\",\"namespace\":\"ml\",\"labels\":{\"kubernetes.io/service-name\":\"vllm\"}},"
    "\"ports\":[{\"name\":\"http\",\"port\":8000}],\"endpoints\":[{\"addresses\":[\"10.0.0.2\"],"
    "\"conditions\":{\"ready\":true}},{\"addresses\":[\"10.0.0.3\"],\"conditions\":{\"ready\":"
    "false}}]}";
static const char SLICE_B[] =
    "{\"apiVersion\":\"discovery.k8s.io/v1\",\"kind\":\"EndpointSlice\",\"metadata\":{\"name\":"
    "\"vllm-b\",\"namespace\":\"ml\",\"labels\":{\"kubernetes.io/service-name\":\"vllm\"}},"
    "\"ports\":[{\"name\":\"http\",\"port\":8000}],\"endpoints\":[{\"addresses\":[\"10.0.0.1\"]},"
    "{\"addresses\":[\"fd00::1\"]}]}";

static void test_service_ref_and_order(void **state)
{
    struct fixture *f = *state;
    put(&f->b, "ml/svc",
        BACKEND("svc", "{\"provider\":\"vLLM\",\"upstream\":{\"serviceRef\":"
                       "{\"name\":\"vllm\",\"port\":8000}}}"));
    put(&f->r, "ml/r",
        ROUTE("r", "{\"match\":{\"models\":[\"m\"]},\"backendRefs\":[{\"name\":"
                   "\"svc\"}]}"));
    struct ctl_build *none = ctl_build_run(&f->src);
    assert_int_equal(snap_of(none)->nbackends, 0);
    assert_string_equal(state_of(none, KW_KIND_LLMBACKEND, "svc")->resolved_msg,
                        "spec.upstream.serviceRef: Service \"ml/vllm\" has no EndpointSlices");
    put(&f->e, "ml/vllm-a", SLICE_A);
    put(&f->e, "ml/vllm-b", SLICE_B);
    struct ctl_build *b1 = ctl_build_run(&f->src);
    assert_int_equal(snap_of(b1)->nbackends, 1);
    const struct kw_upstream *u = &snap_of(b1)->backends[0]->upstream;
    assert_int_equal(u->nendpoints, 3); /* the not-ready one is left out */
    assert_string_equal(u->endpoints[0].url, "http://10.0.0.1:8000/v1");
    assert_string_equal(u->endpoints[1].url, "http://10.0.0.2:8000/v1");
    assert_string_equal(u->endpoints[2].url, "http://[fd00::1]:8000/v1");
    /* the same objects arriving in another order give the same version */
    ctl_store_delete(&f->e, "ml/vllm-a");
    ctl_store_delete(&f->e, "ml/vllm-b");
    put(&f->e, "ml/vllm-b", SLICE_B);
    put(&f->e, "ml/vllm-a", SLICE_A);
    struct ctl_build *b2 = ctl_build_run(&f->src);
    assert_string_equal(b1->version, b2->version);
    assert_string_equal(b1->json, b2->json);
    ctl_build_unref(none);
    ctl_build_unref(b1);
    ctl_build_unref(b2);
}

/* Regression: one LLMBackend whose params nest 70 levels deep made every LIST of
 * LLMBackends fail, so no namespace got updates. The list and its other objects parse; the
 * deep object is kept too deep in the store and reported on its own status. */
static void test_deep_object_reported_others_flow(void **state)
{
    struct fixture *f = *state;
    struct kw_buf deep;
    kw_buf_init(&deep, 1 << 20);
    kw_buf_puts(&deep, "{\"kind\":\"LLMBackendList\",\"metadata\":{\"resourceVersion\":\"9\"},"
                       "\"items\":[");
    kw_buf_puts(&deep, "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMBackend\","
                       "\"metadata\":{\"name\":\"deep\",\"namespace\":\"ml\",\"generation\":2},"
                       "\"spec\":{\"provider\":\"vLLM\",\"upstream\":{\"baseURL\":"
                       "\"http://v:8000/v1\"},\"params\":{\"defaults\":{\"a\":");
    for (int i = 0; i < 70; i++)
        kw_buf_puts(&deep, "[");
    for (int i = 0; i < 70; i++)
        kw_buf_puts(&deep, "]");
    kw_buf_puts(&deep, "}}}},"); /* a sound object follows */
    kw_buf_puts(&deep, BACKEND("good", "{\"provider\":\"vLLM\",\"upstream\":{\"baseURL\":"
                                       "\"http://v:8000/v1\"}}"));
    kw_buf_puts(&deep, "]}");
    struct kw_arena *a = kw_arena_new(1 << 24);
    struct kw_node *root;
    char err[256];
    /* as the informer parses a LIST: room for the list around each object, cut past it */
    assert_int_equal(
        kw_json_parse_ex(a, deep.data, deep.len, KW_MAX_NESTING + 2, true, &root, err, sizeof(err)),
        KW_OK);
    const struct kw_node *items = kw_node_get(root, "items");
    assert_int_equal(items->n, 2);
    struct kw_buf text;
    kw_buf_init(&text, 1 << 20);
    for (size_t i = 0; i < items->n; i++) {
        kw_buf_reset(&text);
        assert_int_equal(kw_json_write(items->items[i], &text), KW_OK);
        put(&f->b, i == 0 ? "ml/deep" : "ml/good", text.data);
    }
    put(&f->r, "ml/chat",
        ROUTE("chat", "{\"match\":{\"models\":[\"m\"]},\"backendRefs\":[{\"name\":\"good\"}]}"));
    struct ctl_build *b = ctl_build_run(&f->src);
    assert_non_null(b);
    assert_int_equal(snap_of(b)->nbackends, 1);
    assert_string_equal(snap_of(b)->backends[0]->meta.name, "good");
    const struct ctl_resource_state *st = state_of(b, KW_KIND_LLMBACKEND, "deep");
    assert_false(st->accepted);
    assert_string_equal(st->accepted_msg,
                        "spec.params.defaults.a[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                        "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]"
                        "[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]: nesting "
                        "deeper than 64 levels: the object is left out");
    assert_true(state_of(b, KW_KIND_LLMROUTE, "chat")->programmed);
    ctl_build_unref(b);
    kw_buf_cleanup(&text);
    kw_buf_cleanup(&deep);
    kw_arena_free(a);
}

/* The decode cache changes nothing a build publishes: after every change below, a build
 * through the cache and one that decodes everything agree on the snapshot's bytes and on
 * every resource's state (messages of invalid objects replayed, what the checks set on a
 * cached resource reset: conflicts, resolution, validity). */
static void same_build(const struct ctl_sources *plain, const struct ctl_sources *cached,
                       const char *step)
{
    struct ctl_build *a = ctl_build_run(plain), *b = ctl_build_run(cached);
    assert_non_null(a);
    assert_non_null(b);
    if (strcmp(a->version, b->version) != 0 || a->len != b->len ||
        memcmp(a->json, b->json, a->len) != 0)
        fail_msg("%s: snapshots differ:\n%.*s\n%.*s", step, (int)a->len, a->json, (int)b->len,
                 b->json);
    assert_int_equal(a->nstates, b->nstates);
    assert_int_equal(a->nerrors, b->nerrors);
    for (size_t i = 0; i < a->nstates; i++) {
        const struct ctl_resource_state *x = &a->states[i], *y = &b->states[i];
        const char *xa = x->accepted_msg ? x->accepted_msg : "",
                   *ya = y->accepted_msg ? y->accepted_msg : "";
        const char *xr = x->resolved_msg ? x->resolved_msg : "",
                   *yr = y->resolved_msg ? y->resolved_msg : "";
        if (x->kind != y->kind || strcmp(x->name, y->name) != 0 || x->accepted != y->accepted ||
            x->conflicted != y->conflicted || x->resolved != y->resolved ||
            x->programmed != y->programmed || strcmp(xa, ya) != 0 || strcmp(xr, yr) != 0)
            fail_msg("%s: %s differs: accepted %d/%d conflicted %d/%d resolved %d/%d "
                     "programmed %d/%d \"%s\"/\"%s\" \"%s\"/\"%s\"",
                     step, x->name, x->accepted, y->accepted, x->conflicted, y->conflicted,
                     x->resolved, y->resolved, x->programmed, y->programmed, xa, ya, xr, yr);
    }
    ctl_build_unref(a);
    ctl_build_unref(b);
}

#define CONSUMER(name, ns, spec)                                                                   \
    "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMConsumer\",\"metadata\":{\"name\":" \
    "\"" name "\",\"namespace\":\"" ns "\"},\"spec\":" spec "}"
#define SECRET(name, value)                                                                        \
    "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"" name "\","              \
    "\"namespace\":\"ml\"},\"data\":{\"k\":\"" value "\"}}"

static void test_cache_builds_what_a_full_decode_builds(void **state)
{
    struct fixture *f = *state;
    struct ctl_store consumers;
    ctl_store_init(&consumers);
    struct ctl_sources plain = f->src, cached = f->src;
    plain.consumers = cached.consumers = &consumers;
    cached.cache = ctl_cache_new();
    assert_non_null(cached.cache);
    static const char good[] =
        BACKEND("good", "{\"provider\":\"OpenAI\",\"upstream\":{\"baseURL\":\"http://v:8000/v1\"},"
                        "\"credentials\":{\"secretRef\":{\"name\":\"keys\",\"key\":\"k\"}}}");
    put(&f->b, "ml/good", good);
    put(&f->b, "ml/noaddr", BACKEND("noaddr", "{\"provider\":\"vLLM\"}"));
    put(&f->b, "ml/svc",
        BACKEND("svc", "{\"provider\":\"vLLM\",\"upstream\":{\"serviceRef\":"
                       "{\"name\":\"vllm\",\"port\":8000}}}"));
    put(&f->r, "ml/chat",
        ROUTE("chat", "{\"match\":{\"models\":[\"m\"]},\"backendRefs\":"
                      "[{\"name\":\"good\"},{\"name\":\"noaddr\"},{\"name\":\"svc\"}]}"));
    put(&f->r, "ml/broken", ROUTE("broken", "{\"match\":{\"models\":[]}}"));
    put(&f->s, "ml/keys", SECRET("keys", "c2stMQ=="));
    put(&consumers, "ml/team",
        CONSUMER("team", "ml",
                 "{\"apiKeys\":[{\"secretRef\":{\"name\":\"keys\",\"key\":\"k\"}}]}"));
    same_build(&plain, &cached, "first");
    same_build(&plain, &cached, "unchanged");
    size_t objects, bytes;
    ctl_cache_stats(cached.cache, &objects, &bytes);
    assert_int_equal(objects, 7);
    assert_true(bytes > 0 && bytes < 7 * 4096);

    /* a backend fixed, the Secret's value changed, the slices appear */
    put(&f->b, "ml/noaddr",
        BACKEND("noaddr", "{\"provider\":\"vLLM\",\"upstream\":{\"baseURL\":\"http://n/v1\"}}"));
    put(&f->s, "ml/keys", SECRET("keys", "c2stMg=="));
    put(&f->e, "ml/vllm-a", SLICE_A);
    same_build(&plain, &cached, "fixed");
    /* an older claim from another namespace conflicts a route, then goes */
    put(&f->r, "other/old",
        "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMRoute\",\"metadata\":{"
        "\"name\":\"old\",\"namespace\":\"other\",\"creationTimestamp\":\"2020-01-01T00:00:00Z\"},"
        "\"spec\":{\"match\":{\"models\":[\"m\"]},\"backendRefs\":[{\"name\":\"b\"}]}}");
    same_build(&plain, &cached, "conflicted");
    ctl_store_delete(&f->r, "other/old");
    same_build(&plain, &cached, "conflict gone");
    /* the backend a route uses breaks, a duplicate Secret key is refused, things go */
    put(&f->b, "ml/good", BACKEND("good", "{\"provider\":\"Nope\"}"));
    same_build(&plain, &cached, "backend broken");
    put(&f->b, "ml/good", good);
    ctl_store_delete(&f->s, "ml/keys");
    same_build(&plain, &cached, "secret gone");
    put(&f->s, "ml/keys", SECRET("keys", "c2stMQ=="));
    ctl_store_delete(&f->r, "ml/broken");
    ctl_store_delete(&consumers, "ml/team");
    same_build(&plain, &cached, "deleted");
    ctl_cache_stats(cached.cache, &objects, &bytes);
    assert_int_equal(objects, 5); /* three backends, a route and the Secret one uses */
    ctl_cache_free(cached.cache);
    ctl_store_cleanup(&consumers);
}

/* The builder thread publishes nothing before its sources are whole, and the first build
 * it publishes holds what completed the view: a build begun before the last informer
 * listed published routes without their consumers once (their keys then served as
 * anonymous). Readiness must be checked before the build starts, not when it is published:
 * here the last list lands just as readiness is checked the second time, so a build made
 * before that check lacks it (it fails with the check moved after ctl_build_run). */
struct watcher {
    struct fixture *f;
    struct ctl_builder *bl;
    atomic_int ready_calls, builds, last_backends;
};

static bool watcher_ready(void *ud)
{
    struct watcher *w = ud;
    if (atomic_fetch_add(&w->ready_calls, 1) == 0)
        return false; /* an informer has not listed yet */
    /* the last list lands now, completing the view */
    put(&w->f->b, "ml/late",
        BACKEND("late", "{\"provider\":\"vLLM\",\"upstream\":"
                        "{\"baseURL\":\"http://v:8000/v1\"}}"));
    return true;
}

static void watcher_build(void *ud, struct ctl_build *b)
{
    struct watcher *w = ud;
    atomic_store(&w->last_backends, (int)b->nbackends);
    atomic_fetch_add(&w->builds, 1);
}

static void test_builder_publishes_only_whole_views(void **state)
{
    struct fixture *f = *state;
    struct ctl_builder bl = {.src = f->src, .on_build = watcher_build, .debounce_ms = 5};
    struct watcher w = {.f = f, .bl = &bl};
    bl.ready = watcher_ready;
    bl.ud = &w;
    assert_int_equal(ctl_builder_start(&bl), KW_OK);
    ctl_builder_kick(&bl);
    for (int i = 0; i < 200 && atomic_load(&w.ready_calls) == 0; i++)
        usleep(5000);
    assert_int_equal(atomic_load(&w.ready_calls), 1);
    usleep(50000); /* ten debounce periods: nothing is built without a kick */
    assert_int_equal(atomic_load(&w.builds), 0);
    ctl_builder_kick(&bl); /* the last informer's notify after its list */
    for (int i = 0; i < 400 && atomic_load(&w.builds) == 0; i++)
        usleep(5000);
    usleep(50000);
    ctl_builder_stop(&bl);
    assert_int_equal(atomic_load(&w.builds), 1);
    assert_int_equal(atomic_load(&w.last_backends), 1); /* with what completed the view */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_invalid_left_out_others_programmed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_ref_and_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_deep_object_reported_others_flow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_builder_publishes_only_whole_views, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cache_builds_what_a_full_decode_builds, setup,
                                        teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    while (nparsed > 0)
        kw_snapshot_unref(parsed[--nparsed]);
    return rc;
}
