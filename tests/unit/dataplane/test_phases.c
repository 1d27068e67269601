/* The phase engine with a test filter table: every outcome of a phase or filter (OK,
 * DECLINED, AGAIN and resume, DONE, ERROR), ERROR after a stream started, the upstream
 * phase suspending, a client leaving, on_end exactly once and in reverse order. No network:
 * the upstream transfer is started but never driven. */
#include <stdlib.h>
#include <string.h>

#include "balancer.h"
#include "filter.h"
#include "knoway/kw.h"
#include "knoway/snapshot.h"
#include "phases.h"
#include "respond.h"
#include "server.h"
#include "upstream.h"
#include "testutil.h"

static const char CONFIG[] =
    "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMBackend\nmetadata: {name: b}\n"
    "spec: {provider: vLLM, upstream: {baseURL: \"http://127.0.0.1:9/v1\"}}\n---\n"
    "apiVersion: llm.knoway.dev/v1alpha1\nkind: LLMRoute\nmetadata: {name: r}\n"
    "spec: {match: {models: [m]}, backendRefs: [{name: b}]}\n";

/* ---- the test filters ------------------------------------------------------------------ */

static int auth_rc[4], auth_calls, limit_rc, limit_calls, attempts_seen;
static char ends[8];
static size_t nends;

static bool resume_at_once; /* the filter's event arrives before it returns KW_AGAIN */

static int auth_request(struct dp_request *r, void *ctx)
{
    assert_non_null(ctx); /* ctx_size bytes, zeroed, per request */
    ++*(int *)ctx;
    int rc = auth_rc[auth_calls++];
    if (rc == KW_AGAIN && resume_at_once)
        dp_engine_resume(r);
    return rc;
}

static int limit_request(struct dp_request *r, void *ctx)
{
    (void)ctx;
    limit_calls++;
    if (limit_rc == KW_DONE)
        return dp_respond_fail(r, 429, "rate_limit_exceeded", "test", NULL, "slow down");
    if (limit_rc == KW_ERROR)
        return dp_error_set(r, 403, "invalid_request_error", "denied", NULL, "denied by test");
    return limit_rc;
}

static void attempt(struct dp_request *r, void *ctx)
{
    (void)r;
    (void)ctx;
    attempts_seen++;
}

static void end_a(struct dp_request *r, void *ctx)
{
    (void)r;
    (void)ctx;
    ends[nends++] = 'A';
}

static void end_b(struct dp_request *r, void *ctx)
{
    (void)r;
    (void)ctx;
    ends[nends++] = 'B';
}

static const struct dp_filter_ops filter_a = {.name = "a",
                                              .phase = DP_PH_AUTH,
                                              .ctx_size = sizeof(int),
                                              .on_request = auth_request,
                                              .on_end = end_a};
static const struct dp_filter_ops filter_b = {.name = "b",
                                              .phase = DP_PH_LIMIT,
                                              .on_request = limit_request,
                                              .on_attempt = attempt,
                                              .on_end = end_b};
static const struct dp_filter_ops *const filters[] = {&filter_a, &filter_b};

/* ---- a worker without a loop ---------------------------------------------------------- */

struct env {
    struct kw_config *bootstrap;
    struct dp_server s;
    struct dp_worker w;
    struct dp_table *table;
};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    struct kw_config *cfg;
    struct kw_snapshot *snap = kwt_snapshot(CONFIG, &cfg);
    e->bootstrap = cfg;
    e->s.dp = &cfg->dataplane;
    e->s.max_body_bytes = 1 << 20;
    e->s.nworkers = 1;
    assert_int_equal(dp_filters_init(&e->s, filters, 2), KW_OK);
    e->table = dp_table_new(snap);
    e->w.server = &e->s;
    e->w.lb = dp_lb_new(1);
    e->w.scratch = kw_arena_new(1 << 20);
    e->w.ep = -1;
    kw_heap_init(&e->w.timers);
    kw_buf_init(&e->w.logbuf, 65536);
    assert_int_equal(dp_upstream_init(&e->w), KW_OK);
    memset(auth_rc, 0, sizeof(auth_rc));
    auth_calls = limit_calls = attempts_seen = 0;
    limit_rc = KW_OK;
    nends = 0;
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    dp_upstream_cleanup(&e->w);
    dp_lb_free(e->w.lb);
    kw_arena_free(e->w.scratch);
    kw_heap_cleanup(&e->w.timers);
    kw_buf_cleanup(&e->w.logbuf);
    dp_table_unref(e->table);
    kw_config_free(e->bootstrap);
    free(e);
    return 0;
}

static struct dp_request *request(struct env *e, const char *body)
{
    struct dp_request *r = calloc(1, sizeof(*r));
    r->w = &e->w;
    r->arena = kw_arena_new(1 << 20);
    r->scratch = e->w.scratch;
    r->table = e->table;
    r->api = DP_API_CHAT;
    r->path = "/v1/chat/completions";
    r->method = "POST";
    r->endpoint = -1;
    r->state = DP_ST_UPSTREAM;
    snprintf(r->id, sizeof(r->id), "t");
    kw_heap_node_init(&r->timer.node);
    kw_heap_node_init(&r->watch_timer.node);
    kw_heap_node_init(&r->attempt_timer.node);
    kw_buf_init(&r->body, 1 << 20);
    kw_buf_init(&r->up_body, 1 << 20);
    kw_buf_init(&r->up_resp, 1 << 20);
    kw_buf_init(&r->out, 1 << 20);
    kw_buf_init(&r->stage, 1 << 20);
    dp_sse_init(&r->sse, 1 << 20);
    kw_buf_puts(&r->body, body);
    r->body_len = r->body.len;
    return r;
}

static void request_free(struct dp_request *r)
{
    if (!r->ended)
        dp_engine_end(r, MHD_REQUEST_TERMINATED_COMPLETED_OK);
    if (r->pending != NULL)
        MHD_destroy_response(r->pending);
    dp_sse_cleanup(&r->sse);
    kw_buf_cleanup(&r->body);
    kw_buf_cleanup(&r->up_body);
    kw_buf_cleanup(&r->up_resp);
    kw_buf_cleanup(&r->out);
    kw_buf_cleanup(&r->stage);
    kw_arena_free(r->arena);
    free(r);
}

#define CHAT "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}"

/* ---- tests ------------------------------------------------------------------------------ */

static void test_body_error_skips_the_rest(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, CHAT);
    r->early_status = 404;
    dp_engine_start(r);
    assert_int_equal(r->phase, DP_PH_LOG);
    assert_non_null(r->pending);
    assert_int_equal(r->pending_status, 404);
    assert_string_equal(r->err.code, "unknown_url");
    assert_int_equal(auth_calls, 0);
    dp_engine_end(r, MHD_REQUEST_TERMINATED_COMPLETED_OK);
    dp_engine_end(r, MHD_REQUEST_TERMINATED_COMPLETED_OK); /* once only */
    assert_int_equal(nends, 2);
    assert_memory_equal(ends, "BA", 2); /* reverse order: the access log last */
    request_free(r);
}

static void test_again_then_resume_then_done(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, CHAT);
    auth_rc[0] = KW_AGAIN;
    auth_rc[1] = KW_OK;
    limit_rc = KW_DONE;
    dp_engine_start(r);
    assert_int_equal(r->phase, DP_PH_AUTH); /* suspended where it stood */
    assert_int_equal(auth_calls, 1);
    assert_null(r->pending);
    dp_engine_resume(r);
    assert_int_equal(auth_calls, 2); /* the same filter runs again */
    assert_int_equal(*(int *)r->fctx[0], 2);
    assert_int_equal(limit_calls, 1);
    assert_int_equal(r->phase, DP_PH_LOG);
    assert_int_equal(r->pending_status, 429);
    assert_non_null(r->backend);         /* route ran before limit ... */
    assert_int_equal(r->up_body.len, 0); /* ... transform never did */
    dp_engine_resume(r);                 /* a late event changes nothing */
    assert_int_equal(auth_calls, 2);
    request_free(r);
}

static void test_resume_from_inside_a_filter(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, CHAT);
    auth_rc[0] = KW_AGAIN;
    auth_rc[1] = KW_OK;
    limit_rc = KW_DONE;
    resume_at_once = true;
    dp_engine_start(r); /* not lost: the loop runs the filter again at once */
    resume_at_once = false;
    assert_int_equal(auth_calls, 2);
    assert_int_equal(r->phase, DP_PH_LOG);
    assert_int_equal(r->pending_status, 429);
    request_free(r);
}

static void test_declined_then_error(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, CHAT);
    auth_rc[0] = KW_DECLINED;
    limit_rc = KW_ERROR;
    dp_engine_start(r);
    assert_int_equal(limit_calls, 1);
    assert_int_equal(r->pending_status, 403);
    assert_string_equal(r->err.msg, "denied by test");
    request_free(r);
}

static void test_route_not_found(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, "{\"model\":\"nope\",\"messages\":[]}");
    dp_engine_start(r);
    assert_int_equal(r->pending_status, 404);
    assert_string_equal(r->err.code, "model_not_found");
    assert_int_equal(auth_calls, 1);
    assert_int_equal(limit_calls, 0); /* route comes before limit */
    request_free(r);
}

static void test_upstream_suspends_and_client_leaves(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, CHAT);
    dp_engine_start(r);
    assert_int_equal(r->phase, DP_PH_UPSTREAM);
    assert_int_equal(r->attempts, 1);
    assert_non_null(r->up.easy);
    assert_null(r->pending);
    assert_string_equal(r->base_url, "http://127.0.0.1:9/v1");
    struct dp_backend_state *bs = dp_lb_find(e->w.lb, r->backend);
    assert_non_null(bs);
    assert_int_equal(bs->t.in_flight, 1);
    dp_engine_client_gone(r);
    assert_null(r->up.easy);
    assert_int_equal(bs->t.in_flight, 0);
    assert_int_equal(bs->t.failures, 0); /* a client leaving says nothing of the backend */
    dp_engine_resume(r);                 /* nothing runs for a request whose client left */
    assert_int_equal(r->attempts, 1);
    request_free(r);
    assert_int_equal(nends, 2);
}

static void test_error_after_the_stream_started(void **state)
{
    struct env *e = *state;
    struct dp_request *r = request(e, CHAT);
    r->state = DP_ST_STREAM; /* as if the response had started */
    limit_rc = KW_ERROR;
    dp_engine_start(r);
    assert_null(r->pending); /* no second response... */
    assert_true(r->stream_end);
    assert_non_null(strstr(r->out.data, "data: {\"error\":{\"message\":\"denied by test\""));
    assert_non_null(strstr(r->out.data, "\"code\":\"denied\""));
    request_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_body_error_skips_the_rest, setup, teardown),
        cmocka_unit_test_setup_teardown(test_again_then_resume_then_done, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume_from_inside_a_filter, setup, teardown),
        cmocka_unit_test_setup_teardown(test_declined_then_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_route_not_found, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upstream_suspends_and_client_leaves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_error_after_the_stream_started, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
