#include <stdlib.h>
#include <string.h>

#include "testutil.h"

char *kwt_errors(const char *yaml, struct kw_config **cfg_out)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml));
    kw_config_check(cfg);
    struct kw_buf out;
    kw_buf_init(&out, 1 << 20);
    kw_diag_format_all(&cfg->diag, &out);
    char *s = strdup(out.data != NULL ? out.data : "");
    kw_buf_cleanup(&out);
    if (cfg_out != NULL)
        *cfg_out = cfg;
    else
        kw_config_free(cfg);
    return s;
}
