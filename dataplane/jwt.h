/* knoway data plane: JSON Web Tokens (RFC 7519) signed with asymmetric keys, verified with
 * OpenSSL against JSON Web Key Sets (RFC 7517) that a background thread keeps fresh.
 *
 * Accepted: RS256/RS384/RS512 (RSA >= 2048 bits), ES256/ES384 (P-256/P-384), EdDSA
 * (Ed25519). Refused: "none", every HMAC algorithm (HS*: the "public key as HMAC secret"
 * confusion), a key whose type or curve does not fit the token's alg, an unknown kid.
 * Claims: iss must be a configured issuer, aud (when audiences are configured) must name
 * one of them, exp is required, exp/nbf/iat are checked with 60 s of leeway.
 *
 * Key sets: loaded at start, then every `refresh` (jwksFile: when the file changed;
 * jwksURL: fetched with libcurl, TLS verified) on the refresher thread, never on a worker;
 * a token with an unknown kid asks for an early refresh (at most every 10 s). A new set
 * replaces the old one atomically; old sets are freed after a grace period. A failed
 * refresh keeps the last good set and is logged.
 *
 * Threading: dp_jwt_verify from any worker, concurrently. Docs: docs/limits.md (identity),
 * docs/decisions.md (why OpenSSL rather than libjwt or cjose). */
#ifndef DP_JWT_H
#define DP_JWT_H

#include <stddef.h>

#include "knoway/arena.h"
#include "knoway/resource.h"

#define DP_JWT_LEEWAY_S   60
#define DP_JWT_MAX_TOKEN  8192
#define DP_JWT_MAX_KEYS   64
#define DP_JWKS_MAX_BYTES (1024 * 1024)
#define DP_JWKS_GRACE_MS  30000
#define DP_JWKS_EARLY_MS  10000

struct dp_jwt;

/* Start: load every provider's key set once (failures are logged; the refresher retries)
 * and the refresher thread. NULL on out-of-memory or a thread failure. */
struct dp_jwt *dp_jwt_start(const struct kw_jwt_provider *providers, size_t n);
void dp_jwt_stop(struct dp_jwt *j);

struct dp_jwt_claims {
    const struct kw_jwt_provider *provider;
    const char *consumer; /* the consumerClaim's value (arena), or NULL */
    const char *user;     /* the userClaim's value (arena), or NULL */
};

/* Whether token looks like a compact JWS (three base64url parts, a JSON header). */
int dp_jwt_looks_like(const char *token);
/* Verify token at now_s (Unix seconds). KW_OK with out filled, or KW_ERROR with why (for
 * the client: no key material in it). */
int dp_jwt_verify(struct dp_jwt *j, const char *token, long long now_s, struct kw_arena *a,
                  struct dp_jwt_claims *out, char *why, size_t whylen);

#endif
