/* The filter table (filter.h): order is the order filters run in; on_end runs in reverse
 * (the access log sees what every other filter recorded). */
#include "debug.h"
#include "filter.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "server.h"

const struct dp_filter_ops *const dp_filters[] = {
    &dp_filter_access_log,
    &dp_filter_metrics,
    &dp_filter_trace, /* before auth: a refused request has its trace id too */
    &dp_filter_auth,
    &dp_filter_models,
    &dp_filter_limit,
    &dp_filter_usage_admit,
    &dp_filter_trace_propagate,
    &dp_filter_usage,
    &dp_filter_genai,
};
const size_t dp_nfilters = KW_ARRAY_LEN(dp_filters);

_Static_assert(KW_ARRAY_LEN(dp_filters) <= DP_MAX_FILTERS, "raise DP_MAX_FILTERS");

int dp_filters_init(struct dp_server *s, const struct dp_filter_ops *const *filters, size_t n)
{
    if (n > DP_MAX_FILTERS)
        return KW_ERROR;
    s->filters = filters;
    s->nfilters = n;
    for (size_t i = 0; i < n; i++)
        if (filters[i]->init != NULL && filters[i]->init(s, &s->filter_conf[i]) != KW_OK) {
            kw_log(KW_LOG_ERROR, "a filter could not start", "filter", filters[i]->name, NULL);
            return KW_ERROR;
        }
    return KW_OK;
}

void dp_filters_fini(struct dp_server *s)
{
    for (size_t i = 0; i < s->nfilters; i++)
        if (s->filters[i]->fini != NULL)
            s->filters[i]->fini(s->filter_conf[i]);
}

void *dp_filter_conf(const struct dp_server *s, const struct dp_filter_ops *ops)
{
    for (size_t i = 0; i < s->nfilters; i++)
        if (s->filters[i] == ops)
            return s->filter_conf[i];
    return NULL;
}

unsigned dp_filter_index(const struct dp_server *s, const struct dp_filter_ops *ops)
{
    for (size_t i = 0; i < s->nfilters; i++)
        if (s->filters[i] == ops)
            return (unsigned)i;
    return DP_MAX_FILTERS;
}

void dp_filters_wake(struct dp_worker *w)
{
    struct dp_server *s = w->server;
    dp_debug_answer(w);
    for (size_t i = 0; i < s->nfilters; i++)
        if (s->filters[i]->on_wake != NULL)
            s->filters[i]->on_wake(w, s->filter_conf[i]);
}
