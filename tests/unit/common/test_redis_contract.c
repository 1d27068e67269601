/* The Redis contract of both binaries (knoway/redis_contract.h): the URL grammar the data
 * planes' spec.redis.url and the controller's --redis share, and the usage hash's key the
 * data planes write and the controller reads. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>

#include <cmocka.h>

#include "knoway/kw.h"
#include "knoway/redis_contract.h"

static void test_url_grammar(void **state)
{
    (void)state;
    static const struct {
        const char *url, *user, *host;
        unsigned port, db;
    } good[] = {
        {"redis://r", "", "r", 6379, 0},
        {"redis://r/", "", "r", 6379, 0},
        {"redis://redis.knoway.svc:6380/3", "", "redis.knoway.svc", 6380, 3},
        {"redis://knoway@r:6379/15", "knoway", "r", 6379, 15},
        {"redis://10.0.0.7/0", "", "10.0.0.7", 6379, 0},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(good); i++) {
        struct kw_redis_url u;
        char err[256] = "";
        if (kw_redis_url_parse(good[i].url, &u, err, sizeof(err)) != KW_OK)
            fail_msg("%s: %s", good[i].url, err);
        assert_string_equal(u.user, good[i].user);
        assert_string_equal(u.host, good[i].host);
        assert_int_equal(u.port, good[i].port);
        assert_int_equal(u.db, good[i].db);
    }
    static const struct {
        const char *url, *why;
    } bad[] = {
        {"rediss://r", "has no TLS"},
        {"http://r", "must start with redis://"},
        {"redis://user:secret@r", "must not carry a password"},
        {"redis://:secret@r", "must not carry a password"},
        {"redis://@r", "the user before @"},
        {"redis://", "must be redis://"},
        {"redis://r:0", "must be redis://"},
        {"redis://r:65536", "must be redis://"},
        {"redis://r:x", "must be redis://"},
        {"redis://r/16", "must be redis://"},
        {"redis://r/1x", "must be redis://"},
        {"redis://r?x", "must be redis://"},
    };
    for (size_t i = 0; i < KW_ARRAY_LEN(bad); i++) {
        struct kw_redis_url u;
        char err[256] = "";
        assert_int_equal(kw_redis_url_parse(bad[i].url, &u, err, sizeof(err)), KW_ERROR);
        if (strstr(err, bad[i].why) == NULL)
            fail_msg("%s: \"%s\" does not say \"%s\"", bad[i].url, err, bad[i].why);
        assert_null(strstr(err, "secret")); /* never repeated back */
    }
}

static void test_usage_key(void **state)
{
    (void)state;
    char key[KW_USAGE_KEY_MAX];
    assert_true(kw_usage_key(key, sizeof(key), "ml", "team-a", "2026-12"));
    assert_string_equal(key, "knoway:usage:{ml/team-a}:2026-12");
    /* the longest namespace and name (253 each) and a period fit */
    char ns[254], name[254];
    memset(ns, 'n', 253);
    ns[253] = '\0';
    memset(name, 'c', 253);
    name[253] = '\0';
    assert_true(kw_usage_key(key, sizeof(key), ns, name, "2026-W49"));
    assert_false(kw_usage_key(key, 20, "ml", "team-a", "2026-12"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_url_grammar),
        cmocka_unit_test(test_usage_key),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
