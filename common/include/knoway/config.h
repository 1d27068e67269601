/* knoway: a set of resources (from a static file or the Kubernetes API), validated as a
 * whole: every document decoded, then duplicate names and dangling references checked.
 * Errors are collected in cfg->diag; a resource with an error has valid == false and the
 * others are unaffected (the controller programs the valid ones; static mode refuses a
 * file with any error, like nginx -t). */
#ifndef KNOWAY_CONFIG_H
#define KNOWAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "diag.h"
#include "node.h"
#include "resource.h"

struct kw_config {
    struct kw_arena *arena;
    struct kw_backend **backends;
    size_t nbackends, cap_backends;
    struct kw_route **routes;
    size_t nroutes, cap_routes;
    struct kw_secret **secrets;
    size_t nsecrets, cap_secrets;
    struct kw_consumer **consumers;
    size_t nconsumers, cap_consumers;
    struct kw_dataplane dataplane; /* defaults unless a DataPlane document was given */
    bool has_dataplane;
    /* namespaces whose prefix and wildcard model claims may capture and block other
     * namespaces' names (an administrator's choice: knoway-controller
     * --prefix-claim-namespaces; "*" = all, the old rule). Elsewhere such a claim neither
     * blocks another namespace's claim nor wins over its exact names. Set before
     * kw_config_check; the strings outlive the config. */
    const char *const *claim_namespaces;
    size_t nclaim_namespaces;
    struct kw_diag diag;
    /* Built by kw_config_check: the first backend / Secret of each namespace/name, sorted,
     * so that lookups are O(log n) (a controller holds 10,000 resources). Used while
     * *_indexed equals the count (nothing was added since). */
    struct kw_backend **backend_index;
    size_t nbackend_index, backends_indexed;
    struct kw_secret **secret_index;
    size_t nsecret_index, secrets_indexed;
};

/* An empty config with DataPlane defaults. Aborts on out-of-memory (start-up path). */
struct kw_config *kw_config_new(void);
void kw_config_free(struct kw_config *cfg);

/* Read and add every document of a YAML file (strict: unknown fields are errors).
 * KW_OK when the file added no error, else KW_ERROR (errors in cfg->diag). */
int kw_config_load_file(struct kw_config *cfg, const char *path);

/* Add the documents of YAML text; file names the source in messages. Strict. */
int kw_config_add_yaml(struct kw_config *cfg, const char *file, const char *buf, size_t len);

/* Add one object as the Kubernetes API returns it (JSON). Fields the API server keeps
 * but knoway does not read (status, managedFields, ...) are ignored; errors name the
 * object and field path. */
int kw_config_add_json(struct kw_config *cfg, const char *buf, size_t len);

/* One JSON object decoded on its own, for a caller that keeps decoded resources between
 * builds (the controller): the resource is allocated from a, the parse tree from tree
 * (which may be reset or freed afterwards: the decoder copies all it keeps), messages go
 * to diag. resource is NULL when the document could not even be classified. */
struct kw_config_item {
    enum kw_kind kind;
    void *resource; /* struct kw_backend, kw_route, kw_secret, kw_consumer, kw_dataplane */
    bool valid;     /* as decoded: kw_config_check may clear the resource's flag later */
};
int kw_config_decode_json(struct kw_arena *a, struct kw_arena *tree, const char *buf, size_t len,
                          struct kw_diag *diag, struct kw_config_item *out);
/* Add a decoded item (not copied: it must outlive cfg's use of it). What kw_config_check
 * sets on a resource (valid, a route's conflicted flag and backend links) is reset to the
 * item's decoded state first, so an item may be added to one config after another. */
int kw_config_add_item(struct kw_config *cfg, const struct kw_config_item *it);

/* Add one decoded document. strict: unknown fields are errors (files); otherwise they
 * are ignored (API objects, already validated by the CRD schema). */
int kw_config_add_node(struct kw_config *cfg, const struct kw_node *doc, const char *file,
                       bool strict);

/* After all documents are in: duplicate names, dangling references (backendRefs to
 * missing LLMBackends, secretRefs to missing Secrets or keys). Links backendRefs to their
 * backends. KW_OK when cfg->diag holds no error at all. */
int kw_config_check(struct kw_config *cfg);

struct kw_backend *kw_config_find_backend(const struct kw_config *cfg, const char *ns,
                                          const char *name);
struct kw_secret *kw_config_find_secret(const struct kw_config *cfg, const char *ns,
                                        const char *name);

#endif
