/* Helpers shared by the unit tests. */
#ifndef KW_TESTUTIL_H
#define KW_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "knoway/config.h"

/* Load YAML text as file "t.yaml", run kw_config_check, and return every diagnostic, one
 * per line (malloc'd; "" when valid). If cfg_out is not NULL the config is kept there. */
char *kwt_errors(const char *yaml, struct kw_config **cfg_out);

/* Assert that yaml yields exactly the diagnostics in expected (lines joined by \n). */
#define kwt_assert_errors(yaml, expected)                                                          \
    do {                                                                                           \
        char *got_ = kwt_errors((yaml), NULL);                                                     \
        assert_string_equal(got_, (expected));                                                     \
        free(got_);                                                                                \
    } while (0)

struct kw_snapshot;
/* Load YAML text as file "t.yaml" (asserting it adds cleanly), check it, and build its
 * snapshot (asserted). The config is kept in *cfg_out when not NULL, else freed. */
struct kw_snapshot *kwt_snapshot(const char *yaml, struct kw_config **cfg_out);

/* Seconds on the monotonic clock. */
double kwt_now(void);

/* The lines of tests/unit/data/NAME (a NULL-terminated array; free it with kwt_lines_free);
 * *n their count. Fails the test when the file cannot be read. */
char **kwt_data_lines(const char *name, size_t *n);
void kwt_lines_free(char **lines);

/* Time-linearity check that does not flake on a slow or loaded machine: fn(input) runs
 * against base(baseline input of the same size, known linear) and the ratio is bounded.
 * Returns fn's time over base's time, each the best of three runs. */
double kwt_time_ratio(void (*fn)(void *), void *input, void (*base)(void *), void *baseline);

/* Assert that fn(input) takes less than bound times base(baseline) (kwt_time_ratio). Under
 * ASan or valgrind (KW_NO_TIMING set by hack/test.sh) time says nothing about the code:
 * fn runs once, unmeasured. what names the case in the message printed. */
void kwt_assert_linear(const char *what, void (*fn)(void *), void *input, void (*base)(void *),
                       void *baseline, double bound);

/* Feed len bytes of text to fn in pieces of step bytes (the last may be shorter), as reads
 * from a socket would come. Returns 0, or fn's first non-zero result. */
int kwt_feed_chunked(const char *text, size_t len, size_t step,
                     int (*fn)(void *ud, const char *p, size_t n), void *ud);

#endif
