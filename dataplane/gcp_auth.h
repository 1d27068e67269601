/* knoway data plane: Google OAuth2 access tokens for Vertex AI backends.
 *
 * A Vertex AI backend's Secret holds a service-account key (the JSON file Google issues)
 * or a static access token. For a key, one thread of the process (never a worker) signs a
 * JWT (RS256: iss = client_email, scope cloud-platform, aud = token_uri, one hour) and
 * exchanges it at the key's token_uri (RFC 7523 jwt-bearer grant), caches the access token
 * and refreshes it five minutes before it expires (at half its life when it is shorter);
 * a failed exchange is retried with backoff from 1 s to 60 s while the token it holds is
 * still used. Workers only read the cache under a mutex: a request never waits for an
 * exchange. Keys are known by the credential's digest (the snapshot's HMAC of the value),
 * at most DP_GCP_MAX_KEYS at once; a key nobody asked for in an hour is forgotten and its
 * private key wiped. */
#ifndef DP_GCP_AUTH_H
#define DP_GCP_AUTH_H

#include <stddef.h>

#include "knoway/arena.h"
#include "knoway/buf.h"

#define DP_GCP_MAX_KEYS          64
#define DP_GCP_MAX_KEY_BYTES     (64u * 1024) /* a service-account key file */
#define DP_GCP_MAX_TOKEN         4096         /* an access token */
#define DP_GCP_SCOPE             "https://www.googleapis.com/auth/cloud-platform"
#define DP_GCP_DEFAULT_TOKEN_URI "https://oauth2.googleapis.com/token"

enum dp_gcp_state {
    DP_GCP_OK,      /* *token is set */
    DP_GCP_PENDING, /* the first exchange has not finished yet */
    DP_GCP_FAILED,  /* no valid token: err says why (a bad key, the token endpoint's answer) */
};

/* The token endpoints a key's token_uri may name besides Google's own
 * (DP_GCP_GOOGLE_TOKEN_URIS): DataPlane spec.vertexAI.tokenURLs. The strings must outlive
 * the process (the bootstrap configuration). Called once, before any key is used. */
void dp_gcp_auth_allow(const char *const *urls, size_t n);

/* Ask for the key's token ahead of requests (when a configuration is applied). digest
 * identifies the key (struct kw_credential.digest). */
void dp_gcp_auth_want(const char *digest, const char *key_json, size_t len);

/* The key's access token, copied into a (valid for 10 more seconds at least, a tenth of
 * its life when that is shorter). Never
 * blocks on the network; an unknown key is registered and fetched. */
enum dp_gcp_state dp_gcp_auth_token(const char *digest, const char *key_json, size_t len,
                                    struct kw_arena *a, const char **token, char *err,
                                    size_t errlen);

/* knoway_gcp_token_exchanges_total{result} and knoway_gcp_tokens (Prometheus text). */
int dp_gcp_auth_write_metrics(struct kw_buf *out);

/* Stop the thread and wipe the keys (process exit). */
void dp_gcp_auth_stop(void);

#endif
