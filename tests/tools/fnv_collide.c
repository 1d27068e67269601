/* Keys that share a slot under the public hash knoway's tables once used (FNV-1a 64 with
 * its published seed): what a hash-flooding attacker sends. The linearity tests read them
 * (tests/unit/data/); this program wrote them, once:
 *   knoway-fnv-collide json N   keys one JSON/YAML key set puts in one slot at the table
 *                               size N keys grow it to (the slot of h ^ h >> 29)
 *   knoway-fnv-collide store N  names whose "default/NAME" shares the low bits a store of
 *                               N objects uses (the slot of h)
 * Brute force over 8-letter names: about 2^14 tries per key. */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv(uint64_t h, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

int main(int argc, char **argv)
{
    if (argc != 3 || (strcmp(argv[1], "json") != 0 && strcmp(argv[1], "store") != 0)) {
        fprintf(stderr, "usage: %s json|store N\n", argv[0]);
        return 2;
    }
    bool json = strcmp(argv[1], "json") == 0;
    long n = atol(argv[2]);
    uint64_t cap = json ? 32 : 64; /* as keyset.c and informer.c grow */
    while (json ? cap < (uint64_t)n * 2 : cap < (uint64_t)n)
        cap *= 2;
    uint64_t seed = fnv(1469598103934665603ull, "default/", json ? 0 : 8);
    static const char al[] = "abcdefghijklmnopqrstuvwxyz";
    uint64_t want = 0;
    long found = 0;
    char key[9] = {0};
    for (uint64_t i = 0; found < n; i++) {
        uint64_t v = i;
        for (int k = 0; k < 8; k++, v /= 26)
            key[k] = al[v % 26];
        uint64_t h = fnv(seed, key, 8);
        uint64_t slot = (json ? h ^ (h >> 29) : h) & (cap - 1);
        if (i == 0)
            want = slot;
        if (slot == want) {
            puts(key);
            found++;
        }
    }
    return 0;
}
