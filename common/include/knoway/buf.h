/* knoway: growable byte buffer with a hard maximum (curl's dynbuf). */
#ifndef KNOWAY_BUF_H
#define KNOWAY_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct kw_buf {
    char *data; /* always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
    size_t max; /* appends that would pass this fail with KW_ERROR */
};

/* Initialise an empty buffer (no allocation yet) that may grow to max bytes. */
void kw_buf_init(struct kw_buf *b, size_t max);

/* Release the memory; the buffer may be reused after kw_buf_init. */
void kw_buf_cleanup(struct kw_buf *b);

/* Empty the buffer, keeping its memory. */
void kw_buf_reset(struct kw_buf *b);

/* Append bytes. KW_OK, or KW_ERROR on out-of-memory or when len would pass max
 * (the buffer is then unchanged). */
int kw_buf_append(struct kw_buf *b, const void *data, size_t len);

/* Append a C string. */
int kw_buf_puts(struct kw_buf *b, const char *s);

/* Append formatted text; same errors as kw_buf_append. */
int kw_buf_printf(struct kw_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int kw_buf_vprintf(struct kw_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

#endif
