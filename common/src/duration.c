#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "knoway/duration.h"
#include "knoway/kw.h"

#define MAX_MS (INT64_C(1000) * 3600 * 24 * 365 * 100) /* a century is plenty */

int kw_duration_parse(const char *s, size_t len, int64_t *ms, char *err, size_t errlen)
{
    size_t i = 0;
    double total = 0;
    bool any = false;
    if (len == 0) {
        snprintf(err, errlen, "empty duration");
        return KW_ERROR;
    }
    while (i < len) {
        double v = 0, scale = 1;
        size_t digits = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9') {
            v = v * 10 + (s[i++] - '0');
            digits++;
        }
        if (i < len && s[i] == '.') {
            i++;
            while (i < len && s[i] >= '0' && s[i] <= '9') {
                scale /= 10;
                v += (s[i++] - '0') * scale;
                digits++;
            }
        }
        if (digits == 0)
            goto bad;
        double unit;
        if (i + 1 < len && s[i] == 'm' && s[i + 1] == 's') {
            unit = 1;
            i += 2;
        } else if (i < len && s[i] == 's') {
            unit = 1000;
            i++;
        } else if (i < len && s[i] == 'm') {
            unit = 60000;
            i++;
        } else if (i < len && s[i] == 'h') {
            unit = 3600000;
            i++;
        } else {
            goto bad;
        }
        total += v * unit;
        if (total > (double)MAX_MS) {
            snprintf(err, errlen, "duration too long");
            return KW_ERROR;
        }
        any = true;
    }
    if (!any)
        goto bad;
    *ms = (int64_t)(total + 0.5);
    return KW_OK;
bad:
    snprintf(err, errlen, "invalid duration \"%.*s\" (use a number and a unit: 250ms, 30s, 5m, 1h)",
             (int)(len > 64 ? 64 : len), s);
    return KW_ERROR;
}

void kw_duration_format(int64_t ms, char *out, size_t outlen)
{
    if (ms == 0) {
        snprintf(out, outlen, "0s");
        return;
    }
    int64_t h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60, rest = ms % 1000;
    size_t o = 0;
    out[0] = '\0';
#define PUT(v, unit)                                                                               \
    if ((v) != 0 && o < outlen)                                                                    \
    o += (size_t)snprintf(out + o, outlen - o, "%" PRId64 unit, (int64_t)(v))
    PUT(h, "h");
    PUT(m, "m");
    PUT(s, "s");
    PUT(rest, "ms");
#undef PUT
}

void kw_deadline_after(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}
