/* knoway controller: the discovery server (docs/snapshot.md, docs/controller.md).
 *
 *   data plane                                   controller
 *   POST /v1/discovery?wait=30                   node state: last poll, acked, nacked
 *   {"node":{"id","cluster"},"version":V,        |
 *    "nonce":N,"error":null|{"message"}}         |
 *        ------------------------------------>   seen = N if set, else V
 *                                                current != seen -> 200 + snapshot at once
 *                                                else suspend the connection until the
 *                                                version changes (200) or wait ends (304)
 *   200: body = the snapshot, X-Knoway-Version = its version; the next poll carries
 *        version = it and nonce = it (ACK), or the old version, nonce = it and error (NACK:
 *        the controller then holds that node until a newer version exists).
 *
 * libmicrohttpd runs it in one internal epoll thread; a waiting poll is a suspended
 * connection, not a thread. A ticker thread resumes polls whose wait ended. Authentication:
 * Authorization: Bearer <token>, compared in constant time (SHA-256 of both, CRYPTO_memcmp).
 * Optional TLS (certificate and key files). */
#ifndef CTL_DISCOVERY_H
#define CTL_DISCOVERY_H

#include "knoway/discovery.h"

#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "builder.h"
#include "knoway/buf.h"

#define CTL_NODE_ID_MAX   KW_DISCOVERY_NODE_ID_MAX
#define CTL_DISC_PER_IP   64 /* discovery connections from one address (a data plane uses 1) */
#define CTL_DISC_TIMEOUT  10 /* seconds a connection may idle outside a held poll */
#define CTL_MAX_NODES     10000
#define CTL_NODE_STALE_MS 90000 /* default grace: a node not seen for this long is forgotten */

struct ctl_node {
    char id[CTL_NODE_ID_MAX + 1];
    char cluster[64];
    char addr[64];
    char acked[80];  /* the last version it applied */
    char nacked[80]; /* the last version it rejected, or "" */
    char *error;     /* its reason */
    int64_t last_seen_ms;
    int64_t acked_ms;
    uint64_t polls;
    bool waiting;
    /* the last snapshot sent and not yet acked or nacked (push-to-ack latency, spans) */
    char pushed[80];
    int64_t pushed_ms, pushed_ns;
    char trace_id[33], build_span[17];
};

typedef void (*ctl_ack_fn)(void *ud);

struct kw_metric;
struct kw_otlp;

struct ctl_waiter;

struct ctl_discovery {
    struct MHD_Daemon *mhd;
    pthread_mutex_t mu;
    struct ctl_build *cur; /* the build being served (a reference), NULL before the first */
    unsigned char token_hash[32];
    bool has_token;
    char *tls_cert, *tls_key; /* PEM bytes, or NULL for plain HTTP */
    struct ctl_waiter *waiters;
    struct ctl_node *nodes;
    size_t nnodes, cap_nodes;
    int64_t node_grace_ms;    /* a node not polling for this long is evicted (0: default) */
    unsigned max_connections; /* open discovery connections (0: 20000) */
    atomic_uint_fast64_t evicted;
    ctl_ack_fn on_ack; /* a node acked or nacked (status writer) */
    void *ud;
    struct kw_metric *push_ack; /* histogram{result}: push to ack or nack (shard 1), or NULL */
    struct kw_otlp *otlp;       /* a span per push, child of its build's span, or NULL */
    pthread_t ticker;
    atomic_bool stop;
    atomic_uint_fast64_t polls, pushes, nacks, unauthorized, published;
};

/* Start listening on addr ("host:port"). token may be NULL (no authentication: logged as
 * a warning). tls_cert_file/tls_key_file both NULL for plain HTTP. KW_OK or KW_ERROR. */
int ctl_discovery_start(struct ctl_discovery *d, const char *addr, const char *token,
                        const char *tls_cert_file, const char *tls_key_file);
/* Stop serving: no callback (on_ack) runs after this returns. The node table stays
 * readable until ctl_discovery_cleanup. */
void ctl_discovery_stop(struct ctl_discovery *d);
void ctl_discovery_cleanup(struct ctl_discovery *d);

/* Serve build b from now on (takes a new reference). Polls waiting for another version
 * are answered at once. Returns true when the version changed. */
bool ctl_discovery_publish(struct ctl_discovery *d, struct ctl_build *b);

/* Copies of the connected nodes (seen within the grace period or waiting) in *out;
 * returns how many. Free with ctl_discovery_nodes_free. */
size_t ctl_discovery_connected(struct ctl_discovery *d, struct ctl_node **out);
void ctl_discovery_nodes_free(struct ctl_node *nodes, size_t n);

/* The nodes as JSON (/debug/nodes). */
void ctl_discovery_nodes_json(struct ctl_discovery *d, struct kw_buf *out);

/* Counts for status and metrics: connected nodes (seen within the grace period or
 * waiting) by state: acked (they applied version), nacked (they rejected a snapshot and
 * are not on version), stale (behind, not rejecting). Nodes past the grace period are
 * evicted (pod churn must never fill the table). */
struct ctl_node_counts {
    size_t connected, acked, nacked, stale;
};
void ctl_discovery_counts(struct ctl_discovery *d, const char *version,
                          struct ctl_node_counts *out);

/* One poll's body, parsed (strings live in the arena). */
/* Listening socket for addr, or -1. Shared with the admin listener. */
int ctl_listen(const char *addr);

#endif
