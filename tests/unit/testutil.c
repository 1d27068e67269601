#include <stdio.h>
#include <time.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "testutil.h"

char *kwt_errors(const char *yaml, struct kw_config **cfg_out)
{
    struct kw_config *cfg = kw_config_new();
    kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml));
    kw_config_check(cfg);
    struct kw_buf out;
    kw_buf_init(&out, 1 << 20);
    kw_diag_format_all(&cfg->diag, &out);
    char *s = strdup(out.data != NULL ? out.data : "");
    kw_buf_cleanup(&out);
    if (cfg_out != NULL)
        *cfg_out = cfg;
    else
        kw_config_free(cfg);
    return s;
}

double kwt_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double best_of_three(void (*fn)(void *), void *arg)
{
    double best = 1e9;
    for (int i = 0; i < 3; i++) {
        double t0 = kwt_now();
        fn(arg);
        double t = kwt_now() - t0;
        if (t < best)
            best = t;
    }
    return best;
}

double kwt_time_ratio(void (*fn)(void *), void *input, void (*base)(void *), void *baseline)
{
    double tb = best_of_three(base, baseline);
    double tf = best_of_three(fn, input);
    return tf / (tb > 1e-6 ? tb : 1e-6);
}

int kwt_feed_chunked(const char *text, size_t len, size_t step,
                     int (*fn)(void *ud, const char *p, size_t n), void *ud)
{
    for (size_t off = 0; off < len; off += step) {
        int rc = fn(ud, text + off, len - off < step ? len - off : step);
        if (rc != 0)
            return rc;
    }
    return 0;
}

void kwt_assert_linear(const char *what, void (*fn)(void *), void *input, void (*base)(void *),
                       void *baseline, double bound)
{
#if defined(__SANITIZE_ADDRESS__)
    bool instrumented = true;
#else
    bool instrumented = getenv("KW_NO_TIMING") != NULL;
#endif
    if (instrumented) {
        fn(input);
        print_message("%s: not timed (sanitizer or valgrind)\n", what);
        return;
    }
    double ratio = kwt_time_ratio(fn, input, base, baseline);
    print_message("%s: %.2fx the baseline's time (bound %.0fx)\n", what, ratio, bound);
    assert_true(ratio < bound);
}

struct kw_snapshot *kwt_snapshot(const char *yaml, struct kw_config **cfg_out)
{
    struct kw_config *cfg = kw_config_new();
    assert_int_equal(kw_config_add_yaml(cfg, "t.yaml", yaml, strlen(yaml)), KW_OK);
    kw_config_check(cfg);
    struct kw_diag diag;
    kw_diag_init(&diag);
    struct kw_snapshot *snap = kw_snapshot_build(cfg, kw_service_resolve_dns, NULL, &diag);
    kw_diag_cleanup(&diag);
    assert_non_null(snap);
    if (cfg_out != NULL)
        *cfg_out = cfg;
    else
        kw_config_free(cfg);
    return snap;
}

char **kwt_data_lines(const char *name, size_t *n)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", KW_TEST_DATA, name);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t cap = 1024, len = 0;
    char **out = malloc(cap * sizeof(*out));
    char line[4096];
    while (fgets(line, sizeof(line), f) != NULL) {
        line[strcspn(line, "\n")] = '\0';
        if (len + 2 > cap) {
            char **grown = realloc(out, (cap *= 2) * sizeof(*out));
            assert_non_null(grown);
            out = grown;
        }
        out[len++] = strdup(line);
    }
    fclose(f);
    out[len] = NULL;
    *n = len;
    return out;
}

void kwt_lines_free(char **lines)
{
    for (size_t i = 0; lines != NULL && lines[i] != NULL; i++)
        free(lines[i]);
    free(lines);
}
