/* knoway data plane: the phase engine - runs a request through the phase table
 * (request.h enum dp_phase) and its filters, decides retries and fallbacks, and relays the
 * upstream's answer through the provider and the front to respond.c.
 *
 * Every phase and filter returns KW_OK (next), KW_DECLINED (skip), KW_AGAIN (suspended:
 * dp_engine_resume runs the same phase again later), KW_DONE (a response is ready) or
 * KW_ERROR (r->err is sent). Worker thread only. */
#ifndef DP_PHASES_H
#define DP_PHASES_H

#include <microhttpd.h>

#include "request.h"

/* The client's body is complete: run from the first phase. */
void dp_engine_start(struct dp_request *r);
/* Continue a request suspended by KW_AGAIN (a filter's event arrived). */
void dp_engine_resume(struct dp_request *r);
/* The client went away: cancel the upstream at once. */
void dp_engine_client_gone(struct dp_request *r);
/* The request is over (libmicrohttpd completed it): stop what runs, report usage, run every
 * filter's on_end. toe: how it ended. */
void dp_engine_end(struct dp_request *r, enum MHD_RequestTerminationCode toe);

/* The name of a phase ("route"). */
const char *dp_phase_name(enum dp_phase p);

#endif
