/* knoway data plane: the usage ledger (docs/usage.md) - a thread that takes usage records
 * from the workers, appends them to the spool (spool.h) and acknowledges them, and one
 * thread per sink shipping the spool to PostgreSQL or a JSON-lines file.
 *
 * Hand-off: a worker submits a record (copied into an item) under a mutex held for a
 * pointer swap; the ledger thread takes every waiting item at once, appends them, and
 * gives the items that have a waiter back to their worker's list, waking the worker
 * (dp_worker_post). No worker ever waits on the disk or the database.
 *
 * Guarantees: a record is in the spool's files (the kernel's page cache: it survives the
 * process being killed) before its waiter is told; fdatasync runs at most every
 * syncInterval (a machine crash loses at most that much). Sinks read the spool from their
 * shipped offset, ship, then persist the new offset: at-least-once per sink; PostgreSQL
 * rows are exactly-once through the request_id primary key.
 *
 * Threading: submit and take_acked on workers; everything else on the ledger's threads;
 * dp_ledger_stats from any thread. */
#ifndef DP_LEDGER_H
#define DP_LEDGER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "knoway/resource.h"

struct dp_worker;
struct dp_ledger;

struct dp_ledger_item {
    struct dp_ledger_item *next;
    unsigned worker;        /* whose list the ack goes to */
    _Atomic(void *) waiter; /* the worker's (its request); NULL: nobody waits (any more) */
    int error;              /* 0: written; else the errno that kept it out of the spool */
    size_t len;
    char data[]; /* the record (JSON) */
};

/* Open the spool and start the threads (main thread, before the workers). KW_OK, or
 * KW_ERROR with err set. */
int dp_ledger_start(struct dp_ledger **out, const struct kw_dataplane *dp,
                    struct dp_worker *workers, unsigned nworkers, char *err, size_t errlen);
/* Stop (after the workers): what was submitted is written, sinks get a last try. */
void dp_ledger_stop(struct dp_ledger *l);

/* Worker: hand over a record (copied). With a waiter the item comes back through
 * dp_ledger_take_acked once written; the worker frees it (free()). Returns the item, or
 * NULL on out-of-memory (counted as dropped). */
struct dp_ledger_item *dp_ledger_submit(struct dp_ledger *l, unsigned worker, const char *data,
                                        size_t len, void *waiter);
/* Worker: the items written since the last call (a list), to resume and free. */
struct dp_ledger_item *dp_ledger_take_acked(struct dp_ledger *l, unsigned worker);
/* The spool holds maxBytes not yet shipped by every sink. */
bool dp_ledger_full(const struct dp_ledger *l);
bool dp_ledger_drop_when_full(const struct dp_ledger *l);

struct dp_ledger_sink_stats {
    const char *name;
    uint64_t shipped_offset, shipped_records, failures;
    int64_t lag_ms; /* age of the oldest record not yet shipped; 0 when caught up */
    char last_error[256];
};

struct dp_ledger_stats {
    uint64_t submitted, written, dropped, queue_depth, spool_bytes, spool_end, repairs;
    size_t nsinks;
    struct dp_ledger_sink_stats sinks[8];
};
void dp_ledger_stats(struct dp_ledger *l, struct dp_ledger_stats *out);

#endif
