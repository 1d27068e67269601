/* knoway data plane: client connections - the read deadline of each (limits.readTimeout):
 * headers and body must arrive within it, counted from the connection's start or its
 * previous request's end. Past it, a request still reading its body gets a 408 (written
 * here: libmicrohttpd cannot answer before the body is complete) and the connection is
 * closed; a connection still sending headers (or idle) is closed. Worker thread only. */
#ifndef DP_CONN_H
#define DP_CONN_H

#include <microhttpd.h>

#include "request.h"

/* libmicrohttpd's connection notification (the worker's hook). */
void dp_conn_notify(struct dp_worker *w, struct MHD_Connection *conn, void **socket_context,
                    enum MHD_ConnectionNotificationCode toe);
/* A request began on conn; its body is complete; it ended. */
void dp_conn_request_started(struct MHD_Connection *conn, struct dp_request *r);
void dp_conn_body_done(struct dp_request *r);
void dp_conn_request_done(struct dp_request *r);

#endif
