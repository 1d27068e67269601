/* knoway: keeps a small libmicrohttpd listener (the admin listeners that answer the
 * kubelet's probes and Prometheus) answering whatever else connects to it.
 *
 * A per-address connection limit is not enough: 70 addresses with 16 slow connections each
 * fill 1,024 slots. The guard tracks every connection of the listener and, when it is
 * nearly full, closes the one that has waited longest for its request headers (as HAProxy
 * and nginx drop idle connections under pressure); a connection whose headers have not come
 * within the header timeout is closed at the next accept. A probe sends its headers at once
 * and is never the one that waited longest.
 *
 * The listener must run one polling thread (MHD_USE_INTERNAL_POLLING_THREAD without a
 * thread pool): the callbacks run there, without a lock. */
#ifndef KNOWAY_PROBEGUARD_H
#define KNOWAY_PROBEGUARD_H

#include <stdint.h>

#include <microhttpd.h>

/* Both binaries' admin listeners: connections, of them from one client address, kept
 * free by the guard, and the time a connection has to send its request headers. */
#define KW_ADMIN_CONNECTIONS 1024u
#define KW_ADMIN_PER_IP      16u
#define KW_ADMIN_SPARE       16u
#define KW_ADMIN_HEADER_MS   3000
#define KW_ADMIN_IDLE_S      10u /* libmicrohttpd's inactivity timeout */

struct kw_probe_guard;

/* limit: the listener's MHD_OPTION_CONNECTION_LIMIT; from limit - spare open connections
 * on, each new one closes the oldest still waiting for its headers. header_ms: the most a
 * connection may take to send its headers (and an idle keep-alive one its next request).
 * NULL when out of memory. */
struct kw_probe_guard *kw_probe_guard_new(unsigned limit, unsigned spare, int64_t header_ms);
void kw_probe_guard_free(struct kw_probe_guard *g);

/* The listener's options: MHD_OPTION_NOTIFY_CONNECTION, kw_probe_guard_on_connection, g,
 * MHD_OPTION_NOTIFY_COMPLETED, kw_probe_guard_on_completed, g. */
void kw_probe_guard_on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                                  enum MHD_ConnectionNotificationCode code);
void kw_probe_guard_on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                                 enum MHD_RequestTerminationCode toe);
/* The access handler's first call for a request: its headers are in. */
void kw_probe_guard_request(struct MHD_Connection *c);

/* Connections closed by the guard so far (any thread). */
uint64_t kw_probe_guard_evicted(const struct kw_probe_guard *g);

#endif
