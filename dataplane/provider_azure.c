/* Azure OpenAI: the OpenAI schema behind Azure's deployment URLs.
 *   {baseURL}/openai/deployments/{deployment}/{operation}?api-version={apiVersion}
 *   {baseURL}/openai/responses?api-version={apiVersion} for /v1/responses passed through
 *   (the deployment as the body's model)
 * with the key in an api-key header. Bodies and streams are OpenAI's (relayed and read as
 * provider_openai.c does); Azure's error shapes ({"error":{"code","message"}}, and content
 * filter refusals with type null and an innererror) are mapped to OpenAI's. */
#include <stdio.h>
#include <string.h>

#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "translate.h"

static int azure_build(struct dp_request *r, struct kw_buf *url, struct curl_slist **headers)
{
    const struct kw_backend *b = r->backend;
    size_t blen = r->base_len;
    const char *base = r->base_url != NULL ? r->base_url : "";
    const char *deployment = b->credentials.azure.deployment != NULL
                                 ? b->credentials.azure.deployment
                                 : r->upstream_model;
    /* the Responses API (passed through) needs 2025-03-01-preview or later */
    const char *version = b->credentials.azure.api_version != NULL
                              ? b->credentials.azure.api_version
                          : r->responses_native ? "2025-04-01-preview"
                                                : "2024-10-21";
    char *dep = curl_easy_escape(NULL, deployment, 0); /* no handle needed since 7.82 */
    char *ver = curl_easy_escape(NULL, version, 0);
    int rc = dep != NULL && ver != NULL ? KW_OK : KW_ERROR;
    if (rc == KW_OK && r->responses_native) /* the deployment is the body's model */
        rc = kw_buf_printf(url, "%.*s/openai/responses?api-version=%s", (int)blen, base, ver) |
             kw_node_map_set(r->arena, r->up_json, "model", kw_node_cstring(r->arena, deployment));
    else if (rc == KW_OK)
        rc = kw_buf_printf(url, "%.*s/openai/deployments/%s%s?api-version=%s", (int)blen, base, dep,
                           dp_openai_api_suffix(r->api), ver);
    curl_free(dep);
    curl_free(ver);
    rc |= dp_openai_add_header(headers, r->arena, "Content-Type", "application/json");
    const char *key = dp_provider_secret(r, NULL);
    if (key != NULL)
        rc |= dp_openai_add_header(headers, r->arena, "api-key", key);
    if (rc != KW_OK)
        return KW_ERROR;
    return dp_openai_finish(r, headers, r->up_json);
}

/* A string's or a number's text (Azure writes codes as "429" or 429), else NULL. */
static const char *text_of(const struct kw_node *n)
{
    return n != NULL &&
                   (n->type == KW_NODE_STRING || n->type == KW_NODE_INT || n->type == KW_NODE_FLOAT)
               ? n->str
               : NULL;
}

static int azure_on_error(struct dp_request *r, long status, const char *body, size_t len,
                          struct kw_buf *out)
{
    const struct kw_node *root = dp_tr_error_json(r, body, len);
    if (root == NULL)
        return KW_OK; /* not JSON: wrapped by the caller */
    const struct kw_node *e = kw_node_get(root, "error");
    if (e == NULL || e->type != KW_NODE_MAP)
        return KW_OK;
    const struct kw_node *msg = kw_node_get(e, "message");
    const struct kw_node *type = kw_node_get(e, "type");
    const struct kw_node *param = kw_node_get(e, "param"), *code = kw_node_get(e, "code");
    char fallback[64];
    int flen = snprintf(fallback, sizeof(fallback), "Azure OpenAI answered %ld", status);
    bool m = msg != NULL && msg->type == KW_NODE_STRING;
    return dp_openai_error(out, status, m ? msg->str : fallback, m ? msg->len : (size_t)flen,
                           type != NULL && type->type == KW_NODE_STRING ? type->str : NULL,
                           text_of(param), text_of(code));
}

const struct dp_provider_ops dp_provider_azure = {
    .name = "azure",
    .build = azure_build,
    .on_response = dp_openai_on_response,
    .on_event = dp_openai_on_event,
    .on_error = azure_on_error,
};
