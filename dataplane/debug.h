/* knoway data plane: GET /debug/routes?model=M - why a request would go where. The admin
 * thread posts a query to every worker (each keeps its own balancer state) and waits for
 * their answers; each worker answers from its loop with the route that matches and why,
 * every candidate backend and endpoint with its state, and what its strategy would pick now
 * (a round-robin position is left as it was). */
#ifndef DP_DEBUG_H
#define DP_DEBUG_H

#include <stddef.h>

#include "knoway/buf.h"

struct dp_server;
struct dp_worker;

#define DP_DEBUG_MAX_HEADERS 32

/* Answer the routes query of s for model on path; headers are the request's (names
 * case-insensitive). Waits at most timeout_ms for the workers (admin thread). KW_OK or
 * KW_ERROR (memory, or a worker did not answer in time: out says so). */
int dp_debug_routes(struct dp_server *s, const char *model, const char *path, const char *strategy,
                    const char *const *names, const char *const *values, size_t nheaders,
                    int timeout_ms, struct kw_buf *out);

/* A worker's hook: answer a query posted to it, if any (worker thread). */
void dp_debug_answer(struct dp_worker *w);

#endif
