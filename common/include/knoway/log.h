/* knoway: one logger, JSON lines on stderr (journald picks them up under systemd).
 *   {"ts":"2026-01-01T00:00:00.000Z","level":"info","msg":"...","k":"v",...}
 * The level is checked before anything is formatted. Secrets never reach it: values that
 * may hold one go through kw_redact. Any thread may call these. */
#ifndef KNOWAY_LOG_H
#define KNOWAY_LOG_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

enum kw_log_level { KW_LOG_DEBUG, KW_LOG_INFO, KW_LOG_WARN, KW_LOG_ERROR };

void kw_log_set_level(enum kw_log_level l);
bool kw_log_enabled(enum kw_log_level l);

/* Log msg with string fields given as key, value pairs ended by NULL:
 *   kw_log(KW_LOG_INFO, "reloaded", "file", path, "version", v, NULL); */
void kw_log(enum kw_log_level l, const char *msg, ...) __attribute__((sentinel));

/* Start a JSON log line in b (ts, level, msg); add fields with kw_log_field*, then
 * kw_log_emit writes it. For lines built field by field (the access log). */
void kw_log_begin(struct kw_buf *b, enum kw_log_level l, const char *msg);
void kw_log_field(struct kw_buf *b, const char *key, const char *value);
void kw_log_field_int(struct kw_buf *b, const char *key, long long value);
void kw_log_emit(struct kw_buf *b);

/* A loggable stand-in for a secret: "sk-...(redacted, 51 bytes)" keeps no more than the
 * first 3 bytes. out must hold 48 bytes. */
const char *kw_redact(const char *secret, size_t len, char out[48]);

#endif
