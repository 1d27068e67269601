/* knoway controller: the status writer (leader only).
 *
 * For every LLMBackend and LLMRoute of the latest build it computes three conditions and
 * observedGeneration:
 *   Accepted      the object itself is valid (False: the first error, "spec.x: what")
 *   ResolvedRefs  its references resolve: Secrets and keys, LLMBackends, Service endpoints
 *   Programmed    the data planes run it: True when every connected data plane applied a
 *                 snapshot that holds this generation of it ("applied by 2 of 2 data
 *                 planes"); False while some have not (Pending) or rejected it (Rejected),
 *                 or when it is left out of the snapshot (Invalid)
 * and compares them with the status the object has (read from the informer's store). Only
 * when they differ does it send a JSON merge patch to the /status subresource (a 409 is
 * retried); lastTransitionTime moves only when a condition's status does. It runs when a
 * build is made, when a data plane acks or nacks, and when this replica becomes leader,
 * debounced by 250 ms. */
#ifndef CTL_STATUS_H
#define CTL_STATUS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "builder.h"
#include "discovery.h"
#include "kube.h"
#include "lease.h"

#define CTL_STATUS_HISTORY 4 /* builds remembered to tell what each node runs */

struct ctl_status {
    struct ctl_kube *kube;
    struct ctl_discovery *disc;
    struct ctl_store *backends, *routes, *consumers;
    atomic_bool *leader;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool dirty, stop;
    struct ctl_build *history[CTL_STATUS_HISTORY]; /* [0] = latest distinct version */
    struct ctl_build *latest;
    atomic_uint_fast64_t writes, skipped, conflicts, failures;
    pthread_t thread;
    bool running;
};

int ctl_status_start(struct ctl_status *s);
void ctl_status_stop(struct ctl_status *s);
/* A new build (the writer keeps a reference). Any thread. */
void ctl_status_build(struct ctl_status *s, struct ctl_build *b);
/* Re-evaluate soon (acks, leadership). Any thread; ud is the ctl_status. */
void ctl_status_kick(void *ud);

#endif
