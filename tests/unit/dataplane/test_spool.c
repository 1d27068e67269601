/* spool.c: framing, segments, shipped offsets, and recovery from torn and corrupted
 * records. */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "knoway/kw.h"
#include "spool.h"
#include "testutil.h"

static const char *const readers[] = {"pg", "jsonl"};

struct got {
    char recs[20000][40];
    uint64_t offs[20000];
    size_t n;
};

static bool collect(void *ud, uint64_t off, const char *data, size_t len)
{
    struct got *g = ud;
    if (g->n == 20000)
        return false;
    snprintf(g->recs[g->n], sizeof(g->recs[0]), "%.*s", (int)len, data);
    g->offs[g->n++] = off;
    return true;
}

static char *tmpdir(void)
{
    char *d = strdup("/tmp/kw-spool-XXXXXX");
    assert_non_null(mkdtemp(d));
    return d;
}

static void rmtree(const char *d)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d);
    assert_int_equal(system(cmd), 0);
}

static size_t count_segments(const char *d)
{
    size_t n = 0;
    DIR *dir = opendir(d);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        n += strncmp(e->d_name, "seg-", 4) == 0;
    closedir(dir);
    return n;
}

static struct dp_spool *open_ok(const char *d)
{
    struct dp_spool *s = NULL;
    char err[256];
    assert_int_equal(dp_spool_open(&s, d, readers, 2, err, sizeof(err)), KW_OK);
    return s;
}

static void test_round_trip_and_reopen(void **state)
{
    (void)state;
    char *d = tmpdir();
    struct dp_spool *s = open_ok(d);
    char rec[40];
    for (int i = 0; i < 100; i++) {
        int n = snprintf(rec, sizeof(rec), "record-%d", i);
        assert_int_equal(dp_spool_append(s, rec, (size_t)n), KW_OK);
    }
    assert_int_equal(dp_spool_sync(s), KW_OK);
    static struct got g;
    g.n = 0;
    uint64_t next;
    assert_int_equal(dp_spool_read(s, 0, 0, 1000, collect, &g, &next), KW_OK);
    assert_int_equal(g.n, 100);
    assert_string_equal(g.recs[57], "record-57");
    assert_int_equal(next, dp_spool_end(s));
    /* reader 0 ships half */
    assert_int_equal(dp_spool_ack(s, 0, g.offs[50]), KW_OK);
    assert_int_equal(dp_spool_pending_bytes(s), dp_spool_end(s)); /* reader 1 shipped nothing */
    dp_spool_close(s);
    /* a restart resumes each reader where it was */
    s = open_ok(d);
    assert_int_equal(dp_spool_shipped(s, 0), g.offs[50]);
    assert_int_equal(dp_spool_shipped(s, 1), 0);
    static struct got h;
    h.n = 0;
    assert_int_equal(dp_spool_read(s, 0, dp_spool_shipped(s, 0), 1000, collect, &h, &next), KW_OK);
    assert_int_equal(h.n, 50);
    assert_string_equal(h.recs[0], "record-50");
    assert_int_equal(dp_spool_repairs(s), 0);
    dp_spool_close(s);
    rmtree(d);
    free(d);
}

static void test_segments_roll_and_are_deleted_when_shipped(void **state)
{
    (void)state;
    char *d = tmpdir();
    struct dp_spool *s = open_ok(d);
    static char big[60000];
    memset(big, 'x', sizeof(big));
    for (int i = 0; i < 400; i++) { /* 24 MB: 3+ segments */
        big[0] = (char)('a' + i % 26);
        assert_int_equal(dp_spool_append(s, big, sizeof(big)), KW_OK);
    }
    assert_true(count_segments(d) >= 3);
    uint64_t end = dp_spool_end(s);
    assert_int_equal(end, 400u * (sizeof(big) + DP_SPOOL_HEADER));
    /* every record comes back across the segment boundaries, in order */
    size_t seen = 0;
    uint64_t from = 0, next = 0;
    struct got *g = calloc(1, sizeof(*g));
    while (from < end) {
        g->n = 0;
        assert_int_equal(dp_spool_read(s, 1, from, 50, collect, g, &next), KW_OK);
        for (size_t i = 0; i < g->n; i++)
            assert_int_equal(g->recs[i][0], (char)('a' + (seen + i) % 26));
        seen += g->n;
        assert_true(next > from);
        from = next;
    }
    assert_int_equal(seen, 400);
    /* segments go once both readers passed them; the writer's stays */
    assert_int_equal(dp_spool_ack(s, 0, end), KW_OK);
    assert_true(count_segments(d) >= 3);
    assert_int_equal(dp_spool_ack(s, 1, end), KW_OK);
    assert_int_equal(count_segments(d), 1);
    assert_int_equal(dp_spool_pending_bytes(s), 0);
    dp_spool_close(s);
    /* reopened with everything shipped: appends go on from the same offset */
    s = open_ok(d);
    assert_int_equal(dp_spool_end(s), end);
    assert_int_equal(dp_spool_append(s, "after", 5), KW_OK);
    g->n = 0;
    assert_int_equal(dp_spool_read(s, 0, end, 10, collect, g, &next), KW_OK);
    assert_int_equal(g->n, 1);
    assert_string_equal(g->recs[0], "after");
    dp_spool_close(s);
    free(g);
    rmtree(d);
    free(d);
}

/* The only segment's path. */
static void segment_path(const char *d, char *out, size_t len)
{
    DIR *dir = opendir(d);
    struct dirent *e;
    while ((e = readdir(dir)) != NULL)
        if (strncmp(e->d_name, "seg-", 4) == 0)
            snprintf(out, len, "%s/%s", d, e->d_name);
    closedir(dir);
}

static void test_torn_tail_and_corrupted_record(void **state)
{
    (void)state;
    char *d = tmpdir();
    struct dp_spool *s = open_ok(d);
    char rec[40];
    for (int i = 0; i < 10; i++) {
        int n = snprintf(rec, sizeof(rec), "record-%d", i);
        assert_int_equal(dp_spool_append(s, rec, (size_t)n), KW_OK);
    }
    uint64_t end = dp_spool_end(s);
    dp_spool_close(s);
    char seg[600];
    segment_path(d, seg, sizeof(seg));
    /* a process killed mid-write: half a frame at the end */
    int fd = open(seg, O_WRONLY | O_APPEND);
    assert_int_equal(write(fd, "KWL1\x40\x00\x00\x00garb", 12), 12);
    close(fd);
    /* and one record in the middle damaged (a byte of record-4's payload) */
    static struct got g;
    g.n = 0;
    s = open_ok(d);
    assert_int_equal(dp_spool_end(s), end); /* the torn tail was cut */
    assert_int_equal(dp_spool_repairs(s), 1);
    uint64_t next;
    assert_int_equal(dp_spool_read(s, 0, 0, 100, collect, &g, &next), KW_OK);
    assert_int_equal(g.n, 10);
    uint64_t fourth = g.offs[4];
    dp_spool_close(s);
    fd = open(seg, O_WRONLY);
    assert_int_equal(pwrite(fd, "X", 1, (off_t)(fourth + DP_SPOOL_HEADER + 2)), 1);
    close(fd);
    s = open_ok(d);
    g.n = 0;
    assert_int_equal(dp_spool_read(s, 0, 0, 100, collect, &g, &next), KW_OK);
    assert_int_equal(g.n, 9); /* record-4 skipped, the ones before and after kept */
    assert_string_equal(g.recs[3], "record-3");
    assert_string_equal(g.recs[4], "record-5");
    assert_string_equal(g.recs[8], "record-9");
    assert_int_equal(next, end);
    assert_true(dp_spool_repairs(s) >= 1);
    /* appends after recovery are whole */
    assert_int_equal(dp_spool_append(s, "new", 3), KW_OK);
    g.n = 0;
    assert_int_equal(dp_spool_read(s, 0, end, 100, collect, &g, &next), KW_OK);
    assert_int_equal(g.n, 1);
    assert_string_equal(g.recs[0], "new");
    dp_spool_close(s);
    rmtree(d);
    free(d);
}

static void test_refuses_oversized_and_bad_dirs(void **state)
{
    (void)state;
    char *d = tmpdir();
    struct dp_spool *s = open_ok(d);
    static char big[DP_SPOOL_MAX_RECORD + 1];
    assert_int_equal(dp_spool_append(s, big, sizeof(big)), KW_ERROR);
    assert_int_equal(dp_spool_end(s), 0);
    dp_spool_close(s);
    char err[256];
    assert_int_equal(dp_spool_open(&s, "/proc/kw-no/such", readers, 2, err, sizeof(err)), KW_ERROR);
    assert_non_null(strstr(err, "/proc/kw-no/such"));
    rmtree(d);
    free(d);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_and_reopen),
        cmocka_unit_test(test_segments_roll_and_are_deleted_when_shipped),
        cmocka_unit_test(test_torn_tail_and_corrupted_record),
        cmocka_unit_test(test_refuses_oversized_and_bad_dirs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
