/* The Redis URL grammar and the usage key both binaries use (knoway/redis_contract.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "knoway/redis_contract.h"

int kw_redis_url_parse(const char *url, struct kw_redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->port = 6379;
    const char *rest;
    if (strncmp(url, "redis://", 8) == 0) {
        rest = url + 8;
    } else if (strncmp(url, "rediss://", 9) == 0) {
        snprintf(err, errlen,
                 "rediss:// (TLS) is not supported: the distribution's hiredis 0.14 has no TLS; "
                 "reach Redis over a trusted network or a TLS sidecar");
        return KW_ERROR;
    } else {
        snprintf(err, errlen, "must start with redis://");
        return KW_ERROR;
    }
    const char *at = strchr(rest, '@');
    if (at != NULL && memchr(rest, ':', (size_t)(at - rest)) != NULL) {
        snprintf(err, errlen, "must not carry a password: use a password file");
        return KW_ERROR;
    }
    if (at != NULL) {
        size_t ul = (size_t)(at - rest);
        if (ul == 0 || ul >= sizeof(out->user)) {
            snprintf(err, errlen, "the user before @ must be 1 to %zu characters",
                     sizeof(out->user) - 1);
            return KW_ERROR;
        }
        memcpy(out->user, rest, ul);
        rest = at + 1;
    }
    size_t hl = strcspn(rest, ":/");
    const char *p = rest + hl;
    char *end = NULL;
    long port = 6379, db = 0;
    int ok = hl > 0 && hl < sizeof(out->host);
    for (size_t i = 0; ok && i < hl; i++) /* a host name or an IPv4 address */
        ok = (rest[i] >= 'a' && rest[i] <= 'z') || (rest[i] >= 'A' && rest[i] <= 'Z') ||
             (rest[i] >= '0' && rest[i] <= '9') || rest[i] == '.' || rest[i] == '-' ||
             rest[i] == '_';
    if (ok && *p == ':') {
        port = strtol(p + 1, &end, 10);
        ok = end != p + 1 && port >= 1 && port <= 65535;
        p = end;
    }
    if (ok && *p == '/' && p[1] != '\0') {
        db = strtol(p + 1, &end, 10);
        ok = end != p + 1 && *end == '\0' && db >= 0 && db <= 15;
    } else if (ok) {
        ok = *p == '\0' || (*p == '/' && p[1] == '\0');
    }
    if (!ok) {
        snprintf(err, errlen, "\"%.200s\" must be redis://[user@]host[:port][/db] (db 0..15)",
                 url); /* no password in it: refused above */
        return KW_ERROR;
    }
    memcpy(out->host, rest, hl);
    out->port = (uint16_t)port;
    out->db = (unsigned)db;
    return KW_OK;
}

int kw_usage_key(char *out, size_t len, const char *ns, const char *name, const char *period)
{
    int n = snprintf(out, len, "knoway:usage:{%s/%s}:%s", ns, name, period);
    return n >= 0 && (size_t)n < len;
}
