/* knoway: what the data planes and the controller agree on about Redis, written once.
 *
 * The URL: redis://[user@]host[:port][/db], db 0..15. A password in the URL is refused (it
 * would sit in a file or a command line in clear: a password file carries it); rediss://
 * is refused because the distribution's hiredis (0.14) has no TLS.
 *
 * The usage hash of a consumer: knoway:usage:{NAMESPACE/NAME}:PERIOD (the braces keep a
 * consumer's keys on one Redis Cluster slot), with the fields requests, input, output and
 * cost (nano-USD) the data planes add to and the controller's leader reads into
 * LLMConsumer.status.usage. */
#ifndef KNOWAY_REDIS_CONTRACT_H
#define KNOWAY_REDIS_CONTRACT_H

#include <stddef.h>
#include <stdint.h>

struct kw_redis_url {
    char user[128]; /* "" when none */
    char host[254];
    uint16_t port; /* 6379 by default */
    unsigned db;   /* 0 by default */
};

/* Parse url into *out. KW_OK, or KW_ERROR with what is wrong in err (a sentence; it quotes
 * the URL only when the URL carries no password). */
int kw_redis_url_parse(const char *url, struct kw_redis_url *out, char *err, size_t errlen);

/* The usage hash's key of consumer ns/name for period ("2026-12", "2026-W49", ...) into
 * out; false when it does not fit. */
#define KW_USAGE_KEY_MAX 600
int kw_usage_key(char *out, size_t len, const char *ns, const char *name, const char *period);

#endif
