/* knoway data plane: the usage spool (issue "usage ledger") - an append-only log of
 * records in segment files, each record framed as
 *
 *     magic "KWL1" (4 bytes) | payload length (u32 LE) | CRC-32 of the payload (u32 LE) | payload
 *
 * with a shipped offset per reader (a sink) persisted atomically (a temporary file, fsync,
 * rename). Offsets are logical: a segment's file name is the offset of its first byte
 * (seg-<16 hex digits>.log), so an offset names one place across segments. A segment
 * every reader has shipped is deleted.
 *
 * Recovery when opened: the last segment is scanned; a torn tail (a partial frame, a
 * process killed mid-write) is cut off and logged. Readers verify each record's CRC; a
 * corrupted record is skipped by searching for the next magic, so the records before it
 * and after it survive (logged and counted).
 *
 * Threading: one writer thread (append, sync, roll); readers (dp_spool_read) on any thread,
 * each with its own cursor; dp_spool_ack from the reader's thread. The end offset is
 * published atomically after each append, so a reader sees whole records only. */
#ifndef DP_SPOOL_H
#define DP_SPOOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DP_SPOOL_MAGIC       0x314c574bu /* "KWL1" little-endian */
#define DP_SPOOL_HEADER      12u
#define DP_SPOOL_MAX_RECORD  (64u * 1024)
#define DP_SPOOL_SEGMENT     (8u * 1024 * 1024) /* roll to a new segment past this */
#define DP_SPOOL_MAX_READERS 8

struct dp_spool;

/* Open (creating dir and files as needed) with the named readers; recovers as above.
 * KW_OK, or KW_ERROR with err set. */
int dp_spool_open(struct dp_spool **out, const char *dir, const char *const *readers,
                  size_t nreaders, char *err, size_t errlen);
void dp_spool_close(struct dp_spool *s);

/* Writer: append one record (buffered in the kernel: no fsync), KW_OK or KW_ERROR (I/O,
 * too large). dp_spool_sync makes every appended record durable. */
int dp_spool_append(struct dp_spool *s, const void *data, size_t len);
/* Append n records with as few writes as segments allow; returns how many were appended
 * (all of them, or the ones before a failure). */
struct iovec;
size_t dp_spool_append_many(struct dp_spool *s, const struct iovec *recs, size_t n);
int dp_spool_sync(struct dp_spool *s);

/* Logical end (after the last whole record) and the bytes not yet shipped by every reader. */
uint64_t dp_spool_end(const struct dp_spool *s);
uint64_t dp_spool_pending_bytes(const struct dp_spool *s);
/* Reader i's shipped offset. */
uint64_t dp_spool_shipped(const struct dp_spool *s, unsigned reader);
/* Records recovered from: torn tails cut, corrupted records skipped. */
uint64_t dp_spool_repairs(const struct dp_spool *s);

/* Reader: call fn for up to max records from offset `from` (at most to the end); *next is
 * where the next read starts. KW_OK (possibly no records), or KW_ERROR (I/O). fn returns
 * false to stop early (that record is not consumed). */
typedef bool (*dp_spool_record_fn)(void *ud, uint64_t offset, const char *data, size_t len);
int dp_spool_read(struct dp_spool *s, unsigned reader, uint64_t from, size_t max,
                  dp_spool_record_fn fn, void *ud, uint64_t *next);
/* Reader i has shipped everything before offset: persisted atomically; segments every
 * reader has passed are deleted. KW_OK or KW_ERROR. */
int dp_spool_ack(struct dp_spool *s, unsigned reader, uint64_t offset);

#endif
