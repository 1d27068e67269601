/* knoway: SHA-256 on the request path. OpenSSL 3 looks an algorithm up by name on every
 * EVP_sha256() digest (an implicit fetch: about 4,600 instructions, measured with
 * callgrind, against ~1,000 for hashing a short key); this fetches it once. */
#ifndef KNOWAY_DIGEST_H
#define KNOWAY_DIGEST_H

#include <stddef.h>

/* SHA-256 of data into out. KW_OK or KW_ERROR (OpenSSL failed: out is zeroed). Any thread. */
int kw_sha256(const void *data, size_t len, unsigned char out[32]);

#endif
