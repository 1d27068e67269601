/* knoway: durations in the Go/Kubernetes form ("250ms", "30s", "5m", "1h", "1m30s"). */
#ifndef KNOWAY_DURATION_H
#define KNOWAY_DURATION_H

#include <stddef.h>
#include <stdint.h>

/* Parse s into milliseconds. Units: ms, s, m, h; decimals allowed ("1.5s"); at least one
 * unit; no sign. Returns KW_OK, or KW_ERROR with a reason in err. */
int kw_duration_parse(const char *s, size_t len, int64_t *ms, char *err, size_t errlen);

/* Format ms in the shortest exact form ("1m30s", "250ms", "0s") into out. */
void kw_duration_format(int64_t ms, char *out, size_t outlen);

struct timespec;
/* The CLOCK_REALTIME time ms milliseconds from now (pthread_cond_timedwait deadlines). */
void kw_deadline_after(struct timespec *ts, int64_t ms);

#endif
