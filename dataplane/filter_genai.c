/* OpenTelemetry GenAI metrics as a filter (docs/dataplane.md, "Metrics"), as exported to
 * Prometheus (dots to underscores, unit suffixes):
 *
 *   gen_ai_client_token_usage                   histogram by gen_ai_token_type (input, output)
 *   gen_ai_server_request_duration_seconds      histogram
 *   gen_ai_server_time_to_first_token_seconds   histogram (streams)
 *   gen_ai_server_time_per_output_token_seconds histogram (streams, more than one token)
 *   gen_ai_client_inference_usage_{input,output,cache_read_input,reasoning_output}_tokens_total
 *   knoway_cost_nano_usd_total                  counter: spend at LLMBackend pricing
 *
 * Labels gen_ai_operation_name, gen_ai_provider_name, gen_ai_request_model,
 * gen_ai_response_model, knoway_route, knoway_backend, knoway_consumer, error_type. Label
 * values come from configuration, never raw client input: the request model is the
 * client's model only when a route names it exactly, else the route's pattern that
 * matched ("llama-*"); the response model is the backend's modelName, or the same. Each
 * family holds at most 2,000 label sets per worker (then "other"). Buckets: OTel's
 * advisory boundaries for token usage; for durations, boundaries spread over LLM latencies
 * (10 ms .. 82 s; TTFT from 1 ms; TPOT 10 ms .. 2.5 s). */
#include <stdlib.h>
#include <string.h>

#include "filter.h"
#include "knoway/kw.h"
#include "knoway/provider.h"
#include "knoway/metrics.h"
#include "server.h"

#define MAX_SERIES 2000

enum { L_OP, L_PROVIDER, L_REQ_MODEL, L_RESP_MODEL, L_ROUTE, L_BACKEND, L_CONSUMER, L_ERROR, L_N };

struct conf {
    struct kw_metric *tokens, *duration, *ttft, *tpot;
    struct kw_metric *usage[4];
    struct kw_metric *cost;
};

static const double token_bounds[] = {1,     4,     16,     64,      256,     1024,     4096,
                                      16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864};
static const double duration_bounds[] = {0.01, 0.02, 0.04, 0.08,  0.16,  0.32,  0.64,
                                         1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92};
static const double ttft_bounds[] = {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1,
                                     0.25,  0.5,   0.75, 1.0,  2.5,  5.0,  7.5,  10.0};
static const double tpot_bounds[] = {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2,
                                     0.3,  0.4,   0.5,  0.75,  1.0, 2.5};

static int init(struct dp_server *s, void **out)
{
    struct conf *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KW_ERROR;
    *out = c;
    static const char *const labels[] = {
        "gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
        "gen_ai_response_model", "knoway_route",         "knoway_backend",
        "knoway_consumer",       "error_type",           NULL};
    static const char *const token_labels[] = {"gen_ai_operation_name", "gen_ai_provider_name",
                                               "gen_ai_request_model",  "gen_ai_response_model",
                                               "knoway_route",          "knoway_backend",
                                               "knoway_consumer",       "error_type",
                                               "gen_ai_token_type",     NULL};
    struct kw_metrics *m = s->metrics;
    c->tokens = kw_metrics_add(m, KW_METRIC_HISTOGRAM, "gen_ai_client_token_usage",
                               "Tokens per request, by type (OpenTelemetry GenAI).", token_labels,
                               MAX_SERIES, token_bounds, KW_ARRAY_LEN(token_bounds));
    c->duration = kw_metrics_add(m, KW_METRIC_HISTOGRAM, "gen_ai_server_request_duration_seconds",
                                 "Time from the request to the end of its answer.", labels,
                                 MAX_SERIES, duration_bounds, KW_ARRAY_LEN(duration_bounds));
    c->ttft = kw_metrics_add(m, KW_METRIC_HISTOGRAM, "gen_ai_server_time_to_first_token_seconds",
                             "Time from the request to the upstream's first byte of a stream.",
                             labels, MAX_SERIES, ttft_bounds, KW_ARRAY_LEN(ttft_bounds));
    c->tpot = kw_metrics_add(m, KW_METRIC_HISTOGRAM, "gen_ai_server_time_per_output_token_seconds",
                             "Time per output token after the first, for streams.", labels,
                             MAX_SERIES, tpot_bounds, KW_ARRAY_LEN(tpot_bounds));
    static const char *const names[4] = {
        "gen_ai_client_inference_usage_input_tokens_total",
        "gen_ai_client_inference_usage_output_tokens_total",
        "gen_ai_client_inference_usage_cache_read_input_tokens_total",
        "gen_ai_client_inference_usage_reasoning_output_tokens_total"};
    static const char *const helps[4] = {"Input tokens.", "Output tokens.",
                                         "Input tokens read from the provider's cache.",
                                         "Output tokens spent on reasoning."};
    for (int i = 0; i < 4; i++)
        c->usage[i] =
            kw_metrics_add(m, KW_METRIC_COUNTER, names[i], helps[i], labels, MAX_SERIES, NULL, 0);
    c->cost = kw_metrics_add(m, KW_METRIC_COUNTER, "knoway_cost_nano_usd_total",
                             "Spend in nano-USD (USD x 1e9) at the backend's pricing.", labels,
                             MAX_SERIES, NULL, 0);
    for (int i = 0; i < 4; i++)
        if (c->usage[i] == NULL)
            return KW_ERROR;
    if (c->cost == NULL)
        return KW_ERROR;
    return c->tokens != NULL && c->duration != NULL && c->ttft != NULL && c->tpot != NULL
               ? KW_OK
               : KW_ERROR;
}

static void fini(void *p)
{
    free(p);
}

const char *dp_genai_operation(const struct dp_request *r)
{
    return r->api == DP_API_EMBEDDINGS    ? "embeddings"
           : r->api == DP_API_COMPLETIONS ? "text_completion"
                                          : "chat";
}

const char *dp_genai_provider(enum kw_provider p)
{
    return kw_provider_info(p)->genai_name;
}

/* The request model as configuration names it (bounded): the client's model when the
 * route lists it exactly, else the pattern that matched. */
static const char *request_model(const struct dp_request *r, char *buf, size_t len)
{
    const struct kw_route *rt = r->route;
    for (size_t i = 0; i < rt->nmodels; i++)
        if (!rt->models[i].prefix && strcmp(rt->models[i].value, r->model) == 0)
            return r->model;
    for (size_t i = 0; i < rt->nmodels; i++) {
        const struct kw_model_match *m = &rt->models[i];
        if (m->prefix && strncmp(r->model, m->value, strlen(m->value)) == 0) {
            snprintf(buf, len, "%s*", m->value);
            return buf;
        }
    }
    return "other";
}

static void on_end(struct dp_request *r, void *ctx)
{
    (void)ctx;
    if (r->route == NULL || r->backend == NULL || r->model == NULL)
        return; /* never reached a backend */
    struct conf *c = dp_filter_conf(r->w->server, &dp_filter_genai);
    unsigned shard = r->w->index + 1;
    char req[300], consumer[320];
    const char *v[L_N + 2];
    v[L_OP] = dp_genai_operation(r);
    v[L_PROVIDER] = dp_genai_provider(r->backend->provider);
    v[L_REQ_MODEL] = request_model(r, req, sizeof(req));
    v[L_RESP_MODEL] = r->backend->model_name != NULL ? r->backend->model_name : v[L_REQ_MODEL];
    v[L_ROUTE] = r->route->meta.name;
    v[L_BACKEND] = r->backend->meta.name;
    if (r->consumer != NULL)
        snprintf(consumer, sizeof(consumer), "%s/%s", r->consumer->meta.ns, r->consumer->meta.name);
    v[L_CONSUMER] = r->consumer != NULL ? consumer : "";
    /* error_type: the error's code from a fixed set of the gateway's, else the status
     * class: never the upstream's text */
    v[L_ERROR] = r->status < 400 ? "" : r->status >= 500 ? "5xx" : r->status == 429 ? "429" : "4xx";
    v[L_N] = NULL;
    int64_t dur_ms = dp_now_ms() - r->start_ms;
    kw_series_observe(kw_metric_series(c->duration, shard, v), (double)dur_ms / 1000.0);
    if (r->usage.have) {
        const char *tv[L_N + 1];
        memcpy(tv, v, sizeof(tv[0]) * L_N);
        tv[L_N] = "input";
        kw_series_observe(kw_metric_series(c->tokens, shard, tv), (double)r->usage.prompt);
        tv[L_N] = "output";
        kw_series_observe(kw_metric_series(c->tokens, shard, tv), (double)r->usage.completion);
        kw_metric_add(c->usage[0], shard, v, r->usage.prompt);
        kw_metric_add(c->usage[1], shard, v, r->usage.completion);
        kw_metric_add(c->usage[2], shard, v, r->usage.cached);
        kw_metric_add(c->usage[3], shard, v, r->usage.reasoning);
        int64_t nano =
            dp_cost_nano(r->backend, r->usage.prompt, r->usage.cached, r->usage.completion);
        if (nano > 0)
            kw_metric_add(c->cost, shard, v, nano);
    }
    if (r->stream && r->up.ttfb_ms >= 0 && r->attempts > 0) {
        int64_t ttft = r->up.start_ms + r->up.ttfb_ms - r->start_ms;
        kw_series_observe(kw_metric_series(c->ttft, shard, v), (double)ttft / 1000.0);
        if (r->usage.have && r->usage.completion > 1 && dur_ms > ttft)
            kw_series_observe(kw_metric_series(c->tpot, shard, v),
                              (double)(dur_ms - ttft) / 1000.0 / (double)(r->usage.completion - 1));
    }
}

const struct dp_filter_ops dp_filter_genai = {
    .name = "genai-metrics",
    .phase = DP_PH_LOG,
    .init = init,
    .fini = fini,
    .on_end = on_end,
};
