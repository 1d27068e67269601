/* knoway controller: LLMConsumer.status.usage from the data planes' counters in Redis
 * (leader only).
 *
 * Every interval (30 s) the leader reads, for each LLMConsumer, the hash the data planes
 * count its current period into (knoway:usage:{ns/name}:<period>, docs/limits.md: the
 * period is its budget's, else the calendar month, UTC) and writes
 * status.usage {period, requests, inputTokens, outputTokens, cost} with a JSON merge patch
 * to /status when it differs from what the object shows (conditions are left alone).
 * Redis is reached with hiredis's blocking API on this thread, with a timeout. */
#ifndef CTL_USAGE_H
#define CTL_USAGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "informer.h"
#include "kube.h"

struct ctl_usage {
    struct ctl_kube *kube;
    struct ctl_store *consumers;
    atomic_bool *leader;
    const char *host; /* Redis */
    const char *user; /* NULL: the default user */
    int port;
    unsigned db;
    const char *password; /* NULL: no AUTH */
    int64_t interval_ms;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    bool stop, running;
    pthread_t thread;
    atomic_uint_fast64_t writes, skipped, failures;
};

int ctl_usage_start(struct ctl_usage *u);
void ctl_usage_stop(struct ctl_usage *u);
/* One pass now (tests, and the thread). */
void ctl_usage_pass(struct ctl_usage *u);

#endif
