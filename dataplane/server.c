/* The data-plane process: start workers and the admin listener, then the main thread
 * waits for signals and file changes.
 *
 *   SIGHUP or a change of the file (inotify on its folder, debounced 200 ms)
 *       -> load, validate, build snapshot -> if any error: log every one, keep the old table
 *          else if the version differs: publish (each worker swaps its pointer)
 *   SIGTERM / SIGINT
 *       -> not ready; workers stop accepting and finish in-flight requests; after
 *          drain_seconds the rest are aborted; exit 0 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "debug.h"
#include "filter.h"
#include "gcp_auth.h"
#include "provider.h"
#include "upstream.h"
#include "worker.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/net.h"
#ifdef KW_MIMALLOC
#include <mimalloc.h>
#endif
#include "knoway/proc.h"
#include "server.h"

/* Socket activation (knoway-dataplane.socket): the first passed stream socket serves the
 * API, one named "admin" the admin listener. -1 when none was passed. */
static int activated_fd(const char *want)
{
    char **names = NULL;
    int n = sd_listen_fds_with_names(0, &names);
    int found = -1;
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        bool admin = names != NULL && strcmp(names[i], "admin") == 0;
        if (found == -1 && sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) > 0 &&
            admin == (strcmp(want, "admin") == 0))
            found = fd;
    }
    for (int i = 0; names != NULL && i < n; i++)
        free(names[i]);
    free(names);
    return found;
}

int dp_activated_admin_fd(void)
{
    return activated_fd("admin");
}

/* One listening socket per worker, all bound to the same address with SO_REUSEPORT: the
 * kernel spreads connections over the workers. */
static int listen_socket(const char *addr, bool first)
{
    int act = activated_fd("api");
    if (act != -1) { /* every worker accepts on the same activated socket */
        int fd = fcntl(act, F_DUPFD_CLOEXEC, 0);
        if (fd != -1)
            fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        return fd;
    }
    struct sockaddr_storage ss;
    socklen_t len;
    if (kw_listen_address(addr, &ss, &len) != KW_OK)
        return -1;
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1)
        return -1;
    int one = 1;
    if (first) {
        /* SO_REUSEPORT lets any process of the same user bind the address too: a second
         * data plane on the same file would take half the connections. A socket without it
         * cannot bind while another process listens there: refused. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *)&ss, len) == -1) {
            int e = errno;
            close(fd);
            errno = e;
            return -1;
        }
        close(fd);
        fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd == -1)
            return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&ss, len) == -1 || listen(fd, 4096) == -1) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

struct dp_table *dp_server_table(struct dp_server *s)
{
    pthread_mutex_lock(&s->mu);
    struct dp_table *t = dp_table_ref(s->table);
    pthread_mutex_unlock(&s->mu);
    return t;
}

int dp_server_workers_alive(struct dp_server *s, int64_t within_ms, int64_t *stalled_ms)
{
    int64_t now = dp_now_ms();
    for (unsigned i = 0; i < s->nworkers; i++) {
        int64_t quiet = now - atomic_load(&s->workers[i].alive_ms);
        if (quiet > within_ms) {
            if (stalled_ms != NULL)
                *stalled_ms = quiet;
            return (int)i;
        }
    }
    return -1;
}

/* Hand a new table to every worker: one pointer exchange each, then a wake-up. The
 * caller keeps its own reference to t. */
static void publish(struct dp_server *s, struct dp_table *t)
{
    dp_providers_applied(t->snap); /* e.g. Vertex AI access tokens, fetched off the workers */
    pthread_mutex_lock(&s->mu);
    struct dp_table *old = s->table;
    s->table = dp_table_ref(t);
    pthread_mutex_unlock(&s->mu);
    for (unsigned i = 0; i < s->nworkers; i++) {
        dp_table_unref(atomic_exchange(&s->workers[i].next, dp_table_ref(t)));
        dp_worker_post(&s->workers[i]);
    }
    dp_table_unref(old);
}

int dp_server_apply(struct dp_server *s, struct kw_snapshot *snap, const char *why)
{
    struct dp_table *cur = dp_server_table(s);
    bool same = cur != NULL && strcmp(cur->snap->version, snap->version) == 0;
    dp_table_unref(cur);
    if (!same) {
        struct dp_table *t = dp_table_new(kw_snapshot_ref(snap));
        if (t == NULL)
            return KW_ERROR;
        publish(s, t);
        dp_table_unref(t);
        kw_log(KW_LOG_INFO, "configuration applied", "version", snap->version, "trigger", why,
               NULL);
        sd_notifyf(0, "STATUS=serving configuration %s", snap->version);
    }
    if (!atomic_exchange(&s->ready, true))
        sd_notifyf(0, "READY=1\nSTATUS=serving configuration %s\nMAINPID=%d", snap->version,
                   (int)getpid());
    return KW_OK;
}

static void log_errors(const struct kw_diag *d)
{
    for (size_t i = 0; i < d->n; i++) {
        struct kw_buf b;
        kw_buf_init(&b, 8192);
        kw_diag_format(&d->entries[i], &b);
        kw_log(KW_LOG_ERROR, "configuration error", "error", b.data, NULL);
        kw_buf_cleanup(&b);
    }
    if (d->dropped > 0)
        kw_log(KW_LOG_ERROR, "more configuration errors not shown", NULL);
}

static void reload_config(struct dp_server *s, const char *why);

/* systemd sees the reload (RELOADING=1 ... READY=1) and the version in use. */
static void reload(struct dp_server *s, const char *why)
{
    sd_notify(0, "RELOADING=1");
    reload_config(s, why);
    struct dp_table *t = dp_server_table(s);
    sd_notifyf(0, "READY=1\nSTATUS=serving configuration %s", t != NULL ? t->snap->version : "?");
    dp_table_unref(t);
}

static void reload_config(struct dp_server *s, const char *why)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_load_file(cfg, s->config_path);
    kw_config_check(cfg);
    struct kw_snapshot *snap = NULL;
    if (kw_diag_count(&cfg->diag) == 0)
        snap = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &cfg->diag);
    if (snap == NULL || kw_diag_count(&cfg->diag) > 0) {
        log_errors(&cfg->diag);
        kw_log(KW_LOG_ERROR, "reload failed: keeping the running configuration", "file",
               s->config_path, "trigger", why, NULL);
        atomic_fetch_add(&s->reloads_failed, 1);
        kw_snapshot_unref(snap);
        kw_config_free(cfg);
        return;
    }
    const struct kw_dataplane *ndp = &cfg->dataplane;
    if (strcmp(ndp->listen, s->dp->listen) != 0 || strcmp(ndp->admin, s->dp->admin) != 0 ||
        ndp->workers != s->dp->workers)
        kw_log(KW_LOG_WARN, "DataPlane listen, admin and workers change only at restart", NULL);
    kw_config_free(cfg);
    atomic_fetch_add(&s->reloads_ok, 1);
    struct dp_table *cur = dp_server_table(s);
    bool same = cur != NULL && strcmp(cur->snap->version, snap->version) == 0;
    dp_table_unref(cur);
    if (same) {
        kw_log(KW_LOG_INFO, "configuration unchanged", "version", snap->version, NULL);
        kw_snapshot_unref(snap);
        return;
    }
    struct dp_table *t = dp_table_new(snap);
    if (t == NULL) {
        kw_log(KW_LOG_ERROR, "reload failed: out of memory", NULL);
        return;
    }
    kw_log(KW_LOG_INFO, "configuration applied", "version", t->snap->version, "trigger", why, NULL);
    publish(s, t);
    dp_table_unref(t);
}

/* Raise the fd limit to its hard maximum and clamp the connection limit to what it allows:
 * a proxied request holds two descriptors (client and upstream), and some are kept for
 * listeners, epoll, the admin listener, discovery and log files. */
static void raise_nofile(struct dp_server *s)
{
    uint64_t nofile = kw_raise_nofile();
    uint64_t reserved = 128 + 8 * (uint64_t)s->nworkers;
    uint64_t fit = nofile > reserved * 2 ? (nofile - reserved) / 2 : 16;
    if (s->max_connections > fit) {
        char want[32], got[32], nofile_s[32];
        snprintf(want, sizeof(want), "%u", s->max_connections);
        snprintf(got, sizeof(got), "%llu", (unsigned long long)fit);
        snprintf(nofile_s, sizeof(nofile_s), "%llu", (unsigned long long)nofile);
        kw_log(KW_LOG_WARN,
               "limits.maxConnections lowered to what the file-descriptor limit allows "
               "(two per proxied request); raise LimitNOFILE / ulimit -n for more",
               "configured", want, "effective", got, "nofile", nofile_s, NULL);
        s->max_connections = (unsigned)fit;
    }
}

static int watch_file(const char *path)
{
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd == -1)
        return -1;
    char *copy = strdup(path);
    if (copy == NULL ||
        inotify_add_watch(fd, dirname(copy), IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE) == -1) {
        free(copy);
        close(fd);
        return -1;
    }
    free(copy);
    return fd;
}

/* Whether the inotify events concern our file. */
static bool file_changed(int fd, const char *path)
{
    char *copy = strdup(path);
    const char *base = copy != NULL ? basename(copy) : path;
    bool hit = false;
    char buf[8192] __attribute__((aligned(__alignof__(struct inotify_event))));
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) {
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *ev = (struct inotify_event *)p;
            if (ev->len > 0 && strcmp(ev->name, base) == 0)
                hit = true;
            p += sizeof(*ev) + ev->len;
        }
    }
    free(copy);
    return hit;
}

static void drain(struct dp_server *s)
{
    atomic_store(&s->ready, false);
    sd_notify(0, "STOPPING=1\nSTATUS=draining");
    char secs[16];
    snprintf(secs, sizeof(secs), "%d", s->drain_seconds);
    kw_log(KW_LOG_INFO, "draining: not accepting, finishing requests in flight", "deadline_s", secs,
           NULL);
    for (unsigned i = 0; i < s->nworkers; i++) {
        atomic_store(&s->workers[i].drain, true);
        dp_worker_post(&s->workers[i]);
    }
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += s->drain_seconds;
    for (unsigned i = 0; i < s->nworkers; i++) {
        if (pthread_timedjoin_np(s->threads[i], NULL, &deadline) == 0)
            continue;
        kw_log(KW_LOG_WARN, "drain deadline passed: aborting the requests left", NULL);
        for (unsigned j = i; j < s->nworkers; j++) {
            atomic_store(&s->workers[j].stop, true);
            dp_worker_post(&s->workers[j]);
        }
        for (unsigned j = i; j < s->nworkers; j++)
            pthread_join(s->threads[j], NULL);
        break;
    }
}

int dp_server_run(const char *config_path, struct kw_config *cfg, struct kw_snapshot *snap,
                  int drain_seconds)
{
    struct dp_server s = {.config_path = config_path,
                          .bootstrap = cfg,
                          .dp = &cfg->dataplane,
                          .drain_seconds = drain_seconds};
    pthread_mutex_init(&s.mu, NULL);
    s.max_body_bytes = s.dp->limits.max_body_bytes;
    /* request ids are "worker-boot-counter" and the usage ledger keeps one row per id: the
     * boot id must differ between replicas started together, which the time and the pid do
     * not (in a container every data plane is PID 1) */
    if (getrandom(&s.boot_id, sizeof(s.boot_id), 0) != (ssize_t)sizeof(s.boot_id) ||
        s.boot_id == 0) {
        kw_log(KW_LOG_ERROR, "no randomness for the boot id", NULL);
        return 1;
    }
    dp_gcp_auth_allow(s.dp->vertex_token_urls, s.dp->nvertex_token_urls);
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    s.nworkers = s.dp->workers > 0 ? s.dp->workers : (unsigned)(cores > 0 ? cores : 1);
    bool discovery = s.dp->discovery.url != NULL;
    if (snap != NULL && (s.table = dp_table_new(snap)) == NULL)
        return 1;
    if (s.table != NULL)
        dp_providers_applied(s.table->snap);
    signal(SIGPIPE, SIG_IGN);
    s.max_connections = s.dp->limits.max_connections;
    raise_nofile(&s);
    /* large buffers (bodies, responses) come from mmap and go back to the system when freed,
     * whatever sizes came before (glibc's dynamic threshold would keep them in the heap) */
    mallopt(M_MMAP_THRESHOLD, 256 * 1024);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return 1;
    /* signals go to the main thread's signalfd only: block them before threads start */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);

    s.workers = calloc(s.nworkers, sizeof(*s.workers));
    s.threads = calloc(s.nworkers, sizeof(*s.threads));
    s.metrics = kw_metrics_new(s.nworkers + 1);
    if (s.workers == NULL || s.threads == NULL || sfd == -1 || s.metrics == NULL ||
        dp_filters_init(&s, dp_filters, dp_nfilters) != KW_OK)
        return 1;
    unsigned started = 0;
    int rc = 1;
    for (; started < s.nworkers; started++) {
        int lfd = listen_socket(s.dp->listen, started == 0);
        if (lfd == -1) {
            kw_log(KW_LOG_ERROR, "cannot listen", "address", s.dp->listen, "error", strerror(errno),
                   NULL);
            goto out;
        }
        static const struct dp_worker_hooks hooks = {
            .on_access = dp_on_access,
            .on_accept = dp_conn_accept,
            .on_completed = dp_on_completed,
            .on_connection = dp_conn_notify,
            .abort_all = dp_request_abort_all,
            .on_post = dp_filters_wake,
        };
        if (dp_worker_init(&s.workers[started], &s, started, lfd, &hooks) != KW_OK ||
            dp_upstream_init(&s.workers[started]) != KW_OK) {
            kw_log(KW_LOG_ERROR, "cannot start a worker", NULL);
            started++; /* cleaned up below */
            goto out;
        }
    }
    if (dp_admin_start(&s) != KW_OK) {
        kw_log(KW_LOG_ERROR, "cannot listen", "address", s.dp->admin, "what", "admin", NULL);
        goto out;
    }
    for (unsigned i = 0; i < s.nworkers; i++)
        pthread_create(&s.threads[i], NULL, dp_worker_main, &s.workers[i]);
    atomic_store(&s.ready, s.table != NULL);
    if (discovery && dp_discovery_start(&s.discovery, &s) != KW_OK) {
        kw_log(KW_LOG_ERROR, "cannot start the discovery client", NULL);
        goto out;
    }
    char nw[16];
    snprintf(nw, sizeof(nw), "%u", s.nworkers);
    const char *allocator = "glibc";
#ifdef KW_MIMALLOC
    void *probe = malloc(16); /* mimalloc's only when it replaced malloc (linked before libc) */
    allocator = mi_is_in_heap_region(probe) ? "mimalloc" : "glibc (mimalloc not interposed)";
    free(probe);
#endif
    kw_log(KW_LOG_INFO, "knoway-dataplane started", "allocator", allocator, "listen",
           activated_fd("api") != -1 ? "socket activation" : s.dp->listen, "admin",
           activated_fd("admin") != -1 ? "socket activation" : s.dp->admin, "workers", nw,
           "version", s.table != NULL ? s.table->snap->version : "(from the controller)",
           "discovery", discovery ? s.dp->discovery.url : "off (static mode)", "config",
           config_path, NULL);
    if (s.table != NULL)
        sd_notifyf(0, "READY=1\nSTATUS=serving configuration %s\nMAINPID=%d",
                   s.table->snap->version, (int)getpid());
    else
        sd_notify(0, "STATUS=waiting for a snapshot from the controller");
    /* WatchdogSec: WATCHDOG=1 only while every worker loop answers its ping */
    uint64_t wd_usec = 0;
    int64_t wd_every = sd_watchdog_enabled(0, &wd_usec) > 0 ? (int64_t)(wd_usec / 2000) : -1;
    if (wd_every == 0)
        wd_every = 1;
    int64_t wd_due = wd_every > 0 ? dp_now_ms() + wd_every : -1;
    /* every loop is pinged each second (more often under a short WatchdogSec): /healthz and
     * the watchdog read when each last answered */
    int64_t hb_every = wd_every > 0 && wd_every < DP_HEARTBEAT_MS ? wd_every : DP_HEARTBEAT_MS;
    int64_t hb_due = dp_now_ms() + hb_every;

    int ifd = discovery ? -1 : watch_file(config_path);
    int64_t reload_due = -1;
    int64_t trim_due = dp_now_ms() + DP_TRIM_EVERY_MS;
    for (;;) {
        struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN}, {.fd = ifd, .events = POLLIN}};
        int64_t now = dp_now_ms(), next = trim_due;
        if (now >= trim_due) {
            /* after a burst, give freed heap memory back: workers free into glibc's arenas,
             * which would keep it; mimalloc's heaps are per thread and purge only when their
             * thread calls it, so each worker collects its own on the next ping */
#ifdef KW_MIMALLOC
            atomic_fetch_add(&s.trim, 1);
            mi_collect(true);
#else
            struct mallinfo2 mi = mallinfo2();
            if (mi.fordblks > DP_TRIM_AFTER_BYTES)
                malloc_trim(0);
#endif
            trim_due = now + DP_TRIM_EVERY_MS;
            continue;
        }
        if (reload_due >= 0 && reload_due < next)
            next = reload_due;
        if (hb_due < next)
            next = hb_due;
        int timeout = next < 0 ? -1 : next > now ? (int)(next - now) : 0;
        if (now >= hb_due) {
            if (wd_due >= 0 && now >= wd_due) {
                if (dp_server_workers_alive(&s, 2 * wd_every, NULL) < 0)
                    sd_notify(0, "WATCHDOG=1");
                else
                    kw_log(KW_LOG_ERROR, "a worker did not answer the watchdog ping", NULL);
                wd_due = now + wd_every;
            }
            atomic_fetch_add(&s.ping, 1);
            for (unsigned i = 0; i < s.nworkers; i++)
                dp_worker_post(&s.workers[i]);
            hb_due = now + hb_every;
            continue;
        }
        int n = poll(pfd, ifd >= 0 ? 2 : 1, timeout);
        if (n == -1 && errno != EINTR)
            break;
        if (ifd >= 0 && (pfd[1].revents & POLLIN) && file_changed(ifd, config_path))
            reload_due = dp_now_ms() + 200; /* editors write in steps: settle first */
        if (reload_due >= 0 && dp_now_ms() >= reload_due) {
            reload_due = -1;
            reload(&s, "file change");
        }
        if (!(pfd[0].revents & POLLIN))
            continue;
        struct signalfd_siginfo si;
        bool stop = false;
        while (read(sfd, &si, sizeof(si)) == sizeof(si)) {
            if (si.ssi_signo == SIGHUP && discovery)
                kw_log(KW_LOG_INFO, "SIGHUP ignored: the configuration comes from the controller",
                       NULL);
            else if (si.ssi_signo == SIGHUP)
                reload(&s, "SIGHUP");
            else
                stop = true;
        }
        if (stop)
            break;
    }
    if (ifd >= 0)
        close(ifd);
    dp_discovery_stop(&s.discovery);
    drain(&s);
    kw_log(KW_LOG_INFO, "knoway-dataplane stopped", NULL);
    rc = 0;
    started = 0; /* joined by drain */
out:
    dp_discovery_stop(&s.discovery);
    for (unsigned i = 0; i < started; i++) { /* start-up failed: no worker thread runs */
        if (s.workers[i].mhd != NULL)
            MHD_stop_daemon(s.workers[i].mhd);
        s.workers[i].mhd = NULL;
    }
    dp_admin_stop(&s);
    dp_filters_fini(&s); /* the loops are gone; the ledger may still post to their eventfds */
    for (unsigned i = 0; i < s.nworkers; i++)
        if (s.workers[i].ep != 0) {
            dp_upstream_cleanup(&s.workers[i]);
            dp_worker_cleanup(&s.workers[i]);
            dp_conn_peers_free(&s.workers[i]);
        }
    free(s.workers);
    free(s.threads);
    kw_metrics_free(s.metrics);
    dp_table_unref(s.table);
    close(sfd);
    dp_gcp_auth_stop();
    curl_global_cleanup();
    pthread_mutex_destroy(&s.mu);
    return rc;
}
