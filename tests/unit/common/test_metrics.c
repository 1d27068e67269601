/* The metrics registry: shards summed on output, bounded label sets, escaping, histograms,
 * and the exact Prometheus text. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "knoway/metrics.h"
#include "testutil.h"

static char *text_of(struct kw_metrics *m)
{
    struct kw_buf b;
    kw_buf_init(&b, 1 << 20);
    assert_int_equal(kw_metrics_write(m, &b), KW_OK);
    return b.data;
}

static void test_counters_and_shards(void **state)
{
    (void)state;
    struct kw_metrics *m = kw_metrics_new(3);
    struct kw_metric *c = kw_metrics_add(m, KW_METRIC_COUNTER, "t_requests_total", "Requests.",
                                         (const char *const[]){"code", NULL}, 10, NULL, 0);
    assert_non_null(c);
    kw_metric_add(c, 0, (const char *const[]){"200"}, 2);
    kw_metric_add(c, 1, (const char *const[]){"200"}, 3);
    kw_metric_add(c, 2, (const char *const[]){"503"}, 1);
    kw_metric_add(c, 2, (const char *const[]){"200"}, 1);
    /* a handle kept by a writer is the same series */
    struct kw_series *s = kw_metric_series(c, 1, (const char *const[]){"200"});
    kw_series_add(s, 4);
    char *t = text_of(m);
    assert_string_equal(t, "# HELP t_requests_total Requests.\n"
                           "# TYPE t_requests_total counter\n"
                           "t_requests_total{code=\"200\"} 10\n"
                           "t_requests_total{code=\"503\"} 1\n");
    free(t);
    kw_metrics_free(m);
}

static void test_gauges_and_labels(void **state)
{
    (void)state;
    struct kw_metrics *m = kw_metrics_new(2);
    struct kw_metric *g =
        kw_metrics_add(m, KW_METRIC_GAUGE, "t_in_flight", "In flight.", NULL, 1, NULL, 0);
    struct kw_metric *d = kw_metrics_add(m, KW_METRIC_GAUGE_DOUBLE, "t_seconds", "Seconds.",
                                         (const char *const[]){"a", "b", NULL}, 4, NULL, 0);
    kw_series_add(kw_metric_series(g, 0, NULL), 5);
    kw_series_add(kw_metric_series(g, 1, NULL), -2);
    kw_series_set(kw_metric_series(g, 1, NULL), 1); /* set replaces this shard's value */
    kw_series_setf(kw_metric_series(d, 0, (const char *const[]){"x\"y", "back\\slash\nnl"}), 0.25);
    char *t = text_of(m);
    assert_string_equal(t, "# HELP t_in_flight In flight.\n# TYPE t_in_flight gauge\n"
                           "t_in_flight 6\n"
                           "# HELP t_seconds Seconds.\n# TYPE t_seconds gauge\n"
                           "t_seconds{a=\"x\\\"y\",b=\"back\\\\slash\\nnl\"} 0.25\n");
    free(t);
    kw_metrics_free(m);
}

static void test_bounded(void **state)
{
    (void)state;
    struct kw_metrics *m = kw_metrics_new(1);
    struct kw_metric *c = kw_metrics_add(m, KW_METRIC_COUNTER, "t_total", "T.",
                                         (const char *const[]){"model", NULL}, 3, NULL, 0);
    char name[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(name, sizeof(name), "m%d", i);
        kw_metric_add(c, 0, (const char *const[]){name}, 1);
    }
    char *t = text_of(m);
    /* three label sets, then everything else under "other": 4 series whatever the input */
    size_t lines = 0;
    for (const char *p = t; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    assert_int_equal(lines, 2 + 4);
    assert_non_null(strstr(t, "t_total{model=\"other\"} 997\n"));
    free(t);
    kw_metrics_free(m);
}

static void test_histogram(void **state)
{
    (void)state;
    struct kw_metrics *m = kw_metrics_new(2);
    static const double bounds[] = {0.1, 1, 10};
    struct kw_metric *h = kw_metrics_add(m, KW_METRIC_HISTOGRAM, "t_duration_seconds", "D.",
                                         (const char *const[]){"op", NULL}, 4, bounds, 3);
    assert_non_null(h);
    const char *const op[] = {"chat"};
    kw_series_observe(kw_metric_series(h, 0, op), 0.05);
    kw_series_observe(kw_metric_series(h, 0, op), 0.5);
    kw_series_observe(kw_metric_series(h, 1, op), 1); /* le is inclusive */
    kw_series_observe(kw_metric_series(h, 1, op), 50);
    char *t = text_of(m);
    assert_string_equal(t, "# HELP t_duration_seconds D.\n# TYPE t_duration_seconds histogram\n"
                           "t_duration_seconds_bucket{op=\"chat\",le=\"0.1\"} 1\n"
                           "t_duration_seconds_bucket{op=\"chat\",le=\"1\"} 3\n"
                           "t_duration_seconds_bucket{op=\"chat\",le=\"10\"} 3\n"
                           "t_duration_seconds_bucket{op=\"chat\",le=\"+Inf\"} 4\n"
                           "t_duration_seconds_sum{op=\"chat\"} 51.55\n"
                           "t_duration_seconds_count{op=\"chat\"} 4\n");
    free(t);
    /* bounds must ascend */
    assert_null(
        kw_metrics_add(m, KW_METRIC_HISTOGRAM, "t_bad", "B.", NULL, 1, (const double[]){2, 1}, 2));
    kw_metrics_free(m);
}

/* Writers on their shards while another thread writes the text out (run under ASan and
 * TSan-free by design: one writer per shard, relaxed atomics). */
struct writer {
    struct kw_metrics *m;
    struct kw_metric *c;
    unsigned shard;
};

static void *write_many(void *arg)
{
    struct writer *w = arg;
    char v[16];
    for (int i = 0; i < 20000; i++) {
        snprintf(v, sizeof(v), "%d", i % 50);
        kw_metric_add(w->c, w->shard, (const char *const[]){v}, 1);
    }
    return NULL;
}

static void test_concurrent_scrape(void **state)
{
    (void)state;
    struct kw_metrics *m = kw_metrics_new(2);
    struct kw_metric *c = kw_metrics_add(m, KW_METRIC_COUNTER, "t_total", "T.",
                                         (const char *const[]){"k", NULL}, 64, NULL, 0);
    struct writer w[2] = {{m, c, 0}, {m, c, 1}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, write_many, &w[i]);
    for (int i = 0; i < 20; i++)
        free(text_of(m));
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    char *t = text_of(m);
    long total = 0;
    for (const char *p = t; (p = strstr(p, "} ")) != NULL; p += 2)
        total += strtol(p + 2, NULL, 10);
    assert_int_equal(total, 40000);
    free(t);
    kw_metrics_free(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counters_and_shards),
        cmocka_unit_test(test_gauges_and_labels),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_histogram),
        cmocka_unit_test(test_concurrent_scrape),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
