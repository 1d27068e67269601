#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "scalar.h"

static bool is_one_of(const char *s, size_t len, const char *const *words)
{
    for (; *words != NULL; words++)
        if (strlen(*words) == len && memcmp(*words, s, len) == 0)
            return true;
    return false;
}

static bool all_in(const char *s, size_t len, const char *set)
{
    if (len == 0)
        return false;
    for (size_t i = 0; i < len; i++)
        if (strchr(set, s[i]) == NULL || s[i] == '\0')
            return false;
    return true;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static bool is_float(const char *s, size_t len)
{
    size_t i = 0, digits = 0;
    if (i < len && (s[i] == '-' || s[i] == '+'))
        i++;
    while (i < len && s[i] >= '0' && s[i] <= '9')
        i++, digits++;
    if (i < len && s[i] == '.') {
        i++;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++, digits++;
    }
    if (digits == 0)
        return false;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '-' || s[i] == '+'))
            i++;
        size_t exp = 0;
        while (i < len && s[i] >= '0' && s[i] <= '9')
            i++, exp++;
        if (exp == 0)
            return false;
    }
    return i == len;
}

static int set_text(struct kw_arena *a, struct kw_node *n, const char *text)
{
    n->len = strlen(text);
    n->str = kw_arena_strndup(a, text, n->len);
    return n->str != NULL ? KW_OK : KW_ERROR;
}

/* Shortest decimal text that reads back as the same double. */
static void format_double(double d, char *out, size_t outlen)
{
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(out, outlen, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            return;
    }
}

int kw_scalar_resolve_plain(struct kw_arena *a, struct kw_node *n, const char *s, size_t len)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    char tmp[64];

    if (is_one_of(s, len, nulls)) {
        n->type = KW_NODE_NULL;
        return set_text(a, n, "null");
    }
    if (is_one_of(s, len, trues) || is_one_of(s, len, falses)) {
        n->type = KW_NODE_BOOL;
        n->b = s[0] == 't' || s[0] == 'T';
        return set_text(a, n, n->b ? "true" : "false");
    }
    if (len < sizeof(tmp)) {
        memcpy(tmp, s, len);
        tmp[len] = '\0';
        int base = 0;
        const char *digits = NULL;
        if (len > 2 && s[0] == '0' && s[1] == 'x' &&
            all_in(s + 2, len - 2, "0123456789abcdefABCDEF"))
            base = 16, digits = tmp + 2;
        else if (len > 2 && s[0] == '0' && s[1] == 'o' && all_in(s + 2, len - 2, "01234567"))
            base = 8, digits = tmp + 2;
        else if (all_in(s + (s[0] == '-' || s[0] == '+'), len - (s[0] == '-' || s[0] == '+'),
                        "0123456789"))
            base = 10, digits = tmp;
        if (base != 0) {
            errno = 0;
            char *end;
            long long v = strtoll(digits, &end, base);
            if (errno == 0 && *end == '\0') {
                n->type = KW_NODE_INT;
                n->i = v;
                snprintf(tmp, sizeof(tmp), "%lld", v);
                return set_text(a, n, tmp);
            }
            if (base == 10) { /* too large for int64: a number all the same */
                double d = strtod(tmp, NULL);
                n->type = KW_NODE_FLOAT;
                format_double(d, tmp, sizeof(tmp));
                return set_text(a, n, tmp);
            }
        }
        if (is_float(s, len)) {
            double d = strtod(tmp, NULL);
            if (isfinite(d)) {
                n->type = KW_NODE_FLOAT;
                format_double(d, tmp, sizeof(tmp));
                return set_text(a, n, tmp);
            }
        }
    }
    /* .inf and .nan have no JSON form: they stay strings, as everything else. */
    n->type = KW_NODE_STRING;
    n->len = len;
    n->str = kw_arena_strndup(a, s, len);
    return n->str != NULL ? KW_OK : KW_ERROR;
}

void kw_scalar_number(struct kw_node *n)
{
    char tmp[32];
    n->type = KW_NODE_FLOAT;
    if (n->len >= sizeof(tmp) || memchr(n->str, '.', n->len) || memchr(n->str, 'e', n->len) ||
        memchr(n->str, 'E', n->len))
        return;
    memcpy(tmp, n->str, n->len);
    tmp[n->len] = '\0';
    errno = 0;
    char *end;
    long long v = strtoll(tmp, &end, 10);
    if (errno == 0 && *end == '\0') {
        n->type = KW_NODE_INT;
        n->i = v;
    }
}
