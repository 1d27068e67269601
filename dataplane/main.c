/* knoway-dataplane: command line. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/config.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "server.h"

static void usage(FILE *out)
{
    fprintf(out, "Usage: knoway-dataplane -c FILE [--check]\n"
                 "       knoway-dataplane --version | --help\n"
                 "\n"
                 "The knoway data plane: an OpenAI-compatible LLM gateway.\n"
                 "\n"
                 "  -c, --config FILE  configuration: one DataPlane document plus any number of\n"
                 "                     LLMBackend, LLMRoute and Secret documents (YAML)\n"
                 "  -t, --check        validate the configuration, print every error, and exit\n"
                 "                     (0 when valid, 1 otherwise), like nginx -t\n"
                 "  -v, --version      print the version and exit\n"
                 "  -h, --help         print this help and exit\n"
                 "\n"
                 "Documentation: docs/configuration.md\n");
}

/* Load, validate and resolve FILE. Prints every error to stderr. Returns the snapshot or
 * NULL. */
static struct kw_snapshot *load(const char *file, struct kw_config **cfg_out)
{
    struct kw_config *cfg = kw_config_new();
    struct kw_snapshot *snap = NULL;
    kw_config_load_file(cfg, file);
    kw_config_check(cfg);
    if (kw_diag_count(&cfg->diag) == 0)
        snap = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &cfg->diag);
    if (kw_diag_count(&cfg->diag) > 0) {
        struct kw_buf out;
        kw_buf_init(&out, 1 << 20);
        kw_diag_format_all(&cfg->diag, &out);
        fputs(out.data != NULL ? out.data : "", stderr);
        fprintf(stderr, "%s: configuration is invalid (%zu error%s)\n", file,
                kw_diag_count(&cfg->diag), kw_diag_count(&cfg->diag) == 1 ? "" : "s");
        kw_buf_cleanup(&out);
        kw_snapshot_unref(snap);
        kw_config_free(cfg);
        return NULL;
    }
    *cfg_out = cfg;
    return snap;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"check", no_argument, NULL, 't'},
        {"version", no_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {"drain-seconds", required_argument, NULL, 'd'},
        {NULL, 0, NULL, 0},
    };
    const char *file = NULL;
    int check = 0, c, drain = 30;
    while ((c = getopt_long(argc, argv, "c:tvh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            file = optarg;
            break;
        case 't':
            check = 1;
            break;
        case 'v':
            printf("knoway-dataplane %s\n", kw_version());
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        case 'd':
            drain = atoi(optarg);
            if (drain < 0 || drain > 86400) {
                fprintf(stderr, "knoway-dataplane: --drain-seconds must be 0..86400\n");
                return 2;
            }
            break;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "knoway-dataplane: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (file == NULL) {
        fprintf(stderr, "knoway-dataplane: -c FILE is required\n");
        usage(stderr);
        return 2;
    }
    struct kw_config *cfg = NULL;
    struct kw_snapshot *snap = load(file, &cfg);
    if (snap == NULL)
        return 1;
    if (check) {
        char consumers[48] = "";
        if (snap->nconsumers > 0)
            snprintf(consumers, sizeof(consumers), ", %zu consumers", snap->nconsumers);
        printf("%s: configuration is valid (%zu backends, %zu routes%s, version %.19s)\n", file,
               snap->nbackends, snap->nroutes, consumers, snap->version);
        kw_snapshot_unref(snap);
        kw_config_free(cfg);
        return 0;
    }
    if (cfg->dataplane.discovery.url != NULL) {
        /* resources come from the controller: ones in the file would be silently unused */
        if (snap->nbackends > 0 || snap->nroutes > 0 || cfg->nsecrets > 0) {
            fprintf(stderr,
                    "%s: spec.discovery: the file also holds LLMBackend, LLMRoute or Secret "
                    "documents, which are not used when resources come from knoway-controller; "
                    "remove them or spec.discovery\n",
                    file);
            kw_snapshot_unref(snap);
            kw_config_free(cfg);
            return 1;
        }
        kw_snapshot_unref(snap);
        snap = NULL;
    }
    int rc = dp_server_run(file, cfg, snap, drain); /* takes the snapshot reference (or NULL) */
    kw_config_free(cfg);
    return rc;
}
