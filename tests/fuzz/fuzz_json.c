/* libFuzzer: JSON as the Kubernetes API and the discovery channel deliver it. */
#include <stddef.h>
#include <stdint.h>

#include "knoway/config.h"
#include "knoway/json.h"
#include "knoway/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_add_json(cfg, (const char *)data, size);
    kw_config_check(cfg);
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *s = kw_snapshot_parse((const char *)data, size, &diag);
    kw_snapshot_unref(s);
    kw_diag_cleanup(&diag);

    struct kw_arena *a = kw_arena_new(1u << 26);
    struct kw_node *n;
    char err[256];
    if (kw_json_parse(a, (const char *)data, size, &n, err, sizeof(err)) == 0) {
        struct kw_buf b;
        kw_buf_init(&b, 1u << 26);
        kw_json_write_canonical(n, &b);
        kw_buf_cleanup(&b);
    }
    kw_arena_free(a);
    kw_config_free(cfg);
    return 0;
}
