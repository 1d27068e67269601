/* knoway data plane: the process - workers, the current routing table, reload and drain.
 * The main thread owns it: it loads configuration, publishes tables to the workers and
 * handles signals; workers only read the fields below that are set before they start. */
#ifndef DP_SERVER_H
#define DP_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "dp_limits.h"
#include "knoway/config.h"
#include "knoway/metrics.h"
#include "router.h"

struct dp_worker;
struct dp_filter_ops;
struct dp_server;
struct kw_probe_guard;

/* The discovery client (discovery.c): its own thread, long-polling the controller. */
struct dp_discovery {
    struct dp_server *s;
    char node_id[254];
    char version[80]; /* applied */
    char nonce[80];   /* last received */
    char error[1024]; /* why the last received one was rejected, or "" */
    char last_error[1024];
    atomic_uint_fast64_t polls, nacks, failures, cache_loads;
    atomic_bool connected; /* the last poll reached the controller */
    atomic_bool stop;
    pthread_t thread;
    bool running;
};

struct dp_server {
    const char *config_path;
    struct kw_config *bootstrap; /* the first load; holds the DataPlane settings */
    const struct kw_dataplane *dp;
    uint64_t max_body_bytes;
    unsigned max_connections; /* limits.maxConnections clamped to the fd limit */
    uint64_t boot_id;
    unsigned nworkers;
    struct dp_worker *workers;
    pthread_t *threads;
    int drain_seconds;

    pthread_mutex_t mu;     /* guards table for the admin thread */
    struct dp_table *table; /* the current table (main's reference) */
    atomic_bool ready;      /* a table is applied and we are not draining */
    atomic_uint_fast64_t reloads_ok, reloads_failed;
    atomic_uint_fast64_t ping; /* watchdog: bumped by main, echoed by every worker loop */
    atomic_uint_fast64_t trim; /* bumped by main: each worker gives its freed heap back */
    atomic_llong mem_used;     /* requests' memory: arenas and buffers (the budget) */
    atomic_uint_fast64_t rejected_memory, read_timeouts;
    struct kw_metrics *metrics;                 /* shard 0: admin thread, 1 + i: worker i */
    const struct dp_filter_ops *const *filters; /* the filter table (dp_filters) */
    size_t nfilters;
    void *filter_conf[DP_MAX_FILTERS]; /* each filter's server-wide state (filter.h) */
    void *admin_metrics;               /* admin.c's families */
    struct MHD_Daemon *admin;
    struct kw_probe_guard *admin_guard; /* admin.c: slow clients cannot starve the probes */
    struct dp_discovery discovery;      /* used when dp->discovery.url is set */
};

/* Run the data plane from a validated first configuration. Returns the exit code. */
int dp_server_run(const char *config_path, struct kw_config *cfg, struct kw_snapshot *snap,
                  int drain_seconds);

/* Swap in a validated snapshot (any thread; the caller keeps its reference): the table
 * is published to every worker and the server becomes ready. KW_OK or KW_ERROR (memory). */
int dp_server_apply(struct dp_server *s, struct kw_snapshot *snap, const char *why);

int dp_discovery_start(struct dp_discovery *d, struct dp_server *s);
void dp_discovery_stop(struct dp_discovery *d);

/* A new reference to the current table (admin thread), or NULL. */
struct dp_table *dp_server_table(struct dp_server *s);

/* Liveness: the index of a worker loop that has not answered a ping for more than
 * within_ms (the first such), or -1 when every loop answered in time; *stalled_ms how long
 * it has not. Any thread (the admin thread's /healthz, the main thread's watchdog). */
int dp_server_workers_alive(struct dp_server *s, int64_t within_ms, int64_t *stalled_ms);

/* The admin socket passed by socket activation (FileDescriptorName=admin), or -1. */
int dp_activated_admin_fd(void);

/* Admin listener (admin.c). */
int dp_admin_start(struct dp_server *s);
void dp_admin_stop(struct dp_server *s);

#endif
