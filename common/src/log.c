#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "knoway/json.h"
#include "knoway/log.h"

static atomic_int g_level = KW_LOG_INFO;

void kw_log_set_level(enum kw_log_level l)
{
    atomic_store(&g_level, (int)l);
}

bool kw_log_enabled(enum kw_log_level l)
{
    return (int)l >= atomic_load_explicit(&g_level, memory_order_relaxed);
}

static const char *level_name(enum kw_log_level l)
{
    switch (l) {
    case KW_LOG_DEBUG:
        return "debug";
    case KW_LOG_INFO:
        return "info";
    case KW_LOG_WARN:
        return "warn";
    case KW_LOG_ERROR:
        return "error";
    }
    return "info";
}

void kw_log_begin(struct kw_buf *b, enum kw_log_level l, const char *msg)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    char when[40];
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%S", &tm);
    kw_buf_reset(b);
    kw_buf_printf(b, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"msg\":", when, ts.tv_nsec / 1000000,
                  level_name(l));
    kw_json_write_string(b, msg, strlen(msg));
}

void kw_log_field(struct kw_buf *b, const char *key, const char *value)
{
    if (value == NULL)
        return;
    kw_buf_puts(b, ",");
    kw_json_write_string(b, key, strlen(key));
    kw_buf_puts(b, ":");
    if (kw_json_write_string(b, value, strlen(value)) != 0)
        kw_buf_puts(b, "\"(not UTF-8)\"");
}

void kw_log_field_int(struct kw_buf *b, const char *key, long long value)
{
    kw_buf_puts(b, ",");
    kw_json_write_string(b, key, strlen(key));
    kw_buf_printf(b, ":%lld", value);
}

void kw_log_emit(struct kw_buf *b)
{
    if (kw_buf_puts(b, "}\n") != 0)
        return;
    /* one write(2) per line keeps lines whole between threads */
    ssize_t n = write(STDERR_FILENO, b->data, b->len);
    (void)n;
}

void kw_log(enum kw_log_level l, const char *msg, ...)
{
    if (!kw_log_enabled(l))
        return;
    struct kw_buf b;
    kw_buf_init(&b, 64 * 1024);
    kw_log_begin(&b, l, msg);
    va_list ap;
    va_start(ap, msg);
    const char *k;
    while ((k = va_arg(ap, const char *)) != NULL) {
        const char *v = va_arg(ap, const char *);
        kw_log_field(&b, k, v != NULL ? v : "");
    }
    va_end(ap);
    kw_log_emit(&b);
    kw_buf_cleanup(&b);
}

const char *kw_redact(const char *secret, size_t len, char out[48])
{
    size_t keep = len >= 12 ? 3 : 0;
    snprintf(out, 48, "%.*s...(redacted, %zu bytes)", (int)keep, secret, len);
    return out;
}
