/* knoway: the resource model (docs/configuration.md) as C structs (LLMBackend, LLMRoute, Secret,
 * DataPlane) and the decoder from kw_node that validates them.
 *
 * All strings and arrays belong to the arena of the kw_config (or kw_snapshot) that holds
 * the resource. Durations are milliseconds; 0 means "not set" where a field is optional. */
#ifndef KNOWAY_RESOURCE_H
#define KNOWAY_RESOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net.h"
#include "node.h"

#define KW_API_GROUP   "llm.knoway.dev"
#define KW_API_VERSION "llm.knoway.dev/v1alpha1"

enum kw_kind {
    KW_KIND_LLMBACKEND,
    KW_KIND_LLMROUTE,
    KW_KIND_SECRET,
    KW_KIND_DATAPLANE,
    KW_KIND_LLMCONSUMER,
};

enum kw_provider {
    KW_PROVIDER_OPENAI,
    KW_PROVIDER_AZURE_OPENAI,
    KW_PROVIDER_ANTHROPIC,
    KW_PROVIDER_AWS_BEDROCK,
    KW_PROVIDER_GEMINI,
    KW_PROVIDER_VERTEX_AI,
    KW_PROVIDER_COHERE,
    KW_PROVIDER_MISTRAL,
    KW_PROVIDER_VLLM,
    KW_PROVIDER_KSERVE,
    KW_PROVIDER_OLLAMA,
    KW_PROVIDER__COUNT,
};

/* "LLMBackend", ... */
const char *kw_kind_name(enum kw_kind k);
/* "OpenAI", "AzureOpenAI", ... as spelled in the API. */
const char *kw_provider_name(enum kw_provider p);
/* The public API root used when upstream sets no address, or NULL when the provider has
 * none (self-hosted servers, Azure, Bedrock: their address depends on the user). */
const char *kw_provider_default_base_url(enum kw_provider p);
/* The API root below a service's address ("/v1" for vLLM and Ollama, "/openai/v1" for
 * KServe, "" otherwise): appended to endpoints resolved from a serviceRef. */
const char *kw_provider_service_path(enum kw_provider p);
/* True for providers that speak the OpenAI schema. */
bool kw_provider_is_openai_compatible(enum kw_provider p);

struct kw_meta {
    const char *name;
    const char *ns;  /* "default" when absent */
    const char *uid; /* from the API; NULL in files */
    const char *resource_version;
    const char *creation_timestamp;
    int64_t generation; /* from the API; 0 in files */
    const char *file;   /* where it was read (NULL for API objects) */
    unsigned line, col; /* position of the document */
    size_t order;       /* position among documents of its kind (age in files) */
};

struct kw_secret_ref {
    const char *name; /* NULL = not set */
    const char *key;
    unsigned line, col; /* where it was written (files) */
};

struct kw_header {
    const char *name;
    const char *value;
};

struct kw_endpoint {
    const char *url;
    uint32_t weight; /* default 1 */
};

struct kw_upstream {
    const char *base_url; /* exactly one of base_url, service_ref, endpoints */
    struct {
        const char *name; /* NULL = not set */
        uint32_t port;
    } service_ref;
    struct kw_endpoint *endpoints;
    size_t nendpoints;
    bool http2;                 /* protocol: HTTP/2 (default HTTP/1.1) */
    int64_t timeout_ms;         /* 0 = route's timeout */
    int64_t connect_timeout_ms; /* default 10s */
    struct kw_header *headers;
    size_t nheaders;
    struct {
        bool insecure_skip_verify;
        struct kw_secret_ref ca_secret_ref;
    } tls;
};

struct kw_credentials {
    struct kw_secret_ref secret_ref;
    struct {
        const char *api_version; /* NULL = not set */
        const char *deployment;
    } azure;
    struct {
        const char *region; /* NULL = not set */
        const char *access_key_id_key;
        const char *secret_access_key_key;
        const char *session_token_key;
    } bedrock;
    struct {
        const char *project; /* NULL = not set */
        const char *region;  /* a location such as us-central1, or "global" */
    } vertex;
};

struct kw_params {
    struct kw_node *defaults;  /* a map merged under the request body, or NULL */
    struct kw_node *overrides; /* a map merged over the request body, or NULL */
    const char **remove;       /* top-level body fields to delete */
    size_t nremove;
};

struct kw_backend {
    struct kw_meta meta;
    enum kw_provider provider;
    const char *model_name; /* NULL = pass the client's model through */
    struct kw_upstream upstream;
    bool has_credentials;
    struct kw_credentials credentials;
    struct kw_params params;
    struct {
        uint32_t consecutive_failures; /* default 5; 0 = no circuit breaker */
        int64_t ejection_time_ms;      /* default 30s; doubles with each ejection in a row */
        uint32_t max_ejection_percent; /* of the backend's endpoints; default 50 */
    } circuit_breaker;
    struct {
        uint32_t requests_per_minute; /* 0 = unlimited */
        uint32_t tokens_per_minute;
        uint32_t max_concurrent_requests;
    } limits;
    struct {
        bool set;
        /* USD per million tokens, as micro-USD ("3.00" -> 3000000) */
        int64_t input_per_million, output_per_million, cached_input_per_million;
    } pricing;
    bool reasoning_omit; /* spec.reasoning.content: Omit (default Include) */
    /* spec.structuredOutputs: how a translating provider (Anthropic, Bedrock, Vertex AI
     * Claude) honours response_format: a forced tool call (default), or the provider's own */
    enum kw_structured { KW_STRUCTURED_TOOL, KW_STRUCTURED_NATIVE } structured_outputs;
    bool valid; /* false when any error was reported for it */
};

struct kw_model_match {
    const char *value; /* without the trailing '*' */
    bool prefix;       /* written as "value*"; "*" alone matches every model */
};

struct kw_backend_ref {
    const char *name;
    uint32_t weight;   /* default 1; 0 = receives no traffic */
    uint32_t priority; /* default 0; lower first, higher ones are the fallback */
    const char *model_override;
    struct kw_backend *backend; /* resolved; NULL until then or when missing */
    unsigned line, col;         /* where name was written (files) */
};

enum kw_lb_strategy {
    KW_LB_WEIGHTED_RANDOM, /* default */
    KW_LB_ROUND_ROBIN,
    KW_LB_LEAST_REQUEST,
    KW_LB_LATENCY,
    KW_LB_COUNT
};

/* LLMRoute spec.retry.retryOn */
enum {
    KW_RETRY_CONNECT_FAILURE = 1 << 0,
    KW_RETRY_RESET = 1 << 1,
    KW_RETRY_TIMEOUT = 1 << 2,
    KW_RETRY_5XX = 1 << 3,
    KW_RETRY_429 = 1 << 4,
};

enum kw_mid_stream { KW_MID_STREAM_NONE, KW_MID_STREAM_CONTINUE };

/* A rate limit: LLMRoute spec.rateLimits[] and LLMConsumer spec.limits[]. */
enum kw_limit_key {
    KW_LIMIT_KEY_CONSUMER,
    KW_LIMIT_KEY_USER,
    KW_LIMIT_KEY_HEADER,
    KW_LIMIT_KEY_CLIENT_IP
};
enum kw_limit_count { KW_LIMIT_COUNT_TOTAL, KW_LIMIT_COUNT_INPUT, KW_LIMIT_COUNT_OUTPUT };
struct kw_rate_limit {
    const char *name;       /* unique in its list */
    enum kw_limit_key key;  /* whose bucket: default Consumer */
    const char *header;     /* key Header/<name>: the header's name */
    const char **consumers; /* clientSelector.consumers ("ns/name" or "name") */
    size_t nconsumers;
    struct kw_header *headers; /* clientSelector.headers: exact values */
    size_t nheaders;
    bool tokens;               /* tokens {...}, else requests {...} */
    enum kw_limit_count count; /* tokens only */
    uint64_t limit;
    int64_t window_ms;
    bool global;         /* scope: Global (Redis), else Local */
    bool enforce_stream; /* enforce: Stream (tokens only) */
};

/* Money is counted in nano-USD (1e-9 USD): exact sums of per-token prices. */
enum kw_period { KW_PERIOD_DAY, KW_PERIOD_WEEK, KW_PERIOD_MONTH };

struct kw_route {
    struct kw_meta meta;
    struct kw_model_match *models;
    size_t nmodels;
    struct kw_header *headers; /* exact value match, names case-insensitive */
    size_t nheaders;
    const char **paths;
    size_t npaths;
    struct kw_backend_ref *refs;
    size_t nrefs;
    int64_t timeout_ms;             /* default 300s */
    int64_t stream_idle_timeout_ms; /* default 60s */
    struct {
        enum kw_lb_strategy strategy;
        bool client_override; /* x-knoway-routing-strategy may choose */
    } load_balancer;
    struct {
        uint32_t attempts;          /* in all, the first included; default: one per backendRef */
        unsigned retry_on;          /* KW_RETRY_* bits */
        int64_t backoff_base_ms;    /* default 25ms */
        int64_t backoff_max_ms;     /* default 250ms */
        int64_t per_try_timeout_ms; /* 0 = the route's timeout */
        enum kw_mid_stream mid_stream;
        uint32_t budget_percent; /* extra attempts per backend over 10s; default 20 */
    } retry;
    struct kw_rate_limit *rate_limits; /* spec.rateLimits */
    size_t nrate_limits;
    int64_t estimated_output_tokens; /* token reservations without max_tokens; default 1024 */
    int64_t max_output_tokens;       /* largest max_tokens a request may ask; 0: the ceiling */
    /* spec.consumers: which LLMConsumers may call it (anonymous and token-only callers are
     * not consumers): those of these namespaces (none listed: the route's own; "*": any)
     * whose attributes hold every pair of match */
    struct {
        const char **namespaces;
        size_t nnamespaces;
        struct kw_header *match; /* matchAttributes */
        size_t nmatch;
    } consumers;
    bool valid;      /* false when the route itself has an error */
    bool resolved;   /* every backendRef names an existing, valid LLMBackend */
    bool conflicted; /* an older route of another namespace claims one of its models */
};

/* A user, application or team calling the gateway (LLMConsumer). */
struct kw_consumer {
    struct kw_meta meta;
    struct kw_secret_ref *api_keys; /* spec.apiKeys[].secretRef; key NULL: every value */
    size_t napi_keys;
    struct kw_header *attributes; /* spec.attributes, sorted by name */
    size_t nattributes;
    struct kw_model_match *models; /* spec.models (none: every model) */
    size_t nmodels;
    /* in snapshots: the SHA-256 (64 hex digits) of each key, sorted; never a key itself */
    const char **key_hashes;
    size_t nkey_hashes;
    struct kw_rate_limit *limits; /* spec.limits (key Consumer unless written) */
    size_t nlimits;
    struct {
        bool set;
        int64_t limit_nusd; /* nano-USD */
        enum kw_period period;
        bool enforce_stream;
    } budget;
    bool valid;
};

struct kw_secret_item {
    const char *key;
    const char *value; /* decoded bytes, NUL-terminated */
    size_t len;
};

struct kw_secret {
    struct kw_meta meta;
    const char *type;
    struct kw_secret_item *items;
    size_t nitems;
    bool valid;
};

/* DataPlane spec.auth.jwt[]: who may sign tokens, and how claims map to identity. */
struct kw_jwt_provider {
    const char *issuer;
    const char **audiences;
    size_t naudiences;
    bool any_audience;     /* accept any aud: only when set explicitly */
    const char *jwks_file; /* exactly one of jwks_file, jwks_url */
    const char *jwks_url;
    int64_t refresh_ms;         /* JWKS refresh period; default 5m */
    const char *consumer_claim; /* names an LLMConsumer ("ns/name" or "name"); optional */
    const char *user_claim;     /* default "sub" */
};

/* DataPlane spec.usage.sinks[] */
struct kw_usage_sink {
    const char *name; /* unique; names its shipped offset in the spool */
    bool postgres;    /* else jsonl */
    const char *dsn_file;
    const char *table;         /* default knoway_usage */
    uint32_t batch_size;       /* default 500 */
    int64_t flush_interval_ms; /* default 1s */
    const char *path;          /* jsonl: a file, or NULL with stdout */
    bool stdout_;
};

struct kw_dataplane {
    struct kw_meta meta;
    const char *listen; /* "0.0.0.0:8080" */
    const char *admin;  /* "127.0.0.1:9901" */
    uint32_t workers;   /* 0 = one per core */
    /* who may read the admin listener's debug endpoints: loopback by default */
    const struct kw_cidr *debug_from;
    size_t ndebug_from;
    /* proxies whose X-Forwarded-For names the client (limits, connection counting) */
    const struct kw_cidr *trusted_proxies;
    size_t ntrusted_proxies;
    struct {
        const char *url; /* NULL = static mode */
        const char *token_file;
        const char *node_id;
        const char *cache_file;
        const char *ca_file; /* CA bundle for an https url; NULL = the system's */
    } discovery;
    struct {
        uint64_t max_body_bytes;
        uint32_t max_connections;
        uint64_t max_memory_bytes;           /* requests' memory budget: admission control */
        uint32_t max_connections_per_client; /* per client IP; 0 = no limit */
        int64_t read_timeout_ms;             /* headers and body of one request */
    } limits;
    struct {
        bool required;             /* a request without a valid API key gets 401 */
        uint32_t max_failures;     /* failed attempts per client address and window; 0: off */
        int64_t failure_window_ms; /* default 10s */
        struct kw_jwt_provider *jwt;
        size_t njwt;
    } auth;
    struct {
        const char *url; /* redis://[user@]host[:port][/db]; NULL = no Redis */
        const char *host;
        uint16_t port;
        unsigned db;
        const char *user;
        const char *password_file;
        int64_t timeout_ms; /* default 100ms */
        bool fail_closed;   /* failureMode: Closed (503), else Open (local limits) */
    } redis;
    struct {
        bool enabled; /* spec.usage present */
        const char *dir;
        uint64_t max_bytes;       /* default 1 GiB */
        int64_t sync_interval_ms; /* default 100ms */
        bool drop_when_full;      /* onFull: Drop, else Reject */
        struct kw_usage_sink *sinks;
        size_t nsinks;
    } usage;
    struct {
        const char *endpoint; /* spec.telemetry.otlp.endpoint (OTLP/HTTP), NULL: none */
        struct kw_header *headers;
        size_t nheaders;
        double sample_ratio;  /* new traces; default 1 */
        int64_t timeout_ms;   /* default 5s */
        bool protobuf;        /* protocol: protobuf (default json) */
        bool capture_content; /* message content on spans (default off) */
        /* whose traceparent sampled flag is followed (else sampleRatio decides) */
        enum kw_client_sampling {
            KW_CLIENT_SAMPLING_AUTHENTICATED, /* default: clients that authenticated */
            KW_CLIENT_SAMPLING_ALWAYS,
            KW_CLIENT_SAMPLING_NEVER,
        } client_sampling;
    } telemetry;
    const char **vertex_token_urls; /* spec.vertexAI.tokenURLs: allowed besides Google's */
    size_t nvertex_token_urls;
};

/* Route defaults */
#define KW_DEFAULT_ROUTE_TIMEOUT_MS       300000
#define KW_DEFAULT_STREAM_IDLE_TIMEOUT_MS 60000
#define KW_DEFAULT_CONNECT_TIMEOUT_MS     10000
#define KW_DEFAULT_BACKOFF_BASE_MS        25
#define KW_DEFAULT_BACKOFF_MAX_MS         250
#define KW_DEFAULT_RETRY_BUDGET_PERCENT   20
#define KW_DEFAULT_CONSECUTIVE_FAILURES   5
#define KW_DEFAULT_EJECTION_TIME_MS       30000
#define KW_DEFAULT_MAX_EJECTION_PERCENT   50
#define KW_MAX_RETRY_ATTEMPTS             16
#define KW_DEFAULT_LISTEN                 "0.0.0.0:8080"
#define KW_DEFAULT_ADMIN                  "127.0.0.1:9901"
#define KW_DEFAULT_MAX_BODY_BYTES         10485760u
#define KW_DEFAULT_MAX_CONNECTIONS        20000u
#define KW_DEFAULT_MAX_MEMORY_BYTES       (1024ull * 1024 * 1024)
#define KW_DEFAULT_MAX_CONNS_PER_CLIENT   4096u
#define KW_DEFAULT_READ_TIMEOUT_MS        30000
#define KW_DEFAULT_REDIS_TIMEOUT_MS       100
#define KW_DEFAULT_AUTH_MAX_FAILURES      20
#define KW_DEFAULT_AUTH_FAILURE_WINDOW_MS 10000
#define KW_DEFAULT_USAGE_DIR              "/var/lib/knoway/usage"
#define KW_DEFAULT_USAGE_MAX_BYTES        (1024ull * 1024 * 1024)
#define KW_DEFAULT_USAGE_SYNC_MS          100
#define KW_DEFAULT_ESTIMATED_OUTPUT       1024
#define KW_DEFAULT_JWKS_REFRESH_MS        300000
#define KW_DEFAULT_CACHE_FILE             "/var/lib/knoway/snapshot.json"

/* The budget period (UTC) holding unix time now: its name ("2026-12-02", "2026-W49",
 * "2026-12": the Redis key suffix and status.usage.period) and its end (unix ms). */
void kw_period_name(enum kw_period p, long long now, char *name, size_t len, int64_t *end_ms);
/* nano-USD as a decimal string with at least 2 and at most 6 decimals ("12.50",
 * "0.000022"; rounded down). */
void kw_usd_format(int64_t nano, char *buf, size_t len);

/* Fill a DataPlane with its defaults (docs/configuration.md). */
void kw_dataplane_defaults(struct kw_dataplane *dp);

/* Look up a secret item by key, or NULL. */
const struct kw_secret_item *kw_secret_get(const struct kw_secret *s, const char *key);

/* Route age order: creation time from the API (RFC 3339 UTC sorts as text; equal times by
 * namespace/name), else the order in the file or snapshot, then namespace/name. The oldest
 * route wins ties and model conflicts. */
int kw_route_age_cmp(const struct kw_route *a, const struct kw_route *b);
/* The same for qsort over an array of struct kw_route pointers. */
int kw_route_ptr_age_cmp(const void *a, const void *b);

#endif
