/* libFuzzer: what the fronts (POST /v1/messages, POST /v1/responses) read from outside - a
 * client's request, an upstream's OpenAI body, an upstream's OpenAI stream (split at a
 * point the input chooses). The first byte picks the front and which. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "provider.h"
#include "knoway/json.h"
#include "knoway/kw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static struct kw_arena *scratch;
    if (scratch == NULL)
        scratch = kw_arena_new(1u << 26);
    struct dp_request r;
    memset(&r, 0, sizeof(r));
    r.scratch = scratch;
    r.arena = kw_arena_new(1u << 26);
    strcpy(r.id, "fuzz");
    r.model = "m";
    r.thinking_budget = -1;
    r.front = (data[0] / 3) % 2 == 0 ? &dp_front_anthropic : &dp_front_responses;
    if (r.front == &dp_front_responses && data[0] % 3 != 0) { /* its state: a request */
        static const char req[] = "{\"model\":\"m\",\"input\":\"x\",\"tools\":[]}";
        char e[64];
        if (kw_json_parse(r.arena, req, sizeof(req) - 1, &r.json, e, sizeof(e)) != KW_OK ||
            r.front->request(&r) != KW_OK)
            abort();
    }
    kw_buf_init(&r.out, 1u << 24);
    struct kw_buf out;
    kw_buf_init(&out, 1u << 24);
    const char *in = (const char *)data + 2;
    size_t len = size - 2;
    char err[128];
    switch (data[0] % 3) {
    case 0: /* a client's request */
        if (kw_json_parse(r.arena, in, len, &r.json, err, sizeof(err)) == KW_OK &&
            r.json->type == KW_NODE_MAP && r.front->request(&r) == KW_OK)
            kw_json_write(r.json, &out);
        break;
    case 1: /* an upstream's body */
        r.usage.prompt = 7;
        r.front->response(&r, in, len, &out);
        break;
    default: { /* an upstream's stream, in two pieces */
        size_t cut = len > 0 ? data[1] % (len + 1) : 0;
        r.front->stream_begin(&r, &r.out);
        if (r.front->stream(&r, in, cut, &r.out) == KW_OK &&
            r.front->stream(&r, in + cut, len - cut, &r.out) == KW_OK)
            r.front->stream_end(&r, &r.out);
        else
            r.front->stream_error(&r, "boom", &r.out);
        break;
    }
    }
    r.front->cleanup(&r);
    kw_buf_cleanup(&out);
    kw_buf_cleanup(&r.out);
    kw_arena_free(r.arena);
    return 0;
}
