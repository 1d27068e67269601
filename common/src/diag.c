#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/diag.h"
#include "knoway/kw.h"
#include "knoway/limits.h"

void kw_diag_init(struct kw_diag *d)
{
    memset(d, 0, sizeof(*d));
}

static void entry_cleanup(struct kw_diag_entry *e)
{
    free(e->file);
    free(e->object);
    free(e->path);
    free(e->message);
}

void kw_diag_cleanup(struct kw_diag *d)
{
    for (size_t i = 0; i < d->n; i++)
        entry_cleanup(&d->entries[i]);
    free(d->entries);
    memset(d, 0, sizeof(*d));
}

static char *dup_or_null(const char *s, int *fail)
{
    if (s == NULL)
        return NULL;
    char *p = strdup(s);
    if (p == NULL)
        *fail = 1;
    return p;
}

static void add(struct kw_diag *d, int code, const char *file, unsigned line, unsigned col,
                const char *object, const char *path, const char *fmt, va_list ap)
    __attribute__((format(printf, 8, 0)));

static void add(struct kw_diag *d, int code, const char *file, unsigned line, unsigned col,
                const char *object, const char *path, const char *fmt, va_list ap)
{
    if (d->n >= KW_MAX_ERRORS) {
        d->dropped++;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap != 0 ? d->cap * 2 : 16;
        struct kw_diag_entry *p = realloc(d->entries, cap * sizeof(*p));
        if (p == NULL) {
            d->dropped++;
            return;
        }
        d->entries = p;
        d->cap = cap;
    }
    struct kw_diag_entry e = {0};
    int fail = 0;
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    e.file = dup_or_null(file, &fail);
    e.line = line;
    e.col = col;
    e.code = code;
    e.object = dup_or_null(object, &fail);
    e.path = dup_or_null(path != NULL && path[0] != '\0' ? path : NULL, &fail);
    e.message = dup_or_null(msg, &fail);
    if (fail) {
        entry_cleanup(&e);
        d->dropped++;
        return;
    }
    d->entries[d->n++] = e;
}

void kw_diag_add(struct kw_diag *d, const char *file, unsigned line, unsigned col,
                 const char *object, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add(d, KW_DIAG_OTHER, file, line, col, object, path, fmt, ap);
    va_end(ap);
}

void kw_diag_add_code(struct kw_diag *d, int code, const char *file, unsigned line, unsigned col,
                      const char *object, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    add(d, code, file, line, col, object, path, fmt, ap);
    va_end(ap);
}

bool kw_diag_object(const struct kw_diag_entry *e, char *kind, size_t kind_len, char *ns,
                    size_t ns_len, char *name, size_t name_len)
{
    const char *o = e->object, *s1, *s2;
    if (o == NULL || (s1 = strchr(o, '/')) == NULL || (s2 = strchr(s1 + 1, '/')) == NULL)
        return false;
    size_t kl = (size_t)(s1 - o), nl = (size_t)(s2 - s1 - 1), ml = strlen(s2 + 1);
    if (kl == 0 || kl >= kind_len || nl == 0 || nl >= ns_len || ml == 0 || ml >= name_len ||
        strchr(s2 + 1, '/') != NULL)
        return false;
    memcpy(kind, o, kl);
    kind[kl] = '\0';
    memcpy(ns, s1 + 1, nl);
    ns[nl] = '\0';
    memcpy(name, s2 + 1, ml + 1);
    return true;
}

size_t kw_diag_count(const struct kw_diag *d)
{
    return d->n + d->dropped;
}

int kw_diag_format(const struct kw_diag_entry *e, struct kw_buf *out)
{
    int rc = KW_OK;
    if (e->file != NULL) {
        if (e->line > 0)
            rc |= kw_buf_printf(out, "%s:%u:%u: ", e->file, e->line, e->col);
        else
            rc |= kw_buf_printf(out, "%s: ", e->file);
    }
    if (e->object != NULL)
        rc |= kw_buf_printf(out, "%s: ", e->object);
    if (e->path != NULL)
        rc |= kw_buf_printf(out, "%s: ", e->path);
    rc |= kw_buf_puts(out, e->message);
    return rc != KW_OK ? KW_ERROR : KW_OK;
}

int kw_diag_format_all(const struct kw_diag *d, struct kw_buf *out)
{
    for (size_t i = 0; i < d->n; i++) {
        if (kw_diag_format(&d->entries[i], out) != KW_OK || kw_buf_puts(out, "\n") != KW_OK)
            return KW_ERROR;
    }
    if (d->dropped > 0)
        return kw_buf_printf(out, "(%zu more errors not shown)\n", d->dropped);
    return KW_OK;
}

void kw_diag_move(struct kw_diag *dst, struct kw_diag *src)
{
    for (size_t i = 0; i < src->n; i++) {
        struct kw_diag_entry *e = &src->entries[i];
        if (dst->n >= KW_MAX_ERRORS) {
            dst->dropped++;
            entry_cleanup(e);
            continue;
        }
        if (dst->n == dst->cap) {
            size_t cap = dst->cap != 0 ? dst->cap * 2 : 16;
            struct kw_diag_entry *p = realloc(dst->entries, cap * sizeof(*p));
            if (p == NULL) {
                dst->dropped++;
                entry_cleanup(e);
                continue;
            }
            dst->entries = p;
            dst->cap = cap;
        }
        dst->entries[dst->n++] = *e;
    }
    dst->dropped += src->dropped;
    free(src->entries);
    memset(src, 0, sizeof(*src));
}
