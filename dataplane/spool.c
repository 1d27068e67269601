/* The usage spool (spool.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include "knoway/kw.h"
#include "knoway/log.h"
#include "spool.h"

#define MAX_SEGMENTS 4096

struct reader {
    char name[64];
    _Atomic uint64_t shipped;
};

struct dp_spool {
    char dir[PATH_MAX - 128];
    int fd;            /* the writer's segment */
    int lock_fd;       /* "lock" in dir, held (flock) while open: one writer a directory */
    uint64_t seg_base; /* its first offset */
    uint64_t seg_len;  /* its bytes */
    _Atomic uint64_t end;
    atomic_uint_fast64_t repairs;
    pthread_mutex_t mu; /* bases, nbases (the writer rolls, readers delete) */
    uint64_t bases[MAX_SEGMENTS];
    size_t nbases;
    struct reader readers[DP_SPOOL_MAX_READERS];
    size_t nreaders;
};

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void seg_path(const struct dp_spool *s, uint64_t base, char *out, size_t len)
{
    snprintf(out, len, "%s/seg-%016" PRIx64 ".log", s->dir, base);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* A whole, valid frame at buf[0..len)? Its total size, or 0. */
static size_t frame_at(const unsigned char *buf, size_t len)
{
    if (len < DP_SPOOL_HEADER || get32(buf) != DP_SPOOL_MAGIC)
        return 0;
    uint32_t n = get32(buf + 4);
    if (n > DP_SPOOL_MAX_RECORD || DP_SPOOL_HEADER + (size_t)n > len)
        return 0;
    uint32_t crc = (uint32_t)crc32(0L, buf + DP_SPOOL_HEADER, n);
    return crc == get32(buf + 8) ? DP_SPOOL_HEADER + n : 0;
}

static int read_all(const char *path, unsigned char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        if (fd >= 0)
            close(fd);
        return KW_ERROR;
    }
    *len = (size_t)st.st_size;
    *out = malloc(*len + 1);
    size_t got = 0;
    while (*out != NULL && got < *len) {
        ssize_t n = pread(fd, *out + got, *len - got, (off_t)got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (*out == NULL || got != *len) {
        free(*out);
        return KW_ERROR;
    }
    return KW_OK;
}

/* The last segment: where its last whole frame ends; a torn tail after it is cut off. */
static int recover_last(struct dp_spool *s, uint64_t base, uint64_t *len_out)
{
    char path[PATH_MAX];
    seg_path(s, base, path, sizeof(path));
    unsigned char *buf = NULL;
    size_t len = 0;
    if (read_all(path, &buf, &len) != KW_OK)
        return KW_ERROR;
    size_t pos = 0, good = 0;
    bool skipped = false;
    while (pos < len) {
        size_t f = frame_at(buf + pos, len - pos);
        if (f > 0) {
            pos += f;
            good = pos;
            continue;
        }
        skipped = true; /* corrupt or torn: look for the next frame */
        pos++;
        while (pos + 4 <= len && get32(buf + pos) != DP_SPOOL_MAGIC)
            pos++;
        if (pos + 4 > len)
            break;
    }
    free(buf);
    if (good < len) {
        char cut[32];
        snprintf(cut, sizeof(cut), "%zu", len - good);
        kw_log(KW_LOG_WARN, "usage spool: a torn record at the end of the spool was cut off",
               "segment", path, "bytes", cut, NULL);
        if (truncate(path, (off_t)good) != 0)
            return KW_ERROR;
        atomic_fetch_add(&s->repairs, 1);
    } else if (skipped) {
        atomic_fetch_add(&s->repairs, 1);
    }
    *len_out = good;
    return KW_OK;
}

static int open_segment(struct dp_spool *s, uint64_t base, bool create)
{
    char path[PATH_MAX];
    seg_path(s, base, path, sizeof(path));
    int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0), 0600);
    if (fd < 0)
        return KW_ERROR;
    if (s->fd >= 0)
        close(s->fd);
    s->fd = fd;
    s->seg_base = base;
    return KW_OK;
}

static uint64_t read_shipped(const struct dp_spool *s, const char *name, uint64_t dflt)
{
    char path[PATH_MAX], buf[32] = "";
    snprintf(path, sizeof(path), "%s/shipped-%s", s->dir, name);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return dflt;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *end = NULL;
    unsigned long long v = strtoull(buf, &end, 10);
    return end != buf ? (uint64_t)v : dflt;
}

int dp_spool_open(struct dp_spool **out, const char *dir, const char *const *readers,
                  size_t nreaders, char *err, size_t errlen)
{
    *out = NULL;
    if (nreaders == 0 || nreaders > DP_SPOOL_MAX_READERS || strlen(dir) >= PATH_MAX - 128) {
        snprintf(err, errlen, "1..%d sinks and a directory path shorter than %d bytes",
                 DP_SPOOL_MAX_READERS, PATH_MAX - 128);
        return KW_ERROR;
    }
    struct dp_spool *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        snprintf(err, errlen, "out of memory");
        return KW_ERROR;
    }
    s->fd = s->lock_fd = -1;
    pthread_mutex_init(&s->mu, NULL);
    snprintf(s->dir, sizeof(s->dir), "%s", dir);
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        dp_spool_close(s);
        return KW_ERROR;
    }
    /* two writers appending to one directory would interleave records and ship each
     * other's offsets: the second is refused */
    char lock[PATH_MAX];
    snprintf(lock, sizeof(lock), "%s/lock", dir);
    s->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (s->lock_fd == -1 || flock(s->lock_fd, LOCK_EX | LOCK_NB) == -1) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", dir,
                 e == EWOULDBLOCK ? "the spool is in use by another process (a second data plane "
                                    "on the same configuration?)"
                                  : strerror(e));
        dp_spool_close(s);
        return KW_ERROR;
    }
    DIR *d = opendir(dir);
    if (d == NULL) {
        snprintf(err, errlen, "%s: %s", dir, strerror(errno));
        dp_spool_close(s);
        return KW_ERROR;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL && s->nbases < MAX_SEGMENTS) {
        unsigned long long b;
        char tail[8];
        if (sscanf(e->d_name, "seg-%16llx.%4s", &b, tail) == 2 && strcmp(tail, "log") == 0)
            s->bases[s->nbases++] = (uint64_t)b;
    }
    closedir(d);
    qsort(s->bases, s->nbases, sizeof(s->bases[0]), cmp_u64);
    uint64_t end = 0;
    if (s->nbases > 0) {
        uint64_t len = 0;
        if (recover_last(s, s->bases[s->nbases - 1], &len) != KW_OK ||
            open_segment(s, s->bases[s->nbases - 1], false) != KW_OK) {
            snprintf(err, errlen, "%s: cannot recover the last segment: %s", dir, strerror(errno));
            dp_spool_close(s);
            return KW_ERROR;
        }
        s->seg_len = len;
        end = s->bases[s->nbases - 1] + len;
    }
    uint64_t first = s->nbases > 0 ? s->bases[0] : 0;
    for (size_t i = 0; i < nreaders; i++) {
        snprintf(s->readers[i].name, sizeof(s->readers[i].name), "%s", readers[i]);
        uint64_t sh = read_shipped(s, readers[i], first);
        /* a new reader starts at what is there; an offset past the end (segments lost)
         * restarts at the end */
        atomic_store(&s->readers[i].shipped, sh < first ? first : sh > end ? end : sh);
        if (s->nbases == 0 && sh > end)
            end = sh; /* every segment was shipped and deleted: go on from there */
    }
    s->nreaders = nreaders;
    if (s->nbases == 0) {
        if (open_segment(s, end, true) != KW_OK) {
            snprintf(err, errlen, "%s: cannot create a segment: %s", dir, strerror(errno));
            dp_spool_close(s);
            return KW_ERROR;
        }
        s->bases[s->nbases++] = end;
        s->seg_len = 0;
    }
    atomic_store(&s->end, end);
    *out = s;
    return KW_OK;
}

void dp_spool_close(struct dp_spool *s)
{
    if (s == NULL)
        return;
    if (s->fd >= 0) {
        fsync(s->fd);
        close(s->fd);
    }
    if (s->lock_fd >= 0)
        close(s->lock_fd); /* and the lock with it */
    pthread_mutex_destroy(&s->mu);
    free(s);
}

/* Start a new segment at the end (the current one is full). */
static int roll(struct dp_spool *s)
{
    uint64_t base = atomic_load(&s->end);
    pthread_mutex_lock(&s->mu);
    bool room = s->nbases < MAX_SEGMENTS;
    pthread_mutex_unlock(&s->mu);
    if (!room || fsync(s->fd) != 0 || open_segment(s, base, true) != KW_OK)
        return KW_ERROR;
    pthread_mutex_lock(&s->mu);
    s->bases[s->nbases++] = base;
    pthread_mutex_unlock(&s->mu);
    s->seg_len = 0;
    return KW_OK;
}

size_t dp_spool_append_many(struct dp_spool *s, const struct iovec *recs, size_t n)
{
    enum { PER_CALL = 256 };
    unsigned char hdr[PER_CALL][DP_SPOOL_HEADER];
    struct iovec iov[2 * PER_CALL];
    size_t done = 0;
    while (done < n) {
        if (recs[done].iov_len > DP_SPOOL_MAX_RECORD)
            return done;
        if (s->seg_len > 0 &&
            s->seg_len + DP_SPOOL_HEADER + recs[done].iov_len > DP_SPOOL_SEGMENT &&
            roll(s) != KW_OK)
            return done;
        /* the records that fit in this segment, in one writev */
        size_t k = 0, want = 0;
        while (done + k < n && k < PER_CALL) {
            size_t len = recs[done + k].iov_len;
            if (len > DP_SPOOL_MAX_RECORD ||
                (k > 0 && s->seg_len + want + DP_SPOOL_HEADER + len > DP_SPOOL_SEGMENT))
                break;
            put32(hdr[k], DP_SPOOL_MAGIC);
            put32(hdr[k] + 4, (uint32_t)len);
            put32(hdr[k] + 8, (uint32_t)crc32(0L, recs[done + k].iov_base, (uInt)len));
            iov[2 * k] = (struct iovec){hdr[k], DP_SPOOL_HEADER};
            iov[2 * k + 1] = recs[done + k];
            want += DP_SPOOL_HEADER + len;
            k++;
        }
        ssize_t w = writev(s->fd, iov, (int)(2 * k));
        if (w != (ssize_t)want) {
            /* a short write to a regular file means the disk (or a quota) is full; errno
             * is what the caller reports, so it is kept through the cleanup */
            int e = w < 0 ? errno : ENOSPC;
            if (w > 0 && ftruncate(s->fd, (off_t)s->seg_len) != 0) {
                /* a partial frame stays: recovery cuts it at the next open */
            }
            errno = e;
            return done;
        }
        s->seg_len += want;
        atomic_store(&s->end, atomic_load(&s->end) + want);
        done += k;
    }
    return done;
}

int dp_spool_append(struct dp_spool *s, const void *data, size_t len)
{
    struct iovec one = {(void *)data, len};
    return dp_spool_append_many(s, &one, 1) == 1 ? KW_OK : KW_ERROR;
}

int dp_spool_sync(struct dp_spool *s)
{
    return fdatasync(s->fd) == 0 ? KW_OK : KW_ERROR;
}

uint64_t dp_spool_end(const struct dp_spool *s)
{
    return atomic_load(&s->end);
}

uint64_t dp_spool_shipped(const struct dp_spool *s, unsigned reader)
{
    return reader < s->nreaders ? atomic_load(&s->readers[reader].shipped) : 0;
}

uint64_t dp_spool_pending_bytes(const struct dp_spool *s)
{
    uint64_t end = atomic_load(&s->end), low = end;
    for (size_t i = 0; i < s->nreaders; i++) {
        uint64_t sh = atomic_load(&s->readers[i].shipped);
        if (sh < low)
            low = sh;
    }
    return end - low;
}

uint64_t dp_spool_repairs(const struct dp_spool *s)
{
    return atomic_load(&s->repairs);
}

/* The segment holding offset: its base and where it ends (the next base, or the end). */
static bool segment_of(struct dp_spool *s, uint64_t off, uint64_t *base, uint64_t *limit)
{
    bool found = false;
    pthread_mutex_lock(&s->mu);
    for (size_t i = s->nbases; i-- > 0;)
        if (s->bases[i] <= off) {
            *base = s->bases[i];
            *limit = i + 1 < s->nbases ? s->bases[i + 1] : atomic_load(&s->end);
            found = true;
            break;
        }
    pthread_mutex_unlock(&s->mu);
    return found;
}

int dp_spool_read(struct dp_spool *s, unsigned reader, uint64_t from, size_t max,
                  dp_spool_record_fn fn, void *ud, uint64_t *next)
{
    (void)reader;
    *next = from;
    size_t delivered = 0;
    uint64_t end = atomic_load(&s->end);
    while (*next < end && delivered < max) {
        uint64_t base, limit;
        if (!segment_of(s, *next, &base, &limit))
            return KW_ERROR;
        if (limit > end)
            limit = end;
        if (*next >= limit) {
            *next = limit; /* the end of a segment: the next one */
            continue;
        }
        size_t span = (size_t)(limit - *next);
        if (span > 2u * 1024 * 1024)
            span = 2u * 1024 * 1024; /* read in pieces; frames are at most 64 KiB */
        char path[PATH_MAX];
        seg_path(s, base, path, sizeof(path));
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        unsigned char *buf = fd >= 0 ? malloc(span) : NULL;
        ssize_t got = buf != NULL ? pread(fd, buf, span, (off_t)(*next - base)) : -1;
        if (fd >= 0)
            close(fd);
        if (got <= 0) {
            free(buf);
            return KW_ERROR;
        }
        size_t pos = 0, len = (size_t)got;
        bool progress = false;
        while (pos < len && delivered < max) {
            size_t f = frame_at(buf + pos, len - pos);
            if (f == 0) {
                bool more = *next + len < limit; /* the segment goes on past this piece */
                bool cut = len - pos < DP_SPOOL_HEADER ||
                           (get32(buf + pos) == DP_SPOOL_MAGIC &&
                            get32(buf + pos + 4) <= DP_SPOOL_MAX_RECORD &&
                            pos + DP_SPOOL_HEADER + get32(buf + pos + 4) > len);
                if (more && cut)
                    break; /* a whole frame cut by this piece: read again from here */
                /* corrupted: skip to the next magic */
                size_t p = pos + 1;
                while (p + 4 <= len && get32(buf + p) != DP_SPOOL_MAGIC)
                    p++;
                if (p + 4 > len)
                    p = len;
                char at[32];
                snprintf(at, sizeof(at), "%" PRIu64, *next + pos);
                kw_log(KW_LOG_WARN, "usage spool: a corrupted record was skipped", "offset", at,
                       NULL);
                atomic_fetch_add(&s->repairs, 1);
                pos = p;
                progress = true;
                continue;
            }
            if (!fn(ud, *next + pos, (const char *)buf + pos + DP_SPOOL_HEADER,
                    f - DP_SPOOL_HEADER)) {
                max = delivered; /* stop: this record is not consumed */
                break;
            }
            pos += f;
            delivered++;
            progress = true;
        }
        free(buf);
        *next += pos;
        if (!progress)
            break;
    }
    return KW_OK;
}

int dp_spool_ack(struct dp_spool *s, unsigned reader, uint64_t offset)
{
    if (reader >= s->nreaders)
        return KW_ERROR;
    char path[PATH_MAX], tmp[PATH_MAX + 8], buf[32];
    snprintf(path, sizeof(path), "%s/shipped-%s", s->dir, s->readers[reader].name);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    int n = snprintf(buf, sizeof(buf), "%" PRIu64 "\n", offset);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return KW_ERROR;
    ssize_t w = write(fd, buf, (size_t)n);
    int e = w < 0 ? errno : w != n ? ENOSPC : 0;
    if (e == 0 && fsync(fd) != 0)
        e = errno;
    close(fd);
    if (e == 0 && rename(tmp, path) != 0)
        e = errno;
    if (e != 0) {
        unlink(tmp);
        errno = e; /* the caller reports it */
        return KW_ERROR;
    }
    atomic_store(&s->readers[reader].shipped, offset);
    /* segments every reader has passed (never the writer's) */
    uint64_t low = offset;
    for (size_t i = 0; i < s->nreaders; i++) {
        uint64_t sh = atomic_load(&s->readers[i].shipped);
        if (sh < low)
            low = sh;
    }
    pthread_mutex_lock(&s->mu);
    size_t drop = 0;
    while (drop + 1 < s->nbases && s->bases[drop + 1] <= low)
        drop++;
    for (size_t i = 0; i < drop; i++) {
        char seg[PATH_MAX];
        seg_path(s, s->bases[i], seg, sizeof(seg));
        unlink(seg);
    }
    memmove(s->bases, s->bases + drop, (s->nbases - drop) * sizeof(s->bases[0]));
    s->nbases -= drop;
    pthread_mutex_unlock(&s->mu);
    return KW_OK;
}
