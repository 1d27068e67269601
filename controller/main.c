/* knoway-controller: command line, wiring, admin listener, signals.
 *
 *   informers (LLMBackend, LLMRoute, Secret, EndpointSlice)
 *       --kick--> builder --on_build--> discovery (every replica)
 *                                   \-> status writer (leader only) <-- acks, leadership
 */
#include <getopt.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <systemd/sd-daemon.h>
#include <time.h>
#include <unistd.h>

#include "builder.h"
#include "discovery.h"
#include "informer.h"
#include "knoway/kw.h"
#include "knoway/log.h"
#include "knoway/metrics.h"
#include "knoway/httpd.h"
#include "knoway/probeguard.h"
#include "knoway/redis_contract.h"
#include "knoway/otlp.h"
#include "knoway/net.h"
#include "knoway/proc.h"
#include "kube.h"
#include "lease.h"
#include "status.h"
#include "usage.h"

enum { INF_BACKENDS, INF_ROUTES, INF_SECRETS, INF_SLICES, INF_CONSUMERS, INF__COUNT };

/* Secrets the controller reads: labelled ones only (a cluster holds many others: tokens,
 * certificates, Helm releases; none of them is the controller's business). */
#define CTL_SECRET_SELECTOR "llm.knoway.dev/secret"

struct ctl {
    struct kw_probe_guard *admin_guard;
    struct ctl_kube kube;
    struct ctl_informer inf[INF__COUNT];
    struct ctl_builder builder;
    struct ctl_discovery disc;
    struct ctl_status status;
    struct ctl_lease lease;
    struct ctl_usage usage; /* status.usage from Redis (--redis) */
    bool leader_elect;
    atomic_bool leader;
    atomic_bool ready;
    struct MHD_Daemon *admin;
    struct kw_cidr debug_from[16]; /* who may read the debug endpoints (--debug-from) */
    size_t ndebug_from;
    pthread_mutex_t mu; /* guards the fields below */
    char version[80];
    size_t nbackends, nroutes, nstates, nerrors;
    size_t valid[KW_KIND_LLMCONSUMER + 1][2]; /* resources by kind: [kind][accepted] */
    double build_seconds;
    /* metrics with histograms: shard 0 the builder thread, 1 the discovery thread */
    struct kw_metrics *reg;
    struct kw_metric *build_hist;
    struct kw_otlp *otlp; /* spans of builds and pushes (--otlp-endpoint), or NULL */
};

static void usage(FILE *out)
{
    fprintf(
        out,
        "Usage: knoway-controller [--kubeconfig FILE] [--namespace NS] [--listen ADDR]\n"
        "                         [--admin ADDR] [--token-file FILE] [--leader-elect]\n"
        "                         [--lease-namespace NS] [--id NAME]\n"
        "\n"
        "The knoway control plane: watches LLMBackend and LLMRoute resources (and the\n"
        "Secrets and EndpointSlices they reference), builds configuration snapshots and\n"
        "serves them to knoway-dataplane instances (POST /v1/discovery, long-poll).\n"
        "\n"
        "  --kubeconfig FILE       kubeconfig to use (default: in-cluster configuration,\n"
        "                          else $KUBECONFIG or ~/.kube/config)\n"
        "  --namespace NS          watch one namespace (default: all)\n"
        "  --listen ADDR           discovery address (default 0.0.0.0:18000)\n"
        "  --admin ADDR            /healthz /readyz /metrics /debug/nodes (default 0.0.0.0:9902)\n"
        "  --token-file FILE       bearer token data planes must present (required: snapshots\n"
        "                          carry credentials)\n"
        "  --insecure-no-token     serve snapshots to anyone who can reach --listen (tests on\n"
        "                          loopback only)\n"
        "  --prefix-claim-namespaces NS,...  namespaces whose prefix and wildcard model claims\n"
        "                          may capture and block other namespaces' names (\"*\": all;\n"
        "                          default none)\n"
        "  --tls-cert-file FILE    serve discovery over TLS with this certificate (PEM)\n"
        "  --tls-key-file FILE     ... and this key\n"
        "  --leader-elect          elect one replica (Lease) to write status\n"
        "  --lease-namespace NS    namespace of the Lease (default: the client's namespace)\n"
        "  --lease-name NAME       name of the Lease (default knoway-controller)\n"
        "  --id NAME               this replica's identity (default: host name)\n"
        "  --qps N, --burst N      client-side rate limit for API requests (default 20, 40)\n"
        "  --secret-selector SEL   label selector of the Secrets to watch (default\n"
        "                          " CTL_SECRET_SELECTOR "; \"\" watches every Secret)\n"
        "  --debug-from CIDRS      who may read /debug/* on the admin listener, comma-separated\n"
        "                          (default 127.0.0.0/8,::1/128)\n"
        "  --redis redis://[USER@]HOST[:PORT][/DB]  where the data planes count usage: the leader\n"
        "                          writes LLMConsumer status.usage from it every 30 s\n"
        "  --redis-password-file FILE  Redis password (AUTH)\n"
        "  --usage-interval SECONDS    how often status.usage is refreshed (default 30)\n"
        "  --node-grace SECONDS    forget a data plane that stopped polling this long ago\n"
        "                          (default 90)\n"
        "  --otlp-endpoint URL     export spans of snapshot builds and pushes over OTLP/HTTP\n"
        "                          (default: $OTEL_EXPORTER_OTLP_ENDPOINT)\n"
        "  --otlp-protocol P       json (default) or protobuf\n"
        "  --version, --help\n"
        "\n"
        "Documentation: docs/controller.md\n");
}

/* A span for a build (the trace its pushes join). */
static void build_span(struct ctl *c, const struct ctl_build *b, bool changed)
{
    if (c->otlp == NULL)
        return;
    struct kw_span s;
    kw_span_init(&s, b->trace_id, b->span_id, NULL, "snapshot build", KW_SPAN_INTERNAL);
    s.start_ns = b->end_ns - b->build_us * 1000;
    s.end_ns = b->end_ns;
    kw_span_str(&s, "knoway.snapshot.version", b->version);
    kw_span_int(&s, "knoway.snapshot.backends", (int64_t)b->nbackends);
    kw_span_int(&s, "knoway.snapshot.routes", (int64_t)b->nroutes);
    kw_span_int(&s, "knoway.build.resources", (int64_t)b->nstates);
    kw_span_int(&s, "knoway.build.errors", (int64_t)b->nerrors);
    kw_span_int(&s, "knoway.build.changed", changed ? 1 : 0);
    kw_otlp_submit(c->otlp, &s);
    kw_span_cleanup(&s);
}

/* Every informer has listed: checked before a build reads the stores (a partial view
 * would drop consumers or resources whose references are not loaded yet). */
static bool all_synced(void *ud)
{
    struct ctl *c = ud;
    for (int i = 0; i < INF__COUNT; i++)
        if (!atomic_load(&c->inf[i].synced))
            return false;
    return true;
}

static void on_build(void *ud, struct ctl_build *b)
{
    struct ctl *c = ud;
    kw_trace_random_hex(b->trace_id, 16);
    kw_trace_random_hex(b->span_id, 8);
    b->end_ns = kw_now_unix_ns();
    bool changed = ctl_discovery_publish(&c->disc, b);
    ctl_status_build(&c->status, b);
    if (c->build_hist != NULL)
        kw_series_observe(kw_metric_series(c->build_hist, 0, NULL), (double)b->build_us / 1e6);
    build_span(c, b, changed);
    size_t valid[KW_KIND_LLMCONSUMER + 1][2] = {{0}};
    for (size_t i = 0; i < b->nstates; i++)
        if ((unsigned)b->states[i].kind <= KW_KIND_LLMCONSUMER)
            valid[b->states[i].kind][b->states[i].accepted ? 1 : 0]++;
    pthread_mutex_lock(&c->mu);
    memcpy(c->valid, valid, sizeof(valid));
    snprintf(c->version, sizeof(c->version), "%s", b->version);
    c->nbackends = b->nbackends;
    c->nroutes = b->nroutes;
    c->nstates = b->nstates;
    c->nerrors = b->nerrors;
    c->build_seconds = (double)b->build_us / 1e6;
    pthread_mutex_unlock(&c->mu);
    atomic_store(&c->ready, true);
    if (changed) {
        char nb[32], nr[32], ne[32], ms[32];
        snprintf(nb, sizeof(nb), "%zu", b->nbackends);
        snprintf(nr, sizeof(nr), "%zu", b->nroutes);
        snprintf(ne, sizeof(ne), "%zu", b->nerrors);
        snprintf(ms, sizeof(ms), "%.1f", (double)b->build_us / 1000.0);
        kw_log(KW_LOG_INFO, "snapshot published", "version", b->version, "backends", nb, "routes",
               nr, "errors", ne, "build_ms", ms, NULL);
    }
}

static void on_leader(void *ud, bool leader)
{
    struct ctl *c = ud;
    atomic_store(&c->leader, leader);
    if (leader)
        ctl_status_kick(&c->status);
}

static enum MHD_Result reply(struct MHD_Connection *c, unsigned status, const char *ctype,
                             const char *body, size_t len)
{
    return kw_httpd_reply(c, status, ctype, body, len, NULL, NULL);
}

static void metrics(struct ctl *c, struct kw_buf *b)
{
    pthread_mutex_lock(&c->mu);
    if (c->version[0] != '\0')
        kw_buf_printf(b,
                      "# HELP knoway_snapshot_version_info The snapshot being served.\n"
                      "# TYPE knoway_snapshot_version_info gauge\n"
                      "knoway_snapshot_version_info{version=\"%s\"} 1\n",
                      c->version);
    kw_buf_printf(b,
                  "# HELP knoway_controller_snapshot_resources Resources in the snapshot.\n"
                  "# TYPE knoway_controller_snapshot_resources gauge\n"
                  "knoway_controller_snapshot_resources{kind=\"LLMBackend\"} %zu\n"
                  "knoway_controller_snapshot_resources{kind=\"LLMRoute\"} %zu\n"
                  "# HELP knoway_controller_resource_errors Errors found in the last build.\n"
                  "# TYPE knoway_controller_resource_errors gauge\n"
                  "knoway_controller_resource_errors %zu\n"
                  "# HELP knoway_controller_snapshot_build_seconds Duration of the last build.\n"
                  "# TYPE knoway_controller_snapshot_build_seconds gauge\n"
                  "knoway_controller_snapshot_build_seconds %.6f\n",
                  c->nbackends, c->nroutes, c->nerrors, c->build_seconds);
    kw_buf_puts(b, "# HELP knoway_controller_resources Resources in the last build, by kind and "
                   "whether they were accepted.\n"
                   "# TYPE knoway_controller_resources gauge\n");
    static const enum kw_kind kinds[] = {KW_KIND_LLMBACKEND, KW_KIND_LLMCONSUMER, KW_KIND_LLMROUTE};
    for (size_t k = 0; k < KW_ARRAY_LEN(kinds); k++)
        for (int v = 0; v < 2; v++)
            kw_buf_printf(b, "knoway_controller_resources{kind=\"%s\",valid=\"%s\"} %zu\n",
                          kw_kind_name(kinds[k]), v ? "true" : "false", c->valid[kinds[k]][v]);
    char version[80];
    snprintf(version, sizeof(version), "%s", c->version);
    pthread_mutex_unlock(&c->mu);
    struct ctl_node_counts nc;
    ctl_discovery_counts(&c->disc, version, &nc);
    kw_buf_printf(
        b,
        "# HELP knoway_controller_snapshot_builds_total Snapshot builds.\n"
        "# TYPE knoway_controller_snapshot_builds_total counter\n"
        "knoway_controller_snapshot_builds_total %llu\n"
        "# HELP knoway_controller_discovery_nodes Data planes connected, by state: acked (on "
        "the current version), nacked (rejected a snapshot), stale (behind).\n"
        "# TYPE knoway_controller_discovery_nodes gauge\n"
        "knoway_controller_discovery_nodes{state=\"acked\"} %zu\n"
        "knoway_controller_discovery_nodes{state=\"nacked\"} %zu\n"
        "knoway_controller_discovery_nodes{state=\"stale\"} %zu\n"
        "# HELP knoway_controller_discovery_polls_total Discovery polls received.\n"
        "# TYPE knoway_controller_discovery_polls_total counter\n"
        "knoway_controller_discovery_polls_total %llu\n"
        "# HELP knoway_controller_discovery_pushes_total Snapshots sent.\n"
        "# TYPE knoway_controller_discovery_pushes_total counter\n"
        "knoway_controller_discovery_pushes_total %llu\n"
        "# HELP knoway_controller_discovery_nacks_total Snapshots rejected by data planes.\n"
        "# TYPE knoway_controller_discovery_nacks_total counter\n"
        "knoway_controller_discovery_nacks_total %llu\n"
        "# HELP knoway_controller_discovery_unauthorized_total Polls without a valid token.\n"
        "# TYPE knoway_controller_discovery_unauthorized_total counter\n"
        "knoway_controller_discovery_unauthorized_total %llu\n"
        "# HELP knoway_controller_discovery_nodes_evicted_total Data planes forgotten after "
        "they stopped polling for the grace period.\n"
        "# TYPE knoway_controller_discovery_nodes_evicted_total counter\n"
        "knoway_controller_discovery_nodes_evicted_total %llu\n"
        "# HELP knoway_controller_leader Whether this replica writes status.\n"
        "# TYPE knoway_controller_leader gauge\n"
        "knoway_controller_leader %d\n"
        "# HELP knoway_controller_status_writes_total Status updates, by result.\n"
        "# TYPE knoway_controller_status_writes_total counter\n"
        "knoway_controller_status_writes_total{result=\"written\"} %llu\n"
        "knoway_controller_status_writes_total{result=\"unchanged\"} %llu\n"
        "knoway_controller_status_writes_total{result=\"conflict\"} %llu\n"
        "knoway_controller_status_writes_total{result=\"failed\"} %llu\n"
        "# HELP knoway_controller_usage_writes_total LLMConsumer status.usage updates from "
        "Redis, by result.\n"
        "# TYPE knoway_controller_usage_writes_total counter\n"
        "knoway_controller_usage_writes_total{result=\"written\"} %llu\n"
        "knoway_controller_usage_writes_total{result=\"unchanged\"} %llu\n"
        "knoway_controller_usage_writes_total{result=\"failed\"} %llu\n",
        (unsigned long long)atomic_load(&c->builder.builds), nc.acked, nc.nacked, nc.stale,
        (unsigned long long)atomic_load(&c->disc.polls),
        (unsigned long long)atomic_load(&c->disc.pushes),
        (unsigned long long)atomic_load(&c->disc.nacks),
        (unsigned long long)atomic_load(&c->disc.unauthorized),
        (unsigned long long)atomic_load(&c->disc.evicted), atomic_load(&c->leader) ? 1 : 0,
        (unsigned long long)atomic_load(&c->status.writes),
        (unsigned long long)atomic_load(&c->status.skipped),
        (unsigned long long)atomic_load(&c->status.conflicts),
        (unsigned long long)atomic_load(&c->status.failures),
        (unsigned long long)atomic_load(&c->usage.writes),
        (unsigned long long)atomic_load(&c->usage.skipped),
        (unsigned long long)atomic_load(&c->usage.failures));
    static const char *const names[] = {"lists", "watches", "events", "expired", "errors"};
    static const char *const help[] = {"LIST calls (initial and after 410)", "WATCH calls",
                                       "Watch events received", "Watches ended by 410 Gone",
                                       "Failed calls (retried with backoff)"};
    for (int m = 0; m < 5; m++) {
        kw_buf_printf(b,
                      "# HELP knoway_controller_informer_%s_total %s.\n"
                      "# TYPE knoway_controller_informer_%s_total counter\n",
                      names[m], help[m], names[m]);
        for (int i = 0; i < INF__COUNT; i++) {
            const struct ctl_informer *inf = &c->inf[i];
            const atomic_uint_fast64_t *v[] = {&inf->lists, &inf->watches, &inf->events,
                                               &inf->expired, &inf->errors};
            kw_buf_printf(b, "knoway_controller_informer_%s_total{kind=\"%s\"} %llu\n", names[m],
                          inf->kind, (unsigned long long)atomic_load(v[m]));
        }
    }
    kw_buf_puts(b, "# HELP knoway_controller_informer_relists_total LIST calls after the first "
                   "(a watch that ended with 410 Gone or failed).\n"
                   "# TYPE knoway_controller_informer_relists_total counter\n");
    for (int i = 0; i < INF__COUNT; i++) {
        uint64_t lists = atomic_load(&c->inf[i].lists);
        kw_buf_printf(b, "knoway_controller_informer_relists_total{kind=\"%s\"} %llu\n",
                      c->inf[i].kind, (unsigned long long)(lists > 0 ? lists - 1 : 0));
    }
    if (c->otlp != NULL)
        kw_otlp_write_metrics(c->otlp, b);
    if (c->reg != NULL)
        kw_metrics_write(c->reg, b);
}

static bool debug_allowed(const struct ctl *c, const union MHD_ConnectionInfo *ci)
{
    return ci != NULL && kw_cidr_match(c->debug_from, c->ndebug_from, ci->client_addr);
}

/* Raise the fd limit to its hard maximum (a waiting poll holds a descriptor). The number
 * of descriptors discovery may use: the rest is kept for the admin listener, the API
 * client and files. */
static unsigned raise_nofile(void)
{
    uint64_t nofile = kw_raise_nofile(), keep = 256;
    uint64_t n = nofile > keep + 64 ? nofile - keep : 64;
    return n > 20000 ? 20000 : (unsigned)n;
}

static enum MHD_Result on_admin(void *cls, struct MHD_Connection *conn, const char *url,
                                const char *method, const char *version, const char *upload,
                                size_t *upload_size, void **con_cls)
{
    struct ctl *c = cls;
    kw_probe_guard_request(conn); /* its headers are in */
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return reply(conn, 405, "text/plain", "method not allowed\n", 19);
    if (strcmp(url, "/healthz") == 0)
        return reply(conn, 200, "text/plain", "ok\n", 3);
    if (strcmp(url, "/readyz") == 0) {
        bool ready = atomic_load(&c->ready);
        return reply(conn, ready ? 200 : 503, "text/plain", ready ? "ready\n" : "not ready\n",
                     ready ? 6 : 10);
    }
    struct kw_buf b;
    kw_buf_init(&b, 64u * 1024 * 1024);
    enum MHD_Result rc;
    if (strcmp(url, "/metrics") == 0) {
        metrics(c, &b);
        rc = reply(conn, 200, "text/plain; version=0.0.4", b.data != NULL ? b.data : "", b.len);
    } else if (strncmp(url, "/debug/", 7) == 0 &&
               !debug_allowed(c,
                              MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS))) {
        static const char msg[] = "forbidden: /debug/* is served only to --debug-from "
                                  "(loopback by default)\n";
        rc = reply(conn, 403, "text/plain", msg, sizeof(msg) - 1);
    } else if (strcmp(url, "/debug/nodes") == 0) {
        ctl_discovery_nodes_json(&c->disc, &b);
        rc = reply(conn, 200, "application/json", b.data != NULL ? b.data : "{}", b.len);
    } else {
        rc = reply(conn, 404, "text/plain", "not found\n", 10);
    }
    kw_buf_cleanup(&b);
    return rc;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"kubeconfig", required_argument, NULL, 'k'},
        {"namespace", required_argument, NULL, 'n'},
        {"listen", required_argument, NULL, 'l'},
        {"admin", required_argument, NULL, 'a'},
        {"token-file", required_argument, NULL, 't'},
        {"insecure-no-token", no_argument, NULL, 'I'},
        {"prefix-claim-namespaces", required_argument, NULL, 'W'},
        {"tls-cert-file", required_argument, NULL, 'C'},
        {"tls-key-file", required_argument, NULL, 'K'},
        {"leader-elect", no_argument, NULL, 'L'},
        {"lease-namespace", required_argument, NULL, 'N'},
        {"lease-name", required_argument, NULL, 'M'},
        {"id", required_argument, NULL, 'i'},
        {"qps", required_argument, NULL, 'q'},
        {"burst", required_argument, NULL, 'b'},
        {"node-grace", required_argument, NULL, 'g'},
        {"debug-from", required_argument, NULL, 'D'},
        {"secret-selector", required_argument, NULL, 'S'},
        {"redis", required_argument, NULL, 'R'},
        {"redis-password-file", required_argument, NULL, 'P'},
        {"usage-interval", required_argument, NULL, 'U'},
        {"otlp-endpoint", required_argument, NULL, 'O'},
        {"otlp-protocol", required_argument, NULL, 'p'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *kubeconfig = NULL, *ns = NULL, *listen_addr = "0.0.0.0:18000";
    const char *admin_addr = "0.0.0.0:9902", *token_file = NULL, *lease_ns = NULL;
    const char *lease_name = "knoway-controller", *tls_cert = NULL, *tls_key = NULL;
    char id[256] = "";
    const char *debug_from = NULL, *secret_selector = CTL_SECRET_SELECTOR;
    double qps = 20, burst = 40, node_grace_s = CTL_NODE_STALE_MS / 1000.0;
    bool leader_elect = false, no_token = false;
    static const char *wide[64];
    size_t nwide = 0;
    const char *redis_url = NULL, *redis_pw_file = NULL;
    double usage_interval_s = 30;
    struct kw_otlp_config otlp = {.protocol = KW_OTLP_JSON, .service = "knoway-controller"};
    int o;
    while ((o = getopt_long(argc, argv, "hv", opts, NULL)) != -1) {
        switch (o) {
        case 'k':
            kubeconfig = optarg;
            break;
        case 'n':
            ns = optarg;
            break;
        case 'l':
            listen_addr = optarg;
            break;
        case 'a':
            admin_addr = optarg;
            break;
        case 't':
            token_file = optarg;
            break;
        case 'I':
            no_token = true;
            break;
        case 'W': { /* comma-separated: split in place (argv outlives the process) */
            for (char *p = optarg, *tok; (tok = strsep(&p, ",")) != NULL;)
                if (*tok != '\0' && nwide < KW_ARRAY_LEN(wide))
                    wide[nwide++] = tok;
            break;
        }
        case 'C':
            tls_cert = optarg;
            break;
        case 'K':
            tls_key = optarg;
            break;
        case 'L':
            leader_elect = true;
            break;
        case 'N':
            lease_ns = optarg;
            break;
        case 'M':
            lease_name = optarg;
            break;
        case 'i':
            snprintf(id, sizeof(id), "%s", optarg);
            break;
        case 'q':
            qps = atof(optarg);
            break;
        case 'b':
            burst = atof(optarg);
            break;
        case 'g':
            node_grace_s = atof(optarg);
            break;
        case 'D':
            debug_from = optarg;
            break;
        case 'S':
            secret_selector = optarg[0] != '\0' ? optarg : NULL;
            break;
        case 'R':
            redis_url = optarg;
            break;
        case 'P':
            redis_pw_file = optarg;
            break;
        case 'U':
            usage_interval_s = atof(optarg);
            break;
        case 'O':
            otlp.endpoint = optarg;
            break;
        case 'p':
            if (strcmp(optarg, "json") != 0 && strcmp(optarg, "protobuf") != 0) {
                fprintf(stderr, "knoway-controller: --otlp-protocol is json or protobuf\n");
                return 2;
            }
            otlp.protocol = strcmp(optarg, "protobuf") == 0 ? KW_OTLP_PROTOBUF : KW_OTLP_JSON;
            break;
        case 'v':
            printf("knoway-controller %s\n", kw_version());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "knoway-controller: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }
    if ((tls_cert == NULL) != (tls_key == NULL)) {
        fprintf(stderr, "knoway-controller: --tls-cert-file and --tls-key-file go together\n");
        return 2;
    }
    static struct ctl c; /* big; lives for the process */
    if (debug_from == NULL) {
        memcpy(c.debug_from, kw_cidr_loopback, sizeof(kw_cidr_loopback));
        c.ndebug_from = KW_ARRAY_LEN(kw_cidr_loopback);
    }
    for (const char *p = debug_from; p != NULL && *p != '\0';) {
        char one[64];
        size_t len = strcspn(p, ",");
        snprintf(one, sizeof(one), "%.*s", (int)(len < 63 ? len : 63), p);
        if (c.ndebug_from == KW_ARRAY_LEN(c.debug_from) || len >= sizeof(one) ||
            kw_cidr_parse(one, &c.debug_from[c.ndebug_from]) != KW_OK) {
            fprintf(stderr,
                    "knoway-controller: --debug-from: \"%s\" is not an address range "
                    "like 10.0.0.0/8 (at most 16, comma-separated)\n",
                    one);
            return 2;
        }
        c.ndebug_from++;
        p += len + (p[len] == ',');
    }
    if (node_grace_s < 1) {
        fprintf(stderr, "knoway-controller: --node-grace must be at least 1 second\n");
        return 2;
    }
    static struct kw_redis_url redis;
    if (redis_url != NULL) {
        char err[256];
        if (kw_redis_url_parse(redis_url, &redis, err, sizeof(err)) != KW_OK) {
            fprintf(stderr,
                    "knoway-controller: --redis: %s (the password goes in "
                    "--redis-password-file)\n",
                    err);
            return 2;
        }
    }
    if (usage_interval_s < 1) {
        fprintf(stderr, "knoway-controller: --usage-interval must be at least 1 second\n");
        return 2;
    }
    if (token_file == NULL && !no_token) {
        /* snapshots carry backend credentials: never served to anyone who asks by default */
        fprintf(stderr, "knoway-controller: --token-file is required: data planes present the "
                        "token to receive snapshots, which hold credentials (or pass "
                        "--insecure-no-token to serve them to anyone who can connect)\n");
        return 2;
    }
    if (qps <= 0 || burst < 1) {
        fprintf(stderr, "knoway-controller: --qps must be > 0 and --burst >= 1\n");
        return 2;
    }
    if (id[0] == '\0' && gethostname(id, sizeof(id) - 1) != 0)
        snprintf(id, sizeof(id), "knoway-controller-%d", (int)getpid());
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());

    char err[1024];
    struct ctl_kube_config kc;
    const char *sa_dir = getenv("KNOWAY_SERVICEACCOUNT_DIR");
    int rc = kubeconfig == NULL && getenv("KUBERNETES_SERVICE_HOST") != NULL
                 ? ctl_kube_config_in_cluster(&kc, sa_dir != NULL ? sa_dir : CTL_SA_DIR, err,
                                              sizeof(err))
                 : ctl_kube_config_load_file(&kc, kubeconfig, err, sizeof(err));
    if (rc != KW_OK) {
        fprintf(stderr, "knoway-controller: %s\n", err);
        return 1;
    }
    char *token = NULL;
    if (token_file != NULL && ((token = ctl_read_token(token_file)) == NULL || token[0] == '\0')) {
        fprintf(stderr, "knoway-controller: --token-file %s: cannot read a token\n", token_file);
        free(token);
        ctl_kube_config_cleanup(&kc);
        return 1;
    }
    /* credential digests in snapshot versions are keyed by the shared token: replicas agree
     * on versions, and no one without the token can test a credential guess against one */
    if (token != NULL)
        kw_snapshot_set_key(token, strlen(token));
    signal(SIGPIPE, SIG_IGN);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    c.disc.max_connections = raise_nofile();
    pthread_mutex_init(&c.mu, NULL);
    if (ctl_kube_init(&c.kube, &kc, qps, burst, err, sizeof(err)) != KW_OK) {
        fprintf(stderr, "knoway-controller: %s\n", err);
        return 1;
    }
    if (lease_ns == NULL)
        lease_ns = c.kube.cfg.ns;
    kw_log(KW_LOG_INFO, "knoway-controller starting", "version", kw_version(), "api",
           c.kube.cfg.source != NULL ? c.kube.cfg.source : c.kube.cfg.server, "namespace",
           ns != NULL ? ns : "(all)", "id", id, NULL);

    /* signals: handled by this thread only */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);

    int exit_code = 1;
    c.status.kube = &c.kube;
    c.status.disc = &c.disc;
    c.status.backends = &c.inf[INF_BACKENDS].store;
    c.status.routes = &c.inf[INF_ROUTES].store;
    c.status.consumers = &c.inf[INF_CONSUMERS].store;
    c.status.leader = &c.leader;
    c.disc.node_grace_ms = (int64_t)(node_grace_s * 1000);
    static const double build_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                          0.1,   0.25,   0.5,   1,    2.5,   5};
    static const double ack_bounds[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                        0.25,  0.5,    1,     2.5,  5,     10,   30};
    static const char *const result_label[] = {"result", NULL};
    c.reg = kw_metrics_new(2);
    if (c.reg == NULL)
        goto out;
    c.build_hist = kw_metrics_add(
        c.reg, KW_METRIC_HISTOGRAM, "knoway_controller_snapshot_build_duration_seconds",
        "Snapshot build time.", NULL, 1, build_bounds, KW_ARRAY_LEN(build_bounds));
    c.disc.push_ack = kw_metrics_add(
        c.reg, KW_METRIC_HISTOGRAM, "knoway_controller_push_ack_duration_seconds",
        "From sending a data plane a snapshot to its ack (it applied it) or nack (it rejected "
        "it).",
        result_label, 2, ack_bounds, KW_ARRAY_LEN(ack_bounds));
    bool otlp_full;
    kw_otlp_from_env(&otlp, &otlp_full);
    if (otlp.endpoint != NULL) {
        c.otlp = kw_otlp_start(&otlp, otlp_full);
        if (c.otlp == NULL)
            goto out;
        c.disc.otlp = c.otlp;
        kw_log(KW_LOG_INFO, "exporting spans over OTLP/HTTP", "endpoint", otlp.endpoint, NULL);
    }
    c.disc.on_ack = ctl_status_kick;
    c.disc.ud = &c.status;
    atomic_store(&c.leader, !leader_elect);
    if (ctl_discovery_start(&c.disc, listen_addr, token, tls_cert, tls_key) != KW_OK)
        goto out;
    if (token != NULL) {
        OPENSSL_cleanse(token, strlen(token));
        free(token);
        token = NULL;
    }
    int afd = ctl_listen(admin_addr);
    c.admin_guard = kw_probe_guard_new(KW_ADMIN_CONNECTIONS, KW_ADMIN_SPARE, KW_ADMIN_HEADER_MS);
    if (afd != -1 && c.admin_guard != NULL)
        c.admin = MHD_start_daemon(
            MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, 0, NULL, NULL, on_admin, &c,
            MHD_OPTION_LISTEN_SOCKET, afd, MHD_OPTION_CONNECTION_TIMEOUT, KW_ADMIN_IDLE_S,
            /* probes answer whatever else connects: one address holds at most
             * KW_ADMIN_PER_IP slots, and when they run out the guard closes the connection
             * that waited longest for its headers (knoway/probeguard.h) */
            MHD_OPTION_CONNECTION_LIMIT, KW_ADMIN_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
            KW_ADMIN_PER_IP, MHD_OPTION_NOTIFY_CONNECTION, kw_probe_guard_on_connection,
            c.admin_guard, MHD_OPTION_NOTIFY_COMPLETED, kw_probe_guard_on_completed, c.admin_guard,
            MHD_OPTION_END);
    if (c.admin == NULL) {
        kw_log(KW_LOG_ERROR, "cannot listen", "address", admin_addr, "what", "admin", NULL);
        goto out;
    }
    if (ctl_status_start(&c.status) != KW_OK)
        goto out;
    char *redis_pw = NULL;
    if (redis_url != NULL) {
        if (redis_pw_file != NULL &&
            ((redis_pw = ctl_read_token(redis_pw_file)) == NULL || redis_pw[0] == '\0')) {
            kw_log(KW_LOG_ERROR, "cannot read --redis-password-file", "file", redis_pw_file, NULL);
            goto out;
        }
        c.usage = (struct ctl_usage){.kube = &c.kube,
                                     .consumers = &c.inf[INF_CONSUMERS].store,
                                     .leader = &c.leader,
                                     .host = redis.host,
                                     .user = redis.user[0] != '\0' ? redis.user : NULL,
                                     .port = redis.port,
                                     .db = redis.db,
                                     .password = redis_pw,
                                     .interval_ms = (int64_t)(usage_interval_s * 1000)};
        if (ctl_usage_start(&c.usage) != KW_OK)
            goto out;
    }
    c.builder.src = (struct ctl_sources){.backends = &c.inf[INF_BACKENDS].store,
                                         .routes = &c.inf[INF_ROUTES].store,
                                         .consumers = &c.inf[INF_CONSUMERS].store,
                                         .secrets = &c.inf[INF_SECRETS].store,
                                         .slices = &c.inf[INF_SLICES].store,
                                         .secret_selector = secret_selector,
                                         .claim_namespaces = wide,
                                         .nclaim_namespaces = nwide,
                                         .cache = ctl_cache_new()};
    c.builder.on_build = on_build;
    c.builder.ready = all_synced;
    c.builder.ud = &c;
    c.builder.debounce_ms = 100;
    if (ctl_builder_start(&c.builder) != KW_OK)
        goto out;
    static const struct {
        const char *kind, *api, *fallback, *resource, *selector;
    } kinds[INF__COUNT] = {
        {"LLMBackend", "/apis/llm.knoway.dev/v1alpha1", NULL, "llmbackends", NULL},
        {"LLMRoute", "/apis/llm.knoway.dev/v1alpha1", NULL, "llmroutes", NULL},
        {"Secret", "/api/v1", NULL, "secrets", NULL},
        {"EndpointSlice", "/apis/discovery.k8s.io/v1", "/apis/discovery.k8s.io/v1beta1",
         "endpointslices", "kubernetes.io/service-name"},
        {"LLMConsumer", "/apis/llm.knoway.dev/v1alpha1", NULL, "llmconsumers", NULL},
    };
    for (int i = 0; i < INF__COUNT; i++) {
        struct ctl_informer *inf = &c.inf[i];
        inf->kind = kinds[i].kind;
        inf->api = kinds[i].api;
        inf->fallback_api = kinds[i].fallback;
        inf->resource = kinds[i].resource;
        inf->label_selector = i == INF_SECRETS ? secret_selector : kinds[i].selector;
        inf->ns = ns;
        inf->kube = &c.kube;
        inf->on_change = ctl_builder_kick;
        inf->ud = &c.builder;
        if (ctl_informer_start(inf) != KW_OK)
            goto out;
    }
    if (leader_elect) {
        c.lease = (struct ctl_lease){.kube = &c.kube,
                                     .ns = lease_ns,
                                     .name = lease_name,
                                     .id = id,
                                     .on_change = on_leader,
                                     .ud = &c};
        if (ctl_lease_start(&c.lease) != KW_OK)
            goto out;
    }
    kw_log(KW_LOG_INFO, "knoway-controller started", "discovery", listen_addr, "admin", admin_addr,
           "tls", tls_cert != NULL ? "on" : "off", "leader_elect", leader_elect ? "on" : "off",
           NULL);

    uint64_t wd_usec = 0;
    bool watchdog = sd_watchdog_enabled(0, &wd_usec) > 0;
    bool notified = false;
    for (;;) {
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 200000000L};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (!notified && atomic_load(&c.ready)) {
            sd_notify(0, "READY=1\nSTATUS=serving snapshots");
            notified = true;
        }
        if (watchdog)
            sd_notify(0, "WATCHDOG=1");
    }
    sd_notify(0, "STOPPING=1");
    kw_log(KW_LOG_INFO, "knoway-controller stopping", NULL);
    exit_code = 0;
out:
    ctl_usage_stop(&c.usage);
    if (c.usage.password != NULL) {
        OPENSSL_cleanse((char *)c.usage.password, strlen(c.usage.password));
        free((char *)c.usage.password);
    }
    if (c.lease.running)
        ctl_lease_stop(&c.lease);
    for (int i = 0; i < INF__COUNT; i++)
        atomic_store(&c.inf[i].stop, true);
    for (int i = 0; i < INF__COUNT; i++)
        ctl_informer_stop(&c.inf[i]);
    if (c.builder.on_build != NULL && c.builder.thread != 0)
        ctl_builder_stop(&c.builder);
    ctl_cache_free(c.builder.src.cache);
    ctl_discovery_stop(&c.disc); /* no more acks kick the status writer */
    ctl_status_stop(&c.status);
    kw_otlp_stop(c.otlp, 2000); /* after the builder and discovery: what they queued, for 2 s */
    c.disc.otlp = NULL;
    ctl_discovery_cleanup(&c.disc);
    for (int i = 0; i < INF__COUNT; i++)
        if (c.inf[i].kind != NULL)
            ctl_store_cleanup(&c.inf[i].store);
    if (c.admin != NULL)
        MHD_stop_daemon(c.admin);
    kw_probe_guard_free(c.admin_guard);
    ctl_kube_cleanup(&c.kube);
    kw_metrics_free(c.reg);
    free(token);
    curl_global_cleanup();
    return exit_code;
}
