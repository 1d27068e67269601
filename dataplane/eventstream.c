/* AWS event-stream decoding: see eventstream.h. */
#include "eventstream.h"

#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "knoway/kw.h"

void dp_es_init(struct dp_es *p, size_t max_message)
{
    kw_buf_init(&p->buf, max_message);
    p->max_message = max_message;
}

void dp_es_cleanup(struct dp_es *p)
{
    kw_buf_cleanup(&p->buf);
}

static uint32_t be32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint32_t crc(const unsigned char *b, size_t n)
{
    return (uint32_t)crc32(0L, b, (uInt)n);
}

static void set_string(char *dst, size_t cap, const unsigned char *v, size_t n)
{
    size_t k = n < cap - 1 ? n : cap - 1;
    memcpy(dst, v, k);
    dst[k] = '\0';
}

/* Parse the headers of one message into m. KW_OK or KW_ERROR. */
static int parse_headers(const unsigned char *h, size_t len, struct dp_es_message *m, char *err,
                         size_t errlen)
{
    static const size_t fixed[] = {0, 0, 1, 2, 4, 8, 0, 0, 8, 16};
    size_t i = 0;
    while (i < len) {
        size_t nlen = h[i++];
        if (nlen == 0 || i + nlen + 1 > len) {
            snprintf(err, errlen, "event stream: truncated header name");
            return KW_ERROR;
        }
        const unsigned char *name = h + i;
        i += nlen;
        unsigned type = h[i++];
        if (type > 9) {
            snprintf(err, errlen, "event stream: unknown header value type %u", type);
            return KW_ERROR;
        }
        size_t vlen = fixed[type];
        if (type == 6 || type == 7) {
            if (i + 2 > len) {
                snprintf(err, errlen, "event stream: truncated header value");
                return KW_ERROR;
            }
            vlen = (size_t)h[i] << 8 | h[i + 1];
            i += 2;
        }
        if (i + vlen > len) {
            snprintf(err, errlen, "event stream: truncated header value");
            return KW_ERROR;
        }
        if (type == 7) {
            char *dst = NULL;
            size_t cap = 0;
#define KW_ES_HDR(lit, field)                                                                      \
    if (nlen == sizeof(lit) - 1 && memcmp(name, lit, nlen) == 0)                                   \
    dst = m->field, cap = sizeof(m->field)
            KW_ES_HDR(":event-type", event_type);
            KW_ES_HDR(":message-type", message_type);
            KW_ES_HDR(":exception-type", exception_type);
            KW_ES_HDR(":error-code", error_code);
            KW_ES_HDR(":error-message", error_message);
#undef KW_ES_HDR
            if (dst != NULL)
                set_string(dst, cap, h + i, vlen);
        }
        i += vlen;
    }
    return KW_OK;
}

/* One complete message at b (total bytes). */
static int deliver(const unsigned char *b, size_t total, dp_es_message_fn on_message, void *ud,
                   char *err, size_t errlen)
{
    size_t hlen = be32(b + 4);
    if (crc(b, total - 4) != be32(b + total - 4)) {
        snprintf(err, errlen, "event stream: message CRC mismatch");
        return KW_ERROR;
    }
    if (hlen > total - DP_ES_MIN_MESSAGE) {
        snprintf(err, errlen, "event stream: headers length %zu exceeds the message", hlen);
        return KW_ERROR;
    }
    struct dp_es_message m;
    memset(&m, 0, sizeof(m));
    if (parse_headers(b + 12, hlen, &m, err, errlen) != KW_OK)
        return KW_ERROR;
    m.payload = (const char *)b + 12 + hlen;
    m.payload_len = total - DP_ES_MIN_MESSAGE - hlen;
    if (on_message(ud, &m) != KW_OK) {
        if (err[0] == '\0')
            snprintf(err, errlen, "event stream: message rejected");
        return KW_ERROR;
    }
    return KW_OK;
}

/* Whether a prelude is acceptable; its total length in *total. */
static int check_prelude(const struct dp_es *p, const unsigned char *b, size_t *total, char *err,
                         size_t errlen)
{
    *total = be32(b);
    if (crc(b, 8) != be32(b + 8)) {
        snprintf(err, errlen, "event stream: prelude CRC mismatch");
        return KW_ERROR;
    }
    if (*total < DP_ES_MIN_MESSAGE || *total > p->max_message) {
        snprintf(err, errlen, "event stream: message length %zu out of range", *total);
        return KW_ERROR;
    }
    return KW_OK;
}

int dp_es_feed(struct dp_es *p, const char *buf, size_t len, dp_es_message_fn on_message, void *ud,
               char *err, size_t errlen)
{
    const unsigned char *in = (const unsigned char *)buf;
    err[0] = '\0';
    while (len > 0) {
        size_t total;
        if (p->buf.len == 0 && len >= 12) { /* the common case: whole messages in buf */
            if (check_prelude(p, in, &total, err, errlen) != KW_OK)
                return KW_ERROR;
            if (len >= total) {
                if (deliver(in, total, on_message, ud, err, errlen) != KW_OK)
                    return KW_ERROR;
                in += total;
                len -= total;
                continue;
            }
        }
        /* accumulate: the prelude first, then the rest of the message */
        size_t want = 12;
        if (p->buf.len >= 12) {
            if (check_prelude(p, (unsigned char *)p->buf.data, &total, err, errlen) != KW_OK)
                return KW_ERROR;
            want = total;
        }
        size_t take = want - p->buf.len < len ? want - p->buf.len : len;
        if (kw_buf_append(&p->buf, in, take) != KW_OK) {
            snprintf(err, errlen, "event stream: message larger than %zu bytes", p->max_message);
            return KW_ERROR;
        }
        in += take;
        len -= take;
        if (p->buf.len == 12) {
            if (check_prelude(p, (unsigned char *)p->buf.data, &total, err, errlen) != KW_OK)
                return KW_ERROR;
            want = total;
        }
        if (p->buf.len >= 12 && p->buf.len == want) {
            int rc = deliver((unsigned char *)p->buf.data, want, on_message, ud, err, errlen);
            kw_buf_reset(&p->buf);
            if (rc != KW_OK)
                return KW_ERROR;
        }
    }
    return KW_OK;
}

static void put32(struct kw_buf *out, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 8), (unsigned char)v};
    kw_buf_append(out, b, 4);
}

int dp_es_encode(struct kw_buf *out, const char *const *names, const char *const *values,
                 size_t nheaders, const char *payload, size_t payload_len)
{
    size_t hlen = 0;
    for (size_t i = 0; i < nheaders; i++) {
        size_t nl = strlen(names[i]), vl = strlen(values[i]);
        if (nl == 0 || nl > 255 || vl > 65535)
            return KW_ERROR;
        hlen += 1 + nl + 1 + 2 + vl;
    }
    size_t start = out->len, total = DP_ES_MIN_MESSAGE + hlen + payload_len;
    put32(out, (uint32_t)total);
    put32(out, (uint32_t)hlen);
    if (out->len != start + 8)
        return KW_ERROR;
    put32(out, crc((unsigned char *)out->data + start, 8));
    for (size_t i = 0; i < nheaders; i++) {
        size_t nl = strlen(names[i]), vl = strlen(values[i]);
        unsigned char b[3] = {(unsigned char)nl, 7, 0};
        kw_buf_append(out, b, 1);
        kw_buf_append(out, names[i], nl);
        b[0] = 7;
        b[1] = (unsigned char)(vl >> 8);
        b[2] = (unsigned char)vl;
        kw_buf_append(out, b, 3);
        kw_buf_append(out, values[i], vl);
    }
    kw_buf_append(out, payload, payload_len);
    if (out->len != start + total - 4)
        return KW_ERROR;
    put32(out, crc((unsigned char *)out->data + start, total - 4));
    return out->len == start + total ? KW_OK : KW_ERROR;
}
