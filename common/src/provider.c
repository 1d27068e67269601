/* The providers' facts both binaries share (knoway/provider.h). */
#include <string.h>

#include "knoway/kw.h"
#include "knoway/provider.h"

static const struct kw_provider_info providers[KW_PROVIDER__COUNT] = {
    [KW_PROVIDER_OPENAI] = {"OpenAI", "https://api.openai.com/v1", "/v1", "openai", true, true},
    [KW_PROVIDER_AZURE_OPENAI] = {"AzureOpenAI", NULL, "", "azure.ai.openai", false, true},
    [KW_PROVIDER_ANTHROPIC] = {"Anthropic", "https://api.anthropic.com", "", "anthropic", false,
                               true},
    [KW_PROVIDER_AWS_BEDROCK] = {"AWSBedrock", NULL, "", "aws.bedrock", false, true},
    [KW_PROVIDER_GEMINI] = {"Gemini", "https://generativelanguage.googleapis.com", "", "gcp.gemini",
                            false, true},
    [KW_PROVIDER_VERTEX_AI] = {"VertexAI", NULL, "", "gcp.vertex_ai", false, true},
    /* its API is not translated yet: refused with a clear message, never a 501 later */
    [KW_PROVIDER_COHERE] = {"Cohere", "https://api.cohere.com", "", "cohere", false, false},
    [KW_PROVIDER_MISTRAL] = {"Mistral", "https://api.mistral.ai/v1", "/v1", "mistral_ai", true,
                             true},
    [KW_PROVIDER_VLLM] = {"vLLM", NULL, "/v1", "vllm", true, true},
    [KW_PROVIDER_KSERVE] = {"KServe", NULL, "/openai/v1", "kserve", true, true},
    [KW_PROVIDER_OLLAMA] = {"Ollama", NULL, "/v1", "ollama", true, true},
};

const struct kw_provider_info *kw_provider_info(enum kw_provider p)
{
    return &providers[(unsigned)p < KW_PROVIDER__COUNT ? p : KW_PROVIDER_OPENAI];
}

int kw_provider_parse(const char *name)
{
    for (int p = 0; p < KW_PROVIDER__COUNT; p++)
        if (strcmp(providers[p].name, name) == 0)
            return p;
    return -1;
}

const char *kw_provider_name(enum kw_provider p)
{
    return (unsigned)p < KW_PROVIDER__COUNT ? providers[p].name : "?";
}

const char *kw_provider_default_base_url(enum kw_provider p)
{
    return kw_provider_info(p)->default_base_url;
}

const char *kw_provider_service_path(enum kw_provider p)
{
    return kw_provider_info(p)->service_path;
}

bool kw_provider_is_openai_compatible(enum kw_provider p)
{
    return kw_provider_info(p)->openai_compatible;
}
