/* A reply with a body held in memory, for both binaries' listeners (knoway/httpd.h). */
#include "knoway/httpd.h"

enum MHD_Result kw_httpd_reply(struct MHD_Connection *c, unsigned status, const char *ctype,
                               const char *body, size_t len, const char *name, const char *value)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", ctype);
    if (name != NULL)
        MHD_add_response_header(r, name, value);
    enum MHD_Result rc = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return rc;
}
