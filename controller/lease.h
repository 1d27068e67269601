/* knoway controller: leader election with a coordination.k8s.io/v1 Lease, as client-go's
 * leaderelection does it.
 *
 *   every retry period (2 s):
 *     GET the Lease; 404 -> create it holding it ourselves (leader)
 *     we hold it            -> renew (PUT with its resourceVersion)
 *     free or expired       -> take it (PUT; leaseTransitions + 1); 409 = someone was faster
 *     held by another       -> follower
 *   "expired" is judged on our own clock: the holder's renewTime has not changed for
 *   leaseDurationSeconds (15 s) since we first saw it (clocks of nodes may differ).
 *   A leader that could not renew for the renew deadline (10 s) steps down at once, before
 *   anyone else may take over (15 s). On stop the leader releases the Lease (holder "").
 *
 * Only the leader writes status; every replica serves discovery. */
#ifndef CTL_LEASE_H
#define CTL_LEASE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "kube.h"

typedef void (*ctl_leader_fn)(void *ud, bool leader);

struct ctl_lease {
    struct ctl_kube *kube;
    const char *ns, *name, *id;
    int duration_s;        /* 15 */
    int renew_deadline_ms; /* 10000 */
    int retry_ms;          /* 2000 */
    ctl_leader_fn on_change;
    void *ud;
    atomic_bool leader, stop;
    atomic_uint_fast64_t acquired; /* times this replica became leader */
    char observed_holder[256], observed_renew[64];
    int64_t observed_ms, renewed_ms;
    pthread_t thread;
    bool running;
};

int ctl_lease_start(struct ctl_lease *l);
/* Stop; a leader releases the Lease. */
void ctl_lease_stop(struct ctl_lease *l);

/* "2026-11-22T10:00:00.123456Z" (metav1.MicroTime) for now. out holds 32 bytes. */
void ctl_micro_time(char out[32]);
/* "2026-11-22T10:00:00Z" (metav1.Time). */
void ctl_rfc3339(char out[32]);

#endif
