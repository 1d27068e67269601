/* knoway-loadgen: a fixed-rate HTTP/1.1 load generator for latency below saturation.
 *
 *   knoway-loadgen --port P [--path /v1/chat/completions] --body JSON --rate R --conns C
 *                  --seconds S [--burst B] [--warmup W]
 *
 * Requests are scheduled at a fixed rate (R per second; with --burst B, B at once every
 * B/R seconds: bursty arrivals at the same mean rate) over C keep-alive connections on
 * 127.0.0.1:P. A request whose time has come waits for an idle connection; its latency is
 * measured from when it was scheduled, not from when it was sent, so a slow server is
 * charged for the queue it causes (no coordinated omission). One thread, epoll. Prints one
 * JSON object: scheduled, completed, errors, the rate achieved and the latency percentiles
 * in ms (the first W seconds, default 1, are not counted). Exit 1 on a setup error. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int fd;
    bool busy;
    int64_t scheduled_ns; /* of the request in flight */
    char in[65536];
    size_t inlen;
};

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0)
        return -1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

/* Length of a complete response at the start of c->in (0: not complete yet, -1: bad). */
static long complete(const struct conn *c, int *status)
{
    const char *p = c->in, *end = c->in + c->inlen;
    const char *hdr_end = NULL;
    for (const char *q = p; q + 3 < end; q++)
        if (q[0] == '\r' && q[1] == '\n' && q[2] == '\r' && q[3] == '\n') {
            hdr_end = q + 4;
            break;
        }
    if (hdr_end == NULL)
        return 0;
    if (sscanf(p, "HTTP/1.%*d %d", status) != 1)
        return -1;
    long clen = -1;
    bool chunked = false;
    for (const char *line = p; line < hdr_end;) {
        const char *nl = memchr(line, '\n', (size_t)(hdr_end - line));
        if (nl == NULL)
            break;
        if (strncasecmp(line, "Content-Length:", 15) == 0)
            clen = strtol(line + 15, NULL, 10);
        if (strncasecmp(line, "Transfer-Encoding:", 18) == 0 &&
            memmem(line, (size_t)(nl - line), "chunked", 7))
            chunked = true;
        line = nl + 1;
    }
    if (clen >= 0)
        return hdr_end + clen <= end ? (long)(hdr_end - p) + clen : 0;
    if (!chunked)
        return -1;
    for (const char *q = hdr_end;;) { /* chunks up to the last, empty one */
        const char *nl = memmem(q, (size_t)(end - q), "\r\n", 2);
        if (nl == NULL)
            return 0;
        long n = strtol(q, NULL, 16);
        if (nl + 2 + n + 2 > end)
            return 0;
        q = nl + 2 + n + 2;
        if (n == 0)
            return (long)(q - p);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct(const int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i < n ? i : n - 1] / 1e6;
}

int main(int argc, char **argv)
{
    int port = 0, conns = 1, burst = 1;
    double rate = 1000, seconds = 5, warmup = 1;
    const char *path = "/v1/chat/completions", *body = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--port") == 0)
            port = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--path") == 0)
            path = argv[i + 1];
        else if (strcmp(argv[i], "--body") == 0)
            body = argv[i + 1];
        else if (strcmp(argv[i], "--rate") == 0)
            rate = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--conns") == 0)
            conns = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--seconds") == 0)
            seconds = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--burst") == 0)
            burst = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0)
            warmup = atof(argv[i + 1]);
    }
    if (port <= 0 || body == NULL || rate <= 0 || conns <= 0 || burst <= 0) {
        fprintf(stderr, "usage: knoway-loadgen --port P --body JSON --rate R --conns C "
                        "--seconds S [--burst B] [--path P] [--warmup W]\n");
        return 1;
    }
    char req[8192];
    int rlen = snprintf(req, sizeof(req),
                        "POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        "Content-Length: %zu\r\n\r\n%s",
                        path, strlen(body), body);
    if (rlen <= 0 || (size_t)rlen >= sizeof(req))
        return 1;
    int ep = epoll_create1(0);
    struct conn *cs = calloc((size_t)conns, sizeof(*cs));
    for (int i = 0; i < conns; i++) {
        cs[i].fd = dial(port);
        if (cs[i].fd < 0) {
            fprintf(stderr, "loadgen: cannot connect to port %d\n", port);
            return 1;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &cs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    size_t total = (size_t)(rate * (seconds + warmup)) + (size_t)burst;
    int64_t *sched = malloc(total * sizeof(*sched)); /* the queue of due requests */
    int64_t *lat = malloc(total * sizeof(*lat));
    size_t nlat = 0, head = 0, tail = 0, completed = 0, errors = 0, scheduled = 0;
    int64_t start = now_ns(), interval = (int64_t)(1e9 / rate * burst);
    int64_t count_from = start + (int64_t)(warmup * 1e9),
            stop = count_from + (int64_t)(seconds * 1e9);
    int64_t next = start;
    int inflight = 0;
    while (true) {
        int64_t now = now_ns();
        while (next <= now && next < stop && tail + (size_t)burst <= total) {
            for (int b = 0; b < burst; b++)
                sched[tail++] = next;
            scheduled += (size_t)burst;
            next += interval;
        }
        for (int i = 0; i < conns && head < tail; i++) /* due requests onto idle connections */
            if (!cs[i].busy) {
                if (write(cs[i].fd, req, (size_t)rlen) != rlen) {
                    errors++;
                    head++;
                    continue;
                }
                cs[i].busy = true;
                cs[i].scheduled_ns = sched[head++];
                inflight++;
            }
        if (next >= stop && head == tail && inflight == 0)
            break;
        if (now_ns() > stop + 10000000000ll) { /* 10 s after the last: unanswered is an error */
            errors += (size_t)inflight + (tail - head);
            break;
        }
        bool idle = false;
        for (int i = 0; i < conns && !idle; i++)
            idle = !cs[i].busy;
        int64_t wait_ns = next < stop ? next - now_ns() : 100000000;
        if (wait_ns < 0 || (head < tail && idle))
            wait_ns = 0;
        /* nanosecond timeouts: 5,000 requests a second are 200 us apart */
        struct timespec ts = {wait_ns / 1000000000, wait_ns % 1000000000};
        struct epoll_event evs[64];
        int n = epoll_pwait2(ep, evs, 64, &ts, NULL);
        for (int k = 0; k < n; k++) {
            struct conn *c = evs[k].data.ptr;
            ssize_t r = read(c->fd, c->in + c->inlen, sizeof(c->in) - c->inlen);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                fprintf(stderr, "loadgen: a connection closed\n");
                return 1;
            }
            c->inlen += (size_t)r;
            int status = 0;
            long got = complete(c, &status);
            if (got == 0)
                continue;
            if (got < 0 || !c->busy) {
                fprintf(stderr, "loadgen: a response it cannot read\n");
                return 1;
            }
            int64_t done = now_ns();
            if (c->scheduled_ns >= count_from) {
                if (status / 100 == 2) {
                    lat[nlat++] = done - c->scheduled_ns;
                    completed++;
                } else {
                    errors++;
                }
            }
            memmove(c->in, c->in + got, c->inlen - (size_t)got);
            c->inlen -= (size_t)got;
            c->busy = false;
            inflight--;
        }
    }
    qsort(lat, nlat, sizeof(*lat), cmp_i64);
    size_t counted = 0;
    for (size_t i = 0; i < tail; i++)
        counted += sched[i] >= count_from;
    printf("{\"rate\": %.0f, \"conns\": %d, \"burst\": %d, \"seconds\": %.1f, \"scheduled\": %zu, "
           "\"completed\": %zu, \"errors\": %zu, \"achieved_rps\": %.1f, \"p50_ms\": %.3f, "
           "\"p90_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f}\n",
           rate, conns, burst, seconds, counted, completed, errors, (double)completed / seconds,
           pct(lat, nlat, 50), pct(lat, nlat, 90), pct(lat, nlat, 99), pct(lat, nlat, 99.9),
           pct(lat, nlat, 100));
    (void)scheduled;
    return 0;
}
