/* knoway data plane: client connections - the read deadline of each (limits.readTimeout):
 * headers and body must arrive within it, counted from the connection's start or its
 * previous request's end. Past it, a request still reading its body gets a 408 (written
 * here: libmicrohttpd cannot answer before the body is complete) and the connection is
 * closed; a connection still sending headers (or idle) is closed. Worker thread only. */
#ifndef DP_CONN_H
#define DP_CONN_H

#include <microhttpd.h>

#include "request.h"

/* libmicrohttpd's accept policy (cls: the worker): a client address past its share of
 * limits.maxConnectionsPerClient (ceil(limit / workers): SO_REUSEPORT spreads a client's
 * connections over the workers) is refused; spec.trustedProxies are not counted (they
 * carry every client behind them). IPv6 clients are counted by their /64. */
enum MHD_Result dp_conn_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen);
/* Free the worker's counts (at its end). */
void dp_conn_peers_free(struct dp_worker *w);

/* libmicrohttpd's connection notification (the worker's hook). */
void dp_conn_notify(struct dp_worker *w, struct MHD_Connection *conn, void **socket_context,
                    enum MHD_ConnectionNotificationCode toe);
/* A request began on conn; its body is complete; it ended. */
void dp_conn_request_started(struct MHD_Connection *conn, struct dp_request *r);
void dp_conn_body_done(struct dp_request *r);
void dp_conn_request_done(struct dp_request *r);

#endif
