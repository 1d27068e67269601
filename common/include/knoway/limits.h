/* knoway: every limit on a buffer or a count, by name, in one place. */
#ifndef KNOWAY_LIMITS_H
#define KNOWAY_LIMITS_H

/* Configuration and snapshot input */
#define KW_MAX_CONFIG_BYTES    (16u * 1024 * 1024)  /* one config file or API object */
#define KW_MAX_SNAPSHOT_BYTES  (64u * 1024 * 1024)  /* one snapshot document */
#define KW_MAX_ARENA_BYTES     (256u * 1024 * 1024) /* memory for one parsed config/snapshot */
#define KW_MAX_DOCUMENTS       10000u               /* YAML documents in one file */
#define KW_MAX_NESTING         64u                  /* depth of maps/sequences in YAML or JSON */
#define KW_MAX_CONTAINER_ITEMS 100000u              /* entries in one map or sequence */
#define KW_MAX_ERRORS          200u                 /* diagnostics kept; the rest are counted */
#define KW_MAX_FIELD_PATH      512u /* bytes of a field path like spec.backendRefs[3].name */

/* Resource model */
#define KW_MAX_NAME_LEN      253u /* metadata.name, DNS-1123 subdomain */
#define KW_MAX_NAMESPACE_LEN 63u  /* DNS-1123 label */
#define KW_MAX_URL_LEN       2048u
#define KW_MAX_HEADER_NAME   256u
#define KW_MAX_HEADER_VALUE  8192u
#define KW_MAX_MODEL_LEN     256u
#define KW_MAX_BACKEND_REFS  64u
#define KW_MAX_API_KEY_REFS  64u   /* spec.apiKeys of an LLMConsumer */
#define KW_MAX_ATTRIBUTES    32u   /* spec.attributes of an LLMConsumer */
#define KW_MAX_RATE_LIMITS   16u   /* rateLimits of a route, limits of a consumer */
#define KW_MAX_JWT_PROVIDERS 16u   /* DataPlane spec.auth.jwt */
#define KW_MAX_CONSUMER_KEYS 1024u /* API keys of one LLMConsumer (all its Secrets' values) */
#define KW_MIN_API_KEY_LEN   16u   /* shorter keys are reported and not accepted */
#define KW_MAX_ENDPOINTS     1024u
#define KW_MAX_MATCH_ITEMS   128u
#define KW_MAX_WEIGHT        1000u
#define KW_MAX_PRIORITY      100u
#define KW_MAX_SECRET_BYTES  (1024u * 1024) /* Kubernetes' own limit for a Secret */

/* Token arithmetic: numbers from requests and upstreams are range-checked against these
 * before any sum or product, and accounting saturates at them */
#define KW_MAX_OUTPUT_TOKENS 10000000ll  /* max_tokens a request may ask (400 above) */
#define KW_MAX_USAGE_TOKENS  (1ll << 40) /* a usage count from an upstream is clamped here */
#define KW_MAX_COST_NUSD     (1ll << 52) /* one request's or a period's cost: 4.5M USD */

#endif
