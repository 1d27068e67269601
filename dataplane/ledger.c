/* The usage ledger (ledger.h). */
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/uio.h>
#include <unistd.h>

#include "knoway/buf.h"
#include "knoway/duration.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "ledger.h"
#include "spool.h"
#include "worker.h"

#define SINK_BACKOFF_MIN_MS 100
#define SINK_BACKOFF_MAX_MS 5000
#define MAX_BATCH_BYTES     (16u * 1024 * 1024)

struct acks {
    pthread_mutex_t mu;
    struct dp_ledger_item *head, *tail;
};

struct sink {
    struct dp_ledger *l;
    const struct kw_usage_sink *conf;
    unsigned index; /* the spool's reader */
    pthread_t thread;
    bool started;
    PGconn *pg;
    bool migrated;
    int fd; /* jsonl */
    pthread_mutex_t mu;
    char last_error[256];
    atomic_uint_fast64_t shipped, failures;
    _Atomic int64_t failing_since; /* 0: shipping fine */
};

struct dp_ledger {
    const struct kw_dataplane *dp;
    struct dp_spool *spool;
    struct dp_worker *workers;
    unsigned nworkers;
    pthread_mutex_t mu; /* the queue */
    pthread_cond_t cond, sink_cond;
    struct dp_ledger_item *head, *tail;
    bool stop, sinks_stop;
    pthread_t thread;
    bool started;
    struct acks *acks;
    atomic_uint_fast64_t submitted, written, dropped, depth;
    struct sink sinks[8];
    size_t nsinks;
};

/* ---- workers' side ------------------------------------------------------------------- */

struct dp_ledger_item *dp_ledger_submit(struct dp_ledger *l, unsigned worker, const char *data,
                                        size_t len, void *waiter)
{
    struct dp_ledger_item *it = malloc(sizeof(*it) + len + 1);
    if (it == NULL) {
        atomic_fetch_add(&l->dropped, 1);
        return NULL;
    }
    it->next = NULL;
    it->worker = worker;
    it->error = 0;
    atomic_init(&it->waiter, waiter);
    it->len = len;
    memcpy(it->data, data, len);
    it->data[len] = '\0';
    atomic_fetch_add(&l->submitted, 1);
    atomic_fetch_add(&l->depth, 1);
    pthread_mutex_lock(&l->mu);
    bool was_empty = l->head == NULL;
    if (l->tail != NULL)
        l->tail->next = it;
    else
        l->head = it;
    l->tail = it;
    if (was_empty) /* the thread sleeps only on an empty queue */
        pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->mu);
    return it;
}

struct dp_ledger_item *dp_ledger_take_acked(struct dp_ledger *l, unsigned worker)
{
    if (worker >= l->nworkers)
        return NULL;
    struct acks *a = &l->acks[worker];
    pthread_mutex_lock(&a->mu);
    struct dp_ledger_item *list = a->head;
    a->head = a->tail = NULL;
    pthread_mutex_unlock(&a->mu);
    return list;
}

bool dp_ledger_full(const struct dp_ledger *l)
{
    return dp_spool_pending_bytes(l->spool) >= l->dp->usage.max_bytes;
}

bool dp_ledger_drop_when_full(const struct dp_ledger *l)
{
    return l->dp->usage.drop_when_full;
}

/* ---- the ledger thread ----------------------------------------------------------------- */

static void *ledger_main(void *arg)
{
    struct dp_ledger *l = arg;
    int64_t last_sync = dp_now_ms();
    bool dirty = false;
    pthread_mutex_lock(&l->mu);
    for (;;) {
        while (l->head == NULL && !l->stop) {
            struct timespec ts;
            kw_deadline_after(&ts, l->dp->usage.sync_interval_ms);
            pthread_cond_timedwait(&l->cond, &l->mu, &ts);
            if (l->head == NULL && dirty)
                break; /* idle: make the last appends durable */
        }
        struct dp_ledger_item *list = l->head;
        l->head = l->tail = NULL;
        bool stop = l->stop;
        pthread_mutex_unlock(&l->mu);
        bool full = dp_ledger_full(l);
        bool drop = full && l->dp->usage.drop_when_full;
        bool woke[256] = {false};
        while (list != NULL) {
            /* up to 256 records in one write */
            struct dp_ledger_item *batch[256];
            struct iovec iov[256];
            size_t n = 0;
            while (list != NULL && n < 256) {
                batch[n] = list;
                iov[n] = (struct iovec){list->data, list->len};
                list = list->next;
                batch[n]->next = NULL;
                n++;
            }
            atomic_fetch_sub(&l->depth, n);
            size_t ok = 0;
            if (drop) {
                atomic_fetch_add(&l->dropped, n);
            } else {
                ok = dp_spool_append_many(l->spool, iov, n);
                int e = errno;
                atomic_fetch_add(&l->written, ok);
                dirty |= ok > 0;
                if (ok < n) {
                    /* their answers are not released: the waiting requests fail (503) */
                    atomic_fetch_add(&l->dropped, n - ok);
                    for (size_t i = ok; i < n; i++)
                        batch[i]->error = e != 0 ? e : EIO;
                    kw_log(KW_LOG_ERROR, "usage spool: cannot write records", "error",
                           strerror(e != 0 ? e : EIO), NULL);
                }
            }
            for (size_t i = 0; i < n; i++) {
                struct dp_ledger_item *it = batch[i];
                if (atomic_load(&it->waiter) == NULL || it->worker >= l->nworkers) {
                    free(it);
                    continue;
                }
                struct acks *a = &l->acks[it->worker];
                pthread_mutex_lock(&a->mu);
                if (a->tail != NULL)
                    a->tail->next = it;
                else
                    a->head = it;
                a->tail = it;
                pthread_mutex_unlock(&a->mu);
                woke[it->worker % 256] = true;
            }
        }
        for (unsigned i = 0; i < l->nworkers && i < 256; i++)
            if (woke[i])
                dp_worker_post(&l->workers[i]);
        int64_t now = dp_now_ms();
        if (dirty && (now - last_sync >= l->dp->usage.sync_interval_ms || stop)) {
            if (dp_spool_sync(l->spool) != KW_OK)
                kw_log(KW_LOG_ERROR, "usage spool: fdatasync failed", "error", strerror(errno),
                       NULL);
            last_sync = now;
            dirty = false;
        }
        pthread_mutex_lock(&l->mu);
        pthread_cond_broadcast(&l->sink_cond);
        if (stop && l->head == NULL && !dirty)
            break;
    }
    pthread_mutex_unlock(&l->mu);
    return NULL;
}

/* ---- sinks ------------------------------------------------------------------------------ */

static void sink_error(struct sink *k, const char *what, const char *detail)
{
    pthread_mutex_lock(&k->mu);
    snprintf(k->last_error, sizeof(k->last_error), "%s%s%.200s", what, detail[0] ? ": " : "",
             detail);
    pthread_mutex_unlock(&k->mu);
    atomic_fetch_add(&k->failures, 1);
    int64_t zero = 0;
    atomic_compare_exchange_strong(&k->failing_since, &zero, dp_now_ms());
}

static bool pg_ok(struct sink *k)
{
    if (k->pg != NULL && PQstatus(k->pg) == CONNECTION_OK)
        return true;
    if (k->pg != NULL) {
        PQfinish(k->pg);
        k->pg = NULL;
        k->migrated = false;
    }
    char dsn[4096];
    FILE *f = fopen(k->conf->dsn_file, "r");
    size_t n = f != NULL ? fread(dsn, 1, sizeof(dsn) - 1, f) : 0;
    if (f != NULL)
        fclose(f);
    if (n == 0) {
        sink_error(k, "cannot read dsnFile", k->conf->dsn_file);
        return false;
    }
    while (n > 0 && (dsn[n - 1] == '\n' || dsn[n - 1] == '\r' || dsn[n - 1] == ' '))
        n--;
    dsn[n] = '\0';
    /* libpq waits forever for an unreachable host by default: a sink must come back to
     * its loop (and to a shutdown) */
    if (strstr(dsn, "connect_timeout") == NULL && n + 24 < sizeof(dsn)) {
        bool uri = strncmp(dsn, "postgres", 8) == 0 && strstr(dsn, "://") != NULL;
        snprintf(dsn + n, sizeof(dsn) - n, "%sconnect_timeout=5",
                 uri ? (strchr(dsn, '?') != NULL ? "&" : "?") : " ");
    }
    k->pg = PQconnectdb(dsn);
    memset(dsn, 0, sizeof(dsn)); /* it may hold a password */
    if (k->pg == NULL || PQstatus(k->pg) != CONNECTION_OK) {
        sink_error(k, "cannot connect to PostgreSQL", k->pg != NULL ? PQerrorMessage(k->pg) : "");
        return false;
    }
    return true;
}

/* Create or migrate the table (the schema version is recorded in knoway_schema). */
static bool pg_migrate(struct sink *k)
{
    if (k->migrated)
        return true;
    const char *t = k->conf->table;
    struct kw_buf sql;
    kw_buf_init(&sql, 64 * 1024);
    kw_buf_printf(&sql,
                  "CREATE TABLE IF NOT EXISTS knoway_schema (component text PRIMARY KEY, version "
                  "integer NOT NULL);"
                  "CREATE TABLE IF NOT EXISTS %s ("
                  "request_id text PRIMARY KEY, client_request_id text, "
                  "start_time timestamptz NOT NULL, end_time timestamptz NOT NULL, node text, "
                  "consumer text, \"user\" text, attributes jsonb, route text, backend text, "
                  "provider text, model text, upstream_model text, api text, stream boolean, "
                  "status integer, error_type text, attempts integer, input_tokens bigint, "
                  "output_tokens bigint, cached_tokens bigint, reasoning_tokens bigint, "
                  "cost numeric(24,9), duration_ms bigint, ttft_ms bigint);"
                  "CREATE INDEX IF NOT EXISTS %s_start_time ON %s (start_time);"
                  "CREATE INDEX IF NOT EXISTS %s_consumer ON %s (consumer, start_time);"
                  /* version 2: the input count's origin and the provider's own counts */
                  "ALTER TABLE %s ADD COLUMN IF NOT EXISTS input_tokens_estimated boolean;"
                  "ALTER TABLE %s ADD COLUMN IF NOT EXISTS provider_usage jsonb;"
                  "INSERT INTO knoway_schema VALUES ('%s', 2) ON CONFLICT (component) DO UPDATE "
                  "SET version = GREATEST(knoway_schema.version, 2);",
                  t, t, t, t, t, t, t, t);
    PGresult *res = PQexec(k->pg, sql.data);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        sink_error(k, "cannot create the usage table", PQresultErrorMessage(res));
    PQclear(res);
    kw_buf_cleanup(&sql);
    k->migrated = ok;
    return ok;
}

struct batch {
    struct kw_buf buf;
    size_t n;
    bool jsonl;
};

static bool add_record(void *ud, uint64_t offset, const char *data, size_t len)
{
    (void)offset;
    struct batch *b = ud;
    if (b->buf.len + len + 2 > MAX_BATCH_BYTES && b->n > 0)
        return false; /* the next batch takes it */
    if (!b->jsonl)
        kw_buf_append(&b->buf, b->n > 0 ? "," : "[", 1);
    kw_buf_append(&b->buf, data, len);
    if (b->jsonl)
        kw_buf_append(&b->buf, "\n", 1);
    b->n++;
    return true;
}

static bool ship_pg(struct sink *k, struct batch *b)
{
    if (!pg_ok(k) || !pg_migrate(k))
        return false;
    kw_buf_append(&b->buf, "]", 1);
    char sql[512];
    snprintf(sql, sizeof(sql),
             "INSERT INTO %s SELECT * FROM json_populate_recordset(NULL::%s, $1) "
             "ON CONFLICT (request_id) DO NOTHING",
             k->conf->table, k->conf->table);
    const char *params[1] = {b->buf.data};
    PGresult *res = PQexecParams(k->pg, sql, 1, NULL, params, NULL, NULL, 0);
    bool ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        sink_error(k, "cannot insert usage records", PQresultErrorMessage(res));
    PQclear(res);
    return ok;
}

static bool ship_jsonl(struct sink *k, struct batch *b)
{
    if (k->fd < 0) {
        k->fd = k->conf->stdout_
                    ? STDOUT_FILENO
                    : open(k->conf->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (k->fd < 0) {
            sink_error(k, "cannot open the usage file", strerror(errno));
            return false;
        }
    }
    size_t off = 0;
    while (off < b->buf.len) {
        ssize_t n = write(k->fd, b->buf.data + off, b->buf.len - off);
        if (n <= 0) {
            sink_error(k, "cannot write the usage file", strerror(errno));
            return false;
        }
        off += (size_t)n;
    }
    if (!k->conf->stdout_ && fdatasync(k->fd) != 0) {
        sink_error(k, "cannot sync the usage file", strerror(errno));
        return false;
    }
    return true;
}

static void *sink_main(void *arg)
{
    struct sink *k = arg;
    struct dp_ledger *l = k->l;
    int64_t backoff = SINK_BACKOFF_MIN_MS;
    uint64_t from = dp_spool_shipped(l->spool, k->index), saved = from;
    struct batch b = {.jsonl = !k->conf->postgres};
    kw_buf_init(&b.buf, MAX_BATCH_BYTES + 64);
    size_t max = k->conf->postgres ? k->conf->batch_size : 1000;
    for (;;) {
        kw_buf_reset(&b.buf);
        b.n = 0;
        uint64_t next = from;
        bool shipped = false;
        if (saved < from) {
            /* shipped, but where to resume was not saved (a full disk): nothing more is
             * shipped until it is, and what was shipped is never shipped again here */
            b.n = 1; /* no new batch: retry at once when saved, with backoff when not */
            if (dp_spool_ack(l->spool, k->index, from) == KW_OK) {
                saved = from;
                shipped = true;
                atomic_store(&k->failing_since, 0);
                backoff = SINK_BACKOFF_MIN_MS;
            } else {
                sink_error(k, "cannot save the shipped offset", strerror(errno));
            }
        } else if (dp_spool_read(l->spool, k->index, from, max, add_record, &b, &next) != KW_OK) {
            sink_error(k, "cannot read the spool", strerror(errno));
        } else if (b.n > 0) {
            shipped = k->conf->postgres ? ship_pg(k, &b) : ship_jsonl(k, &b);
            if (shipped) {
                from = next;
                atomic_fetch_add(&k->shipped, b.n);
                if (dp_spool_ack(l->spool, k->index, next) == KW_OK) {
                    saved = from;
                    atomic_store(&k->failing_since, 0);
                    backoff = SINK_BACKOFF_MIN_MS;
                } else {
                    sink_error(k, "cannot save the shipped offset", strerror(errno));
                    shipped = false;
                }
            }
        } else if (next > from) {
            from = next; /* only corrupted bytes were skipped */
            dp_spool_ack(l->spool, k->index, from);
        }
        pthread_mutex_lock(&l->mu);
        if (l->sinks_stop && (b.n == 0 || !shipped)) {
            pthread_mutex_unlock(&l->mu);
            break;
        }
        if (b.n == 0 || !shipped) {
            int64_t wait =
                b.n == 0 ? (k->conf->postgres ? k->conf->flush_interval_ms : 100) : backoff;
            struct timespec ts;
            kw_deadline_after(&ts, wait);
            pthread_cond_timedwait(&l->sink_cond, &l->mu, &ts);
            if (b.n > 0)
                backoff = backoff * 2 > SINK_BACKOFF_MAX_MS ? SINK_BACKOFF_MAX_MS : backoff * 2;
        }
        pthread_mutex_unlock(&l->mu);
    }
    kw_buf_cleanup(&b.buf);
    return NULL;
}

/* ---- life ------------------------------------------------------------------------------- */

int dp_ledger_start(struct dp_ledger **out, const struct kw_dataplane *dp,
                    struct dp_worker *workers, unsigned nworkers, char *err, size_t errlen)
{
    *out = NULL;
    struct dp_ledger *l = calloc(1, sizeof(*l));
    if (l == NULL || dp->usage.nsinks == 0 || dp->usage.nsinks > 8) {
        free(l);
        snprintf(err, errlen, "usage: 1..8 sinks");
        return KW_ERROR;
    }
    l->dp = dp;
    l->workers = workers;
    l->nworkers = nworkers;
    pthread_mutex_init(&l->mu, NULL);
    pthread_cond_init(&l->cond, NULL);
    pthread_cond_init(&l->sink_cond, NULL);
    l->acks = calloc(nworkers, sizeof(*l->acks));
    const char *names[8];
    for (size_t i = 0; i < dp->usage.nsinks; i++)
        names[i] = dp->usage.sinks[i].name;
    if (l->acks == NULL ||
        dp_spool_open(&l->spool, dp->usage.dir, names, dp->usage.nsinks, err, errlen) != KW_OK) {
        if (l->acks == NULL)
            snprintf(err, errlen, "out of memory");
        dp_ledger_stop(l);
        return KW_ERROR;
    }
    for (unsigned i = 0; i < nworkers; i++)
        pthread_mutex_init(&l->acks[i].mu, NULL);
    if (pthread_create(&l->thread, NULL, ledger_main, l) != 0) {
        snprintf(err, errlen, "cannot start the ledger thread");
        dp_ledger_stop(l);
        return KW_ERROR;
    }
    l->started = true;
    for (size_t i = 0; i < dp->usage.nsinks; i++) {
        struct sink *k = &l->sinks[i];
        *k = (struct sink){.l = l, .conf = &dp->usage.sinks[i], .index = (unsigned)i, .fd = -1};
        pthread_mutex_init(&k->mu, NULL);
        l->nsinks++;
        if (pthread_create(&k->thread, NULL, sink_main, k) != 0) {
            snprintf(err, errlen, "cannot start a sink thread");
            dp_ledger_stop(l);
            return KW_ERROR;
        }
        k->started = true;
    }
    *out = l;
    return KW_OK;
}

void dp_ledger_stop(struct dp_ledger *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->stop = true;
    pthread_cond_signal(&l->cond);
    pthread_mutex_unlock(&l->mu);
    if (l->started)
        pthread_join(l->thread, NULL);
    /* the sinks get one more pass over what is written, then stop */
    pthread_mutex_lock(&l->mu);
    l->sinks_stop = true;
    pthread_cond_broadcast(&l->sink_cond);
    pthread_mutex_unlock(&l->mu);
    for (size_t i = 0; i < l->nsinks; i++) {
        struct sink *k = &l->sinks[i];
        if (k->started)
            pthread_join(k->thread, NULL);
        if (k->pg != NULL)
            PQfinish(k->pg);
        if (k->fd >= 0 && k->fd != STDOUT_FILENO)
            close(k->fd);
        pthread_mutex_destroy(&k->mu);
    }
    for (unsigned i = 0; l->acks != NULL && i < l->nworkers; i++) {
        struct dp_ledger_item *it = l->acks[i].head;
        while (it != NULL) {
            struct dp_ledger_item *next = it->next;
            free(it);
            it = next;
        }
        pthread_mutex_destroy(&l->acks[i].mu);
    }
    struct dp_ledger_item *it = l->head;
    while (it != NULL) {
        struct dp_ledger_item *next = it->next;
        free(it);
        it = next;
    }
    free(l->acks);
    dp_spool_close(l->spool);
    pthread_cond_destroy(&l->cond);
    pthread_cond_destroy(&l->sink_cond);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

void dp_ledger_stats(struct dp_ledger *l, struct dp_ledger_stats *out)
{
    memset(out, 0, sizeof(*out));
    out->submitted = atomic_load(&l->submitted);
    out->written = atomic_load(&l->written);
    out->dropped = atomic_load(&l->dropped);
    out->queue_depth = atomic_load(&l->depth);
    out->spool_bytes = dp_spool_pending_bytes(l->spool);
    out->spool_end = dp_spool_end(l->spool);
    out->repairs = dp_spool_repairs(l->spool);
    out->nsinks = l->nsinks;
    int64_t now = dp_now_ms();
    for (size_t i = 0; i < l->nsinks; i++) {
        struct sink *k = &l->sinks[i];
        struct dp_ledger_sink_stats *s = &out->sinks[i];
        s->name = k->conf->name;
        s->shipped_offset = dp_spool_shipped(l->spool, k->index);
        s->shipped_records = atomic_load(&k->shipped);
        s->failures = atomic_load(&k->failures);
        int64_t since = atomic_load(&k->failing_since);
        s->lag_ms = since > 0 ? now - since : 0;
        pthread_mutex_lock(&k->mu);
        snprintf(s->last_error, sizeof(s->last_error), "%s", k->last_error);
        pthread_mutex_unlock(&k->mu);
    }
}
