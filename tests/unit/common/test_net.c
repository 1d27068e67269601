/* Addresses both binaries parse the same way (knoway/net.h): listener addresses, CIDR
 * ranges, client addresses, URL hosts. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>

#include <cmocka.h>

#include "knoway/kw.h"
#include "knoway/net.h"

static void test_listen_address(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    socklen_t len;
    assert_int_equal(kw_listen_address("127.0.0.1:9901", &ss, &len), KW_OK);
    assert_int_equal(ss.ss_family, AF_INET);
    assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9901);
    assert_int_equal(kw_listen_address("[::1]:8080", &ss, &len), KW_OK);
    assert_int_equal(ss.ss_family, AF_INET6);
    assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 8080);
    assert_int_equal(kw_listen_address(":18000", &ss, &len), KW_OK); /* every address */
    assert_int_equal(kw_listen_address("0.0.0.0:1", &ss, &len), KW_OK);
    static const char *const bad[] = {"127.0.0.1", "127.0.0.1:", "127.0.0.1:http",
                                      "127.0.0.1:99999x", ""};
    for (size_t i = 0; i < KW_ARRAY_LEN(bad); i++)
        if (kw_listen_address(bad[i], &ss, &len) == KW_OK)
            fail_msg("accepted \"%s\"", bad[i]);
}

static void test_cidr_and_addresses(void **state)
{
    (void)state;
    struct kw_cidr c[2];
    assert_int_equal(kw_cidr_parse("10.0.0.0/8", &c[0]), KW_OK);
    assert_int_equal(kw_cidr_parse("fd00::/8", &c[1]), KW_OK);
    assert_int_equal(kw_cidr_parse("10.0.0.0/33", &c[0]), KW_ERROR);
    assert_int_equal(kw_cidr_parse("10.0.0.0/8", &c[0]), KW_OK);
    struct sockaddr_storage ss;
    assert_true(kw_addr_parse("10.1.2.3", &ss));
    assert_true(kw_cidr_match(c, 2, (struct sockaddr *)&ss));
    assert_true(kw_addr_parse("fd12::1", &ss));
    assert_true(kw_cidr_match(c, 2, (struct sockaddr *)&ss));
    assert_true(kw_addr_parse("192.168.0.1", &ss));
    assert_false(kw_cidr_match(c, 2, (struct sockaddr *)&ss));
    assert_false(kw_addr_parse("10.1.2.3:80", &ss));
    char host[64];
    assert_true(kw_url_host("http://[::1]:8080/x", host, sizeof(host)));
    assert_string_equal(host, "::1");
    assert_true(kw_url_host_is_loopback("http://LOCALHOST/x"));
    assert_false(kw_url_host_is_loopback("https://oauth2.googleapis.com/token"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_listen_address),
        cmocka_unit_test(test_cidr_and_addresses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
