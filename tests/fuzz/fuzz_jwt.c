/* libFuzzer: JWT verification on hostile tokens (jwt.c): base64url, JSON header and
 * claims, alg/kid selection, ECDSA and Ed25519 signature handling. A JWK Set of one P-256
 * and one Ed25519 key generated at start is trusted for issuer "iss". */
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jwt.h"
#include "knoway/arena.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct dp_jwt *jwt;
static struct kw_jwt_provider provider;

static void b64url(const unsigned char *in, size_t len, char *out)
{
    int n = EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    while (n > 0 && out[n - 1] == '=')
        n--;
    out[n] = '\0';
    for (char *p = out; *p; p++)
        *p = *p == '+' ? '-' : *p == '/' ? '_' : *p;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    unsigned char pt[65], raw[32];
    size_t ptl = 0, rl = sizeof(raw);
    EVP_PKEY_get_octet_string_param(ec, OSSL_PKEY_PARAM_PUB_KEY, pt, sizeof(pt), &ptl);
    EVP_PKEY_get_raw_public_key(ed, raw, &rl);
    char x[64], y[64], ex[64];
    b64url(pt + 1, 32, x);
    b64url(pt + 33, 32, y);
    b64url(raw, 32, ex);
    static char path[] = "/tmp/kw-fuzz-jwks-XXXXXX";
    int fd = mkstemp(path);
    FILE *f = fdopen(fd, "w");
    fprintf(
        f,
        "{\"keys\":[{\"kty\":\"EC\",\"crv\":\"P-256\",\"kid\":\"ec\",\"x\":\"%s\",\"y\":\"%s\"},"
        "{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"kid\":\"ed\",\"x\":\"%s\"}]}",
        x, y, ex);
    fclose(f);
    EVP_PKEY_free(ec);
    EVP_PKEY_free(ed);
    provider = (struct kw_jwt_provider){.issuer = "iss",
                                        .jwks_file = path,
                                        .refresh_ms = 3600000,
                                        .consumer_claim = "c",
                                        .user_claim = "sub"};
    jwt = dp_jwt_start(&provider, 1); /* loads the set now */
    unlink(path);                     /* a refresh keeps the last good set */
    return jwt != NULL ? 0 : 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > DP_JWT_MAX_TOKEN + 16)
        return 0;
    char *tok = malloc(size + 1);
    memcpy(tok, data, size);
    tok[size] = '\0';
    struct kw_arena *a = kw_arena_new(1u << 20);
    struct dp_jwt_claims cl;
    char why[160];
    (void)dp_jwt_looks_like(tok);
    (void)dp_jwt_verify(jwt, tok, 1800000000LL, a, &cl, why, sizeof(why));
    kw_arena_free(a);
    free(tok);
    return 0;
}
