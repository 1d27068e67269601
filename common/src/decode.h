/* Internal: decoding kw_node documents into resource structs, and encoding them back.
 * Shared by config.c (files, API objects) and snapshot.c (snapshot documents). */
#ifndef KNOWAY_DECODE_H
#define KNOWAY_DECODE_H

#include <stdbool.h>

#include "knoway/arena.h"
#include "knoway/diag.h"
#include "knoway/limits.h"
#include "knoway/node.h"
#include "knoway/resource.h"

struct kw_dec {
    struct kw_arena *a;
    struct kw_diag *diag;
    const char *file;   /* NULL: no positions in messages */
    const char *object; /* "LLMBackend/default/x" */
    bool strict;        /* unknown fields are errors */
    bool snapshot;      /* decoding a snapshot: serviceRef must already be resolved */
    char path[KW_MAX_FIELD_PATH];
    size_t plen;
    unsigned errors;
};

/* Report an error at node n (its position) and the current path. */
void kw_dec_error(struct kw_dec *d, const struct kw_node *n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

struct kw_decoded {
    enum kw_kind kind;
    struct kw_backend *backend;
    struct kw_route *route;
    struct kw_secret *secret;
    struct kw_dataplane *dataplane;
    struct kw_consumer *consumer;
    unsigned errors; /* errors reported for this document */
};

/* Decode one document (apiVersion, kind, metadata, spec/data). KW_OK when its kind was
 * recognised (the struct is in out, with valid == false if it had errors), KW_ERROR when
 * the document could not even be classified. */
int kw_decode_document(struct kw_arena *a, const struct kw_node *doc, const char *file, bool strict,
                       struct kw_diag *diag, struct kw_decoded *out);

/* Decode a spec alone into b / r (meta already set). Errors counted in d->errors. */
void kw_decode_backend_spec(struct kw_dec *d, const struct kw_node *spec, struct kw_backend *b);
void kw_decode_route_spec(struct kw_dec *d, const struct kw_node *spec, struct kw_route *r);
void kw_decode_consumer_spec(struct kw_dec *d, const struct kw_node *spec, struct kw_consumer *c);

/* Encode a spec with every default filled in; NULL on out-of-memory. */
struct kw_node *kw_encode_backend_spec(struct kw_arena *a, const struct kw_backend *b);
struct kw_node *kw_encode_route_spec(struct kw_arena *a, const struct kw_route *r);
struct kw_node *kw_encode_consumer_spec(struct kw_arena *a, const struct kw_consumer *c);

/* Tests only (not thread-safe): called for every map the decoder checks, with its field
 * path ("spec.upstream.endpoints[0]") and the fields it accepts there. The CRD agreement
 * test uses it to list what the parser reads. NULL turns it off. */
typedef void (*kw_fields_hook_fn)(void *ud, const char *path, const char *const *known);
void kw_decode_set_fields_hook(kw_fields_hook_fn fn, void *ud);

/* Edit distance for "did you mean" hints (exported for tests). */
unsigned kw_edit_distance(const char *a, const char *b);

/* Name checks shared with the snapshot parser. */
bool kw_valid_dns_subdomain(const char *s);
bool kw_valid_dns_label(const char *s);

#endif
