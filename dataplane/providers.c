/* The data plane's provider registry: for each provider of knoway/provider.h (indexed by
 * the same enum), the operations that build its requests and translate its answers, and
 * what else the data plane does for it. Adding a provider: its row in common/src/provider.c,
 * its row here, its file. */
#include "provider.h"
#include "knoway/kw.h"
#include "knoway/provider.h"
#include "knoway/snapshot.h"

static const struct dp_provider_desc registry[KW_PROVIDER__COUNT] = {
    [KW_PROVIDER_OPENAI] = {&dp_provider_openai, true, NULL},
    [KW_PROVIDER_AZURE_OPENAI] = {&dp_provider_azure, true, NULL},
    [KW_PROVIDER_ANTHROPIC] = {&dp_provider_anthropic, false, NULL},
    [KW_PROVIDER_AWS_BEDROCK] = {&dp_provider_bedrock, false, NULL},
    [KW_PROVIDER_GEMINI] = {&dp_provider_gemini, false, NULL},
    /* access tokens fetched off the workers as soon as a configuration is applied */
    [KW_PROVIDER_VERTEX_AI] = {&dp_provider_vertex, false, dp_vertex_prefetch},
    [KW_PROVIDER_COHERE] = {NULL, false, NULL}, /* refused when the configuration is read */
    [KW_PROVIDER_MISTRAL] = {&dp_provider_openai, false, NULL},
    [KW_PROVIDER_VLLM] = {&dp_provider_openai, false, NULL},
    [KW_PROVIDER_KSERVE] = {&dp_provider_openai, false, NULL},
    [KW_PROVIDER_OLLAMA] = {&dp_provider_openai, false, NULL},
};

const struct dp_provider_desc *dp_provider_desc(enum kw_provider p)
{
    return &registry[(unsigned)p < KW_PROVIDER__COUNT ? p : KW_PROVIDER_COHERE];
}

const struct dp_provider_ops *dp_provider_for(const struct kw_backend *b)
{
    return dp_provider_desc(b->provider)->ops;
}

void dp_providers_applied(const struct kw_snapshot *snap)
{
    for (int p = 0; p < KW_PROVIDER__COUNT; p++)
        if (registry[p].applied != NULL)
            registry[p].applied(snap);
}
