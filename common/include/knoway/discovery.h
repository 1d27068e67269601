/* knoway: the discovery protocol between data planes and the controller, written once.
 *
 *   POST /v1/discovery?wait=SECONDS   Authorization: Bearer TOKEN
 *   {"node":{"id","cluster"},"version":APPLIED,"nonce":RECEIVED,"error":null|{"message"}}
 *   -> 200 the snapshot (canonical JSON, gzip when asked), X-Knoway-Version: VERSION
 *   -> 304 nothing newer within wait seconds
 *
 * version is what the data plane applied, nonce what it last received: nonce != version
 * with an error is a NACK of nonce (the running version is kept). The snapshot's own
 * format is knoway/snapshot.h's. */
#ifndef KNOWAY_DISCOVERY_H
#define KNOWAY_DISCOVERY_H

#include <stddef.h>

#include "knoway/arena.h"
#include "knoway/buf.h"
#include "knoway/node.h"

#define KW_DISCOVERY_PATH        "/v1/discovery"
#define KW_DISCOVERY_VERSION_HD  "X-Knoway-Version"
#define KW_DISCOVERY_NODE_ID_MAX 253

struct kw_poll {
    const char *id, *cluster, *version, *nonce; /* nonce defaults to version */
    const struct kw_node *error;                /* null or {"message"}; NULL when absent */
    const char *message;                        /* error.message, or NULL */
};

/* A data plane's poll body into b (reset first); error NULL or "" for none. KW_OK, or
 * KW_ERROR when b is full. */
int kw_poll_write(struct kw_buf *b, const char *id, const char *cluster, const char *version,
                  const char *nonce, const char *error);

/* Parse a poll body (nodes in a). NULL, or why it is refused (a 400's message). */
const char *kw_poll_parse(struct kw_arena *a, const char *body, size_t len, struct kw_poll *p);

#endif
