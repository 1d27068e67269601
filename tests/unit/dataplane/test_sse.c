/* The SSE parser: LF, CRLF and CR line ends, comments, multi-line data, event names, the
 * raw bytes of each event, the end of a stream without a blank line, the event size limit,
 * and the same events whatever byte boundaries the input is split at. */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "knoway/kw.h"
#include "sse.h"
#include "testutil.h"

struct got {
    struct kw_buf text; /* "event|data|raw\n" per event */
    int n;
};

static int on_event(void *ud, const char *raw, size_t raw_len, const char *event, const char *data,
                    size_t data_len, bool has_data)
{
    struct got *g = ud;
    kw_buf_printf(&g->text, "%s|%.*s|%s|", event, (int)data_len, data, has_data ? "d" : "-");
    kw_buf_append(&g->text, raw, raw_len);
    kw_buf_puts(&g->text, "\n");
    g->n++;
    return KW_OK;
}

/* Parse input fed in the given pieces; returns what was seen (malloc'd). */
static char *parse(const char *input, size_t len, const size_t *cuts, size_t ncuts, int *n)
{
    struct dp_sse p;
    struct got g = {0};
    kw_buf_init(&g.text, 1 << 20);
    dp_sse_init(&p, 4096);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        assert_int_equal(dp_sse_feed(&p, input + at, end - at, on_event, &g), KW_OK);
        at = end;
    }
    assert_int_equal(dp_sse_finish(&p, on_event, &g), KW_OK);
    dp_sse_cleanup(&p);
    *n = g.n;
    char *out = strdup(g.text.data != NULL ? g.text.data : "");
    kw_buf_cleanup(&g.text);
    return out;
}

static const char STREAM[] =
    "data: {\"a\":1}\n\n"
    ": keep-alive comment\n\n"
    "event: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n"
    "data: line one\rdata: line two\r\r"
    "id: 7\nretry: 100\ndata:no-space\n\n"
    "data: [DONE]\n\n"
    "data: {\"tail\":true}"; /* the last event ends with the connection (Gemini) */

static void test_events(void **state)
{
    (void)state;
    int n;
    static const size_t none[1];
    char *got = parse(STREAM, strlen(STREAM), none, 0, &n);
    assert_int_equal(n, 7);
    assert_string_equal(got, "|{\"a\":1}|d|data: {\"a\":1}\n\n\n"
                             "||-|: keep-alive comment\n\n\n"
                             "message_start|{\"type\":\"message_start\"}|d|event: message_start\r\n"
                             "data: {\"type\":\"message_start\"}\r\n\r\n\n"
                             "|line one\nline two|d|data: line one\rdata: line two\r\r\n"
                             "|no-space|d|id: 7\nretry: 100\ndata:no-space\n\n\n"
                             "|[DONE]|d|data: [DONE]\n\n\n"
                             /* its raw bytes get the blank line the stream did not send */
                             "|{\"tail\":true}|d|data: {\"tail\":true}\n\n\n");
    free(got);
}

static void test_every_split_is_the_same(void **state)
{
    (void)state;
    size_t len = strlen(STREAM);
    int n;
    static const size_t none[1];
    char *whole = parse(STREAM, len, none, 0, &n);
    for (size_t cut = 1; cut < len; cut++) { /* two pieces, at every boundary */
        int m;
        char *got = parse(STREAM, len, &cut, 1, &m);
        assert_string_equal(got, whole);
        free(got);
    }
    size_t bytes[sizeof(STREAM)];
    for (size_t i = 0; i + 1 < len; i++) /* one byte at a time */
        bytes[i] = i + 1;
    int m;
    char *got = parse(STREAM, len, bytes, len - 1, &m);
    assert_string_equal(got, whole);
    free(got);
    free(whole);
}

static void test_event_limit(void **state)
{
    (void)state;
    struct dp_sse p;
    struct got g = {0};
    kw_buf_init(&g.text, 1 << 20);
    dp_sse_init(&p, 64);
    char big[200];
    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);
    assert_int_equal(dp_sse_feed(&p, big, sizeof(big), on_event, &g), KW_ERROR);
    dp_sse_cleanup(&p);
    kw_buf_cleanup(&g.text);
}

struct chunked {
    const char *text;
    size_t len, step;
};

static int count_event(void *ud, const char *raw, size_t raw_len, const char *event,
                       const char *data, size_t data_len, bool has_data)
{
    (void)raw, (void)raw_len, (void)event, (void)data, (void)data_len, (void)has_data;
    (*(size_t *)ud)++;
    return KW_OK;
}

struct sse_run {
    struct dp_sse p;
    size_t n;
};

static int sse_piece(void *ud, const char *p, size_t n)
{
    struct sse_run *run = ud;
    return dp_sse_feed(&run->p, p, n, count_event, &run->n);
}

static void feed_chunked(void *arg)
{
    const struct chunked *c = arg;
    struct sse_run run = {.n = 0};
    dp_sse_init(&run.p, 4u << 20);
    assert_int_equal(kwt_feed_chunked(c->text, c->len, c->step, sse_piece, &run), KW_OK);
    assert_true(run.n > 0);
    dp_sse_cleanup(&run.p);
}

/* An event at the 4 MiB limit, arriving in 4 KiB reads, costs what the same bytes as small
 * events cost: the parser never rescans what it holds (time linear in the input). */
static void test_linear_at_the_limit(void **state)
{
    (void)state;
    size_t len = (4u << 20) - 64;
    char *big = malloc(len), *small = malloc(len);
    memcpy(big, "data: ", 6);
    memset(big + 6, 'x', len - 8);
    memcpy(big + len - 2, "\n\n", 2);
    for (size_t off = 0; off < len; off += 64) { /* 64-byte events: "data: xxx...\n\n" */
        memcpy(small + off, "data: ", 6);
        memset(small + off + 6, 'y', 56);
        memcpy(small + off + 62, "\n\n", 2);
    }
    struct chunked a = {big, len, 4096}, b = {small, len, 4096};
    kwt_assert_linear("one 4 MiB SSE event vs 64-byte events", feed_chunked, &a, feed_chunked, &b,
                      8.0);
    free(big);
    free(small);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_events),
        cmocka_unit_test(test_every_split_is_the_same),
        cmocka_unit_test(test_event_limit),
        cmocka_unit_test(test_linear_at_the_limit),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
