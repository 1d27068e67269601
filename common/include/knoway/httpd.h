/* knoway: what both binaries' libmicrohttpd listeners share besides the connection guard
 * (knoway/probeguard.h): answering a request with a body held in memory. */
#ifndef KNOWAY_HTTPD_H
#define KNOWAY_HTTPD_H

#include <stddef.h>

#include <microhttpd.h>

/* Queue status with body (copied) as ctype; extra: one more header "Name: value" split in
 * two (name NULL for none). MHD_NO when the response cannot be made. */
enum MHD_Result kw_httpd_reply(struct MHD_Connection *c, unsigned status, const char *ctype,
                               const char *body, size_t len, const char *name, const char *value);

#endif
