/* Kubernetes client configuration: kubeconfig fields (token, tokenFile, certificate data
 * and files relative to the kubeconfig, insecure flag, namespace), in-cluster files, and
 * the errors a user sees. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "knoway/kw.h"
#include "kube.h"
#include "testutil.h"

static char dir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static int setup(void **state)
{
    snprintf(dir, sizeof(dir), "/tmp/kw-kube-XXXXXX");
    return mkdtemp(dir) == NULL ? -1 : 0;
}

static int teardown(void **state)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd);
}

static const char KUBECONFIG[] = "apiVersion: v1\n"
                                 "kind: Config\n"
                                 "clusters:\n"
                                 "- name: other\n"
                                 "  cluster: {server: https://other:1}\n"
                                 "- name: c1\n"
                                 "  cluster:\n"
                                 "    server: https://127.0.0.1:6443/\n"
                                 "    certificate-authority-data: UEVNIENB\n" /* "PEM CA" */
                                 "    insecure-skip-tls-verify: true\n"
                                 "users:\n"
                                 "- name: u1\n"
                                 "  user:\n"
                                 "    tokenFile: tok\n"
                                 "    client-certificate: certs/c.pem\n"
                                 "    client-key-data: S0VZ\n" /* "KEY" */
                                 "contexts:\n"
                                 "- name: ctx\n"
                                 "  context: {cluster: c1, user: u1, namespace: ml}\n"
                                 "current-context: ctx\n";

static void test_kubeconfig(void **state)
{
    write_file("config", KUBECONFIG);
    write_file("tok", "token-from-file\n");
    char path[256], err[512] = "";
    snprintf(path, sizeof(path), "%s/config", dir);
    struct ctl_kube_config c;
    assert_int_equal(ctl_kube_config_load_file(&c, path, err, sizeof(err)), KW_OK);
    assert_string_equal(c.server, "https://127.0.0.1:6443");
    assert_int_equal(c.ca_len, 6);
    assert_memory_equal(c.ca_data, "PEM CA", 6);
    assert_true(c.insecure);
    assert_string_equal(c.ns, "ml");
    char want[256];
    snprintf(want, sizeof(want), "%s/tok", dir);
    assert_string_equal(c.token_file, want);
    snprintf(want, sizeof(want), "%s/certs/c.pem", dir);
    assert_string_equal(c.cert_file, want);
    assert_int_equal(c.key_len, 3);
    assert_null(c.token);
    /* the token comes from the file, without its newline */
    struct ctl_kube k;
    assert_int_equal(ctl_kube_init(&k, &c, 10, 10, err, sizeof(err)), KW_OK);
    assert_string_equal(k.token, "token-from-file");
    write_file("tok", "rotated\n");
    ctl_kube_unauthorized(&k); /* a 401 re-reads it */
    assert_string_equal(k.token, "rotated");
    ctl_kube_cleanup(&k);
}

static void expect_error(const char *text, const char *want_suffix)
{
    write_file("bad", text);
    char path[256], err[512] = "";
    snprintf(path, sizeof(path), "%s/bad", dir);
    struct ctl_kube_config c;
    assert_int_equal(ctl_kube_config_load_file(&c, path, err, sizeof(err)), KW_ERROR);
    char want[600];
    snprintf(want, sizeof(want), "%s: %s", path, want_suffix);
    assert_string_equal(err, want);
}

static void test_kubeconfig_errors(void **state)
{
    expect_error("clusters: []\n", "current-context: is not set");
    expect_error("current-context: x\ncontexts: []\n", "contexts: no context named \"x\"");
    expect_error("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n",
                 "clusters: no cluster named \"c\" (context \"x\")");
    expect_error("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
                 "clusters: [{name: c, cluster: {server: ftp://h}}]\n",
                 "clusters[c].cluster.server: an http(s) URL is required");
    expect_error("current-context: x\ncontexts: [{name: x, context: {cluster: c, user: u}}]\n"
                 "clusters: [{name: c, cluster: {server: https://h}}]\n"
                 "users: [{name: u, user: {exec: {command: aws}}}]\n",
                 "users[u].user: exec and auth-provider plugins are not supported; use a token, "
                 "tokenFile or client certificate");
    expect_error("current-context: x\ncontexts: [{name: x, context: {cluster: c}}]\n"
                 "clusters: [{name: c, cluster: {server: https://h, "
                 "certificate-authority-data: '%%%'}}]\n",
                 "cluster.certificate-authority-data: is not valid base64");
}

static void test_in_cluster(void **state)
{
    char err[512] = "";
    struct ctl_kube_config c;
    unsetenv("KUBERNETES_SERVICE_HOST");
    assert_int_equal(ctl_kube_config_in_cluster(&c, dir, err, sizeof(err)), KW_ERROR);
    assert_string_equal(err, "not running in a cluster (KUBERNETES_SERVICE_HOST/PORT unset); pass "
                             "--kubeconfig FILE");
    setenv("KUBERNETES_SERVICE_HOST", "fd00::1", 1);
    setenv("KUBERNETES_SERVICE_PORT", "443", 1);
    write_file("namespace", "knoway-system\n");
    assert_int_equal(ctl_kube_config_in_cluster(&c, dir, err, sizeof(err)), KW_OK);
    assert_string_equal(c.server, "https://[fd00::1]:443");
    assert_string_equal(c.ns, "knoway-system");
    char want[256];
    snprintf(want, sizeof(want), "%s/ca.crt", dir);
    assert_string_equal(c.ca_file, want);
    ctl_kube_config_cleanup(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kubeconfig),
        cmocka_unit_test(test_kubeconfig_errors),
        cmocka_unit_test(test_in_cluster),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
