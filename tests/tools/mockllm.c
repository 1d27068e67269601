/* knoway-mockllm: a fast, deterministic mock of the OpenAI HTTP API for tests and
 * benchmarks, with fault injection.
 *
 * One epoll loop per thread, listening sockets shared with SO_REUSEPORT, HTTP/1.1 with
 * keep-alive, a timer heap per thread for streamed chunks. No allocation per chunk.
 *
 * Endpoints (the OpenAI wire format):
 *   GET  /v1/models
 *   POST /v1/chat/completions   (stream, stream_options.include_usage); tool messages must
 *                               answer the preceding assistant's tool_calls (400 otherwise,
 *                               as OpenAI answers). With tools and no tool message last it
 *                               calls the first tool with {"city": "Paris"} (streamed: the
 *                               call, then its arguments in two deltas); after a tool message
 *                               it answers "tool said: RESULT". response_format
 *                               json_schema: the content is an instance of the schema (as
 *                               constrained decoding gives), in two pieces; json_object:
 *                               {"answer":"tok0"}
 *   POST /v1/completions        (stream)
 *   POST /v1/embeddings
 *   POST /openai/deployments/{d}/{chat/completions|completions|embeddings}?api-version=V
 *                               Azure OpenAI: needs the api-key header (401 in Azure's
 *                               error shape without it); x-mock-fault: content_filter
 *                               answers Azure's content-filter refusal
 *   POST /v1/messages           Anthropic Messages API: needs x-api-key and
 *                               anthropic-version, model, max_tokens, user/assistant roles
 *                               (400/401 in Anthropic's error shape); thinking {enabled,
 *                               budget_tokens} puts a thinking block (signature included)
 *                               before the text; streams message_start,
 *                               content_block_*, ping, message_delta, message_stop. With
 *                               tools and no tool_result in the last turn it calls the first
 *                               tool with {"city": "Paris"} (tool_use, input_json_delta);
 *                               after a tool_result it answers "tool said: RESULT".
 *                               tool_choice {type: tool, name} (or any): that tool (the
 *                               first), its input an instance of its input_schema; refused
 *                               with thinking, as Anthropic does. output_config.format
 *                               {type: json_schema, schema}: the text is an instance
 *   GET  /_mock/requests        what was received: a JSON array of the last requests
 *   DELETE /_mock/requests      forget them
 *   GET  /_mock/stats           {"requests": N, "errors": E}: completion requests received
 *                               and those answered with an error status (attempt counting)
 *   DELETE /_mock/stats         reset them
 *   PUT  /_mock/behaviour       this instance's behaviour (also --behaviour JSON at start):
 *     {"latency_ms", "ttft_ms", "status", "retry_after" (s), "retry_after_ms",
 *      "fail_rate" (0..1, answered with "fail_status", default 500), "fault", "fault_after",
 *      "quota_requests", "quota_tokens", "quota_reset_ms"}: with a quota, every answer
 *      carries OpenAI's x-ratelimit-{limit,remaining,reset}-{requests,tokens} headers and a
 *      request past it gets 429 with Retry-After. PUT replaces the whole behaviour.
 *
 * Behaviour per request, from request headers (a gateway backend sets them through
 * upstream.headers), else the instance's behaviour, else the command line defaults:
 *   x-mock-latency-ms: N     wait before the response (non-streaming) or the headers
 *   x-mock-ttft-ms: N        time to the first streamed chunk
 *   x-mock-chunks: N         content chunks in a stream (also the completion tokens)
 *   x-mock-interval-ms: N    time between chunks (tokens per second = 1000 / N)
 *   x-mock-status: N         answer with this HTTP status and an OpenAI error body
 *   x-mock-retry-after: S    with x-mock-status: add Retry-After: S
 *   x-mock-fault: reset|stall|malformed|close|error
 *   x-mock-fault-after: N    chunks sent before the fault (default 1)
 *     reset:     TCP RST mid-stream; stall: stop sending, keep the connection;
 *     malformed: one chunk of invalid JSON, then go on; close: FIN without the last chunk;
 *     error: an OpenAI error event, then the end of the body
 *
 * Continuation (vLLM's continue_final_message: true): the final assistant message must be
 * exactly the first K pieces the mock would have sent ("tok0 tok1 ... tokK-1 "); the stream
 * then goes on from piece K (400 "prefill mismatch" otherwise: the test of a gateway that
 * splices streams). Completion tokens count the new pieces only.
 *
 * Prompt tokens: 3 per message plus one per white-space separated word of its content;
 * completion tokens: the number of chunks. Content: "tok0 tok1 ...". */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <yajl/yajl_tree.h>

#include "knoway/heap.h"

#define MAX_HEADER   16384
#define MAX_BODY     (8 * 1024 * 1024)
#define MAX_LOG      2000
#define LOG_BODY_MAX 65536
#define OUT_MAX      (1024 * 1024)

struct opts {
    int ttft_ms, interval_ms, chunks, latency_ms;
    bool log;
};
static struct opts g_opt = {
    .ttft_ms = 0, .interval_ms = 0, .chunks = 8, .latency_ms = 0, .log = true};

/* ---- instance behaviour (PUT /_mock/behaviour) ---------------------------------------- */

struct behaviour {
    int latency_ms, ttft_ms, status, retry_after, retry_after_ms, fail_status, fault_after;
    double fail_rate;
    char fault[16];
    long quota_requests, quota_tokens; /* -1: no rate-limit headers */
    int quota_reset_ms;
};
static pthread_mutex_t g_beh_mu = PTHREAD_MUTEX_INITIALIZER;
static struct behaviour g_beh = {.latency_ms = -1,
                                 .ttft_ms = -1,
                                 .quota_requests = -1,
                                 .quota_tokens = -1,
                                 .quota_reset_ms = 60000,
                                 .fail_status = 500,
                                 .fault_after = 1};
static long g_hits, g_errors;                   /* under g_beh_mu */
static long g_quota_used_req, g_quota_used_tok; /* under g_beh_mu */
static int64_t g_quota_window;
static uint64_t g_rnd = 88172645463325252ull;

/* ---- request log (for tests) --------------------------------------------------------- */

struct rec {
    uint64_t id;
    char method[8];
    char path[256];
    char *headers; /* JSON object text */
    char *body;
    int status;
    bool done, cancelled;
};

static pthread_mutex_t g_log_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rec g_log[MAX_LOG];
static uint64_t g_next_id = 1;
static size_t g_log_start, g_log_n;

static struct rec *log_find(uint64_t id)
{
    for (size_t i = 0; i < g_log_n; i++) {
        struct rec *r = &g_log[(g_log_start + i) % MAX_LOG];
        if (r->id == id)
            return r;
    }
    return NULL;
}

static void log_update(uint64_t id, int status, bool done, bool cancelled)
{
    if (!g_opt.log || id == 0)
        return;
    pthread_mutex_lock(&g_log_mu);
    struct rec *r = log_find(id);
    if (r != NULL) {
        if (status)
            r->status = status;
        r->done |= done;
        r->cancelled |= cancelled;
    }
    pthread_mutex_unlock(&g_log_mu);
}

/* ---- small output buffer ------------------------------------------------------------ */

struct out {
    char *data;
    size_t len, off, cap;
};

static int out_put(struct out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n)
            cap *= 2;
        if (cap > OUT_MAX * 16)
            return -1;
        char *p = realloc(o->data, cap);
        if (p == NULL)
            return -1;
        o->data = p;
        o->cap = cap;
    }
    memcpy(o->data + o->len, s, n);
    o->len += n;
    return 0;
}

static int out_printf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int out_printf(struct out *o, const char *fmt, ...)
{
    char tmp[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(tmp))
        return -1;
    return out_put(o, tmp, (size_t)n);
}

/* one HTTP/1.1 chunk */
static void out_chunk(struct out *o, const char *s, size_t n)
{
    out_printf(o, "%zx\r\n", n);
    out_put(o, s, n);
    out_put(o, "\r\n", 2);
}

/* ---- connections and timers ----------------------------------------------------------- */

enum kind { K_CHAT, K_COMPLETION, K_ANTHROPIC };

struct conn {
    int fd;
    char in[MAX_HEADER + 1];
    size_t inlen;
    char *body; /* request body being read */
    size_t body_len, body_need;
    bool have_head;
    char method[8], path[256];
    bool keepalive;
    /* per-request behaviour */
    int latency_ms, ttft_ms, interval_ms, chunks, status, retry_after, fault_after;
    char fault[16];
    bool has_api_key;                          /* Azure's api-key header */
    bool has_x_api_key, has_anthropic_version; /* Anthropic's headers */
    char hdrjson[4096];
    size_t hdrjson_len;
    /* response */
    struct out out;
    bool closing; /* close once out is flushed */
    /* stream state */
    bool streaming;
    enum kind kind;
    char model[128];
    int sent, prompt_tokens;
    int first;       /* a continuation (continue_final_message) starts at this piece */
    bool lead_space; /* ... after a prefill without its trailing space (Anthropic) */
    bool thinking;   /* Anthropic extended thinking asked for: a thinking block first */
    bool include_usage;
    char tool[64];             /* call this tool (the first declared one) */
    char tool_input[1024];     /* ... with this input (JSON) */
    size_t tool_split;         /* ... streamed in two pieces split here */
    char json_out[1024];       /* structured output: the answer is this JSON, in two pieces */
    char tool_result[256];     /* answer "tool said: " and this result */
    struct kw_heap_node tnode; /* the next stream step or delayed answer */
    uint64_t rec_id;
    bool pending_nonstream; /* a delayed non-streaming response */
    bool blocked;           /* a stream waits for the socket to drain */
    bool rst;               /* close with a TCP RST */
    char extra[512];        /* headers added to this response (rate limits) */
};

struct worker {
    int ep, lfd;
    struct kw_heap timers;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void timer_add(struct worker *w, struct conn *c, int64_t due)
{
    if (kw_heap_set(&w->timers, &c->tnode, due) != 0)
        abort();
}

static void timer_del(struct worker *w, struct conn *c)
{
    kw_heap_remove(&w->timers, &c->tnode);
}

static struct conn *conn_of(struct kw_heap_node *n)
{
    return (struct conn *)((char *)n - offsetof(struct conn, tnode));
}

static void conn_close(struct worker *w, struct conn *c, bool reset)
{
    timer_del(w, c);
    if (c->rec_id != 0 && (c->streaming || c->pending_nonstream || c->out.off < c->out.len))
        log_update(c->rec_id, 0, false, true);
    if (reset || c->rst) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    epoll_ctl(w->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->body);
    free(c->out.data);
    free(c);
}

static void want_write(struct worker *w, struct conn *c, bool on)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(w->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Write what we can; returns -1 when the connection is gone. */
static int flush_out(struct worker *w, struct conn *c)
{
    while (c->out.off < c->out.len) {
        ssize_t n = send(c->fd, c->out.data + c->out.off, c->out.len - c->out.off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out.off += (size_t)n;
            continue;
        }
        if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            want_write(w, c, true);
            return 0;
        }
        return -1;
    }
    c->out.off = c->out.len = 0;
    want_write(w, c, false);
    if (c->closing)
        return -1;
    return 0;
}

/* ---- JSON helpers --------------------------------------------------------------------- */

static int count_words(const char *s)
{
    int n = 0;
    bool in = false;
    for (; *s; s++) {
        bool sp = *s == ' ' || *s == '\n' || *s == '\t' || *s == '\r';
        if (!sp && !in)
            n++;
        in = !sp;
    }
    return n;
}

/* JSON-escape s into o (no quotes). */
static void out_json_str(struct out *o, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            out_put(o, e, 2);
        } else if (ch < 0x20) {
            out_printf(o, "\\u%04x", ch);
        } else {
            out_put(o, (const char *)&ch, 1);
        }
    }
}

/* A JSON instance of a JSON Schema (the subset structured outputs use: object properties,
 * arrays, enum/const, anyOf/oneOf, type lists), compact, at most cap bytes: what a model
 * under constrained decoding could answer. */
static void schema_instance(yajl_val sc, char *buf, size_t cap, size_t *len, int depth)
{
#define PUT(str) (*len += (size_t)snprintf(buf + *len, *len < cap ? cap - *len : 0, "%s", (str)))
    const char *p_type[] = {"type", NULL}, *p_props[] = {"properties", NULL};
    const char *p_items[] = {"items", NULL}, *p_enum[] = {"enum", NULL};
    const char *p_const[] = {"const", NULL}, *p_any[] = {"anyOf", NULL}, *p_one[] = {"oneOf", NULL};
    if (sc == NULL || !YAJL_IS_OBJECT(sc) || depth > 8 || *len >= cap) {
        PUT("null");
        return;
    }
    yajl_val e = yajl_tree_get(sc, p_const, yajl_t_any);
    if (e == NULL) {
        yajl_val en = yajl_tree_get(sc, p_enum, yajl_t_array);
        e = en != NULL && en->u.array.len > 0 ? en->u.array.values[0] : NULL;
    }
    if (e != NULL) {
        if (YAJL_IS_STRING(e)) {
            struct out o = {0};
            PUT("\"");
            out_json_str(&o, e->u.string);
            out_put(&o, "", 1);
            PUT(o.data);
            free(o.data);
            PUT("\"");
        } else if (YAJL_IS_NUMBER(e)) {
            PUT(YAJL_GET_NUMBER(e));
        } else {
            PUT(YAJL_IS_TRUE(e) ? "true" : YAJL_IS_FALSE(e) ? "false" : "null");
        }
        return;
    }
    yajl_val alt = yajl_tree_get(sc, p_any, yajl_t_array);
    if (alt == NULL)
        alt = yajl_tree_get(sc, p_one, yajl_t_array);
    if (alt != NULL && alt->u.array.len > 0) {
        schema_instance(alt->u.array.values[0], buf, cap, len, depth + 1);
        return;
    }
    yajl_val t = yajl_tree_get(sc, p_type, yajl_t_any);
    const char *type = t != NULL && YAJL_IS_STRING(t) ? t->u.string : NULL;
    for (size_t i = 0; t != NULL && YAJL_IS_ARRAY(t) && type == NULL && i < t->u.array.len; i++)
        if (YAJL_IS_STRING(t->u.array.values[i]) && strcmp(t->u.array.values[i]->u.string, "null"))
            type = t->u.array.values[i]->u.string;
    yajl_val props = yajl_tree_get(sc, p_props, yajl_t_object);
    if (type == NULL)
        type = props != NULL ? "object" : "string";
    if (strcmp(type, "object") == 0) {
        PUT("{");
        for (size_t i = 0; props != NULL && i < props->u.object.len; i++) {
            struct out k = {0};
            out_json_str(&k, props->u.object.keys[i]);
            out_put(&k, "", 1);
            PUT(i > 0 ? ",\"" : "\"");
            PUT(k.data);
            PUT("\":");
            free(k.data);
            schema_instance(props->u.object.values[i], buf, cap, len, depth + 1);
        }
        PUT("}");
    } else if (strcmp(type, "array") == 0) {
        PUT("[");
        schema_instance(yajl_tree_get(sc, p_items, yajl_t_object), buf, cap, len, depth + 1);
        PUT("]");
    } else if (strcmp(type, "integer") == 0) {
        PUT("7");
    } else if (strcmp(type, "number") == 0) {
        PUT("1.5");
    } else if (strcmp(type, "boolean") == 0) {
        PUT("true");
    } else if (strcmp(type, "null") == 0) {
        PUT("null");
    } else {
        PUT("\"tok0\"");
    }
#undef PUT
}

/* The instance of schema in dst ("" when it does not fit). */
static void set_instance(char *dst, size_t cap, yajl_val schema)
{
    size_t len = 0;
    schema_instance(schema, dst, cap, &len, 0);
    if (len >= cap)
        dst[0] = '\0';
}

/* A complete JSON response (errors carry Retry-After when asked for). Takes body's memory. */
static void send_json_status(struct conn *c, int status, struct out *body)
{
    const char *reason = status == 200   ? "OK"
                         : status == 429 ? "Too Many Requests"
                         : status >= 500 ? "Error"
                                         : "Bad Request";
    out_printf(&c->out,
               "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
               status, reason, body->len);
    if (status >= 400 && c->retry_after > 0)
        out_printf(&c->out, "Retry-After: %d\r\n", c->retry_after);
    out_printf(&c->out, "%s%s\r\n", c->extra, c->keepalive ? "" : "Connection: close\r\n");
    out_put(&c->out, body->data, body->len);
    free(body->data);
    if (!c->keepalive)
        c->closing = true;
    log_update(c->rec_id, status, true, false);
}

/* OpenAI's error shape: {"error":{"message","type","param","code"}} */
static void send_error(struct conn *c, int status, const char *type, const char *code,
                       const char *msg)
{
    struct out body = {0};
    out_printf(&body, "{\"error\":{\"message\":\"");
    out_json_str(&body, msg);
    out_printf(&body, "\",\"type\":\"%s\",\"param\":null,\"code\":%s%s%s}}", type, code ? "\"" : "",
               code ? code : "null", code ? "\"" : "");
    send_json_status(c, status, &body);
}

/* Anthropic's error shape: {"type":"error","error":{"type":"...","message":"..."}} */
static void send_anthropic_error(struct conn *c, int status, const char *type, const char *msg)
{
    struct out body = {0};
    out_printf(&body, "{\"type\":\"error\",\"error\":{\"type\":\"%s\",\"message\":\"", type);
    out_json_str(&body, msg);
    out_printf(&body, "\"}}");
    send_json_status(c, status, &body);
}

/* Azure's own error shape: {"error":{"code":"401","message":"..."}} */
static void send_azure_error(struct conn *c, int status, const char *code, const char *msg)
{
    struct out body = {0};
    out_printf(&body, "{\"error\":{\"code\":\"%s\",\"message\":\"", code);
    out_json_str(&body, msg);
    out_printf(&body, "\"}}");
    send_json_status(c, status, &body);
}

/* Azure's content filter refusal (documented shape, innererror included) */
static void send_content_filter(struct conn *c)
{
    static const char body[] =
        "{\"error\":{\"message\":\"The response was filtered due to the prompt triggering Azure "
        "OpenAI's content management policy.\",\"type\":null,\"param\":\"prompt\",\"code\":"
        "\"content_filter\",\"status\":400,\"innererror\":{\"code\":"
        "\"ResponsibleAIPolicyViolation\",\"content_filter_result\":{\"hate\":{\"filtered\":true,"
        "\"severity\":\"high\"}}}}}";
    struct out b = {0};
    out_put(&b, body, sizeof(body) - 1);
    send_json_status(c, 400, &b);
}

static void send_json(struct conn *c, const char *json, size_t len)
{
    out_printf(
        &c->out,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n%s%s\r\n", len,
        c->extra, c->keepalive ? "" : "Connection: close\r\n");
    out_put(&c->out, json, len);
    if (!c->keepalive)
        c->closing = true;
    log_update(c->rec_id, 200, true, false);
}

/* ---- endpoints ------------------------------------------------------------------------ */

static void reply_models(struct conn *c)
{
    static const char body[] =
        "{\"object\":\"list\",\"data\":[{\"id\":\"mock-model\",\"object\":\"model\",\"created\":"
        "1700000000,\"owned_by\":\"knoway-mock\"}]}";
    send_json(c, body, sizeof(body) - 1);
}

static void reply_embeddings(struct conn *c, yajl_val root)
{
    const char *p_model[] = {"model", NULL};
    const char *p_input[] = {"input", NULL};
    yajl_val model = yajl_tree_get(root, p_model, yajl_t_string);
    yajl_val input = yajl_tree_get(root, p_input, yajl_t_any);
    if (model == NULL || input == NULL) {
        send_error(c, 400, "invalid_request_error", NULL, "model and input are required");
        return;
    }
    size_t n = 1;
    int tokens = 0;
    if (YAJL_IS_ARRAY(input)) {
        n = input->u.array.len;
        for (size_t i = 0; i < n; i++)
            if (YAJL_IS_STRING(input->u.array.values[i]))
                tokens += count_words(input->u.array.values[i]->u.string);
            else
                tokens += 1;
    } else if (YAJL_IS_STRING(input)) {
        tokens = count_words(input->u.string);
    }
    struct out b = {0};
    out_printf(&b, "{\"object\":\"list\",\"data\":[");
    for (size_t i = 0; i < n; i++)
        out_printf(
            &b,
            "%s{\"object\":\"embedding\",\"index\":%zu,\"embedding\":[0.%zu1,-0.5,0.25,0.125,"
            "0.0625,-0.03125,0.015625,0.0078125]}",
            i ? "," : "", i, i % 10);
    out_printf(&b, "],\"model\":\"");
    out_json_str(&b, model->u.string);
    out_printf(&b, "\",\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}", tokens, tokens);
    send_json(c, b.data, b.len);
    free(b.data);
}

static int prompt_tokens_of(yajl_val root, enum kind kind)
{
    int tokens = 0;
    if (kind == K_COMPLETION) {
        const char *p[] = {"prompt", NULL};
        yajl_val v = yajl_tree_get(root, p, yajl_t_string);
        return v ? count_words(v->u.string) : 1;
    }
    const char *p[] = {"messages", NULL};
    yajl_val msgs = yajl_tree_get(root, p, yajl_t_array);
    for (size_t i = 0; msgs && i < msgs->u.array.len; i++) {
        const char *pc[] = {"content", NULL};
        yajl_val content = yajl_tree_get(msgs->u.array.values[i], pc, yajl_t_string);
        tokens += 3 + (content ? count_words(content->u.string) : 0);
    }
    return tokens;
}

/* The whole tool-call stream, at once: the input in two input_json_delta pieces. */
static void anthropic_tool_stream(struct conn *c)
{
    char a[2048], b[2048];
    struct out e1 = {0}, e2 = {0};
    snprintf(a, sizeof(a), "%.*s", (int)c->tool_split, c->tool_input);
    snprintf(b, sizeof(b), "%s", c->tool_input + c->tool_split);
    out_json_str(&e1, a);
    out_put(&e1, "", 1);
    out_json_str(&e2, b);
    out_put(&e2, "", 1);
    char ev[8192];
    int n = snprintf(
        ev, sizeof(ev),
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
        "\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":"
        "\"%s\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,"
        "\"output_tokens\":1}}}\n\n"
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,"
        "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_mock01\",\"name\":\"%s\","
        "\"input\":{}}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"%s\"}}\n\n"
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,"
        "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"%s\"}}\n\n"
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
        "\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":5}}\n\n"
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        c->model, c->prompt_tokens, c->tool, e1.data, e2.data);
    free(e1.data);
    free(e2.data);
    out_chunk(&c->out, ev, (size_t)n);
}

/* The text of content piece i: "tokI ", or "tool said: " and the tool result. */
static void piece(const struct conn *c, int i, char *buf, size_t cap)
{
    size_t half = strlen(c->json_out) / 2;
    if (c->json_out[0] != '\0' && i == 0)
        snprintf(buf, cap, "%.*s", (int)half, c->json_out);
    else if (c->json_out[0] != '\0')
        snprintf(buf, cap, "%s", c->json_out + half);
    else if (c->tool_result[0] != '\0')
        snprintf(buf, cap, "%s", i == 0 ? "tool said: " : c->tool_result);
    else
        snprintf(buf, cap, "tok%d ", i);
}

/* What the mock thinks when asked to (Anthropic extended thinking). */
#define MOCK_THINKING  "Thinking it over."
#define MOCK_SIGNATURE "EqQBCkYIBxgCKkBmock"
#define MOCK_THINKING_BLOCK                                                                        \
    "{\"type\":\"thinking\",\"thinking\":\"" MOCK_THINKING "\",\"signature\":\"" MOCK_SIGNATURE    \
    "\"}"

static void anthropic_event(struct conn *c, int i, bool last)
{
    char ev[2048];
    int n;
    if (c->tool[0] != '\0') {
        if (last)
            anthropic_tool_stream(c);
        return;
    }
    char text[300];
    struct out esc = {0};
    piece(c, i, text + 1, sizeof(text) - 1);
    text[0] = ' '; /* after a prefill the text goes on with the space it lacked */
    out_json_str(&esc, c->lead_space && i == c->first ? text : text + 1);
    out_put(&esc, "", 1);
    int tx = c->thinking ? 1 : 0; /* the text block's index */
    if (last) {
        n = snprintf(
            ev, sizeof(ev),
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":%d}\n\n"
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":"
            "\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":%d}}\n\n"
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            tx, c->chunks - c->first);
    } else if (i == c->first) {
        char think[768] = "";
        if (c->thinking)
            snprintf(think, sizeof(think),
                     "event: content_block_start\ndata: {\"type\":\"content_block_start\","
                     "\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n"
                     "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                     "\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":"
                     "\"" MOCK_THINKING "\"}}\n\n"
                     "event: content_block_delta\ndata: {\"type\":\"content_block_delta\","
                     "\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":"
                     "\"" MOCK_SIGNATURE "\"}}\n\n"
                     "event: content_block_stop\ndata: {\"type\":\"content_block_stop\","
                     "\"index\":0}\n\n");
        n = snprintf(
            ev, sizeof(ev),
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":"
            "\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":"
            "\"%s\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,"
            "\"cache_read_input_tokens\":2,\"cache_creation_input_tokens\":1,\"output_tokens\":1}}}"
            "\n\n%s"
            "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":%d,"
            "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
            "event: ping\ndata: {\"type\": \"ping\"}\n\n"
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":%d,"
            "\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}}\n\n",
            c->model, c->prompt_tokens, think, tx, tx, esc.data);
    } else {
        n = snprintf(
            ev, sizeof(ev),
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":%d,"
            "\"delta\":{\"type\":\"text_delta\",\"text\":\"%s\"}}\n\n",
            tx, esc.data);
    }
    free(esc.data);
    out_chunk(&c->out, ev, (size_t)n);
}

static void chunk_event(struct conn *c, int i, bool last)
{
    char ev[1024];
    int n;
    if (c->kind == K_ANTHROPIC) {
        anthropic_event(c, i, last);
        return;
    }
    if (c->kind == K_CHAT && last) {
        n = snprintf(ev, sizeof(ev),
                     "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1700000000,\"model\":\"%s\",\"choices\":[{\"index\":0,"
                     "\"delta\":{},\"finish_reason\":\"%s\"}]}\n\n",
                     c->model, c->tool[0] != '\0' ? "tool_calls" : "stop");
    } else if (c->kind == K_CHAT && c->tool[0] != '\0') {
        static const char *const args[] = {"", "{\\\"city\\\": ", "\\\"Paris\\\"}"};
        char call[256];
        if (i == 0)
            snprintf(call, sizeof(call),
                     "\"id\":\"call_mock01\",\"type\":\"function\",\"function\":{\"name\":"
                     "\"%s\",\"arguments\":\"\"}",
                     c->tool);
        else
            snprintf(call, sizeof(call), "\"function\":{\"arguments\":\"%s\"}", args[i % 3]);
        n = snprintf(ev, sizeof(ev),
                     "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1700000000,\"model\":\"%s\",\"choices\":[{\"index\":0,"
                     "\"delta\":{%s\"tool_calls\":[{\"index\":0,%s}]},\"finish_reason\":null}]}"
                     "\n\n",
                     c->model, i == 0 ? "\"role\":\"assistant\",\"content\":null," : "", call);
    } else if (c->kind == K_CHAT) {
        char text[300];
        struct out esc = {0};
        piece(c, i, text, sizeof(text));
        out_json_str(&esc, text);
        out_put(&esc, "", 1);
        n = snprintf(ev, sizeof(ev),
                     "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\","
                     "\"created\":1700000000,\"model\":\"%s\",\"choices\":[{\"index\":0,"
                     "\"delta\":{%s\"content\":\"%s\"},\"finish_reason\":null}]}\n\n",
                     c->model, i == 0 ? "\"role\":\"assistant\"," : "", esc.data);
        free(esc.data);
    } else {
        char text[32] = "";
        if (!last)
            snprintf(text, sizeof(text), "tok%d ", i);
        n = snprintf(ev, sizeof(ev),
                     "data: {\"id\":\"cmpl-mock\",\"object\":\"text_completion\",\"created\":"
                     "1700000000,\"model\":\"%s\",\"choices\":[{\"index\":0,\"text\":\"%s\","
                     "\"logprobs\":null,\"finish_reason\":%s}]}\n\n",
                     c->model, text, last ? "\"stop\"" : "null");
    }
    out_chunk(&c->out, ev, (size_t)n);
}

static void usage_event(struct conn *c)
{
    char ev[512];
    int n =
        snprintf(ev, sizeof(ev),
                 "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":1700000000,\"model\":\"%s\","
                 "\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                 "\"total_tokens\":%d,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n",
                 c->kind == K_CHAT ? "chatcmpl-mock" : "cmpl-mock",
                 c->kind == K_CHAT ? "chat.completion.chunk" : "text_completion", c->model,
                 c->prompt_tokens, c->chunks - c->first, c->prompt_tokens + c->chunks - c->first);
    out_chunk(&c->out, ev, (size_t)n);
}

/* The chunked body's end: the stream is over. Returns what flush_out does. */
static int end_body(struct worker *w, struct conn *c)
{
    out_put(&c->out, "0\r\n\r\n", 5);
    c->streaming = false;
    log_update(c->rec_id, 200, true, false);
    if (!c->keepalive)
        c->closing = true;
    return flush_out(w, c);
}

/* Called when a stream timer fires: emit the next piece. Returns -1 to close. */
static int stream_step(struct worker *w, struct conn *c)
{
    if (c->sent == -1) { /* headers */
        out_printf(&c->out,
                   "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                   "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n%s\r\n",
                   c->extra);
        c->sent = c->first;
        timer_add(w, c, now_ms() + c->ttft_ms);
        return flush_out(w, c);
    }
    if (c->out.off < c->out.len) { /* the peer is slow: continue when the socket drains */
        c->blocked = true;
        return 0;
    }
    bool faulty = c->fault[0] != '\0' && c->sent == c->fault_after;
    if (faulty && strcmp(c->fault, "reset") == 0) {
        if (flush_out(w, c) < 0)
            return -1;
        conn_close(w, c, true);
        return 1; /* already closed */
    }
    if (faulty && strcmp(c->fault, "close") == 0) {
        c->closing = true;
        c->streaming = false;
        log_update(c->rec_id, 200, true, false);
        return flush_out(w, c) < 0 ? -1 : -1;
    }
    if (faulty && strcmp(c->fault, "stall") == 0)
        return flush_out(w, c); /* no further timer: stalls until the peer leaves */
    if (faulty && strcmp(c->fault, "error") == 0) {
        /* an error event mid-stream (OpenAI sends one when a model is overloaded), then the
         * end of the body */
        static const char ev[] = "data: {\"error\":{\"message\":\"The server had an error while "
                                 "processing your request.\",\"type\":\"server_error\","
                                 "\"param\":null,\"code\":null}}\n\n";
        out_chunk(&c->out, ev, sizeof(ev) - 1);
        return end_body(w, c);
    }
    if (faulty && strcmp(c->fault, "malformed") == 0) {
        static const char bad[] = "data: {\"id\":\"chatcmpl-mock\",\"choices\":[{\"delta\":\n\n";
        out_chunk(&c->out, bad, sizeof(bad) - 1);
        c->fault[0] = '\0';
    }
    if (c->sent < c->chunks) {
        chunk_event(c, c->sent, false);
        c->sent++;
        if (c->sent < c->chunks) {
            timer_add(w, c, now_ms() + c->interval_ms);
            return flush_out(w, c);
        }
    }
    /* end of stream */
    chunk_event(c, c->sent, true);
    if (c->include_usage && c->kind != K_ANTHROPIC)
        usage_event(c);
    static const char done[] = "data: [DONE]\n\n";
    if (c->kind != K_ANTHROPIC) /* Anthropic streams end with message_stop */
        out_chunk(&c->out, done, sizeof(done) - 1);
    return end_body(w, c);
}

static void reply_completion_body(struct conn *c)
{
    struct out b = {0};
    struct out text = {0};
    for (int i = 0; i < c->chunks; i++) {
        char p[300];
        piece(c, i, p, sizeof(p));
        out_json_str(&text, p);
    }
    out_put(&text, "", 1);
    if (c->kind == K_ANTHROPIC && c->tool[0] != '\0') {
        out_printf(
            &b,
            "{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":"
            "\"%s\",\"content\":[{\"type\":\"tool_use\",\"id\":\"toolu_mock01\",\"name\":\"%s\","
            "\"input\":%s}],\"stop_reason\":\"tool_use\",\"stop_sequence\":"
            "null,\"usage\":{\"input_tokens\":%d,\"output_tokens\":5}}",
            c->model, c->tool, c->tool_input, c->prompt_tokens);
        send_json(c, b.data, b.len);
        free(b.data);
        free(text.data);
        return;
    }
    if (c->kind == K_ANTHROPIC) {
        out_printf(
            &b,
            "{\"id\":\"msg_mock\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"%s\","
            "\"content\":[%s{\"type\":\"text\",\"text\":\"%s\"}],\"stop_reason\":\"end_turn\","
            "\"stop_sequence\":null,\"usage\":{\"input_tokens\":%d,\"cache_read_input_tokens\":2,"
            "\"cache_creation_input_tokens\":1,\"output_tokens\":%d}}",
            c->model, c->thinking ? MOCK_THINKING_BLOCK "," : "", text.data, c->prompt_tokens,
            c->chunks);
        send_json(c, b.data, b.len);
        free(b.data);
        free(text.data);
        return;
    }
    if (c->kind == K_CHAT && c->tool[0] != '\0')
        out_printf(&b,
                   "{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":"
                   "1700000000,\"model\":\"%s\",\"choices\":[{\"index\":0,\"message\":{"
                   "\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":"
                   "\"call_mock01\",\"type\":\"function\",\"function\":{\"name\":\"%s\","
                   "\"arguments\":\"{\\\"city\\\": \\\"Paris\\\"}\"}}]},\"logprobs\":null,"
                   "\"finish_reason\":\"tool_calls\"}],",
                   c->model, c->tool);
    else if (c->kind == K_CHAT)
        out_printf(
            &b,
            "{\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion\",\"created\":1700000000,"
            "\"model\":\"%s\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
            "\"content\":\"%s\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],",
            c->model, text.data);
    else
        out_printf(&b,
                   "{\"id\":\"cmpl-mock\",\"object\":\"text_completion\",\"created\":1700000000,"
                   "\"model\":\"%s\",\"choices\":[{\"index\":0,\"text\":\"%s\",\"logprobs\":null,"
                   "\"finish_reason\":\"stop\"}],",
                   c->model, text.data);
    out_printf(&b,
               "\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d,"
               "\"prompt_tokens_details\":{\"cached_tokens\":0}}}",
               c->prompt_tokens, c->chunks, c->prompt_tokens + c->chunks);
    send_json(c, b.data, b.len);
    free(b.data);
    free(text.data);
}

/* Copy a string into a fixed field with the characters our JSON templates cannot hold
 * replaced. */
static void set_plain(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s);
    for (char *q = dst; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
            *q = '_';
}

/* Chat tool calls: check that tool messages answer the preceding assistant's tool_calls (as
 * OpenAI does), and decide what to do: call the first tool (c->tool) or answer the tool's
 * result (c->tool_result). An error message, or NULL. */
static const char *chat_tools(struct conn *c, yajl_val root, yajl_val msgs)
{
    const char *p_role[] = {"role", NULL}, *p_calls[] = {"tool_calls", NULL};
    const char *p_id[] = {"id", NULL}, *p_tcid[] = {"tool_call_id", NULL};
    const char *p_content[] = {"content", NULL};
    char pending[16][64];
    size_t npending = 0;
    bool last_tool = false;
    for (size_t i = 0; i < msgs->u.array.len; i++) {
        yajl_val m = msgs->u.array.values[i];
        yajl_val role = yajl_tree_get(m, p_role, yajl_t_string);
        bool is_tool = role != NULL && strcmp(role->u.string, "tool") == 0;
        if (!is_tool && npending > 0)
            return "An assistant message with 'tool_calls' must be followed by tool messages "
                   "responding to each 'tool_call_id'.";
        last_tool = is_tool;
        if (is_tool) {
            yajl_val id = yajl_tree_get(m, p_tcid, yajl_t_string);
            size_t k = 0;
            while (id != NULL && k < npending && strcmp(pending[k], id->u.string) != 0)
                k++;
            if (id == NULL || k == npending)
                return "Invalid parameter: messages with role 'tool' must be a response to a "
                       "preceeding message with 'tool_calls'.";
            memmove(pending[k], pending[k + 1], (npending - k - 1) * sizeof(pending[0]));
            npending--;
            yajl_val content = yajl_tree_get(m, p_content, yajl_t_string);
            set_plain(c->tool_result, sizeof(c->tool_result), content ? content->u.string : "");
            continue;
        }
        yajl_val calls = yajl_tree_get(m, p_calls, yajl_t_array);
        for (size_t j = 0; calls != NULL && j < calls->u.array.len && npending < 16; j++) {
            yajl_val id = yajl_tree_get(calls->u.array.values[j], p_id, yajl_t_string);
            if (id == NULL)
                return "Missing required parameter: 'messages.tool_calls.id'.";
            snprintf(pending[npending++], sizeof(pending[0]), "%s", id->u.string);
        }
    }
    if (npending > 0)
        return "An assistant message with 'tool_calls' must be followed by tool messages "
               "responding to each 'tool_call_id'.";
    if (!last_tool)
        c->tool_result[0] = '\0';
    const char *p_tools[] = {"tools", NULL}, *p_name[] = {"function", "name", NULL};
    yajl_val tools = yajl_tree_get(root, p_tools, yajl_t_array);
    if (!last_tool && tools != NULL && tools->u.array.len > 0) {
        yajl_val name = yajl_tree_get(tools->u.array.values[0], p_name, yajl_t_string);
        if (name == NULL)
            return "Missing required parameter: 'tools[0].function.name'.";
        set_plain(c->tool, sizeof(c->tool), name->u.string);
    }
    return NULL;
}

/* continue_final_message: which piece the final assistant message ends before, or -1 when
 * it is not a prefix of what this mock generates. */
static int continuation_start(const struct conn *c, yajl_val msgs)
{
    const char *p_role[] = {"role", NULL}, *p_content[] = {"content", NULL};
    size_t n = msgs->u.array.len;
    yajl_val last = n > 0 ? msgs->u.array.values[n - 1] : NULL;
    yajl_val role = last != NULL ? yajl_tree_get(last, p_role, yajl_t_string) : NULL;
    yajl_val content = last != NULL ? yajl_tree_get(last, p_content, yajl_t_string) : NULL;
    if (role == NULL || strcmp(role->u.string, "assistant") != 0 || content == NULL)
        return -1;
    const char *have = content->u.string;
    size_t off = 0, len = strlen(have);
    for (int k = 0; k <= c->chunks; k++) {
        if (off == len)
            return k;
        char piece[32];
        int pl = snprintf(piece, sizeof(piece), "tok%d ", k);
        if (len - off < (size_t)pl || memcmp(have + off, piece, (size_t)pl) != 0)
            return -1;
        off += (size_t)pl;
    }
    return -1;
}

static void reply_completion(struct worker *w, struct conn *c, yajl_val root, enum kind kind)
{
    const char *p_model[] = {"model", NULL};
    const char *p_stream[] = {"stream", NULL};
    const char *p_usage[] = {"stream_options", "include_usage", NULL};
    yajl_val model = yajl_tree_get(root, p_model, yajl_t_string);
    if (model == NULL) {
        send_error(c, 400, "invalid_request_error", NULL, "you must provide a model parameter");
        return;
    }
    c->tool[0] = c->tool_result[0] = c->json_out[0] = '\0';
    if (kind == K_CHAT) { /* structured outputs: the answer is an instance of the schema */
        const char *p_rft[] = {"response_format", "type", NULL};
        const char *p_rfs[] = {"response_format", "json_schema", "schema", NULL};
        yajl_val rft = yajl_tree_get(root, p_rft, yajl_t_string);
        if (rft != NULL && strcmp(rft->u.string, "json_schema") == 0)
            set_instance(c->json_out, sizeof(c->json_out),
                         yajl_tree_get(root, p_rfs, yajl_t_object));
        else if (rft != NULL && strcmp(rft->u.string, "json_object") == 0)
            snprintf(c->json_out, sizeof(c->json_out), "{\"answer\":\"tok0\"}");
    }
    if (kind == K_CHAT) {
        const char *p_msgs[] = {"messages", NULL};
        yajl_val msgs = yajl_tree_get(root, p_msgs, yajl_t_array);
        if (msgs == NULL) {
            send_error(c, 400, "invalid_request_error", NULL, "messages is required");
            return;
        }
        const char *problem = chat_tools(c, root, msgs);
        if (problem != NULL) {
            send_error(c, 400, "invalid_request_error", NULL, problem);
            return;
        }
    }
    c->first = 0;
    const char *p_cont[] = {"continue_final_message", NULL};
    yajl_val cont = yajl_tree_get(root, p_cont, yajl_t_any);
    if (kind == K_CHAT && cont != NULL && YAJL_IS_TRUE(cont)) {
        const char *p_msgs[] = {"messages", NULL};
        int k = continuation_start(c, yajl_tree_get(root, p_msgs, yajl_t_array));
        if (k < 0) {
            send_error(c, 400, "invalid_request_error", "prefill_mismatch",
                       "prefill mismatch: the final assistant message is not what was "
                       "generated so far");
            return;
        }
        c->first = k;
    }
    c->kind = kind;
    snprintf(c->model, sizeof(c->model), "%s", model->u.string);
    for (char *p = c->model; *p; p++)
        if (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20)
            *p = '_';
    c->prompt_tokens = prompt_tokens_of(root, kind);
    if (c->tool[0] != '\0')
        c->chunks = 3; /* the call, then its arguments in two pieces */
    else if (c->tool_result[0] != '\0' || c->json_out[0] != '\0')
        c->chunks = 2; /* "tool said: " and the result; a JSON answer in two pieces */
    yajl_val stream = yajl_tree_get(root, p_stream, yajl_t_any);
    yajl_val usage = yajl_tree_get(root, p_usage, yajl_t_any);
    c->include_usage = usage != NULL && YAJL_IS_TRUE(usage);
    if (stream != NULL && YAJL_IS_TRUE(stream)) {
        c->streaming = true;
        c->sent = -1;
        timer_add(w, c, now_ms() + c->latency_ms);
        return;
    }
    if (c->latency_ms > 0) {
        c->pending_nonstream = true;
        timer_add(w, c, now_ms() + c->latency_ms);
        return;
    }
    reply_completion_body(c);
}

/* Anthropic Messages API: validated as the real API does, then answered like chat. */
static void reply_anthropic(struct worker *w, struct conn *c)
{
    if (!c->has_x_api_key) {
        send_anthropic_error(c, 401, "authentication_error", "x-api-key header is required");
        return;
    }
    if (!c->has_anthropic_version) {
        send_anthropic_error(c, 400, "invalid_request_error",
                             "anthropic-version: header is required");
        return;
    }
    if (c->status > 0) {
        send_anthropic_error(c, c->status, c->status == 529 ? "overloaded_error" : "api_error",
                             "mock error");
        return;
    }
    char err[256];
    yajl_val root = yajl_tree_parse(c->body ? c->body : "", err, sizeof(err));
    const char *p_model[] = {"model", NULL}, *p_max[] = {"max_tokens", NULL};
    const char *p_msgs[] = {"messages", NULL}, *p_sys[] = {"system", NULL};
    const char *p_stream[] = {"stream", NULL};
    yajl_val model = root ? yajl_tree_get(root, p_model, yajl_t_string) : NULL;
    yajl_val max = root ? yajl_tree_get(root, p_max, yajl_t_number) : NULL;
    yajl_val msgs = root ? yajl_tree_get(root, p_msgs, yajl_t_array) : NULL;
    const char *problem = root == NULL    ? "invalid JSON"
                          : model == NULL ? "model: Field required"
                          : max == NULL   ? "max_tokens: Field required"
                          : msgs == NULL || msgs->u.array.len == 0
                              ? "messages: at least one message is required"
                              : NULL;
    int tokens = 0;
    for (size_t i = 0; problem == NULL && i < msgs->u.array.len; i++) {
        const char *p_role[] = {"role", NULL}, *p_content[] = {"content", NULL};
        yajl_val role = yajl_tree_get(msgs->u.array.values[i], p_role, yajl_t_string);
        yajl_val content = yajl_tree_get(msgs->u.array.values[i], p_content, yajl_t_any);
        if (role == NULL ||
            (strcmp(role->u.string, "user") != 0 && strcmp(role->u.string, "assistant") != 0))
            problem = "messages: Unexpected role. The Messages API accepts a top-level `system` "
                      "parameter, not \"system\" as an input message role.";
        else if (content == NULL)
            problem = "messages: content: Field required";
        else
            tokens += 3 + (YAJL_IS_STRING(content) ? count_words(content->u.string) : 1);
    }
    if (problem != NULL) {
        send_anthropic_error(c, 400, "invalid_request_error", problem);
        yajl_tree_free(root);
        return;
    }
    yajl_val sys = yajl_tree_get(root, p_sys, yajl_t_string);
    if (sys != NULL)
        tokens += count_words(sys->u.string);
    c->tool[0] = c->tool_result[0] = c->json_out[0] = '\0';
    snprintf(c->tool_input, sizeof(c->tool_input), "{\"city\": \"Paris\"}");
    c->tool_split = 9;
    const char *p_tools[] = {"tools", NULL}, *p_name[] = {"name", NULL};
    const char *p_content[] = {"content", NULL}, *p_type[] = {"type", NULL};
    yajl_val tools = yajl_tree_get(root, p_tools, yajl_t_array);
    yajl_val last =
        yajl_tree_get(msgs->u.array.values[msgs->u.array.len - 1], p_content, yajl_t_any);
    for (size_t i = 0; last != NULL && YAJL_IS_ARRAY(last) && i < last->u.array.len; i++) {
        yajl_val t = yajl_tree_get(last->u.array.values[i], p_type, yajl_t_string);
        yajl_val rc = yajl_tree_get(last->u.array.values[i], p_content, yajl_t_string);
        if (t != NULL && strcmp(t->u.string, "tool_result") == 0)
            snprintf(c->tool_result, sizeof(c->tool_result), "%s", rc ? rc->u.string : "");
    }
    if (c->tool_result[0] == '\0' && tools != NULL && tools->u.array.len > 0) {
        yajl_val name = yajl_tree_get(tools->u.array.values[0], p_name, yajl_t_string);
        if (name == NULL) {
            send_anthropic_error(c, 400, "invalid_request_error", "tools.0.name: Field required");
            yajl_tree_free(root);
            return;
        }
        snprintf(c->tool, sizeof(c->tool), "%s", name->u.string);
        for (char *q = c->tool; *q; q++)
            if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
                *q = '_';
    }
    /* tool_choice {type: tool, name}: that tool, its input an instance of its input_schema
     * (structured outputs by the forced-tool method); output_config.format: the text is an
     * instance of the schema (native structured outputs) */
    const char *p_tct[] = {"tool_choice", "type", NULL}, *p_tcn[] = {"tool_choice", "name", NULL};
    const char *p_ischema[] = {"input_schema", NULL};
    const char *p_oft[] = {"output_config", "format", "type", NULL};
    const char *p_ofs[] = {"output_config", "format", "schema", NULL};
    yajl_val tct = yajl_tree_get(root, p_tct, yajl_t_string);
    yajl_val tcn = yajl_tree_get(root, p_tcn, yajl_t_string);
    yajl_val oft = yajl_tree_get(root, p_oft, yajl_t_string);
    bool forced =
        tct != NULL && (strcmp(tct->u.string, "tool") == 0 || strcmp(tct->u.string, "any") == 0);
    if (forced && c->tool_result[0] == '\0') {
        yajl_val chosen = NULL;
        for (size_t i = 0; tools != NULL && i < tools->u.array.len && chosen == NULL; i++) {
            yajl_val nm = yajl_tree_get(tools->u.array.values[i], p_name, yajl_t_string);
            if (nm != NULL && (strcmp(tct->u.string, "any") == 0 ||
                               (tcn != NULL && strcmp(nm->u.string, tcn->u.string) == 0)))
                chosen = tools->u.array.values[i];
        }
        if (chosen == NULL) {
            send_anthropic_error(c, 400, "invalid_request_error",
                                 "tool_choice: the tool named is not among the tools");
            yajl_tree_free(root);
            return;
        }
        yajl_val nm = yajl_tree_get(chosen, p_name, yajl_t_string);
        set_plain(c->tool, sizeof(c->tool), nm->u.string);
        set_instance(c->tool_input, sizeof(c->tool_input),
                     yajl_tree_get(chosen, p_ischema, yajl_t_object));
        c->tool_split = strlen(c->tool_input) / 2;
    }
    if (oft != NULL && strcmp(oft->u.string, "json_schema") == 0 && c->tool[0] == '\0')
        set_instance(c->json_out, sizeof(c->json_out), yajl_tree_get(root, p_ofs, yajl_t_object));
    /* a final assistant message is a prefill: Anthropic refuses trailing whitespace and
     * continues right after it; it must be what this mock generated so far */
    const char *p_role[] = {"role", NULL}, *p_text[] = {"text", NULL};
    yajl_val lastm = msgs->u.array.values[msgs->u.array.len - 1];
    yajl_val lrole = yajl_tree_get(lastm, p_role, yajl_t_string);
    if (lrole != NULL && strcmp(lrole->u.string, "assistant") == 0 && last != NULL) {
        char pre[4096] = "";
        size_t pl = 0;
        if (YAJL_IS_STRING(last))
            pl = (size_t)snprintf(pre, sizeof(pre), "%s", last->u.string);
        for (size_t i = 0; YAJL_IS_ARRAY(last) && i < last->u.array.len && pl < sizeof(pre); i++) {
            yajl_val t = yajl_tree_get(last->u.array.values[i], p_text, yajl_t_string);
            if (t != NULL)
                pl += (size_t)snprintf(pre + pl, sizeof(pre) - pl, "%s", t->u.string);
        }
        if (pl > 0 && (pre[pl - 1] == ' ' || pre[pl - 1] == '\n')) {
            send_anthropic_error(c, 400, "invalid_request_error",
                                 "messages: final assistant content cannot end with trailing "
                                 "whitespace");
            yajl_tree_free(root);
            return;
        }
        if (pl > 0) {
            int k = -1;
            size_t off = 0;
            for (int i = 0; i < c->chunks && off <= pl; i++) {
                char piece_text[32];
                int n = snprintf(piece_text, sizeof(piece_text), "tok%d", i);
                if (pl - off < (size_t)n || memcmp(pre + off, piece_text, (size_t)n) != 0)
                    break;
                off += (size_t)n;
                if (off == pl) {
                    k = i + 1;
                    break;
                }
                if (pre[off] != ' ')
                    break;
                off++;
            }
            if (k < 0) {
                send_anthropic_error(c, 400, "invalid_request_error",
                                     "prefill mismatch: the final assistant message is not what "
                                     "was generated so far");
                yajl_tree_free(root);
                return;
            }
            c->first = k;
            c->lead_space = true;
        }
    }
    /* extended thinking: validated as Anthropic does; the answer then starts with a
     * thinking block (text replies) */
    const char *p_thinking_type[] = {"thinking", "type", NULL};
    const char *p_budget[] = {"thinking", "budget_tokens", NULL};
    yajl_val ttype = yajl_tree_get(root, p_thinking_type, yajl_t_string);
    yajl_val budget = yajl_tree_get(root, p_budget, yajl_t_number);
    c->thinking = ttype != NULL && strcmp(ttype->u.string, "enabled") == 0;
    if (c->thinking && (budget == NULL || YAJL_GET_INTEGER(budget) < 1024 ||
                        YAJL_GET_INTEGER(budget) >= YAJL_GET_INTEGER(max))) {
        send_anthropic_error(c, 400, "invalid_request_error",
                             budget == NULL || YAJL_GET_INTEGER(budget) < 1024
                                 ? "thinking.enabled.budget_tokens: Input should be greater "
                                   "than or equal to 1024"
                                 : "`max_tokens` must be greater than `thinking.budget_tokens`");
        yajl_tree_free(root);
        return;
    }
    if (c->thinking && forced) {
        send_anthropic_error(c, 400, "invalid_request_error",
                             "Thinking may not be enabled when tool_choice forces tool use.");
        yajl_tree_free(root);
        return;
    }
    if (c->tool[0] != '\0')
        c->thinking = false; /* the mock's tool turns carry no thinking */
    c->kind = K_ANTHROPIC;
    snprintf(c->model, sizeof(c->model), "%s", model->u.string);
    for (char *q = c->model; *q; q++)
        if (*q == '"' || *q == '\\' || (unsigned char)*q < 0x20)
            *q = '_';
    c->prompt_tokens = tokens;
    if (c->tool_result[0] != '\0' || c->json_out[0] != '\0')
        c->chunks = 2; /* "tool said: " and the result; a JSON answer in two pieces */
    yajl_val stream = yajl_tree_get(root, p_stream, yajl_t_any);
    bool streaming = stream != NULL && YAJL_IS_TRUE(stream);
    yajl_tree_free(root);
    if (streaming) {
        c->streaming = true;
        c->sent = -1;
        timer_add(w, c, now_ms() + c->latency_ms);
        return;
    }
    reply_completion_body(c);
}

static void reply_log(struct conn *c)
{
    struct out b = {0};
    out_put(&b, "[", 1);
    pthread_mutex_lock(&g_log_mu);
    for (size_t i = 0; i < g_log_n; i++) {
        struct rec *r = &g_log[(g_log_start + i) % MAX_LOG];
        out_printf(&b, "%s{\"id\":%llu,\"method\":\"%s\",\"path\":\"", i ? "," : "",
                   (unsigned long long)r->id, r->method);
        out_json_str(&b, r->path);
        out_printf(&b, "\",\"status\":%d,\"done\":%s,\"cancelled\":%s,\"headers\":%s,\"body\":\"",
                   r->status, r->done ? "true" : "false", r->cancelled ? "true" : "false",
                   r->headers ? r->headers : "{}");
        out_json_str(&b, r->body ? r->body : "");
        out_put(&b, "\"}", 2);
    }
    pthread_mutex_unlock(&g_log_mu);
    out_put(&b, "]", 1);
    send_json(c, b.data, b.len);
    free(b.data);
}

static void clear_log(struct conn *c)
{
    pthread_mutex_lock(&g_log_mu);
    for (size_t i = 0; i < g_log_n; i++) {
        struct rec *r = &g_log[(g_log_start + i) % MAX_LOG];
        free(r->headers);
        free(r->body);
        memset(r, 0, sizeof(*r));
    }
    g_log_n = g_log_start = 0;
    pthread_mutex_unlock(&g_log_mu);
    send_json(c, "{}", 2);
}

static void record(struct conn *c)
{
    if (!g_opt.log || strncmp(c->path, "/_mock", 6) == 0)
        return;
    pthread_mutex_lock(&g_log_mu);
    if (g_log_n == MAX_LOG) {
        struct rec *old = &g_log[g_log_start];
        free(old->headers);
        free(old->body);
        g_log_start = (g_log_start + 1) % MAX_LOG;
        g_log_n--;
    }
    struct rec *r = &g_log[(g_log_start + g_log_n) % MAX_LOG];
    g_log_n++;
    memset(r, 0, sizeof(*r));
    r->id = g_next_id++;
    snprintf(r->method, sizeof(r->method), "%s", c->method);
    snprintf(r->path, sizeof(r->path), "%s", c->path);
    size_t bl = c->body_len < LOG_BODY_MAX ? c->body_len : LOG_BODY_MAX;
    r->body = malloc(bl + 1);
    if (r->body) {
        memcpy(r->body, c->body ? c->body : "", bl);
        r->body[bl] = '\0';
    }
    r->headers = malloc(c->hdrjson_len + 3);
    if (r->headers) {
        r->headers[0] = '{';
        memcpy(r->headers + 1, c->hdrjson, c->hdrjson_len);
        r->headers[c->hdrjson_len + 1] = '}';
        r->headers[c->hdrjson_len + 2] = '\0';
    }
    c->rec_id = r->id;
    pthread_mutex_unlock(&g_log_mu);
}

static void reply_stats(struct conn *c)
{
    struct out b = {0};
    pthread_mutex_lock(&g_beh_mu);
    if (strcmp(c->method, "DELETE") == 0)
        g_hits = g_errors = 0;
    out_printf(&b, "{\"requests\":%ld,\"errors\":%ld}", g_hits, g_errors);
    pthread_mutex_unlock(&g_beh_mu);
    send_json(c, b.data, b.len);
    free(b.data);
}

static double num(yajl_val root, const char *key, double dflt)
{
    const char *p[] = {key, NULL};
    yajl_val v = yajl_tree_get(root, p, yajl_t_number);
    return v != NULL ? YAJL_GET_DOUBLE(v) : dflt;
}

/* A behaviour from JSON; 0, or -1 when it is not a JSON object. */
static int behaviour_parse(const char *json, struct behaviour *b)
{
    char err[128];
    yajl_val root = yajl_tree_parse(json, err, sizeof(err));
    if (root == NULL || !YAJL_IS_OBJECT(root)) {
        yajl_tree_free(root);
        return -1;
    }
    b->latency_ms = (int)num(root, "latency_ms", -1);
    b->ttft_ms = (int)num(root, "ttft_ms", -1);
    b->status = (int)num(root, "status", 0);
    b->retry_after = (int)num(root, "retry_after", 0);
    b->retry_after_ms = (int)num(root, "retry_after_ms", 0);
    b->fail_rate = num(root, "fail_rate", 0);
    b->fail_status = (int)num(root, "fail_status", 500);
    b->fault_after = (int)num(root, "fault_after", 1);
    b->quota_requests = (long)num(root, "quota_requests", -1);
    b->quota_tokens = (long)num(root, "quota_tokens", -1);
    b->quota_reset_ms = (int)num(root, "quota_reset_ms", 60000);
    const char *pf[] = {"fault", NULL};
    yajl_val f = yajl_tree_get(root, pf, yajl_t_string);
    snprintf(b->fault, sizeof(b->fault), "%s", f != NULL ? f->u.string : "");
    yajl_tree_free(root);
    return 0;
}

static void reply_behaviour(struct conn *c)
{
    struct behaviour b;
    if (behaviour_parse(c->body != NULL ? c->body : "", &b) != 0) {
        send_error(c, 400, "invalid_request_error", NULL, "the behaviour must be a JSON object");
        return;
    }
    pthread_mutex_lock(&g_beh_mu);
    g_beh = b;
    g_quota_used_req = g_quota_used_tok = 0;
    g_quota_window = now_ms();
    pthread_mutex_unlock(&g_beh_mu);
    send_json(c, "{}", 2);
}

/* An inference request arrived: count it, apply the fail rate and the quota (its
 * rate-limit headers go on whatever answer follows). */
static void instance_gate(struct conn *c)
{
    pthread_mutex_lock(&g_beh_mu);
    g_hits++;
    if (c->status == 0 && g_beh.fail_rate > 0) {
        g_rnd ^= g_rnd << 13, g_rnd ^= g_rnd >> 7, g_rnd ^= g_rnd << 17;
        if ((double)(g_rnd % 1000000) / 1e6 < g_beh.fail_rate)
            c->status = g_beh.fail_status;
    }
    if (g_beh.quota_requests >= 0 || g_beh.quota_tokens >= 0) {
        int64_t now = now_ms();
        if (now - g_quota_window >= g_beh.quota_reset_ms) {
            g_quota_window = now;
            g_quota_used_req = g_quota_used_tok = 0;
        }
        int64_t left_ms = g_beh.quota_reset_ms - (now - g_quota_window);
        bool over = (g_beh.quota_requests >= 0 && g_quota_used_req >= g_beh.quota_requests) ||
                    (g_beh.quota_tokens >= 0 && g_quota_used_tok >= g_beh.quota_tokens);
        if (!over) {
            g_quota_used_req++;
            g_quota_used_tok += c->chunks + 16; /* about what the answer costs */
        } else if (c->status == 0) {
            c->status = 429;
            c->retry_after = (int)((left_ms + 999) / 1000);
        }
        long rem_req = g_beh.quota_requests >= 0 ? g_beh.quota_requests - g_quota_used_req : 0;
        long rem_tok = g_beh.quota_tokens >= 0 ? g_beh.quota_tokens - g_quota_used_tok : 0;
        snprintf(c->extra, sizeof(c->extra),
                 "x-ratelimit-limit-requests: %ld\r\nx-ratelimit-remaining-requests: %ld\r\n"
                 "x-ratelimit-reset-requests: %lldms\r\nx-ratelimit-limit-tokens: %ld\r\n"
                 "x-ratelimit-remaining-tokens: %ld\r\nx-ratelimit-reset-tokens: %lldms\r\n",
                 g_beh.quota_requests >= 0 ? g_beh.quota_requests : 1000000,
                 rem_req < 0                 ? 0
                 : g_beh.quota_requests >= 0 ? rem_req
                                             : 1000000,
                 (long long)left_ms, g_beh.quota_tokens >= 0 ? g_beh.quota_tokens : 100000000,
                 rem_tok < 0               ? 0
                 : g_beh.quota_tokens >= 0 ? rem_tok
                                           : 100000000,
                 (long long)left_ms);
    }
    if (c->status >= 400) {
        g_errors++;
        if (g_beh.retry_after_ms > 0) {
            size_t n = strlen(c->extra);
            snprintf(c->extra + n, sizeof(c->extra) - n, "retry-after-ms: %d\r\n",
                     g_beh.retry_after_ms);
        }
    }
    pthread_mutex_unlock(&g_beh_mu);
}

static void dispatch(struct worker *w, struct conn *c)
{
    record(c);
    if (strcmp(c->path, "/_mock/stats") == 0) {
        reply_stats(c);
        return;
    }
    if (strcmp(c->path, "/_mock/behaviour") == 0 && strcmp(c->method, "PUT") == 0) {
        reply_behaviour(c);
        return;
    }
    if (strncmp(c->path, "/_mock/", 7) != 0 && strcmp(c->method, "POST") == 0)
        instance_gate(c);
    if (strcmp(c->fault, "reset") == 0 && c->fault_after < 0) { /* before any response byte */
        c->rst = true;
        c->closing = true;
        return;
    }
    if (strcmp(c->path, "/v1/messages") == 0) {
        reply_anthropic(w, c);
        return;
    }
    if (c->status > 0 && strncmp(c->path, "/v1/", 4) == 0) {
        char msg[128];
        snprintf(msg, sizeof(msg), "mock error with status %d", c->status);
        const char *type = c->status == 429   ? "rate_limit_exceeded"
                           : c->status == 401 ? "invalid_request_error"
                           : c->status >= 500 ? "server_error"
                                              : "invalid_request_error";
        send_error(c, c->status, type, c->status == 429 ? "rate_limit_exceeded" : NULL, msg);
        return;
    }
    /* Azure OpenAI: /openai/deployments/{deployment}/{operation}?api-version=..., api-key */
    if (strncmp(c->path, "/openai/deployments/", 20) == 0) {
        const char *dep = c->path + 20, *slash = strchr(dep, '/'), *q = strchr(c->path, '?');
        if (slash == NULL || q == NULL || q < slash || strstr(q, "api-version=") == NULL) {
            send_azure_error(c, 404, "404", "Resource not found");
            return;
        }
        if (!c->has_api_key) {
            send_azure_error(c, 401, "401",
                             "Access denied due to invalid subscription key or wrong API endpoint. "
                             "Make sure to provide a valid key for an active subscription and use "
                             "a correct regional API endpoint for your resource.");
            return;
        }
        if (strcmp(c->fault, "content_filter") == 0) {
            send_content_filter(c);
            return;
        }
        char op[128];
        snprintf(op, sizeof(op), "/v1%.*s", (int)(q - slash), slash);
        snprintf(c->path, sizeof(c->path), "%s", op); /* served as the OpenAI operation */
    }
    if (strcmp(c->path, "/_mock/requests") == 0) {
        if (strcmp(c->method, "DELETE") == 0)
            clear_log(c);
        else
            reply_log(c);
        return;
    }
    if (strcmp(c->path, "/v1/models") == 0 && strcmp(c->method, "GET") == 0) {
        reply_models(c);
        return;
    }
    enum kind kind;
    bool emb = false;
    if (strcmp(c->path, "/v1/chat/completions") == 0)
        kind = K_CHAT;
    else if (strcmp(c->path, "/v1/completions") == 0)
        kind = K_COMPLETION;
    else if (strcmp(c->path, "/v1/embeddings") == 0)
        kind = K_CHAT, emb = true;
    else {
        send_error(c, 404, "invalid_request_error", "unknown_url", "unknown path");
        return;
    }
    if (strcmp(c->method, "POST") != 0) {
        send_error(c, 405, "invalid_request_error", NULL, "method not allowed");
        return;
    }
    char err[256];
    char *body = c->body ? c->body : (char *)"";
    yajl_val root = yajl_tree_parse(body, err, sizeof(err));
    if (root == NULL || !YAJL_IS_OBJECT(root)) {
        send_error(c, 400, "invalid_request_error", NULL, "We could not parse the JSON body");
        yajl_tree_free(root);
        return;
    }
    if (emb)
        reply_embeddings(c, root);
    else
        reply_completion(w, c, root, kind);
    yajl_tree_free(root);
}

/* ---- HTTP request parsing ----------------------------------------------------------- */

static int header_int(const char *v, int dflt)
{
    char *end;
    long n = strtol(v, &end, 10);
    return end == v ? dflt : (int)n;
}

/* Parse the head in c->in[0..headlen). Returns 0, or -1 on a malformed request. */
static int parse_head(struct conn *c, size_t headlen)
{
    c->in[headlen] = '\0';
    char *line = c->in, *eol = strstr(line, "\r\n");
    if (eol == NULL)
        return -1;
    *eol = '\0';
    char proto[16];
    if (sscanf(line, "%7s %255s %15s", c->method, c->path, proto) != 3)
        return -1;
    c->keepalive = strcmp(proto, "HTTP/1.1") == 0;
    pthread_mutex_lock(&g_beh_mu);
    c->latency_ms = g_beh.latency_ms >= 0 ? g_beh.latency_ms : g_opt.latency_ms;
    c->ttft_ms = g_beh.ttft_ms >= 0 ? g_beh.ttft_ms : g_opt.ttft_ms;
    c->status = g_beh.status;
    c->retry_after = g_beh.retry_after;
    snprintf(c->fault, sizeof(c->fault), "%s", g_beh.fault);
    c->fault_after = g_beh.fault_after;
    pthread_mutex_unlock(&g_beh_mu);
    c->extra[0] = '\0';
    c->first = 0;
    c->lead_space = false;
    c->thinking = false;
    c->interval_ms = g_opt.interval_ms;
    c->chunks = g_opt.chunks;
    c->has_api_key = false;
    c->has_x_api_key = c->has_anthropic_version = false;
    c->body_need = 0;
    c->hdrjson_len = 0;
    char *p = eol + 2;
    while (*p) {
        eol = strstr(p, "\r\n");
        if (eol == NULL)
            break;
        *eol = '\0';
        char *colon = strchr(p, ':');
        if (colon != NULL) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            if (strcasecmp(p, "content-length") == 0)
                c->body_need = (size_t)strtoull(v, NULL, 10);
            else if (strcasecmp(p, "connection") == 0 && strcasecmp(v, "close") == 0)
                c->keepalive = false;
            else if (strcasecmp(p, "connection") == 0 && strcasecmp(v, "keep-alive") == 0)
                c->keepalive = true;
            else if (strcasecmp(p, "x-mock-latency-ms") == 0)
                c->latency_ms = header_int(v, 0);
            else if (strcasecmp(p, "x-mock-ttft-ms") == 0)
                c->ttft_ms = header_int(v, 0);
            else if (strcasecmp(p, "x-mock-interval-ms") == 0)
                c->interval_ms = header_int(v, 0);
            else if (strcasecmp(p, "x-mock-chunks") == 0)
                c->chunks = header_int(v, 8);
            else if (strcasecmp(p, "x-mock-status") == 0)
                c->status = header_int(v, 0);
            else if (strcasecmp(p, "x-mock-retry-after") == 0)
                c->retry_after = header_int(v, 0);
            else if (strcasecmp(p, "x-mock-fault") == 0)
                snprintf(c->fault, sizeof(c->fault), "%s", v);
            else if (strcasecmp(p, "api-key") == 0)
                c->has_api_key = v[0] != '\0';
            else if (strcasecmp(p, "x-api-key") == 0)
                c->has_x_api_key = v[0] != '\0';
            else if (strcasecmp(p, "anthropic-version") == 0)
                c->has_anthropic_version = v[0] != '\0';
            else if (strcasecmp(p, "x-mock-fault-after") == 0)
                c->fault_after = header_int(v, 1);
            if (g_opt.log && c->hdrjson_len < sizeof(c->hdrjson) - 600) {
                struct out o = {0};
                char lower[128];
                size_t i = 0;
                for (; i < sizeof(lower) - 1 && p[i]; i++)
                    lower[i] = (char)((p[i] >= 'A' && p[i] <= 'Z') ? p[i] + 32 : p[i]);
                lower[i] = '\0';
                out_printf(&o, "%s\"", c->hdrjson_len ? "," : "");
                out_json_str(&o, lower);
                out_put(&o, "\":\"", 3);
                out_json_str(&o, v);
                out_put(&o, "\"", 1);
                if (o.len < sizeof(c->hdrjson) - c->hdrjson_len) {
                    memcpy(c->hdrjson + c->hdrjson_len, o.data, o.len);
                    c->hdrjson_len += o.len;
                }
                free(o.data);
            }
        }
        p = eol + 2;
    }
    if (c->chunks < 0)
        c->chunks = 0;
    if (c->body_need > MAX_BODY)
        return -1;
    return 0;
}

/* Process buffered input. Returns -1 to close. */
static int on_input(struct worker *w, struct conn *c)
{
    for (;;) {
        if (c->streaming || c->pending_nonstream || c->closing)
            return 0; /* one request at a time */
        if (!c->have_head) {
            char *end = memmem(c->in, c->inlen, "\r\n\r\n", 4);
            if (end == NULL)
                return c->inlen >= MAX_HEADER ? -1 : 0;
            size_t headlen = (size_t)(end - c->in) + 4;
            char saved[MAX_HEADER + 1];
            size_t rest = c->inlen - headlen;
            memcpy(saved, c->in + headlen, rest);
            if (parse_head(c, headlen - 2) != 0)
                return -1;
            c->have_head = true;
            free(c->body);
            c->body = malloc(c->body_need + 1);
            if (c->body == NULL)
                return -1;
            c->body_len = rest < c->body_need ? rest : c->body_need;
            memcpy(c->body, saved, c->body_len);
            memmove(c->in, saved + c->body_len, rest - c->body_len);
            c->inlen = rest - c->body_len;
        }
        if (c->body_len < c->body_need)
            return 0;
        c->body[c->body_len] = '\0';
        c->have_head = false;
        dispatch(w, c);
        if (flush_out(w, c) < 0)
            return -1;
        if (c->inlen == 0)
            return 0;
    }
}

static int on_readable(struct worker *w, struct conn *c)
{
    for (;;) {
        char *dst;
        size_t room;
        if (c->have_head && c->body_len < c->body_need) {
            dst = c->body + c->body_len;
            room = c->body_need - c->body_len;
        } else {
            dst = c->in + c->inlen;
            room = MAX_HEADER - c->inlen;
            if (room == 0)
                return on_input(w, c);
        }
        ssize_t n = recv(c->fd, dst, room, 0);
        if (n > 0) {
            if (dst == c->in + c->inlen)
                c->inlen += (size_t)n;
            else
                c->body_len += (size_t)n;
            if (on_input(w, c) < 0)
                return -1;
            continue;
        }
        if (n == 0)
            return -1;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -1;
    }
}

static void on_timer(struct worker *w, struct conn *c)
{
    if (c->pending_nonstream) {
        c->pending_nonstream = false;
        reply_completion_body(c);
        if (flush_out(w, c) < 0 || on_input(w, c) < 0)
            conn_close(w, c, false);
        return;
    }
    int rc = stream_step(w, c);
    if (rc == 1)
        return;
    if (rc < 0) {
        conn_close(w, c, false);
        return;
    }
    if (!c->streaming && on_input(w, c) < 0)
        conn_close(w, c, false);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct epoll_event evs[256];
    for (;;) {
        int timeout = -1;
        if (kw_heap_top(&w->timers) != NULL) {
            int64_t d = kw_heap_top(&w->timers)->key - now_ms();
            timeout = d < 0 ? 0 : (int)d;
        }
        int n = epoll_wait(w->ep, evs, 256, timeout);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == NULL) {
                for (;;) {
                    int fd = accept4(w->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd == -1)
                        break;
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
                    struct conn *c = calloc(1, sizeof(*c));
                    if (c == NULL) {
                        close(fd);
                        continue;
                    }
                    c->fd = fd;
                    kw_heap_node_init(&c->tnode);
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = c};
                    epoll_ctl(w->ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            struct conn *c = evs[i].data.ptr;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                conn_close(w, c, false);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && flush_out(w, c) < 0) {
                conn_close(w, c, false);
                continue;
            }
            if (c->blocked && c->out.off == c->out.len) {
                c->blocked = false;
                timer_add(w, c, now_ms());
            }
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP)) {
                if (on_readable(w, c) < 0) {
                    conn_close(w, c, false);
                    continue;
                }
            }
        }
        int64_t now = now_ms();
        struct kw_heap_node *due;
        while ((due = kw_heap_top(&w->timers)) != NULL && due->key <= now) {
            struct conn *c = conn_of(due);
            timer_del(w, c);
            on_timer(w, c);
        }
    }
    return NULL;
}

static int listen_on(const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL)
        return -1;
    snprintf(host, sizeof(host), "%.*s", (int)(colon - addr), addr);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    if (inet_pton(AF_INET, host[0] ? host : "0.0.0.0", &sa.sin_addr) != 1)
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 || listen(fd, 4096) == -1) {
        perror("knoway-mockllm: bind/listen");
        return -1;
    }
    return fd;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {
        {"listen", required_argument, NULL, 'l'},  {"threads", required_argument, NULL, 't'},
        {"ttft-ms", required_argument, NULL, 'f'}, {"interval-ms", required_argument, NULL, 'i'},
        {"chunks", required_argument, NULL, 'c'},  {"latency-ms", required_argument, NULL, 'd'},
        {"no-log", no_argument, NULL, 'n'},        {"behaviour", required_argument, NULL, 'b'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    const char *addr = "127.0.0.1:8000";
    int threads = 1, ch;
    while ((ch = getopt_long(argc, argv, "l:t:f:i:c:d:nb:h", lopts, NULL)) != -1) {
        switch (ch) {
        case 'l':
            addr = optarg;
            break;
        case 't':
            threads = atoi(optarg);
            break;
        case 'f':
            g_opt.ttft_ms = atoi(optarg);
            break;
        case 'i':
            g_opt.interval_ms = atoi(optarg);
            break;
        case 'c':
            g_opt.chunks = atoi(optarg);
            break;
        case 'd':
            g_opt.latency_ms = atoi(optarg);
            break;
        case 'b':
            if (behaviour_parse(optarg, &g_beh) != 0) {
                fprintf(stderr, "knoway-mockllm: --behaviour must be a JSON object\n");
                return 2;
            }
            break;
        case 'n':
            g_opt.log = false;
            break;
        default:
            fprintf(stderr, "usage: knoway-mockllm [--listen ADDR] [--threads N] [--ttft-ms N] "
                            "[--interval-ms N] [--chunks N] [--latency-ms N] [--no-log]\n");
            return ch == 'h' ? 0 : 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    if (threads < 1)
        threads = 1;
    pthread_t tids[64];
    for (int i = 0; i < threads && i < 64; i++) {
        struct worker *w = calloc(1, sizeof(*w));
        kw_heap_init(&w->timers);
        w->lfd = listen_on(addr);
        if (w->lfd < 0)
            return 1;
        w->ep = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
        epoll_ctl(w->ep, EPOLL_CTL_ADD, w->lfd, &ev);
        pthread_create(&tids[i], NULL, worker_main, w);
    }
    fprintf(stderr, "knoway-mockllm: listening on %s (%d threads)\n", addr, threads);
    pthread_join(tids[0], NULL);
    return 0;
}
