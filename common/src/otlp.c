/* OTLP/HTTP span export (otlp.h). */
#include <curl/curl.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "knoway/duration.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/limits.h"
#include "knoway/log.h"
#include "knoway/otlp.h"

/* ---- building a span ------------------------------------------------------------------------
 * s->data holds records:
 *   'A' type(s|i|d|a) u16 keylen key  value: s: u32 len bytes | i: int64 | d: double |
 *                                             a: u16 n, n x (u32 len bytes)
 *   'E' int64 time u16 namelen name */

static void copy(char *dst, size_t cap, const char *src)
{
    size_t n = src != NULL ? strnlen(src, cap - 1) : 0;
    memcpy(dst, src != NULL ? src : "", n);
    dst[n] = '\0';
}

void kw_span_init(struct kw_span *s, const char *trace_id, const char *span_id,
                  const char *parent_id, const char *name, enum kw_span_kind kind)
{
    copy(s->trace_id, sizeof(s->trace_id), trace_id);
    copy(s->span_id, sizeof(s->span_id), span_id);
    copy(s->parent_id, sizeof(s->parent_id), parent_id);
    copy(s->name, sizeof(s->name), name);
    s->kind = kind;
    s->error = false;
    s->start_ns = s->end_ns = 0;
    kw_buf_init(&s->data, KW_SPAN_MAX_BYTES);
}

void kw_span_cleanup(struct kw_span *s)
{
    kw_buf_cleanup(&s->data);
}

static bool put(struct kw_buf *b, const void *p, size_t n)
{
    return kw_buf_append(b, p, n) == KW_OK;
}

/* Append a record whole or not at all. */
static void attr(struct kw_span *s, char type, const char *key, const void *v1, size_t n1,
                 const void *v2, size_t n2)
{
    size_t keylen = strlen(key), before = s->data.len;
    uint16_t kl = (uint16_t)(keylen > 255 ? 255 : keylen);
    char head[2] = {'A', type};
    if (!put(&s->data, head, 2) || !put(&s->data, &kl, 2) || !put(&s->data, key, kl) ||
        (n1 > 0 && !put(&s->data, v1, n1)) || (n2 > 0 && !put(&s->data, v2, n2))) {
        s->data.len = before;
        if (s->data.data != NULL)
            s->data.data[before] = '\0';
    }
}

void kw_span_strn(struct kw_span *s, const char *key, const char *v, size_t len)
{
    if (v == NULL || len == 0)
        return;
    if (len > KW_SPAN_MAX_BYTES)
        return;
    uint32_t l = (uint32_t)len;
    attr(s, 's', key, &l, 4, v, len);
}

void kw_span_str(struct kw_span *s, const char *key, const char *v)
{
    if (v != NULL)
        kw_span_strn(s, key, v, strlen(v));
}

void kw_span_int(struct kw_span *s, const char *key, int64_t v)
{
    attr(s, 'i', key, &v, 8, NULL, 0);
}

void kw_span_double(struct kw_span *s, const char *key, double v)
{
    attr(s, 'd', key, &v, 8, NULL, 0);
}

void kw_span_strs(struct kw_span *s, const char *key, const char *const *v, size_t n)
{
    struct kw_buf vals;
    kw_buf_init(&vals, KW_SPAN_MAX_BYTES);
    uint16_t cnt = 0;
    for (size_t i = 0; i < n && cnt < 64; i++) {
        uint32_t l = (uint32_t)strlen(v[i]);
        if (!put(&vals, &l, 4) || !put(&vals, v[i], l))
            break;
        cnt++;
    }
    if (cnt > 0)
        attr(s, 'a', key, &cnt, 2, vals.data, vals.len);
    kw_buf_cleanup(&vals);
}

void kw_span_event(struct kw_span *s, const char *name, int64_t time_ns)
{
    size_t before = s->data.len;
    uint16_t nl = (uint16_t)strnlen(name, 255);
    if (!put(&s->data, "E", 1) || !put(&s->data, &time_ns, 8) || !put(&s->data, &nl, 2) ||
        !put(&s->data, name, nl)) {
        s->data.len = before;
        if (s->data.data != NULL)
            s->data.data[before] = '\0';
    }
}

/* xoshiro256** per thread, seeded from OpenSSL's RNG once: ids must be random, not
 * secret (W3C Trace Context), and RAND_bytes costs thousands of instructions a call. */
static _Thread_local uint64_t rng[4];
static _Thread_local bool rng_ready;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t kw_trace_random(void)
{
    if (!rng_ready) {
        if (RAND_bytes((unsigned char *)rng, sizeof(rng)) != 1 || (rng[0] | rng[1]) == 0) {
            struct timespec ts;
            clock_gettime(CLOCK_MONOTONIC, &ts);
            rng[0] = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ULL + 1;
            rng[1] = (uint64_t)(uintptr_t)&rng ^ (uint64_t)ts.tv_sec;
            rng[2] = rng[0] ^ 0x6a09e667f3bcc909ULL;
            rng[3] = rng[1] ^ 0xbb67ae8584caa73bULL;
        }
        rng_ready = true;
    }
    uint64_t result = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return result;
}

void kw_trace_random_hex(char *out, size_t bytes)
{
    static const char hex[] = "0123456789abcdef";
    if (bytes > 16)
        bytes = 16;
    bool nonzero = false;
    uint64_t v = 0;
    for (size_t i = 0; i < bytes; i++) {
        if (i % 8 == 0)
            v = kw_trace_random();
        unsigned char b = (unsigned char)(v >> (8 * (i % 8)));
        out[2 * i] = hex[b >> 4];
        out[2 * i + 1] = hex[b & 15];
        nonzero |= b != 0;
    }
    out[2 * bytes] = '\0';
    if (!nonzero)
        out[0] = '1'; /* all zero is invalid */
}

int64_t kw_now_unix_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- items: a span packed into one allocation ------------------------------------------- */

struct kw_otlp_item {
    struct kw_otlp_item *next;
    char trace_id[33], span_id[17], parent_id[17];
    char name[256];
    int kind;
    bool error;
    int64_t start_ns, end_ns;
    size_t len;
    char data[];
};

struct kw_otlp_item *kw_otlp_item_new(const struct kw_span *s)
{
    struct kw_otlp_item *it = malloc(sizeof(*it) + s->data.len);
    if (it == NULL)
        return NULL;
    it->next = NULL;
    memcpy(it->trace_id, s->trace_id, sizeof(it->trace_id));
    memcpy(it->span_id, s->span_id, sizeof(it->span_id));
    memcpy(it->parent_id, s->parent_id, sizeof(it->parent_id));
    memcpy(it->name, s->name, sizeof(it->name));
    it->kind = (int)s->kind;
    it->error = s->error;
    it->start_ns = s->start_ns;
    it->end_ns = s->end_ns;
    it->len = s->data.len;
    if (s->data.len > 0)
        memcpy(it->data, s->data.data, s->data.len);
    return it;
}

/* A record read back. */
struct rec {
    char what; /* 'A' or 'E' */
    char type;
    const char *key;
    size_t keylen;
    const char *str;
    size_t len;
    int64_t i;
    double d;
    uint16_t n;      /* array count */
    const char *arr; /* its packed values */
    int64_t time;    /* event */
};

static uint32_t rd32(const char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static uint16_t rd16(const char *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

/* The record at *off; false at the end. Records were written whole by this file. */
static bool next_rec(const struct kw_otlp_item *it, size_t *off, struct rec *r)
{
    if (*off >= it->len)
        return false;
    const char *p = it->data + *off;
    memset(r, 0, sizeof(*r));
    r->what = p[0];
    if (r->what == 'E') {
        memcpy(&r->time, p + 1, 8);
        r->keylen = rd16(p + 9);
        r->key = p + 11;
        *off += 11 + r->keylen;
        return true;
    }
    r->type = p[1];
    r->keylen = rd16(p + 2);
    r->key = p + 4;
    p += 4 + r->keylen;
    switch (r->type) {
    case 's':
        r->len = rd32(p);
        r->str = p + 4;
        p += 4 + r->len;
        break;
    case 'i':
        memcpy(&r->i, p, 8);
        p += 8;
        break;
    case 'd':
        memcpy(&r->d, p, 8);
        p += 8;
        break;
    default: /* 'a' */
        r->n = rd16(p);
        r->arr = p + 2;
        p += 2;
        for (uint16_t k = 0; k < r->n; k++)
            p += 4 + rd32(p);
        break;
    }
    *off = (size_t)(p - it->data);
    return true;
}

/* ---- JSON (OTLP/HTTP JSON: ids in hex, 64-bit integers as strings) ------------------------ */

/* Decimal digits of v, without printf (the encoder writes a few per attribute). */
static void put_i64(struct kw_buf *b, int64_t v)
{
    char tmp[24];
    size_t n = sizeof(tmp);
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[--n] = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0)
        tmp[--n] = '-';
    kw_buf_append(b, tmp + n, sizeof(tmp) - n);
}

/* "key":"<decimal>" */
static void put_i64_string(struct kw_buf *b, const char *key, int64_t v)
{
    kw_buf_puts(b, key);
    kw_buf_append(b, "\"", 1);
    put_i64(b, v);
    kw_buf_append(b, "\"", 1);
}

static void json_value(struct kw_buf *b, const struct rec *r)
{
    switch (r->type) {
    case 's':
        kw_buf_puts(b, "{\"stringValue\":");
        kw_json_write_string(b, r->str, r->len);
        kw_buf_puts(b, "}");
        break;
    case 'i':
        put_i64_string(b, "{\"intValue\":", r->i);
        kw_buf_puts(b, "}");
        break;
    case 'd':
        kw_buf_printf(b, "{\"doubleValue\":%.17g}", r->d);
        break;
    default: {
        kw_buf_puts(b, "{\"arrayValue\":{\"values\":[");
        const char *p = r->arr;
        for (uint16_t k = 0; k < r->n; k++) {
            uint32_t l = rd32(p);
            kw_buf_puts(b, k > 0 ? ",{\"stringValue\":" : "{\"stringValue\":");
            kw_json_write_string(b, p + 4, l);
            kw_buf_puts(b, "}");
            p += 4 + l;
        }
        kw_buf_puts(b, "]}}");
    }
    }
}

static void json_span(struct kw_buf *b, const struct kw_otlp_item *it)
{
    kw_buf_puts(b, "{\"traceId\":\"");
    kw_buf_puts(b, it->trace_id);
    kw_buf_puts(b, "\",\"spanId\":\"");
    kw_buf_puts(b, it->span_id);
    kw_buf_puts(b, "\"");
    if (it->parent_id[0] != '\0') {
        kw_buf_puts(b, ",\"parentSpanId\":\"");
        kw_buf_puts(b, it->parent_id);
        kw_buf_puts(b, "\"");
    }
    kw_buf_puts(b, ",\"name\":");
    kw_json_write_string(b, it->name, strlen(it->name));
    kw_buf_puts(b, ",\"kind\":");
    put_i64(b, it->kind);
    put_i64_string(b, ",\"startTimeUnixNano\":", it->start_ns);
    put_i64_string(b, ",\"endTimeUnixNano\":", it->end_ns);
    kw_buf_puts(b, ",\"attributes\":[");
    size_t off = 0;
    struct rec r;
    bool first = true;
    while (next_rec(it, &off, &r)) {
        if (r.what != 'A')
            continue;
        kw_buf_puts(b, first ? "{\"key\":\"" : ",{\"key\":\"");
        kw_buf_append(b, r.key, r.keylen); /* names of this code's (kw_span_*): plain */
        kw_buf_puts(b, "\",\"value\":");
        json_value(b, &r);
        kw_buf_puts(b, "}");
        first = false;
    }
    kw_buf_puts(b, "],\"events\":[");
    off = 0;
    first = true;
    while (next_rec(it, &off, &r)) {
        if (r.what != 'E')
            continue;
        put_i64_string(b, first ? "{\"timeUnixNano\":" : ",{\"timeUnixNano\":", r.time);
        kw_buf_puts(b, ",\"name\":\"");
        kw_buf_append(b, r.key, r.keylen);
        kw_buf_puts(b, "\"}");
        first = false;
    }
    kw_buf_puts(b, "]");
    if (it->error)
        kw_buf_puts(b, ",\"status\":{\"code\":2}");
    kw_buf_puts(b, "}");
}

/* ---- protobuf ------------------------------------------------------------------------------
 * Field numbers (opentelemetry-proto v1):
 *   ExportTraceServiceRequest: 1 resource_spans
 *   ResourceSpans: 1 resource, 2 scope_spans      Resource: 1 attributes
 *   ScopeSpans: 1 scope, 2 spans                  InstrumentationScope: 1 name
 *   Span: 1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind, 7 start (fixed64),
 *         8 end (fixed64), 9 attributes, 11 events, 15 status
 *   Span.Event: 1 time (fixed64), 2 name          Status: 3 code
 *   KeyValue: 1 key, 2 value                      ArrayValue: 1 values
 *   AnyValue: 1 string, 3 int (varint), 4 double (fixed64), 5 array */

enum { WT_VARINT = 0, WT_I64 = 1, WT_LEN = 2 };

static void pb_varint(struct kw_buf *b, uint64_t v)
{
    char tmp[10];
    size_t n = 0;
    do {
        tmp[n] = (char)(v & 0x7f);
        v >>= 7;
        if (v != 0)
            tmp[n] |= (char)0x80;
        n++;
    } while (v != 0);
    kw_buf_append(b, tmp, n);
}

static void pb_tag(struct kw_buf *b, unsigned field, unsigned wt)
{
    pb_varint(b, (uint64_t)field << 3 | wt);
}

static void pb_bytes(struct kw_buf *b, unsigned field, const void *p, size_t n)
{
    pb_tag(b, field, WT_LEN);
    pb_varint(b, n);
    kw_buf_append(b, p, n);
}

static void pb_fixed64(struct kw_buf *b, unsigned field, uint64_t v)
{
    char le[8];
    for (int k = 0; k < 8; k++)
        le[k] = (char)(v >> (8 * k));
    pb_tag(b, field, WT_I64);
    kw_buf_append(b, le, 8);
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : 0;
}

static void pb_id(struct kw_buf *b, unsigned field, const char *hex)
{
    unsigned char raw[16];
    size_t n = strlen(hex) / 2;
    if (n == 0 || n > sizeof(raw))
        return;
    for (size_t k = 0; k < n; k++)
        raw[k] = (unsigned char)(hexval(hex[2 * k]) << 4 | hexval(hex[2 * k + 1]));
    pb_bytes(b, field, raw, n);
}

/* Scratch buffers, one per nesting level. */
enum { LV_SCOPE, LV_SPAN, LV_KV, LV_ANY, LV_ARR, LV__N };

static void pb_any(struct kw_buf *any, struct kw_buf *arr, const struct rec *r)
{
    kw_buf_reset(any);
    switch (r->type) {
    case 's':
        pb_bytes(any, 1, r->str, r->len);
        break;
    case 'i':
        pb_tag(any, 3, WT_VARINT);
        pb_varint(any, (uint64_t)r->i);
        break;
    case 'd': {
        uint64_t u;
        memcpy(&u, &r->d, 8);
        pb_fixed64(any, 4, u);
        break;
    }
    default: {
        kw_buf_reset(arr);
        const char *p = r->arr;
        for (uint16_t k = 0; k < r->n; k++) {
            uint32_t l = rd32(p);
            struct kw_buf one; /* each value: AnyValue{1: string} */
            kw_buf_init(&one, (size_t)l + 16);
            pb_bytes(&one, 1, p + 4, l);
            pb_bytes(arr, 1, one.data, one.len);
            kw_buf_cleanup(&one);
            p += 4 + l;
        }
        pb_bytes(any, 5, arr->data != NULL ? arr->data : "", arr->len);
    }
    }
}

static void pb_span(struct kw_buf *out, struct kw_buf *lv, const struct kw_otlp_item *it)
{
    struct kw_buf *span = &lv[LV_SPAN];
    kw_buf_reset(span);
    pb_id(span, 1, it->trace_id);
    pb_id(span, 2, it->span_id);
    if (it->parent_id[0] != '\0')
        pb_id(span, 4, it->parent_id);
    pb_bytes(span, 5, it->name, strlen(it->name));
    pb_tag(span, 6, WT_VARINT);
    pb_varint(span, (uint64_t)it->kind);
    pb_fixed64(span, 7, (uint64_t)it->start_ns);
    pb_fixed64(span, 8, (uint64_t)it->end_ns);
    size_t off = 0;
    struct rec r;
    while (next_rec(it, &off, &r)) {
        struct kw_buf *kv = &lv[LV_KV];
        kw_buf_reset(kv);
        if (r.what == 'A') {
            pb_bytes(kv, 1, r.key, r.keylen);
            pb_any(&lv[LV_ANY], &lv[LV_ARR], &r);
            pb_bytes(kv, 2, lv[LV_ANY].data != NULL ? lv[LV_ANY].data : "", lv[LV_ANY].len);
            pb_bytes(span, 9, kv->data, kv->len);
        } else {
            pb_fixed64(kv, 1, (uint64_t)r.time);
            pb_bytes(kv, 2, r.key, r.keylen);
            pb_bytes(span, 11, kv->data, kv->len);
        }
    }
    if (it->error) {
        char status[2] = {(char)(3 << 3 | WT_VARINT), 2}; /* Status{code: ERROR} */
        pb_bytes(span, 15, status, 2);
    }
    pb_bytes(out, 2, span->data, span->len);
}

int kw_otlp_encode(enum kw_otlp_protocol p, const char *service, struct kw_otlp_item *list,
                   struct kw_buf *out)
{
    kw_buf_reset(out);
    if (p == KW_OTLP_JSON) {
        kw_buf_puts(out, "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":"
                         "\"service.name\",\"value\":{\"stringValue\":");
        kw_json_write_string(out, service, strlen(service));
        kw_buf_puts(out, "}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"knoway\"},\"spans\":[");
        for (struct kw_otlp_item *it = list; it != NULL; it = it->next) {
            if (it != list)
                kw_buf_puts(out, ",");
            json_span(out, it);
        }
        return kw_buf_puts(out, "]}]}]}");
    }
    struct kw_buf lv[LV__N], scope, res, rs, tmp;
    for (int k = 0; k < LV__N; k++)
        kw_buf_init(&lv[k], out->max);
    kw_buf_init(&scope, out->max);
    kw_buf_init(&res, 4096);
    kw_buf_init(&rs, out->max);
    kw_buf_init(&tmp, 4096);
    /* ScopeSpans{scope{name}, spans...} */
    pb_bytes(&tmp, 1, "knoway", 6);
    pb_bytes(&scope, 1, tmp.data, tmp.len);
    for (struct kw_otlp_item *it = list; it != NULL; it = it->next)
        pb_span(&scope, lv, it);
    /* Resource{attributes: service.name} */
    struct kw_buf any, kv;
    kw_buf_init(&any, 4096);
    kw_buf_init(&kv, 4096);
    pb_bytes(&any, 1, service, strlen(service));
    pb_bytes(&kv, 1, "service.name", 12);
    pb_bytes(&kv, 2, any.data, any.len);
    pb_bytes(&res, 1, kv.data, kv.len);
    pb_bytes(&rs, 1, res.data, res.len);
    pb_bytes(&rs, 2, scope.data != NULL ? scope.data : "", scope.len);
    pb_bytes(out, 1, rs.data, rs.len);
    for (int k = 0; k < LV__N; k++)
        kw_buf_cleanup(&lv[k]);
    kw_buf_cleanup(&scope);
    kw_buf_cleanup(&res);
    kw_buf_cleanup(&rs);
    kw_buf_cleanup(&tmp);
    kw_buf_cleanup(&any);
    kw_buf_cleanup(&kv);
    return out->len > 0 ? KW_OK : KW_ERROR;
}

/* ---- the exporter --------------------------------------------------------------------------- */

struct kw_otlp {
    char url[2100];
    char service[64];
    enum kw_otlp_protocol protocol;
    struct curl_slist *headers;
    int64_t timeout_ms;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct kw_otlp_item *head, *tail;
    size_t depth, bytes;
    atomic_llong *account;
    long long budget;
    bool stop;
    int64_t stop_by_ms;            /* monotonic: past it what waits is dropped */
    _Atomic int64_t abandon_at_ms; /* the same, for the export in flight (0: none) */
    pthread_t thread;
    atomic_uint_fast64_t exported, dropped, failed;
};

bool kw_otlp_submit(struct kw_otlp *o, const struct kw_span *s)
{
    struct kw_otlp_item *it = kw_otlp_item_new(s);
    if (it == NULL) {
        atomic_fetch_add(&o->dropped, 1);
        return false;
    }
    size_t size = sizeof(*it) + it->len;
    pthread_mutex_lock(&o->mu);
    if (o->depth >= KW_OTLP_MAX_QUEUE || o->bytes + size > KW_OTLP_MAX_QUEUE_BYTES ||
        (o->account != NULL && o->budget > 0 &&
         atomic_load_explicit(o->account, memory_order_relaxed) + (long long)size > o->budget)) {
        pthread_mutex_unlock(&o->mu);
        free(it);
        atomic_fetch_add(&o->dropped, 1);
        return false;
    }
    o->bytes += size;
    if (o->account != NULL)
        atomic_fetch_add_explicit(o->account, (long long)size, memory_order_relaxed);
    if (o->tail != NULL)
        o->tail->next = it;
    else
        o->head = it;
    o->tail = it;
    if (++o->depth == KW_OTLP_BATCH)
        pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->mu);
    return true;
}

static size_t discard(char *ptr, size_t size, size_t nmemb, void *ud)
{
    (void)ptr;
    (void)ud;
    return size * nmemb;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* An export in flight when a stop's deadline passes is abandoned there. */
static int on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    (void)dt, (void)dn, (void)ut, (void)un;
    struct kw_otlp *o = ud;
    int64_t at = atomic_load_explicit(&o->abandon_at_ms, memory_order_relaxed);
    return at != 0 && mono_ms() >= at ? 1 : 0; /* no lock: workers submit under it */
}

static void send_batch(struct kw_otlp *o, CURL *c, struct kw_otlp_item *list, size_t n,
                       struct kw_buf *b, int64_t timeout_ms)
{
    if (kw_otlp_encode(o->protocol, o->service, list, b) != KW_OK) {
        atomic_fetch_add(&o->failed, n);
        kw_log(KW_LOG_WARN, "OTLP export failed (spans dropped)", "error", "batch too large", NULL);
        return;
    }
    curl_easy_setopt(c, CURLOPT_URL, o->url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, o->headers);
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, b->data);
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)b->len);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, o);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, discard);
    CURLcode rc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (rc == CURLE_OK && status >= 200 && status < 300) {
        atomic_fetch_add(&o->exported, n);
    } else {
        atomic_fetch_add(&o->failed, n);
        char why[64];
        snprintf(why, sizeof(why), "%s",
                 rc != CURLE_OK  ? curl_easy_strerror(rc)
                 : status >= 400 ? "refused"
                                 : "?");
        kw_log(KW_LOG_WARN, "OTLP export failed (spans dropped)", "error", why, NULL);
    }
}

static void *otlp_main(void *arg)
{
    struct kw_otlp *o = arg;
    CURL *c = curl_easy_init();
    struct kw_buf b;
    kw_buf_init(&b, 64u * 1024 * 1024);
    pthread_mutex_lock(&o->mu);
    for (;;) {
        if (o->depth < KW_OTLP_BATCH && !o->stop) {
            struct timespec ts;
            kw_deadline_after(&ts, 1000);
            pthread_cond_timedwait(&o->cond, &o->mu, &ts);
        }
        bool stop = o->stop;
        int64_t left = stop ? o->stop_by_ms - mono_ms() : o->timeout_ms;
        struct kw_otlp_item *list = o->head, *last = NULL;
        size_t n = 0, bytes = 0;
        /* past the stop's deadline everything left goes at once, unsent */
        for (struct kw_otlp_item *s = o->head;
             s != NULL && (n < KW_OTLP_BATCH || (stop && left <= 0)); s = s->next, n++) {
            last = s;
            bytes += sizeof(*s) + s->len;
        }
        if (last != NULL) {
            o->head = last->next;
            if (o->head == NULL)
                o->tail = NULL;
            last->next = NULL;
            o->depth -= n;
            o->bytes -= bytes;
        }
        pthread_mutex_unlock(&o->mu);
        if (n > 0 && stop && left <= 0)
            atomic_fetch_add(&o->dropped, n);
        else if (n > 0 && c != NULL)
            send_batch(o, c, list, n, &b,
                       left < o->timeout_ms ? (left > 1 ? left : 1) : o->timeout_ms);
        else if (n > 0)
            atomic_fetch_add(&o->failed, n);
        if (o->account != NULL && bytes > 0)
            atomic_fetch_sub_explicit(o->account, (long long)bytes, memory_order_relaxed);
        while (list != NULL) {
            struct kw_otlp_item *next = list->next;
            free(list);
            list = next;
        }
        pthread_mutex_lock(&o->mu);
        if (stop && o->head == NULL)
            break;
    }
    pthread_mutex_unlock(&o->mu);
    kw_buf_cleanup(&b);
    if (c != NULL)
        curl_easy_cleanup(c);
    return NULL;
}

void kw_otlp_from_env(struct kw_otlp_config *c, bool *full)
{
    *full = false;
    if (c->endpoint == NULL) {
        const char *t = getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        const char *e = getenv("OTEL_EXPORTER_OTLP_ENDPOINT");
        if (t != NULL && t[0] != '\0') {
            c->endpoint = t;
            *full = true;
        } else if (e != NULL && e[0] != '\0') {
            c->endpoint = e;
        } else {
            return;
        }
        const char *p = getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
        if (p == NULL || p[0] == '\0')
            p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL");
        if (p != NULL && strcmp(p, "http/protobuf") == 0)
            c->protocol = KW_OTLP_PROTOBUF;
        else if (p != NULL && strcmp(p, "http/json") == 0)
            c->protocol = KW_OTLP_JSON;
    }
}

struct kw_otlp *kw_otlp_start(const struct kw_otlp_config *cfg, bool full_url)
{
    struct kw_otlp *o = calloc(1, sizeof(*o));
    if (o == NULL)
        return NULL;
    size_t el = strlen(cfg->endpoint);
    while (!full_url && el > 0 && cfg->endpoint[el - 1] == '/')
        el--;
    snprintf(o->url, sizeof(o->url), "%.*s%s", (int)el, cfg->endpoint,
             full_url ? "" : "/v1/traces");
    snprintf(o->service, sizeof(o->service), "%s", cfg->service);
    o->protocol = cfg->protocol;
    o->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 5000;
    o->account = cfg->account;
    o->budget = cfg->budget;
    o->headers = curl_slist_append(NULL, cfg->protocol == KW_OTLP_PROTOBUF
                                             ? "Content-Type: application/x-protobuf"
                                             : "Content-Type: application/json");
    for (size_t i = 0; i < cfg->nheaders && o->headers != NULL; i++) {
        char h[KW_MAX_HEADER_NAME + KW_MAX_HEADER_VALUE + 4];
        snprintf(h, sizeof(h), "%s: %s", cfg->headers[i].name, cfg->headers[i].value);
        struct curl_slist *l = curl_slist_append(o->headers, h);
        if (l != NULL)
            o->headers = l;
    }
    pthread_mutex_init(&o->mu, NULL);
    pthread_cond_init(&o->cond, NULL);
    if (o->headers == NULL || pthread_create(&o->thread, NULL, otlp_main, o) != 0) {
        curl_slist_free_all(o->headers);
        pthread_mutex_destroy(&o->mu);
        pthread_cond_destroy(&o->cond);
        free(o);
        return NULL;
    }
    return o;
}

void kw_otlp_stop(struct kw_otlp *o, int64_t wait_ms)
{
    if (o == NULL)
        return;
    pthread_mutex_lock(&o->mu);
    o->stop = true;
    o->stop_by_ms = mono_ms() + (wait_ms > 0 ? wait_ms : 0);
    atomic_store(&o->abandon_at_ms, o->stop_by_ms);
    pthread_cond_signal(&o->cond);
    pthread_mutex_unlock(&o->mu);
    pthread_join(o->thread, NULL);
    curl_slist_free_all(o->headers);
    pthread_mutex_destroy(&o->mu);
    pthread_cond_destroy(&o->cond);
    free(o);
}

void kw_otlp_stats(struct kw_otlp *o, struct kw_otlp_stats *out)
{
    out->exported = atomic_load(&o->exported);
    out->dropped = atomic_load(&o->dropped);
    out->failed = atomic_load(&o->failed);
}

void kw_otlp_write_metrics(struct kw_otlp *o, struct kw_buf *b)
{
    struct kw_otlp_stats st;
    kw_otlp_stats(o, &st);
    kw_buf_printf(b,
                  "# HELP knoway_trace_spans_total Spans by what became of them: exported, "
                  "dropped (the exporter's queue was full), failed (the collector refused or "
                  "was unreachable).\n"
                  "# TYPE knoway_trace_spans_total counter\n"
                  "knoway_trace_spans_total{result=\"exported\"} %llu\n"
                  "knoway_trace_spans_total{result=\"dropped\"} %llu\n"
                  "knoway_trace_spans_total{result=\"failed\"} %llu\n",
                  (unsigned long long)st.exported, (unsigned long long)st.dropped,
                  (unsigned long long)st.failed);
}
