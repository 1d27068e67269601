/* knoway: diagnostics. Every configuration error a user sees is collected here with its
 * place, then all are reported at once (HAProxy), formatted as
 *     file:line:col: Kind/namespace/name: spec.field.path: what is wrong
 * (objects read from the Kubernetes API have no file, line or column). */
#ifndef KNOWAY_DIAG_H
#define KNOWAY_DIAG_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

struct kw_diag_entry {
    char *file;    /* NULL when the source is not a file */
    unsigned line; /* 1-based; 0 = unknown */
    unsigned col;  /* 1-based; 0 = unknown */
    char *object;  /* "LLMBackend/default/openai", or NULL for file-level errors */
    char *path;    /* "spec.upstream.timeout", or NULL */
    char *message; /* what is wrong, never NULL */
    int code;      /* what kind of error, for code that acts on it: enum kw_diag_code */
};

/* Errors other code acts on (the controller's status hints), so that nothing matches the
 * text of a message. */
enum kw_diag_code {
    KW_DIAG_OTHER = 0,
    KW_DIAG_SECRET_MISSING, /* a secretRef names a Secret that is not there */
};

struct kw_diag {
    struct kw_diag_entry *entries;
    size_t n;
    size_t cap;
    size_t dropped; /* errors past KW_MAX_ERRORS: counted, not kept */
};

void kw_diag_init(struct kw_diag *d);
void kw_diag_cleanup(struct kw_diag *d);

/* Record one error. file/object/path may be NULL; strings are copied. Never fails the
 * caller: on out-of-memory or past KW_MAX_ERRORS the error is only counted. */
void kw_diag_add(struct kw_diag *d, const char *file, unsigned line, unsigned col,
                 const char *object, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

/* The same, with a code (enum kw_diag_code). */
void kw_diag_add_code(struct kw_diag *d, int code, const char *file, unsigned line, unsigned col,
                      const char *object, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 8, 9)));

/* An entry's object ("Kind/namespace/name", as every producer writes it) split into its
 * kind's name, namespace and name; false when it is not an object's. */
bool kw_diag_object(const struct kw_diag_entry *e, char *kind, size_t kind_len, char *ns,
                    size_t ns_len, char *name, size_t name_len);

/* Errors recorded, kept or not. */
size_t kw_diag_count(const struct kw_diag *d);

/* Append one entry as a single line without a newline. */
int kw_diag_format(const struct kw_diag_entry *e, struct kw_buf *out);

/* Append every entry, one per line, plus a line for dropped ones. */
int kw_diag_format_all(const struct kw_diag *d, struct kw_buf *out);

/* Move all entries of src to the end of dst (src is left empty). */
void kw_diag_move(struct kw_diag *dst, struct kw_diag *src);

#endif
