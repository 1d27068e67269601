/* knoway data plane: AWS Signature Version 4 for request headers (Bedrock), with
 * OpenSSL's HMAC-SHA256 and SHA-256. Checked against AWS's published test suite.
 *
 * The canonical URI is the request path URI-encoded once more, as AWS does for every
 * service but S3 (so a path sent as /model/a%3A0 is signed as /model/a%253A0); the query
 * is split on '&', each name and value encoded, then sorted. */
#ifndef DP_SIGV4_H
#define DP_SIGV4_H

#include <stddef.h>

#include "knoway/buf.h"

struct dp_sigv4_header {
    const char *name; /* any case; signed lowercased, sorted */
    const char *value;
};

struct dp_sigv4 {
    const char *method;
    const char *path;                      /* as sent, e.g. "/model/x%3A0/converse" */
    const char *query;                     /* as sent without '?', or NULL */
    const struct dp_sigv4_header *headers; /* host and x-amz-date among them */
    size_t nheaders;
    const char *payload;
    size_t payload_len;
    const char *amz_date; /* YYYYMMDDTHHMMSSZ */
    const char *region;
    const char *service;
    const char *access_key_id;
    const char *secret_access_key;
};

/* The Authorization header's value into out. KW_OK or KW_ERROR. */
int dp_sigv4_authorization(const struct dp_sigv4 *s, struct kw_buf *out);

/* The canonical request (for tests and debugging). KW_OK or KW_ERROR. */
int dp_sigv4_canonical_request(const struct dp_sigv4 *s, struct kw_buf *out);

/* Format t (seconds since the epoch, UTC) as YYYYMMDDTHHMMSSZ into buf[17]. */
void dp_sigv4_date(long long t, char buf[17]);

/* Lowercase hex SHA-256 of data into hex[65]. */
void dp_sigv4_sha256_hex(const void *data, size_t len, char hex[65]);

#endif
