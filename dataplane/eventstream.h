/* knoway data plane: incremental decoder of AWS's application/vnd.amazon.eventstream
 * framing (Bedrock ConverseStream, InvokeModelWithResponseStream).
 *
 * A message: total length (4 bytes, big-endian), headers length (4), prelude CRC32 (4,
 * over the first 8 bytes), headers, payload, message CRC32 (4, over everything before
 * it); CRCs are zlib's crc32. A header: name length (1), name, value type (1), value
 * (bool true 0 / false 1: no bytes, byte 2: 1, short 3: 2, int 4: 4, long 5: 8, bytes 6 and
 * string 7: 2-byte length then bytes, timestamp 8: 8, uuid 9: 16).
 *
 * Bytes are fed as they arrive, split anywhere; a message longer than max_message, a bad
 * CRC or a malformed header is an error (the stream cannot be resynchronized). */
#ifndef DP_EVENTSTREAM_H
#define DP_EVENTSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "knoway/buf.h"

#define DP_ES_MIN_MESSAGE 16u

/* The headers the decoder extracts (string-typed; others are skipped). */
struct dp_es_message {
    char event_type[64];     /* :event-type */
    char message_type[32];   /* :message-type: event, exception or error */
    char exception_type[64]; /* :exception-type */
    char error_code[64];     /* :error-code (message-type error) */
    char error_message[256]; /* :error-message */
    const char *payload;
    size_t payload_len;
};

typedef int (*dp_es_message_fn)(void *ud, const struct dp_es_message *m);

struct dp_es {
    struct kw_buf buf; /* bytes of the current, incomplete message */
    size_t max_message;
};

void dp_es_init(struct dp_es *p, size_t max_message);
void dp_es_cleanup(struct dp_es *p);

/* Feed bytes; on_message for each complete, verified message. KW_OK, or KW_ERROR with a
 * reason in err (a framing error, or on_message failed). */
int dp_es_feed(struct dp_es *p, const char *buf, size_t len, dp_es_message_fn on_message, void *ud,
               char *err, size_t errlen);

/* Encode one message with string headers (names[i] = values[i]) into out: for tests and
 * the mock. KW_OK or KW_ERROR. */
int dp_es_encode(struct kw_buf *out, const char *const *names, const char *const *values,
                 size_t nheaders, const char *payload, size_t payload_len);

#endif
