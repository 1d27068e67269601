/* SHA-256 with the algorithm fetched once (digest.h). */
#include <openssl/evp.h>
#include <pthread.h>
#include <string.h>

#include "knoway/digest.h"
#include "knoway/kw.h"

static pthread_once_t once = PTHREAD_ONCE_INIT;
static EVP_MD *sha256; /* kept for the process's life */

static void fetch(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int kw_sha256(const void *data, size_t len, unsigned char out[32])
{
    unsigned int n = 0;
    pthread_once(&once, fetch);
    if (sha256 != NULL && EVP_Digest(data, len, out, &n, sha256, NULL) && n == 32)
        return KW_OK;
    memset(out, 0, 32);
    return KW_ERROR;
}
