/* libFuzzer: YAML configuration files through parse, validate, resolve and snapshot. */
#include <stddef.h>
#include <stdint.h>

#include "knoway/config.h"
#include "knoway/snapshot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_add_yaml(cfg, "fuzz.yaml", (const char *)data, size);
    kw_config_check(cfg);
    struct kw_snapshot *s = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &cfg->diag);
    if (s != NULL) {
        /* the canonical form must parse back to itself */
        struct kw_buf text;
        kw_buf_init(&text, 1u << 26);
        if (kw_snapshot_serialize(s, &text) == 0) {
            struct kw_snapshot *p = kw_snapshot_parse(text.data, text.len, &cfg->diag);
            if (p == NULL)
                __builtin_trap();
            kw_snapshot_unref(p);
        }
        kw_buf_cleanup(&text);
    }
    struct kw_buf out;
    kw_buf_init(&out, 1u << 20);
    kw_diag_format_all(&cfg->diag, &out);
    kw_buf_cleanup(&out);
    kw_snapshot_unref(s);
    kw_config_free(cfg);
    return 0;
}
