/* knoway: what both binaries know of each provider, in one table (common/src/provider.c).
 * The data plane's own half (how requests are built and answers translated) is its
 * provider registry (dataplane/providers.c), indexed by the same enum. Adding a provider
 * is a row here, a row there and its file. */
#ifndef KNOWAY_PROVIDER_H
#define KNOWAY_PROVIDER_H

#include <stdbool.h>
#include <stddef.h>

#include "knoway/resource.h"

struct kw_provider_info {
    const char *name;             /* as spelled in the API: "OpenAI", "AWSBedrock", ... */
    const char *default_base_url; /* the public API root, or NULL (self-hosted, per user) */
    const char *service_path;     /* the API root below a Service's address ("/v1", "") */
    const char *genai_name;       /* OpenTelemetry's gen_ai.provider.name */
    bool openai_compatible;       /* speaks the OpenAI schema: passed through */
    bool supported;               /* false: refused when the configuration is read */
};

/* The row of p (p < KW_PROVIDER__COUNT). */
const struct kw_provider_info *kw_provider_info(enum kw_provider p);
/* The provider named name (exactly as spelled), or -1. */
int kw_provider_parse(const char *name);

#endif
