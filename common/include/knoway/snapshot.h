/* knoway: the snapshot - what the controller sends and the data plane runs.
 *
 * One JSON document holding the resolved, valid resources and nothing Kubernetes-specific:
 *   {"backends":[{"name","namespace","spec":{...}}], "credentials":[{"data","key","name",
 *    "namespace"}], "routes":[{"name","namespace","spec":{...}}], "version":"sha256:..."}
 * Specs use the field names of the API with every default filled in; a serviceRef is
 * replaced by the endpoints it resolved to; credentials hold only the Secret keys that a
 * backend references, base64-encoded. The canonical form (keys sorted, no white space,
 * items sorted by namespace/name) is what is hashed: version = "sha256:" + hex SHA-256 of
 * the canonical document without its "version" member. The same inputs give the same
 * version on every controller replica. See docs/snapshot.md. */
#ifndef KNOWAY_SNAPSHOT_H
#define KNOWAY_SNAPSHOT_H

#include <stdatomic.h>
#include <stddef.h>

#include "arena.h"
#include "buf.h"
#include "config.h"
#include "diag.h"
#include "resource.h"

#define KW_SNAPSHOT_VERSION_LEN (7 + 64) /* "sha256:" + hex */

#define KW_CREDENTIAL_DIGEST_LEN (12 + 64) /* "hmac-sha256:" + hex */

struct kw_credential {
    const char *ns, *name, *key;
    const char *value; /* NUL-terminated */
    size_t len;
    /* HMAC-SHA256 of the value under the installation's key (kw_snapshot_set_key): the
     * version covers this digest, never the value, so a published version and a redacted
     * snapshot do not let anyone test guesses of a credential offline. */
    char digest[KW_CREDENTIAL_DIGEST_LEN + 1];
};

struct kw_snapshot {
    struct kw_arena *arena;
    atomic_int refs;
    char version[KW_SNAPSHOT_VERSION_LEN + 1];
    struct kw_backend **backends; /* sorted by namespace/name */
    size_t nbackends;
    struct kw_route **routes; /* sorted by namespace/name; refs[].backend linked */
    size_t nroutes;
    struct kw_credential *credentials; /* sorted by namespace/name/key */
    size_t ncredentials;
    struct kw_consumer **consumers; /* sorted by namespace/name; keys as digests only */
    size_t nconsumers;
};

/* Resolves an upstream.serviceRef into endpoints. Fills *eps (allocated from a) and
 * *neps; returns KW_OK, or KW_ERROR with a reason in err. */
typedef int (*kw_service_resolver_fn)(void *ud, struct kw_arena *a, const char *ns,
                                      const char *name, uint32_t port, struct kw_endpoint **eps,
                                      size_t *neps, char *err, size_t errlen);

/* The static-mode resolver: http://NAME.NAMESPACE.svc:PORT (cluster DNS). */
int kw_service_resolve_dns(void *ud, struct kw_arena *a, const char *ns, const char *name,
                           uint32_t port, struct kw_endpoint **eps, size_t *neps, char *err,
                           size_t errlen);

/* Build a snapshot from the valid resources of a checked config (kw_config_check ran).
 * Routes lose backendRefs whose backend is invalid; a route left without any is left out.
 * What is left out is reported in diag. Returns the snapshot with one reference, or NULL
 * on out-of-memory. */
struct kw_snapshot *kw_snapshot_build(const struct kw_config *cfg, kw_service_resolver_fn resolve,
                                      void *ud, struct kw_diag *diag);

/* A cache of the canonical text of snapshot entries, for a writer whose config keeps
 * decoded resources between writes (the controller). src is the config's resource (an
 * LLMBackend or LLMRoute of cfg); sig stands for what else the entry depends on (a route:
 * which of its backendRefs are kept). get returns the text put for the same src and sig,
 * or NULL; the caller must forget an entry when its resource is freed or changed. */
struct kw_snapshot_fragments {
    const char *(*get)(void *ud, enum kw_kind kind, const void *src, uint64_t sig, size_t *len);
    void (*put)(void *ud, enum kw_kind kind, const void *src, uint64_t sig, const char *text,
                size_t len);
    void *ud;
};

/* What a written snapshot holds, without parsing it back: the version and the metadata of
 * its resources (value copies whose strings point into the config: valid while it is;
 * meta.order is the resource's position in the config). */
struct kw_snapshot_summary {
    char version[KW_SNAPSHOT_VERSION_LEN + 1];
    struct kw_meta *backends; /* sorted by namespace/name */
    size_t nbackends;
    struct kw_meta *routes; /* oldest first */
    size_t nroutes;
    struct kw_meta *consumers; /* sorted by namespace/name */
    size_t nconsumers;
};

/* The canonical text kw_snapshot_build would parse (what kw_snapshot_serialize of that
 * snapshot writes again), appended to text, and its summary. What is left out is
 * reported in diag as by kw_snapshot_build. KW_OK, or KW_ERROR (too large, out of
 * memory; reported in diag). */
int kw_snapshot_write(const struct kw_config *cfg, kw_service_resolver_fn resolve, void *ud,
                      struct kw_diag *diag, struct kw_buf *text, struct kw_snapshot_summary *sum,
                      const struct kw_snapshot_fragments *frag);
void kw_snapshot_summary_cleanup(struct kw_snapshot_summary *sum);

/* Canonical JSON of the snapshot, version included. KW_OK or KW_ERROR (limit). */
int kw_snapshot_serialize(const struct kw_snapshot *s, struct kw_buf *out);

/* Parse and fully validate a snapshot document; the version must match its content.
 * Returns a snapshot with one reference, or NULL with the reasons in diag. */
struct kw_snapshot *kw_snapshot_parse(const char *json, size_t len, struct kw_diag *diag);

/* Reference counting; any thread may call these. The last unref frees. NULL is a no-op. */
struct kw_snapshot *kw_snapshot_ref(struct kw_snapshot *s);
void kw_snapshot_unref(struct kw_snapshot *s);

/* Check a credential value that will be sent in an HTTP header (API keys, AWS keys; not
 * CA certificates). KW_OK; KW_DECLINED when it ends with one newline ("\n" or "\r\n", as
 * `kubectl create secret --from-file` leaves) and *len was shortened to drop it; KW_ERROR
 * when it holds a control character (CR/LF would inject headers). Empty is allowed (no
 * header is sent; the upstream says why). */
int kw_credential_header_check(const char *value, size_t *len);
/* Whether a credential is a JSON object (a Vertex AI service-account key: used to sign,
 * never sent in a header). */
bool kw_credential_is_json(const char *value, size_t len);

/* The installation's key for credential digests, derived from secret (the controller uses
 * its discovery token, which every replica shares, so replicas agree on versions). Without
 * a call, a random key is drawn once per process (static mode: versions are stable while
 * the process runs). Call before any thread builds snapshots. */
void kw_snapshot_set_key(const void *secret, size_t len);

/* The credential a secretRef names in this snapshot, or NULL. */
const struct kw_credential *kw_snapshot_credential(const struct kw_snapshot *s, const char *ns,
                                                   const char *name, const char *key);

#endif
