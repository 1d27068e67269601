/* The metrics registry (knoway/metrics.h).
 *
 * Per family and shard an open-addressing table of series pointers, written only by the
 * shard's writer and published with release stores; a scrape reads them with acquire
 * loads. Values are relaxed atomics with a single writer each, so a writer never locks. */
#include <math.h>
#include <stdio.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/hash.h"
#include "knoway/kw.h"
#include "knoway/metrics.h"

struct kw_series {
    struct kw_metric *f;
    char **values;
    uint64_t hash;
    atomic_int_fast64_t value;     /* counter, gauge; histogram: count */
    atomic_uint_fast64_t sum_bits; /* histogram: the sum, a double's bits */
    atomic_uint_fast64_t *buckets; /* histogram: nbounds + 1 (the last is +Inf) */
};

struct shard {
    _Atomic(struct kw_series *) *slots;
    unsigned cap; /* a power of two, >= 2 * (max_series + 1) */
    unsigned n;   /* writer only */
    struct kw_series *other;
};

struct kw_metric {
    struct kw_metrics *m;
    enum kw_metric_type type;
    char *name, *help;
    char *labels[KW_METRIC_MAX_LABELS];
    unsigned nlabels, max_series;
    double *bounds;
    size_t nbounds;
    struct shard *shards;
};

struct kw_metrics {
    unsigned nshards;
    struct kw_metric **families;
    size_t n, cap;
};

struct kw_metrics *kw_metrics_new(unsigned nshards)
{
    struct kw_metrics *m = calloc(1, sizeof(*m));
    if (m != NULL)
        m->nshards = nshards > 0 ? nshards : 1;
    return m;
}

static void series_free(struct kw_series *s)
{
    if (s == NULL)
        return;
    for (unsigned i = 0; i < s->f->nlabels; i++)
        free(s->values[i]);
    free(s->values);
    free(s->buckets);
    free(s);
}

void kw_metrics_free(struct kw_metrics *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->n; i++) {
        struct kw_metric *f = m->families[i];
        for (unsigned k = 0; f->shards != NULL && k < m->nshards; k++) {
            for (unsigned j = 0; f->shards[k].slots != NULL && j < f->shards[k].cap; j++)
                series_free(atomic_load(&f->shards[k].slots[j]));
            free(f->shards[k].slots);
        }
        free(f->shards);
        for (unsigned j = 0; j < f->nlabels; j++)
            free(f->labels[j]);
        free(f->name);
        free(f->help);
        free(f->bounds);
        free(f);
    }
    free(m->families);
    free(m);
}

struct kw_metric *kw_metrics_add(struct kw_metrics *m, enum kw_metric_type type, const char *name,
                                 const char *help, const char *const *labels, unsigned max_series,
                                 const double *bounds, size_t nbounds)
{
    if (m->n == m->cap) {
        size_t cap = m->cap > 0 ? m->cap * 2 : 32;
        struct kw_metric **f = realloc(m->families, cap * sizeof(*f));
        if (f == NULL)
            return NULL;
        m->families = f;
        m->cap = cap;
    }
    struct kw_metric *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->m = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help);
    f->max_series = max_series > 0 ? max_series : 1;
    bool ok = f->name != NULL && f->help != NULL;
    for (; ok && labels != NULL && labels[f->nlabels] != NULL; f->nlabels++) {
        if (f->nlabels == KW_METRIC_MAX_LABELS) {
            ok = false;
            break;
        }
        f->labels[f->nlabels] = strdup(labels[f->nlabels]);
        ok = f->labels[f->nlabels] != NULL;
    }
    if (ok && type == KW_METRIC_HISTOGRAM) {
        f->bounds = malloc((nbounds + 1) * sizeof(double));
        ok = f->bounds != NULL;
        for (size_t i = 0; ok && i < nbounds; i++)
            ok = i == 0 || bounds[i] > bounds[i - 1];
        if (ok)
            memcpy(f->bounds, bounds, nbounds * sizeof(double));
        f->nbounds = nbounds;
    }
    unsigned cap = 4;
    while (cap < 2 * (f->max_series + 1))
        cap *= 2;
    f->shards = ok ? calloc(m->nshards, sizeof(*f->shards)) : NULL;
    ok = f->shards != NULL;
    for (unsigned k = 0; ok && k < m->nshards; k++) {
        f->shards[k].cap = cap;
        f->shards[k].slots = calloc(cap, sizeof(*f->shards[k].slots));
        ok = f->shards[k].slots != NULL;
    }
    m->families[m->n++] = f; /* freed with the registry even when incomplete */
    return ok ? f : NULL;
}

static uint64_t hash_values(const struct kw_metric *f, const char *const *values)
{
    struct kw_hash h;
    kw_hash_begin(&h);
    for (unsigned i = 0; i < f->nlabels; i++)
        kw_hash_str(&h, values[i]);
    return kw_hash_end(&h);
}

static bool same_values(const struct kw_series *s, const char *const *values)
{
    for (unsigned i = 0; i < s->f->nlabels; i++)
        if (strcmp(s->values[i], values[i]) != 0)
            return false;
    return true;
}

static struct kw_series *series_new(struct kw_metric *f, const char *const *values, uint64_t h)
{
    struct kw_series *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->f = f;
    s->hash = h;
    s->values = calloc(f->nlabels + 1, sizeof(char *));
    bool ok = s->values != NULL;
    for (unsigned i = 0; ok && i < f->nlabels; i++)
        ok = (s->values[i] = strdup(values[i])) != NULL;
    if (ok && f->type == KW_METRIC_HISTOGRAM)
        ok = (s->buckets = calloc(f->nbounds + 1, sizeof(*s->buckets))) != NULL;
    if (!ok) {
        series_free(s);
        return NULL;
    }
    return s;
}

struct kw_series *kw_metric_series(struct kw_metric *f, unsigned shard, const char *const *values)
{
    if (f == NULL)
        return NULL;
    struct shard *sh = &f->shards[shard < f->m->nshards ? shard : 0];
    static const char *const others[KW_METRIC_MAX_LABELS] = {"other", "other", "other", "other",
                                                             "other", "other", "other", "other",
                                                             "other", "other", "other", "other"};
    for (int round = 0; round < 2; round++) {
        uint64_t h = hash_values(f, values);
        unsigned mask = sh->cap - 1;
        for (unsigned i = (unsigned)h & mask;; i = (i + 1) & mask) {
            struct kw_series *s = atomic_load_explicit(&sh->slots[i], memory_order_acquire);
            if (s == NULL) {
                if (sh->n >= f->max_series && round == 0) {
                    values = others; /* bounded: the rest share one series */
                    break;
                }
                s = series_new(f, values, h);
                if (s == NULL)
                    return NULL;
                atomic_store_explicit(&sh->slots[i], s, memory_order_release);
                sh->n++;
                return s;
            }
            if (s->hash == h && same_values(s, values))
                return s;
        }
    }
    return NULL;
}

void kw_series_add(struct kw_series *s, int64_t v)
{
    if (s != NULL)
        atomic_fetch_add_explicit(&s->value, v, memory_order_relaxed);
}

void kw_series_set(struct kw_series *s, int64_t v)
{
    if (s != NULL)
        atomic_store_explicit(&s->value, v, memory_order_relaxed);
}

void kw_series_observe(struct kw_series *s, double v)
{
    if (s == NULL || s->buckets == NULL)
        return;
    size_t i = 0;
    while (i < s->f->nbounds && v > s->f->bounds[i])
        i++;
    atomic_fetch_add_explicit(&s->buckets[i], 1, memory_order_relaxed);
    /* one writer per shard: load, add, store */
    uint64_t bits = atomic_load_explicit(&s->sum_bits, memory_order_relaxed);
    double sum;
    memcpy(&sum, &bits, sizeof(sum));
    sum += v;
    memcpy(&bits, &sum, sizeof(bits));
    atomic_store_explicit(&s->sum_bits, bits, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->value, 1, memory_order_relaxed);
}

void kw_series_setf(struct kw_series *s, double v)
{
    if (s == NULL)
        return;
    uint64_t bits;
    memcpy(&bits, &v, sizeof(bits));
    atomic_store_explicit(&s->sum_bits, bits, memory_order_relaxed);
}

void kw_metric_add(struct kw_metric *f, unsigned shard, const char *const *values, int64_t v)
{
    kw_series_add(kw_metric_series(f, shard, values), v);
}

/* ---- writing ------------------------------------------------------------------------------ */

static int values_cmp(const void *x, const void *y)
{
    const struct kw_series *a = *(struct kw_series *const *)x, *b = *(struct kw_series *const *)y;
    for (unsigned i = 0; i < a->f->nlabels; i++) {
        int c = strcmp(a->values[i], b->values[i]);
        if (c != 0)
            return c;
    }
    return 0;
}

static int write_escaped(struct kw_buf *b, const char *v)
{
    int rc = KW_OK;
    for (const char *p = v; *p != '\0'; p++) {
        if (*p == '\\')
            rc |= kw_buf_puts(b, "\\\\");
        else if (*p == '"')
            rc |= kw_buf_puts(b, "\\\"");
        else if (*p == '\n')
            rc |= kw_buf_puts(b, "\\n");
        else
            rc |= kw_buf_append(b, p, 1);
    }
    return rc;
}

/* {a="x",b="y"[,le="..."]} or nothing. */
static int write_labels(struct kw_buf *b, const struct kw_series *s, const char *le)
{
    const struct kw_metric *f = s->f;
    if (f->nlabels == 0 && le == NULL)
        return KW_OK;
    int rc = kw_buf_puts(b, "{");
    for (unsigned i = 0; i < f->nlabels; i++) {
        rc |= kw_buf_printf(b, "%s%s=\"", i > 0 ? "," : "", f->labels[i]);
        rc |= write_escaped(b, s->values[i]);
        rc |= kw_buf_puts(b, "\"");
    }
    if (le != NULL)
        rc |= kw_buf_printf(b, "%sle=\"%s\"", f->nlabels > 0 ? "," : "", le);
    return rc | kw_buf_puts(b, "}");
}

/* The shortest text that reads back as v ("0.1", not "0.10000000000000001"). */
static void fmt_double(char *dst, size_t cap, double v)
{
    if (isinf(v)) {
        snprintf(dst, cap, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(dst, cap, "%.*g", prec, v);
        if (strtod(dst, NULL) == v)
            return;
    }
}

static int write_family(struct kw_metric *f, struct kw_buf *b)
{
    static const char *const types[] = {"counter", "gauge", "histogram", "gauge"};
    int rc =
        kw_buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", f->name, f->help, f->name, types[f->type]);
    size_t n = 0;
    for (unsigned k = 0; k < f->m->nshards; k++)
        n += f->shards[k].cap;
    struct kw_series **all = malloc((n + 1) * sizeof(*all));
    if (all == NULL)
        return KW_ERROR;
    n = 0;
    for (unsigned k = 0; k < f->m->nshards; k++)
        for (unsigned i = 0; i < f->shards[k].cap; i++) {
            struct kw_series *s =
                atomic_load_explicit(&f->shards[k].slots[i], memory_order_acquire);
            if (s != NULL)
                all[n++] = s;
        }
    qsort(all, n, sizeof(*all), values_cmp);
    uint64_t *buckets = calloc(f->nbounds + 1, sizeof(uint64_t));
    for (size_t i = 0; i < n && buckets != NULL;) {
        size_t j = i;
        int64_t value = 0;
        double sum = 0;
        memset(buckets, 0, (f->nbounds + 1) * sizeof(uint64_t));
        for (; j < n && values_cmp(&all[i], &all[j]) == 0; j++) {
            value += atomic_load_explicit(&all[j]->value, memory_order_relaxed);
            uint64_t bits = atomic_load_explicit(&all[j]->sum_bits, memory_order_relaxed);
            double d;
            memcpy(&d, &bits, sizeof(d));
            sum += d;
            if (f->type != KW_METRIC_HISTOGRAM)
                continue;
            for (size_t q = 0; q <= f->nbounds; q++)
                buckets[q] += atomic_load_explicit(&all[j]->buckets[q], memory_order_relaxed);
        }
        if (f->type == KW_METRIC_GAUGE_DOUBLE) {
            char v[40];
            fmt_double(v, sizeof(v), sum);
            rc |= kw_buf_puts(b, f->name);
            rc |= write_labels(b, all[i], NULL);
            rc |= kw_buf_printf(b, " %s\n", v);
        } else if (f->type != KW_METRIC_HISTOGRAM) {
            rc |= kw_buf_puts(b, f->name);
            rc |= write_labels(b, all[i], NULL);
            rc |= kw_buf_printf(b, " %lld\n", (long long)value);
        } else {
            uint64_t cum = 0;
            char le[40];
            for (size_t q = 0; q <= f->nbounds; q++) {
                cum += buckets[q];
                fmt_double(le, sizeof(le), q < f->nbounds ? f->bounds[q] : INFINITY);
                rc |= kw_buf_printf(b, "%s_bucket", f->name);
                rc |= write_labels(b, all[i], le);
                rc |= kw_buf_printf(b, " %llu\n", (unsigned long long)cum);
            }
            fmt_double(le, sizeof(le), sum);
            rc |= kw_buf_printf(b, "%s_sum", f->name);
            rc |= write_labels(b, all[i], NULL);
            rc |= kw_buf_printf(b, " %s\n%s_count", le, f->name);
            rc |= write_labels(b, all[i], NULL);
            rc |= kw_buf_printf(b, " %llu\n", (unsigned long long)cum);
        }
        i = j;
    }
    if (buckets == NULL)
        rc = KW_ERROR;
    free(buckets);
    free(all);
    return rc;
}

int kw_metrics_write(struct kw_metrics *m, struct kw_buf *out)
{
    int rc = KW_OK;
    for (size_t i = 0; i < m->n; i++)
        if (m->families[i]->shards != NULL)
            rc |= write_family(m->families[i], out);
    return rc;
}
