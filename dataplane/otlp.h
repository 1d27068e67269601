/* knoway data plane: spans exported over OTLP/HTTP with the JSON encoding (POST
 * <endpoint>/v1/traces), by a thread of their own: workers hand a span (its JSON) over
 * under a mutex held for a pointer swap, never waiting on the network; the thread sends a
 * batch every second or every 256 spans. At most 8,192 spans wait; more are dropped and
 * counted, as are batches the collector refused.
 *
 * Threading: dp_otlp_submit and dp_otlp_stats from any thread. */
#ifndef DP_OTLP_H
#define DP_OTLP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/resource.h"

#define DP_OTLP_MAX_QUEUE 8192
#define DP_OTLP_BATCH     256

struct dp_otlp;

struct dp_otlp *dp_otlp_start(const char *endpoint, const struct kw_header *headers,
                              size_t nheaders, int64_t timeout_ms);
void dp_otlp_stop(struct dp_otlp *o); /* sends what waits, then stops */
/* A span (OTLP JSON object, copied). false when the queue is full (dropped, counted). */
bool dp_otlp_submit(struct dp_otlp *o, const char *span, size_t len);

struct dp_otlp_stats {
    uint64_t exported, dropped, failed;
};
void dp_otlp_stats(struct dp_otlp *o, struct dp_otlp_stats *out);

#endif
