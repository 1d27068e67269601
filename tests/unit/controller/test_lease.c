/* Leader election against an API server that accepts connections and never answers: every
 * Lease request is bounded below the renew deadline, so the leader steps down on time
 * (regression: requests waited 30 s against a 15 s lease, and two leaders could write). */
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "knoway/kw.h"
#include "lease.h"
#include "testutil.h"

/* A listening socket that is never accepted from: the kernel completes the handshake,
 * requests are sent, and no response ever comes. */
static int silent_server(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 16), 0);
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *port = ntohs(sa.sin_port);
    return fd;
}

static void test_leader_steps_down_when_the_api_hangs(void **state)
{
    (void)state;
    int port;
    int fd = silent_server(&port);
    struct ctl_kube_config cfg = {0};
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
    cfg.server = strdup(url);
    cfg.token = strdup("t");
    cfg.ns = strdup("default");
    cfg.source = strdup("test");
    struct ctl_kube kube;
    char err[256];
    assert_int_equal(ctl_kube_init(&kube, &cfg, 100, 100, err, sizeof(err)), KW_OK);
    struct ctl_lease l = {.kube = &kube,
                          .ns = "default",
                          .name = "knoway",
                          .id = "a",
                          .duration_s = 3,
                          .renew_deadline_ms = 1000,
                          .retry_ms = 100};
    atomic_store(&l.leader, true); /* as if it had renewed just now */
    l.renewed_ms = ctl_now_ms();
    int64_t t0 = ctl_now_ms();
    assert_int_equal(ctl_lease_start(&l), KW_OK);
    while (atomic_load(&l.leader) && ctl_now_ms() - t0 < 5000)
        usleep(20000);
    int64_t stepped = ctl_now_ms() - t0;
    print_message("stepped down after %lld ms (renew deadline 1000 ms)\n", (long long)stepped);
    assert_false(atomic_load(&l.leader));
    assert_true(stepped < 2500); /* far below the 30 s a request could take */
    int64_t t1 = ctl_now_ms();
    ctl_lease_stop(&l); /* a follower's requests are bounded too */
    assert_true(ctl_now_ms() - t1 < 2000);
    ctl_kube_cleanup(&kube);
    close(fd);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_leader_steps_down_when_the_api_hangs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
