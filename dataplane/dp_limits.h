/* knoway data plane: every limit and fixed size, named (every buffer has a maximum, and
 * the maxima live in one header). */
#ifndef DP_LIMITS_H
#define DP_LIMITS_H

#define DP_MAX_UPSTREAM_RESPONSE (64u * 1024 * 1024) /* a buffered (non-stream) response */
#define DP_MAX_SSE_EVENT         (4u * 1024 * 1024)  /* one upstream SSE event */
#define DP_STREAM_HIGH_WATER     (64u * 1024)        /* client buffer that pauses the upstream */
#define DP_STREAM_LOW_WATER      (16u * 1024)        /* ... and resumes it */
#define DP_MAX_STREAM_BUFFER     (DP_STREAM_HIGH_WATER + DP_MAX_SSE_EVENT)
#define DP_H2_STREAM_BUFFER      (1024u * 1024) /* HTTP/2 streams: no pause, this much at most */
#define DP_KEEPALIVE_MS          15000
#define DP_CONN_MEMORY           (8u * 1024)  /* MHD pool per connection: headers too */
#define DP_CURL_BUFFER           (16u * 1024) /* receive buffer of a buffered transfer */
#define DP_CURL_STREAM_BUFFER    (2u * 1024)  /* ... of a stream: small events, held long */
/* A request's arena may hold DP_ARENA_BASE plus DP_ARENA_PER_BYTE times the bytes it parses
 * (its body, then a buffered response): a JSON tree costs a few times its text, a
 * pathological one (an array of a million 1-byte numbers) ~40x and is refused with 413. */
#define DP_ARENA_BASE       (1024u * 1024)
#define DP_ARENA_PER_BYTE   16u
#define DP_WATCH_AFTER_MS   20   /* a request waiting this long gets its client fd watched */
#define DP_POOL_MAX         256  /* idle arenas and curl handles kept per worker */
#define DP_TRIM_EVERY_MS    2000 /* the main thread returns freed memory after bursts */
#define DP_HEARTBEAT_MS     1000 /* the main thread pings every worker loop */
#define DP_SPAN_DRAIN_MS    2000 /* at exit, queued spans are sent for at most this */
#define DP_LIVENESS_MS      5000 /* /healthz fails when a loop has not answered for this */
#define DP_TRIM_AFTER_BYTES (16ll * 1024 * 1024)

#define DP_MAX_ATTEMPTS         16 /* upstream attempts of one request (retry.attempts caps) */
#define DP_MAX_FILTERS          16 /* entries of the filter table */
#define DP_MAX_RESPONSE_HEADERS 12 /* headers filters add to one response */

#endif
