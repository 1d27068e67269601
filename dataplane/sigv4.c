/* AWS SigV4 header signing: see sigv4.h. */
#include "sigv4.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "knoway/kw.h"

#define SIGV4_MAX 65536

void dp_sigv4_sha256_hex(const void *data, size_t len, char hex[65])
{
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256(data, len, d);
    for (size_t i = 0; i < sizeof(d); i++)
        snprintf(hex + 2 * i, 3, "%02x", d[i]);
}

void dp_sigv4_date(long long t, char buf[17])
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, 17, "%Y%m%dT%H%M%SZ", &tm);
}

/* AWS's URI encoding: unreserved characters kept, '/' kept when slash is true. */
static void uri_encode(struct kw_buf *out, const char *s, size_t n, bool slash)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (slash && c == '/'))
            kw_buf_append(out, &s[i], 1);
        else
            kw_buf_printf(out, "%%%02X", c);
    }
}

static int hexval(int c)
{
    return isdigit(c) ? c - '0' : isxdigit(c) ? (tolower(c) - 'a' + 10) : -1;
}

/* A query component as sent (percent-decoded) re-encoded the canonical way. */
static void query_encode(struct kw_buf *out, const char *s, size_t n)
{
    struct kw_buf dec;
    kw_buf_init(&dec, SIGV4_MAX);
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
            char c = (char)(hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
            kw_buf_append(&dec, &c, 1);
            i += 2;
        } else {
            kw_buf_append(&dec, &s[i], 1);
        }
    }
    uri_encode(out, dec.data != NULL ? dec.data : "", dec.len, false);
    kw_buf_cleanup(&dec);
}

struct qparam {
    char *text; /* "name=value", canonical */
    size_t name_len;
};

static int cmp_param(const void *a, const void *b)
{
    const struct qparam *x = a, *y = b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->text, y->text, n);
    if (c != 0)
        return c;
    if (x->name_len != y->name_len)
        return x->name_len < y->name_len ? -1 : 1;
    return strcmp(x->text + x->name_len, y->text + y->name_len);
}

static int canonical_query(const char *q, struct kw_buf *out)
{
    if (q == NULL || *q == '\0')
        return KW_OK;
    size_t n = 1;
    for (const char *p = q; *p; p++)
        n += *p == '&';
    struct qparam *ps = calloc(n, sizeof(*ps));
    if (ps == NULL)
        return KW_ERROR;
    size_t k = 0;
    int rc = KW_OK;
    for (const char *p = q; rc == KW_OK && *p;) {
        const char *amp = strchr(p, '&'), *end = amp != NULL ? amp : p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        struct kw_buf b;
        kw_buf_init(&b, SIGV4_MAX);
        query_encode(&b, p, (size_t)((eq != NULL ? eq : end) - p));
        ps[k].name_len = b.len;
        kw_buf_puts(&b, "=");
        if (eq != NULL)
            query_encode(&b, eq + 1, (size_t)(end - eq - 1));
        ps[k].text = b.data != NULL ? strdup(b.data) : NULL;
        rc = ps[k].text != NULL ? KW_OK : KW_ERROR;
        kw_buf_cleanup(&b);
        k++;
        p = amp != NULL ? amp + 1 : end;
    }
    if (rc == KW_OK) {
        qsort(ps, k, sizeof(*ps), cmp_param);
        for (size_t i = 0; i < k; i++) {
            if (i > 0)
                kw_buf_puts(out, "&");
            kw_buf_puts(out, ps[i].text);
        }
    }
    for (size_t i = 0; i < k; i++)
        free(ps[i].text);
    free(ps);
    return rc;
}

static int cmp_header(const void *a, const void *b)
{
    const struct dp_sigv4_header *x = a, *y = b;
    return strcasecmp(x->name, y->name);
}

/* Sorted headers and the signed-headers list ("host;x-amz-date"). */
static int signed_headers(const struct dp_sigv4 *s, struct dp_sigv4_header **sorted,
                          struct kw_buf *names)
{
    *sorted = malloc((s->nheaders + 1) * sizeof(**sorted));
    if (*sorted == NULL)
        return KW_ERROR;
    memcpy(*sorted, s->headers, s->nheaders * sizeof(**sorted));
    qsort(*sorted, s->nheaders, sizeof(**sorted), cmp_header);
    for (size_t i = 0; i < s->nheaders; i++) {
        if (i > 0)
            kw_buf_puts(names, ";");
        for (const char *p = (*sorted)[i].name; *p; p++) {
            char c = (char)tolower((unsigned char)*p);
            kw_buf_append(names, &c, 1);
        }
    }
    return KW_OK;
}

static int canonical(const struct dp_sigv4 *s, struct kw_buf *out, struct kw_buf *names)
{
    struct dp_sigv4_header *sorted;
    if (signed_headers(s, &sorted, names) != KW_OK)
        return KW_ERROR;
    kw_buf_printf(out, "%s\n", s->method);
    uri_encode(out, s->path, strlen(s->path), true);
    kw_buf_puts(out, "\n");
    int rc = canonical_query(s->query, out);
    kw_buf_puts(out, "\n");
    for (size_t i = 0; i < s->nheaders; i++) {
        for (const char *p = sorted[i].name; *p; p++) {
            char c = (char)tolower((unsigned char)*p);
            kw_buf_append(out, &c, 1);
        }
        kw_buf_puts(out, ":");
        /* trimmed, runs of spaces folded to one */
        const char *v = sorted[i].value;
        while (*v == ' ' || *v == '\t')
            v++;
        size_t vl = strlen(v);
        while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
            vl--;
        for (size_t j = 0; j < vl; j++) {
            if (v[j] == ' ' && j > 0 && v[j - 1] == ' ')
                continue;
            kw_buf_append(out, &v[j], 1);
        }
        kw_buf_puts(out, "\n");
    }
    free(sorted);
    kw_buf_puts(out, "\n");
    kw_buf_append(out, names->data, names->len);
    kw_buf_puts(out, "\n");
    char hash[65];
    dp_sigv4_sha256_hex(s->payload != NULL ? s->payload : "", s->payload_len, hash);
    if (kw_buf_puts(out, hash) != KW_OK)
        return KW_ERROR;
    return rc;
}

int dp_sigv4_canonical_request(const struct dp_sigv4 *s, struct kw_buf *out)
{
    struct kw_buf names;
    kw_buf_init(&names, SIGV4_MAX);
    int rc = canonical(s, out, &names);
    kw_buf_cleanup(&names);
    return rc;
}

static int hmac(const unsigned char *key, size_t klen, const char *msg, size_t mlen,
                unsigned char out[32])
{
    unsigned int len = 32;
    return HMAC(EVP_sha256(), key, (int)klen, (const unsigned char *)msg, mlen, out, &len) != NULL
               ? KW_OK
               : KW_ERROR;
}

int dp_sigv4_authorization(const struct dp_sigv4 *s, struct kw_buf *out)
{
    if (s->amz_date == NULL || strlen(s->amz_date) != 16)
        return KW_ERROR;
    struct kw_buf creq, names, sts;
    kw_buf_init(&creq, SIGV4_MAX * 4);
    kw_buf_init(&names, SIGV4_MAX);
    kw_buf_init(&sts, SIGV4_MAX);
    int rc = canonical(s, &creq, &names);
    char date[9], hash[65];
    memcpy(date, s->amz_date, 8);
    date[8] = '\0';
    dp_sigv4_sha256_hex(creq.data != NULL ? creq.data : "", creq.len, hash);
    rc |= kw_buf_printf(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s", s->amz_date, date,
                        s->region, s->service, hash);
    /* kDate = HMAC("AWS4" + secret, date), kRegion, kService, kSigning, then the signature */
    unsigned char k[32], sig[32];
    struct kw_buf key;
    kw_buf_init(&key, 1024);
    rc |= kw_buf_printf(&key, "AWS4%s", s->secret_access_key);
    if (rc == KW_OK)
        rc = hmac((unsigned char *)key.data, key.len, date, 8, k);
    if (key.data != NULL)
        OPENSSL_cleanse(key.data, key.len); /* the secret */
    kw_buf_cleanup(&key);
    const char *parts[] = {s->region, s->service, "aws4_request"};
    for (size_t i = 0; rc == KW_OK && i < 3; i++)
        rc = hmac(k, 32, parts[i], strlen(parts[i]), k);
    if (rc == KW_OK)
        rc = hmac(k, 32, sts.data, sts.len, sig);
    if (rc == KW_OK) {
        kw_buf_printf(out, "AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=",
                      s->access_key_id, date, s->region, s->service);
        kw_buf_append(out, names.data, names.len);
        kw_buf_puts(out, ", Signature=");
        for (size_t i = 0; i < 32; i++)
            kw_buf_printf(out, "%02x", sig[i]);
        rc = out->len > 0 ? KW_OK : KW_ERROR;
    }
    OPENSSL_cleanse(k, sizeof(k));
    kw_buf_cleanup(&creq);
    kw_buf_cleanup(&names);
    kw_buf_cleanup(&sts);
    return rc;
}
