/* libFuzzer: what the controller reads from outside. Byte 0 picks:
 *   0  a watch stream from the API server, fed in pieces of a size byte 1 chooses: the line
 *      splitter, then every line through the event decoder (an object past the depth limit
 *      is cut, never fatal), re-serialised as the informer stores it
 *   1  a discovery poll body (node, version, nonce, error) */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "discovery.h"
#include "informer.h"
#include "knoway/json.h"
#include "knoway/kw.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int on_line(void *ud, const char *line, size_t len)
{
    struct kw_arena *a = ud;
    struct ctl_event ev;
    char err[256];
    if (ctl_event_parse(a, line, len, &ev, err, sizeof(err)) == KW_OK && ev.object != NULL) {
        struct kw_buf b;
        kw_buf_init(&b, 1u << 24);
        kw_json_write(ev.object, &b);
        kw_buf_cleanup(&b);
    }
    kw_arena_reset(a);
    return KW_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    const char *in = (const char *)data + 2;
    size_t len = size - 2;
    struct kw_arena *a = kw_arena_new(1u << 26);
    if (data[0] % 2 == 0) {
        struct ctl_lines lines;
        ctl_lines_init(&lines, 1u << 20, on_line, a);
        size_t step = (size_t)data[1] + 1;
        for (size_t off = 0; off < len; off += step)
            if (ctl_lines_feed(&lines, in + off, len - off < step ? len - off : step) != KW_OK)
                break;
        ctl_lines_cleanup(&lines);
    } else {
        struct kw_poll p;
        kw_poll_parse(a, in, len, &p);
    }
    kw_arena_free(a);
    return 0;
}
