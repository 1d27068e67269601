/* knoway-bench-build: the controller's snapshot build at scale, without an API server.
 *
 *   knoway-bench-build [N]     (default 10000)
 *
 * Fills the informers' stores with N resources as the API server lists them (half
 * LLMBackends, half LLMRoutes, one route per backend, one Secret per 100 backends; uid,
 * resourceVersion, managedFields and kubectl's last-applied annotation included, stored
 * through the informer's own path), then times full builds and a build after one route
 * changed, and reports the process's RSS. Prints one JSON object. Not pass/fail:
 * hack/bench-controller.py runs it (docs/performance.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "builder.h"
#include "informer.h"
#include "knoway/json.h"
#include "knoway/kw.h"

/* The process's resident set (KiB), from /proc/self/statm. */
static long rss_kib(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f != NULL) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static const char MANAGED[] =
    "\"managedFields\":[{\"manager\":\"kubectl-client-side-apply\",\"operation\":\"Update\","
    "\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"time\":\"2026-12-01T10:00:00Z\","
    "\"fieldsType\":\"FieldsV1\",\"fieldsV1\":{\"f:metadata\":{\"f:annotations\":{\".\":{},"
    "\"f:kubectl.kubernetes.io/last-applied-configuration\":{}}},\"f:spec\":{\".\":{},"
    "\"f:provider\":{},\"f:upstream\":{\".\":{},\"f:baseURL\":{}}}}}]";

/* One object the way an informer stores it (through ctl_event_parse's tree). */
static void put(struct ctl_store *s, struct kw_arena *a, const char *json)
{
    struct ctl_event ev;
    char err[256];
    struct kw_buf line;
    kw_buf_init(&line, 1u << 20);
    kw_buf_printf(&line, "{\"type\":\"ADDED\",\"object\":%s}", json);
    kw_arena_reset(a);
    if (ctl_event_parse(a, line.data, line.len, &ev, err, sizeof(err)) != KW_OK) {
        fprintf(stderr, "bench-build: %s\n", err);
        exit(1);
    }
    struct kw_buf tmp;
    kw_buf_init(&tmp, 1u << 20);
    pthread_mutex_lock(&s->mu);
    ctl_store_put_node(s, ev.object, &tmp);
    pthread_mutex_unlock(&s->mu);
    kw_buf_cleanup(&tmp);
    kw_buf_cleanup(&line);
}

static void backend(struct ctl_store *s, struct kw_arena *a, int i, const char *model)
{
    char json[4096];
    snprintf(json, sizeof(json),
             "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMBackend\",\"metadata\":{"
             "\"name\":\"b-%d\",\"namespace\":\"bench\",\"uid\":\"8d5c5e5e-0000-4000-8000-%012d\","
             "\"resourceVersion\":\"%d\",\"generation\":1,\"creationTimestamp\":"
             "\"2026-12-01T10:00:00Z\",\"annotations\":{\"kubectl.kubernetes.io/"
             "last-applied-configuration\":\"{\\\"apiVersion\\\":\\\"llm.knoway.dev/v1alpha1\\\","
             "\\\"kind\\\":\\\"LLMBackend\\\",\\\"metadata\\\":{\\\"name\\\":\\\"b-%d\\\","
             "\\\"namespace\\\":\\\"bench\\\"},\\\"spec\\\":{\\\"provider\\\":\\\"vLLM\\\","
             "\\\"upstream\\\":{\\\"baseURL\\\":\\\"http://vllm-%d.bench:8000/v1\\\"}}}\\n\"},%s},"
             "\"spec\":{\"provider\":\"vLLM\",\"modelName\":\"%s\",\"upstream\":{\"baseURL\":"
             "\"http://vllm-%d.bench:8000/v1\"},\"credentials\":{\"secretRef\":{\"name\":"
             "\"keys-%d\"}}},\"status\":{\"conditions\":[{\"type\":\"Accepted\",\"status\":"
             "\"True\",\"reason\":\"Accepted\",\"message\":\"\",\"lastTransitionTime\":"
             "\"2026-12-01T10:00:01Z\",\"observedGeneration\":1}]}}",
             i, i, 1000 + i, i, i, MANAGED, model, i, i / 100);
    put(s, a, json);
}

static void route(struct ctl_store *s, struct kw_arena *a, int i, const char *extra_model)
{
    char json[4096];
    snprintf(json, sizeof(json),
             "{\"apiVersion\":\"llm.knoway.dev/v1alpha1\",\"kind\":\"LLMRoute\",\"metadata\":{"
             "\"name\":\"r-%d\",\"namespace\":\"bench\",\"uid\":\"9d5c5e5e-0000-4000-8000-%012d\","
             "\"resourceVersion\":\"%d\",\"generation\":1,\"creationTimestamp\":"
             "\"2026-12-01T10:00:00Z\",\"annotations\":{\"kubectl.kubernetes.io/"
             "last-applied-configuration\":\"{\\\"kind\\\":\\\"LLMRoute\\\"}\\n\"},%s},"
             "\"spec\":{\"match\":{\"models\":[\"model-%d\"%s%s%s]},\"backendRefs\":[{\"name\":"
             "\"b-%d\"}]}}",
             i, i, 500000 + i, MANAGED, i, extra_model != NULL ? ",\"" : "",
             extra_model != NULL ? extra_model : "", extra_model != NULL ? "\"" : "", i);
    put(s, a, json);
}

static void secret(struct ctl_store *s, struct kw_arena *a, int i)
{
    char json[1024];
    snprintf(json, sizeof(json),
             "{\"apiVersion\":\"v1\",\"kind\":\"Secret\",\"metadata\":{\"name\":\"keys-%d\","
             "\"namespace\":\"bench\",\"labels\":{\"llm.knoway.dev/secret\":\"true\"}},"
             "\"data\":{\"apiKey\":\"c2stYmVuY2gta2V5LTEyMzQ1Njc4OTA=\"}}",
             i);
    put(s, a, json);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 10000;
    int half = n / 2;
    struct ctl_store backends, routes, secrets, slices;
    ctl_store_init(&backends);
    ctl_store_init(&routes);
    ctl_store_init(&secrets);
    ctl_store_init(&slices);
    struct kw_arena *a = kw_arena_new(64u << 20);
    long rss0 = rss_kib();
    for (int i = 0; i < half; i++) {
        char model[64];
        snprintf(model, sizeof(model), "model-%d", i);
        backend(&backends, a, i, model);
        route(&routes, a, i, NULL);
    }
    for (int i = 0; i <= half / 100; i++)
        secret(&secrets, a, i);
    long rss_stored = rss_kib();
    struct ctl_sources src = {&backends, &routes, &secrets, &slices, NULL, NULL, NULL, NULL, 0};

    /* cold: every object parsed and decoded (a restarted controller's first build) */
    double best = 1e18, sum = 0;
    int rounds = 5;
    size_t bytes = 0, gzbytes = 0, nb = 0, nr = 0;
    struct ctl_build *keep[4] = {0}; /* the status writer and discovery hold a few */
    for (int k = 0; k < rounds; k++) {
        double t0 = now_ms();
        struct ctl_build *b = ctl_build_run(&src);
        double t = now_ms() - t0;
        if (b == NULL) {
            fprintf(stderr, "bench-build: build failed\n");
            return 1;
        }
        bytes = b->len;
        gzbytes = b->gzlen;
        nb = b->nbackends;
        nr = b->nroutes;
        best = t < best ? t : best;
        sum += t;
        ctl_build_unref(keep[k % 4]);
        keep[k % 4] = b;
    }
    /* warm: the controller's decode cache filled by a first build */
    src.cache = ctl_cache_new();
    double t0 = now_ms();
    ctl_build_unref(ctl_build_run(&src));
    double first = now_ms() - t0, warm = 1e18;
    for (int k = 0; k < rounds; k++) {
        t0 = now_ms();
        ctl_build_unref(ctl_build_run(&src));
        double t = now_ms() - t0;
        warm = t < warm ? t : warm;
    }
    /* one route changes (kubectl apply of one object), then the build */
    double one = 1e18;
    for (int k = 0; k < rounds; k++) {
        route(&routes, a, 7, k % 2 == 0 ? "changed-model" : "model-7");
        t0 = now_ms();
        struct ctl_build *b = ctl_build_run(&src);
        double t = now_ms() - t0;
        one = t < one ? t : one;
        ctl_build_unref(b);
    }
    size_t cached = 0, cache_bytes = 0;
    ctl_cache_stats(src.cache, &cached, &cache_bytes);
    long rss_built = rss_kib();
    printf("{\"resources\": %d, \"backends\": %zu, \"routes\": %zu, \"snapshot_bytes\": %zu, "
           "\"gzip_bytes\": %zu, \"build_cold_ms_best\": %.1f, \"build_cold_ms_mean\": %.1f, "
           "\"build_first_with_cache_ms\": %.1f, \"build_warm_ms_best\": %.1f, "
           "\"build_after_one_change_ms_best\": %.1f, \"cache_objects\": %zu, "
           "\"cache_mib\": %.1f, \"rss_stores_mib\": %.1f, \"rss_total_mib\": %.1f}\n",
           n, nb, nr, bytes, gzbytes, best, sum / rounds, first, warm, one, cached,
           cache_bytes / 1048576.0, (rss_stored - rss0) / 1024.0, rss_built / 1024.0);
    ctl_cache_free(src.cache);
    for (int k = 0; k < 4; k++)
        ctl_build_unref(keep[k]);
    ctl_store_cleanup(&backends);
    ctl_store_cleanup(&routes);
    ctl_store_cleanup(&secrets);
    ctl_store_cleanup(&slices);
    kw_arena_free(a);
    return 0;
}
