/* knoway: a metrics registry - counters, gauges and histograms with bounded label sets,
 * sharded per writer thread and summed on scrape, written as Prometheus text.
 *
 * Threading: each shard has one writer (a worker thread, the admin thread, ...); any thread
 * may write the whole registry out (kw_metrics_write) while writers run. Families are
 * registered before the writers start. Label values are copied; a family holds at most
 * max_series label sets per shard, past that new sets are counted under the values
 * "other" (cardinality stays bounded whatever the input). */
#ifndef KNOWAY_METRICS_H
#define KNOWAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "knoway/buf.h"

#define KW_METRIC_MAX_LABELS 12

enum kw_metric_type {
    KW_METRIC_COUNTER,
    KW_METRIC_GAUGE,
    KW_METRIC_HISTOGRAM,
    KW_METRIC_GAUGE_DOUBLE /* a gauge of fractional values (kw_series_setf) */
};

struct kw_metrics;
struct kw_metric;
struct kw_series;

/* A registry with nshards writer shards. NULL on out-of-memory. _free(NULL) is a no-op. */
struct kw_metrics *kw_metrics_new(unsigned nshards);
void kw_metrics_free(struct kw_metrics *m);

/* Register a family. labels: NULL-terminated names (NULL: none). bounds: a histogram's
 * upper bounds, ascending (+Inf is implicit). NULL on out-of-memory or bad arguments. */
struct kw_metric *kw_metrics_add(struct kw_metrics *m, enum kw_metric_type type, const char *name,
                                 const char *help, const char *const *labels, unsigned max_series,
                                 const double *bounds, size_t nbounds);

/* The series of values (as many as the family's labels) in shard; created on first use by
 * the shard's writer. Callers may keep it for the registry's life. NULL on out-of-memory. */
struct kw_series *kw_metric_series(struct kw_metric *f, unsigned shard, const char *const *values);

/* Counter: add v >= 0; gauge: add v (any sign) or set it; histogram: observe v. */
void kw_series_add(struct kw_series *s, int64_t v);
void kw_series_set(struct kw_series *s, int64_t v);
void kw_series_observe(struct kw_series *s, double v);
void kw_series_setf(struct kw_series *s, double v); /* KW_METRIC_GAUGE_DOUBLE */

/* Convenience: kw_series_add(kw_metric_series(f, shard, values), v). */
void kw_metric_add(struct kw_metric *f, unsigned shard, const char *const *values, int64_t v);

/* Every family in registration order, shards summed, series sorted by label values, in
 * the Prometheus text format 0.0.4. KW_OK or KW_ERROR (out's limit). */
int kw_metrics_write(struct kw_metrics *m, struct kw_buf *out);

#endif
