#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/buf.h"
#include "knoway/kw.h"

void kw_buf_init(struct kw_buf *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void kw_buf_cleanup(struct kw_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

void kw_buf_reset(struct kw_buf *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

static int reserve(struct kw_buf *b, size_t extra)
{
    if (extra > b->max || b->len > b->max - extra)
        return KW_ERROR;
    size_t need = b->len + extra + 1; /* + NUL */
    if (need <= b->cap)
        return KW_OK;
    size_t cap = b->cap != 0 ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    if (cap > b->max + 1)
        cap = b->max + 1;
    char *p = realloc(b->data, cap);
    if (p == NULL)
        return KW_ERROR;
    b->data = p;
    b->cap = cap;
    return KW_OK;
}

int kw_buf_append(struct kw_buf *b, const void *data, size_t len)
{
    if (reserve(b, len) != KW_OK)
        return KW_ERROR;
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return KW_OK;
}

int kw_buf_puts(struct kw_buf *b, const char *s)
{
    return kw_buf_append(b, s, strlen(s));
}

int kw_buf_vprintf(struct kw_buf *b, const char *fmt, va_list ap)
{
    /* format once into the room there is; a second time only when it did not fit */
    size_t room = b->data != NULL ? b->cap - b->len : 0;
    va_list cp;
    va_copy(cp, ap);
    int n = vsnprintf(room > 0 ? b->data + b->len : NULL, room, fmt, cp);
    va_end(cp);
    if (n >= 0 && (size_t)n < room) {
        b->len += (size_t)n;
        return KW_OK;
    }
    if (b->data != NULL)
        b->data[b->len] = '\0'; /* what did not fit is not kept */
    if (n < 0 || reserve(b, (size_t)n) != KW_OK)
        return KW_ERROR;
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    b->len += (size_t)n;
    return KW_OK;
}

int kw_buf_printf(struct kw_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = kw_buf_vprintf(b, fmt, ap);
    va_end(ap);
    return rc;
}
