/* knoway: spans exported over OTLP/HTTP (POST <endpoint>/v1/traces), JSON or protobuf
 * encoded, by a thread of their own.
 *
 *   worker / builder thread                exporter thread
 *   kw_span_init, kw_span_str/int/...      every second or every 256 spans:
 *   kw_otlp_submit: one malloc, the        one ExportTraceServiceRequest of the batch,
 *   queue's mutex for a pointer swap  -->  encoded (JSON or protobuf), one POST
 *   (a full queue drops and counts)        (failures counted, never retried)
 *
 * At most KW_OTLP_MAX_QUEUE spans and KW_OTLP_MAX_QUEUE_BYTES wait (and, with an account,
 * no more than the owner's memory budget allows: their bytes are counted in it); more are
 * dropped and counted, as are batches the collector refused or never answered: a slow or
 * absent collector costs a counter, never a wait on a worker nor unbounded memory. At a
 * stop what waits is sent until the stop's deadline, and the rest is dropped (counted).
 *
 * The protobuf encoding is written here (the messages of opentelemetry-proto's
 * trace/v1, common/v1 and collector/trace/v1 that spans need: a few dozen lines of varint
 * and length-delimited fields) rather than generated: docs/observability.md says why.
 *
 * Threading: kw_span_* on the caller's span; kw_otlp_submit and kw_otlp_stats from any
 * thread. */
#ifndef KNOWAY_OTLP_H
#define KNOWAY_OTLP_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/buf.h"
#include "knoway/resource.h"

#define KW_OTLP_MAX_QUEUE       8192
#define KW_OTLP_MAX_QUEUE_BYTES (32u * 1024 * 1024)
#define KW_OTLP_BATCH           256
#define KW_SPAN_MAX_BYTES       (256 * 1024) /* one span's attributes and events */

enum kw_otlp_protocol { KW_OTLP_JSON, KW_OTLP_PROTOBUF };
enum kw_span_kind { KW_SPAN_INTERNAL = 1, KW_SPAN_SERVER = 2, KW_SPAN_CLIENT = 3 };

/* A span being built (the caller's storage). Ids are lower-case hex; parent_id "" for a
 * root span. Attributes and events are packed into `data` by the functions below. */
struct kw_span {
    char trace_id[33], span_id[17], parent_id[17];
    char name[256];
    enum kw_span_kind kind;
    bool error; /* status ERROR */
    int64_t start_ns, end_ns;
    struct kw_buf data;
};

void kw_span_init(struct kw_span *s, const char *trace_id, const char *span_id,
                  const char *parent_id, const char *name, enum kw_span_kind kind);
void kw_span_cleanup(struct kw_span *s);
/* Attributes; a NULL or empty string is left out. An attribute that would pass
 * KW_SPAN_MAX_BYTES is left out. Keys and event names are this code's own: plain ASCII
 * names (a-z, 0-9, '.', '_'), written without escaping. */
void kw_span_str(struct kw_span *s, const char *key, const char *v);
void kw_span_strn(struct kw_span *s, const char *key, const char *v, size_t len);
void kw_span_int(struct kw_span *s, const char *key, int64_t v);
void kw_span_double(struct kw_span *s, const char *key, double v);
void kw_span_strs(struct kw_span *s, const char *key, const char *const *v, size_t n);
/* An event without attributes at time_ns. */
void kw_span_event(struct kw_span *s, const char *name, int64_t time_ns);

/* Random ids, never all zero: 16 bytes -> 32 hex digits, 8 -> 16. A generator per thread
 * (xoshiro256**) seeded from OpenSSL's RNG: trace ids must be unpredictable enough not to
 * collide, not secret. kw_trace_random: 64 random bits. Any thread. */
void kw_trace_random_hex(char *out, size_t bytes);
uint64_t kw_trace_random(void);
int64_t kw_now_unix_ns(void);

struct kw_otlp_config {
    const char *endpoint; /* base URL: "/v1/traces" is appended */
    const struct kw_header *headers;
    size_t nheaders;
    int64_t timeout_ms;
    enum kw_otlp_protocol protocol;
    const char *service; /* resource service.name */
    /* optional: queued spans' bytes are added to *account (the data plane's memory
     * budget), and a span is dropped rather than take *account past budget (0: no budget) */
    atomic_llong *account;
    long long budget;
};

/* The environment's OTEL_EXPORTER_OTLP_{TRACES_,}ENDPOINT and _PROTOCOL applied to what
 * configuration left unset (c->endpoint NULL). *endpoint_is_full: the traces endpoint was
 * given whole (no /v1/traces suffix). */
void kw_otlp_from_env(struct kw_otlp_config *c, bool *endpoint_is_full);

struct kw_otlp;

/* Start the exporter thread. full_url: endpoint is the whole URL. NULL on failure. */
struct kw_otlp *kw_otlp_start(const struct kw_otlp_config *c, bool full_url);
/* Send what waits for at most wait_ms (each export's timeout shortened to fit), drop the
 * rest (counted), then stop. _stop(NULL) is a no-op. */
void kw_otlp_stop(struct kw_otlp *o, int64_t wait_ms);
/* Queue a copy of s. false when dropped (queue full or out of memory; counted). */
bool kw_otlp_submit(struct kw_otlp *o, const struct kw_span *s);

struct kw_otlp_stats {
    uint64_t exported, dropped, failed;
};
void kw_otlp_stats(struct kw_otlp *o, struct kw_otlp_stats *out);
/* knoway_trace_spans_total{result} in Prometheus text, appended to b. */
void kw_otlp_write_metrics(struct kw_otlp *o, struct kw_buf *b);

/* One ExportTraceServiceRequest of n spans (as kw_otlp_submit packed them) into out
 * (reset first); for tests. KW_OK or KW_ERROR (out's limit). */
struct kw_otlp_item;
int kw_otlp_encode(enum kw_otlp_protocol p, const char *service, struct kw_otlp_item *list,
                   struct kw_buf *out);
/* Pack a span into an item for kw_otlp_encode (tests); free() it. */
struct kw_otlp_item *kw_otlp_item_new(const struct kw_span *s);

#endif
